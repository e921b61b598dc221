//! Request ids as the platform names invocations. Lambda's are UUIDs (36 characters); text
//! that claims to be one is bounded before it is stored or compared, so a forged record cannot
//! make the extension hold more than a few bytes per id.
//! See <https://docs.aws.amazon.com/lambda/latest/dg/telemetry-schema-reference.html>.

/// Longest request id accepted: a UUID's 36 characters with room to spare, and no more than
/// a `RoleSessionName` could carry anyway.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// Whether `text` can be a request id: 1 to [`MAX_REQUEST_ID_BYTES`] printable ASCII
/// characters, no space.
pub fn is_request_id(text: &str) -> bool {
    (1..=MAX_REQUEST_ID_BYTES).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_short_printable_ascii() {
        for valid in ["8f0e7c1a-1b2c-4d5e-9f00-112233445566", "r1", &"x".repeat(64)] {
            assert!(is_request_id(valid), "{valid}");
        }
        for invalid in ["", &"x".repeat(65), "a b", "a\nb", "é", &"y".repeat(1 << 20)] {
            assert!(!is_request_id(invalid), "{invalid:.20}");
        }
    }
}
