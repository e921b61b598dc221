//! Tenant ids (Lambda's tenant isolation mode) and the `{tenant}` syntax of allowlist entries.
//! See <https://docs.aws.amazon.com/lambda/latest/dg/tenant-isolation.html>.

use std::fmt;

/// The placeholder an allowlist entry may contain.
pub const PLACEHOLDER: &str = "{tenant}";
/// Longest tenant id accepted: the allowlist's names and the session policy must stay within
/// AWS's limits with it substituted.
pub const MAX_TENANT_ID_CHARS: usize = 64;

/// A tenant id fit to stand in a secret name and an IAM resource pattern: 1 to 64 of
/// `A-Z a-z 0-9 _ . -`, starting with a letter or digit, without `..`. Nothing that widens a
/// pattern (`*`, `?`), crosses a path (`/`, `..`) or breaks out of an ARN (`:`) passes.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantId(String);

impl TenantId {
    /// Validates `raw`.
    ///
    /// # Errors
    /// What is wrong with it (never echoing it: it is the platform's text, not ours).
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.is_empty() || raw.len() > MAX_TENANT_ID_CHARS {
            return Err("a tenant id is 1 to 64 characters");
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
            return Err("a tenant id uses only A-Z a-z 0-9 _ . -");
        }
        if !raw.as_bytes()[0].is_ascii_alphanumeric() || raw.contains("..") {
            return Err("a tenant id starts with a letter or digit and has no ..");
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TenantId").field(&self.0).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_that_could_widen_or_escape_a_pattern_are_refused() {
        for valid in ["blue", "tenant-42", "a", "A.b_c-9", &"x".repeat(64)] {
            assert_eq!(TenantId::parse(valid).map(|t| t.as_str().to_owned()), Ok(valid.to_owned()));
        }
        let long = "x".repeat(65);
        let hostile =
            ["", "*", "?", "blue*", "../x", "..", "a..b", "a/b", "/", ".hidden", "-x", "a:b", "a b", "é", &long];
        for raw in hostile {
            assert!(TenantId::parse(raw).is_err(), "{raw:?}");
        }
        assert!(TenantId::parse(&"y".repeat(200)).is_err());
    }
}
