//! The local API's fast lane (`scoped_secrets::http`'s, through `fuzzing::Lane`) on arbitrary
//! connection bytes, read head after head as one connection's.
//!
//! Checked besides "never panics": what the lane does not take is left in the buffer byte for
//! byte (hyper reads it from the start); each head it takes is exactly one whole head, the one
//! `httparse` finds at the start, and the heads taken and what is left are the input, in
//! order; it takes only a GET over HTTP/1.1 with no framing header (no body, no upgrade, no
//! `Connection` but `keep-alive`), whose target (even when the lane reuses the last one it
//! parsed) and headers are the head's own.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use scoped_secrets::fuzzing::{Lane, LaneHead};

fuzz_target!(|data: &[u8]| {
    let mut buffer = BytesMut::from(data);
    let mut lane = Lane::default();
    let mut taken = Vec::new();
    loop {
        let before = buffer.clone();
        match lane.head(&mut buffer) {
            LaneHead::Partial | LaneHead::Hypers => {
                assert_eq!(buffer, before, "left as it was");
                break;
            }
            LaneHead::Ours(head, request) => {
                assert_eq!([&head[..], &buffer[..]].concat(), &before[..], "the head, then the rest");
                let mut slots = [httparse::EMPTY_HEADER; 64];
                let mut parsed = httparse::Request::new(&mut slots);
                assert_eq!(parsed.parse(&head).ok(), Some(httparse::Status::Complete(head.len())), "one whole head");
                assert_eq!(parsed.method, Some("GET"));
                assert_eq!(parsed.version, Some(1));
                assert_eq!(request.method(), http::Method::GET);
                assert_eq!(request.version(), http::Version::HTTP_11);
                let own = parsed.path.and_then(|path| path.parse::<http::Uri>().ok());
                assert_eq!(Some(request.uri().clone()), own, "the head's own target");
                assert_eq!(request.headers().len(), parsed.headers.len());
                for header in parsed.headers.iter() {
                    let values: Vec<_> = request.headers().get_all(header.name).iter().map(|v| v.as_bytes()).collect();
                    assert!(values.contains(&header.value), "{} kept with its value", header.name);
                }
                for name in ["content-length", "transfer-encoding", "expect", "upgrade", "te", "trailer"] {
                    assert!(!request.headers().contains_key(name), "{name} taken by the lane");
                }
                for value in request.headers().get_all(http::header::CONNECTION) {
                    assert!(value.as_bytes().eq_ignore_ascii_case(b"keep-alive"));
                }
                taken.extend_from_slice(&head);
            }
        }
    }
    taken.extend_from_slice(&buffer);
    assert_eq!(taken, data, "every byte once, in order");
});
