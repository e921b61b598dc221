//! The one read path both protocols call once they have parsed a request, for secrets and
//! parameters alike: the allowlist (each kind matched among its own entries), the tenant's
//! confirmation, the store (cache or a fetch with the invocation's session), the evidence, and
//! the audit line for every allow and every deny.
//!
//! Every line names the invocation's request id, the kind of item and the requested id (never a
//! value): `secret_id` for a secret, `parameter` for a parameter. A requested id (or a caller's
//! request id) that carries the local token or a long piece of it, however it was decoded on the
//! way in, is never written as it is ([`LocalToken::appears_in`]).
//!
//! On Managed Instances a caller may name its invocation; once the Runtime API proxy knows the
//! invocations running, the name must be one of them, and the read is served by that
//! invocation's scope (`request_id_checked` in the audit line); before that, or without the
//! proxy, it is only a label the caller asserts (`request_id_asserted`).
//!
//! Every wait of one request (for the tenant, for an invocation, for its session) ends at one
//! deadline ([`ReadPath::deadline`] at its arrival, given to [`ReadPath::read`]): a request is
//! bounded by one wait timeout in all, plus the upstream call it makes. A read served at once
//! ([`ReadPath::read_ready`]) waits for nothing and needs none.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::LocalToken;
use crate::config::allowlist::{Allowlist, EntryIndex};
use crate::domain::api::Api;
use crate::domain::code::Code;
use crate::domain::error::ReadError;
use crate::domain::item::{Kind, Wanted};
use crate::domain::parameter::ParameterVersion;
use crate::domain::request_id::RequestId;
use crate::domain::text::{printable, same_bytes};
use crate::domain::version::Version;
use crate::evidence::Evidence;
use crate::invocation::Invocations;
use crate::invocation::scope::Scope;
use crate::logging;
use crate::logging::audit::Memo;
use crate::secrets::Secrets;
use crate::secrets::parameter::ParameterValue;
use crate::secrets::served::{Item, Served, Source};
use crate::secrets::value::SecretValue;
use crate::tenant::Tenancy;

/// How long a refusal seen between invocations waits for its INVOKE, to name it in the audit line.
const ATTRIBUTION_SETTLE: Duration = Duration::from_millis(100);
/// What an audit line shows for a requested id that contains the local token.
const REDACTED_ID: &str = "<contains the local token>";

/// What a read needs: the allowlist as the tenant resolves it, the store, the phase, the
/// evidence, and the token (only to keep it out of audit lines).
#[derive(Debug)]
pub struct ReadPath {
    /// The allowlist, as the environment's tenant (if any) resolves it.
    pub tenancy: Arc<Tenancy>,
    /// The cache and fetcher.
    pub secrets: Arc<Secrets>,
    /// The current phase, for request ids in audit lines.
    pub invocations: Arc<Invocations>,
    /// Reads per secret and denies per code, for the reports and metrics.
    pub evidence: Arc<Evidence>,
    /// The local token, so no audit line repeats it.
    pub token: LocalToken,
    /// Set once an invocation came through the Runtime API proxy: from then on a caller's
    /// request id must name an invocation running now.
    pub runtime_proxy_delivered: Arc<AtomicBool>,
}

thread_local! {
    /// What the last `allow` line was made of, and its text (the serving thread writes them).
    static ALLOW_LINE: Memo<AllowKey> = const { Memo::new() };
}

/// What an `allow` line is made of: everything its fields read.
#[derive(Debug)]
struct AllowKey {
    request_id: String,
    secret_id: String,
    version_id: String,
    /// Asserted, checked, api, decrypt (which also gives the kind), source, refresh.
    flags: (bool, bool, Api, Option<bool>, Source, bool),
}

/// One read as a protocol parsed it.
#[derive(Debug, Clone, Copy)]
pub struct Read<'a> {
    /// The requested id (alias, name or ARN), as the caller wrote it; a parameter's without its
    /// `:version` or `:label`.
    pub secret_id: &'a str,
    /// The face of the API.
    pub api: Api,
    /// Skip the cache for this read.
    pub refresh: bool,
    /// The caller's own request id (Managed Instances), if it gave one.
    pub caller: Option<&'a str>,
    /// A staging label the version asked for by id must carry (the SDK's `VersionId` with a
    /// `VersionStage`): AWS refuses a pair that names two versions.
    pub stage_of_id: Option<&'a str>,
}

