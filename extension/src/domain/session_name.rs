//! `RoleSessionName`s: `ss-{env}-{request}[-{sequence}]`, so CloudTrail ties every read to one
//! environment and one invocation, and a deny can target one environment. STS accepts 2 to 64
//! of `[\w+=,.@-]`; the emulator does not check this, so the extension does.
//! See <https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html>.

/// The longest name STS accepts.
pub const MAX_CHARS: usize = 64;

/// The name for a session: `ss-{env}-{request}` cut to STS's 64 characters, using only the
/// characters STS accepts; `-{sequence}` is kept at the end when the scope renews its session.
pub fn session_name(environment_id: &str, request_id: &str, sequence: u32) -> String {
    let clean = |text: &str| -> String {
        text.chars().filter(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(*c)).collect()
    };
    let suffix = if sequence == 0 { String::new() } else { format!("-{sequence}") };
    let mut name = format!("ss-{}-{}", clean(environment_id), clean(request_id));
    name.truncate(MAX_CHARS - suffix.len());
    name.push_str(&suffix);
    name
}

/// Whether STS would accept `name` as a `RoleSessionName`.
pub fn is_valid(name: &str) -> bool {
    (2..=MAX_CHARS).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_are_valid_for_sts_whatever_the_request_id() {
        let cases = [
            ("a1b2c3", "8f0e7c1a-1b2c-4d5e-9f00-112233445566", 0),
            ("a1b2c3", "weird id/with:chars and spaces", 0),
            ("a1b2c3", &"x".repeat(200), 0),
            ("a1b2c3", &"x".repeat(200), 12),
            ("", "", 0),
        ];
        for (environment, request, sequence) in cases {
            let name = session_name(environment, request, sequence);
            assert!(is_valid(&name), "{name}");
            assert!(name.starts_with("ss-"));
        }
        assert_eq!(session_name("env1", "req-1", 0), "ss-env1-req-1");
        assert_eq!(session_name("env1", "req-1", 2), "ss-env1-req-1-2");
        assert!(session_name("a1b2c3", &"x".repeat(200), 12).ends_with("-12"));
        for invalid in ["a", &"a".repeat(65), "has space", "a/b", "a:b", "a*b"] {
            assert!(!is_valid(invalid), "{invalid}");
        }
    }
}
