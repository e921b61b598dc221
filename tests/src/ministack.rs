//! MiniStack: the local STS, IAM, Secrets Manager and Parameter Store the end-to-end tests run
//! against.
//!
//! [`MiniStack::start`] runs a fresh emulator (IAM enforced: `AUTH=true`) bound to a free
//! loopback port, in its own process group, and kills it when dropped. [`MiniStack::world`]
//! builds what a test needs as the admin (`test`/`test`): an execution role standing in for
//! the Lambda execution role (no Secrets Manager permission, may only assume the scoped
//! role), the scoped role (trusting only the execution role, reading secrets under a prefix)
//! and the secrets themselves.
//!
//! Behaviour of MiniStack 1.5.33 that the tests rely on (measured, see the report in
//! `/work/shared/LOCAL-STACK.md`): denials are HTTP 403 with error code
//! `AccessDeniedException` (Secrets Manager) or `AccessDenied` (STS); tests must match on the
//! code only, because real AWS answers Secrets Manager denials with HTTP 400.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata as _;
use aws_smithy_http_client::tls;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Account id MiniStack is started with (`MINISTACK_ACCOUNT_ID`).
pub const ACCOUNT_ID: &str = "123456789012";
/// Region every client uses.
pub const REGION: &str = "us-east-1";
/// Name of the role standing in for the Lambda execution role.
pub const EXEC_ROLE_NAME: &str = "exec-role";
/// Name of the role the extension assumes for the function.
pub const SCOPED_ROLE_NAME: &str = "scoped-role";
/// Environment variable overriding the path of the `ministack` executable.
pub const MINISTACK_BIN_ENV: &str = "SCOPED_SECRETS_MINISTACK_BIN";

/// How long [`MiniStack::start`] waits for the health endpoint.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval of the health endpoint.
const READY_POLL: Duration = Duration::from_millis(25);
/// Attempts with a fresh port if the emulator exits early (e.g. the port was taken meanwhile).
const START_ATTEMPTS: usize = 3;
/// Bound on every SDK operation the harness makes, so a test fails instead of hanging.
const SDK_OPERATION_TIMEOUT: Duration = Duration::from_secs(15);

/// A running MiniStack, killed (with its whole process group) on drop.
#[derive(Debug)]
pub struct MiniStack {
    child: Option<Child>,
    port: u16,
    log_path: PathBuf,
}

impl MiniStack {
    /// Starts a fresh MiniStack on a free loopback port and waits until it is healthy.
    ///
    /// The executable is `$SCOPED_SECRETS_MINISTACK_BIN`, by default
    /// `<workspace>/target/ministack-venv/bin/ministack`. Its output goes to
    /// `<workspace>/target/ministack-logs/<port>.log`. It is started with IAM enforcement
    /// (`AUTH=true`), bound to `127.0.0.1` only, with a cleared environment (so no
    /// `AWS_*` or persistence setting of the test process leaks into it).
    pub async fn start() -> anyhow::Result<MiniStack> {
        let bin = ministack_bin();
        if !bin.is_file() {
            bail!(
                "MiniStack executable not found at {} (set {MINISTACK_BIN_ENV}, or install it: \
                 python3 -m venv target/ministack-venv && \
                 target/ministack-venv/bin/pip install ministack==1.5.33)",
                bin.display()
            );
        }
        let log_dir = workspace_root().join("target").join("ministack-logs");
        fs::create_dir_all(&log_dir).with_context(|| format!("creating log directory {}", log_dir.display()))?;

        let mut last_error = anyhow!("MiniStack was not started");
        for _ in 0..START_ATTEMPTS {
            let port = free_loopback_port()?;
            let mut stack = Self::spawn(&bin, &log_dir, port)?;
            match stack.wait_ready().await {
                Ok(()) => return Ok(stack),
                Err(error) => {
                    last_error = error;
                    stack.kill();
                }
            }
        }
        Err(last_error)
    }

