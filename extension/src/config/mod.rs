//! Configuration: the function's environment, read once into an immutable, typed [`Config`].
//!
//! Every option has a default and a range (the README keeps the table). A rejection is a
//! [`ConfigError`] whose message is a full sentence naming the variable, so the extension can
//! post it to `init/error` and the function fails loudly at INIT. Values that are credentials
//! (the function's session token) are never echoed back in an error.

use std::time::Duration;

pub mod allowlist;
mod endpoint;
pub mod env;
mod kms;
pub mod token;

pub use self::env::Env;
pub use self::token::LocalToken;
use crate::config::allowlist::Allowlist;
use crate::domain::arn::{RoleArn, is_region};
use crate::domain::item::Kind;

/// A configuration value that was rejected, with a sentence that says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable} {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub variable: &'static str,
    /// What is wrong, completing the sentence that starts with the variable's name.
    pub reason: String,
}

impl ConfigError {
    fn new(variable: &'static str, reason: impl Into<String>) -> Self {
        Self { variable, reason: reason.into() }
    }
}

/// How Lambda started this execution environment (`AWS_LAMBDA_INITIALIZATION_TYPE`).
/// See <https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html>.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitializationType {
    /// The ordinary life: INIT, then invocations (also any value this version does not know).
    OnDemand,
    /// INIT may run long before the first invocation: the init scope's sessions last one
    /// fetch each, so none waits in memory for the first INVOKE.
    ProvisionedConcurrency,
    /// The micro-VM is snapshotted after INIT and restored later, perhaps many times: nothing
    /// credential-bearing or random is made before the first INVOKE after restore.
    SnapStart,
    /// Lambda Managed Instances: only SHUTDOWN can be registered, invocations run
    /// concurrently in one long-lived environment; sessions last one fetch each.
    ManagedInstances,
}

impl EndOfInvocation {
    /// The value as configured, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EndOfInvocation::Auto => "auto",
            EndOfInvocation::RuntimeDone => "runtime-done",
            EndOfInvocation::NextInvoke => "next-invoke",
        }
    }
}

impl InitializationType {
    /// The value Lambda sets, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            InitializationType::OnDemand => "on-demand",
            InitializationType::ProvisionedConcurrency => "provisioned-concurrency",
            InitializationType::SnapStart => "snap-start",
            InitializationType::ManagedInstances => "lambda-managed-instances",
        }
    }
}

/// The credentials the function's own SDK signs with, to verify SDK-protocol requests.
#[derive(Debug, Clone)]
pub enum FunctionCredentialSource {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` (on-demand and the like).
    Environment(crate::sigv4::FunctionCredentials),
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` (SnapStart): read through the SDK's default chain,
    /// as the function's SDK reads them, and only when a signed request arrives after restore.
    Container,
    /// Neither: SDK-protocol requests are refused.
    Absent,
}

/// When an invocation's scope ends (its session is wiped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOfInvocation {
    /// The default: at the function's `/response` or `/error` as the Runtime API proxy forwards
    /// it (no wait), and at `platform.runtimeDone` for an invocation whose runtime does not
    /// come through the proxy (the function is not started through the wrapper), whichever
    /// comes first; the next event is asked for only then.
    Auto,
    /// At `platform.runtimeDone`, before asking for the next event: nothing credential-bearing
    /// waits in a frozen environment. Costs the Telemetry API's buffering (≥ 25 ms) of
    /// post-response time per invocation.
    RuntimeDone,
    /// At the next INVOKE, or at the deadline if the environment is running then: no
    /// post-response time, but the session waits in the frozen environment (AWS still refuses
    /// it after the deadline: the session policy's bound does not change).
    NextInvoke,
}

/// What SHUTDOWN does about sessions whose policy bound is still in the future.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationMode {
    /// Wipe them from memory and report them; AWS refuses them at their bound.
    Wipe,
    /// Also write a deny statement on the scoped role that refuses them at once.
    Deny,
}

