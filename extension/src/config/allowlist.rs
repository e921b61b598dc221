//! The allowlist: which secrets and parameters the function may read, under which local names,
//! and the exact IAM resource each one becomes in a session policy.
//!
//! `SCOPED_SECRETS_SECRETS` is a comma-separated list of `secret` or `alias=secret`, where
//! `secret` is a Secrets Manager name (`app/db`) or ARN. A name becomes the ARN pattern
//! `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME-??????` (the six characters are
//! the suffix Secrets Manager appends), in the scoped role's account; a complete ARN is used as
//! it is, a partial one (no suffix) gets `-??????`.
//!
//! `SCOPED_SECRETS_PARAMETERS` is the same for Parameter Store: `name` or `alias=name`, a name
//! (`/app/db`, `Name`) or an ARN in the function's region. Each becomes its exact ARN
//! (`…:parameter/app/db`, AWS's leading-slash rule), never a pattern. Nothing else is ever
//! reachable.
//!
//! Both lists share one index space ([`EntryIndex`]): the secrets first, then the parameters,
//! so counters and cache keys stay dense. A request is matched within its own kind only.
//!
//! In tenant isolation mode a name may contain `{tenant}` (`tenants/{tenant}/db`): such an
//! entry answers no request until [`Allowlist::for_tenant`] resolves it with the validated
//! tenant id (see [`crate::tenant`]).

use std::fmt;

use crate::domain::arn::{RoleArn, is_account_id, is_region};
use crate::domain::item::Kind;
use crate::domain::parameter;
use crate::domain::tenant::{MAX_TENANT_ID_CHARS, PLACEHOLDER};
use crate::domain::text::same_bytes;

/// A rejected allowlist, as the end of a sentence starting with the variable's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowlistError {
    /// No entries at all.
    #[error("must list at least one secret name or ARN.")]
    Empty,
    /// An entry is not a valid name or ARN.
    #[error("entry {position} is not valid: {why}.")]
    Invalid {
        /// One-based position in the list.
        position: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Two entries share a name or alias.
    #[error("entry {position} repeats a name or alias that an earlier entry already uses.")]
    Duplicate {
        /// One-based position in the list.
        position: usize,
    },
    /// More entries than one session policy can hold.
    #[error("lists {count} entries; at most {max} fit in one session policy.")]
    TooMany {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// At most this many entries per list: the session policy (2,048 characters) must hold all
/// their ARNs (both lists together are measured at INIT).
pub const MAX_ENTRIES: usize = 20;

/// One allowlisted secret or parameter.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    kind: Kind,
    alias: Option<String>,
    /// The configured name or ARN.
    id: String,
    /// What is sent to AWS: the configured id, except that a parameter ARN in the role's own
    /// account is sent as its name (the API takes either; the ARN is needed only across accounts).
    upstream_id: String,
    /// For matching requests by name: a secret's name without ARN prefix or random suffix; a
    /// parameter's name without its leading `/` (`/Name` and `Name` are one parameter).
    name: String,
    /// The IAM resource (ARN or ARN pattern) the session policy grants.
    resource: String,
    /// The name contains `{tenant}` (unresolved).
    tenant_scoped: bool,
}

impl Entry {
    /// A secret or a parameter.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The configured name or ARN, as the reports name it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id sent to AWS (`SecretId`, `Name`).
    pub fn upstream_id(&self) -> &str {
        &self.upstream_id
    }

    /// The local alias, if one was configured.
    pub fn alias(&self) -> Option<&str> {
        self.alias.as_deref()
    }

    /// The IAM resource (ARN or pattern) that a session policy grants for this entry.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Whether `requested` (which names this entry) is a complete ARN other than the configured
    /// id: it matched the entry's `-??????` pattern, so it is this secret only if it is the
    /// secret's actual ARN, which only AWS's answer tells.
    pub fn is_named_by_arn(&self, requested: &str) -> bool {
        requested.starts_with("arn:") && requested != self.id
    }

    /// Whether `name` would name this entry, resolved or not (for duplicate checks).
    fn clashes_with(&self, name: &str) -> bool {
        self.answers_to(name) || self.alias.as_deref() == Some(name) || self.id == name
    }

    /// Whether one name could answer to both entries.
    fn clashes(&self, other: &Entry) -> bool {
        let names = [Some(other.id.as_str()), Some(other.name.as_str()), other.alias.as_deref()];
        names.iter().flatten().any(|name| self.clashes_with(name))
            || [Some(self.id.as_str()), self.alias.as_deref()].iter().flatten().any(|name| other.clashes_with(name))
    }

    /// Whether `requested` names this entry: its alias, configured id, bare name, or a full
    /// ARN that the entry's resource covers.
    fn answers_to(&self, requested: &str) -> bool {
        if self.tenant_scoped {
            // Unresolved: no request can name it until the tenant is known.
            return false;
        }
        // Word-at-a-time equality ([`same_bytes`]): this runs on every read, for every entry
        // until one answers (`==` on text was a byte-at-a-time `bcmp`, ~45 instructions).
        let same = |text: &str| same_bytes(text.as_bytes(), requested.as_bytes());
        if self.alias.as_deref().is_some_and(same) || same(&self.id) {
            return true;
        }
        if self.kind == Kind::Parameter {
            let by_name = !requested.starts_with("arn:") && parameter::same_name(&self.name, requested);
            return by_name || self.resource == requested;
        }
        if same(&self.name) {
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
        f.debug_struct("Entry").field("kind", &self.kind).field("alias", &self.alias).field("id", &self.id).finish()
    }
}

/// Index of an entry in the allowlist (secrets first, then parameters): the cache's key for
/// "this item".
pub type EntryIndex = usize;

/// The parsed allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Entry>,
    /// Customer-managed KMS keys the secrets are encrypted with (`SCOPED_SECRETS_KMS_KEYS`):
    /// sessions may have Secrets Manager decrypt with them for these secrets only.
    kms: Option<KmsGrant>,
}

/// `kms:Decrypt` on these keys, only through Secrets Manager or Parameter Store in this region
/// and only for the allowlisted items (their ARNs are the encryption context each service sends
/// to KMS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsGrant {
    /// Key ARNs.
    pub keys: Vec<String>,
    /// `REGION.amazonaws.com` (`.com.cn` in China): `kms:ViaService` is `SERVICE.` and this.
    pub region_domain: String,
}

