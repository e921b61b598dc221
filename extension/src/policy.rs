//! Session policies and session names: what each `AssumeRole` asks for.
//!
//! A session policy can only narrow the role's own policy. Ours allows exactly
//! `secretsmanager:GetSecretValue` on the allowlisted secrets (plus
//! `secretsmanager:BatchGetSecretValue`, which AWS authorises on `*` and then checks
//! `GetSecretValue` per secret), and only while `aws:CurrentTime` is before the session's end:
//! after that instant AWS itself refuses the credentials, wherever they have leaked to.
//! With `SCOPED_SECRETS_KMS_KEYS`, a third statement allows `kms:Decrypt` on those keys only
//! via Secrets Manager in the function's region and only with an encryption context naming an
//! allowlisted secret, so a customer-managed key serves these reads and nothing else.
//! See <https://docs.aws.amazon.com/IAM/latest/UserGuide/access_policies.html#policies_session>.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::allowlist::Allowlist;

/// AWS rejects session policies longer than this (plain text, before packing).
pub const MAX_POLICY_CHARS: usize = 2_048;

/// The session policy for `allowlist`, valid until `end` (rounded up to the next second, the
/// precision of `aws:CurrentTime` comparisons).
pub fn session_policy(allowlist: &Allowlist, end: SystemTime) -> String {
    let resources: Vec<&str> = allowlist.iter().map(|(_, entry)| entry.resource()).collect();
    let until = iso8601_ceil(end);
    let before_end = json!({ "DateLessThan": { "aws:CurrentTime": until } });
    let mut statements = vec![
        json!({
            "Sid": "ReadAllowlistedSecrets",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": resources,
            "Condition": before_end,
        }),
        json!({
            "Sid": "BatchReadChecksEachSecret",
            "Effect": "Allow",
            "Action": "secretsmanager:BatchGetSecretValue",
            "Resource": "*",
            "Condition": before_end,
        }),
    ];
    if let Some(kms) = allowlist.kms() {
        statements.push(json!({
            "Sid": "DecryptOnlyTheseSecrets",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": kms.keys,
            "Condition": {
                "DateLessThan": { "aws:CurrentTime": until },
                "StringEquals": { "kms:ViaService": kms.via_service },
                "StringLike": { "kms:EncryptionContext:SecretARN": resources },
            },
        }));
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
    let longest = allowlist.for_tenant(&"t".repeat(crate::tenant::MAX_TENANT_ID_CHARS));
    let size = session_policy(&longest, far_future).len();
    if size > MAX_POLICY_CHARS {
        return Err(format!(
            "produce a session policy of {size} characters, over AWS's limit of {MAX_POLICY_CHARS}; \
             list fewer secrets or use shorter names."
        ));
    }
    Ok(())
}

/// `RoleSessionName` for a session: `ss-{env}-{request}` cut to STS's 64 characters, using
/// only the characters STS accepts (`[\w+=,.@-]`); the emulator does not check this, so we do.
pub fn session_name(environment_id: &str, request_id: &str, sequence: u32) -> String {
    let clean = |text: &str| -> String {
        text.chars().filter(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(*c)).collect()
    };
    let suffix = if sequence == 0 { String::new() } else { format!("-{sequence}") };
    let mut name = format!("ss-{}-{}", clean(environment_id), clean(request_id));
    name.truncate(64 - suffix.len());
    name.push_str(&suffix);
    name
}

/// Whether `name` is a valid `RoleSessionName` (2 to 64 of `[\w+=,.@-]`).
pub fn is_valid_session_name(name: &str) -> bool {
    (2..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

/// `YYYY-MM-DDThh:mm:ssZ` for `time`, rounded up to the whole second.
pub fn iso8601_ceil(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    let days = seconds / 86_400;
    let rest = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3_600, rest % 3_600 / 60, rest % 60)
}

/// Howard Hinnant's days-to-civil algorithm (public domain), for dates after 1970.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoleArn;

    fn allowlist(list: &str) -> Allowlist {
        let role = RoleArn::parse("arn:aws:iam::123456789012:role/r").expect("valid");
        Allowlist::parse(list, &role, "us-east-1").expect("valid")
    }

    #[test]
    fn kms_keys_add_decrypt_only_via_secrets_manager_for_the_allowlisted_secrets() {
        let end = UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        let key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let grant = crate::allowlist::KmsGrant {
            keys: vec![key.to_owned()],
            via_service: "secretsmanager.us-east-1.amazonaws.com".to_owned(),
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
    fn dates_are_exact_across_leap_years_and_month_ends() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_251_199, "2024-02-29T23:59:59Z"),
            (1_735_689_600, "2025-01-01T00:00:00Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(iso8601_ceil(UNIX_EPOCH + Duration::from_secs(seconds)), expected);
        }
    }

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
            assert!(is_valid_session_name(&name), "{name}");
            assert!(name.starts_with("ss-"));
        }
        assert_eq!(session_name("env1", "req-1", 0), "ss-env1-req-1");
        assert_eq!(session_name("env1", "req-1", 2), "ss-env1-req-1-2");
        for invalid in ["a", &"a".repeat(65), "has space", "a/b", "a:b", "a*b"] {
            assert!(!is_valid_session_name(invalid), "{invalid}");
        }
    }

    #[test]
    fn a_long_allowlist_is_refused_at_init() {
        let long: Vec<String> = (0..20).map(|i| format!("team/{}/{i}", "n".repeat(60))).collect();
        let error = check_fits(&allowlist(&long.join(","))).expect_err("too long");
        assert!(error.contains("2048"), "{error}");
        assert!(check_fits(&allowlist("app/db")).is_ok());
    }
}
