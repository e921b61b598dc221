//! A scope: one invocation (or the init phase, or a Managed Instances environment), the unit a
//! session belongs to. A scope starts its session on first use, shares it between concurrent
//! callers, replaces it when its credential window closes (`ss-{env}-{request}-1`, `-2`, …)
//! and drops it when the scope ends: the credentials are wiped once the last in-flight call
//! using them returns, and a scope never hands out a session after it ended.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ledger::SessionLedger;
use crate::domain::error::ReadError;
use crate::session::{Session, SessionFactory};

/// A session is replaced when less than this remains before its policy bound: a call made
/// now could otherwise reach AWS after it.
const RENEW_GUARD: Duration = Duration::from_secs(1);

/// How a scope holds its sessions and its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One session for the scope's life (an invocation, on-demand INIT); with TTL 0, values
    /// are served for as long as it runs.
    Invocation,
    /// Each session serves one fetch (and whatever joined it) and is then dropped, so no
    /// credential waits in memory between fetches (provisioned concurrency's INIT, the Managed
    /// Instances environment); with TTL 0, no value is kept.
    PerFetch,
    /// One of several invocations running at once (Managed Instances through the Runtime API
    /// proxy): one session for its life, and, with TTL 0, no value kept (the cache is shared by
    /// every invocation running).
    Concurrent,
}

/// One invocation (or the init phase): the unit a session belongs to.
pub struct Scope {
    label: String,
    generation: u64,
    end: SystemTime,
    window: Option<Duration>,
    kind: Kind,
    factory: Arc<SessionFactory>,
    session: tokio::sync::Mutex<Slot>,
    /// How many `AssumeRole` attempts have finished: a caller that waited through one shares
    /// its failure instead of starting another (single flight for failures too).
    attempts: AtomicU64,
    ended: AtomicBool,
    ledger: Arc<SessionLedger>,
}

/// The scope's current session and how many it has had.
#[derive(Default)]
struct Slot {
    session: Option<Arc<Session>>,
    sequence: u32,
    renewed_after_denial: bool,
    /// The last attempt's failure, for callers that waited through it.
    failure: Option<ReadError>,
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope").field("label", &self.label).field("generation", &self.generation).finish()
    }
}

impl Scope {
    pub(super) fn new(
        label: &str,
        generation: u64,
        end: SystemTime,
        window: Option<Duration>,
        kind: Kind,
        factory: Arc<SessionFactory>,
        ledger: Arc<SessionLedger>,
    ) -> Self {
        Self {
            label: label.to_owned(),
            generation,
            end,
            window,
            kind,
            factory,
            session: tokio::sync::Mutex::new(Slot::default()),
            attempts: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            ledger,
        }
    }

    /// The request id, or `init`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Increases with every scope; cached values remember the one that fetched them.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the scope has ended.
    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The scope's session, started on first use and replaced when its credential window
    /// closes. Concurrent callers share one `AssumeRole`, and its failure: a caller that waited
    /// while an attempt failed gets that failure at once rather than starting another (so N
    /// callers wait one upstream timeout, not N).
    ///
    /// # Errors
    /// [`ReadError::InvocationEnded`] after the end (also when it came while STS answered),
    /// or the session's own failure.
    pub async fn session(&self) -> Result<Arc<Session>, ReadError> {
        let seen = self.attempts.load(Ordering::Acquire);
        let mut slot = self.session.lock().await;
        if self.has_ended() {
            return Err(ReadError::InvocationEnded);
        }
        if let Some(session) = slot.session.as_ref() {
            if !renewal_due(session.end(), self.end, SystemTime::now()) {
                return Ok(Arc::clone(session));
            }
            // The window closed: AWS refuses these credentials now. Drop them, assume anew.
            self.retire(&mut slot, "window");
        }
        if self.attempts.load(Ordering::Acquire) != seen
            && let Some(failure) = slot.failure.clone()
        {
            return Err(failure);
        }
        self.start_session(&mut slot).await
    }

    /// After AWS refused `refused` (for example a role-wide revocation written by another
    /// environment of this function at its SHUTDOWN): replaces it, once per scope, from the
    /// next whole second on, so the new session's `aws:TokenIssueTime` is after any deny
    /// written in this second. `None` when the renewal was already spent.
    ///
    /// # Errors
    /// As [`Scope::session`].
    pub async fn renew_after_denial(&self, refused: &Arc<Session>) -> Result<Option<Arc<Session>>, ReadError> {
        let mut slot = self.session.lock().await;
        if self.has_ended() {
            return Err(ReadError::InvocationEnded);
        }
        if let Some(current) = slot.session.as_ref()
            && !Arc::ptr_eq(current, refused)
        {
            return Ok(Some(Arc::clone(current)));
        }
        if slot.renewed_after_denial {
            return Ok(None);
        }
        slot.renewed_after_denial = true;
        self.retire(&mut slot, "refused");
        let into_second = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let to_next_second = Duration::from_nanos(u64::from(1_000_000_000 - into_second));
        tokio::time::sleep(to_next_second + Duration::from_millis(5)).await;
        self.start_session(&mut slot).await.map(Some)
    }

    /// Whether each session serves one fetch only.
    pub fn is_per_fetch(&self) -> bool {
        self.kind == Kind::PerFetch
    }

