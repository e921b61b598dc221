//! Tenant isolation mode: one execution environment serves one tenant, and allowlist entries
//! written with `{tenant}` (`tenants/{tenant}/db`) reach that tenant's secrets only.
//!
//! The tenant id comes from the platform itself: the `tenantId` of a `platform.start` telemetry
//! record (the INVOKE event does not carry it), and it counts only for the invocation being
//! served: the lifecycle names that invocation at INVOKE ([`Tenancy::serve`]), a record for it
//! is decided at once, a record that arrived before its INVOKE waits (the newest few, bounded)
//! until the INVOKE names it, and a record for any other id (the init phase's label, an
//! invocation long over, one never served) decides nothing. Ids are bounded before they are
//! kept. The first tenant decided is validated before it enters an ARN pattern or the local
//! allowlist ([`TenantId::parse`], and it must not make two entries answer to one name); until
//! it is known, reads wait for it (bounded). A second, different tenant id breaks the mode's
//! invariant: nothing is served any more, and the `broken` token tells the lifecycle to wipe
//! everything and report `exit/error`. Each invocation's reads also wait for the invocation's
//! own record ([`Tenancy::wait_confirmed`]): nothing is served to an invocation before the
//! platform has named its tenant as this environment's.
//! See <https://docs.aws.amazon.com/lambda/latest/dg/tenant-isolation.html>.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::allowlist::Allowlist;
use crate::domain::error::ReadError;
use crate::domain::request_id::is_request_id;
use crate::domain::tenant::{MAX_TENANT_ID_CHARS, TenantId};

/// How many records naming an invocation not served yet are kept (each id at most 64 bytes).
const EARLY: usize = 4;

/// What the environment knows about its tenant.
#[derive(Debug, Clone)]
enum State {
    /// No tenant decided yet.
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
    /// The first id decided, and not a valid one.
    Refused(&'static str),
    /// Another tenant than the first: the invariant is broken.
    Changed,
    /// For an invocation not being served: kept until its INVOKE names it.
    Pending,
    /// Not a request id: nothing kept.
    Ignored,
}

/// A tenant id as kept: its text (at most 64 bytes), or only the length of a longer one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Candidate {
    Text(String),
    TooLong(usize),
}

impl Candidate {
    fn of(raw: &str) -> Self {
        if raw.len() > MAX_TENANT_ID_CHARS { Candidate::TooLong(raw.len()) } else { Candidate::Text(raw.to_owned()) }
    }

    fn chars(&self) -> usize {
        match self {
            Candidate::Text(text) => text.len(),
            Candidate::TooLong(len) => *len,
        }
    }
}

