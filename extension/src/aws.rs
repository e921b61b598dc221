//! The AWS SDK as the extension configures it for its own calls (STS, Secrets Manager, IAM):
//! the function's region, one HTTP stack (hyper 1 + rustls on ring, no aws-lc build), explicit
//! bounded retries with jitter, and the root certificates loaded off INIT's critical path.

use aws_smithy_runtime_api::client::http::{HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector};
use aws_smithy_runtime_api::client::runtime_components::{RuntimeComponents, RuntimeComponentsBuilder};
use std::time::Duration;

use crate::config::Config;

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
    match crate::version::app_name() {
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
pub fn load_roots_in_background(config: &Config) {
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
}