    fn spawn(bin: &Path, log_dir: &Path, port: u16) -> anyhow::Result<MiniStack> {
        let log_path = log_dir.join(format!("{port}.log"));
        let log = File::create(&log_path).with_context(|| format!("creating log file {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        let mut command = Command::new(bin);
        command
            .env_clear()
            .env("AUTH", "true")
            .env("BIND_HOST", "127.0.0.1")
            .env("GATEWAY_PORT", port.to_string())
            .env("MINISTACK_ACCOUNT_ID", ACCOUNT_ID)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("PERSIST_STATE", "0")
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(log_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // Its own process group, so Drop can kill everything it might spawn.
            .process_group(0);
        for kept in ["PATH", "HOME", "LANG", "TMPDIR"] {
            if let Some(value) = std::env::var_os(kept) {
                command.env(kept, value);
            }
        }
        let child = command.spawn().with_context(|| format!("starting {}", bin.display()))?;
        Ok(MiniStack { child: Some(child), port, log_path })
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let uri: hyper::Uri = format!("{}/_ministack/health", self.endpoint()).parse().context("health URI")?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("polling MiniStack")?
            {
                bail!("MiniStack exited early ({status}) on port {}; see {}", self.port, self.log_path.display());
            }
            let probe = tokio::time::timeout(Duration::from_secs(1), client.get(uri.clone()));
            if let Ok(Ok(response)) = probe.await
                && response.status().is_success()
            {
                // Drain the body so the connection is reused or closed cleanly.
                let _ = response.into_body().collect().await;
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "MiniStack on port {} not healthy after {READY_TIMEOUT:?}; see {}",
                    self.port,
                    self.log_path.display()
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The port MiniStack listens on (loopback only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Freezes the emulator (`SIGSTOP` to its process group): connections are still accepted
    /// by the kernel, but nothing answers until [`MiniStack::resume`]. A hung AWS endpoint.
    pub fn pause(&self) {
        self.signal_group("-STOP");
    }

    /// Lets a paused emulator run again (`SIGCONT`), with all its state.
    pub fn resume(&self) {
        self.signal_group("-CONT");
    }

    fn signal_group(&self, signal: &str) {
        if let Some(child) = self.child.as_ref() {
            let _ = Command::new("kill")
                .args([signal, "--", &format!("-{}", child.id())])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Path of this instance's log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The admin's credentials (`test`/`test`, no session token).
    pub fn admin_credentials() -> StaticCredentials {
        StaticCredentials {
            access_key_id: "test".to_owned(),
            secret_access_key: "test".to_owned(),
            session_token: None,
        }
    }

    /// SDK configuration for the admin: `test`/`test`, `us-east-1`, this endpoint.
    pub fn admin_config(&self) -> SdkConfig {
        Self::admin_credentials().sdk_config(&self.endpoint())
    }

    /// Stops MiniStack now (the same as dropping it).
    pub async fn stop(mut self) {
        self.kill();
    }

    /// Kills the process group, then the child itself, and reaps it. Idempotent.
    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The leader is not reaped yet, so its pid (= the group id) cannot have been reused.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Creates the world a test runs in, as the admin:
    ///
    /// - `exec-role`, trusting the account root, with an inline policy allowing only
    ///   `sts:AssumeRole` on `scoped-role` (no Secrets Manager permission at all);
    /// - `scoped-role`, trusting only `exec-role`, `MaxSessionDuration` 3600, with an inline
    ///   policy allowing `secretsmanager:GetSecretValue` on
    ///   `arn:aws:secretsmanager:us-east-1:123456789012:secret:<scope_prefix>*`,
    ///   `secretsmanager:BatchGetSecretValue` on `*`, and `ssm:GetParameter`/`ssm:GetParameters`
    ///   on `arn:aws:ssm:us-east-1:123456789012:parameter/<scope_prefix>*` (parameters named
    ///   `/<scope_prefix>…`);
    /// - the given secrets `(name, SecretString)`;
    /// - execution credentials: the admin assumes `exec-role` (session `lambda-exec`,
    ///   `DurationSeconds` 3600).
    ///
    /// Role names are fixed, so call it once per MiniStack.
    pub async fn world(&self, scope_prefix: &str, secrets: &[(&str, &str)]) -> anyhow::Result<World> {
        let config = self.admin_config();
        let iam = aws_sdk_iam::Client::new(&config);
        let sts = aws_sdk_sts::Client::new(&config);
        let sm = aws_sdk_secretsmanager::Client::new(&config);

        let exec_role_arn = format!("arn:aws:iam::{ACCOUNT_ID}:role/{EXEC_ROLE_NAME}");
        let scoped_role_arn = format!("arn:aws:iam::{ACCOUNT_ID}:role/{SCOPED_ROLE_NAME}");

        let exec_trust = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT_ID}:root")},
                "Action": "sts:AssumeRole"
            }]
        });
        let exec_role = iam
            .create_role()
            .role_name(EXEC_ROLE_NAME)
            .assume_role_policy_document(exec_trust.to_string())
            .send()
            .await
            .context("creating exec-role")?;
        let exec_policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Action": "sts:AssumeRole",
                "Resource": scoped_role_arn
            }]
        });
        iam.put_role_policy()
            .role_name(EXEC_ROLE_NAME)
            .policy_name("assume-scoped-role")
            .policy_document(exec_policy.to_string())
            .send()
            .await
            .context("putting exec-role's policy")?;

