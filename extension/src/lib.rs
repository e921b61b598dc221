//! scoped-secrets: a Lambda extension that serves secrets through per-invocation,
//! session-policy-scoped credentials held in zeroizing memory.
//!
//! # Layout
//! - [`config`], [`allowlist`]: the environment, parsed once into a typed `Config`.
//! - [`tenant`]: tenant isolation mode, `{tenant}` entries resolved from the platform's tenant id.
//! - [`extensions_api`]: register, `event/next`, `init/error`, `exit/error`, telemetry subscription.
//! - [`telemetry`]: the listener that learns `platform.runtimeDone` for each request id.
//! - [`invocation`]: scopes (the init phase, each invocation) and the phase they move through.
//! - [`session`], [`policy`]: `AssumeRole` with a generated session policy bound to the scope's end.
//! - [`secrets`]: fetch into zeroizing memory, single-flight, batch prefetch, the cache.
//! - [`server`]: the local HTTP API on 127.0.0.1 and the one error-to-status mapping.
//! - [`hardening`], [`allocator`], [`logging`]: no core dumps, not dumpable, every freed heap
//!   block wiped; JSON lines with audit records.
//! - [`version`]: the crate version and git commit in the logs, the metrics and the user agent.
//!
//! [`run`] wires them: register → configure (or `init/error`) → bind → subscribe → loop over
//! INVOKE (open a scope, prefetch, wait for runtimeDone, end the scope) until SHUTDOWN (stop
//! accepting, wipe, report, exit 0). Lambda's initialisation type shapes the life: SnapStart
//! serves nothing and draws nothing random before restore; provisioned concurrency's INIT and
//! Managed Instances (SHUTDOWN only, no INVOKE) use one session per fetch; a second tenant in a
//! tenant-isolated environment wipes everything and exits with `exit/error`.

pub mod allocator;
pub mod allowlist;
pub mod config;
pub mod extensions_api;
pub mod hardening;
pub mod invocation;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod revocation;
pub mod sdk_api;
pub mod secrets;
pub mod server;
pub mod session;
pub mod sigv4;
pub mod telemetry;
pub mod tenant;
pub mod version;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_smithy_runtime_api::client::http::{HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector};
use aws_smithy_runtime_api::client::runtime_components::{RuntimeComponents, RuntimeComponentsBuilder};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EndOfInvocation, Env, FunctionCredentialSource, InitializationType, RevocationMode};
use crate::extensions_api::{Event, Events, ExtensionsApi, Registered, ShutdownReason};
use crate::hardening::Hardening;
use crate::invocation::{Lifecycle, Start};
use crate::metrics::Evidence;
use crate::secrets::Secrets;
use crate::server::{ConnectionLimits, LocalApi};
use crate::session::SessionFactory;
use crate::telemetry::{Completions, Sinks};
use crate::tenant::Tenancy;

/// Time kept back from Lambda's SHUTDOWN deadline, so the summary is written before it.
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(300);

/// An INIT failure: the `init/error` type and a full-sentence reason.
#[derive(Debug)]
struct InitFailure {
    error_type: &'static str,
    message: String,
}

fn init_failure(error_type: &'static str, message: impl Into<String>) -> InitFailure {
    InitFailure { error_type, message: message.into() }
}