impl KmsGrant {
    /// The `kms:ViaService` value of `service` (`secretsmanager`, `ssm`) in this region.
    pub fn via(&self, service: &str) -> String {
        format!("{service}.{}", self.region_domain)
    }
}

impl Allowlist {
    /// Parses the comma-separated list.
    ///
    /// # Errors
    /// The first entry at fault.
    pub fn parse(list: &str, role: &RoleArn, region: &str) -> Result<Self, AllowlistError> {
        let entries = parse_list(Kind::Secret, list, role, region)?;
        if entries.is_empty() {
            return Err(AllowlistError::Empty);
        }
        Ok(Self { entries, kms: None })
    }

    /// Parses both lists, either of which may be empty (not both: the caller checks).
    ///
    /// # Errors
    /// The list at fault and its first entry at fault.
    pub fn parse_lists(
        secrets: &str,
        parameters: &str,
        role: &RoleArn,
        region: &str,
    ) -> Result<Self, (Kind, AllowlistError)> {
        let mut entries = parse_list(Kind::Secret, secrets, role, region).map_err(|e| (Kind::Secret, e))?;
        entries.extend(parse_list(Kind::Parameter, parameters, role, region).map_err(|e| (Kind::Parameter, e))?);
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

    /// The secret a local request names, if any.
    pub fn find(&self, requested: &str) -> Option<EntryIndex> {
        self.find_kind(Kind::Secret, requested)
    }

    /// The parameter a local request names (without its `:version` or `:label`), if any.
    pub fn find_parameter(&self, requested: &str) -> Option<EntryIndex> {
        self.find_kind(Kind::Parameter, requested)
    }

    fn find_kind(&self, kind: Kind, requested: &str) -> Option<EntryIndex> {
        self.entries.iter().position(|entry| entry.kind == kind && entry.answers_to(requested))
    }

    /// The entry at `index`.
    pub fn entry(&self, index: EntryIndex) -> Option<&Entry> {
        self.entries.get(index)
    }

    /// All entries with their indices.
    pub fn iter(&self) -> impl Iterator<Item = (EntryIndex, &Entry)> {
        self.entries.iter().enumerate()
    }

    /// How many entries are allowlisted, of both kinds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// How many entries of `kind` are allowlisted.
    pub fn count(&self, kind: Kind) -> usize {
        self.entries.iter().filter(|entry| entry.kind == kind).count()
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
                    kind: entry.kind,
                    alias: entry.alias.clone(),
                    id: fill(&entry.id),
                    upstream_id: fill(&entry.upstream_id),
                    name: fill(&entry.name),
                    resource: fill(&entry.resource),
                    tenant_scoped: false,
                }
            })
            .collect();
        // Within a kind: a secret and a parameter of one name are told apart by the protocol.
        let ambiguous = entries
            .iter()
            .enumerate()
            .any(|(index, entry)| entries[..index].iter().any(|e| e.kind == entry.kind && e.clashes(entry)));
        (!ambiguous).then(|| Self { entries, kms: self.kms.clone() })
    }

    /// Whether both lists are empty (the configuration refuses that).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One list's entries, each checked against the earlier ones of its kind.