        let scoped_trust = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"AWS": exec_role_arn},
                "Action": "sts:AssumeRole"
            }]
        });
        let scoped_role = iam
            .create_role()
            .role_name(SCOPED_ROLE_NAME)
            .assume_role_policy_document(scoped_trust.to_string())
            .max_session_duration(3600)
            .send()
            .await
            .context("creating scoped-role")?;
        let scoped_policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "secretsmanager:GetSecretValue",
                    "Resource": format!("arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:{scope_prefix}*")
                },
                {
                    "Effect": "Allow",
                    "Action": "secretsmanager:BatchGetSecretValue",
                    "Resource": "*"
                },
                {
                    "Effect": "Allow",
                    "Action": ["ssm:GetParameter", "ssm:GetParameters"],
                    "Resource": format!("arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter/{scope_prefix}*")
                }
            ]
        });
        iam.put_role_policy()
            .role_name(SCOPED_ROLE_NAME)
            .policy_name("read-scoped-secrets")
            .policy_document(scoped_policy.to_string())
            .send()
            .await
            .context("putting scoped-role's policy")?;

        let mut secret_arns = BTreeMap::new();
        for (name, value) in secrets {
            let created = sm
                .create_secret()
                .name(*name)
                .secret_string(*value)
                .send()
                .await
                .with_context(|| format!("creating secret {name}"))?;
            let arn = created.arn().ok_or_else(|| anyhow!("CreateSecret {name} returned no ARN"))?;
            secret_arns.insert((*name).to_owned(), arn.to_owned());
        }

        let assumed = sts
            .assume_role()
            .role_arn(&exec_role_arn)
            .role_session_name("lambda-exec")
            .duration_seconds(3600)
            .send()
            .await
            .context("assuming exec-role as admin")?;
        let credentials =
            assumed.credentials().ok_or_else(|| anyhow!("AssumeRole exec-role returned no credentials"))?;
        let exec_credentials = StaticCredentials {
            access_key_id: credentials.access_key_id().to_owned(),
            secret_access_key: credentials.secret_access_key().to_owned(),
            session_token: Some(credentials.session_token().to_owned()),
        };

        Ok(World {
            account_id: ACCOUNT_ID.to_owned(),
            region: REGION.to_owned(),
            exec_role_arn,
            exec_role_id: role_id(exec_role.role())?,
            scoped_role_arn,
            scoped_role_name: SCOPED_ROLE_NAME.to_owned(),
            scoped_role_id: role_id(scoped_role.role())?,
            exec_credentials,
            secret_arns,
        })
    }

    /// `PutSecretValue` as the admin: `new_value` becomes `AWSCURRENT`, the old current
    /// version `AWSPREVIOUS`.
    pub async fn rotate(&self, name: &str, new_value: &str) -> anyhow::Result<()> {
        aws_sdk_secretsmanager::Client::new(&self.admin_config())
            .put_secret_value()
            .secret_id(name)
            .secret_string(new_value)
            .send()
            .await
            .with_context(|| format!("rotating secret {name}"))?;
        Ok(())
    }

    /// `PutParameter` as the admin: creates `name` (or, with `overwrite`, a new version of it)
    /// of `kind` (`String`, `StringList`, `SecureString`), encrypted with `key_id` if given.
    /// Returns the version.
    pub async fn put_parameter(
        &self,
        name: &str,
        value: &str,
        kind: &str,
        key_id: Option<&str>,
        overwrite: bool,
    ) -> anyhow::Result<i64> {
        let put = aws_sdk_ssm::Client::new(&self.admin_config())
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::from(kind))
            .set_key_id(key_id.map(str::to_owned))
            .overwrite(overwrite)
            .send()
            .await
            .with_context(|| format!("putting parameter {name}"))?;
        Ok(put.version())
    }

    /// `LabelParameterVersion` as the admin.
    pub async fn label_parameter(&self, name: &str, version: i64, label: &str) -> anyhow::Result<()> {
        aws_sdk_ssm::Client::new(&self.admin_config())
            .label_parameter_version()
            .name(name)
            .parameter_version(version)
            .labels(label)
            .send()
            .await
            .with_context(|| format!("labelling {name}:{version}"))?;
        Ok(())
    }

    /// `PutRolePolicy` as the admin (creates or replaces an inline policy). MiniStack applies
    /// it on the very next call; real IAM takes seconds to minutes.
    pub async fn put_role_policy(
        &self,
        role_name: &str,
        policy_name: &str,
        document: &serde_json::Value,
    ) -> anyhow::Result<()> {
        aws_sdk_iam::Client::new(&self.admin_config())
            .put_role_policy()
            .role_name(role_name)
            .policy_name(policy_name)
            .policy_document(document.to_string())
            .send()
            .await
            .with_context(|| format!("putting policy {policy_name} on {role_name}"))?;
        Ok(())
    }
}