impl ReadPath {
    /// The deadline of a request arriving now: one wait timeout away.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.invocations.wait_timeout()
    }

    /// Reads `version` of the secret `read` names: allowlist, cache or fetch (single flight,
    /// the invocation's session), evidence, and the audit line for an allow. Every wait ends at
    /// `deadline`.
    ///
    /// # Errors
    /// [`ReadError`]; the caller answers in its own protocol and calls [`ReadPath::audit_deny`].
    pub async fn read(
        &self,
        read: Read<'_>,
        version: Version,
        deadline: Instant,
    ) -> Result<Arc<SecretValue>, ReadError> {
        match self.read_item(read, Wanted::Secret(version), deadline).await? {
            Item::Secret(value) => Ok(value),
            Item::Parameter(_) => Err(ReadError::Upstream { kind: "a parameter where a secret was due".into() }),
        }
    }

    /// Reads `version` of the parameter `read` names, decrypted or not, as [`ReadPath::read`]
    /// reads a secret.
    ///
    /// # Errors
    /// [`ReadError`]; the caller answers in its own protocol and calls
    /// [`ReadPath::audit_parameter_deny`].
    pub async fn read_parameter(
        &self,
        read: Read<'_>,
        version: ParameterVersion,
        decrypt: bool,
        deadline: Instant,
    ) -> Result<Arc<ParameterValue>, ReadError> {
        match self.read_item(read, Wanted::Parameter { version, decrypt }, deadline).await? {
            Item::Parameter(value) => Ok(value),
            Item::Secret(_) => Err(ReadError::Upstream { kind: "a secret where a parameter was due".into() }),
        }
    }

    /// Whether `requested` names an allowlisted item of `kind` (waiting, bounded, for the
    /// tenant), so a `GetParameters` can refuse whole before anything is asked of AWS.
    ///
    /// # Errors
    /// [`ReadError::NotAllowed`] or [`ReadError::ParameterNotAllowed`], or why the allowlist is
    /// not known.
    pub async fn check(&self, kind: Kind, requested: &str, deadline: Instant) -> Result<(), ReadError> {
        let allowlist = self.tenancy.allowlist(deadline).await?;
        match kind {
            Kind::Secret => allowlist.find(requested).map(|_| ()).ok_or(ReadError::NotAllowed),
            Kind::Parameter => allowlist.find_parameter(requested).map(|_| ()).ok_or(ReadError::ParameterNotAllowed),
        }
    }

    async fn read_item(&self, read: Read<'_>, wanted: Wanted, deadline: Instant) -> Result<Item, ReadError> {
        let named = self.named_scope(read.caller, deadline).await?;
        let allowlist = self.tenancy.allowlist(deadline).await?;
        let (entry, by_arn) = locate(&allowlist, &read, &wanted)?;
        let decrypt = wanted.decrypt();
        if self.tenancy.is_scoped() {
            // Served only once the platform has named this invocation's tenant as ours.
            let scope = match &named {
                Some(scope) => Arc::clone(scope),
                None => self.invocations.current_scope_until(deadline).await?,
            };
            if !scope.is_per_fetch() {
                self.tenancy.wait_confirmed(scope.label(), deadline).await?;
            }
        }
        let served = self.secrets.get(entry, wanted, read.refresh, deadline, named.as_ref()).await?;
        check_served(&read, by_arn, &served.value)?;
        Ok(self.allow(read, entry, decrypt, named.is_some(), served))
    }

    /// [`ReadPath::read`] when it needs no wait and its value is cached: no `refresh`, no
    /// tenant to wait for, no caller's request id to check, a fresh value in the cache. The same
    /// checks, counters, evidence and audit line, without building the read's future (a
    /// cached GET's future was moved five times on its way through hyper, and boxed: ~1.5 k of
    /// its 16 k instructions under callgrind). `None`, with nothing counted or logged: the
    /// read goes through [`ReadPath::read`], which decides it again.
    pub fn read_ready(&self, read: Read<'_>, wanted: Wanted) -> Option<Item> {
        if read.refresh || self.tenancy.is_scoped() || (read.caller.is_some() && self.checks_callers()) {
            return None;
        }
        let (entry, by_arn) = locate(self.tenancy.template(), &read, &wanted).ok()?;
        let (kind, decrypt) = (wanted.kind(), wanted.decrypt());
        let served = self.secrets.cached(entry, wanted)?;
        let of_kind = match &served.value {
            Item::Secret(_) => kind == Kind::Secret,
            Item::Parameter(_) => kind == Kind::Parameter,
        };
        if !of_kind || check_served(&read, by_arn, &served.value).is_err() {
            return None;
        }
        self.secrets.count(Ok(&served));
        Some(self.allow(read, entry, decrypt, false, served))
    }

    /// A read served: its evidence and its `allow` line (`decrypt`: a parameter's; `named`:
    /// the caller's request id named a running invocation).
    fn allow(&self, read: Read<'_>, entry: EntryIndex, decrypt: Option<bool>, named: bool, served: Served) -> Item {
        let kind = if decrypt.is_some() { Kind::Parameter } else { Kind::Secret };
        self.evidence.read(entry, read.api);
        // Holders for the label's text: the caller's as logged, or the phase's.
        let (mut logged_caller, mut phase) = (None, None);
        let request_id = match (read.caller, &served.scope) {
            (Some(caller), _) => logged_caller.insert(self.logged(caller)).as_str(),
            (None, Some(scope)) => scope.as_str(),
            (None, None) => phase.insert(self.invocations.current_label()).as_str(),
        };
        let version_id = served.value.version_id();
        let (asserted, checked) = (read.caller.is_some() && !named, named);
        let flags = (asserted, checked, read.api, decrypt, served.source, read.refresh);
        // A cached read repeats the last line's fields: only its timestamp is formatted then.
        let same = |last: &AllowKey| {
            last.flags == flags
                && same_bytes(last.request_id.as_bytes(), request_id.as_bytes())
                && same_bytes(last.secret_id.as_bytes(), read.secret_id.as_bytes())
                && same_bytes(last.version_id.as_bytes(), version_id.as_bytes())
        };
        let key = || AllowKey {
            request_id: request_id.to_owned(),
            secret_id: read.secret_id.to_owned(),
            version_id: version_id.clone().into_owned(),
            flags,
        };
        ALLOW_LINE.with(|memo| {
            logging::audit::write_memoized("allow", memo, same, key, |line| {
                let logged_id = printable(read.secret_id);
                line.str("request_id", request_id)
                    .bool("request_id_asserted", asserted)
                    .bool("request_id_checked", checked)
                    .str("api", read.api.as_str())
                    .str("kind", kind.as_str());
                match decrypt {
                    None => line
                        .str("secret_id", &logged_id)
                        .str("version_id", &version_id)
                        .str("source", served.source.as_str())
                        .bool("refresh", read.refresh),
                    Some(decrypt) => line
                        .str("parameter", &logged_id)
                        .str("version", &version_id)
                        .bool("with_decryption", decrypt)
                        .str("source", served.source.as_str()),
                };
            });
        });
        served.value
    }

    /// Whether a caller's request id must name an invocation running now.
    fn checks_callers(&self) -> bool {
        self.runtime_proxy_delivered.load(Ordering::Acquire)
    }

    /// The scope of the invocation the caller named, once the proxy knows the invocations
    /// running (`None`: no name, or not checked).
    ///
    /// # Errors
    /// [`ReadError::RequestIdNotLive`] when the name is no running invocation's.
    async fn named_scope(&self, caller: Option<&str>, deadline: Instant) -> Result<Option<Arc<Scope>>, ReadError> {
        let Some(caller) = caller.filter(|_| self.checks_callers()) else { return Ok(None) };
        let id = RequestId::parse(caller).map_err(|_| ReadError::RequestIdNotLive)?;
        let scope = self.invocations.concurrent().wait_live(&id, deadline).await?;
        Ok(Some(scope))
    }

    /// The audit line (and counters) for a refused request. `secret_id` is the requested id,
    /// given only once the request proved it holds the token.
    pub async fn audit_deny(&self, api: Api, caller: Option<&str>, secret_id: Option<&str>, code: Code, status: u16) {
        self.deny(Kind::Secret, api, caller, secret_id, code, status).await;
    }

    /// [`ReadPath::audit_deny`] for a request that named a parameter (`name`, once the request
    /// proved it holds the token or signature).
    pub async fn audit_parameter_deny(
        &self,
        api: Api,
        caller: Option<&str>,
        name: Option<&str>,
        code: Code,
        status: u16,
    ) {
        self.deny(Kind::Parameter, api, caller, name, code, status).await;
    }

    async fn deny(&self, kind: Kind, api: Api, caller: Option<&str>, secret_id: Option<&str>, code: Code, status: u16) {
        // Attributed to the invocation the request belongs to, even when it raced its INVOKE.
        let request_id = match caller {
            Some(caller) => self.logged(caller),
            None => self.invocations.label_settled(ATTRIBUTION_SETTLE).await,
        };
        self.evidence.deny(code);
        let secret_id = secret_id.map(|id| self.logged(id)).unwrap_or_default();
        let checked = caller.is_some() && self.checks_callers();
        logging::audit::write("deny", |line| {
            line.str("request_id", &request_id)
                .bool("request_id_asserted", caller.is_some() && !checked)
                .bool("request_id_checked", checked)
                .str("api", api.as_str())
                .str("kind", kind.as_str())
                .str(if kind == Kind::Secret { "secret_id" } else { "parameter" }, &secret_id)
                .str("code", code.as_str())
                .u64("status", u64::from(status));
        });
    }

    /// Caller text as an audit line may show it. A caller that sends its own token as an id
    /// (a bug, or a probe), in whatever encoding, must not get it or a piece of it into the log.
    fn logged(&self, text: &str) -> String {
        if self.token.appears_in(text) { REDACTED_ID.to_owned() } else { printable(text).into_owned() }
    }
}

