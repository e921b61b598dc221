//! Invocations and the init phase as *scopes*: each owns at most one live session at a time,
//! which dies with it.
//!
//! The phase moves `Init(scope) → Idle → Active(scope) → Idle → … → ShuttingDown` (SnapStart:
//! `Snapshotting → AwaitingRestore → Idle → …`, nothing served or loaded before restore;
//! Managed Instances: one `Active` environment scope for the environment's whole life). Requests
//! made while `Idle` (a function thread racing its INVOKE) wait, bounded, for the next scope.
//! Ending a scope takes its session out, so the credentials are dropped (wiped) as soon as the
//! last in-flight call using them returns; a scope never hands out a session after it ended,
//! so no credential serves two invocations. Within a scope, a session whose credential window
//! has closed is replaced by a fresh one (`ss-{env}-{request}-1`, `-2`, …).
//!
//! The [`SessionLedger`] remembers every session's name and policy bound (never a credential),
//! for the revocation report at SHUTDOWN.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::secrets::FetchError;
use crate::session::{Session, SessionFactory};

/// A session is replaced when less than this remains before its policy bound: a call made
/// now could otherwise reach AWS after it.
const RENEW_GUARD: Duration = Duration::from_secs(1);

/// One invocation (or the init phase): the unit a session belongs to.
pub struct Scope {
    label: String,
    generation: u64,
    end: SystemTime,
    window: Option<Duration>,
    /// Each session serves one fetch (and whatever joined it) and is then dropped, so no
    /// credential waits in memory between fetches (provisioned concurrency's INIT, Managed
    /// Instances).
    per_fetch: bool,
    factory: Arc<SessionFactory>,
    session: tokio::sync::Mutex<Slot>,
    ended: AtomicBool,
    ledger: Arc<SessionLedger>,
}

/// The scope's current session and how many it has had.
#[derive(Default)]
struct Slot {
    session: Option<Arc<Session>>,
    sequence: u32,
    renewed_after_denial: bool,
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope").field("label", &self.label).field("generation", &self.generation).finish()
    }
}