impl Drop for MiniStack {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Credentials handed to processes as environment variables.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, absent for the admin's long-term keys.
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl StaticCredentials {
    /// SDK configuration using these credentials against `endpoint` (`us-east-1`, plain
    /// HTTP to loopback through the rustls/ring client, no proxy, 15 s operation timeout).
    pub fn sdk_config(&self, endpoint: &str) -> SdkConfig {
        let credentials = Credentials::new(
            self.access_key_id.clone(),
            self.secret_access_key.clone(),
            self.session_token.clone(),
            None,
            "scoped-secrets-tests",
        );
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(endpoint)
            .credentials_provider(SharedCredentialsProvider::new(credentials))
            .http_client(http_client)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder().operation_timeout(SDK_OPERATION_TIMEOUT).build(),
            )
            .build()
    }

    /// The pairs to put into a child process's environment.
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
        ];
        if let Some(token) = &self.session_token {
            vars.push(("AWS_SESSION_TOKEN", token.clone()));
        }
        vars
    }
}

/// The world a test runs in: roles and secrets created as the admin.
#[derive(Debug, Clone)]
pub struct World {
    /// `123456789012`.
    pub account_id: String,
    /// `us-east-1`.
    pub region: String,
    /// `arn:aws:iam::123456789012:role/exec-role`.
    pub exec_role_arn: String,
    /// The execution role's unique id (`AROA…`), the prefix of its sessions' `aws:userid`.
    pub exec_role_id: String,
    /// `arn:aws:iam::123456789012:role/scoped-role`.
    pub scoped_role_arn: String,
    /// `scoped-role`.
    pub scoped_role_name: String,
    /// The scoped role's unique id (`AROA…`): its sessions' `aws:userid` is
    /// `<id>:<RoleSessionName>`.
    pub scoped_role_id: String,
    /// Credentials of an `exec-role` session (valid one hour): what Lambda would give the
    /// extension and the function.
    pub exec_credentials: StaticCredentials,
    /// Secret name → ARN (`…:secret:<name>-xxxxxx`).
    pub secret_arns: BTreeMap<String, String>,
}

