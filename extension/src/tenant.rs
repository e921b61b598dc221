//! Tenant isolation mode: one execution environment serves one tenant, and allowlist entries
//! written with `{tenant}` (`tenants/{tenant}/db`) reach that tenant's secrets only.
//!
//! The tenant id comes from the platform itself: the `tenantId` of the first telemetry
//! `platform.start` record (the INVOKE event does not carry it). It is validated before it
//! enters an ARN pattern or the local allowlist ([`TenantId::parse`]); until it is known,
//! reads wait for it (bounded). A second, different tenant id in the same environment breaks
//! the mode's invariant: [`Tenancy::observe`] says so, nothing is served any more, and the
//! extension wipes everything and reports `exit/error`. Because that record arrives through
//! the Telemetry API (buffered, ≥ 25 ms), each invocation's reads also wait for the
//! invocation's own `platform.start` ([`Tenancy::wait_confirmed`]): nothing is served to an
//! invocation before the platform has named its tenant as this environment's.
//! See <https://docs.aws.amazon.com/lambda/latest/dg/tenant-isolation.html>.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::allowlist::Allowlist;
use crate::domain::error::ReadError;
use crate::domain::tenant::TenantId;

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
    /// Request ids whose `platform.start` named this environment's tenant (the newest).
    confirmed: std::sync::Mutex<std::collections::VecDeque<String>>,
    /// Bumped on every observation, to wake [`Tenancy::wait_confirmed`].
    observed: watch::Sender<u64>,
}