fn parse_list(kind: Kind, list: &str, role: &RoleArn, region: &str) -> Result<Vec<Entry>, AllowlistError> {
    let raw: Vec<&str> = list.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    if raw.len() > MAX_ENTRIES {
        return Err(AllowlistError::TooMany { count: raw.len(), max: MAX_ENTRIES });
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(raw.len());
    for (index, text) in raw.iter().enumerate() {
        let position = index + 1;
        let parsed = match kind {
            Kind::Secret => parse_entry(text, role, region),
            Kind::Parameter => parse_parameter(text, role, region),
        };
        let entry = parsed.map_err(|why| AllowlistError::Invalid { position, why })?;
        if entries.iter().any(|earlier| earlier.clashes(&entry)) {
            return Err(AllowlistError::Duplicate { position });
        }
        entries.push(entry);
    }
    Ok(entries)
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
        let (id, upstream_id) = (secret.to_owned(), secret.to_owned());
        Ok(Entry { kind: Kind::Secret, alias, id, upstream_id, name: bare.to_owned(), resource, tenant_scoped })
    } else {
        check_name(secret)?;
        let resource =
            format!("arn:{}:secretsmanager:{region}:{}:secret:{secret}-??????", role.partition(), role.account_id());
        let tenant_scoped = secret.contains(PLACEHOLDER);
        let (id, upstream_id) = (secret.to_owned(), secret.to_owned());
        Ok(Entry { kind: Kind::Secret, alias, id, upstream_id, name: secret.to_owned(), resource, tenant_scoped })
    }
}

/// `name`, `alias=name` or an ARN (`arn:PARTITION:ssm:REGION:ACCOUNT:parameter/NAME`) in the
/// function's region: the session's client is regional. Names never contain `=`, so any `=`
/// introduces an alias.
fn parse_parameter(text: &str, role: &RoleArn, region: &str) -> Result<Entry, &'static str> {
    let (alias, configured) = match text.split_once('=') {
        Some((alias, name)) if is_alias(alias.trim()) => (Some(alias.trim().to_owned()), name.trim()),
        Some(_) => return Err("an alias is 1 to 64 of A-Z a-z 0-9 _ . -"),
        None => (None, text),
    };
    let (name, account, partition) = match configured.strip_prefix("arn:") {
        Some(rest) => {
            let parts: Vec<&str> = rest.splitn(6, ':').collect();
            let [partition, service, arn_region, account, resource] = parts.as_slice() else {
                return Err("an ARN must look like arn:aws:ssm:REGION:ACCOUNT:parameter/NAME");
            };
            let Some(path) = resource.strip_prefix("parameter/") else {
                return Err("an ARN must look like arn:aws:ssm:REGION:ACCOUNT:parameter/NAME");
            };
            if !matches!(*partition, "aws" | "aws-cn" | "aws-us-gov") || *service != "ssm" {
                return Err("an ARN must look like arn:aws:ssm:REGION:ACCOUNT:parameter/NAME");
            }
            if *arn_region != region {
                return Err("a parameter ARN must be in the function's region");
            }
            if !is_account_id(account) {
                return Err("the ARN's account must be 12 digits");
            }
            // A name in a hierarchy keeps its leading slash; a flat name is the same either way.
            let name = if path.contains('/') { format!("/{path}") } else { (*path).to_owned() };
            (name, *account, *partition)
        }
        None => (configured.to_owned(), role.account_id(), role.partition()),
    };
    parameter::check_name(&name)?;
    let own_account = account == role.account_id() && partition == role.partition();
    let upstream_id = if own_account { name.clone() } else { configured.to_owned() };
    Ok(Entry {
        kind: Kind::Parameter,
        alias,
        id: configured.to_owned(),
        upstream_id,
        resource: parameter::arn(partition, region, account, &name),
        tenant_scoped: name.contains(PLACEHOLDER),
        name: name.trim_start_matches('/').to_owned(),
    })
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
mod tests;
