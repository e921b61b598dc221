//! The Runtime API proxy's request and answer handling (`runtime_proxy`): how it routes a
//! runtime's request (`/2018-06-01/runtime/invocation/next`, `…/{id}/response`,
//! `…/{id}/error`, anything else) and what it reports of a `/next` answer's headers
//! (`Lambda-Runtime-Aws-Request-Id`, `Lambda-Runtime-Deadline-Ms`,
//! `Lambda-Runtime-Aws-Tenant-Id`).
//!
//! Input: a method byte, a path line, then `name:value` header lines (a `/next` answer's
//! headers). Checked besides "never panics": `/next` is routed only for a GET of exactly its
//! path; a result is routed only for a POST of exactly `prefix + id + /response|/error`, with the
//! outcome the path names, and only if the id is well-formed and bounded (1 to 64 of
//! `A-Z a-z 0-9 - _`); a `/next` answer is reported only with a well-formed request id equal to
//! its header and the deadline its header gives; the tenant id kept is at most
//! `MAX_TENANT_HEADER` bytes whatever the header's bytes (the bug this target found: a header
//! that is not UTF-8 was kept at up to three times that), and a short UTF-8 one is kept whole.

#![no_main]

use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use scoped_secrets::domain::request_id::is_request_id;
use scoped_secrets::fuzzing::{RuntimeRoute, runtime_next, runtime_route};
use scoped_secrets::runtime_proxy::{MAX_TENANT_HEADER, Outcome, RuntimeEvent};

const PREFIX: &str = "/2018-06-01/runtime/invocation/";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let method = [Method::GET, Method::POST, Method::PUT, Method::DELETE][usize::from(selector) % 4].clone();
    let mut lines = rest.split(|b| *b == b'\n');
    let path = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();

    match runtime_route(&method, &path) {
        RuntimeRoute::Next => {
            assert_eq!(method, Method::GET);
            assert_eq!(path, format!("{PREFIX}next"));
        }
        RuntimeRoute::Result(id, outcome) => {
            assert_eq!(method, Method::POST);
            assert!(is_request_id(id.as_str()) && id.as_str().len() <= 64);
            let ending = match outcome {
                Outcome::Response => "response",
                Outcome::Error => "error",
            };
            assert_eq!(path, format!("{PREFIX}{}/{ending}", id.as_str()));
        }
        RuntimeRoute::Other => {}
    }

    let mut headers = HeaderMap::new();
    for (name, value) in scoped_secrets::fuzzing::header_lines(lines) {
        headers.append(name, value);
    }
    match runtime_next(&headers) {
        Some(RuntimeEvent::Next { request_id, deadline_ms, tenant_id }) => {
            assert!(is_request_id(request_id.as_str()));
            let header = headers.get("lambda-runtime-aws-request-id").and_then(|v| v.to_str().ok());
            assert_eq!(header, Some(request_id.as_str()));
            let deadline = headers.get("lambda-runtime-deadline-ms").and_then(|v| v.to_str().ok());
            assert_eq!(deadline.and_then(|d| d.trim().parse::<u64>().ok()), Some(deadline_ms));
            let tenant_header = headers.get("lambda-runtime-aws-tenant-id");
            assert_eq!(tenant_id.is_some(), tenant_header.is_some());
            if let (Some(tenant), Some(header)) = (tenant_id, tenant_header) {
                assert!(tenant.len() <= MAX_TENANT_HEADER, "a tenant id kept at {} bytes", tenant.len());
                if let Ok(text) = std::str::from_utf8(header.as_bytes())
                    && text.len() <= MAX_TENANT_HEADER
                {
                    assert_eq!(tenant, text, "a short tenant id is kept whole");
                }
            }
        }
        Some(RuntimeEvent::Responded { .. }) => panic!("a /next answer reported a result"),
        None => {
            let id = headers.get("lambda-runtime-aws-request-id").and_then(|v| v.to_str().ok());
            let deadline = headers.get("lambda-runtime-deadline-ms").and_then(|v| v.to_str().ok());
            let valid = id.is_some_and(is_request_id) && deadline.and_then(|d| d.trim().parse::<u64>().ok()).is_some();
            // `get` reads the first value, as the proxy does.
            assert!(!valid, "a valid /next answer was not reported");
        }
    }
});