/// Calls `GetSecretValue` directly with `creds` against `endpoint`.
///
/// `Ok(SecretString)`, or `Err(code)` with the AWS error code (e.g. `AccessDeniedException`,
/// `ResourceNotFoundException`, `UnrecognizedClientException`); an error without a code
/// (connection failure, timeout) is `Err("NoErrorCode: <details>")`.
pub async fn read_secret_as(endpoint: &str, creds: &StaticCredentials, secret_id: &str) -> Result<String, String> {
    let client = aws_sdk_secretsmanager::Client::new(&creds.sdk_config(endpoint));
    match client.get_secret_value().secret_id(secret_id).send().await {
        Ok(output) => output.secret_string().map(str::to_owned).ok_or_else(|| "NoSecretString".to_owned()),
        Err(error) => Err(match error.code() {
            Some(code) => code.to_owned(),
            None => format!("NoErrorCode: {}", aws_sdk_secretsmanager::error::DisplayErrorContext(&error)),
        }),
    }
}

/// Calls `GetParameter` directly with `creds` against `endpoint` (with decryption).
///
/// `Ok(Value)`, or `Err(code)` with the AWS error code (e.g. `AccessDeniedException`,
/// `ParameterNotFound`); an error without a code is `Err("NoErrorCode: <details>")`.
pub async fn read_parameter_as(endpoint: &str, creds: &StaticCredentials, name: &str) -> Result<String, String> {
    use aws_sdk_ssm::error::ProvideErrorMetadata as _;
    let client = aws_sdk_ssm::Client::new(&creds.sdk_config(endpoint));
    match client.get_parameter().name(name).with_decryption(true).send().await {
        Ok(output) => output.parameter().and_then(|p| p.value()).map(str::to_owned).ok_or_else(|| "NoValue".to_owned()),
        Err(error) => Err(match error.code() {
            Some(code) => code.to_owned(),
            None => format!("NoErrorCode: {}", aws_sdk_ssm::error::DisplayErrorContext(&error)),
        }),
    }
}

/// Calls `GetParameters` directly with `creds` against `endpoint` (with decryption): the
/// values found and the names AWS reports invalid, or the error code.
pub async fn read_parameters_as(
    endpoint: &str,
    creds: &StaticCredentials,
    names: &[&str],
) -> Result<(Vec<String>, Vec<String>), String> {
    use aws_sdk_ssm::error::ProvideErrorMetadata as _;
    let client = aws_sdk_ssm::Client::new(&creds.sdk_config(endpoint));
    let names = names.iter().map(|n| (*n).to_owned()).collect();
    match client.get_parameters().set_names(Some(names)).with_decryption(true).send().await {
        Ok(output) => Ok((
            output.parameters().iter().filter_map(|p| p.value().map(str::to_owned)).collect(),
            output.invalid_parameters().to_vec(),
        )),
        Err(error) => Err(error.code().unwrap_or("NoErrorCode").to_owned()),
    }
}

