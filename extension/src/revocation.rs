//! Revocation at SHUTDOWN: what happens to sessions AWS would still honour.
//!
//! Always: every credential is wiped and a **revocation report** says how many sessions the
//! environment was issued, how many had already ended by policy (their `aws:CurrentTime`
//! bound passed), which were still live, and what was done about each.
//!
//! Opt-in (`SCOPED_SECRETS_REVOCATION=deny`): when a session is still live, one statement in
//! one inline policy on the scoped role refuses every session of this environment issued
//! before now: `Deny *` where `aws:userid` is like `{roleId}:ss-{env}-*` and
//! `aws:TokenIssueTime` is before now, itself bounded by `aws:CurrentTime` before the latest
//! live bound so it becomes moot on its own. Every write first drops moot statements; when the
//! policy would pass its character budget it collapses to one role-wide `aws:TokenIssueTime`
//! deny (what AWS's "Revoke active sessions" does), and other environments re-assume once.
//! IAM writes go to one control plane, are rate-limited and take seconds to apply in AWS, so
//! this is never done per invocation. See
//! <https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_revoke-sessions.html>.

use std::time::{Duration, Instant, SystemTime};

use aws_sdk_iam as iam;
use serde_json::{Value, json};

use crate::domain::arn::RoleArn;
use crate::domain::text::percent_decode_lossy;
use crate::domain::time::iso8601_ceil;
use crate::invocation::ledger::IssuedSession;

/// The inline policy scoped-secrets owns on the scoped role.
pub const POLICY_NAME: &str = "scoped-secrets-revocations";
/// Sid prefix of per-environment statements.
const ENVIRONMENT_SID: &str = "ScopedSecretsEnv";
/// Sid of the collapsed, role-wide statement.
const ROLE_WIDE_SID: &str = "ScopedSecretsAllBefore";
/// Read-modify-write attempts before giving up on a concurrent writer.
const ATTEMPTS: usize = 3;

/// What the deny write achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyOutcome {
    /// Whether the role-wide statement replaced the per-environment ones.
    pub collapsed: bool,
    /// Moot statements dropped on the way.
    pub dropped_moot: usize,
    /// Statements in the policy after the write.
    pub statements: usize,
}

/// Why the deny write failed (no credential, no policy text in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyError {
    /// IAM refused or failed.
    #[error("IAM call {operation} failed ({code})")]
    Iam {
        /// Which call.
        operation: &'static str,
        /// The AWS error code or a short description.
        code: String,
    },
    /// Another writer kept replacing the policy.
    #[error("the policy kept changing under us")]
    Contended,
    /// The policy on the role is not JSON we can edit.
    #[error("the existing revocation policy is not valid JSON")]
    Malformed,
    /// The role id was never learnt (no session was issued).
    #[error("the scoped role's id is unknown")]
    NoRoleId,
}

/// The statement that refuses every session of `environment` issued before `now`, moot once
/// `bound` has passed.
pub fn environment_statement(role_id: &str, environment: &str, now: SystemTime, bound: SystemTime) -> Value {
    json!({
        "Sid": format!("{ENVIRONMENT_SID}{environment}"),
        "Effect": "Deny",
        "Action": "*",
        "Resource": "*",
        "Condition": {
            "StringLike": { "aws:userid": format!("{role_id}:ss-{environment}-*") },
            "DateLessThan": { "aws:TokenIssueTime": iso8601_ceil(now), "aws:CurrentTime": iso8601_ceil(bound) },
        }
    })
}

/// The role-wide statement: every session issued before `now`, moot after `bound`.
pub fn role_wide_statement(now: SystemTime, bound: &str) -> Value {
    json!({
        "Sid": ROLE_WIDE_SID,
        "Effect": "Deny",
        "Action": "*",
        "Resource": "*",
        "Condition": {
            "DateLessThan": { "aws:TokenIssueTime": iso8601_ceil(now), "aws:CurrentTime": bound },
        }
    })
}