impl Scope {
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
    /// closes. Concurrent callers share one `AssumeRole`.
    ///
    /// # Errors
    /// [`FetchError::InvocationEnded`] after the end, or the session's own failure.
    pub async fn session(&self) -> Result<Arc<Session>, FetchError> {
        let mut slot = self.session.lock().await;
        if self.has_ended() {
            return Err(FetchError::InvocationEnded);
        }
        if let Some(session) = slot.session.as_ref() {
            // Renewing helps only when the window, not the scope's own end, bounded it.
            let bounded_by_window = session.end() < self.end;
            if !bounded_by_window || session.end() > SystemTime::now() + RENEW_GUARD {
                return Ok(Arc::clone(session));
            }
            // The window closed: AWS refuses these credentials now. Drop them, assume anew.
            self.retire(&mut slot, "window");
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
    pub async fn renew_after_denial(&self, refused: &Arc<Session>) -> Result<Option<Arc<Session>>, FetchError> {
        let mut slot = self.session.lock().await;
        if self.has_ended() {
            return Err(FetchError::InvocationEnded);
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
        self.per_fetch
    }

    /// After a fetch with `session`: in a per-fetch scope the session is dropped (its
    /// credentials are wiped once the last concurrent user returns).
    pub async fn release(&self, session: &Arc<Session>) {
        if !self.per_fetch {
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

    async fn start_session(&self, slot: &mut Slot) -> Result<Arc<Session>, FetchError> {
        let end = match self.window {
            Some(window) => self.end.min(SystemTime::now() + window),
            None => self.end,
        };
        let session = Arc::new(self.factory.start(&self.label, slot.sequence, end).await?);
        slot.sequence += 1;
        self.ledger.record_started(&session);
        slot.session = Some(Arc::clone(&session));
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

/// Every session this environment was issued, for the revocation report: counts, and those
/// whose policy bound may still be ahead (the ones AWS would still honour). Names and bounds
/// only, never a credential.
#[derive(Debug, Default)]
pub struct SessionLedger {
    /// `AssumeRole` calls that succeeded.
    pub started: AtomicU64,
    /// Sessions ended in memory (credentials dropped).
    pub ended: AtomicU64,
    expired: AtomicU64,
    live: Mutex<Vec<IssuedSession>>,
    /// The scoped role's unique id (`AROA…`), from the first AssumeRole answer.
    pub role_id: OnceLock<String>,
}

/// A session as the ledger remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSession {
    /// `RoleSessionName`.
    pub name: String,
    /// The session policy's `aws:CurrentTime` bound.
    pub end: SystemTime,
}

impl SessionLedger {
    fn record_started(&self, session: &Session) {
        self.started.fetch_add(1, Ordering::Relaxed);
        if let Some(role_id) = session.role_id() {
            let _ = self.role_id.set(role_id.to_owned());
        }
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        self.prune(&mut live, SystemTime::now());
        live.push(IssuedSession { name: session.name().to_owned(), end: session.end() });
    }

    fn prune(&self, live: &mut Vec<IssuedSession>, now: SystemTime) {
        let before = live.len();
        live.retain(|session| session.end > now);
        self.expired.fetch_add((before - live.len()) as u64, Ordering::Relaxed);
    }

    /// The sessions AWS could still honour at `now`, and how many have ended by policy.
    pub fn at(&self, now: SystemTime) -> (Vec<IssuedSession>, u64) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        self.prune(&mut live, now);
        (live.clone(), self.expired.load(Ordering::Relaxed))
    }
}

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

/// The phase, shared by the lifecycle loop (the only writer) and the request handlers.
#[derive(Debug)]
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
    factory: Arc<SessionFactory>,
    generation: AtomicU64,
    wait_timeout: Duration,
    window: Option<Duration>,
    ledger: Arc<SessionLedger>,
}

/// How the lifecycle starts, by Lambda's initialisation type.
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

impl Lifecycle {
    /// Starts as `start` says. Sessions last at most `window` after issue (`None`: until
    /// their scope's end).
    pub fn new(factory: Arc<SessionFactory>, start: Start, wait_timeout: Duration, window: Option<Duration>) -> Self {
        let ledger = Arc::new(SessionLedger::default());
        let lifecycle = Self {
            phase: watch::Sender::new(Phase::Idle),
            factory,
            generation: AtomicU64::new(0),
            wait_timeout,
            window,
            ledger,
        };
        let phase = match start {
            Start::Init(end) => Phase::Init(lifecycle.scope("init", 0, end, false, window)),
            Start::InitPerFetch(end) => Phase::Init(lifecycle.scope("init", 0, end, true, window)),
            Start::Snapshotting => Phase::Snapshotting,
            Start::Environment(bound) => {
                Phase::Active(lifecycle.scope("environment", 0, UNIX_EPOCH + FAR_FUTURE, true, Some(bound)))
            }
        };
        lifecycle.phase.send_replace(phase);
        lifecycle
    }

    fn scope(
        &self,
        label: &str,
        generation: u64,
        end: SystemTime,
        per_fetch: bool,
        window: Option<Duration>,
    ) -> Arc<Scope> {
        Arc::new(Scope {
            label: label.to_owned(),
            generation,
            end,
            window,
            per_fetch,
            factory: Arc::clone(&self.factory),
            session: tokio::sync::Mutex::new(Slot::default()),
            ended: AtomicBool::new(false),
            ledger: Arc::clone(&self.ledger),
        })
    }

    /// Every session issued in this environment.
    pub fn ledger(&self) -> &SessionLedger {
        &self.ledger
    }

    /// Whether `generation` is the scope running now (for TTL-0 cache entries).
    pub fn is_current_generation(&self, generation: u64) -> bool {
        match &*self.phase.borrow() {
            Phase::Init(scope) | Phase::Active(scope) => scope.generation == generation && !scope.has_ended(),
            Phase::Snapshotting | Phase::AwaitingRestore | Phase::Idle | Phase::ShuttingDown => false,
        }
    }

    /// Begins an invocation: ends whatever scope is open (the init scope, or one whose
    /// runtimeDone never came) and opens a new one that ends at `end`.
    pub async fn begin(&self, request_id: &str, end: SystemTime) -> Arc<Scope> {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let scope = self.scope(request_id, generation, end, false, self.window);
        let previous = self.phase.send_replace(Phase::Active(Arc::clone(&scope)));
        if let Phase::Init(old) | Phase::Active(old) = previous {
            let reason = if old.generation == 0 { "first_invocation" } else { "next_invocation" };
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

    /// Waits (bounded) until the environment is past its SnapStart snapshot, so that
    /// credentials may be loaded; at once outside SnapStart.
    ///
    /// # Errors
    /// [`FetchError::SnapStartInit`] during the INIT itself, [`FetchError::NoActiveInvocation`]
    /// when no restore comes within the wait timeout.
    pub async fn wait_past_snapshot(&self) -> Result<(), FetchError> {
        let mut receiver = self.phase.subscribe();
        let wait = receiver.wait_for(|phase| !matches!(phase, Phase::AwaitingRestore));
        match tokio::time::timeout(self.wait_timeout, wait).await {
            Ok(Ok(phase)) if matches!(*phase, Phase::Snapshotting) => Err(FetchError::SnapStartInit),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_closed)) => Err(FetchError::ShuttingDown),
            Err(_elapsed) => Err(FetchError::NoActiveInvocation),
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

    /// Enters `ShuttingDown`, ending any open scope. Returns the session it ended, if any.
    pub async fn shut_down(&self) -> Option<String> {
        let previous = self.phase.send_replace(Phase::ShuttingDown);
        match previous {
            Phase::Init(scope) | Phase::Active(scope) => scope.end("shutdown").await,
            Phase::Snapshotting | Phase::AwaitingRestore | Phase::Idle | Phase::ShuttingDown => None,
        }
    }

    /// The scope a request should use, waiting (bounded) while `Idle`.
    ///
    /// # Errors
    /// [`FetchError::NoActiveInvocation`] when none begins within the wait timeout,
    /// [`FetchError::SnapStartInit`] during a SnapStart INIT, [`FetchError::ShuttingDown`]
    /// during SHUTDOWN.
    pub async fn current_scope(&self) -> Result<Arc<Scope>, FetchError> {
        let mut receiver = self.phase.subscribe();
        let wait = receiver.wait_for(|phase| !matches!(phase, Phase::Idle | Phase::AwaitingRestore));
        let phase = match tokio::time::timeout(self.wait_timeout, wait).await {
            Ok(Ok(phase)) => phase.clone(),
            Ok(Err(_closed)) => return Err(FetchError::ShuttingDown),
            Err(_elapsed) => return Err(FetchError::NoActiveInvocation),
        };
        match phase {
            Phase::Init(scope) | Phase::Active(scope) => Ok(scope),
            Phase::Snapshotting => Err(FetchError::SnapStartInit),
            Phase::AwaitingRestore | Phase::Idle | Phase::ShuttingDown => Err(FetchError::ShuttingDown),
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
        match &*receiver.borrow() {
            Phase::Init(scope) | Phase::Active(scope) => scope.label().to_owned(),
            Phase::Snapshotting => "init".to_owned(),
            Phase::AwaitingRestore | Phase::Idle => "idle".to_owned(),
            Phase::ShuttingDown => "shutdown".to_owned(),
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
