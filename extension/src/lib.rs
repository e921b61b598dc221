//! scoped-secrets: a Lambda extension that serves secrets through per-invocation,
//! session-policy-scoped credentials held in zeroizing memory.
//!
//! # Layout
//! Imports run one way: protocols → read path → store, sessions, lifecycle → domain.
//! - [`domain`]: the leaf vocabulary (stable error codes, the read and session errors, ARNs,
//!   tenant ids, versions, session names, time, text); it imports nothing from the crate.
//! - [`config`]: the environment, parsed once into a typed `Config`: the allowlist, the token.
//! - [`policy`], [`session`]: `AssumeRole` with a generated session policy bound to the scope's end.
//! - [`tenant`]: tenant isolation mode, `{tenant}` entries resolved from the platform's tenant id.
//! - [`invocation`]: scopes (the init phase, each invocation), the phase they move through, the
//!   ledger of sessions issued.
//! - [`secrets`]: the store: fetch into zeroizing memory, single flight, batch prefetch, the cache.
//! - [`local_api`]: the local API on 127.0.0.1: a router, one read path, the GET protocol and
//!   the SDK protocol ([`sigv4`] verifies its signatures), over the shared [`http`] plumbing.
//! - [`extensions_api`], [`telemetry`]: Lambda's Extensions API and the Telemetry listener.
//! - [`runtime_proxy`]: Lambda's Runtime API, forwarded for the runtime (started through
//!   `/opt/scoped-secrets-wrapper`), so invocations are seen to begin and end as they do.
//! - [`lifecycle`]: the one loop that drives every transition, SHUTDOWN and its reports;
//!   [`revocation`]: the opt-in deny at SHUTDOWN.
//! - [`evidence`], [`logging`]: read counts, denies, EMF metrics; JSON lines, never a secret.
//! - [`aws`]: the SDK as the extension configures it for its own calls.
//! - [`hardening`], [`allocator`]: no core dumps, not dumpable, memory lock, every freed heap
//!   block wiped.
//! - [`version`]: the crate version and git commit in the logs, the metrics and the user agent.
//! - `fuzzing` (only with the `fuzzing` feature, hidden): the fuzz targets' entry points into
//!   crate-private parsers.
//!
//! [`run`] wires them: bind the Runtime API proxy → register → configure (or `init/error`) →
//! `ready` → the lifecycle loop.

pub mod allocator;
pub mod aws;
pub mod config;
pub mod domain;
pub mod evidence;
pub mod extensions_api;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod hardening;
pub mod http;
pub mod invocation;
pub mod lifecycle;
pub mod local_api;
pub mod logging;
pub mod policy;
pub mod revocation;
pub mod runtime_proxy;
pub mod secrets;
pub mod session;
pub mod sigv4;
pub mod telemetry;
pub mod tenant;
pub mod version;

#[cfg(test)]
mod testing;

use std::process::ExitCode;
use std::time::Instant;

use crate::config::Env;
use crate::extensions_api::{Events, ExtensionsApi};
use crate::hardening::Hardening;
use crate::lifecycle::Extension;

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
    // The Runtime API proxy is bound before registering: the runtime (and its wrapper) may
    // start as soon as every extension has registered. A failure here is reported through
    // init/error once registered, so it fails INIT loudly.
    let proxy = match config::runtime_proxy_port(&env) {
        Ok(Some(port)) if runtime_proxy::is_own_address(runtime_api, port) => {
            // Started through the wrapper: AWS_LAMBDA_RUNTIME_API is our own proxy, so there
            // is no Lambda to register with or forward to.
            tracing::error!(
                event = "init_failed",
                reason = "AWS_LAMBDA_RUNTIME_API is the Runtime API proxy's own address: the extension was \
                          started through /opt/scoped-secrets-wrapper; only the function's runtime may be."
            );
            return ExitCode::FAILURE;
        }
        Ok(Some(port)) => runtime_proxy::bind(port).await.map(Some),
        Ok(None) => Ok(None),
        Err(error) => {
            Err(runtime_proxy::BindFailure { error_type: "Extension.ConfigInvalid", message: error.to_string() })
        }
    };
    let registered = match ExtensionsApi::new(runtime_api).register(&name, events).await {
        Ok(registered) => registered,
        Err(error) => {
            tracing::error!(event = "register_failed", cause = %error);
            return ExitCode::FAILURE;
        }
    };
    // Removed when the process exits normally; the wrapper then finds no proxy.
    let (proxy, _marker) = match proxy {
        Ok(Some(mut bound)) => {
            let marker = bound.take_marker();
            (Some(bound), marker)
        }
        Ok(None) => (None, None),
        Err(failure) => {
            tracing::error!(event = "init_failed", error_type = failure.error_type, reason = %failure.message);
            if let Err(error) = registered.init_error(failure.error_type, &failure.message).await {
                tracing::error!(event = "init_error_not_delivered", cause = %error);
            }
            return ExitCode::FAILURE;
        }
    };
    let extension = match Extension::init(&env, &registered, log_problem, proxy).await {
        Ok(extension) => extension,
        Err(failure) => {
            tracing::error!(event = "init_failed", error_type = failure.error_type, reason = %failure.message);
            if let Err(error) = registered.init_error(failure.error_type, &failure.message).await {
                tracing::error!(event = "init_error_not_delivered", cause = %error);
            }
            return ExitCode::FAILURE;
        }
    };
    extension.log_ready(&name, started, &hardening);
    extension.run(registered).await
}
