//! Which version of a secret a request asks for, and the shape of version ids and staging
//! labels, checked the same way by both protocols before anything reaches AWS.
//! See <https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_GetSecretValue.html>.

/// Longest staging label.
pub const MAX_STAGE_CHARS: usize = 256;
/// Longest version id.
pub const MAX_VERSION_ID_CHARS: usize = 64;

/// Which version of a secret a request wants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Version {
    /// `AWSCURRENT`, the default.
    Current,
    /// A staging label other than `AWSCURRENT`.
    Stage(String),
    /// A version id.
    Id(String),
}

impl Version {
    /// The version a staging label names (`AWSCURRENT` is [`Version::Current`]).
    pub fn stage(label: String) -> Self {
        if label == "AWSCURRENT" { Version::Current } else { Version::Stage(label) }
    }
}

/// Whether `label` has the shape of a staging label.
pub fn is_stage(label: &str) -> bool {
    well_formed(label, MAX_STAGE_CHARS)
}

/// Whether `id` has the shape of a version id.
pub fn is_version_id(id: &str) -> bool {
    well_formed(id, MAX_VERSION_ID_CHARS)
}

fn well_formed(text: &str, max: usize) -> bool {
    (1..=max).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_ids_are_plain_and_bounded() {
        assert!(is_stage("AWSPREVIOUS") && is_version_id("a1b2-c3"));
        for bad in ["", "a/b", "a*b", "a b", "a%2Fb"] {
            assert!(!is_stage(bad) && !is_version_id(bad), "{bad:?}");
        }
        assert!(is_stage(&"a".repeat(256)) && !is_stage(&"a".repeat(257)));
        assert!(is_version_id(&"a".repeat(64)) && !is_version_id(&"a".repeat(65)));
        assert_eq!(Version::stage("AWSCURRENT".into()), Version::Current);
        assert_eq!(Version::stage("AWSPENDING".into()), Version::Stage("AWSPENDING".into()));
    }
}