fn role_id(role: Option<&aws_sdk_iam::types::Role>) -> anyhow::Result<String> {
    role.map(|role| role.role_id().to_owned()).ok_or_else(|| anyhow!("CreateRole returned no role"))
}

/// The cargo workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

fn ministack_bin() -> PathBuf {
    std::env::var_os(MINISTACK_BIN_ENV).map_or_else(
        || workspace_root().join("target").join("ministack-venv").join("bin").join("ministack"),
        PathBuf::from,
    )
}

/// A loopback port that is free now, for a server the test is about to start.
///
/// Taken below the kernel's ephemeral range (32768–60999 here), from a counter that starts
/// at a point drawn from the process id: a port from `bind(0)` is an ephemeral one, which an
/// outgoing connection (to MiniStack, the Lambda API) may take between our release and the
/// server's bind; that raced as "Address in use" about once in a few full runs.
pub fn free_loopback_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000; // 20000..32000, below the ephemeral range
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let seed = std::process::id().wrapping_mul(7_919) % COUNT;
    let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..COUNT {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % COUNT;
        let port = u16::try_from(FIRST + offset).context("port range")?;
        if TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}

#[cfg(test)]
#[allow(clippy::expect_used)] // Tests may panic with a reason.
mod tests {
    use super::*;

    fn session_policy(resources: &str, until: Option<&str>) -> serde_json::Value {
        let condition = until
            .map_or(serde_json::Value::Null, |until| serde_json::json!({"DateLessThan": {"aws:CurrentTime": until}}));
        let mut statements = vec![
            serde_json::json!({"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": resources}),
            serde_json::json!({"Effect": "Allow", "Action": "secretsmanager:BatchGetSecretValue", "Resource": "*"}),
        ];
        if !condition.is_null() {
            for statement in &mut statements {
                statement["Condition"] = condition.clone();
            }
        }
        serde_json::json!({"Version": "2012-10-17", "Statement": statements})
    }

    async fn assume_scoped(stack: &MiniStack, world: &World, policy: &serde_json::Value) -> StaticCredentials {
        let sts = aws_sdk_sts::Client::new(&world.exec_credentials.sdk_config(&stack.endpoint()));
        let out = sts
            .assume_role()
            .role_arn(&world.scoped_role_arn)
            .role_session_name("ss-env-test")
            .duration_seconds(900)
            .policy(policy.to_string())
            .send()
            .await
            .expect("exec-role may assume scoped-role");
        let c = out.credentials().expect("credentials");
        StaticCredentials {
            access_key_id: c.access_key_id().to_owned(),
            secret_access_key: c.secret_access_key().to_owned(),
            session_token: Some(c.session_token().to_owned()),
        }
    }

