//! The Systems Manager protocol's JSON bodies (`local_api::ssm`, through `local_api::sdk`'s
//! `POST /`): `GetParameter` and `GetParameters` inputs, signed with the function's known
//! credentials at the fixed clock, so every body reaches the parser.
//!
//! Input: a flag byte, then the body. Flags: bit 0 picks `GetParameters` (else
//! `GetParameter`); bit 1 forges the signature (a wrong secret key) instead. The harness's
//! parameters are `/app/db` and `cfg` (`/app/config`), its secrets `db` (`app/db`) and `app/api`
//! (reachable as `/aws/reference/secretsmanager/…`).
//!
//! The read path behind it has no session: every fetch it attempts is refused and counted.
//! Checked besides "never panics": no answer holds the session token or the secret key unless
//! the input did; a forged request never fetches; a 4xx refusal (a malformed body, a name not
//! allowlisted, a reference without decryption) never fetched; at most 10 fetches per request
//! (`GetParameters` takes 1 to 10 names); a 200 serves no value; and a genuine `GetParameter`
//! of an allowlisted name (the `get-parameter` seed) does reach the store.

#![no_main]

use bytes::Bytes;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use scoped_secrets::fuzzing::{self, SECRET_ACCESS_KEY, SESSION_TOKEN, Sdk};

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static SDK: Sdk = Sdk::new();
    }
    let Some((&flags, body)) = data.split_first() else { return };
    let operation = if flags & 1 != 0 { "AmazonSSM.GetParameters" } else { "AmazonSSM.GetParameter" };
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri("/")
        .header("host", "127.0.0.1:2773")
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", operation)
        .body(Full::new(Bytes::copy_from_slice(body)));
    let Ok(mut request) = request else { return };
    let forged = flags & 2 != 0;
    let secret = if forged { "not-the-function-s-secret-key" } else { SECRET_ACCESS_KEY };
    assert!(Sdk::sign(&mut request, body, "ssm", fuzzing::now(), secret), "the harness's request signs");
    let quoted = contains(data, SESSION_TOKEN) || contains(data, SECRET_ACCESS_KEY);

    let answer = SDK.with(|sdk| sdk.handle(request));

    if !quoted {
        assert!(!contains(&answer.body, SESSION_TOKEN), "the session token in an answer");
        assert!(!contains(&answer.body, SECRET_ACCESS_KEY), "the secret key in an answer");
    }
    if forged {
        assert_eq!(answer.fetches, 0, "a forged request reached a fetch");
        assert_eq!(answer.status, 400);
    }
    if answer.fetches > 0 {
        assert!(!(400..500).contains(&answer.status), "a {} refusal fetched: {:?}", answer.status, answer.denies);
    }
    assert!(answer.fetches <= 10, "{} fetches for one request", answer.fetches);
    if answer.status == 200 {
        assert!(contains(&answer.body, "\"Parameters\":[]"), "a value served without a session");
    }
    if !forged && flags & 1 == 0 && body == br#"{"Name":"/app/db"}"# {
        assert_eq!(answer.fetches, 1, "a genuine GetParameter did not reach the store: {:?}", answer.denies);
    }
    // Every answer, success or refusal, is Parameter Store's JSON.
    assert!(answer.body.first() == Some(&b'{'));
});
