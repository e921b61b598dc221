//! Invocations and the init phase as *scopes* ([`scope::Scope`]): each owns at most one live
//! session at a time, which dies with it. [`Invocations`] holds the phase every request reads
//! and only the lifecycle loop ([`crate::lifecycle`]) moves.
//!
//! The phase moves `Init(scope) → Idle → Active(scope) → Idle → … → ShuttingDown` (SnapStart:
//! `Snapshotting → AwaitingRestore → Idle → …`, nothing served or loaded before restore;
//! Managed Instances: one `Active` environment scope for the environment's whole life). Requests
//! made while `Idle` (a function thread racing its INVOKE) wait, bounded, for the next scope.
//! Ending a scope takes its session out, so the credentials are dropped (wiped) as soon as the
//! last in-flight call using them returns; a scope never hands out a session after it ended,
//! so no credential serves two invocations.
//!
//! The [`ledger::SessionLedger`] remembers every session's name and policy bound (never a
//! credential), for the revocation report at SHUTDOWN. On Managed Instances, the invocations
//! the Runtime API proxy makes known run beside the environment scope, each in a scope of its
//! own ([`concurrent::Concurrent`]).

pub mod concurrent;
pub mod ledger;
pub mod scope;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;

use self::concurrent::Concurrent;
use self::ledger::SessionLedger;
use self::scope::{Kind, Scope};
use crate::domain::error::ReadError;
use crate::domain::request_id::RequestId;
use crate::session::SessionFactory;

/// Where the environment is in its life.
#[derive(Debug, Clone)]
pub enum Phase {
    /// A SnapStart INIT: the memory is about to be snapshotted, so nothing is fetched.
    Snapshotting,
    /// A SnapStart INIT has ended and the snapshot is not restored yet: requests wait (bounded)
    /// for the restore, as they wait for an INVOKE while `Idle`, and nothing is loaded.
    AwaitingRestore,
    /// The function's INIT: requests use the init scope.
    Init(Arc<Scope>),
    /// An invocation is running.
    Active(Arc<Scope>),
    /// Between invocations: requests wait for the next one.
    Idle,
    /// SHUTDOWN: nothing more is served from AWS.
    ShuttingDown,
}

/// A phase's label: its scope's request id (or `init`), or a word for a phase without one.
#[derive(Debug, Clone)]
pub enum Label {
    /// The scope's own label.
    Scope(Arc<Scope>),
    /// `init`, `idle` or `shutdown`.
    Word(&'static str),
}

impl Label {
    /// The label's text.
    pub fn as_str(&self) -> &str {
        match self {
            Label::Scope(scope) => scope.label(),
            Label::Word(word) => word,
        }
    }
}

/// The phase, shared by the lifecycle loop (the only writer) and the request handlers. A
/// `watch` channel: readers see the newest phase without a lock and can wait for a change.
#[derive(Debug)]
pub struct Invocations {
    phase: watch::Sender<Phase>,
    factory: Arc<SessionFactory>,
    generation: AtomicU64,
    wait_timeout: Duration,
    window: Option<Duration>,
    ledger: Arc<SessionLedger>,
    concurrent: Concurrent,
}

/// How the invocations start, by Lambda's initialisation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `Init` with an init scope ending at the given instant (on-demand).
    Init(SystemTime),
    /// `Init` with an init scope whose sessions last one fetch each (provisioned concurrency:
    /// INIT may be followed by hours of idle, possibly frozen before telemetry ends the scope).
    InitPerFetch(SystemTime),
    /// `Snapshotting` (SnapStart): nothing is served until the first INVOKE after restore.
    Snapshotting,
    /// One `Active` scope for the environment's life whose sessions last one fetch each, each
    /// bounded by `window` (Managed Instances: no INVOKE events, concurrent invocations).
    Environment(Duration),
}

/// The instant used as "no scope end" for the Managed Instances environment scope: session
/// policies are bounded by the window, never by this.
const FAR_FUTURE: Duration = Duration::from_secs(4_102_444_800); // 2100-01-01

impl Invocations {
    /// Starts as `start` says. Sessions last at most `window` after issue (`None`: until
    /// their scope's end).
    pub fn new(factory: Arc<SessionFactory>, start: Start, wait_timeout: Duration, window: Option<Duration>) -> Self {
        let ledger = Arc::new(SessionLedger::default());
        let invocations = Self {
            phase: watch::Sender::new(Phase::Idle),
            factory,
            generation: AtomicU64::new(0),
            wait_timeout,
            window,
            ledger,
            concurrent: Concurrent::default(),
        };
        let phase = match start {
            Start::Init(end) => Phase::Init(invocations.scope("init", 0, end, Kind::Invocation, window)),
            Start::InitPerFetch(end) => Phase::Init(invocations.scope("init", 0, end, Kind::PerFetch, window)),
            Start::Snapshotting => Phase::Snapshotting,
            Start::Environment(bound) => {
                Phase::Active(invocations.scope("environment", 0, UNIX_EPOCH + FAR_FUTURE, Kind::PerFetch, Some(bound)))
            }
        };
        invocations.phase.send_replace(phase);
        invocations
    }

