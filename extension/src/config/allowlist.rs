//! The secret allowlist: which secrets the function may read, under which local names, and
//! the exact IAM resource each one becomes in a session policy.
//!
//! `SCOPED_SECRETS_SECRETS` is a comma-separated list of `secret` or `alias=secret`, where
//! `secret` is a Secrets Manager name (`app/db`) or ARN. A name becomes the ARN pattern
//! `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME-??????` (the six characters are
//! the suffix Secrets Manager appends), in the scoped role's account; a complete ARN is used as
//! it is, a partial one (no suffix) gets `-??????`. Nothing else is ever reachable.
//!
//! In tenant isolation mode a name may contain `{tenant}` (`tenants/{tenant}/db`): such an
//! entry answers no request until [`Allowlist::for_tenant`] resolves it with the validated
//! tenant id (see [`crate::tenant`]).

use std::fmt;

use crate::domain::arn::{RoleArn, is_account_id, is_region};
use crate::domain::tenant::{MAX_TENANT_ID_CHARS, PLACEHOLDER};

/// A rejected allowlist, as the end of a sentence starting with the variable's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowlistError {
    /// No entries at all.
    #[error("must list at least one secret name or ARN.")]
    Empty,
    /// An entry is not a valid name or ARN.
    #[error("entry {position} is not a valid secret name or ARN: {why}.")]
    Invalid {
        /// One-based position in the list.
        position: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Two entries share a name or alias.
    #[error("entry {position} repeats a secret or alias that an earlier entry already uses.")]
    Duplicate {
        /// One-based position in the list.
        position: usize,
    },
    /// More entries than one session policy can hold.
    #[error("lists {count} secrets; at most {max} fit in one session policy.")]
    TooMany {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// At most this many secrets: the session policy (2,048 characters) must hold all their ARNs.
pub const MAX_ENTRIES: usize = 20;

/// One allowlisted secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    alias: Option<String>,
    /// The id sent to Secrets Manager: the configured name or ARN.
    secret_id: String,
    /// The secret's name, without ARN prefix or random suffix, for matching requests by name.
    name: String,
    /// The IAM resource (ARN or ARN pattern) the session policy grants.
    resource: String,
    /// The name contains `{tenant}` (unresolved).
    tenant_scoped: bool,
}

impl Entry {
    /// The id sent to Secrets Manager.
    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }

    /// The local alias, if one was configured.
    pub fn alias(&self) -> Option<&str> {
        self.alias.as_deref()
    }

    /// The IAM resource (ARN or pattern) that a session policy grants for this secret.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Whether `requested` (which names this entry) is a complete ARN other than the configured
    /// id: it matched the entry's `-??????` pattern, so it is this secret only if it is the
    /// secret's actual ARN, which only AWS's answer tells.
    pub fn is_named_by_arn(&self, requested: &str) -> bool {
        requested.starts_with("arn:") && requested != self.secret_id
    }

    /// Whether `name` would name this entry, resolved or not (for duplicate checks).
    fn clashes_with(&self, name: &str) -> bool {
        self.answers_to(name) || self.alias.as_deref() == Some(name) || self.secret_id == name
    }

    /// Whether one name could answer to both entries.
    fn clashes(&self, other: &Entry) -> bool {
        let names = [Some(other.secret_id.as_str()), Some(other.name.as_str()), other.alias.as_deref()];
        names.iter().flatten().any(|name| self.clashes_with(name))
            || [Some(self.secret_id.as_str()), self.alias.as_deref()]
                .iter()
                .flatten()
                .any(|name| other.clashes_with(name))
    }

    /// Whether `requested` names this secret: its alias, configured id, bare name, or a full
    /// ARN that the entry's resource pattern covers.
    fn answers_to(&self, requested: &str) -> bool {
        if self.tenant_scoped {
            // Unresolved: no request can name it until the tenant is known.
            return false;
        }
        if self.alias.as_deref() == Some(requested) || self.secret_id == requested || self.name == requested {
            return true;
        }
        match self.resource.strip_suffix("-??????") {
            Some(prefix) => requested
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|suffix| suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric())),
            None => self.resource == requested,
        }
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names and ARNs are identifiers, not secrets: printing them is fine.
        f.debug_struct("Entry").field("alias", &self.alias).field("secret_id", &self.secret_id).finish()
    }
}

/// Index of an entry in the allowlist: the cache's key for "this secret".
pub type EntryIndex = usize;