/// Runs the extension to completion. Returns the process exit code.
pub async fn run(env: Env, name: String, hardening: Hardening, log_problem: Option<String>) -> ExitCode {
    let started = Instant::now();
    let Some(runtime_api) = env.get("AWS_LAMBDA_RUNTIME_API") else {
        tracing::error!(
            event = "init_failed",
            reason = "AWS_LAMBDA_RUNTIME_API is not set; not running inside Lambda."
        );
        return ExitCode::FAILURE;
    };
    // Known before the configuration is parsed: on Managed Instances, asking for INVOKE would
    // fail registration and crash the function's Init.
    let events = match env.get("AWS_LAMBDA_INITIALIZATION_TYPE").map(str::trim) {
        Some("lambda-managed-instances") => Events::ShutdownOnly,
        _ => Events::InvokeAndShutdown,
    };
    let registered = match ExtensionsApi::new(runtime_api).register(&name, events).await {
        Ok(registered) => registered,
        Err(error) => {
            tracing::error!(event = "register_failed", cause = %error);
            return ExitCode::FAILURE;
        }
    };
    let extension = match Extension::init(&env, &registered, log_problem).await {
        Ok(extension) => extension,
        Err(failure) => {
            tracing::error!(event = "init_failed", error_type = failure.error_type, reason = %failure.message);
            if let Err(error) = registered.init_error(failure.error_type, &failure.message).await {
                tracing::error!(event = "init_error_not_delivered", cause = %error);
            }
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        event = "ready",
        extension = %name,
        version = version::VERSION,
        git_commit = version::git_commit(),
        environment_id = %extension.factory.environment_id().unwrap_or_else(|| "drawn_after_restore".to_owned()),
        initialization_type = extension.config.initialization_type.as_str(),
        tenant_scoped = extension.tenancy.is_scoped(),
        port = extension.config.port,
        secrets = extension.config.allowlist.len() as u64,
        start_to_ready_us = started.elapsed().as_micros() as u64,
        core_dumps_disabled = hardening.core_dumps_disabled,
        not_dumpable = hardening.not_dumpable,
        memory_locked = hardening.memory.is_locked(),
        memory_lock_refused = %hardening.memory.reason(),
    );
    extension.run(registered).await
}

/// A configured extension with its sockets bound.
struct Extension {
    config: Arc<Config>,
    factory: Arc<SessionFactory>,
    lifecycle: Arc<Lifecycle>,
    secrets: Arc<Secrets>,
    api: Arc<LocalApi>,
    completions: Arc<Completions>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    /// Reads, denies and the metrics window.
    evidence: Arc<Evidence>,
    /// IAM client for `deny` revocation.
    iam: Option<aws_sdk_iam::Client>,
    /// With `next-invoke`: the timer that ends the open scope at its deadline.
    deadline_timer: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// The allowlist as the environment's tenant resolves it.
    tenancy: Arc<Tenancy>,
    /// Cancelled when a second tenant appears.
    broken: CancellationToken,
    /// SnapStart: whether the restore has drawn the environment id.
    restored: Arc<std::sync::atomic::AtomicBool>,
}

impl Extension {
    async fn init(env: &Env, registered: &Registered, log_problem: Option<String>) -> Result<Self, InitFailure> {
        if let Some(problem) = log_problem {
            return Err(init_failure("Extension.ConfigInvalid", problem));
        }
        let config = Config::from_env(env).map_err(|e| init_failure("Extension.ConfigInvalid", e.to_string()))?;
        if let Some(unknown) = &config.unrecognised_initialization_type {
            tracing::warn!(event = "unknown_initialization_type", value = %unknown, running_as = "on-demand");
        }
        policy::check_fits(&config.allowlist).map_err(|reason| {
            init_failure("Extension.ConfigInvalid", format!("{} would {reason}", config::var::SECRETS))
        })?;
        let config = Arc::new(config);
        let address = SocketAddr::from(([127, 0, 0, 1], config.port));
        let listener = TcpListener::bind(address).await.map_err(|error| {
            init_failure(
                "Extension.BindFailed",
                format!(
                    "The local API could not listen on {address}: {error}; another process may be using that port."
                ),
            )
        })?;
        let (telemetry_listener, destination) = telemetry::bind().await.map_err(|error| {
            init_failure("Extension.TelemetryUnavailable", format!("The telemetry listener could not bind: {error}."))
        })?;
        let shutdown = CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let completions = Arc::new(Completions::default());
        let tenancy = Arc::new(Tenancy::new(config.allowlist.clone()));
        let broken = CancellationToken::new();
        let sinks =
            Sinks { completions: Arc::clone(&completions), tenancy: Arc::clone(&tenancy), broken: broken.clone() };
        tasks.spawn(telemetry::serve(telemetry_listener, Arc::new(sinks), shutdown.clone()));
        let mode = config.initialization_type;
        let schema = match mode {
            InitializationType::ManagedInstances => extensions_api::MANAGED_INSTANCES_SCHEMA_VERSION,
            _ => extensions_api::TELEMETRY_SCHEMA_VERSION,
        };
        registered.subscribe_telemetry(&destination, schema).await.map_err(|error| {
            init_failure(
                "Extension.TelemetryUnavailable",
                format!("The Telemetry API subscription failed ({error}); without it invocations cannot end on time."),
            )
        })?;

        load_roots_in_background(&config);
        let sdk = sdk_loader(&config).load().await;
        let evidence = Arc::new(Evidence::new(config.allowlist.len()));
        // SnapStart: nothing random before restore (the snapshot would share it).
        let environment_id = (mode != InitializationType::SnapStart).then(session::new_environment_id);
        let factory = Arc::new(SessionFactory::new(
            &sdk,
            Arc::clone(&config),
            Arc::clone(&tenancy),
            environment_id,
            Arc::clone(&evidence),
        ));
        // Only deny mode writes IAM; the client is built only then.
        let iam = (config.revocation == RevocationMode::Deny).then(|| {
            let mut builder = aws_sdk_iam::config::Builder::from(&sdk);
            builder.set_endpoint_url(config.endpoints.iam.clone());
            aws_sdk_iam::Client::from_conf(builder.build())
        });
        let init_end = SystemTime::now() + config.init_budget + config.deadline_margin;
        let start = match mode {
            InitializationType::OnDemand => Start::Init(init_end),
            InitializationType::ProvisionedConcurrency => Start::InitPerFetch(init_end),
            InitializationType::SnapStart => Start::Snapshotting,
            InitializationType::ManagedInstances => {
                Start::Environment(config.credential_window.unwrap_or(config.session_duration))
            }
        };
        let lifecycle = Arc::new(Lifecycle::new(
            Arc::clone(&factory),
            start,
            config.request_wait_timeout,
            config.credential_window,
        ));
        let secrets = Arc::new(Secrets::new(
            Arc::clone(&tenancy),
            config.cache_ttl,
            Arc::clone(&lifecycle),
            Arc::clone(&evidence),
        ));
        let function_credentials = match &config.function_credentials {
            FunctionCredentialSource::Environment(credentials) => sigv4::CredentialSource::fixed(credentials.clone()),
            FunctionCredentialSource::Container => sdk
                .credentials_provider()
                .map_or_else(sigv4::CredentialSource::absent, sigv4::CredentialSource::provider),
            FunctionCredentialSource::Absent => sigv4::CredentialSource::absent(),
        };
        let api = Arc::new(LocalApi {
            tenancy: Arc::clone(&tenancy),
            caller_request_ids: mode == InitializationType::ManagedInstances,
            token: config.local_token.clone(),
            secrets: Arc::clone(&secrets),
            lifecycle: Arc::clone(&lifecycle),
            evidence: Arc::clone(&evidence),
            function_credentials,
            region: config.region.clone(),
            denied: Default::default(),
            served: Default::default(),
        });
        // The init session ends with the runtime's INIT, not at the first INVOKE.
        {
            let (lifecycle, secrets, completions) =
                (Arc::clone(&lifecycle), Arc::clone(&secrets), Arc::clone(&completions));
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                tokio::select! {
                    () = completions.wait_init_done() => {}
                    () = shutdown.cancelled() => return,
                }
                let wiped = if lifecycle.end_init().await { secrets.expire() } else { 0 };
                tracing::info!(target: "audit", event = "init_ended", secrets_wiped = wiped as u64);
            });
        }
        // Values go when their TTL runs out, not only when the next invocation looks.
        if !config.cache_ttl.is_zero() {
            let (secrets, shutdown) = (Arc::clone(&secrets), shutdown.clone());
            tasks.spawn(async move { secrets.expire_on_time(shutdown).await });
        }
        let restored = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if mode == InitializationType::SnapStart {
            let (factory, lifecycle, restored, completions) =
                (Arc::clone(&factory), Arc::clone(&lifecycle), Arc::clone(&restored), Arc::clone(&completions));
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                tokio::select! {
                    () = completions.wait_restore_start() => restore(&factory, &lifecycle, &restored, "restore_start"),
                    () = shutdown.cancelled() => {}
                }
            });
        }
        let limits = ConnectionLimits { max_connections: config.max_connections, ..Default::default() };
        let handler_api = Arc::clone(&api);
        tasks.spawn(server::accept_loop(listener, limits, shutdown.clone(), move |request| {
            let api = Arc::clone(&handler_api);
            async move { api.handle(request).await }
        }));
        Ok(Self {
            config,
            factory,
            lifecycle,
            secrets,
            api,
            completions,
            shutdown,
            tasks,
            deadline_timer: std::sync::Mutex::new(None),
            evidence,
            iam,
            tenancy,
            broken,
            restored,
        })
    }

    async fn run(self, registered: Registered) -> ExitCode {
        let mut terminate = terminate_signal();
        loop {
            let event = tokio::select! {
                event = registered.next_event() => event,
                () = self.broken.cancelled() => return self.tenant_changed(&registered).await,
                () = wait_for(&mut terminate) => {
                    // SIGTERM: the same path as SHUTDOWN, with Lambda's usual budget.
                    let deadline = SystemTime::now() + Duration::from_millis(1_700);
                    return self.shut_down("sigterm", deadline).await;
                }
            };
            match event {
                Ok(Event::Invoke { request_id, deadline_ms }) => {
                    let broken = tokio::select! {
                        () = self.invocation(&request_id, deadline_ms) => false,
                        () = self.broken.cancelled() => true,
                    };
                    if broken {
                        return self.tenant_changed(&registered).await;
                    }
                }
                Ok(Event::Shutdown { shutdown_reason, deadline_ms }) => {
                    let reason = match shutdown_reason {
                        ShutdownReason::Spindown => "spindown",
                        ShutdownReason::Timeout => "timeout",
                        ShutdownReason::Failure => "failure",
                        ShutdownReason::Other => "other",
                    };
                    return self.shut_down(reason, UNIX_EPOCH + Duration::from_millis(deadline_ms)).await;
                }
                Err(error) => {
                    tracing::error!(event = "event_loop_failed", cause = %error);
                    let _ = registered
                        .exit_error(
                            "Extension.EventLoopFailed",
                            &format!("The extension lost the Extensions API: {error}."),
                        )
                        .await;
                    self.wipe_everything().await;
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    /// One invocation: open its scope, prefetch, wait for runtimeDone (or the deadline), end
    /// the scope. Only then does the loop ask for the next event, so no credential waits in a
    /// frozen environment. With `next-invoke` the scope is left open for the next INVOKE (or a
    /// timer at the deadline) to end.
    async fn invocation(&self, request_id: &str, deadline_ms: u64) {
        let began = Instant::now();
        if self.config.initialization_type == InitializationType::SnapStart {
            // The first INVOKE after restore, when no platform.restoreStart came first.
            restore(&self.factory, &self.lifecycle, &self.restored, "first_invoke");
        }
        let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
        let scope = self.lifecycle.begin(request_id, deadline + self.config.deadline_margin).await;
        if let Some(timer) = self.deadline_timer.lock().unwrap_or_else(PoisonError::into_inner).take() {
            timer.abort();
        }
        // Values a previous scope fetched with TTL 0 go now (with next-invoke nothing wiped them).
        self.secrets.expire();
        let prefetch = self.config.prefetch.then(|| {
            let secrets = Arc::clone(&self.secrets);
            let scope = Arc::clone(&scope);
            tokio::spawn(async move { secrets.prefetch(&scope).await })
        });
        let until_deadline = deadline.duration_since(SystemTime::now()).unwrap_or_default();
        if self.config.end_of_invocation == EndOfInvocation::NextInvoke {
            let (lifecycle, secrets) = (Arc::clone(&self.lifecycle), Arc::clone(&self.secrets));
            let shutdown = self.shutdown.clone();
            let timer = self.tasks.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(until_deadline) => {}
                    () = shutdown.cancelled() => return,
                }
                if let Some(prefetch) = prefetch {
                    prefetch.abort();
                }
                lifecycle.finish(&scope, "deadline").await;
                secrets.expire();
            });
            *self.deadline_timer.lock().unwrap_or_else(PoisonError::into_inner) = Some(timer.abort_handle());
            self.emit_metrics(&[]);
            return;
        }
        let reason = tokio::select! {
            () = self.completions.wait(request_id) => "runtime_done",
            () = tokio::time::sleep(until_deadline) => "deadline",
        };
        let waited = began.elapsed();
        if let Some(prefetch) = prefetch {
            prefetch.abort();
        }
        self.lifecycle.finish(&scope, reason).await;
        let expired = self.secrets.expire();
        tracing::info!(
            target: "audit",
            event = "invocation_ended",
            request_id,
            reason,
            invocation_ms = waited.as_millis() as u64,
            secrets_wiped = expired as u64,
            end_us = (began.elapsed() - waited).as_micros() as u64,
        );
        self.emit_metrics(&[]);
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
        let _ = tokio::time::timeout(Duration::from_millis(500), self.tasks.wait()).await;
        self.secrets.wipe_all();
        ExitCode::FAILURE
    }

    /// SHUTDOWN: stop accepting, wipe every secret and credential, report, exit 0 inside
    /// Lambda's deadline.
    async fn shut_down(self, reason: &'static str, deadline: SystemTime) -> ExitCode {
        let began = Instant::now();
        let budget = deadline.duration_since(SystemTime::now()).unwrap_or_default().saturating_sub(SHUTDOWN_MARGIN);
        // 1. Stop accepting; 2. wipe every credential and secret.
        let (ended_session, wiped) = self.wipe_everything().await;
        // 3. Revoke: what AWS would still honour, and (deny mode) refuse it at once.
        let now = SystemTime::now();
        let ledger = self.lifecycle.ledger();
        let (live, expired) = ledger.at(now);
        let mut deny = json!(null);
        let mut action = "wiped";
        if let (Some(iam), false) = (&self.iam, live.is_empty()) {
            let (result, took) = revocation::deny_within(
                budget.saturating_sub(began.elapsed()),
                iam,
                self.config.role_arn.as_str(),
                ledger.role_id.get().map(String::as_str),
                &self.factory.environment_id().unwrap_or_default(),
                &live,
                self.config.revocation_policy_budget,
            )
            .await;
            action = if result.is_ok() { "wiped_and_denied" } else { "wiped_deny_failed" };
            deny = match result {
                Ok(outcome) => json!({
                    "written": true, "collapsed": outcome.collapsed, "dropped_moot": outcome.dropped_moot,
                    "statements": outcome.statements, "iam_ms": took.as_millis() as u64,
                }),
                Err(error) => {
                    json!({ "written": false, "error": error.to_string(), "iam_ms": took.as_millis() as u64 })
                }
            };
        }
        self.tasks.close();
        let drained = tokio::time::timeout(budget.saturating_sub(began.elapsed()), self.tasks.wait()).await.is_ok();
        // Anything still cached by a request that finished while draining goes too.
        let wiped = wiped + self.secrets.wipe_all();
        // 4. Report: counts and names, never a value.
        let mode = match self.config.revocation {
            RevocationMode::Wipe => "wipe",
            RevocationMode::Deny => "deny",
        };
        metrics::audit_line(
            "revocation_report",
            json!({
                "mode": mode,
                "sessions_issued": ledger.started.load(Relaxed),
                "sessions_ended_by_policy": expired,
                "sessions_live_at_shutdown": live.len(),
                "live": live.iter().map(|s| json!({
                    "session": s.name, "policy_end": policy::iso8601_ceil(s.end), "action": action,
                })).collect::<Vec<_>>(),
                "deny": deny,
            }),
        );
        let reads = self.evidence.reads();
        let secrets: Vec<_> = self
            .config
            .allowlist
            .iter()
            .map(|(index, entry)| {
                let [get, v1, sdk] = reads.get(index).copied().unwrap_or_default();
                json!({ "secret_id": entry.secret_id(), "alias": entry.alias(), "reads": { "get": get, "v1": v1, "sdk": sdk } })
            })
            .collect();
        let never_read: Vec<&str> = self
            .config
            .allowlist
            .iter()
            .filter(|(index, _)| reads.get(*index).copied().unwrap_or_default().iter().sum::<u64>() == 0)
            .map(|(_, entry)| entry.secret_id())
            .collect();
        metrics::audit_line(
            "least_privilege_report",
            json!({ "secrets": secrets, "never_read": never_read, "denies": self.evidence.denies() }),
        );
        self.emit_metrics(&[("SessionsLiveAtShutdown", live.len() as u64)]);
        let counters = self.secrets.counters();
        tracing::info!(
            target: "audit",
            event = "shutdown",
            reason,
            version = version::VERSION,
            git_commit = version::git_commit(),
            sessions_started = ledger.started.load(Relaxed),
            sessions_ended = ledger.ended.load(Relaxed),
            session_open_at_shutdown = ended_session.is_some(),
            secrets_wiped = wiped as u64,
            secrets_served = self.api.served.load(Relaxed),
            requests_denied = self.api.denied.load(Relaxed),
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
            metrics::write_line(&document);
        }
    }

    /// Stops accepting and wipes every credential and secret. Returns the live session that
    /// was ended (if any) and how many secrets were wiped.
    async fn wipe_everything(&self) -> (Option<String>, usize) {
        self.shutdown.cancel();
        let ended = self.lifecycle.shut_down().await;
        let wiped = self.secrets.wipe_all();
        (ended, wiped)
    }
}

