//! INIT: from the environment to a running [`Extension`] (the parts the lifecycle loop
//! drives), or a full-sentence reason for `init/error`.
//!
//! In order: parse and validate the configuration, bind the local API (a port collision fails
//! INIT loudly), bind the telemetry listener and subscribe it, load the SDK's configuration,
//! build the parts, and start the listeners' tasks through the task tracker, the Runtime API
//! proxy's among them (its listener was bound before the extension registered). Nothing here
//! calls AWS: the first session is assumed when a request or an INVOKE needs one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime};

use futures_util::future::Either;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, Env, FunctionCredentialSource, InitializationType, RevocationMode};
use crate::domain::item::Kind;
use crate::evidence::Evidence;
use crate::extensions_api::{self, Registered};
use crate::hardening::Hardening;
use crate::http::{ConnectionLimits, FastAnswer, accept_loop};
use crate::invocation::{Invocations, Start};
use crate::local_api::read::ReadPath;
use crate::local_api::sdk::Signatures;
use crate::local_api::{self, LocalApi};
use crate::runtime_proxy::{self, RuntimeEvent};
use crate::secrets::Secrets;
use crate::session::{self, SessionFactory};
use crate::telemetry::{self, Completions, Sinks};
use crate::tenant::Tenancy;
use crate::{aws, policy, sigv4};

/// An INIT failure: the `init/error` type and a full-sentence reason.
#[derive(Debug)]
pub struct InitFailure {
    /// `Extension.ConfigInvalid`, `Extension.BindFailed`, `Extension.TelemetryUnavailable`.
    pub error_type: &'static str,
    /// The sentence Lambda shows with the failed INIT.
    pub message: String,
}

fn failure(error_type: &'static str, message: impl Into<String>) -> InitFailure {
    InitFailure { error_type, message: message.into() }
}

/// A configured extension with its listeners running.
pub struct Extension {
    pub(super) config: Arc<Config>,
    pub(super) factory: Arc<SessionFactory>,
    pub(super) invocations: Arc<Invocations>,
    pub(super) secrets: Arc<Secrets>,
    pub(super) tenancy: Arc<Tenancy>,
    pub(super) evidence: Arc<Evidence>,
    /// What telemetry reports: finished invocations, the end of INIT, restores.
    pub(super) completions: Arc<Completions>,
    /// Cancelled (by [`Tenancy`]) when a second tenant appears.
    pub(super) broken: CancellationToken,
    /// IAM client for `deny` revocation (built only in that mode).
    pub(super) iam: Option<aws_sdk_iam::Client>,
    /// Fans out to every listener and task at SHUTDOWN.
    pub(super) shutdown: CancellationToken,
    /// Every task the extension spawns, waited for (bounded) at SHUTDOWN.
    pub(super) tasks: TaskTracker,
    /// What the Runtime API proxy reports (taken by the loop; `None` without a proxy).
    pub(super) runtime_events: Option<mpsc::Receiver<RuntimeEvent>>,
    /// Where the proxy listens, if it does.
    pub(super) runtime_proxy: Option<SocketAddr>,
}

impl std::fmt::Debug for Extension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extension").field("invocations", &self.invocations).finish_non_exhaustive()
    }
}