/// Where the extension sends its own AWS calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AwsEndpoints {
    /// `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL`, else the SDK's default.
    pub sts: Option<String>,
    /// `AWS_ENDPOINT_URL` only: `AWS_ENDPOINT_URL_SECRETS_MANAGER` points the *function* at
    /// this extension, and following it would make the extension call itself.
    pub secrets_manager: Option<String>,
    /// `AWS_ENDPOINT_URL` only, for the same reason (`AWS_ENDPOINT_URL_SSM`).
    pub ssm: Option<String>,
    /// `AWS_ENDPOINT_URL_IAM`, else `AWS_ENDPOINT_URL`, else the SDK's default (deny mode only).
    pub iam: Option<String>,
}

/// The extension's whole configuration, parsed once at INIT.
#[derive(Debug, Clone)]
pub struct Config {
    /// The role each session assumes.
    pub role_arn: RoleArn,
    /// The secrets and parameters the function may read, with their local aliases.
    pub allowlist: Allowlist,
    /// Local API port on 127.0.0.1.
    pub port: u16,
    /// How long a fetched secret may be served without asking AWS again; zero means nothing
    /// survives the invocation that fetched it.
    pub cache_ttl: Duration,
    /// Fetch the allowlisted secrets at INVOKE, overlapped with the function's start.
    pub prefetch: bool,
    /// `DurationSeconds` of every `AssumeRole`.
    pub session_duration: Duration,
    /// Added to the invocation's deadline to form the session policy's `aws:CurrentTime` bound.
    pub deadline_margin: Duration,
    /// How long a local request may wait for its invocation's session.
    pub request_wait_timeout: Duration,
    /// Bound on each call to AWS (connect to answer).
    pub upstream_timeout: Duration,
    /// Concurrent local connections; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long the function's INIT may use the init session.
    pub init_budget: Duration,
    /// The AWS region of the function.
    pub region: String,
    /// Endpoint overrides for the extension's own clients.
    pub endpoints: AwsEndpoints,
    /// `host:port` of the Lambda Runtime and Extensions APIs.
    pub runtime_api: String,
    /// Port of the Runtime API proxy on 127.0.0.1 (`None`: no proxy).
    pub runtime_proxy_port: Option<u16>,
    /// The token local callers must present.
    pub local_token: LocalToken,
    /// Lambda's initialisation type.
    pub initialization_type: InitializationType,
    /// A value of `AWS_LAMBDA_INITIALIZATION_TYPE` this version does not know (printable
    /// characters only, at most 64): logged, and run as `on-demand`.
    pub unrecognised_initialization_type: Option<String>,
    /// When an invocation's session is wiped.
    pub end_of_invocation: EndOfInvocation,
    /// A session's policy bound is at most this long after it was issued (`None`: only the
    /// invocation's deadline bounds it); a read after it assumes a fresh session.
    pub credential_window: Option<Duration>,
    /// What SHUTDOWN does about sessions still valid at AWS.
    pub revocation: RevocationMode,
    /// Characters the revocation inline policy may use (the role's inline policies share 10,240).
    pub revocation_policy_budget: usize,
    /// CloudWatch Embedded Metric Format namespace; `None` turns metrics off.
    pub metrics_namespace: Option<String>,
    /// The function's name, the metrics' one dimension.
    pub function_name: String,
    /// Keep connections to AWS open between calls. Off by default: an idle connection's
    /// buffers still hold its last request's session token and its last answer (an
    /// AssumeRole answer holds the secret key), and memory in use is never wiped.
    pub upstream_keep_alive: bool,
    /// The function's own credentials (Lambda gives the extension the same ones), to verify
    /// the signatures of SDK-protocol requests.
    pub function_credentials: FunctionCredentialSource,
}

