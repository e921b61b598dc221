//! The SHUTDOWN reports, as types: what the revocation report and the least-privilege report
//! say, serialised into one audit line each. Counts, names and bounds only: never a value, a
//! credential or a token.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::RevocationMode;
use crate::config::allowlist::Allowlist;
use crate::domain::api::Api;
use crate::domain::code::Code;
use crate::domain::item::Kind;
use crate::domain::time::iso8601_ceil;
use crate::invocation::ledger::IssuedSession;
use crate::revocation::{DenyError, DenyOutcome};

/// What SHUTDOWN did about the sessions AWS would still honour.
#[derive(Debug, Serialize)]
pub struct RevocationReport {
    /// `wipe` or `deny`.
    pub mode: &'static str,
    /// `AssumeRole` calls that succeeded in this environment.
    pub sessions_issued: u64,
    /// Sessions whose policy bound had passed (AWS refuses them already).
    pub sessions_ended_by_policy: u64,
    /// Sessions whose bound was still ahead.
    pub sessions_live_at_shutdown: usize,
    /// Those sessions, and what was done about each.
    pub live: Vec<LiveSession>,
    /// The deny write, when one was made (`null` otherwise).
    pub deny: Option<DenyReport>,
}

/// A session still live at SHUTDOWN.
#[derive(Debug, Serialize)]
pub struct LiveSession {
    /// Its `RoleSessionName`.
    pub session: String,
    /// Its policy's `aws:CurrentTime` bound.
    pub policy_end: String,
    /// `wiped`, `wiped_and_denied` or `wiped_deny_failed`.
    pub action: &'static str,
}

/// The outcome of the deny write.
#[derive(Debug, Serialize)]
pub struct DenyReport {
    /// Whether the statement was written.
    pub written: bool,
    /// Whether the policy collapsed to the role-wide statement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collapsed: Option<bool>,
    /// Moot statements dropped on the way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped_moot: Option<usize>,
    /// Statements in the policy after the write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statements: Option<usize>,
    /// Why the write failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long IAM took.
    pub iam_ms: u64,
}

impl RevocationReport {
    /// The report for `live` sessions (of `issued`, `expired` ended by policy) under `mode`,
    /// with the deny write's outcome if one was attempted.
    pub fn new(
        mode: RevocationMode,
        issued: u64,
        expired: u64,
        live: &[IssuedSession],
        deny: Option<(Result<DenyOutcome, DenyError>, u64)>,
    ) -> Self {
        let action = match &deny {
            None => "wiped",
            Some((Ok(_), _)) => "wiped_and_denied",
            Some((Err(_), _)) => "wiped_deny_failed",
        };
        let deny = deny.map(|(result, iam_ms)| match result {
            Ok(outcome) => DenyReport {
                written: true,
                collapsed: Some(outcome.collapsed),
                dropped_moot: Some(outcome.dropped_moot),
                statements: Some(outcome.statements),
                error: None,
                iam_ms,
            },
            Err(error) => DenyReport {
                written: false,
                collapsed: None,
                dropped_moot: None,
                statements: None,
                error: Some(error.to_string()),
                iam_ms,
            },
        });
        Self {
            mode: match mode {
                RevocationMode::Wipe => "wipe",
                RevocationMode::Deny => "deny",
            },
            sessions_issued: issued,
            sessions_ended_by_policy: expired,
            sessions_live_at_shutdown: live.len(),
            live: live
                .iter()
                .map(|s| LiveSession { session: s.name.clone(), policy_end: iso8601_ceil(s.end), action })
                .collect(),
            deny,
        }
    }
}

/// Which allowlisted secrets and parameters were read, through which face, and which never:
/// the evidence that the allowlist is no wider than the function needs.
#[derive(Debug, Serialize)]
pub struct LeastPrivilegeReport {
    /// Every allowlisted secret with its reads.
    pub secrets: Vec<SecretReads>,
    /// The secret ids never read.
    pub never_read: Vec<String>,
    /// Every allowlisted parameter with its reads.
    pub parameters: Vec<ParameterReads>,
    /// The parameter names (as configured) never read.
    pub parameters_never_read: Vec<String>,
    /// Local requests refused, by code.
    pub denies: BTreeMap<&'static str, u64>,
}

/// One allowlisted secret's reads.
#[derive(Debug, Serialize)]
pub struct SecretReads {
    /// The configured id.
    pub secret_id: String,
    /// The local alias, if any.
    pub alias: Option<String>,
    /// Reads by face of the API: `{"get": N, "v1": N, "sdk": N}`.
    pub reads: BTreeMap<&'static str, u64>,
}

/// One allowlisted parameter's reads.
#[derive(Debug, Serialize)]
pub struct ParameterReads {
    /// The configured name or ARN.
    pub name: String,
    /// The local alias, if any.
    pub alias: Option<String>,
    /// Reads by face of the API: `{"get": N, "v1": N, "sdk": N}`.
    pub reads: BTreeMap<&'static str, u64>,
}