impl Extension {
    /// Configures the extension and starts its listeners, the Runtime API proxy on `proxy`
    /// (bound before registering) if there is one.
    ///
    /// # Errors
    /// [`InitFailure`]: the caller posts it to `init/error`.
    pub async fn init(
        env: &Env,
        registered: &Registered,
        log_problem: Option<String>,
        proxy: Option<runtime_proxy::Bound>,
    ) -> Result<Self, InitFailure> {
        if let Some(problem) = log_problem {
            return Err(failure("Extension.ConfigInvalid", problem));
        }
        let config = Config::from_env(env).map_err(|e| failure("Extension.ConfigInvalid", e.to_string()))?;
        if let Some(unknown) = &config.unrecognised_initialization_type {
            tracing::warn!(event = "unknown_initialization_type", value = %unknown, running_as = "on-demand");
        }
        policy::check_fits(&config.allowlist).map_err(|reason| {
            let lists = match (config.allowlist.count(Kind::Secret), config.allowlist.count(Kind::Parameter)) {
                (_, 0) => config::var::SECRETS.to_owned(),
                (0, _) => config::var::PARAMETERS.to_owned(),
                _ => format!("{} and {} together", config::var::SECRETS, config::var::PARAMETERS),
            };
            failure("Extension.ConfigInvalid", format!("{lists} would {reason}"))
        })?;
        let config = Arc::new(config);
        let address = SocketAddr::from(([127, 0, 0, 1], config.port));
        let listener = TcpListener::bind(address).await.map_err(|error| {
            failure(
                "Extension.BindFailed",
                format!(
                    "The local API could not listen on {address}: {error}; another process may be using that port."
                ),
            )
        })?;
        let (telemetry_listener, destination, path) = telemetry::bind().await.map_err(|error| {
            failure("Extension.TelemetryUnavailable", format!("The telemetry listener could not bind: {error}."))
        })?;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let completions = Arc::new(Completions::default());
        let broken = CancellationToken::new();
        let tenancy = Arc::new(Tenancy::new(config.allowlist.clone(), broken.clone()));
        let sinks = Sinks { path, completions: Arc::clone(&completions), tenancy: Arc::clone(&tenancy) };
        tasks.spawn(telemetry::serve(telemetry_listener, Arc::new(sinks), shutdown.clone()));
        let mode = config.initialization_type;
        let schema = match mode {
            InitializationType::ManagedInstances => extensions_api::MANAGED_INSTANCES_SCHEMA_VERSION,
            _ => extensions_api::TELEMETRY_SCHEMA_VERSION,
        };
        registered.subscribe_telemetry(&destination, schema).await.map_err(|error| {
            failure(
                "Extension.TelemetryUnavailable",
                format!("The Telemetry API subscription failed ({error}); without it invocations cannot end on time."),
            )
        })?;

        aws::load_roots_in_background(&config);
        let sdk = aws::sdk_loader(&config).load().await;
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
        let invocations = Arc::new(Invocations::new(
            Arc::clone(&factory),
            start,
            config.request_wait_timeout,
            config.credential_window,
        ));
        let secrets = Arc::new(Secrets::new(
            Arc::clone(&tenancy),
            config.cache_ttl,
            Arc::clone(&invocations),
            Arc::clone(&evidence),
        ));
        let credentials = match &config.function_credentials {
            FunctionCredentialSource::Environment(credentials) => sigv4::CredentialSource::fixed(credentials.clone()),
            FunctionCredentialSource::Container => sdk
                .credentials_provider()
                .map_or_else(sigv4::CredentialSource::absent, sigv4::CredentialSource::provider),
            FunctionCredentialSource::Absent => sigv4::CredentialSource::absent(),
        };
        // Set by the proxy once an invocation came through it.
        let delivered = Arc::new(AtomicBool::new(false));
        let (runtime_proxy, runtime_events) = match proxy {
            Some(bound) => {
                let address = bound.address();
                let (sender, receiver) = mpsc::channel(runtime_proxy::EVENT_QUEUE);
                let upstream = config.runtime_api.clone();
                let (delivered, shutdown) = (Arc::clone(&delivered), shutdown.clone());
                tasks.spawn(runtime_proxy::serve_proxy(bound, upstream, sender, delivered, shutdown));
                (Some(address), Some(receiver))
            }
            None => (None, None),
        };
        let api = Arc::new(LocalApi {
            reader: ReadPath {
                tenancy: Arc::clone(&tenancy),
                secrets: Arc::clone(&secrets),
                invocations: Arc::clone(&invocations),
                evidence: Arc::clone(&evidence),
                token: config.local_token.clone(),
                runtime_proxy_delivered: delivered,
            },
            token: config.local_token.clone(),
            signatures: Signatures { credentials, region: config.region.clone() },
            caller_request_ids: mode == InitializationType::ManagedInstances,
        });
        // Values go when their TTL runs out, not only when the next invocation looks.
        if !config.cache_ttl.is_zero() {
            let (secrets, shutdown) = (Arc::clone(&secrets), shutdown.clone());
            tasks.spawn(async move { secrets.cache().expire_on_time(shutdown).await });
        }
        let limits = ConnectionLimits { max_connections: config.max_connections, ..Default::default() };
        // A cached read that needs no wait is answered on the connection's fast lane, without
        // hyper; and here, without a future to build, once hyper serves the connection.
        let fast: FastAnswer = Arc::clone(&api) as FastAnswer;
        tasks.spawn(accept_loop(listener, limits, shutdown.clone(), Some(fast), move |request| {
            if let Some(body) = api.answer_now(&request) {
                return Either::Left(std::future::ready(local_api::ready_answer(request, body)));
            }
            let api = Arc::clone(&api);
            // Boxed: hyper moves a request's future twice on its way in; a pointer is cheaper
            // to move than the read path's 1.4 KB (2.9 % of a cached GET's instructions).
            Either::Right(Box::pin(async move { api.handle(request).await }))
        }));
        Ok(Self {
            config,
            factory,
            invocations,
            secrets,
            tenancy,
            evidence,
            completions,
            broken,
            iam,
            shutdown,
            tasks,
            runtime_events,
            runtime_proxy,
        })
    }

    /// The `ready` line: what this environment runs with, and how long INIT took.
    pub fn log_ready(&self, name: &str, started: Instant, hardening: &Hardening) {
        tracing::info!(
            event = "ready",
            extension = %name,
            version = crate::version::VERSION,
            git_commit = crate::version::git_commit(),
            environment_id = %self.factory.environment_id().unwrap_or_else(|| "drawn_after_restore".to_owned()),
            initialization_type = self.config.initialization_type.as_str(),
            tenant_scoped = self.tenancy.is_scoped(),
            port = self.config.port,
            end_of_invocation = self.config.end_of_invocation.as_str(),
            runtime_proxy = %self.runtime_proxy.map_or_else(|| "off".to_owned(), |address| address.to_string()),
            secrets = self.config.allowlist.count(Kind::Secret) as u64,
            parameters = self.config.allowlist.count(Kind::Parameter) as u64,
            start_to_ready_us = started.elapsed().as_micros() as u64,
            core_dumps_disabled = hardening.core_dumps_disabled,
            not_dumpable = hardening.not_dumpable,
            memory_locked = hardening.memory.is_locked(),
            memory_lock_refused = %hardening.memory.reason(),
        );
    }
}
