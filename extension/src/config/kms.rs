//! `SCOPED_SECRETS_KMS_KEYS`: customer-managed KMS keys the allowlisted secrets and
//! `SecureString` parameters are encrypted with, parsed into the grant each session policy carries.

use crate::config::allowlist::KmsGrant;
use crate::domain::arn::{RoleArn, is_account_id};

/// Most keys one session policy names (each key ARN is ~75 characters of the 2,048).
const MAX_KMS_KEYS: usize = 5;

/// `SCOPED_SECRETS_KMS_KEYS`: comma-separated key ARNs, or bare key ids in the role's account.
/// Only keys (a KMS authorisation names the key, never an alias), in the function's partition
/// and region (Secrets Manager and Parameter Store decrypt with a key of the item's own region).
pub(super) fn kms_grant(raw: &str, role: &RoleArn, region: &str) -> Result<KmsGrant, String> {
    let is_key_id = |id: &str| {
        let uuid = id.len() == 36
            && id
                .bytes()
                .enumerate()
                .all(|(i, b)| if [8, 13, 18, 23].contains(&i) { b == b'-' } else { b.is_ascii_hexdigit() });
        let multi_region =
            id.strip_prefix("mrk-").is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        uuid || multi_region
    };
    let mut keys = Vec::new();
    for (index, item) in raw.split(',').map(str::trim).filter(|i| !i.is_empty()).enumerate() {
        let position = index + 1;
        let key = if is_key_id(item) {
            format!("arn:{}:kms:{region}:{}:key/{item}", role.partition(), role.account_id())
        } else {
            let parts: Vec<&str> = item.splitn(6, ':').collect();
            let well_formed = match parts.as_slice() {
                [arn, partition, service, key_region, account, resource] => {
                    *arn == "arn"
                        && *partition == role.partition()
                        && *service == "kms"
                        && *key_region == region
                        && is_account_id(account)
                        && resource.strip_prefix("key/").is_some_and(is_key_id)
                }
                _ => false,
            };
            if !well_formed {
                return Err(format!(
                    "entry {position} must be a KMS key ARN (arn:{}:kms:{region}:ACCOUNT:key/KEY-ID) or a key id; \
                     aliases are not keys, and the key must be in the function's region.",
                    role.partition()
                ));
            }
            item.to_owned()
        };
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    if keys.len() > MAX_KMS_KEYS {
        return Err(format!("names {} keys; at most {MAX_KMS_KEYS}.", keys.len()));
    }
    let domain = if role.partition() == "aws-cn" { "amazonaws.com.cn" } else { "amazonaws.com" };
    Ok(KmsGrant { keys, region_domain: format!("{region}.{domain}") })
}
