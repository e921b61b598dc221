//! The SDK protocol's `POST /` (`local_api::sdk::handle`): headers and body through routing
//! and SigV4 verification, with the function's known credentials and a fixed clock.
//!
//! Input: a flag byte, then a path-and-query line, `name:value` header lines up to an empty
//! line, and the body (the rest). Flags: bit 0 signs the request as an AWS SDK would (aws-sigv4,
//! over every header it carries and its body), so a valid signature is reachable; bit 1 signs
//! with a wrong secret key; bit 2 signs ten minutes from the clock (stale); bit 3 adds what an
//! SDK always sends (`Host`, `Content-Type`, `X-Amz-Target`), bits 4-5 choosing the operation
//! (`GetSecretValue`, `BatchGetSecretValue`, `AmazonSSM.GetParameter`, `.GetParameters`).
//!
//! The read path behind it has no session: every fetch it attempts is refused and counted.
//! Checked besides "never panics": no answer (body or header) holds the session token (the
//! local token) or the secret key, unless the input itself did (an id is echoed back to its
//! sender); a request that was not signed with the right key at the right time never reaches a
//! fetch; a 4xx refusal never fetched; a 200 serves no value (there is no session to read one);
//! and the genuine request for an allowlisted secret (the `get-secret-value` seed) does reach
//! the store, so the valid path is known to be reachable.

#![no_main]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use scoped_secrets::fuzzing::{self, SECRET_ACCESS_KEY, SESSION_TOKEN, Sdk};
use scoped_secrets::local_api::sdk::Protocol;

const OPERATIONS: [&str; 4] = [
    "secretsmanager.GetSecretValue",
    "secretsmanager.BatchGetSecretValue",
    "AmazonSSM.GetParameter",
    "AmazonSSM.GetParameters",
];

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static SDK: Sdk = Sdk::new();
    }
    let Some((&flags, rest)) = data.split_first() else { return };
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &[][..]),
    };
    let mut lines = head.split(|b| *b == b'\n');
    let target = lines.next().unwrap_or_default();
    // The SDK's own request for an allowlisted secret, nothing added: it must reach the store.
    let plain = flags & 0x3f == 0x09 && head == b"/" && body == br#"{"SecretId":"db"}"#;
    let target = if target.is_empty() { &b"/"[..] } else { target };
    let Ok(uri) = http::Uri::try_from(target) else { return };
    let mut builder = http::Request::builder().method(http::Method::POST).uri(uri);
    if flags & 8 != 0 {
        builder = builder
            .header("host", "127.0.0.1:2773")
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", OPERATIONS[usize::from(flags >> 4) % 4]);
    }
    for (name, value) in fuzzing::header_lines(lines) {
        builder = builder.header(name, value);
    }
    let Ok(mut request) = builder.body(Full::new(Bytes::copy_from_slice(body))) else { return };

    let signed = flags & 1 != 0;
    let genuine = signed && flags & 2 == 0 && flags & 4 == 0;
    if signed {
        let secret = if flags & 2 != 0 { "not-the-function-s-secret-key" } else { SECRET_ACCESS_KEY };
        let stale = if flags & 4 != 0 { Duration::from_secs(600) } else { Duration::ZERO };
        let service = Protocol::of(request.headers()).service();
        Sdk::sign(&mut request, body, service, fuzzing::now() + stale, secret);
    }
    let quoted = contains(data, SESSION_TOKEN) || contains(data, SECRET_ACCESS_KEY);

    let answer = SDK.with(|sdk| sdk.handle(request));

    if !quoted {
        assert!(!contains(&answer.body, SESSION_TOKEN), "the session token in an answer");
        assert!(!contains(&answer.body, SECRET_ACCESS_KEY), "the secret key in an answer");
        for value in answer.headers.values() {
            assert!(!contains(value.as_bytes(), SESSION_TOKEN) && !contains(value.as_bytes(), SECRET_ACCESS_KEY));
        }
    }
    if answer.fetches > 0 {
        assert!(genuine, "a request without the function's signature reached a fetch: {:?}", answer.denies);
        assert!(!(400..500).contains(&answer.status), "a {} refusal fetched", answer.status);
    }
    if answer.status == 200 {
        let served_nothing =
            contains(&answer.body, "\"SecretValues\":[]") || contains(&answer.body, "\"Parameters\":[]");
        assert!(served_nothing, "a value served without a session");
    }
    if plain {
        assert_eq!(answer.fetches, 1, "a genuine request did not reach the store: {:?}", answer.denies);
    }
    assert!(answer.status >= 200 && answer.status < 600);
});