/// Variable names, in one place so the README and the errors agree.
pub mod var {
    #![allow(missing_docs)]
    pub const ROLE_ARN: &str = "SCOPED_SECRETS_ROLE_ARN";
    pub const SECRETS: &str = "SCOPED_SECRETS_SECRETS";
    pub const PARAMETERS: &str = "SCOPED_SECRETS_PARAMETERS";
    pub const PORT: &str = "SCOPED_SECRETS_PORT";
    pub const CACHE_TTL: &str = "SCOPED_SECRETS_CACHE_TTL";
    pub const PREFETCH: &str = "SCOPED_SECRETS_PREFETCH";
    pub const SESSION_DURATION: &str = "SCOPED_SECRETS_SESSION_DURATION";
    pub const DEADLINE_MARGIN_MS: &str = "SCOPED_SECRETS_DEADLINE_MARGIN_MS";
    pub const REQUEST_WAIT_TIMEOUT_MS: &str = "SCOPED_SECRETS_REQUEST_WAIT_TIMEOUT_MS";
    pub const UPSTREAM_TIMEOUT_MS: &str = "SCOPED_SECRETS_UPSTREAM_TIMEOUT_MS";
    pub const MAX_CONNECTIONS: &str = "SCOPED_SECRETS_MAX_CONNECTIONS";
    pub const INIT_BUDGET_MS: &str = "SCOPED_SECRETS_INIT_BUDGET_MS";
    pub const LOG_LEVEL: &str = "SCOPED_SECRETS_LOG_LEVEL";
    pub const END_OF_INVOCATION: &str = "SCOPED_SECRETS_END_OF_INVOCATION";
    pub const CREDENTIAL_WINDOW: &str = "SCOPED_SECRETS_CREDENTIAL_WINDOW";
    pub const REVOCATION: &str = "SCOPED_SECRETS_REVOCATION";
    pub const REVOCATION_POLICY_BUDGET: &str = "SCOPED_SECRETS_REVOCATION_POLICY_BUDGET";
    pub const METRICS_NAMESPACE: &str = "SCOPED_SECRETS_METRICS_NAMESPACE";
    pub const UPSTREAM_KEEP_ALIVE: &str = "SCOPED_SECRETS_UPSTREAM_KEEP_ALIVE";
    pub const KMS_KEYS: &str = "SCOPED_SECRETS_KMS_KEYS";
    pub const RUNTIME_PROXY_PORT: &str = "SCOPED_SECRETS_RUNTIME_PROXY_PORT";
}

/// The Runtime API proxy's default port. Lambda reserves 9001 (its own Runtime API); 2772 and
/// 2773 are AWS's AppConfig and Parameters and Secrets extensions (and 2773 this extension's
/// local API); 9009 is the port AWS's Runtime API proxy samples default to, so another proxy
/// extension is likely there; 8080 is the Lambda Web Adapter's; 4317 and 4318 are the
/// OpenTelemetry collector's; 8124 to 8126 are Datadog's; Linux draws outgoing connections' and
/// port-0 listeners' ports (the telemetry listener's) from 32768 to 60999; below 1024 needs a
/// privilege a function does not have. 2774 is none of these, next to the local API's port.
pub const DEFAULT_RUNTIME_PROXY_PORT: u16 = 2774;

/// `SCOPED_SECRETS_RUNTIME_PROXY_PORT`: the port (1024–65535, default 2774), `None` for `off`;
/// read first, as the proxy is bound before registering (the runtime may start right after).
///
/// # Errors
/// A value that is neither a port in range nor `off`.
pub fn runtime_proxy_port(env: &Env) -> Result<Option<u16>, ConfigError> {
    match env.get(var::RUNTIME_PROXY_PORT).map(str::trim) {
        None => Ok(Some(DEFAULT_RUNTIME_PROXY_PORT)),
        Some("off") => Ok(None),
        Some(raw) => match raw.parse::<u16>() {
            Ok(port) if port >= 1024 => Ok(Some(port)),
            _ => Err(ConfigError::new(
                var::RUNTIME_PROXY_PORT,
                format!("must be a port from 1024 to 65535, or off (got {raw:?})."),
            )),
        },
    }
}