/// Attempts per AWS call (the first and two retries), as the SDKs' standard mode.
pub const UPSTREAM_ATTEMPTS: u32 = 3;
/// Base of the exponential backoff after a throttling error: the n-th retry waits a uniformly
/// random time in `[0, base × 2^(n-1)]` ("full jitter"), so environments throttled together do
/// not retry together. Other retryable errors (5xx, resets) start from the SDK's 50 ms.
pub const THROTTLING_BACKOFF: Duration = Duration::from_millis(200);
/// Ceiling of any one backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How every AWS call of the extension retries, set here rather than left to the SDK's
/// defaults (which wait up to 1 s, then 2 s, after a throttle, and may change with the
/// behaviour version): the standard mode's retry classes and retry quota, [`UPSTREAM_ATTEMPTS`]
/// attempts, full jitter from [`THROTTLING_BACKOFF`] capped at [`MAX_BACKOFF`]. All attempts of
/// one call together stay inside the upstream timeout (the SDK's operation timeout), and a
/// local request waits for a session no longer than the request wait timeout.
pub fn upstream_retries() -> aws_config::retry::RetryConfig {
    aws_config::retry::RetryConfig::standard()
        .with_max_attempts(UPSTREAM_ATTEMPTS)
        .with_initial_backoff(THROTTLING_BACKOFF)
        .with_max_backoff(MAX_BACKOFF)
}

