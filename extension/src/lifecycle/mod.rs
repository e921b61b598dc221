//! The lifecycle: one loop that drives every transition of the environment.
//!
//! Everything that moves the phase arrives here as a [`Signal`]: the next Extensions API event
//! (INVOKE, SHUTDOWN), the end of the runtime's INIT and a SnapStart restore (telemetry), the
//! end of the running invocation (its `platform.runtimeDone`, or its deadline), a second tenant
//! (telemetry), SIGTERM. The listeners only report; [`Extension::run`] decides, in one `match`.
//!
//! Per invocation (the default, `runtime-done`): open its scope, prefetch, wait for its end,
//! end the scope (its session is dropped and wiped, TTL-0 values go), and only then ask for
//! the next event, so no credential waits in a frozen environment. With `next-invoke` the loop
//! asks at once and the scope ends at the next INVOKE or at its deadline.
//! At SHUTDOWN: stop accepting, wipe, revoke, report, exit 0, inside Lambda's deadline.

mod init;
mod report;

use std::pin::{Pin, pin};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use tokio::task::AbortHandle;
use tokio::time::Sleep;

pub use self::init::{Extension, InitFailure};
use self::report::{LeastPrivilegeReport, RevocationReport};
use crate::config::{EndOfInvocation, InitializationType};
use crate::extensions_api::{ApiError, Event, Registered, ShutdownReason};
use crate::invocation::scope::Scope;
use crate::logging;
use crate::revocation;
use crate::telemetry::Completions;

/// Time kept back from Lambda's SHUTDOWN deadline, so the summary is written before it.
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(300);
/// SIGTERM's budget: Lambda's SHUTDOWN allows external extensions 2,000 ms, up to 300 ms of
/// which the runtime may take.
const SIGTERM_BUDGET: Duration = Duration::from_millis(1_700);
/// How long the listeners may take to close after a second tenant broke the environment.
const CLOSE_AFTER_TENANT_CHANGE: Duration = Duration::from_millis(500);