impl LeastPrivilegeReport {
    /// The report for `allowlist` from the `reads` per entry (indexed by [`Api::index`]) and
    /// the `denies` by code.
    pub fn new(allowlist: &Allowlist, reads: &[[u64; Api::ALL.len()]], denies: &BTreeMap<Code, u64>) -> Self {
        // (kind, configured id, alias, reads by face) per entry.
        type Row = (Kind, String, Option<String>, BTreeMap<&'static str, u64>);
        let rows: Vec<Row> = allowlist
            .iter()
            .map(|(index, entry)| {
                let counts = reads.get(index).copied().unwrap_or_default();
                let by_face = Api::ALL.iter().map(|api| (api.as_str(), counts[api.index()])).collect();
                (entry.kind(), entry.id().to_owned(), entry.alias().map(str::to_owned), by_face)
            })
            .collect();
        let never = |kind: Kind| -> Vec<String> {
            rows.iter()
                .filter(|(k, _, _, reads)| *k == kind && reads.values().sum::<u64>() == 0)
                .map(|(_, id, _, _)| id.clone())
                .collect()
        };
        let (never_read, parameters_never_read) = (never(Kind::Secret), never(Kind::Parameter));
        let (mut secrets, mut parameters) = (Vec::new(), Vec::new());
        for (kind, id, alias, reads) in rows {
            match kind {
                Kind::Secret => secrets.push(SecretReads { secret_id: id, alias, reads }),
                Kind::Parameter => parameters.push(ParameterReads { name: id, alias, reads }),
            }
        }
        let denies = denies.iter().map(|(code, count)| (code.as_str(), *count)).collect();
        Self { secrets, never_read, parameters, parameters_never_read, denies }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_least_privilege_report_names_reads_by_face_and_what_was_never_read() {
        let role = crate::domain::arn::RoleArn::parse("arn:aws:iam::123456789012:role/r").expect("valid");
        let allowlist = Allowlist::parse("db=app/db,app/api", &role, "us-east-1").expect("valid");
        let denies = BTreeMap::from([(Code::SecretNotAllowed, 2)]);
        let report = LeastPrivilegeReport::new(&allowlist, &[[1, 0, 3], [0, 0, 0]], &denies);
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(
            json["secrets"][0],
            serde_json::json!({ "secret_id": "app/db", "alias": "db", "reads": { "get": 1, "v1": 0, "sdk": 3 } })
        );
        assert_eq!(json["secrets"][1]["alias"], serde_json::Value::Null);
        assert_eq!(json["never_read"], serde_json::json!(["app/api"]));
        assert_eq!(json["denies"], serde_json::json!({ "secret_not_allowed": 2 }));
        assert_eq!(
            (json["parameters"].clone(), json["parameters_never_read"].clone()),
            (serde_json::json!([]), serde_json::json!([]))
        );
        let both =
            Allowlist::parse_lists("app/db", "config=/app/config,/app/unused", &role, "us-east-1").expect("valid");
        let report = LeastPrivilegeReport::new(&both, &[[1, 0, 0], [0, 0, 2], [0, 0, 0]], &BTreeMap::new());
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(
            json["parameters"][0],
            serde_json::json!({ "name": "/app/config", "alias": "config", "reads": { "get": 0, "v1": 0, "sdk": 2 } })
        );
        assert_eq!(json["parameters_never_read"], serde_json::json!(["/app/unused"]));
        assert_eq!(json["never_read"], serde_json::json!([]), "secrets and parameters are reported apart");
    }

    #[test]
    fn the_revocation_report_says_what_was_done_about_each_live_session() {
        let live = [IssuedSession { name: "ss-env-r1".into(), end: UNIX_EPOCH + Duration::from_secs(1_764_000_000) }];
        let wiped = serde_json::to_value(RevocationReport::new(RevocationMode::Wipe, 3, 2, &live, None)).expect("json");
        assert_eq!(wiped["deny"], serde_json::Value::Null);
        assert_eq!(wiped["live"][0]["action"], "wiped");
        assert_eq!(wiped["live"][0]["policy_end"], "2025-11-24T16:00:00Z");
        assert_eq!(
            (wiped["sessions_issued"].as_u64(), wiped["sessions_live_at_shutdown"].as_u64()),
            (Some(3), Some(1))
        );
        let outcome = DenyOutcome { collapsed: false, dropped_moot: 1, statements: 2 };
        let denied =
            serde_json::to_value(RevocationReport::new(RevocationMode::Deny, 3, 2, &live, Some((Ok(outcome), 40))))
                .expect("json");
        assert_eq!(denied["mode"], "deny");
        assert_eq!(denied["live"][0]["action"], "wiped_and_denied");
        assert_eq!(
            denied["deny"],
            serde_json::json!({ "written": true, "collapsed": false, "dropped_moot": 1, "statements": 2, "iam_ms": 40 })
        );
        let failed = serde_json::to_value(RevocationReport::new(
            RevocationMode::Deny,
            1,
            0,
            &live,
            Some((Err(DenyError::Contended), 7)),
        ))
        .expect("json");
        assert_eq!(failed["live"][0]["action"], "wiped_deny_failed");
        assert_eq!(failed["deny"]["written"], false);
        assert!(failed["deny"]["error"].as_str().is_some());
    }
}
