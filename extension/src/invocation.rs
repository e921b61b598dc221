//! Invocations and the init phase as *scopes*: each owns at most one session, which dies with
//! it.
//!
//! The phase moves `Init(scope) → Active(scope) → Idle → Active(scope) → … → ShuttingDown`.
//! Requests made while `Idle` (a function thread racing its INVOKE) wait, bounded, for the next
//! scope. Ending a scope takes its session out, so the credentials are dropped (wiped) as soon
//! as the last in-flight call using them returns; a scope never hands out a session after it
//! ended, so no credential serves two invocations.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::secrets::FetchError;
use crate::session::{Session, SessionFactory};

/// One invocation (or the init phase): the unit a session belongs to.
pub struct Scope {
    label: String,
    generation: u64,
    end: SystemTime,
    factory: Arc<SessionFactory>,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    ended: AtomicBool,
    counters: Arc<SessionCounters>,
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("label", &self.label)
            .field("generation", &self.generation)
            .finish()
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

    /// The scope's session, started on first use. Concurrent callers share one `AssumeRole`.
    ///
    /// # Errors
    /// [`FetchError::InvocationEnded`] after the end, or the session's own failure.
    pub async fn session(&self) -> Result<Arc<Session>, FetchError> {
        let mut slot = self.session.lock().await;
        if self.has_ended() {
            return Err(FetchError::InvocationEnded);
        }
        if let Some(session) = slot.as_ref() {
            return Ok(Arc::clone(session));
        }
        let session = Arc::new(self.factory.start(&self.label, 0, self.end).await?);
        self.counters.started.fetch_add(1, Ordering::Relaxed);
        *slot = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Ends the scope: no session is handed out any more, and the one it had is dropped.
    /// Returns the ended session's name, if there was one.
    pub async fn end(&self, reason: &'static str) -> Option<String> {
        self.ended.store(true, Ordering::Release);
        let session = self.session.lock().await.take()?;
        let name = session.name().to_owned();
        let still_valid_for = session
            .end()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let users = Arc::strong_count(&session) - 1;
        drop(session);
        self.counters.ended.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            target: "audit",
            event = "session_ended",
            request_id = %self.label,
            session = %name,
            reason,
            in_flight_users = users as u64,
            policy_refuses_in_ms = still_valid_for.as_millis() as u64,
        );
        Some(name)
    }
}

/// Sessions started and ended, for the SHUTDOWN summary.
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// `AssumeRole` calls that succeeded.
    pub started: AtomicU64,
    /// Sessions ended (credentials dropped).
    pub ended: AtomicU64,
}

/// Where the environment is in its life.
#[derive(Debug, Clone)]
pub enum Phase {
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
    counters: Arc<SessionCounters>,
}

impl Lifecycle {
    /// Starts in `Init`, with an init scope that ends at `init_end`.
    pub fn new(factory: Arc<SessionFactory>, init_end: SystemTime, wait_timeout: Duration) -> Self {
        let counters = Arc::new(SessionCounters::default());
        let init = Arc::new(Scope {
            label: "init".into(),
            generation: 0,
            end: init_end,
            factory: Arc::clone(&factory),
            session: tokio::sync::Mutex::new(None),
            ended: AtomicBool::new(false),
            counters: Arc::clone(&counters),
        });
        Self {
            phase: watch::Sender::new(Phase::Init(init)),
            factory,
            generation: AtomicU64::new(0),
            wait_timeout,
            counters,
        }
    }

    /// Session counters.
    pub fn counters(&self) -> &SessionCounters {
        &self.counters
    }

    /// Whether `generation` is the scope running now (for TTL-0 cache entries).
    pub fn is_current_generation(&self, generation: u64) -> bool {
        match &*self.phase.borrow() {
            Phase::Init(scope) | Phase::Active(scope) => {
                scope.generation == generation && !scope.has_ended()
            }
            Phase::Idle | Phase::ShuttingDown => false,
        }
    }

    /// Begins an invocation: ends whatever scope is open (the init scope, or one whose
    /// runtimeDone never came) and opens a new one that ends at `end`.
    pub async fn begin(&self, request_id: &str, end: SystemTime) -> Arc<Scope> {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let scope = Arc::new(Scope {
            label: request_id.to_owned(),
            generation,
            end,
            factory: Arc::clone(&self.factory),
            session: tokio::sync::Mutex::new(None),
            ended: AtomicBool::new(false),
            counters: Arc::clone(&self.counters),
        });
        let previous = self.phase.send_replace(Phase::Active(Arc::clone(&scope)));
        if let Phase::Init(old) | Phase::Active(old) = previous {
            let reason = if old.generation == 0 {
                "first_invocation"
            } else {
                "next_invocation"
            };
            old.end(reason).await;
        }
        scope
    }

    /// Ends the init scope when the runtime's INIT is done (`platform.initRuntimeDone`): the
    /// init session does not wait for the first INVOKE, which with provisioned concurrency may
    /// come hours later. Requests then wait for that INVOKE.
    pub async fn end_init(&self) -> bool {
        let mut init = None;
        self.phase.send_if_modified(|phase| match phase {
            Phase::Init(scope) => {
                init = Some(Arc::clone(scope));
                *phase = Phase::Idle;
                true
            }
            _ => false,
        });
        match init {
            Some(scope) => {
                scope.end("init_done").await;
                true
            }
            None => false,
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
            Phase::Idle | Phase::ShuttingDown => None,
        }
    }

    /// The scope a request should use, waiting (bounded) while `Idle`.
    ///
    /// # Errors
    /// [`FetchError::NoActiveInvocation`] when none begins within the wait timeout,
    /// [`FetchError::ShuttingDown`] during SHUTDOWN.
    pub async fn current_scope(&self) -> Result<Arc<Scope>, FetchError> {
        let mut receiver = self.phase.subscribe();
        let wait = receiver.wait_for(|phase| !matches!(phase, Phase::Idle));
        let phase = match tokio::time::timeout(self.wait_timeout, wait).await {
            Ok(Ok(phase)) => phase.clone(),
            Ok(Err(_closed)) => return Err(FetchError::ShuttingDown),
            Err(_elapsed) => return Err(FetchError::NoActiveInvocation),
        };
        match phase {
            Phase::Init(scope) | Phase::Active(scope) => Ok(scope),
            Phase::Idle | Phase::ShuttingDown => Err(FetchError::ShuttingDown),
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
