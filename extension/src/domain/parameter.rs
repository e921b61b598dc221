//! Parameter Store's vocabulary: parameter names and the ARNs they become, which version of a
//! parameter a read asks for (`name:3`, `name:label`), and the reserved path through which a
//! Secrets Manager secret is read as a parameter.
//! See <https://docs.aws.amazon.com/systems-manager/latest/userguide/sysman-paramstore-su-create.html>
//! and <https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_GetParameter.html>.

use super::tenant::{MAX_TENANT_ID_CHARS, PLACEHOLDER};

/// Longest name `GetParameter` takes (the API's limit; a name AWS creates is shorter).
pub const MAX_NAME_CHARS: usize = 2_048;
/// Deepest hierarchy AWS allows (`/a/b/…`, fifteen levels).
pub const MAX_DEPTH: usize = 15;
/// Longest parameter label.
pub const MAX_LABEL_CHARS: usize = 100;
/// The reserved path that reads a Secrets Manager secret through Parameter Store.
/// See <https://docs.aws.amazon.com/systems-manager/latest/userguide/integration-ps-secretsmanager.html>.
pub const SECRETS_REFERENCE: &str = "/aws/reference/secretsmanager/";

/// Which version of a parameter a read wants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ParameterVersion {
    /// The newest version.
    Latest,
    /// A version number (`name:3`).
    Number(u64),
    /// A label (`name:prod`).
    Label(String),
}

impl ParameterVersion {
    /// The selector `GetParameter` takes after the name (`:3`, `:prod`), if any.
    pub fn selector(&self) -> Option<String> {
        match self {
            ParameterVersion::Latest => None,
            ParameterVersion::Number(number) => Some(format!(":{number}")),
            ParameterVersion::Label(label) => Some(format!(":{label}")),
        }
    }

    /// A version number as a query or a selector writes it: 1 or more, digits only.
    pub fn number(text: &str) -> Option<Self> {
        let digits = !text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| text.parse::<u64>().ok()).flatten().filter(|n| *n > 0).map(ParameterVersion::Number)
    }

    /// A label: 1 to 100 of `A-Z a-z 0-9 . - _`, not starting with a digit (AWS's rule, so a
    /// label can never be read as a version number).
    pub fn label(text: &str) -> Option<Self> {
        let valid = (1..=MAX_LABEL_CHARS).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !text.as_bytes()[0].is_ascii_digit();
        valid.then(|| ParameterVersion::Label(text.to_owned()))
    }
}

/// A requested name or ARN split from its selector: `/app/db:3` → (`/app/db`, version 3).
/// Names cannot contain `:`, so a selector is whatever follows the last `:` of a name, or the
/// last `:` after an ARN's five. `None` when the selector is neither a version nor a label.
pub fn split_selector(requested: &str) -> Option<(&str, ParameterVersion)> {
    let colons = if requested.starts_with("arn:") { 6 } else { 1 };
    if requested.matches(':').count() < colons {
        return Some((requested, ParameterVersion::Latest));
    }
    let (base, selector) = requested.rsplit_once(':')?;
    if base.matches(':').count() != colons - 1 {
        return None;
    }
    let version = if selector.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        ParameterVersion::number(selector)
    } else {
        ParameterVersion::label(selector)
    };
    version.map(|version| (base, version))
}

/// The secret id a reserved `/aws/reference/secretsmanager/ID` name reads, if it is one.
pub fn referenced_secret(name: &str) -> Option<&str> {
    name.strip_prefix(SECRETS_REFERENCE).filter(|id| !id.is_empty())
}

/// Checks a parameter name as an allowlist entry may write it: 1 to 2,048 characters (a
/// `{tenant}` counts as 64) of `A-Z a-z 0-9 _ . - /`; a name in a hierarchy starts with `/`
/// (AWS's "fully qualified" rule), has no empty level and at most fifteen; not `aws…` or
/// `ssm…` (reserved by AWS; a secret is read through `SCOPED_SECRETS_SECRETS`). Wildcards never
/// pass, so an entry can never widen into a pattern.
///
/// # Errors
/// What is wrong, as the end of a sentence.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    let placeholders = name.matches(PLACEHOLDER).count();
    let plain = name.replace(PLACEHOLDER, "");
    let longest = plain.len() + placeholders * MAX_TENANT_ID_CHARS;
    if name.is_empty() || longest > MAX_NAME_CHARS {
        return Err("a parameter name is 1 to 2048 characters (a {tenant} counts as 64)");
    }
    if !plain.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b)) {
        return Err("a parameter name uses only A-Z a-z 0-9 _ . - / and {tenant} (no wildcards)");
    }
    if name.contains('/') {
        let levels: Vec<&str> = name.strip_prefix('/').unwrap_or("").split('/').collect();
        if !name.starts_with('/') || levels.iter().any(|level| level.is_empty()) {
            return Err("a parameter name in a hierarchy starts with / and has no empty level (/app/db)");
        }
        if levels.len() > MAX_DEPTH {
            return Err("a parameter hierarchy has at most 15 levels");
        }
    }
    let bare = name.trim_start_matches('/').to_ascii_lowercase();
    if bare.starts_with("aws") || bare.starts_with("ssm") {
        return Err(
            "names starting with aws or ssm are reserved by AWS (read a secret through SCOPED_SECRETS_SECRETS)",
        );
    }
    Ok(())
}

