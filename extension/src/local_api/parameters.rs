//! What both protocols share for Parameter Store: what a requested name reads (a parameter at
//! its `:version` or `:label`, or a Secrets Manager secret through
//! `/aws/reference/secretsmanager/ID`, as Parameter Store reads it), reading it through the one
//! [`ReadPath`], and the query of the GET API's parameter path,
//! `GET /systemsmanager/parameters/get?name=NAME_OR_ARN[&version=N | &label=L][&withDecryption=true|false]`
//! (answered in [`super::get`] with AWS's `GetParameter` JSON, as AWS's extension answers it).
//! See <https://docs.aws.amazon.com/systems-manager/latest/userguide/ps-integration-lambda-extensions.html>.

use std::sync::Arc;

use tokio::time::Instant;

use super::envelope::Refusal;
use super::read::{Read, ReadPath};
use crate::domain::api::Api;
use crate::domain::code::Code;
use crate::domain::item::{Kind, Wanted};
use crate::domain::parameter::{self, MAX_NAME_CHARS, ParameterVersion};
use crate::domain::text::{form_pairs, has_replacement};
use crate::domain::version::Version;
use crate::secrets::parameter::ParameterValue;
use crate::secrets::served::Item;

/// What a requested name reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// A parameter (its name without the selector) at a version.
    Parameter(&'a str, ParameterVersion),
    /// A Secrets Manager secret, through `/aws/reference/secretsmanager/ID`.
    Reference(&'a str),
}

impl<'a> Target<'a> {
    /// What `name` reads.
    ///
    /// # Errors
    /// [`Code::InvalidName`] for a malformed `:version` or `:label`.
    pub fn of(name: &'a str) -> Result<Self, Refusal> {
        if let Some(secret_id) = parameter::referenced_secret(name) {
            return Ok(Target::Reference(secret_id));
        }
        parameter::split_selector(name)
            .map(|(base, version)| Target::Parameter(base, version))
            .ok_or(Refusal::of(Code::InvalidName))
    }

    /// The kind of item it names, and its id as the allowlist knows it.
    pub(super) fn allowlisted_as(&self) -> (Kind, &'a str) {
        match self {
            Target::Parameter(name, _) => (Kind::Parameter, name),
            Target::Reference(id) => (Kind::Secret, id),
        }
    }
}

/// Reads what `name` names through `api`: a parameter, or a referenced secret answered as
/// Parameter Store answers it (only with `decrypt`, and only at its current version).
///
/// # Errors
/// The [`Refusal`] (the caller audits it).
pub async fn read(
    reader: &ReadPath,
    api: Api,
    caller: Option<&str>,
    name: &str,
    version: Option<ParameterVersion>,
    decrypt: bool,
    deadline: Instant,
) -> Result<Arc<ParameterValue>, Refusal> {
    match Target::of(name)? {
        Target::Parameter(base, selected) => {
            let version = selected_version(version, selected)?;
            let read = Read { secret_id: base, api, refresh: false, caller, stage_of_id: None };
            reader.read_parameter(read, version, decrypt, deadline).await.map_err(|e| Refusal::of(e.code()))
        }
        Target::Reference(secret_id) => {
            if !decrypt || version.is_some() {
                return Err(Refusal::of(Code::InvalidReference));
            }
            let read = Read { secret_id, api, refresh: false, caller, stage_of_id: None };
            let secret = reader.read(read, Version::Current, deadline).await.map_err(|e| Refusal::of(e.code()))?;
            Ok(Arc::new(ParameterValue::from_secret(name, &secret)))
        }
    }
}

/// [`read`] for a parameter read that needs no wait and whose value is cached, answered at
/// once ([`ReadPath::read_ready`]); `None`, with nothing counted or logged, for anything else
/// (a secret referenced through `/aws/reference/secretsmanager/` included), which [`read`]
/// then decides afresh.
pub fn read_ready(
    reader: &ReadPath,
    api: Api,
    caller: Option<&str>,
    name: &str,
    version: Option<ParameterVersion>,
    decrypt: bool,
) -> Option<Arc<ParameterValue>> {
    let Ok(Target::Parameter(base, selected)) = Target::of(name) else { return None };
    let version = selected_version(version, selected).ok()?;
    let read = Read { secret_id: base, api, refresh: false, caller, stage_of_id: None };
    match reader.read_ready(read, Wanted::Parameter { version, decrypt })? {
        Item::Parameter(value) => Some(value),
        Item::Secret(_) => None,
    }
}

/// The version a read asks for: the query's `version` or `label`, or the name's own
/// `:version` or `:label`, not both.
fn selected_version(
    version: Option<ParameterVersion>,
    selected: ParameterVersion,
) -> Result<ParameterVersion, Refusal> {
    match (version, selected) {
        (Some(_), ParameterVersion::Number(_) | ParameterVersion::Label(_)) => {
            Err(Refusal::with(Code::ConflictingVersion, "Give a version or a label once, not twice."))
        }
        (Some(version), ParameterVersion::Latest) => Ok(version),
        (None, selected) => Ok(selected),
    }
}

/// A parsed `/systemsmanager/parameters/get` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterQuery {
    /// `name`: a name or ARN, perhaps with its own `:version` or `:label`.
    pub name: String,
    /// `version` or `label`.
    pub version: Option<ParameterVersion>,
    /// `withDecryption`.
    pub decrypt: bool,
}