/// The AWS SDK's shared configuration as the extension loads it: the configured region, one
/// HTTP stack, and the app name that puts scoped-secrets and its version in every call's user
/// agent. The execution role's credentials come from the process environment, unless the
/// caller sets them (the benchmark times the emulator through this same client path).
pub fn sdk_loader(config: &Config) -> aws_config::ConfigLoader {
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(config.region.clone()))
        .retry_config(upstream_retries())
        .http_client(SharedHttpClient::new(DeferredRoots(https_client(config))));
    // CloudTrail records the user agent: each AssumeRole and secret read names this build.
    match version::app_name() {
        Some(app_name) => loader.app_name(app_name),
        None => loader,
    }
}

/// hyper 1 + rustls on ring: one TLS stack, no aws-lc build.
fn https_client(config: &Config) -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        // No idle connection keeps a session token or an AssumeRole answer in a live buffer
        // between invocations (unless keep-alive is asked for).
        .pool_max_idle_per_host(if config.upstream_keep_alive { usize::MAX } else { 0 })
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The SDK's HTTP client without its eager check. That check builds a connector, so the first
/// client made at INIT loads and parses the system's root certificates there: 20 M of INIT's
/// 22 M instructions under callgrind, on the path to `ready`. [`load_roots_in_background`]
/// does it on a thread of its own instead; a request that comes first waits for it (the roots
/// are one process-wide lazy value).
#[derive(Debug)]
struct DeferredRoots(SharedHttpClient);