/// The parameter's ARN: a name with a leading `/` is appended without a second slash
/// (`…:parameter/app/db`), one without gets one (`…:parameter/Name`). `/Name` and `Name` are one
/// parameter to AWS, and so one ARN.
pub fn arn(partition: &str, region: &str, account: &str, name: &str) -> String {
    format!("arn:{partition}:ssm:{region}:{account}:parameter/{}", name.trim_start_matches('/'))
}

/// Whether two names are one parameter (`/Name` and `Name` are).
pub fn same_name(a: &str, b: &str) -> bool {
    a.trim_start_matches('/') == b.trim_start_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_aws_rules_and_never_widen() {
        for valid in
            ["Name", "/Name", "/app/db", "/a.b/c-d/e_f", "/tenants/{tenant}/db", &format!("/{}", "x".repeat(2_047))]
        {
            assert_eq!(check_name(valid), Ok(()), "{valid}");
        }
        let deep = format!("/{}", vec!["l"; 16].join("/"));
        let long = format!("/{}{{tenant}}", "x".repeat(1_990));
        for invalid in [
            "",
            "app/db",
            "/app//db",
            "/app/db/",
            "/app/*",
            "/app/db?",
            "/app db",
            "/app:db",
            "/aws/reference/secretsmanager/x",
            "awsName",
            "/SSM/x",
            "/app/{other}",
            deep.as_str(),
            long.as_str(),
        ] {
            assert!(check_name(invalid).is_err(), "{invalid}");
        }
        assert_eq!(check_name(&format!("/{}", vec!["l"; 15].join("/"))), Ok(()));
    }

    #[test]
    fn arns_follow_the_leading_slash_rule() {
        assert_eq!(
            arn("aws", "eu-west-1", "123456789012", "/app/db"),
            "arn:aws:ssm:eu-west-1:123456789012:parameter/app/db"
        );
        assert_eq!(
            arn("aws", "eu-west-1", "123456789012", "Name"),
            "arn:aws:ssm:eu-west-1:123456789012:parameter/Name"
        );
        assert_eq!(arn("aws", "eu-west-1", "123456789012", "/Name"), arn("aws", "eu-west-1", "123456789012", "Name"));
        assert!(same_name("/Name", "Name") && !same_name("/app/db", "/app/db2"));
    }

    #[test]
    fn selectors_split_from_names_and_arns() {
        let arn = "arn:aws:ssm:us-east-1:123456789012:parameter/app/db";
        let cases = [
            ("/app/db", Some(("/app/db", ParameterVersion::Latest))),
            ("/app/db:3", Some(("/app/db", ParameterVersion::Number(3)))),
            ("/app/db:prod", Some(("/app/db", ParameterVersion::Label("prod".into())))),
            (arn, Some((arn, ParameterVersion::Latest))),
            ("arn:aws:ssm:us-east-1:123456789012:parameter/app/db:7", Some((arn, ParameterVersion::Number(7)))),
            ("/app/db:0", None),
            ("/app/db:", None),
            ("/app/db:3a", None),
            ("/app/db:a b", None),
            ("/app/db:1:2", None),
        ];
        for (requested, expected) in cases {
            assert_eq!(split_selector(requested), expected, "{requested}");
        }
        assert_eq!(ParameterVersion::Number(3).selector().as_deref(), Some(":3"));
        assert_eq!(ParameterVersion::label(&"l".repeat(101)), None);
        assert_eq!(ParameterVersion::number("18446744073709551616"), None, "over u64: refused, not wrapped");
        assert_eq!(referenced_secret("/aws/reference/secretsmanager/app/db"), Some("app/db"));
        assert_eq!(referenced_secret("/aws/reference/secretsmanager/"), None);
        assert_eq!(referenced_secret("/app/db"), None);
    }
}
