//! Invocation request ids as the extension accepts them before they become a map key, a scope
//! label or part of a session name: whatever their source (the Runtime API's `/next` answer, a
//! Runtime API path, a telemetry record, a caller's `X-Scoped-Secrets-Request-Id`), an id is
//! only a label, and one that is not 1 to 64 of `A-Z a-z 0-9 - _` is refused before it is
//! stored or compared, so a forged record cannot make the extension hold more than a few bytes
//! per id. Lambda's own ids are UUIDs (36 characters).
//! See <https://docs.aws.amazon.com/lambda/latest/dg/telemetry-schema-reference.html>.

use std::fmt;

/// The longest request id accepted: a UUID's 36 characters with room to spare, and no more
/// than a `RoleSessionName` could carry anyway.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// A request id: 1 to 64 of `A-Z a-z 0-9 - _`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// Validates `raw`. The error says what is wrong without echoing it.
    ///
    /// # Errors
    /// Why `raw` is not a request id.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        check(raw).map(|()| Self(raw.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `text` can be a request id ([`RequestId::parse`] would accept it), without keeping it.
pub fn is_request_id(text: &str) -> bool {
    check(text).is_ok()
}

/// The one rule, for [`RequestId::parse`] and [`is_request_id`].
fn check(raw: &str) -> Result<(), &'static str> {
    if raw.is_empty() || raw.len() > MAX_REQUEST_ID_BYTES {
        return Err("a request id is 1 to 64 characters");
    }
    if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
        return Err("a request id uses only A-Z a-z 0-9 - _");
    }
    Ok(())
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestId").field(&self.0).finish()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_accepted() {
        for valid in ["8f0e7c1a-1b2c-4d5e-9f00-112233445566", "req-1", "a", "A_b-9", &"x".repeat(64)] {
            assert_eq!(RequestId::parse(valid).map(|id| id.as_str().to_owned()), Ok(valid.to_owned()));
            assert!(is_request_id(valid), "{valid}");
        }
        let long = "x".repeat(65);
        for invalid in ["", "a b", "a/b", "../x", "a:b", "a*b", "é", "a\nb", &long, &"y".repeat(1 << 20)] {
            assert!(RequestId::parse(invalid).is_err(), "{:.20}", invalid);
            assert!(!is_request_id(invalid), "{:.20}", invalid);
        }
    }
}