impl ParameterQuery {
    /// Parses the query string: `name` once, at most one of `version`/`label`, and
    /// `withDecryption` (`true`, `false`, `1`, `0`; `false` by default, as in AWS).
    ///
    /// # Errors
    /// A [`Refusal`] with the reason.
    pub fn parse(query: &str) -> Result<Self, Refusal> {
        let (mut name, mut version, mut label, mut decrypt) = (None, None, None, None);
        for (key, value) in form_pairs(query) {
            if has_replacement(&value) || has_replacement(&key) {
                return Err(Refusal::of(Code::InvalidQuery));
            }
            let slot = match key.as_ref() {
                "name" => &mut name,
                "version" => &mut version,
                "label" => &mut label,
                "withDecryption" => &mut decrypt,
                _ => {
                    return Err(Refusal::with(
                        Code::UnknownParameter,
                        "Only name, version, label and withDecryption are accepted.",
                    ));
                }
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(Refusal::of(Code::DuplicateParameter));
            }
        }
        let Some(name) = name.filter(|n| !n.is_empty()) else { return Err(Refusal::of(Code::MissingName)) };
        if name.len() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(Refusal::of(Code::InvalidName));
        }
        let version = match (version, label) {
            (Some(_), Some(_)) => {
                return Err(Refusal::with(Code::ConflictingVersion, "Give version or label, not both."));
            }
            (Some(number), None) => {
                Some(ParameterVersion::number(&number).ok_or(Refusal::of(Code::InvalidParameterVersion))?)
            }
            (None, Some(label)) => Some(ParameterVersion::label(&label).ok_or(Refusal::of(Code::InvalidLabel))?),
            (None, None) => None,
        };
        let decrypt = match decrypt.as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(_) => return Err(Refusal::of(Code::InvalidWithDecryption)),
        };
        Ok(Self { name, version, decrypt })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_parameters_at_their_selector_or_secrets_by_reference() {
        assert_eq!(Target::of("/app/db"), Ok(Target::Parameter("/app/db", ParameterVersion::Latest)));
        assert_eq!(Target::of("/app/db:2"), Ok(Target::Parameter("/app/db", ParameterVersion::Number(2))));
        assert_eq!(
            Target::of("/app/db:prod"),
            Ok(Target::Parameter("/app/db", ParameterVersion::Label("prod".into())))
        );
        assert_eq!(Target::of("/aws/reference/secretsmanager/app/db"), Ok(Target::Reference("app/db")));
        assert_eq!(Target::of("/app/db:").map_err(|r| r.code), Err(Code::InvalidName));
        assert_eq!(Target::of("/app/db:1:2").map_err(|r| r.code), Err(Code::InvalidName));
    }

    #[test]
    fn parameter_queries_parse_or_are_refused_with_a_stable_code() {
        let ok = [
            ("name=%2Fapp%2Fdb", "/app/db", None, false),
            ("name=/app/db&withDecryption=true", "/app/db", None, true),
            ("name=/app/db&version=3&withDecryption=0", "/app/db", Some(ParameterVersion::Number(3)), false),
            ("label=prod&name=Flat", "Flat", Some(ParameterVersion::Label("prod".into())), false),
            ("name=/app/db:3", "/app/db:3", None, false),
        ];
        for (query, name, version, decrypt) in ok {
            let expected = ParameterQuery { name: name.into(), version, decrypt };
            assert_eq!(ParameterQuery::parse(query), Ok(expected), "{query}");
        }
        let long = format!("name={}", "a".repeat(MAX_NAME_CHARS + 1));
        let refused = [
            ("", Code::MissingName),
            ("name=", Code::MissingName),
            ("secretId=x", Code::UnknownParameter),
            ("name=x&refreshNow=true", Code::UnknownParameter),
            ("name=x&name=y", Code::DuplicateParameter),
            ("name=x&version=1&label=a", Code::ConflictingVersion),
            ("name=x&version=0", Code::InvalidParameterVersion),
            ("name=x&version=-1", Code::InvalidParameterVersion),
            ("name=x&label=1a", Code::InvalidLabel),
            ("name=x&label=", Code::InvalidLabel),
            ("name=x&withDecryption=yes", Code::InvalidWithDecryption),
            ("name=%FF", Code::InvalidQuery),
            ("name=a%0Ab", Code::InvalidName),
            (long.as_str(), Code::InvalidName),
        ];
        for (query, code) in refused {
            let error = ParameterQuery::parse(query).expect_err(query);
            assert_eq!(error.code, code, "{query}");
        }
    }
}