/// The new statement list: moot statements dropped (their `aws:CurrentTime` bound passed at
/// `now`), this environment's replaced, ours added; collapsed to one role-wide statement when
/// the document would pass `budget` characters (whitespace not counted, as IAM counts).
/// Returns the statements, whether it collapsed, and how many moot ones were dropped.
pub fn merge(existing: &[Value], ours: Value, now: SystemTime, budget: usize) -> (Vec<Value>, bool, usize) {
    let now_text = iso8601_ceil(now);
    let bound_of =
        |statement: &Value| statement["Condition"]["DateLessThan"]["aws:CurrentTime"].as_str().map(str::to_owned);
    // ISO 8601 in one format with Z compares correctly as text.
    let live: Vec<&Value> = existing.iter().filter(|s| bound_of(s).is_some_and(|bound| bound > now_text)).collect();
    let dropped = existing.len() - live.len();
    let mut statements: Vec<Value> = live.into_iter().filter(|s| s["Sid"] != ours["Sid"]).cloned().collect();
    statements.push(ours);
    if document_chars(&statements) <= budget {
        return (statements, false, dropped);
    }
    let latest = statements.iter().filter_map(bound_of).max().unwrap_or(now_text);
    (vec![role_wide_statement(now, &latest)], true, dropped)
}

/// The policy document for `statements`, compact.
pub fn document(statements: &[Value]) -> String {
    json!({ "Version": "2012-10-17", "Statement": statements }).to_string()
}

fn document_chars(statements: &[Value]) -> usize {
    document(statements).chars().filter(|c| !c.is_whitespace()).count()
}

/// Writes this environment's deny statement, within whatever time the caller bounds it by.
///
/// # Errors
/// [`DenyError`] without any policy text or credential in it.
pub async fn deny(
    client: &iam::Client,
    role_name: &str,
    role_id: &str,
    environment: &str,
    live: &[IssuedSession],
    budget: usize,
) -> Result<DenyOutcome, DenyError> {
    let bound = live.iter().map(|s| s.end).max().unwrap_or_else(SystemTime::now);
    for _ in 0..ATTEMPTS {
        let now = SystemTime::now();
        let existing = read(client, role_name).await?;
        let ours = environment_statement(role_id, environment, now, bound);
        let (statements, collapsed, dropped_moot) = merge(&existing, ours.clone(), now, budget);
        client
            .put_role_policy()
            .role_name(role_name)
            .policy_name(POLICY_NAME)
            .policy_document(document(&statements))
            .send()
            .await
            .map_err(|e| iam_error("PutRolePolicy", &e))?;
        // IAM has no conditional write: read back, and try again if another environment's
        // write replaced ours in between (theirs is kept by the next merge).
        let written = read(client, role_name).await?;
        let present = written.iter().any(|s| s["Sid"] == ours["Sid"] || (collapsed && s["Sid"] == ROLE_WIDE_SID));
        if present {
            return Ok(DenyOutcome { collapsed, dropped_moot, statements: written.len() });
        }
    }
    Err(DenyError::Contended)
}

async fn read(client: &iam::Client, role_name: &str) -> Result<Vec<Value>, DenyError> {
    let answer = client.get_role_policy().role_name(role_name).policy_name(POLICY_NAME).send().await;
    let text = match answer {
        Ok(output) => output.policy_document,
        Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_entity_exception()) => {
            return Ok(Vec::new());
        }
        Err(error) => return Err(iam_error("GetRolePolicy", &error)),
    };
    statements_of(&text).ok_or(DenyError::Malformed)
}

/// The statements of a policy document as `GetRolePolicy` returns it (URL-encoded, or plain
/// JSON as some emulators answer); `None` if it is not JSON.
pub fn statements_of(text: &str) -> Option<Vec<Value>> {
    let decoded = if text.trim_start().starts_with('{') { text.to_owned() } else { percent_decode_lossy(text) };
    let document: Value = serde_json::from_str(&decoded).ok()?;
    Some(match &document["Statement"] {
        Value::Array(statements) => statements.clone(),
        Value::Object(_) => vec![document["Statement"].clone()],
        _ => Vec::new(),
    })
}