    fn scope(&self, label: &str, generation: u64, end: SystemTime, kind: Kind, window: Option<Duration>) -> Arc<Scope> {
        Arc::new(Scope::new(label, generation, end, window, kind, Arc::clone(&self.factory), Arc::clone(&self.ledger)))
    }

    /// Every session issued in this environment.
    pub fn ledger(&self) -> &SessionLedger {
        &self.ledger
    }

    /// Whether `generation` is the scope running now (for TTL-0 cache entries).
    pub fn is_current_generation(&self, generation: u64) -> bool {
        match &*self.phase.borrow() {
            Phase::Init(scope) | Phase::Active(scope) => scope.generation() == generation && !scope.has_ended(),
            Phase::Snapshotting | Phase::AwaitingRestore | Phase::Idle | Phase::ShuttingDown => false,
        }
    }

    /// Begins an invocation: ends whatever scope is open (the init scope, or one whose
    /// runtimeDone never came) and opens a new one that ends at `end`.
    pub async fn begin(&self, request_id: &str, end: SystemTime) -> Arc<Scope> {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let scope = self.scope(request_id, generation, end, Kind::Invocation, self.window);
        let previous = self.phase.send_replace(Phase::Active(Arc::clone(&scope)));
        if let Phase::Init(old) | Phase::Active(old) = previous {
            let reason = if old.generation() == 0 { "first_invocation" } else { "next_invocation" };
            old.end(reason).await;
        }
        scope
    }

    /// Ends the init scope when the runtime's INIT is done (`platform.initRuntimeDone`): the
    /// init session does not wait for the first INVOKE, which with provisioned concurrency may
    /// come hours later. Requests then wait for that INVOKE.
    /// Returns whether INIT was still open (a SnapStart INIT has no scope to end).
    pub async fn end_init(&self) -> bool {
        let mut init = None;
        let mut was_open = false;
        self.phase.send_if_modified(|phase| match phase {
            Phase::Init(scope) => {
                init = Some(Arc::clone(scope));
                was_open = true;
                *phase = Phase::Idle;
                true
            }
            Phase::Snapshotting => {
                was_open = true;
                *phase = Phase::AwaitingRestore;
                true
            }
            _ => false,
        });
        if let Some(scope) = init {
            scope.end("init_done").await;
        }
        was_open
    }

    /// A SnapStart restore: from `Snapshotting` or `AwaitingRestore` to `Idle` (requests then
    /// wait for the first INVOKE as usual).
    pub fn restored(&self) {
        self.phase.send_if_modified(|phase| match phase {
            Phase::Snapshotting | Phase::AwaitingRestore => {
                *phase = Phase::Idle;
                true
            }
            _ => false,
        });
    }