/// Where `read` is among the allowlist's entries of `wanted`'s kind, and whether it names a
/// secret by a complete ARN other than the configured id (a secret configured by name matches
/// any suffix): such a read is served only if that is the secret's actual ARN, learnt from
/// AWS's answer ([`check_served`]).
///
/// # Errors
/// [`ReadError::NotAllowed`] or [`ReadError::ParameterNotAllowed`].
fn locate(allowlist: &Allowlist, read: &Read<'_>, wanted: &Wanted) -> Result<(EntryIndex, bool), ReadError> {
    let entry = match wanted.kind() {
        Kind::Secret => allowlist.find(read.secret_id).ok_or(ReadError::NotAllowed)?,
        Kind::Parameter => allowlist.find_parameter(read.secret_id).ok_or(ReadError::ParameterNotAllowed)?,
    };
    let by_arn =
        wanted.kind() == Kind::Secret && allowlist.entry(entry).is_some_and(|e| e.is_named_by_arn(read.secret_id));
    Ok((entry, by_arn))
}

/// What the value served must still match: a secret asked for by a complete ARN other than the
/// configured id is served only if it is the secret's actual ARN (`by_arn`), learnt from AWS's
/// answer (AWS would find no secret with that ARN, or another one); a version asked for by id
/// must carry the staging label asked for with it.
fn check_served(read: &Read<'_>, by_arn: bool, value: &Item) -> Result<(), ReadError> {
    if let Item::Secret(secret) = value {
        if by_arn && secret.arn() != read.secret_id {
            return Err(ReadError::NotFound);
        }
        if read.stage_of_id.is_some_and(|stage| !secret.has_stage(stage)) {
            return Err(ReadError::VersionStageMismatch);
        }
    }
    Ok(())
}