/// What moves the environment on.
enum Signal {
    /// The Extensions API's next event (or its failure).
    Event(Result<Event, ApiError>),
    /// `platform.initRuntimeDone`: the runtime's INIT is over.
    InitDone,
    /// `platform.restoreStart`: a SnapStart snapshot was restored.
    RestoreStarted,
    /// The running invocation ended: `runtime_done` or `deadline`.
    InvocationEnded(&'static str),
    /// `next-invoke`: the open scope's deadline passed before another INVOKE came.
    Deadline,
    /// A second tenant appeared in a tenant-isolated environment.
    TenantChanged,
    /// SIGTERM.
    Terminate,
}

/// The invocation the loop is in, if any.
struct Running {
    scope: Arc<Scope>,
    request_id: String,
    began: Instant,
    /// Its deadline: `runtime-done` waits for the end until then; `next-invoke` ends it then.
    deadline: Pin<Box<Sleep>>,
    prefetch: Option<AbortHandle>,
}

impl Extension {
    /// Runs the event loop until SHUTDOWN, SIGTERM, a lost Extensions API or a second tenant.
    /// Returns the process exit code.
    pub async fn run(self, registered: Registered) -> ExitCode {
        let mut terminate = terminate_signal();
        let mode = self.config.initialization_type;
        let waits_for_end = self.config.end_of_invocation == EndOfInvocation::RuntimeDone;
        // Every mode has an INIT; its scope ends when telemetry reports the runtime's INIT done.
        let mut init_open = true;
        let mut restored = mode != InitializationType::SnapStart;
        let mut running: Option<Running> = None;
        // The long poll stays in flight across signals: dropping it would cancel the request.
        let mut next_event = pin!(registered.next_event().fuse());
        loop {
            // runtime-done: no next event is asked for while an invocation runs.
            let asks = !(waits_for_end && running.is_some());
            let signal = tokio::select! {
                biased;
                () = wait_for(&mut terminate) => Signal::Terminate,
                () = self.broken.cancelled() => Signal::TenantChanged,
                signal = running_end(&self.completions, running.as_mut(), waits_for_end), if running.is_some() => signal,
                () = self.completions.wait_init_done(), if init_open => Signal::InitDone,
                () = self.completions.wait_restore_start(), if !restored => Signal::RestoreStarted,
                event = &mut next_event, if asks => Signal::Event(event),
            };
            match signal {
                Signal::Terminate => return self.shut_down("sigterm", SystemTime::now() + SIGTERM_BUDGET).await,
                Signal::TenantChanged => return self.tenant_changed(&registered).await,
                Signal::InitDone => {
                    init_open = false;
                    let wiped = if self.invocations.end_init().await { self.secrets.cache().expire() } else { 0 };
                    tracing::info!(target: "audit", event = "init_ended", secrets_wiped = wiped as u64);
                }
                Signal::RestoreStarted => {
                    restored = true;
                    self.restore("restore_start");
                }
                Signal::InvocationEnded(reason) => {
                    if let Some(invocation) = running.take() {
                        self.end_invocation(invocation, reason).await;
                    }
                    next_event.set(registered.next_event().fuse());
                }
                Signal::Deadline => {
                    if let Some(invocation) = running.take() {
                        self.end_scope(invocation, "deadline").await;
                    }
                }
                Signal::Event(Ok(Event::Invoke { request_id, deadline_ms })) => {
                    if !restored {
                        // The first INVOKE after restore, when no platform.restoreStart came first.
                        restored = true;
                        self.restore("first_invoke");
                    }
                    if let Some(previous) = running.take()
                        && let Some(prefetch) = previous.prefetch
                    {
                        prefetch.abort();
                    }
                    running = Some(self.begin_invocation(request_id, deadline_ms).await);
                    if !waits_for_end {
                        self.emit_metrics(&[]);
                        next_event.set(registered.next_event().fuse());
                    }
                }
                Signal::Event(Ok(Event::Shutdown { shutdown_reason, deadline_ms })) => {
                    let reason = match shutdown_reason {
                        ShutdownReason::Spindown => "spindown",
                        ShutdownReason::Timeout => "timeout",
                        ShutdownReason::Failure => "failure",
                        ShutdownReason::Other => "other",
                    };
                    return self.shut_down(reason, UNIX_EPOCH + Duration::from_millis(deadline_ms)).await;
                }
                Signal::Event(Err(error)) => {
                    tracing::error!(event = "event_loop_failed", cause = %error);
                    let message = format!("The extension lost the Extensions API: {error}.");
                    let _ = registered.exit_error("Extension.EventLoopFailed", &message).await;
                    self.wipe_everything().await;
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    /// INVOKE: opens the invocation's scope (ending any open one), wipes what a previous scope
    /// left with TTL 0, and starts the prefetch.
    async fn begin_invocation(&self, request_id: String, deadline_ms: u64) -> Running {
        let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
        let scope = self.invocations.begin(&request_id, deadline + self.config.deadline_margin).await;
        // Values a previous scope fetched with TTL 0 go now (with next-invoke nothing wiped them).
        self.secrets.cache().expire();
        let prefetch = self.config.prefetch.then(|| {
            let (secrets, scope) = (Arc::clone(&self.secrets), Arc::clone(&scope));
            self.tasks.spawn(async move { secrets.prefetch(&scope).await }).abort_handle()
        });
        let until_deadline = deadline.duration_since(SystemTime::now()).unwrap_or_default();
        Running {
            scope,
            request_id,
            began: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(until_deadline)),
            prefetch,
        }
    }

    /// `runtime-done`: the invocation is over; its scope ends before the next event is asked for.
    async fn end_invocation(&self, invocation: Running, reason: &'static str) {
        let waited = invocation.began.elapsed();
        let ending = Instant::now();
        let request_id = invocation.request_id.clone();
        let wiped = self.end_scope(invocation, reason).await;
        tracing::info!(
            target: "audit",
            event = "invocation_ended",
            request_id = %request_id,
            reason,
            invocation_ms = waited.as_millis() as u64,
            secrets_wiped = wiped as u64,
            end_us = ending.elapsed().as_micros() as u64,
        );
        self.emit_metrics(&[]);
    }

    /// Ends `invocation`'s scope: its prefetch stops, its session is dropped, TTL-0 values go.
    /// Returns how many values were wiped.
    async fn end_scope(&self, invocation: Running, reason: &'static str) -> usize {
        if let Some(prefetch) = invocation.prefetch {
            prefetch.abort();
        }
        self.invocations.finish(&invocation.scope, reason).await;
        self.secrets.cache().expire()
    }

    /// A SnapStart restore: draws the environment id, so environments restored from one
    /// snapshot never share session names, and lets requests wait for the first INVOKE.
    fn restore(&self, trigger: &'static str) {
        let environment_id = self.factory.draw_environment_id();
        self.invocations.restored();
        tracing::info!(target: "audit", event = "restored", environment_id = %environment_id, trigger);
    }

    /// A second tenant in a tenant-isolated environment: wipe everything, report `exit/error`
    /// (Lambda then resets the environment), exit non-zero.
    async fn tenant_changed(&self, registered: &Registered) -> ExitCode {
        let (ended_session, wiped) = self.wipe_everything().await;
        tracing::error!(
            target: "audit",
            event = "tenant_invariant_broken",
            tenant_id = self.tenancy.tenant().map_or("", |t| t.as_str()),
            session_open = ended_session.is_some(),
            secrets_wiped = wiped as u64,
        );
        let reported = registered
            .exit_error(
                "Extension.TenantChanged",
                "A second tenant appeared in this tenant-isolated execution environment; \
                 scoped-secrets wiped every secret and credential and stops.",
            )
            .await;
        if let Err(error) = reported {
            tracing::error!(event = "exit_error_not_delivered", cause = %error);
        }
        self.tasks.close();
        let _ = tokio::time::timeout(CLOSE_AFTER_TENANT_CHANGE, self.tasks.wait()).await;
        self.secrets.cache().wipe_all();
        ExitCode::FAILURE
    }

    /// SHUTDOWN: stop accepting, wipe every secret and credential, revoke, report, exit 0
    /// inside Lambda's deadline.
    async fn shut_down(self, reason: &'static str, deadline: SystemTime) -> ExitCode {
        let began = Instant::now();
        let budget = deadline.duration_since(SystemTime::now()).unwrap_or_default().saturating_sub(SHUTDOWN_MARGIN);
        // 1. Stop accepting; 2. wipe every credential and secret.
        let (ended_session, wiped) = self.wipe_everything().await;
        // 3. Revoke: what AWS would still honour, and (deny mode) refuse it at once.
        let ledger = self.invocations.ledger();
        let (live, expired) = ledger.at(SystemTime::now());
        let deny = match (&self.iam, live.is_empty()) {
            (Some(iam), false) => {
                let (result, took) = revocation::deny_within(
                    budget.saturating_sub(began.elapsed()),
                    iam,
                    &self.config.role_arn,
                    ledger.role_id.get().map(String::as_str),
                    &self.factory.environment_id().unwrap_or_default(),
                    &live,
                    self.config.revocation_policy_budget,
                )
                .await;
                Some((result, took.as_millis() as u64))
            }
            _ => None,
        };
        self.tasks.close();
        let drained = tokio::time::timeout(budget.saturating_sub(began.elapsed()), self.tasks.wait()).await.is_ok();
        // Anything still cached by a request that finished while draining goes too.
        let wiped = wiped + self.secrets.cache().wipe_all();
        // 4. Report: counts and names, never a value.
        let issued = ledger.started.load(Relaxed);
        logging::audit_line(
            "revocation_report",
            &RevocationReport::new(self.config.revocation, issued, expired, &live, deny),
        );
        logging::audit_line(
            "least_privilege_report",
            &LeastPrivilegeReport::new(&self.config.allowlist, &self.evidence.reads(), &self.evidence.denies()),
        );
        self.emit_metrics(&[("SessionsLiveAtShutdown", live.len() as u64)]);
        let counters = self.secrets.counters();
        tracing::info!(
            target: "audit",
            event = "shutdown",
            reason,
            version = crate::version::VERSION,
            git_commit = crate::version::git_commit(),
            sessions_started = issued,
            sessions_ended = ledger.ended.load(Relaxed),
            session_open_at_shutdown = ended_session.is_some(),
            secrets_wiped = wiped as u64,
            secrets_served = self.evidence.served(),
            requests_denied = self.evidence.denied(),
            cache_hits = counters.cache_hits.load(Relaxed),
            secrets_fetched = counters.fetched.load(Relaxed),
            upstream_calls = counters.upstream_calls.load(Relaxed),
            connections_drained = drained,
            shutdown_ms = began.elapsed().as_millis() as u64,
        );
        ExitCode::SUCCESS
    }

    /// One EMF document for what happened since the last one (nothing if nothing did).
    fn emit_metrics(&self, extra: &[(&str, u64)]) {
        let Some(namespace) = &self.config.metrics_namespace else { return };
        if let Some(document) = self.evidence.take_document(namespace, &self.config.function_name, extra) {
            logging::write_line(&document);
        }
    }

    /// Stops accepting and wipes every credential and secret. Returns the live session that
    /// was ended (if any) and how many secrets were wiped.
    async fn wipe_everything(&self) -> (Option<String>, usize) {
        self.shutdown.cancel();
        let ended = self.invocations.shut_down().await;
        let wiped = self.secrets.cache().wipe_all();
        (ended, wiped)
    }
}

/// The running invocation's end as the configured mode sees it: with `runtime-done`, its
/// `platform.runtimeDone` or its deadline ([`Signal::InvocationEnded`]); with `next-invoke`,
/// its deadline ([`Signal::Deadline`]; the next INVOKE ends it otherwise).
async fn running_end(completions: &Completions, running: Option<&mut Running>, waits_for_end: bool) -> Signal {
    let Some(running) = running else { return std::future::pending().await };
    if !waits_for_end {
        running.deadline.as_mut().await;
        return Signal::Deadline;
    }
    tokio::select! {
        () = completions.wait(&running.request_id) => Signal::InvocationEnded("runtime_done"),
        () = running.deadline.as_mut() => Signal::InvocationEnded("deadline"),
    }
}

type Terminate = Option<tokio::signal::unix::Signal>;

fn terminate_signal() -> Terminate {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()
}

async fn wait_for(signal: &mut Terminate) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}
