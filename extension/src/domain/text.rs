//! Caller text on its way in: percent-decoding (the `percent-encoding` crate already in the
//! SDK's tree, not a decoder of our own) and bounding what may reach a log line.

/// The longest piece of caller text a log line shows.
pub const MAX_LOGGED_CHARS: usize = 256;

/// `%XX` sequences decoded; anything else, a malformed `%` included, kept as it is. Invalid
/// UTF-8 becomes U+FFFD, which no allowlist entry contains: refused, never guessed at.
pub fn percent_decode_lossy(encoded: &str) -> String {
    percent_encoding::percent_decode_str(encoded).decode_utf8_lossy().into_owned()
}

/// Caller text as a log line may show it: without control characters and at most
/// [`MAX_LOGGED_CHARS`] characters.
/// Borrowed when `text` already is (every allowed read's id): no copy per audit line.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let short = text.len() <= MAX_LOGGED_CHARS;
    if short && !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(text.chars().filter(|c| !c.is_control()).take(MAX_LOGGED_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_keeps_what_is_not_an_escape_and_never_guesses() {
        assert_eq!(percent_decode_lossy("app%2Fdb"), "app/db");
        assert_eq!(percent_decode_lossy("app/db"), "app/db");
        assert_eq!(percent_decode_lossy("a%2"), "a%2");
        assert_eq!(percent_decode_lossy("100%"), "100%");
        assert_eq!(percent_decode_lossy("%zz"), "%zz");
        assert_eq!(percent_decode_lossy("%FF"), "\u{FFFD}");
        assert_eq!(printable("a\nb\u{7f}c"), "abc");
        assert_eq!(printable(&"x".repeat(1_000)).len(), MAX_LOGGED_CHARS);
    }
}
