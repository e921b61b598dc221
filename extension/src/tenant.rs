//! Tenant isolation mode: one execution environment serves one tenant, and allowlist entries
//! written with `{tenant}` (`tenants/{tenant}/db`) reach that tenant's secrets only.
//!
//! The tenant id comes from the platform itself: the `tenantId` of the first telemetry
//! `platform.start` record (the INVOKE event does not carry it). It is validated before it
//! enters an ARN pattern or the local allowlist ([`TenantId::parse`]); until it is known,
//! reads wait for it (bounded). A second, different tenant id in the same environment breaks
//! the mode's invariant: [`Tenancy::observe`] says so, nothing is served any more, and the
//! extension wipes everything and reports `exit/error`.
//! See <https://docs.aws.amazon.com/lambda/latest/dg/tenant-isolation.html>.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::allowlist::Allowlist;
use crate::secrets::FetchError;

/// The placeholder an allowlist entry may contain.
pub const PLACEHOLDER: &str = "{tenant}";
/// Longest tenant id accepted: the allowlist's names and the session policy must stay within
/// AWS's limits with it substituted.
pub const MAX_TENANT_ID_CHARS: usize = 64;

/// A tenant id fit to stand in a secret name and an IAM resource pattern: 1 to 64 of
/// `A-Z a-z 0-9 _ . -`, starting with a letter or digit, without `..`. Nothing that widens a
/// pattern (`*`, `?`), crosses a path (`/`, `..`) or breaks out of an ARN (`:`) passes.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantId(String);

impl TenantId {
    /// Validates `raw`.
    ///
    /// # Errors
    /// What is wrong with it (never echoing it: it is the platform's text, not ours).
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.is_empty() || raw.len() > MAX_TENANT_ID_CHARS {
            return Err("a tenant id is 1 to 64 characters");
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
            return Err("a tenant id uses only A-Z a-z 0-9 _ . -");
        }
        if !raw.as_bytes()[0].is_ascii_alphanumeric() || raw.contains("..") {
            return Err("a tenant id starts with a letter or digit and has no ..");
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TenantId").field(&self.0).finish()
    }
}

/// What the environment knows about its tenant.
#[derive(Debug, Clone)]
enum State {
    /// No `platform.start` with a tenant id yet.
    Unknown,
    /// The allowlist resolved for the tenant.
    Known(Arc<Allowlist>),
    /// The platform sent an id that is not valid: tenant entries are never resolved.
    Refused,
    /// A second tenant appeared: nothing is served.
    Changed,
}

/// What one observed tenant id meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The environment's tenant, seen for the first time.
    First(TenantId),
    /// The same tenant again (every `platform.start` carries it).
    Same,
    /// The first id seen, and not a valid one.
    Refused(&'static str),
    /// Another tenant than the first: the invariant is broken.
    Changed,
}

/// The allowlist as the environment's tenant makes it.
#[derive(Debug)]
pub struct Tenancy {
    template: Arc<Allowlist>,
    scoped: bool,
    state: watch::Sender<State>,
    /// The first raw id seen, valid or not, to tell "the same" from "another".
    first: std::sync::Mutex<Option<String>>,
    /// The environment's tenant, once a valid id was seen first (kept for the report after a
    /// second tenant broke the environment).
    tenant: std::sync::OnceLock<TenantId>,
}

impl Tenancy {
    /// Over the configured allowlist; without `{tenant}` entries it is used as it is.
    pub fn new(template: Allowlist) -> Self {
        let scoped = template.has_tenant_entries();
        Self {
            template: Arc::new(template),
            scoped,
            state: watch::Sender::new(State::Unknown),
            first: std::sync::Mutex::new(None),
            tenant: std::sync::OnceLock::new(),
        }
    }

    /// Whether any entry names `{tenant}`.
    pub fn is_scoped(&self) -> bool {
        self.scoped
    }

    /// The allowlist as configured (with `{tenant}` unresolved), for reports.
    pub fn template(&self) -> &Allowlist {
        &self.template
    }

    /// The allowlist in force now, without waiting: `None` while a tenant-scoped allowlist
    /// has no tenant.
    pub fn current(&self) -> Option<Arc<Allowlist>> {
        if !self.scoped {
            return Some(Arc::clone(&self.template));
        }
        match &*self.state.borrow() {
            State::Known(allowlist) => Some(Arc::clone(allowlist)),
            State::Unknown | State::Refused | State::Changed => None,
        }
    }

