//! Session policies and session names: what each `AssumeRole` asks for.
//!
//! A session policy can only narrow the role's own policy. Ours allows exactly
//! `secretsmanager:GetSecretValue` on the allowlisted secrets (plus
//! `secretsmanager:BatchGetSecretValue`, which AWS authorises on `*` and then checks
//! `GetSecretValue` per secret) and `ssm:GetParameter`/`ssm:GetParameters` on the allowlisted
//! parameters' exact ARNs, each also as `ARN:*` for its `:version` and `:label` reads (names
//! never contain `:`, so that pattern reaches no other parameter), and only while
//! `aws:CurrentTime` is before the session's end: after that instant AWS itself refuses the
//! credentials, wherever they have leaked to. A list that is empty adds no statement.
//! With `SCOPED_SECRETS_KMS_KEYS`, `kms:Decrypt` is allowed on those keys only via Secrets
//! Manager (or Parameter Store) in the function's region and only with an encryption context
//! naming an allowlisted secret (or parameter), so a customer-managed key serves these reads
//! and nothing else.
//! See <https://docs.aws.amazon.com/IAM/latest/UserGuide/access_policies.html#policies_session>.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::config::allowlist::Allowlist;
use crate::domain::item::Kind;
use crate::domain::tenant::MAX_TENANT_ID_CHARS;
use crate::domain::time::iso8601_ceil;

/// AWS rejects session policies longer than this (plain text, before packing).
pub const MAX_POLICY_CHARS: usize = 2_048;

/// The session policy for `allowlist`, valid until `end` (rounded up to the next second, the
/// precision of `aws:CurrentTime` comparisons).
pub fn session_policy(allowlist: &Allowlist, end: SystemTime) -> String {
    let of_kind = |kind: Kind| -> Vec<&str> {
        allowlist.iter().filter(|(_, entry)| entry.kind() == kind).map(|(_, entry)| entry.resource()).collect()
    };
    let (secrets, parameters) = (of_kind(Kind::Secret), of_kind(Kind::Parameter));
    let until = iso8601_ceil(end);
    let before_end = json!({ "DateLessThan": { "aws:CurrentTime": until } });
    let mut statements = Vec::new();
    if !secrets.is_empty() {
        statements.push(json!({
            "Sid": "ReadAllowlistedSecrets",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": secrets,
            "Condition": before_end,
        }));
        statements.push(json!({
            "Sid": "BatchReadChecksEachSecret",
            "Effect": "Allow",
            "Action": "secretsmanager:BatchGetSecretValue",
            "Resource": "*",
            "Condition": before_end,
        }));
    }
    if !parameters.is_empty() {
        let with_selectors: Vec<String> =
            parameters.iter().flat_map(|arn| [(*arn).to_owned(), format!("{arn}:*")]).collect();
        statements.push(json!({
            "Sid": "ReadAllowlistedParameters",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter", "ssm:GetParameters"],
            "Resource": with_selectors,
            "Condition": before_end,
        }));
    }
    if let Some(kms) = allowlist.kms() {
        if !secrets.is_empty() {
            statements.push(json!({
                "Sid": "DecryptOnlyTheseSecrets",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": kms.keys,
                "Condition": {
                    "DateLessThan": { "aws:CurrentTime": until },
                    "StringEquals": { "kms:ViaService": kms.via("secretsmanager") },
                    "StringLike": { "kms:EncryptionContext:SecretARN": secrets },
                },
            }));
        }
        if !parameters.is_empty() {
            statements.push(json!({
                "Sid": "DecryptOnlyTheseParameters",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": kms.keys,
                "Condition": {
                    "DateLessThan": { "aws:CurrentTime": until },
                    "StringEquals": {
                        "kms:ViaService": kms.via("ssm"),
                        "kms:EncryptionContext:PARAMETER_ARN": parameters,
                    },
                },
            }));
        }
    }
    json!({ "Version": "2012-10-17", "Statement": statements }).to_string()
}

