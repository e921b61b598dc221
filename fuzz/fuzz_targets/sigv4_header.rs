//! The SigV4 `Authorization` header parser and the `X-Amz-Date` parser on their own, and
//! `sigv4::verify` with both as a request would carry them.
//!
//! Input: a first line, the `Authorization` header's text; a second line, the `X-Amz-Date`
//! text. Checked besides "never panics": a parsed header's parts are pieces of the input, each
//! no longer than it, the signature 64 hex digits, the signed header names non-empty lower-case
//! tokens, and rendering the parts again parses to the same parts; a parsed date is 16 bytes of
//! `YYYYMMDDThhmmssZ` between 1970 and 9999; `verify` never accepts the input (it cannot carry a
//! valid HMAC), and no refusal's text holds the secret key or the session token: it is a short
//! fixed sentence, whatever the input.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use scoped_secrets::domain::time::parse_amz_date;
use scoped_secrets::fuzzing::{self, ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, SESSION_TOKEN, parse_authorization};
use scoped_secrets::sigv4::{FunctionCredentials, Signed, verify};

/// Whether `part` lies inside `whole` (borrowed from it, not copied).
fn within(part: &str, whole: &str) -> bool {
    let (start, end) = (whole.as_ptr() as usize, whole.as_ptr() as usize + whole.len());
    let at = part.as_ptr() as usize;
    part.is_empty() || (at >= start && at + part.len() <= end)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (authorization, date) = text.split_once('\n').unwrap_or((&text, ""));
    let date = date.split('\n').next().unwrap_or_default();

    if let Some(parts) = parse_authorization(authorization) {
        let pieces = [parts.access_key_id, parts.date, parts.region, parts.service, parts.terminator, parts.signature];
        for piece in pieces.iter().chain(parts.signed_headers.iter()) {
            assert!(within(piece, authorization), "a part is not a piece of the header");
            assert!(piece.len() <= authorization.len());
            assert!(!piece.contains(',') && !piece.contains('/') || *piece == parts.signature, "{piece:?}");
        }
        assert_eq!(parts.signature.len(), 64);
        assert!(parts.signature.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!parts.signed_headers.is_empty() && parts.signed_headers.len() <= authorization.len() / 2 + 1);
        for name in &parts.signed_headers {
            assert!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
        }
        let rendered = format!(
            "AWS4-HMAC-SHA256 Credential={}/{}/{}/{}/{}, SignedHeaders={}, Signature={}",
            parts.access_key_id,
            parts.date,
            parts.region,
            parts.service,
            parts.terminator,
            parts.signed_headers.join(";"),
            parts.signature
        );
        assert_eq!(parse_authorization(&rendered), Some(parts.clone()), "{rendered:?}");
    }

    if let Some(time) = parse_amz_date(date) {
        let bytes = date.as_bytes();
        assert!(bytes.len() == 16 && bytes[8] == b'T' && bytes[15] == b'Z');
        assert!(bytes[..8].iter().chain(&bytes[9..15]).all(u8::is_ascii_digit));
        let seconds = time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(u64::MAX);
        assert!(seconds < 253_402_300_800 + 86_400, "after 9999: {date}"); // 10000-01-01, with a leap second's slack
        assert!(time >= UNIX_EPOCH);
    }

    // Both as a request carries them, verified with the function's credentials at the fixed clock.
    let (Ok(authorization_value), Ok(date_value)) = (HeaderValue::from_str(authorization), HeaderValue::from_str(date))
    else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert("authorization", authorization_value);
    headers.insert("x-amz-date", date_value);
    headers.insert("host", HeaderValue::from_static("127.0.0.1:2773"));
    headers.insert("x-amz-target", HeaderValue::from_static("secretsmanager.GetSecretValue"));
    headers.insert("x-amz-security-token", HeaderValue::from_static(SESSION_TOKEN));
    let credentials = FunctionCredentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, Some(SESSION_TOKEN));
    let signed = Signed { method: "POST", path_and_query: "/", headers: &headers, body: b"{}" };
    let now = fuzzing::now() + Duration::from_secs(u64::from(data.first().copied().unwrap_or(0) % 4) * 60);
    match verify(signed, &credentials, REGION, "secretsmanager", now) {
        Ok(()) => panic!("a signature the input made up was accepted"),
        Err(refused) => {
            let said = format!("{refused} {refused:?}");
            assert!(!said.contains(SECRET_ACCESS_KEY) && !said.contains(SESSION_TOKEN), "{said}");
            // A fixed sentence per reason, never the input (a header may be that sentence itself).
            assert!(refused.to_string().len() <= 60, "{refused}");
        }
    }
    let debug = format!("{credentials:?}");
    assert!(!debug.contains(SECRET_ACCESS_KEY) && !debug.contains(SESSION_TOKEN));
});