impl Config {
    /// Reads and validates the whole configuration.
    ///
    /// # Errors
    /// The first rejected variable, as a sentence fit for `init/error`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let role_arn =
            RoleArn::parse(required(env, var::ROLE_ARN)?).map_err(|reason| ConfigError::new(var::ROLE_ARN, reason))?;
        let region = required(env, "AWS_REGION")?.to_owned();
        if !is_region(&region) {
            return Err(ConfigError::new("AWS_REGION", "must be a region name such as us-east-1."));
        }
        let (secrets, parameters) = (env.get(var::SECRETS).unwrap_or(""), env.get(var::PARAMETERS).unwrap_or(""));
        let allowlist = Allowlist::parse_lists(secrets, parameters, &role_arn, &region).map_err(|(kind, error)| {
            ConfigError::new(if kind == Kind::Secret { var::SECRETS } else { var::PARAMETERS }, error.to_string())
        })?;
        if allowlist.is_empty() {
            return Err(ConfigError::new(
                var::SECRETS,
                format!("and {} are both empty; list at least one secret or parameter.", var::PARAMETERS),
            ));
        }
        let allowlist = match env.get(var::KMS_KEYS).map(str::trim).filter(|v| !v.is_empty()) {
            Some(raw) => allowlist.with_kms(
                kms::kms_grant(raw, &role_arn, &region).map_err(|reason| ConfigError::new(var::KMS_KEYS, reason))?,
            ),
            None => allowlist,
        };
        let port = number(env, var::PORT, 2773, 1, 65_535)?;
        let port = u16::try_from(port).map_err(|_| ConfigError::new(var::PORT, "is out of range."))?;
        let cache_ttl = Duration::from_secs(number(env, var::CACHE_TTL, 300, 0, 86_400)?);
        let prefetch = boolean(env, var::PREFETCH, true)?;
        let session_duration = Duration::from_secs(number(env, var::SESSION_DURATION, 900, 900, 3_600)?);
        let deadline_margin = Duration::from_millis(number(env, var::DEADLINE_MARGIN_MS, 2_000, 0, 60_000)?);
        let request_wait_timeout = Duration::from_millis(number(env, var::REQUEST_WAIT_TIMEOUT_MS, 5_000, 1, 60_000)?);
        let upstream_timeout = Duration::from_millis(number(env, var::UPSTREAM_TIMEOUT_MS, 5_000, 100, 60_000)?);
        let max_connections = number(env, var::MAX_CONNECTIONS, 128, 1, 4_096)?;
        let max_connections =
            usize::try_from(max_connections).map_err(|_| ConfigError::new(var::MAX_CONNECTIONS, "is out of range."))?;
        let init_budget = Duration::from_millis(number(env, var::INIT_BUDGET_MS, 10_000, 1_000, 900_000)?);
        let runtime_api = required(env, "AWS_LAMBDA_RUNTIME_API")?.to_owned();
        // SnapStart has no AWS_SESSION_TOKEN: the container-credentials token stands in, as
        // in AWS's own Parameters and Secrets extension.
        let local_token = match env.get("AWS_SESSION_TOKEN").or_else(|| env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")) {
            Some(token) => LocalToken::new(token),
            None => {
                return Err(ConfigError::new(
                    "AWS_SESSION_TOKEN",
                    "is not set (nor AWS_CONTAINER_AUTHORIZATION_TOKEN), so there is no token to protect \
                     the local endpoint with; the extension refuses to serve secrets unauthenticated.",
                ));
            }
        };
        let (initialization_type, unrecognised_initialization_type) =
            match env.get("AWS_LAMBDA_INITIALIZATION_TYPE").map(str::trim) {
                None | Some("on-demand") => (InitializationType::OnDemand, None),
                Some("provisioned-concurrency") => (InitializationType::ProvisionedConcurrency, None),
                Some("snap-start") => (InitializationType::SnapStart, None),
                Some("lambda-managed-instances") => (InitializationType::ManagedInstances, None),
                Some(other) => {
                    let printable: String = other.chars().filter(char::is_ascii_graphic).take(64).collect();
                    (InitializationType::OnDemand, Some(printable))
                }
            };
        let endpoints = endpoint::endpoints(env, port)?;
        let end_of_invocation = match env.get(var::END_OF_INVOCATION).map(str::trim) {
            None | Some("auto") => EndOfInvocation::Auto,
            Some("runtime-done") => EndOfInvocation::RuntimeDone,
            Some("next-invoke") => EndOfInvocation::NextInvoke,
            Some(other) => {
                return Err(ConfigError::new(
                    var::END_OF_INVOCATION,
                    format!("must be auto, runtime-done or next-invoke (got {other:?})."),
                ));
            }
        };
        let runtime_proxy_port = runtime_proxy_port(env)?;
        if runtime_proxy_port == Some(port) {
            return Err(ConfigError::new(
                var::RUNTIME_PROXY_PORT,
                format!("must differ from {} ({port}): the local API already listens there.", var::PORT),
            ));
        }
        let credential_window = match number(env, var::CREDENTIAL_WINDOW, 60, 0, 3_600)? {
            0 => None,
            seconds => Some(Duration::from_secs(seconds)),
        };
        let revocation = match env.get(var::REVOCATION).map(str::trim) {
            None | Some("wipe") => RevocationMode::Wipe,
            Some("deny") => RevocationMode::Deny,
            Some(other) => {
                return Err(ConfigError::new(var::REVOCATION, format!("must be wipe or deny (got {other:?}).")));
            }
        };
        let revocation_policy_budget = number(env, var::REVOCATION_POLICY_BUDGET, 4_096, 512, 10_240)?;
        let revocation_policy_budget = usize::try_from(revocation_policy_budget)
            .map_err(|_| ConfigError::new(var::REVOCATION_POLICY_BUDGET, "is out of range."))?;
        let metrics_namespace = match env.get(var::METRICS_NAMESPACE).map(str::trim) {
            None => Some("ScopedSecrets".to_owned()),
            Some("off") => None,
            Some(name)
                if (1..=255).contains(&name.len())
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/#:".contains(&b)) =>
            {
                Some(name.to_owned())
            }
            Some(_) => {
                return Err(ConfigError::new(
                    var::METRICS_NAMESPACE,
                    "must be 1 to 255 of A-Z a-z 0-9 . _ - / # : (or off).",
                ));
            }
        };
        let function_name = env.get("AWS_LAMBDA_FUNCTION_NAME").unwrap_or("unknown").to_owned();
        let function_credentials =
            match (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")) {
                (Some(key), Some(secret)) => FunctionCredentialSource::Environment(
                    crate::sigv4::FunctionCredentials::new(key, secret, env.get("AWS_SESSION_TOKEN")),
                ),
                _ if env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some() => FunctionCredentialSource::Container,
                _ => FunctionCredentialSource::Absent,
            };
        Ok(Self {
            role_arn,
            allowlist,
            port,
            cache_ttl,
            prefetch,
            session_duration,
            deadline_margin,
            request_wait_timeout,
            upstream_timeout,
            max_connections,
            init_budget,
            region,
            endpoints,
            runtime_api,
            runtime_proxy_port,
            local_token,
            initialization_type,
            unrecognised_initialization_type,
            end_of_invocation,
            credential_window,
            revocation,
            revocation_policy_budget,
            metrics_namespace,
            function_name,
            function_credentials,
            upstream_keep_alive: boolean(env, var::UPSTREAM_KEEP_ALIVE, false)?,
        })
    }
}

fn required<'a>(env: &'a Env, name: &'static str) -> Result<&'a str, ConfigError> {
    env.get(name).map(str::trim).ok_or_else(|| ConfigError::new(name, "is required but not set."))
}

fn number(env: &Env, name: &'static str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    let Some(raw) = env.get(name) else {
        return Ok(default);
    };
    let value: u64 = raw
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(name, format!("must be a whole number from {min} to {max} (got {raw:?}).")))?;
    if !(min..=max).contains(&value) {
        return Err(ConfigError::new(name, format!("must be from {min} to {max} (got {value}).")));
    }
    Ok(value)
}

fn boolean(env: &Env, name: &'static str, default: bool) -> Result<bool, ConfigError> {
    match env.get(name).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "on" | "yes") => Ok(true),
        Some("false" | "0" | "off" | "no") => Ok(false),
        Some(other) => Err(ConfigError::new(name, format!("must be true or false (got {other:?})."))),
    }
}

#[cfg(test)]
mod tests;