impl HttpClient for DeferredRoots {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

/// Loads the root certificates on a short-lived thread, while INIT goes on and then while the
/// function initialises (no AWS call is made before a request or an INVOKE needs one).
fn load_roots_in_background(config: &Config) {
    let client = https_client(config);
    let spawned = std::thread::Builder::new().name("tls-roots".into()).spawn(move || {
        let components = RuntimeComponentsBuilder::new("scoped-secrets-tls-roots");
        let _ = client.validate_base_client_config(&components, &aws_smithy_types::config_bag::ConfigBag::base());
    });
    if let Err(error) = spawned {
        // The first AWS call loads them instead.
        tracing::warn!(event = "tls_roots_thread_failed", cause = %error);
    }
}

/// A SnapStart restore (the first `platform.restoreStart`, or the first INVOKE when none came):
/// draws the environment id, so environments restored from one snapshot never share session
/// names. Once per process.
fn restore(
    factory: &SessionFactory,
    lifecycle: &Lifecycle,
    restored: &std::sync::atomic::AtomicBool,
    trigger: &'static str,
) {
    if restored.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    let environment_id = factory.draw_environment_id();
    lifecycle.restored();
    tracing::info!(target: "audit", event = "restored", environment_id = %environment_id, trigger);
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

#[cfg(test)]
mod tests {
    #[test]
    fn retries_are_few_jittered_and_short() {
        let retries = super::upstream_retries();
        assert_eq!(retries.mode(), aws_config::retry::RetryMode::Standard);
        assert_eq!(retries.max_attempts(), 3);
        assert_eq!(retries.initial_backoff(), std::time::Duration::from_millis(200));
        assert_eq!(retries.max_backoff(), std::time::Duration::from_secs(1));
        assert!(!retries.use_static_exponential_base(), "the SDK draws a random factor per backoff (jitter)");
    }

    #[test]
    fn environment_ids_are_short_random_and_sts_safe() {
        let a = crate::session::new_environment_id();
        let b = crate::session::new_environment_id();
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
        assert!(crate::policy::is_valid_session_name(&crate::policy::session_name(&a, &"f".repeat(36), 0)));
        assert_eq!(crate::policy::session_name(&a, &"f".repeat(36), 0).len(), 48);
    }
}
