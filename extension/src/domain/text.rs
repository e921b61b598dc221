//! Caller text on its way in: percent-decoding (the `percent-encoding` crate already in the
//! SDK's tree, not a decoder of our own), query pairs ([`form_pairs`], by hand: a profile said
//! so) and bounding what may reach a log line.

use std::borrow::Cow;

/// The longest piece of caller text a log line shows.
pub const MAX_LOGGED_CHARS: usize = 256;

/// `%XX` sequences decoded; anything else, a malformed `%` included, kept as it is. Invalid
/// UTF-8 becomes U+FFFD, which no allowlist entry contains: refused, never guessed at.
pub fn percent_decode_lossy(encoded: &str) -> String {
    percent_encoding::percent_decode_str(encoded).decode_utf8_lossy().into_owned()
}

/// A query string's `name=value` pairs as `application/x-www-form-urlencoded` reads them, the
/// same pairs `form_urlencoded::parse` gives (pieces split at `&`, empty ones skipped, a name
/// without `=` has an empty value; `+` is a space, `%XX` a byte, invalid UTF-8 U+FFFD), in one
/// pass per piece, borrowed when there is nothing to decode. Through `form_urlencoded` the
/// decoding was 5 % of a cached GET's instructions (an iterator step per byte).
pub fn form_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|piece| !piece.is_empty()).map(|piece| {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        (form_decode(name), form_decode(value))
    })
}

fn form_decode(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    if !bytes.iter().any(|&byte| byte == b'%' || byte == b'+') {
        return Cow::Borrowed(text);
    }
    let hex = |byte: u8| char::from(byte).to_digit(16);
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        index += 1;
        let escaped = match (byte, bytes.get(index), bytes.get(index + 1)) {
            (b'%', Some(&high), Some(&low)) => hex(high).zip(hex(low)).map(|(high, low)| (high * 16 + low) as u8),
            _ => None,
        };
        match (byte, escaped) {
            (_, Some(value)) => {
                decoded.push(value);
                index += 2;
            }
            (b'+', None) => decoded.push(b' '),
            (other, None) => decoded.push(other),
        }
    }
    match String::from_utf8(decoded) {
        Ok(text) => Cow::Owned(text),
        Err(invalid) => Cow::Owned(String::from_utf8_lossy(invalid.as_bytes()).into_owned()),
    }
}

/// Whether `text` holds U+FFFD: an escape that decoded to invalid UTF-8 (or the text itself
/// had it). ASCII text cannot, and that is told a word at a time: `str::contains` with a `char`
/// took ~170 instructions per call on a cached GET's short names and ids (callgrind).
pub fn has_replacement(text: &str) -> bool {
    !text.is_ascii() && text.contains('\u{FFFD}')
}

/// `a == b`, a word at a time, for text on the request path that is not secret (it may stop
/// at the first difference). The `bcmp` the musl build links (Zig's compiler-rt) compares a
/// byte at a time: about 6 instructions a byte under callgrind, 500 of a cached GET's.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let word = |chunk: &[u8]| u64::from_ne_bytes(<[u8; 8]>::try_from(chunk).unwrap_or_default());
    if a.len() != b.len() {
        return false;
    }
    let Some(last) = a.len().checked_sub(8) else {
        return a.iter().zip(b).all(|(x, y)| x == y);
    };
    // The last eight bytes as one word, overlapping the whole words before them: no byte-by-byte
    // tail (the ids compared on the read path are 36 bytes: four words and four bytes).
    word(&a[last..]) == word(&b[last..]) && a.chunks_exact(8).zip(b.chunks_exact(8)).all(|(x, y)| word(x) == word(y))
}

/// `value` in decimal, written at the end of `digits` (twenty hold any `u64`), without the
/// `fmt` machinery: an audit line's numbers and an answer's `content-length`.
pub fn decimal(value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    &digits[at..]
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
    fn same_bytes_is_equality() {
        let texts: [&[u8]; 9] =
            [b"", b"a", b"b", b"abcdefgh", b"abcdefgi", b"abcdefghi", b"abcdefghj", b"bbcdefghi", b"abcdefgh\0"];
        for a in texts {
            for b in texts {
                assert_eq!(same_bytes(a, b), a == b, "{a:?} {b:?}");
            }
        }
        let long = "671bc2ea-c6c0-4cab-91f7-097215396fa6";
        for at in 0..long.len() {
            let mut other = long.as_bytes().to_vec();
            other[at] ^= 1;
            assert!(!same_bytes(long.as_bytes(), &other), "differs at {at}");
        }
        assert!(same_bytes(long.as_bytes(), long.to_owned().as_bytes()));
        // Every length around the word size and its overlapping last word, a flip at every byte.
        for length in 0..=25u8 {
            let text: Vec<u8> = (1..=length).collect();
            assert!(same_bytes(&text, &text.clone()), "length {length}");
            for at in 0..text.len() {
                let mut other = text.clone();
                other[at] ^= 0x80;
                assert!(!same_bytes(&text, &other), "length {length}, differs at {at}");
            }
        }
    }

    #[test]
    fn decimal_is_to_string() {
        let mut digits = [0; 20];
        for value in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            assert_eq!(decimal(value, &mut digits), value.to_string().as_bytes());
        }
    }

    #[test]
    fn query_pairs_are_those_form_urlencoded_gives() {
        let queries = [
            "secretId=app%2Fdb",
            "secretId=a+b&versionStage=AWS%2BX",
            "&&a=1&&b&=c&d==e&",
            "x=%zz%2&y=100%&z=%",
            "bad=%FF%FE&ok=%C3%A9",
            "k%3Dv=1%263",
            "%41%4a%4A=%e2%82%ac",
            "",
            "plain=value",
        ];
        for query in queries {
            let ours: Vec<_> = form_pairs(query).collect();
            let theirs: Vec<_> = form_urlencoded::parse(query.as_bytes()).collect();
            assert_eq!(ours, theirs, "{query}");
        }
        assert!(matches!(form_pairs("a=b").next(), Some((Cow::Borrowed(_), Cow::Borrowed(_)))));
    }

    #[test]
    fn decoding_keeps_what_is_not_an_escape_and_never_guesses() {
        assert_eq!(percent_decode_lossy("app%2Fdb"), "app/db");
        assert_eq!(percent_decode_lossy("app/db"), "app/db");
        assert_eq!(percent_decode_lossy("a%2"), "a%2");
        assert_eq!(percent_decode_lossy("100%"), "100%");
        assert_eq!(percent_decode_lossy("%zz"), "%zz");
        assert_eq!(percent_decode_lossy("%FF"), "\u{FFFD}");
        assert!(has_replacement(&percent_decode_lossy("a%FF")) && has_replacement("x\u{FFFD}"));
        assert!(!has_replacement("app/db") && !has_replacement("é€") && !has_replacement(""));
        assert_eq!(printable("a\nb\u{7f}c"), "abc");
        assert_eq!(printable(&"x".repeat(1_000)).len(), MAX_LOGGED_CHARS);
    }
}
