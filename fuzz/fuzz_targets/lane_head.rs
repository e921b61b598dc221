//! The local API's fast lane (`scoped_secrets::http`'s, through `fuzzing::lane_head`) on
//! arbitrary connection bytes.
//!
//! Checked besides "never panics": what the lane does not take is left in the buffer byte for
//! byte (hyper reads it from the start); what it takes is exactly one whole head, the one
//! `httparse` finds at the start, followed in the buffer by the rest of the input; and it takes
//! only a GET over HTTP/1.1 with no framing header (no body, no upgrade, no `Connection` but
//! `keep-alive`), whose target and headers are the head's own.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use scoped_secrets::fuzzing::{LaneHead, lane_head};

fuzz_target!(|data: &[u8]| {
    let mut buffer = BytesMut::from(data);
    match lane_head(&mut buffer) {
        LaneHead::Partial | LaneHead::Hypers => assert_eq!(&buffer[..], data, "left as it was"),
        LaneHead::Ours(head, request) => {
            assert_eq!([&head[..], &buffer[..]].concat(), data, "the head, then the rest");
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Request::new(&mut slots);
            assert_eq!(parsed.parse(&head).ok(), Some(httparse::Status::Complete(head.len())), "one whole head");
            assert_eq!(parsed.method, Some("GET"));
            assert_eq!(parsed.version, Some(1));
            assert_eq!(request.method(), http::Method::GET);
            assert_eq!(request.version(), http::Version::HTTP_11);
            assert_eq!(Some(request.uri().clone()), parsed.path.and_then(|path| path.parse::<http::Uri>().ok()));
            assert_eq!(request.headers().len(), parsed.headers.len());
            for name in ["content-length", "transfer-encoding", "expect", "upgrade", "te", "trailer"] {
                assert!(!request.headers().contains_key(name), "{name} taken by the lane");
            }
            for value in request.headers().get_all(http::header::CONNECTION) {
                assert!(value.as_bytes().eq_ignore_ascii_case(b"keep-alive"));
            }
        }
    }
});
