//! Which scoped-secrets is running: the crate version and, when the build had one, the git
//! commit it was built from. Every place that names the build reads it here: the `ready` and
//! `shutdown` lines, each EMF document (a property, not a dimension), and the AWS SDK's user
//! agent, whose app name puts `app/scoped-secrets#VERSION` in the `userAgent` of the CloudTrail
//! record of every `AssumeRole`, secret read and IAM write the extension makes.
//!
//! No build script: the version is Cargo's `CARGO_PKG_VERSION`, and the commit is
//! `SCOPED_SECRETS_GIT_COMMIT` from the build's environment, which `layer/build.sh` sets from
//! `git rev-parse --short=12 HEAD` (with `-dirty` when tracked files differ from it) when it
//! builds in a git checkout. A `build.rs` would run git on every build of every crate that
//! depends on this one (tests, bench, fuzz) and could not tell a release build from a test
//! build; rustc records `option_env!` variables in its dependency info, so Cargo rebuilds the
//! binary when the commit changes, and only then. A build from a source archive has no commit
//! and says so by leaving it out.

use aws_config::AppName;

/// The crate version (`extension/Cargo.toml`), e.g. `0.2.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The product name, as it appears in the user agent.
pub const NAME: &str = "scoped-secrets";

/// The git commit the binary was built from (12 hex digits, `-dirty` if the work tree had
/// changes), or `None` when the build had none.
pub fn git_commit() -> Option<&'static str> {
    commit_from(option_env!("SCOPED_SECRETS_GIT_COMMIT"))
}

/// Only a plausible commit id is used: it is written into logs and a header, so an odd value
/// from a build environment must not turn into an invalid user agent (empty means none).
fn commit_from(raw: Option<&'static str>) -> Option<&'static str> {
    let commit = raw?.trim();
    let plausible =
        !commit.is_empty() && commit.len() <= 64 && commit.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    plausible.then_some(commit)
}

/// The user agent's app name: `scoped-secrets#0.2.0`, or `scoped-secrets#0.2.0+0123456789ab`
/// with the commit. The app id of the SDKs' user-agent grammar is one token (no `/`); `#`
/// separates a name from its value as the SDKs' own metadata does (`md/awscrt#0.19.19`), and
/// `+` starts SemVer build metadata. `None` only if the SDK refuses it, which the characters
/// above never make it do (see the test).
pub fn app_name() -> Option<AppName> {
    AppName::new(user_agent_name(git_commit())).ok()
}

fn user_agent_name(commit: Option<&str>) -> String {
    match commit {
        Some(commit) => format!("{NAME}#{VERSION}+{commit}"),
        None => format!("{NAME}#{VERSION}"),
    }
}

/// The EMF document's version properties: members of the root that no dimension and no metric
/// names, so they travel with every document without adding a metric or a dimension value.
pub fn emf_properties() -> impl Iterator<Item = (&'static str, &'static str)> {
    [("ScopedSecretsVersion", Some(VERSION)), ("ScopedSecretsCommit", git_commit())]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_crate_version() {
        assert_eq!(VERSION, env!("CARGO_PKG_VERSION"));
        assert!(VERSION.split('.').count() >= 3, "SemVer: {VERSION}");
    }

    #[test]
    fn only_a_plausible_commit_is_kept() {
        let cases = [
            (None, None),
            (Some(""), None),
            (Some("  "), None),
            (Some("0123456789ab"), Some("0123456789ab")),
            (Some("0123456789ab-dirty"), Some("0123456789ab-dirty")),
            (Some(" 0123456789ab\n"), Some("0123456789ab")),
            (Some("abc def"), None),
            (Some("abc/def"), None),
            (Some("abc\"def"), None),
        ];
        for (raw, kept) in cases {
            assert_eq!(commit_from(raw), kept, "{raw:?}");
        }
        let long = "a".repeat(65);
        assert_eq!(commit_from(Some(Box::leak(long.into_boxed_str()))), None);
    }

    #[test]
    fn the_app_name_is_a_valid_sdk_app_name_with_and_without_a_commit() {
        for commit in [None, Some("0123456789ab"), Some("0123456789ab-dirty"), Some(&*"f".repeat(40))] {
            let name = user_agent_name(commit);
            assert!(AppName::new(name.clone()).is_ok(), "{name}");
            assert!(name.starts_with(&format!("scoped-secrets#{VERSION}")), "{name}");
            // The SDK warns once above 50 characters; a 12-digit commit stays well inside.
            if commit.is_none_or(|c| c.len() <= 18) {
                assert!(name.len() <= 50, "{name}");
            }
        }
        assert!(app_name().is_some(), "this build's own name is accepted");
    }

    #[test]
    fn emf_properties_always_carry_the_version() {
        let properties: Vec<_> = emf_properties().collect();
        assert_eq!(properties[0], ("ScopedSecretsVersion", VERSION));
        assert_eq!(properties.get(1).map(|(_, commit)| *commit), git_commit());
    }
}