fn iam_error<E: iam::error::ProvideErrorMetadata, R>(
    operation: &'static str,
    error: &iam::error::SdkError<E, R>,
) -> DenyError {
    use iam::error::SdkError;
    let code = match error {
        SdkError::ServiceError(service) => service.err().code().unwrap_or("Unknown").to_owned(),
        SdkError::TimeoutError(_) => "Timeout".to_owned(),
        SdkError::DispatchFailure(_) => "ConnectionFailed".to_owned(),
        _ => "UnexpectedAnswer".to_owned(),
    };
    DenyError::Iam { operation, code: code.chars().filter(char::is_ascii_alphanumeric).collect() }
}

/// Runs the deny write bounded by `budget`, never holding SHUTDOWN past it.
pub async fn deny_within(
    budget: Duration,
    client: &iam::Client,
    role: &RoleArn,
    role_id: Option<&str>,
    environment: &str,
    live: &[IssuedSession],
    policy_budget: usize,
) -> (Result<DenyOutcome, DenyError>, Duration) {
    let started = Instant::now();
    let Some(role_id) = role_id else { return (Err(DenyError::NoRoleId), started.elapsed()) };
    let work = deny(client, role.name(), role_id, environment, live, policy_budget);
    let result = match tokio::time::timeout(budget, work).await {
        Ok(result) => result,
        Err(_elapsed) => Err(DenyError::Iam { operation: "deny", code: "Timeout".into() }),
    };
    (result, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    #[test]
    fn a_statement_denies_only_this_environment_issued_before_now_until_its_bound() {
        let statement = environment_statement("AROAEXAMPLE", "k3q7xw2a", at(10), at(70));
        assert_eq!(statement["Effect"], "Deny");
        assert_eq!(statement["Condition"]["StringLike"]["aws:userid"], "AROAEXAMPLE:ss-k3q7xw2a-*");
        assert_eq!(statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"], iso8601_ceil(at(10)));
        assert_eq!(statement["Condition"]["DateLessThan"]["aws:CurrentTime"], iso8601_ceil(at(70)));
    }

    #[test]
    fn merging_drops_moot_statements_replaces_ours_and_keeps_other_live_ones() {
        let moot = environment_statement("AROA1", "oldenv01", at(0), at(5));
        let other_live = environment_statement("AROA1", "otherenv", at(0), at(100));
        let our_old = environment_statement("AROA1", "ourenv01", at(0), at(100));
        let ours = environment_statement("AROA1", "ourenv01", at(10), at(90));
        let (statements, collapsed, dropped) =
            merge(&[moot, other_live.clone(), our_old], ours.clone(), at(10), 10_240);
        assert!(!collapsed);
        assert_eq!(dropped, 1);
        assert_eq!(statements, vec![other_live, ours]);
    }

    #[test]
    fn over_budget_the_policy_collapses_to_one_role_wide_deny_bounded_by_the_latest_live_bound() {
        let existing: Vec<Value> =
            (0..10).map(|i| environment_statement("AROA1", &format!("env{i:05}"), at(0), at(100 + i))).collect();
        let ours = environment_statement("AROA1", "ourenv01", at(10), at(50));
        let (statements, collapsed, _) = merge(&existing, ours, at(10), 1_000);
        assert!(collapsed);
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0]["Sid"], ROLE_WIDE_SID);
        assert!(statements[0]["Condition"].get("StringLike").is_none(), "role-wide: every session of the role");
        assert_eq!(statements[0]["Condition"]["DateLessThan"]["aws:CurrentTime"], iso8601_ceil(at(109)));
        assert!(document_chars(&statements) <= 1_000);
    }

    #[test]
    fn policy_documents_decode_from_iams_url_encoding() {
        let encoded = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%5D%7D";
        assert_eq!(percent_decode_lossy(encoded), r#"{"Version":"2012-10-17","Statement":[]}"#);
        assert_eq!(percent_decode_lossy("100%"), "100%");
    }
}
