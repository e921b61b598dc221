//! The local token: what every GET API request must present in
//! `X-Aws-Parameters-Secrets-Token`, as with AWS's Parameters and Secrets extension.

use std::fmt;

use zeroize::Zeroizing;

/// The value every local request must present: the function's own `AWS_SESSION_TOKEN`.
/// Held in wiped memory, compared in constant time, never printed.
#[derive(Clone)]
pub struct LocalToken(Zeroizing<String>);

impl LocalToken {
    /// The token from the function's `AWS_SESSION_TOKEN` (or SnapStart's container token),
    /// copied into wiped memory.
    pub fn new(value: &str) -> Self {
        Self(Zeroizing::new(value.to_owned()))
    }

    /// Whether `candidate` equals the token, in time independent of where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let expected = self.0.as_bytes();
        // Length is not secret (AWS session tokens are long and of public shape).
        if expected.len() != candidate.len() {
            return false;
        }
        // Sixteen bytes per step, every step taken, the running difference passed through
        // `black_box` (as `subtle` does per byte) so no early exit can be compiled in: a token
        // of ~1 KB compared byte by byte was 6 % of a cached GET's instructions. Whole words
        // are loaded as words (a copy of a slice of unknown length is a `memcpy` call: 34 per
        // request, 2 % of a cached GET). What is left after the 16-byte steps is read as
        // words too, the last one overlapping the bytes before it (equality does not mind a
        // byte compared twice; which bytes are compared depends on the length alone).
        let word = |chunk: &[u8]| u64::from_ne_bytes(<[u8; 8]>::try_from(chunk).unwrap_or_default());
        let mut difference = 0u64;
        let length = expected.len();
        if length < 8 {
            for (a, b) in expected.iter().zip(candidate) {
                difference = std::hint::black_box(difference | u64::from(a ^ b));
            }
        } else {
            for (a, b) in expected.chunks_exact(16).zip(candidate.chunks_exact(16)) {
                let (a_low, a_high) = a.split_at(8);
                let (b_low, b_high) = b.split_at(8);
                difference =
                    std::hint::black_box(difference | (word(a_low) ^ word(b_low)) | (word(a_high) ^ word(b_high)));
            }
            let rest = length % 16;
            if rest > 8 {
                let at = length - rest;
                difference =
                    std::hint::black_box(difference | (word(&expected[at..at + 8]) ^ word(&candidate[at..at + 8])));
            }
            let last = length - 8;
            difference = std::hint::black_box(difference | (word(&expected[last..]) ^ word(&candidate[last..])));
        }
        bool::from(difference.ct_eq(&0))
    }

    /// Whether `text` carries the token or a long piece of it, however it was decoded on the
    /// way in, so a log line can leave it out: both are compared as their letters and digits
    /// only (a form-decoded `+` became a space, `/` and `=` may be escaped or dropped), ignoring
    /// case, after undoing any percent escapes still in `text` (an id encoded twice), and any
    /// run of [`TOKEN_PIECE`] of them that the token also has counts. Not constant-time: call
    /// it only on requests that already proved they hold the token, or verified a signature
    /// made with it (nothing to learn).
    pub fn appears_in(&self, text: &str) -> bool {
        let token = Zeroizing::new(skeleton(self.0.as_bytes()));
        if token.is_empty() {
            return false;
        }
        let mut decoded = Zeroizing::new(text.as_bytes().to_vec());
        for _ in 0..3 {
            let next: Vec<u8> = percent_encoding::percent_decode(&decoded).collect();
            if next == *decoded {
                break;
            }
            decoded = Zeroizing::new(next);
        }
        let text = Zeroizing::new(skeleton(&decoded));
        let piece = TOKEN_PIECE.min(token.len());
        text.windows(piece).any(|window| token.windows(piece).any(|part| part == window))
    }
}

/// How many letters and digits in a row of the token make "a long piece" of it: a log line
/// never shows that many (base64 gives 6 bits each, so 16 carry 96 bits of the token).
pub const TOKEN_PIECE: usize = 16;

/// The letters and digits of `text`, lower-cased.
fn skeleton(text: &[u8]) -> Vec<u8> {
    text.iter().filter(|b| b.is_ascii_alphanumeric()).map(u8::to_ascii_lowercase).collect()
}

impl fmt::Debug for LocalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session token of AWS's shape: base64 with `+`, `/` and `=`.
    const TOKEN: &str = "IQoJb3JpZ2luX2VjEHYaCXVzLWVhc3QtMSJHMEUCIQD+8f1/aB3kLmN9pQ7rS2tU4vW6xY0zA1bC3dE5fG7hIJ\
        +KLmNoPqRsTuVwXyZ/012345abcdEFGH+ijklMNOP/qrstUVWX==";

    #[test]
    fn every_length_is_compared_whole() {
        for length in 0..=48u8 {
            let text: Vec<u8> = (b'0'..b'0' + length).collect();
            let token = LocalToken::new(std::str::from_utf8(&text).expect("ASCII"));
            assert!(token.matches(&text), "length {length}");
            assert!(length == 0 || !token.matches(&text[1..]), "length {length}, shorter");
            for at in 0..text.len() {
                let mut other = text.clone();
                other[at] ^= 0x20;
                assert!(!token.matches(&other), "length {length}, differs at {at}");
            }
        }
    }

    #[test]
    fn the_token_is_found_however_it_was_decoded() {
        let token = LocalToken::new(TOKEN);
        let form_decoded = TOKEN.replace('+', " ");
        let percent = TOKEN.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
        let twice = percent.replace('%', "%25");
        let url_safe = TOKEN.replace('+', "-").replace('/', "_").replace('=', "");
        let found = [
            TOKEN.to_owned(),
            form_decoded,
            percent,
            twice,
            url_safe,
            TOKEN.to_lowercase(),
            TOKEN.to_uppercase(),
            TOKEN[..40].to_owned(),
            TOKEN[TOKEN.len() - 40..].to_owned(),
            format!("app/{}", &TOKEN[20..60]),
            format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{}", &TOKEN[5..45]),
        ];
        for text in &found {
            assert!(token.appears_in(text), "{text}");
        }
        for clean in ["app/db", "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-AbC123", "", &TOKEN[..10]]
        {
            assert!(!token.appears_in(clean), "{clean}");
        }
        assert!(!LocalToken::new("").appears_in("anything"));
    }
}