    /// Whether, with TTL 0, values it fetched may be served for as long as it runs (only a
    /// scope that is the one running: not per fetch, not one of several at once).
    pub fn keeps_values_while_running(&self) -> bool {
        self.kind == Kind::Invocation
    }

    /// The instant its sessions' policies end at the latest.
    pub fn ends_at(&self) -> SystemTime {
        self.end
    }

    /// After a fetch with `session`: in a per-fetch scope the session is dropped (its
    /// credentials are wiped once the last concurrent user returns).
    pub async fn release(&self, session: &Arc<Session>) {
        if !self.is_per_fetch() {
            return;
        }
        let mut slot = self.session.lock().await;
        if slot.session.as_ref().is_some_and(|current| Arc::ptr_eq(current, session)) {
            self.retire(&mut slot, "fetch_done");
        }
    }

    /// Ends the scope: no session is handed out any more, and the one it had is dropped.
    /// Returns the ended session's name, if there was one.
    pub async fn end(&self, reason: &'static str) -> Option<String> {
        self.ended.store(true, Ordering::Release);
        let mut slot = self.session.lock().await;
        let name = slot.session.as_ref().map(|s| s.name().to_owned());
        self.retire(&mut slot, reason);
        name
    }

    async fn start_session(&self, slot: &mut Slot) -> Result<Arc<Session>, ReadError> {
        let end = match self.window {
            Some(window) => self.end.min(SystemTime::now() + window),
            None => self.end,
        };
        let started = self.factory.start(&self.label, slot.sequence, end).await.map_err(ReadError::from);
        self.attempts.fetch_add(1, Ordering::AcqRel);
        slot.failure = started.as_ref().err().cloned();
        let session = Arc::new(started?);
        slot.sequence += 1;
        self.ledger.record_started(&session);
        slot.session = Some(Arc::clone(&session));
        if self.has_ended() {
            // The scope ended while STS answered (the next INVOKE, the end of INIT): these
            // credentials serve nothing.
            self.retire(slot, "ended_while_starting");
            return Err(ReadError::InvocationEnded);
        }
        Ok(session)
    }

    fn retire(&self, slot: &mut Slot, reason: &'static str) {
        let Some(session) = slot.session.take() else { return };
        let still_valid_for = session.end().duration_since(SystemTime::now()).unwrap_or_default();
        self.ledger.ended.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            target: "audit",
            event = "session_ended",
            request_id = %self.label,
            session = %session.name(),
            reason,
            in_flight_users = (Arc::strong_count(&session) - 1) as u64,
            policy_refuses_in_ms = still_valid_for.as_millis() as u64,
        );
    }
}

/// Whether a session bound at `session_end`, in a scope that ends at `scope_end`, must be
/// replaced at `now`: only when the credential window (not the scope's own end) bounded it and
/// less than [`RENEW_GUARD`] of it remains (a call made now could reach AWS after the bound).
fn renewal_due(session_end: SystemTime, scope_end: SystemTime, now: SystemTime) -> bool {
    let bounded_by_window = session_end < scope_end;
    bounded_by_window && session_end <= now + RENEW_GUARD
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocation::Start;
    use crate::testing;

    #[tokio::test(start_paused = true)]
    async fn callers_that_waited_through_a_failed_assume_role_share_its_failure() {
        // STS is a closed port: every attempt fails.
        let invocations = testing::invocations(Start::Init(SystemTime::now()), Duration::from_secs(5)).await;
        let scope = invocations.begin("r1", SystemTime::now() + Duration::from_secs(60)).await;
        let started = tokio::time::Instant::now();
        let callers: Vec<_> = (0..5)
            .map(|_| {
                let scope = Arc::clone(&scope);
                tokio::spawn(async move { (scope.session().await.map(|_| ()), tokio::time::Instant::now()) })
            })
            .collect();
        let mut ended = Vec::new();
        for caller in callers {
            let (result, at) = caller.await.expect("joined");
            assert!(matches!(result, Err(ReadError::Session(_))), "{result:?}");
            ended.push(at - started);
        }
        assert_eq!(scope.attempts.load(Ordering::Acquire), 1, "one AssumeRole for the five");
        assert!(ended.iter().all(|at| *at == ended[0]), "all answered together: {ended:?}");
        // A caller that comes after the failure tries again.
        assert!(scope.session().await.is_err());
        assert_eq!(scope.attempts.load(Ordering::Acquire), 2);
    }

    #[test]
    fn a_session_is_renewed_only_when_its_window_closes_before_the_scope_ends() {
        let at = |seconds: u64| UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds);
        // The window (60 s) bounds the session; the scope runs to 300 s.
        assert!(!renewal_due(at(60), at(300), at(30)), "plenty of the window left");
        assert!(!renewal_due(at(60), at(300), at(58)), "two seconds left: still used");
        assert!(renewal_due(at(60), at(300), at(59)), "inside the guard: a call could land after the bound");
        assert!(renewal_due(at(60), at(300), at(70)), "the window has closed");
        // The scope's own end bounds the session: a new one would end no later.
        assert!(!renewal_due(at(300), at(300), at(299)));
        assert!(!renewal_due(at(300), at(300), at(400)));
    }
}