    /// The allowlist in force, waiting up to `wait` for the tenant.
    ///
    /// # Errors
    /// [`FetchError::TenantUnknown`] after the wait, [`FetchError::TenantRefused`] or
    /// [`FetchError::TenantChanged`] at once.
    pub async fn allowlist(&self, wait: Duration) -> Result<Arc<Allowlist>, FetchError> {
        if !self.scoped {
            return Ok(Arc::clone(&self.template));
        }
        let mut receiver = self.state.subscribe();
        let settled = tokio::time::timeout(wait, receiver.wait_for(|state| !matches!(state, State::Unknown))).await;
        let state = match settled {
            Ok(Ok(state)) => state.clone(),
            Ok(Err(_)) | Err(_) => return Err(FetchError::TenantUnknown),
        };
        match state {
            State::Known(allowlist) => Ok(allowlist),
            State::Refused => Err(FetchError::TenantRefused),
            State::Changed => Err(FetchError::TenantChanged),
            State::Unknown => Err(FetchError::TenantUnknown),
        }
    }

    /// The environment's tenant, once known (still after a second tenant appeared).
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.get()
    }

    /// Takes in a `tenantId` from a `platform.start` record.
    pub fn observe(&self, raw: &str) -> Observed {
        let mut first = self.first.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match first.as_deref() {
            Some(seen) if seen == raw => return Observed::Same,
            Some(_) => {
                self.state.send_replace(State::Changed);
                return Observed::Changed;
            }
            None => *first = Some(raw.to_owned()),
        }
        drop(first);
        match TenantId::parse(raw) {
            Ok(tenant) => {
                let resolved = Arc::new(self.template.for_tenant(tenant.as_str()));
                let _ = self.tenant.set(tenant.clone());
                self.state.send_replace(State::Known(resolved));
                Observed::First(tenant)
            }
            Err(why) => {
                self.state.send_replace(State::Refused);
                Observed::Refused(why)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoleArn;

    fn tenancy(list: &str) -> Tenancy {
        let role = RoleArn::parse("arn:aws:iam::123456789012:role/r").expect("valid");
        Tenancy::new(Allowlist::parse(list, &role, "us-east-1").expect("valid"))
    }

    #[test]
    fn tenant_ids_that_could_widen_or_escape_a_pattern_are_refused() {
        for valid in ["blue", "tenant-42", "a", "A.b_c-9", &"x".repeat(64)] {
            assert_eq!(TenantId::parse(valid).map(|t| t.as_str().to_owned()), Ok(valid.to_owned()));
        }
        let long = "x".repeat(65);
        let hostile =
            ["", "*", "?", "blue*", "../x", "..", "a..b", "a/b", "/", ".hidden", "-x", "a:b", "a b", "é", &long];
        for raw in hostile {
            assert!(TenantId::parse(raw).is_err(), "{raw:?}");
        }
        assert!(TenantId::parse(&"y".repeat(200)).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_tenant_resolves_the_allowlist_and_a_second_breaks_it() {
        let tenancy = tenancy("db=tenants/{tenant}/db,shared/config");
        assert!(tenancy.is_scoped());
        assert!(tenancy.current().is_none());
        let waited = tenancy.allowlist(Duration::from_millis(50)).await;
        assert!(matches!(waited, Err(FetchError::TenantUnknown)));

        assert_eq!(tenancy.observe("blue"), Observed::First(TenantId("blue".into())));
        assert_eq!(tenancy.observe("blue"), Observed::Same);
        let allowlist = tenancy.allowlist(Duration::from_millis(50)).await.expect("known");
        assert_eq!(allowlist.find("db"), Some(0));
        assert_eq!(allowlist.find("tenants/blue/db"), Some(0));
        assert_eq!(allowlist.find("tenants/red/db"), None);
        assert_eq!(allowlist.find("tenants/{tenant}/db"), None);
        assert_eq!(allowlist.find("shared/config"), Some(1));

        assert_eq!(tenancy.observe("red"), Observed::Changed);
        assert!(tenancy.current().is_none());
        assert_eq!(tenancy.tenant().map(TenantId::as_str), Some("blue"), "the environment's tenant stays on record");
        assert!(matches!(tenancy.allowlist(Duration::ZERO).await, Err(FetchError::TenantChanged)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hostile_first_tenant_resolves_nothing() {
        let tenancy = tenancy("tenants/{tenant}/db");
        assert!(matches!(tenancy.observe("../x"), Observed::Refused(_)));
        assert!(matches!(tenancy.allowlist(Duration::from_secs(5)).await, Err(FetchError::TenantRefused)));
        assert_eq!(tenancy.observe("../x"), Observed::Same);
        assert_eq!(tenancy.observe("blue"), Observed::Changed);
    }

    #[tokio::test(start_paused = true)]
    async fn without_placeholders_the_allowlist_needs_no_tenant() {
        let tenancy = tenancy("app/db");
        assert!(!tenancy.is_scoped());
        assert_eq!(tenancy.allowlist(Duration::ZERO).await.expect("as configured").find("app/db"), Some(0));
    }
}