/// Checks at INIT that the allowlist's policy fits AWS's limit, so a long list fails loudly
/// then rather than at the first invocation.
///
/// # Errors
/// A sentence with the size.
pub fn check_fits(allowlist: &Allowlist) -> Result<(), String> {
    let far_future = UNIX_EPOCH + Duration::from_secs(4_102_444_800); // 2100-01-01: widest date
    // Tenant entries are measured with the longest tenant id.
    // (A fill that happens to clash with another entry's name is no measure: take another.)
    let longest = ["t", "u"]
        .iter()
        .find_map(|fill| allowlist.for_tenant(&fill.repeat(MAX_TENANT_ID_CHARS)))
        .unwrap_or_else(|| allowlist.clone());
    let size = session_policy(&longest, far_future).len();
    if size > MAX_POLICY_CHARS {
        return Err(format!(
            "produce a session policy of {size} characters, over AWS's limit of {MAX_POLICY_CHARS}; \
             list fewer secrets or parameters, or use shorter names."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::arn::RoleArn;

    fn allowlist(list: &str) -> Allowlist {
        let role = RoleArn::parse("arn:aws:iam::123456789012:role/r").expect("valid");
        Allowlist::parse(list, &role, "us-east-1").expect("valid")
    }

    #[test]
    fn kms_keys_add_decrypt_only_via_secrets_manager_for_the_allowlisted_secrets() {
        let end = UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        let key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let grant = crate::config::allowlist::KmsGrant {
            keys: vec![key.to_owned()],
            region_domain: "us-east-1.amazonaws.com".to_owned(),
        };
        let list = allowlist("app/db").with_kms(grant);
        let policy: serde_json::Value = serde_json::from_str(&session_policy(&list, end)).expect("json");
        let decrypt = &policy["Statement"][2];
        assert_eq!(decrypt["Action"], "kms:Decrypt");
        assert_eq!(decrypt["Resource"], json!([key]));
        assert_eq!(decrypt["Condition"]["StringEquals"]["kms:ViaService"], "secretsmanager.us-east-1.amazonaws.com");
        assert_eq!(
            decrypt["Condition"]["StringLike"]["kms:EncryptionContext:SecretARN"],
            json!(["arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-??????"])
        );
        assert_eq!(decrypt["Condition"]["DateLessThan"]["aws:CurrentTime"], "2025-11-24T16:00:00Z");
        // Without keys: no KMS statement at all.
        let plain: serde_json::Value = serde_json::from_str(&session_policy(&allowlist("app/db"), end)).expect("json");
        assert_eq!(plain["Statement"].as_array().map(Vec::len), Some(2));
        assert!(!session_policy(&allowlist("app/db"), end).contains("kms"));
    }

    #[test]
    fn the_policy_allows_only_reads_of_the_allowlist_until_the_end() {
        let end = UNIX_EPOCH + Duration::from_millis(1_764_000_000_001);
        let policy: serde_json::Value =
            serde_json::from_str(&session_policy(&allowlist("app/db,k=app/api"), end)).expect("json");
        let statements = policy["Statement"].as_array().expect("statements");
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0]["Action"], "secretsmanager:GetSecretValue");
        assert_eq!(
            statements[0]["Resource"],
            json!([
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-??????",
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/api-??????"
            ])
        );
        assert_eq!(statements[1]["Action"], "secretsmanager:BatchGetSecretValue");
        for statement in statements {
            assert_eq!(statement["Effect"], "Allow");
            // 1_764_000_000.001 s rounds up to ...001 s: never earlier than the true end.
            assert_eq!(statement["Condition"]["DateLessThan"]["aws:CurrentTime"], "2025-11-24T16:00:01Z");
        }
    }

    #[test]
    fn parameters_get_their_exact_arns_and_a_decrypt_grant_via_parameter_store_only() {
        let end = UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        let role = RoleArn::parse("arn:aws:iam::123456789012:role/r").expect("valid");
        let grant = crate::config::allowlist::KmsGrant {
            keys: vec!["arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab".to_owned()],
            region_domain: "us-east-1.amazonaws.com".to_owned(),
        };
        let only_parameters =
            Allowlist::parse_lists("", "/app/config,Flat", &role, "us-east-1").expect("valid").with_kms(grant.clone());
        let policy: serde_json::Value = serde_json::from_str(&session_policy(&only_parameters, end)).expect("json");
        let statements = policy["Statement"].as_array().expect("statements");
        assert_eq!(statements.len(), 2, "no Secrets Manager statement without secrets: {policy}");
        assert_eq!(statements[0]["Action"], json!(["ssm:GetParameter", "ssm:GetParameters"]));
        assert_eq!(
            statements[0]["Resource"],
            json!([
                "arn:aws:ssm:us-east-1:123456789012:parameter/app/config",
                "arn:aws:ssm:us-east-1:123456789012:parameter/app/config:*",
                "arn:aws:ssm:us-east-1:123456789012:parameter/Flat",
                "arn:aws:ssm:us-east-1:123456789012:parameter/Flat:*"
            ])
        );
        assert_eq!(statements[0]["Condition"]["DateLessThan"]["aws:CurrentTime"], "2025-11-24T16:00:00Z");
        let decrypt = &statements[1]["Condition"];
        assert_eq!(decrypt["StringEquals"]["kms:ViaService"], "ssm.us-east-1.amazonaws.com");
        assert_eq!(
            decrypt["StringEquals"]["kms:EncryptionContext:PARAMETER_ARN"],
            json!([
                "arn:aws:ssm:us-east-1:123456789012:parameter/app/config",
                "arn:aws:ssm:us-east-1:123456789012:parameter/Flat"
            ])
        );
        let mixed = Allowlist::parse_lists("app/db", "/app/config", &role, "us-east-1").expect("valid").with_kms(grant);
        let policy: serde_json::Value = serde_json::from_str(&session_policy(&mixed, end)).expect("json");
        let sids: Vec<&str> =
            policy["Statement"].as_array().into_iter().flatten().filter_map(|s| s["Sid"].as_str()).collect();
        assert_eq!(
            sids,
            [
                "ReadAllowlistedSecrets",
                "BatchReadChecksEachSecret",
                "ReadAllowlistedParameters",
                "DecryptOnlyTheseSecrets",
                "DecryptOnlyTheseParameters"
            ]
        );
    }

    #[test]
    fn a_long_allowlist_is_refused_at_init() {
        let long: Vec<String> = (0..20).map(|i| format!("team/{}/{i}", "n".repeat(60))).collect();
        let error = check_fits(&allowlist(&long.join(","))).expect_err("too long");
        assert!(error.contains("2048"), "{error}");
        assert!(check_fits(&allowlist("app/db")).is_ok());
        // The budget is shared: secrets that fit alone do not fit with parameters on top.
        let role = RoleArn::parse("arn:aws:iam::123456789012:role/r").expect("valid");
        let secrets: Vec<String> = (0..10).map(|i| format!("team/{}/{i}", "n".repeat(30))).collect();
        let parameters: Vec<String> = (0..10).map(|i| format!("/team/{}/{i}", "n".repeat(30))).collect();
        let secrets_only = Allowlist::parse_lists(&secrets.join(","), "", &role, "us-east-1").expect("valid");
        assert!(check_fits(&secrets_only).is_ok());
        let both =
            Allowlist::parse_lists(&secrets.join(","), &parameters.join(","), &role, "us-east-1").expect("valid");
        assert!(check_fits(&both).is_err());
    }
}
