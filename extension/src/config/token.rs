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
        // Eight bytes per step, every step taken, the running difference passed through
        // `black_box` (as `subtle` does per byte) so no early exit can be compiled in: a token
        // of ~1 KB compared byte by byte was 6 % of a cached GET's instructions.
        let word = |chunk: &[u8]| {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            u64::from_ne_bytes(word)
        };
        let mut difference = 0u64;
        for (a, b) in expected.chunks(8).zip(candidate.chunks(8)) {
            difference = std::hint::black_box(difference | (word(a) ^ word(b)));
        }
        bool::from(difference.ct_eq(&0))
    }

    /// Whether `text` contains the token, so a log line can leave it out. Not constant-time:
    /// call it only on requests that already proved they hold the token (nothing to learn).
    pub fn appears_in(&self, text: &str) -> bool {
        !self.0.is_empty() && text.contains(self.0.as_str())
    }
}

impl fmt::Debug for LocalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalToken(<redacted>)")
    }
}
