//! Unit-test support: the extension's parts built offline. The AWS SDK's configuration is the
//! production one ([`crate::aws::sdk_loader`]) pointed at a closed loopback port, so nothing a
//! unit test does can reach AWS, and a test that needs AWS fails rather than faking it.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Env};
use crate::evidence::Evidence;
use crate::invocation::{Invocations, Start};
use crate::session::SessionFactory;
use crate::tenant::Tenancy;

/// A configuration for `allowlist` with `extra` variables on top of the required ones.
pub fn config(allowlist: &str, extra: &[(&str, &str)]) -> Config {
    let mut pairs = vec![
        ("SCOPED_SECRETS_ROLE_ARN", "arn:aws:iam::123456789012:role/app-secrets"),
        ("SCOPED_SECRETS_SECRETS", allowlist),
        ("AWS_REGION", "us-east-1"),
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
        ("AWS_SESSION_TOKEN", "token-value"),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "secret-key-example"),
        // Port 9 (discard) on loopback: nothing listens, so any call fails at once.
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
    ];
    for (name, value) in extra {
        pairs.retain(|(k, _)| k != name);
        pairs.push((name, value));
    }
    Config::from_env(&Env::from_pairs(pairs)).expect("a valid test configuration")
}

/// A session factory over `config` that can build clients but reach nothing.
pub async fn factory(config: Config) -> (Arc<SessionFactory>, Arc<Tenancy>, Arc<Evidence>) {
    let config = Arc::new(config);
    let sdk = crate::aws::sdk_loader(&config)
        .credentials_provider(aws_credential_types::Credentials::new("AKIDEXAMPLE", "secret", None, None, "test"))
        .load()
        .await;
    let tenancy = Arc::new(Tenancy::new(config.allowlist.clone(), tokio_util::sync::CancellationToken::new()));
    let evidence = Arc::new(Evidence::new(config.allowlist.len()));
    let factory = Arc::new(SessionFactory::new(
        &sdk,
        config,
        Arc::clone(&tenancy),
        Some("testenv1".into()),
        Arc::clone(&evidence),
    ));
    (factory, tenancy, evidence)
}

/// Invocations starting as `start`, with a wait timeout of `wait` and no credential window.
pub async fn invocations(start: Start, wait: Duration) -> Arc<Invocations> {
    let (factory, _, _) = factory(config("app/db", &[])).await;
    Arc::new(Invocations::new(factory, start, wait, None))
}