/// How many confirmed request ids are remembered.
const CONFIRMED: usize = 64;

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
            confirmed: std::sync::Mutex::default(),
            observed: watch::Sender::new(0),
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
    /// [`ReadError::TenantUnknown`] after the wait, [`ReadError::TenantRefused`] or
    /// [`ReadError::TenantChanged`] at once.
    pub async fn allowlist(&self, wait: Duration) -> Result<Arc<Allowlist>, ReadError> {
        if !self.scoped {
            return Ok(Arc::clone(&self.template));
        }
        let mut receiver = self.state.subscribe();
        let settled = tokio::time::timeout(wait, receiver.wait_for(|state| !matches!(state, State::Unknown))).await;
        let state = match settled {
            Ok(Ok(state)) => state.clone(),
            Ok(Err(_)) | Err(_) => return Err(ReadError::TenantUnknown),
        };
        match state {
            State::Known(allowlist) => Ok(allowlist),
            State::Refused => Err(ReadError::TenantRefused),
            State::Changed => Err(ReadError::TenantChanged),
            State::Unknown => Err(ReadError::TenantUnknown),
        }
    }

    /// The environment's tenant, once known (still after a second tenant appeared).
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.get()
    }

    /// Waits (bounded) until the `platform.start` of invocation `request_id` has named this
    /// environment's tenant.
    ///
    /// # Errors
    /// [`ReadError::TenantUnknown`] after the wait, [`ReadError::TenantRefused`] or
    /// [`ReadError::TenantChanged`] as soon as that is the state.
    pub async fn wait_confirmed(&self, request_id: &str, wait: Duration) -> Result<(), ReadError> {
        let mut receiver = self.observed.subscribe();
        let confirmed = async {
            loop {
                let settled = match &*self.state.borrow() {
                    State::Refused => Some(ReadError::TenantRefused),
                    State::Changed => Some(ReadError::TenantChanged),
                    State::Unknown | State::Known(_) => None,
                };
                if let Some(error) = settled {
                    return Err(error);
                }
                let seen = {
                    let confirmed = self.confirmed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    confirmed.iter().any(|id| id == request_id)
                };
                if seen {
                    return Ok(());
                }
                if receiver.changed().await.is_err() {
                    return Err(ReadError::TenantUnknown);
                }
            }
        };
        tokio::time::timeout(wait, confirmed).await.unwrap_or(Err(ReadError::TenantUnknown))
    }

    /// Takes in the `tenantId` of invocation `request_id`'s `platform.start` record.
    pub fn observe(&self, raw: &str, request_id: Option<&str>) -> Observed {
        let observed = self.classify(raw);
        if let (Observed::First(_) | Observed::Same, Some(request_id)) = (&observed, request_id) {
            let mut confirmed = self.confirmed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if confirmed.len() == CONFIRMED {
                confirmed.pop_front();
            }
            confirmed.push_back(request_id.to_owned());
        }
        self.observed.send_modify(|count| *count += 1);
        observed
    }

    fn classify(&self, raw: &str) -> Observed {
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
    use crate::domain::arn::RoleArn;

    fn tenancy(list: &str) -> Tenancy {
        let role = RoleArn::parse("arn:aws:iam::123456789012:role/r").expect("valid");
        Tenancy::new(Allowlist::parse(list, &role, "us-east-1").expect("valid"))
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_tenant_resolves_the_allowlist_and_a_second_breaks_it() {
        let tenancy = tenancy("db=tenants/{tenant}/db,shared/config");
        assert!(tenancy.is_scoped());
        assert!(tenancy.current().is_none());
        let waited = tenancy.allowlist(Duration::from_millis(50)).await;
        assert!(matches!(waited, Err(ReadError::TenantUnknown)));

        assert_eq!(tenancy.observe("blue", Some("r1")), Observed::First(TenantId::parse("blue").expect("valid")));
        assert_eq!(tenancy.observe("blue", None), Observed::Same);
        tenancy.wait_confirmed("r1", Duration::ZERO).await.expect("r1 named blue");
        let unconfirmed = tenancy.wait_confirmed("r2", Duration::from_millis(50)).await;
        assert!(matches!(unconfirmed, Err(ReadError::TenantUnknown)), "r2's platform.start has not come");
        let allowlist = tenancy.allowlist(Duration::from_millis(50)).await.expect("known");
        assert_eq!(allowlist.find("db"), Some(0));
        assert_eq!(allowlist.find("tenants/blue/db"), Some(0));
        assert_eq!(allowlist.find("tenants/red/db"), None);
        assert_eq!(allowlist.find("tenants/{tenant}/db"), None);
        assert_eq!(allowlist.find("shared/config"), Some(1));

        let tenancy = Arc::new(tenancy);
        let waiter = {
            let tenancy = Arc::clone(&tenancy);
            tokio::spawn(async move { tenancy.wait_confirmed("r3", Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(tenancy.observe("red", Some("r3")), Observed::Changed);
        let waited = waiter.await.expect("joined");
        assert!(matches!(waited, Err(ReadError::TenantChanged)), "the red invocation is never confirmed");
        assert!(tenancy.current().is_none());
        assert_eq!(tenancy.tenant().map(TenantId::as_str), Some("blue"), "the environment's tenant stays on record");
        assert!(matches!(tenancy.allowlist(Duration::ZERO).await, Err(ReadError::TenantChanged)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hostile_first_tenant_resolves_nothing() {
        let tenancy = tenancy("tenants/{tenant}/db");
        assert!(matches!(tenancy.observe("../x", Some("r1")), Observed::Refused(_)));
        assert!(matches!(tenancy.allowlist(Duration::from_secs(5)).await, Err(ReadError::TenantRefused)));
        assert!(matches!(tenancy.wait_confirmed("r1", Duration::from_secs(5)).await, Err(ReadError::TenantRefused)));
        assert_eq!(tenancy.observe("../x", None), Observed::Same);
        assert_eq!(tenancy.observe("blue", None), Observed::Changed);
    }

    #[tokio::test(start_paused = true)]
    async fn without_placeholders_the_allowlist_needs_no_tenant() {
        let tenancy = tenancy("app/db");
        assert!(!tenancy.is_scoped());
        assert_eq!(tenancy.allowlist(Duration::ZERO).await.expect("as configured").find("app/db"), Some(0));
    }
}