/// A tenant id header's bytes as text of at most `max` bytes: decoded first (anything not
/// UTF-8 becomes U+FFFD, three bytes each), then cut at the last character boundary within
/// `max`. Cutting the bytes before decoding would let each byte that is not UTF-8 grow to three:
/// 65 such bytes were kept as 195. Only a prefix is decoded, so a huge header costs no more.
pub fn header_text(bytes: &[u8], max: usize) -> String {
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// The invocation being served and what the platform said about it.
#[derive(Debug, Default)]
struct Books {
    /// The first tenant id decided (valid or not), to tell "the same" from "another".
    first: Option<Candidate>,
    /// The invocation being served, as the lifecycle named it.
    serving: Option<String>,
    /// Whether the serving invocation's own record named this environment's tenant.
    confirmed: bool,
    /// Records for invocations not being served (yet), newest last.
    early: VecDeque<(String, Candidate, &'static str)>,
}

/// The allowlist as the environment's tenant makes it.
#[derive(Debug)]
pub struct Tenancy {
    template: Arc<Allowlist>,
    scoped: bool,
    state: watch::Sender<State>,
    /// A std `Mutex`: held to read or update the books, never across an `.await`.
    books: Mutex<Books>,
    /// The environment's tenant, once a valid id was decided first (kept for the report after
    /// a second tenant broke the environment).
    tenant: OnceLock<TenantId>,
    /// Bumped on every decision, to wake [`Tenancy::wait_confirmed`].
    observed: watch::Sender<u64>,
    /// Cancelled when a second tenant appears: the lifecycle then wipes and exits.
    broken: CancellationToken,
}

impl Tenancy {
    /// Over the configured allowlist; without `{tenant}` entries it is used as it is. `broken`
    /// is cancelled if a second tenant appears.
    pub fn new(template: Allowlist, broken: CancellationToken) -> Self {
        let scoped = template.has_tenant_entries();
        Self {
            template: Arc::new(template),
            scoped,
            state: watch::Sender::new(State::Unknown),
            books: Mutex::default(),
            tenant: OnceLock::new(),
            observed: watch::Sender::new(0),
            broken,
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

    /// The allowlist in force, waiting until `deadline` for the tenant.
    ///
    /// # Errors
    /// [`ReadError::TenantUnknown`] after the wait, [`ReadError::TenantRefused`] or
    /// [`ReadError::TenantChanged`] at once.
    pub async fn allowlist(&self, deadline: Instant) -> Result<Arc<Allowlist>, ReadError> {
        if !self.scoped {
            return Ok(Arc::clone(&self.template));
        }
        let mut receiver = self.state.subscribe();
        let settled =
            tokio::time::timeout_at(deadline, receiver.wait_for(|state| !matches!(state, State::Unknown))).await;
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

    /// Waits (until `deadline`) until the platform's record for invocation `request_id` has
    /// named this environment's tenant. Only the invocation being served can be confirmed: any
    /// other label (the init phase's, an invocation that is over) is refused at once.
    ///
    /// # Errors
    /// [`ReadError::TenantUnknown`] after the wait or for another label,
    /// [`ReadError::TenantRefused`] or [`ReadError::TenantChanged`] as soon as that is the state.
    pub async fn wait_confirmed(&self, request_id: &str, deadline: Instant) -> Result<(), ReadError> {
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
                {
                    let books = self.books();
                    if books.serving.as_deref() != Some(request_id) {
                        return Err(ReadError::TenantUnknown);
                    }
                    if books.confirmed {
                        return Ok(());
                    }
                }
                if receiver.changed().await.is_err() {
                    return Err(ReadError::TenantUnknown);
                }
            }
        };
        tokio::time::timeout_at(deadline, confirmed).await.unwrap_or(Err(ReadError::TenantUnknown))
    }

    /// INVOKE: `request_id` is the invocation being served from now on. A record that named it
    /// before is decided now. Returns that decision, if there was one.
    pub fn serve(&self, request_id: &str) -> Option<Observed> {
        let mut books = self.books();
        books.serving = Some(request_id.to_owned());
        books.confirmed = false;
        let early = books.early.iter().position(|(id, ..)| id == request_id)?;
        let (_, candidate, source) = books.early.remove(early)?;
        Some(self.decide(&mut books, request_id, candidate, source))
    }

    /// Takes in the `tenantId` the platform gave for invocation `request_id`: decided at once
    /// for the invocation being served, kept (bounded) for one not served yet.
    pub fn observe(&self, raw: &str, request_id: &str) -> Observed {
        self.observe_from(raw, request_id, "telemetry")
    }

    /// [`Tenancy::observe`] for a tenant named by `source` (`telemetry`, or `runtime_api`: the
    /// `/next` answer's header through the Runtime API proxy), which the audit line names.
    pub fn observe_from(&self, raw: &str, request_id: &str, source: &'static str) -> Observed {
        if !is_request_id(request_id) {
            return Observed::Ignored;
        }
        let candidate = Candidate::of(raw);
        let mut books = self.books();
        if books.serving.as_deref() == Some(request_id) {
            return self.decide(&mut books, request_id, candidate, source);
        }
        books.early.retain(|(id, ..)| id != request_id);
        if books.early.len() == EARLY {
            books.early.pop_front();
        }
        books.early.push_back((request_id.to_owned(), candidate, source));
        Observed::Pending
    }

    /// What the books keep: the number of ids and tenant texts, and the longest in bytes (a
    /// too-long tenant id counts as its length is kept: a number). For the fuzz targets' bounds.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn footprint(&self) -> (usize, usize) {
        let books = self.books();
        let text = |candidate: &Candidate| match candidate {
            Candidate::Text(text) => text.len(),
            Candidate::TooLong(_) => 0,
        };
        let mut lengths: Vec<usize> =
            books.early.iter().flat_map(|(id, candidate, _)| [id.len(), text(candidate)]).collect();
        lengths.extend(books.serving.as_ref().map(String::len));
        lengths.extend(books.first.as_ref().map(text));
        (lengths.len(), lengths.into_iter().max().unwrap_or(0))
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides what `candidate`, named for the serving invocation `request_id`, means; writes
    /// the audit line and breaks the environment on a second tenant.
    fn decide(&self, books: &mut Books, request_id: &str, candidate: Candidate, source: &'static str) -> Observed {
        let chars = candidate.chars() as u64;
        let observed = match &books.first {
            Some(first) if *first == candidate => Observed::Same,
            Some(_) => {
                self.state.send_replace(State::Changed);
                Observed::Changed
            }
            None => {
                books.first = Some(candidate.clone());
                match self.resolve(&candidate) {
                    Ok((tenant, allowlist)) => {
                        let _ = self.tenant.set(tenant.clone());
                        self.state.send_replace(State::Known(Arc::new(allowlist)));
                        Observed::First(tenant)
                    }
                    Err(why) => {
                        self.state.send_replace(State::Refused);
                        Observed::Refused(why)
                    }
                }
            }
        };
        books.confirmed = matches!(observed, Observed::First(_) | Observed::Same);
        self.observed.send_modify(|count| *count += 1);
        match &observed {
            Observed::First(tenant) => {
                tracing::info!(target: "audit", event = "tenant_known", request_id, tenant_id = tenant.as_str(), source);
            }
            Observed::Refused(why) => {
                // The platform's text is not echoed: only its length and what is wrong with it.
                tracing::warn!(target: "audit", event = "tenant_refused", request_id, tenant_id_chars = chars, reason = why, source);
            }
            Observed::Changed => {
                tracing::error!(target: "audit", event = "tenant_changed", request_id, tenant_id_chars = chars, source);
                self.broken.cancel();
            }
            Observed::Same | Observed::Pending | Observed::Ignored => {}
        }
        observed
    }

    /// The tenant and the allowlist it resolves, or why it cannot be this environment's.
    fn resolve(&self, candidate: &Candidate) -> Result<(TenantId, Allowlist), &'static str> {
        let Candidate::Text(raw) = candidate else { return Err("a tenant id is 1 to 64 characters") };
        let tenant = TenantId::parse(raw)?;
        let allowlist = self
            .template
            .for_tenant(tenant.as_str())
            .ok_or("the tenant id would make two allowlist entries answer to one name")?;
        Ok((tenant, allowlist))
    }
}

#[cfg(test)]
mod tests;