    #[tokio::test]
    async fn scoped_session_reads_only_what_its_policies_allow() {
        let stack = MiniStack::start().await.expect("MiniStack starts");
        let world = stack
            .world("app/", &[("app/db", "db-v1"), ("app/api", "api-v1"), ("other/x", "x-v1")])
            .await
            .expect("world");
        let ep = stack.endpoint();
        assert_eq!(world.secret_arns.len(), 3);
        assert!(
            world.secret_arns["app/db"].starts_with("arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-")
        );
        assert!(world.scoped_role_id.starts_with("AROA"));

        // The admin reads everything; the execution role reads nothing.
        assert_eq!(read_secret_as(&ep, &MiniStack::admin_credentials(), "other/x").await, Ok("x-v1".to_owned()));
        assert_eq!(
            read_secret_as(&ep, &world.exec_credentials, "app/db").await,
            Err("AccessDeniedException".to_owned())
        );

        // Session narrowed to app/db.
        let db_arn = format!("arn:aws:secretsmanager:{}:{}:secret:app/db-??????", world.region, world.account_id);
        let creds = assume_scoped(&stack, &world, &session_policy(&db_arn, None)).await;
        assert_eq!(read_secret_as(&ep, &creds, "app/db").await, Ok("db-v1".to_owned()));
        assert_eq!(read_secret_as(&ep, &creds, &world.secret_arns["app/db"]).await, Ok("db-v1".to_owned()));
        assert_eq!(read_secret_as(&ep, &creds, "app/api").await, Err("AccessDeniedException".to_owned()));
        assert_eq!(read_secret_as(&ep, &creds, "other/x").await, Err("AccessDeniedException".to_owned()));

        // Without a session policy the role policy alone still stops at the prefix.
        let wide = assume_scoped(&stack, &world, &session_policy("*", None)).await;
        assert_eq!(read_secret_as(&ep, &wide, "app/api").await, Ok("api-v1".to_owned()));
        assert_eq!(read_secret_as(&ep, &wide, "other/x").await, Err("AccessDeniedException".to_owned()));

        // The trust policy is enforced: the admin may not assume scoped-role directly.
        let admin_sts = aws_sdk_sts::Client::new(&stack.admin_config());
        let denied = admin_sts
            .assume_role()
            .role_arn(&world.scoped_role_arn)
            .role_session_name("admin")
            .send()
            .await
            .expect_err("trust policy refuses the admin");
        assert_eq!(denied.code(), Some("AccessDenied"));

        // Bad keys are refused, not mistaken for a denial.
        let bogus = StaticCredentials {
            access_key_id: "ASIABOGUS".to_owned(),
            secret_access_key: "nope".to_owned(),
            session_token: Some("nope".to_owned()),
        };
        assert_eq!(read_secret_as(&ep, &bogus, "app/db").await, Err("UnrecognizedClientException".to_owned()));
        stack.stop().await;
    }

    #[tokio::test]
    async fn current_time_condition_ends_a_session() {
        let stack = MiniStack::start().await.expect("MiniStack starts");
        let world = stack.world("app/", &[("app/db", "db-v1")]).await.expect("world");
        let ep = stack.endpoint();
        let until = std::time::SystemTime::now() + Duration::from_secs(3);
        let until = iso8601(until);
        let creds = assume_scoped(&stack, &world, &session_policy("*", Some(&until))).await;
        assert_eq!(read_secret_as(&ep, &creds, "app/db").await, Ok("db-v1".to_owned()));
        tokio::time::sleep(Duration::from_millis(4_200)).await;
        assert_eq!(read_secret_as(&ep, &creds, "app/db").await, Err("AccessDeniedException".to_owned()));
    }

    #[tokio::test]
    async fn rotate_makes_a_new_current_version() {
        let stack = MiniStack::start().await.expect("MiniStack starts");
        let _world = stack.world("app/", &[("app/db", "db-v1")]).await.expect("world");
        stack.rotate("app/db", "db-v2").await.expect("rotate");
        let ep = stack.endpoint();
        let admin = MiniStack::admin_credentials();
        assert_eq!(read_secret_as(&ep, &admin, "app/db").await, Ok("db-v2".to_owned()));
        let sm = aws_sdk_secretsmanager::Client::new(&stack.admin_config());
        let previous = sm
            .get_secret_value()
            .secret_id("app/db")
            .version_stage("AWSPREVIOUS")
            .send()
            .await
            .expect("AWSPREVIOUS exists");
        assert_eq!(previous.secret_string(), Some("db-v1"));
        assert_eq!(read_secret_as(&ep, &admin, "app/missing").await, Err("ResourceNotFoundException".to_owned()));
    }

    #[tokio::test]
    async fn drop_kills_the_emulator() {
        let stack = MiniStack::start().await.expect("MiniStack starts");
        let port = stack.port();
        assert!(stack.log_path().is_file());
        drop(stack);
        assert!(std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(), "nothing listens after drop");
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, Howard Hinnant's algorithm).
    fn iso8601(t: std::time::SystemTime) -> String {
        let secs = t.duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3_600, rem % 3_600 / 60, rem % 60)
    }
}