    /// Waits (until `deadline`) until the environment is past its SnapStart snapshot, so that
    /// credentials may be loaded; at once outside SnapStart.
    ///
    /// # Errors
    /// [`ReadError::SnapStartInit`] during the INIT itself, [`ReadError::NoActiveInvocation`]
    /// when no restore comes within the wait timeout.
    pub async fn wait_past_snapshot(&self, deadline: Instant) -> Result<(), ReadError> {
        let mut receiver = self.phase.subscribe();
        let wait = receiver.wait_for(|phase| !matches!(phase, Phase::AwaitingRestore));
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(phase)) if matches!(*phase, Phase::Snapshotting) => Err(ReadError::SnapStartInit),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_closed)) => Err(ReadError::ShuttingDown),
            Err(_elapsed) => Err(ReadError::NoActiveInvocation),
        }
    }

    /// Ends the invocation `scope` (runtimeDone or its deadline) and goes `Idle`.
    pub async fn finish(&self, scope: &Arc<Scope>, reason: &'static str) {
        self.phase.send_if_modified(|phase| match phase {
            Phase::Active(current) if Arc::ptr_eq(current, scope) => {
                *phase = Phase::Idle;
                true
            }
            _ => false,
        });
        scope.end(reason).await;
    }

    /// Enters `ShuttingDown`, ending any open scope (and every concurrent one). Returns the
    /// session it ended, if any (the first, when several were open).
    pub async fn shut_down(&self) -> Option<String> {
        let previous = self.phase.send_replace(Phase::ShuttingDown);
        let mut ended = match previous {
            Phase::Init(scope) | Phase::Active(scope) => scope.end("shutdown").await,
            Phase::Snapshotting | Phase::AwaitingRestore | Phase::Idle | Phase::ShuttingDown => None,
        };
        for scope in self.concurrent.drain() {
            let name = scope.end("shutdown").await;
            ended = ended.or(name);
        }
        ended
    }

    /// Begins invocation `id` beside the others running (Managed Instances through the Runtime
    /// API proxy), its sessions bounded by `end`, its scope ended at `deadline` at the latest.
    /// `None` when it is already running or too many are.
    pub fn begin_concurrent(&self, id: &RequestId, deadline: SystemTime, end: SystemTime) -> Option<Arc<Scope>> {
        if matches!(*self.phase.borrow(), Phase::ShuttingDown) {
            return None;
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let scope = self.scope(id.as_str(), generation, end, Kind::Concurrent, self.window);
        self.concurrent.insert(id.clone(), Arc::clone(&scope), deadline).then_some(scope)
    }

    /// Ends concurrent invocation `id` (`reason`: how). Returns whether it was running.
    pub async fn finish_concurrent(&self, id: &RequestId, reason: &'static str) -> bool {
        match self.concurrent.remove(id) {
            Some(scope) => {
                scope.end(reason).await;
                true
            }
            None => false,
        }
    }

    /// Ends every concurrent invocation whose deadline has passed. Returns how many.
    pub async fn expire_concurrent(&self) -> usize {
        let overdue = self.concurrent.overdue(SystemTime::now());
        let mut ended = 0;
        for id in overdue {
            ended += usize::from(self.finish_concurrent(&id, "deadline").await);
        }
        ended
    }

    /// The invocations running at once.
    pub fn concurrent(&self) -> &Concurrent {
        &self.concurrent
    }

    /// The scope a request should use, waiting (bounded) while `Idle`.
    ///
    /// # Errors
    /// [`ReadError::NoActiveInvocation`] when none begins within the wait timeout,
    /// [`ReadError::SnapStartInit`] during a SnapStart INIT, [`ReadError::ShuttingDown`]
    /// during SHUTDOWN.
    pub async fn current_scope(&self) -> Result<Arc<Scope>, ReadError> {
        self.current_scope_until(Instant::now() + self.wait_timeout).await
    }

    /// The scope a request should use, waiting until `deadline` while `Idle`: a request's
    /// waits share one deadline, so it is bounded by one wait timeout in all.
    ///
    /// # Errors
    /// As [`Invocations::current_scope`].
    pub async fn current_scope_until(&self, deadline: Instant) -> Result<Arc<Scope>, ReadError> {
        let mut receiver = self.phase.subscribe();
        let wait = receiver.wait_for(|phase| !matches!(phase, Phase::Idle | Phase::AwaitingRestore));
        let phase = match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(phase)) => phase.clone(),
            Ok(Err(_closed)) => return Err(ReadError::ShuttingDown),
            Err(_elapsed) => return Err(ReadError::NoActiveInvocation),
        };
        match phase {
            Phase::Init(scope) | Phase::Active(scope) => Ok(scope),
            Phase::Snapshotting => Err(ReadError::SnapStartInit),
            Phase::AwaitingRestore | Phase::Idle | Phase::ShuttingDown => Err(ReadError::ShuttingDown),
        }
    }

    /// The label (request id, `init`, `idle`, `shutdown`) to attribute a request to. While
    /// `Idle`, waits up to `settle` for the next INVOKE: function code runs only inside an
    /// invocation, so a request seen while idle almost always means its INVOKE event is on
    /// its way to us.
    pub async fn label_settled(&self, settle: Duration) -> String {
        let mut receiver = self.phase.subscribe();
        let settled = receiver.wait_for(|phase| !matches!(phase, Phase::Idle | Phase::AwaitingRestore));
        let _ = tokio::time::timeout(settle, settled).await;
        self.label()
    }

    /// The label (request id, `init`, `idle`, `shutdown`) of the phase now.
    pub fn label(&self) -> String {
        self.current_label().as_str().to_owned()
    }

    /// [`Invocations::label`] without copying it (every audit line of a cached read names it:
    /// the copy was an allocation, a copy and a wiped free per line).
    pub fn current_label(&self) -> Label {
        match &*self.phase.borrow() {
            Phase::Init(scope) | Phase::Active(scope) => Label::Scope(Arc::clone(scope)),
            Phase::Snapshotting => Label::Word("init"),
            Phase::AwaitingRestore | Phase::Idle => Label::Word("idle"),
            Phase::ShuttingDown => Label::Word("shutdown"),
        }
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    /// The wait bound for requests.
    pub fn wait_timeout(&self) -> Duration {
        self.wait_timeout
    }
}

#[cfg(test)]
mod tests;
