//! The one read path both protocols call once they have parsed a request: the allowlist, the
//! tenant's confirmation, the store (cache or a fetch with the invocation's session), the
//! evidence, and the audit line for every allow and every deny.
//!
//! Every line names the invocation's request id and the requested id (never a value); a
//! requested id that contains the local token is never written as it is. On Managed Instances a
//! caller may name its invocation; once the Runtime API proxy knows the invocations running,
//! the name must be one of them, and the read is served by that invocation's scope
//! (`request_id_checked` in the audit line); before that, or without the proxy, it is only a
//! label the caller asserts (`request_id_asserted`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::LocalToken;
use crate::domain::api::Api;
use crate::domain::code::Code;
use crate::domain::error::ReadError;
use crate::domain::request_id::RequestId;
use crate::domain::text::printable;
use crate::domain::version::Version;
use crate::evidence::Evidence;
use crate::invocation::Invocations;
use crate::invocation::scope::Scope;
use crate::secrets::Secrets;
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

/// One read as a protocol parsed it.
#[derive(Debug, Clone, Copy)]
pub struct Read<'a> {
    /// The requested id (alias, name or ARN), as the caller wrote it.
    pub secret_id: &'a str,
    /// The face of the API.
    pub api: Api,
    /// Skip the cache for this read.
    pub refresh: bool,
    /// The caller's own request id (Managed Instances), if it gave one.
    pub caller: Option<&'a str>,
}

impl ReadPath {
    /// Reads `version` of the secret `read` names: allowlist, cache or fetch (single flight,
    /// the invocation's session), evidence, and the audit line for an allow.
    ///
    /// # Errors
    /// [`ReadError`]; the caller answers in its own protocol and calls [`ReadPath::audit_deny`].
    pub async fn read(&self, read: Read<'_>, version: Version) -> Result<Arc<SecretValue>, ReadError> {
        let wait = self.invocations.wait_timeout();
        let named = self.named_scope(read.caller).await?;
        let allowlist = self.tenancy.allowlist(wait).await?;
        let entry = allowlist.find(read.secret_id).ok_or(ReadError::NotAllowed)?;
        if self.tenancy.is_scoped() {
            // Served only once the platform has named this invocation's tenant as ours.
            let scope = match &named {
                Some(scope) => Arc::clone(scope),
                None => self.invocations.current_scope().await?,
            };
            if !scope.is_per_fetch() {
                self.tenancy.wait_confirmed(scope.label(), wait).await?;
            }
        }
        let served = self.secrets.get(entry, version, read.refresh, named.as_ref()).await?;
        self.evidence.read(entry, read.api);
        let request_id = match read.caller {
            Some(caller) => caller.to_owned(),
            None => served.scope.unwrap_or_else(|| self.invocations.label()),
        };
        tracing::info!(
            target: "audit",
            event = "allow",
            request_id = %request_id,
            request_id_asserted = read.caller.is_some() && named.is_none(),
            request_id_checked = named.is_some(),
            api = read.api.as_str(),
            secret_id = %printable(read.secret_id),
            version_id = served.value.version_id(),
            source = served.source.as_str(),
            refresh = read.refresh,
        );
        Ok(served.value)
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
    async fn named_scope(&self, caller: Option<&str>) -> Result<Option<Arc<Scope>>, ReadError> {
        let Some(caller) = caller.filter(|_| self.checks_callers()) else { return Ok(None) };
        let id = RequestId::parse(caller).map_err(|_| ReadError::RequestIdNotLive)?;
        let scope = self.invocations.concurrent().wait_live(&id, self.invocations.wait_timeout()).await?;
        Ok(Some(scope))
    }

    /// The audit line (and counters) for a refused request. `secret_id` is the requested id,
    /// given only once the request proved it holds the token.
    pub async fn audit_deny(&self, api: Api, caller: Option<&str>, secret_id: Option<&str>, code: Code, status: u16) {
        // Attributed to the invocation the request belongs to, even when it raced its INVOKE.
        let request_id = match caller {
            Some(caller) => caller.to_owned(),
            None => self.invocations.label_settled(ATTRIBUTION_SETTLE).await,
        };
        self.evidence.deny(code);
        // The id is the caller's text; a caller that sends its own token as an id (a bug, or
        // a probe) must not get it into the log.
        let secret_id = match secret_id {
            Some(id) if self.token.appears_in(id) => REDACTED_ID.to_owned(),
            Some(id) => printable(id),
            None => String::new(),
        };
        let checked = caller.is_some() && self.checks_callers();
        tracing::info!(
            target: "audit",
            event = "deny",
            request_id = %request_id,
            request_id_asserted = caller.is_some() && !checked,
            request_id_checked = checked,
            api = api.as_str(),
            secret_id = %secret_id,
            code = code.as_str(),
            status,
        );
    }
}
