//! Test support for scoped-secrets: the real AWS emulator, the real Lambda environment, and a
//! recording proxy between the extension and AWS. Nothing here answers for AWS.
//!
//! # Layout
//! - [`ministack`]: starts MiniStack (IAM enforced, loopback only) and builds a world in it:
//!   an execution role, a scoped role, secrets.
//! - [`aws_proxy`]: a transparent recording proxy, so tests count the extension's AWS calls and
//!   read the credentials AssumeRole returned (to prove AWS refuses them).
//! - [`lambda`]: the local Lambda environment (`lambda-simulator`, wrapped where it falls short);
//!   [`runtime_api`]: a Runtime API of its own for concurrent invocations (Managed Instances);
//!   [`runtime_client`]: a runtime's side of the Runtime API, for tests that play the runtime.
//! - [`container`]: a local container-credentials endpoint (SnapStart's credentials).
//! - [`examples`]: the example functions in Rust, Python and Node.js, each started with its
//!   runtime interface client.
//! - [`Stack`]: all three together, as each end-to-end test and the demo use them.

// Test support prints on purpose (process output echo, the demo) and may `expect` with a reason.
#![allow(clippy::print_stderr, clippy::print_stdout, clippy::expect_used)]

pub mod aws_proxy;
pub mod container;
pub mod examples;
pub mod faults;
pub mod lambda;
pub mod ministack;
#[cfg(test)]
mod ministack_ssm;
pub mod runtime_api;
pub mod runtime_client;

use std::time::Duration;

use anyhow::Context;

use crate::aws_proxy::AwsProxy;
use crate::lambda::{Environment, InitFailed, Options};
use crate::ministack::{MiniStack, World};

/// The secrets every test world has: two the function may read, two it may not.
pub const SECRETS: &[(&str, &str)] = &[
    ("app/db", "canary-db-7f3a9c1e-value"),
    ("app/api", "canary-api-51d2b8e0-value"),
    ("app/other", "canary-other-9e44c2aa-value"),
    ("other/x", "canary-x-0b6f17d3-value"),
];

/// MiniStack, a world in it, and the recording proxy the extension talks through.
pub struct Stack {
    /// The emulator.
    pub ministack: MiniStack,
    /// Roles, credentials and secrets.
    pub world: World,
    /// The extension's `AWS_ENDPOINT_URL`.
    pub proxy: AwsProxy,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack").field("endpoint", &self.ministack.endpoint()).finish_non_exhaustive()
    }
}

impl Stack {
    /// Starts MiniStack with [`SECRETS`], the scoped role reaching `app/*`.
    pub async fn start() -> anyhow::Result<Stack> {
        Self::start_with("app/", SECRETS).await
    }

    /// Starts MiniStack with `secrets`, the scoped role reaching `scope_prefix*`.
    pub async fn start_with(scope_prefix: &str, secrets: &[(&str, &str)]) -> anyhow::Result<Stack> {
        let ministack = MiniStack::start().await?;
        let world = ministack.world(scope_prefix, secrets).await?;
        let proxy = AwsProxy::start(ministack.endpoint()).await?;
        Ok(Stack { ministack, world, proxy })
    }

    /// The function's environment: the execution role's credentials, the extension's
    /// configuration for `allowlist` on `port`, and `extra` on top.
    pub fn function_env(&self, allowlist: &str, port: u16, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            self.world.exec_credentials.env_vars().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        env.extend([
            ("AWS_ENDPOINT_URL".to_owned(), self.proxy.endpoint()),
            ("SCOPED_SECRETS_ROLE_ARN".to_owned(), self.world.scoped_role_arn.clone()),
            ("SCOPED_SECRETS_SECRETS".to_owned(), allowlist.to_owned()),
            ("SCOPED_SECRETS_PORT".to_owned(), port.to_string()),
            // Point the function's SDK at the extension. The extension sees them too and must
            // never follow them (it would call itself): every test runs with them set.
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER".to_owned(), format!("http://127.0.0.1:{port}")),
            ("AWS_ENDPOINT_URL_SSM".to_owned(), format!("http://127.0.0.1:{port}")),
        ]);
        for (name, value) in extra {
            env.retain(|(k, _)| k != name);
            env.push(((*name).to_owned(), (*value).to_owned()));
        }
        env
    }

    /// The environment of a SnapStart function: no `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
    /// or `AWS_SESSION_TOKEN`, but `container`'s URI and token, as Lambda sets them.
    pub fn snap_start_env(
        &self,
        allowlist: &str,
        port: u16,
        container: &crate::container::ContainerCredentials,
        extra: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let mut env = self.function_env(allowlist, port, extra);
        env.retain(|(name, _)| {
            !["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"].contains(&name.as_str())
        });
        env.extend([
            ("AWS_LAMBDA_INITIALIZATION_TYPE".to_owned(), "snap-start".to_owned()),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI".to_owned(), container.full_uri()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN".to_owned(), container.token().to_owned()),
        ]);
        env
    }

    /// Starts a Lambda environment with the Rust example function, whose INIT must succeed.
    pub async fn environment(&self, allowlist: &str, extra: &[(&str, &str)]) -> anyhow::Result<(Environment, u16)> {
        self.environment_with(allowlist, extra, Options::default()).await
    }

    /// Starts a Lambda environment running `options`' processes, with this stack's function
    /// environment for `allowlist` and `extra`, whose INIT must succeed.
    pub async fn environment_with(
        &self,
        allowlist: &str,
        extra: &[(&str, &str)],
        options: Options,
    ) -> anyhow::Result<(Environment, u16)> {
        let port = lambda::free_port()?;
        let options = Options { env: self.function_env(allowlist, port, extra), ..options };
        match Environment::start(options).await? {
            Ok(environment) => Ok((environment, port)),
            Err(InitFailed { reported, output, .. }) => {
                anyhow::bail!("INIT failed: {reported:?}\n{}", output.text())
            }
        }
    }

    /// The execution role's session token: the local API's token.
    pub fn token(&self) -> String {
        self.world.exec_credentials.session_token.clone().unwrap_or_default()
    }

    /// Waits (bounded) until `condition` holds for the proxy's records.
    pub async fn wait_until(&self, what: &str, condition: impl Fn(&AwsProxy) -> bool) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !condition(&self.proxy) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .with_context(|| format!("timed out waiting for {what}"))
    }
}

impl Stack {
    /// Lets the execution role read and write the scoped role's inline policies, as the SAM
    /// template does in `deny` revocation mode.
    pub async fn grant_revocation(&self) -> anyhow::Result<()> {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Action": ["iam:GetRolePolicy", "iam:PutRolePolicy", "iam:DeleteRolePolicy"],
                "Resource": self.world.scoped_role_arn,
            }]
        });
        self.ministack.put_role_policy(crate::ministack::EXEC_ROLE_NAME, "revocation", &policy).await
    }

    /// The scoped role's revocation policy statements, read as admin (empty if none).
    pub async fn revocation_statements(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let iam = aws_sdk_iam::Client::new(&self.ministack.admin_config());
        let answer = iam
            .get_role_policy()
            .role_name(&self.world.scoped_role_name)
            .policy_name("scoped-secrets-revocations")
            .send()
            .await;
        let Ok(output) = answer else { return Ok(Vec::new()) };
        scoped_secrets::revocation::statements_of(&output.policy_document).context("the revocation policy is not JSON")
    }
}

/// SHA-256 of `text`, hex, as the example function reports it.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}