/// The parsed allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Entry>,
    /// Customer-managed KMS keys the secrets are encrypted with (`SCOPED_SECRETS_KMS_KEYS`):
    /// sessions may have Secrets Manager decrypt with them for these secrets only.
    kms: Option<KmsGrant>,
}

/// `kms:Decrypt` on these keys, only through Secrets Manager in this region and only for the
/// allowlisted secrets (their ARNs are the encryption context Secrets Manager sends to KMS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsGrant {
    /// Key ARNs.
    pub keys: Vec<String>,
    /// `secretsmanager.REGION.amazonaws.com` (`.com.cn` in China), for `kms:ViaService`.
    pub via_service: String,
}

impl Allowlist {
    /// Parses the comma-separated list.
    ///
    /// # Errors
    /// The first entry at fault.
    pub fn parse(list: &str, role: &RoleArn, region: &str) -> Result<Self, AllowlistError> {
        let raw: Vec<&str> = list.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        if raw.is_empty() {
            return Err(AllowlistError::Empty);
        }
        if raw.len() > MAX_ENTRIES {
            return Err(AllowlistError::TooMany { count: raw.len(), max: MAX_ENTRIES });
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(raw.len());
        for (index, text) in raw.iter().enumerate() {
            let position = index + 1;
            let entry = parse_entry(text, role, region).map_err(|why| AllowlistError::Invalid { position, why })?;
            if entries.iter().any(|earlier| earlier.clashes(&entry)) {
                return Err(AllowlistError::Duplicate { position });
            }
            entries.push(entry);
        }
        Ok(Self { entries, kms: None })
    }

    /// The allowlist whose sessions may also decrypt with `grant`'s keys (for these secrets).
    #[must_use]
    pub fn with_kms(mut self, grant: KmsGrant) -> Self {
        self.kms = Some(grant);
        self
    }

    /// The KMS grant, if any key is configured.
    pub fn kms(&self) -> Option<&KmsGrant> {
        self.kms.as_ref()
    }

    /// The entry a local request names, if any.
    pub fn find(&self, requested: &str) -> Option<EntryIndex> {
        self.entries.iter().position(|entry| entry.answers_to(requested))
    }

    /// The entry at `index`.
    pub fn entry(&self, index: EntryIndex) -> Option<&Entry> {
        self.entries.get(index)
    }

    /// All entries with their indices.
    pub fn iter(&self) -> impl Iterator<Item = (EntryIndex, &Entry)> {
        self.entries.iter().enumerate()
    }

    /// How many secrets are allowlisted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether any entry contains `{tenant}`.
    pub fn has_tenant_entries(&self) -> bool {
        self.entries.iter().any(|entry| entry.tenant_scoped)
    }

    /// The allowlist with `{tenant}` replaced by `tenant` (already validated by
    /// [`crate::domain::tenant::TenantId::parse`], whose characters are a subset of a name's), entry
    /// for entry, so indices stay the same. `None` when the tenant id would make one name answer
    /// to two entries (a tenant id equal to another entry's alias or name): no request could
    /// tell which secret it means.
    pub fn for_tenant(&self, tenant: &str) -> Option<Self> {
        let entries: Vec<Entry> = self
            .entries
            .iter()
            .map(|entry| {
                if !entry.tenant_scoped {
                    return entry.clone();
                }
                let fill = |text: &str| text.replace(PLACEHOLDER, tenant);
                Entry {
                    alias: entry.alias.clone(),
                    secret_id: fill(&entry.secret_id),
                    name: fill(&entry.name),
                    resource: fill(&entry.resource),
                    tenant_scoped: false,
                }
            })
            .collect();
        let ambiguous =
            entries.iter().enumerate().any(|(index, entry)| entries[..index].iter().any(|e| e.clashes(entry)));
        (!ambiguous).then(|| Self { entries, kms: self.kms.clone() })
    }

    /// Never true for a parsed allowlist; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_entry(text: &str, role: &RoleArn, region: &str) -> Result<Entry, &'static str> {
    let (alias, secret) = match text.split_once('=') {
        Some((alias, secret)) if is_alias(alias.trim()) => (Some(alias.trim().to_owned()), secret.trim()),
        Some((alias, _)) if !alias.contains('/') && !alias.starts_with("arn:") => {
            return Err("an alias is 1 to 64 of A-Z a-z 0-9 _ . -");
        }
        _ => (None, text),
    };
    if let Some(rest) = secret.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(6, ':').collect();
        let [partition, service, arn_region, account, kind, name] = parts.as_slice() else {
            return Err("an ARN must look like arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME");
        };
        if !matches!(*partition, "aws" | "aws-cn" | "aws-us-gov") || *service != "secretsmanager" || *kind != "secret" {
            return Err("an ARN must look like arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME");
        }
        if !is_region(arn_region) {
            return Err("the ARN's region is not a region name");
        }
        if !is_account_id(account) {
            return Err("the ARN's account must be 12 digits");
        }
        check_name(name)?;
        let complete = has_random_suffix(name);
        let bare = if complete { &name[..name.len() - 7] } else { name };
        let resource = if complete { secret.to_owned() } else { format!("{secret}-??????") };
        let tenant_scoped = name.contains(PLACEHOLDER);
        Ok(Entry { alias, secret_id: secret.to_owned(), name: bare.to_owned(), resource, tenant_scoped })
    } else {
        check_name(secret)?;
        let resource =
            format!("arn:{}:secretsmanager:{region}:{}:secret:{secret}-??????", role.partition(), role.account_id());
        let tenant_scoped = secret.contains(PLACEHOLDER);
        Ok(Entry { alias, secret_id: secret.to_owned(), name: secret.to_owned(), resource, tenant_scoped })
    }
}

fn is_alias(text: &str) -> bool {
    (1..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Secrets Manager names: 1 to 512 of `A-Z a-z 0-9 / _ + = . @ -`, plus the `{tenant}`
/// placeholder (counted at the longest tenant id). Wildcards never pass, so an entry can never
/// widen into a pattern.
fn check_name(name: &str) -> Result<(), &'static str> {
    let placeholders = name.matches(PLACEHOLDER).count();
    let plain = name.replace(PLACEHOLDER, "");
    let longest = plain.len() + placeholders * MAX_TENANT_ID_CHARS;
    if name.is_empty() || longest > 512 {
        return Err("a secret name is 1 to 512 characters (a {tenant} counts as 64)");
    }
    if !plain.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b)) {
        return Err("a secret name uses only A-Z a-z 0-9 / _ + = . @ - and {tenant} (no wildcards)");
    }
    Ok(())
}

/// Whether a name from an ARN ends in Secrets Manager's `-XXXXXX` random suffix.
fn has_random_suffix(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() > 7 && bytes[bytes.len() - 7] == b'-' && bytes[bytes.len() - 6..].iter().all(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role() -> RoleArn {
        RoleArn::parse("arn:aws:iam::123456789012:role/app-secrets").expect("valid role")
    }

    fn parse(list: &str) -> Result<Allowlist, AllowlistError> {
        Allowlist::parse(list, &role(), "eu-west-1")
    }

    #[test]
    fn names_become_suffix_patterns_in_the_roles_account_and_arns_stay_exact() {
        let list = parse(
            "db=app/db, arn:aws:secretsmanager:us-east-1:210987654321:secret:shared/key-AbC123,\
             arn:aws:secretsmanager:us-east-1:210987654321:secret:partial",
        )
        .expect("valid");
        let resources: Vec<&str> = list.iter().map(|(_, e)| e.resource()).collect();
        assert_eq!(
            resources,
            [
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-??????",
                "arn:aws:secretsmanager:us-east-1:210987654321:secret:shared/key-AbC123",
                "arn:aws:secretsmanager:us-east-1:210987654321:secret:partial-??????",
            ]
        );
        assert_eq!(list.entry(0).and_then(Entry::alias), Some("db"));
    }

    #[test]
    fn requests_match_by_alias_name_or_covered_arn_and_nothing_else() {
        let list =
            parse("db=app/db,arn:aws:secretsmanager:us-east-1:210987654321:secret:shared/key-AbC123").expect("valid");
        let cases = [
            ("db", Some(0)),
            ("app/db", Some(0)),
            ("arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-Xy12Z9", Some(0)),
            ("arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-Xy12Z", None),
            ("arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-Xy12Z9/x", None),
            ("arn:aws:secretsmanager:eu-west-1:999999999999:secret:app/db-Xy12Z9", None),
            ("shared/key", Some(1)),
            ("arn:aws:secretsmanager:us-east-1:210987654321:secret:shared/key-AbC123", Some(1)),
            ("arn:aws:secretsmanager:us-east-1:210987654321:secret:shared/key-ZZZZZZ", None),
            ("app/db2", None),
            ("app/*", None),
            ("", None),
            ("DB", None),
        ];
        for (requested, expected) in cases {
            assert_eq!(list.find(requested), expected, "{requested}");
        }
        // A suffix the pattern covers still has to be the secret's own (checked against AWS's
        // answer); the configured complete ARN and names need no check.
        let by_name = list.entry(0).expect("entry");
        assert!(by_name.is_named_by_arn("arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-Xy12Z9"));
        assert!(!by_name.is_named_by_arn("app/db") && !by_name.is_named_by_arn("db"));
        let by_arn = list.entry(1).expect("entry");
        assert!(!by_arn.is_named_by_arn("arn:aws:secretsmanager:us-east-1:210987654321:secret:shared/key-AbC123"));
    }

    #[test]
    fn tenant_entries_answer_nothing_until_resolved_and_then_only_their_tenant() {
        let list = parse("db=tenants/{tenant}/db,app/shared").expect("valid");
        assert!(list.has_tenant_entries());
        for unresolved in ["db", "tenants/{tenant}/db", "tenants/blue/db"] {
            assert_eq!(list.find(unresolved), None, "{unresolved}");
        }
        let blue = list.for_tenant("blue").expect("unambiguous");
        assert!(!blue.has_tenant_entries());
        assert_eq!(
            blue.entry(0).map(Entry::resource),
            Some("arn:aws:secretsmanager:eu-west-1:123456789012:secret:tenants/blue/db-??????")
        );
        assert_eq!(blue.find("db"), Some(0));
        assert_eq!(blue.find("tenants/blue/db"), Some(0));
        assert_eq!(blue.find("arn:aws:secretsmanager:eu-west-1:123456789012:secret:tenants/blue/db-AbC123"), Some(0));
        assert_eq!(blue.find("tenants/red/db"), None);
        assert_eq!(blue.find("app/shared"), Some(1));
        assert!(!parse("app/db").expect("valid").has_tenant_entries());
        for refused in
            ["tenants/{tenant*}/db", "tenants/{other}/db", "tenants/{tenant", &format!("{}{{tenant}}", "n".repeat(449))]
        {
            assert!(parse(refused).is_err(), "{refused}");
        }
        assert!(parse(&format!("{}{{tenant}}", "n".repeat(448))).is_ok());
        // A tenant id that is another entry's alias or name would make one name mean two secrets.
        let aliased = parse("db=app/db,{tenant},tenants/{tenant}").expect("valid");
        for ambiguous in ["db", "app/db"] {
            assert!(aliased.for_tenant(ambiguous).is_none(), "{ambiguous}");
        }
        assert!(aliased.for_tenant("blue").is_some());
    }

    #[test]
    fn malformed_lists_are_rejected_with_their_position() {
        let cases = [
            ("", AllowlistError::Empty),
            (" , ", AllowlistError::Empty),
            ("app/*", AllowlistError::Invalid { position: 1, why: "" }),
            ("ok,app db", AllowlistError::Invalid { position: 2, why: "" }),
            ("bad alias!=app/db", AllowlistError::Invalid { position: 1, why: "" }),
            ("arn:aws:s3:::bucket", AllowlistError::Invalid { position: 1, why: "" }),
            ("arn:aws:secretsmanager:us-east-1:1234:secret:x", AllowlistError::Invalid { position: 1, why: "" }),
            ("arn:aws:secretsmanager:us-east-1:123456789012:secret:", AllowlistError::Invalid { position: 1, why: "" }),
            ("app/db,app/db", AllowlistError::Duplicate { position: 2 }),
            ("db=app/db,db=app/api", AllowlistError::Duplicate { position: 2 }),
            ("x=app/db,x", AllowlistError::Duplicate { position: 2 }),
        ];
        for (list, expected) in cases {
            let error = parse(list).expect_err(list);
            match (&error, &expected) {
                (AllowlistError::Invalid { position: a, .. }, AllowlistError::Invalid { position: b, .. }) => {
                    assert_eq!(a, b, "{list}");
                }
                _ => assert_eq!(error, expected, "{list}"),
            }
        }
        let too_many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("s{i}")).collect();
        assert_eq!(
            parse(&too_many.join(",")),
            Err(AllowlistError::TooMany { count: MAX_ENTRIES + 1, max: MAX_ENTRIES })
        );
    }
}
