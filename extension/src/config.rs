//! Configuration: the function's environment, read once into an immutable, typed [`Config`].
//!
//! Every option has a default and a range (the README keeps the table). A rejection is a
//! [`ConfigError`] whose message is a full sentence naming the variable, so the extension can
//! post it to `init/error` and the function fails loudly at INIT. Values that are credentials
//! (the function's session token) are never echoed back in an error.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::allowlist::{Allowlist, AllowlistError, KmsGrant};

/// The process environment, captured once. Tests build it from a map instead of mutating
/// the real environment.
#[derive(Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// Captures the process environment (non-UTF-8 entries are ignored).
    pub fn from_process() -> Self {
        Self(std::env::vars().collect())
    }

    /// An environment made of the given pairs.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// The value of `name`, `None` when unset or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.trim().is_empty())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // The captured environment holds the execution role's credentials: wipe our copy.
        use zeroize::Zeroize;
        for value in self.0.values_mut() {
            value.zeroize();
        }
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be credentials: list the names only.
        let mut names: Vec<&String> = self.0.keys().collect();
        names.sort();
        f.debug_struct("Env").field("names", &names).finish()
    }
}

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

/// The IAM role that every session assumes, e.g. `arn:aws:iam::123456789012:role/app-secrets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleArn {
    arn: String,
    partition: String,
    account_id: String,
}

impl RoleArn {
    /// Parses `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
    ///
    /// # Errors
    /// A sentence saying which part is malformed.
    pub fn parse(value: &str) -> Result<Self, String> {
        let parts: Vec<&str> = value.splitn(6, ':').collect();
        let [arn, partition, service, region, account, resource] = parts.as_slice() else {
            return Err("must be an IAM role ARN of the form arn:aws:iam::ACCOUNT:role/NAME.".into());
        };
        if *arn != "arn" || !matches!(*partition, "aws" | "aws-cn" | "aws-us-gov") {
            return Err("must start with arn:aws:, arn:aws-cn: or arn:aws-us-gov:.".into());
        }
        if *service != "iam" || !region.is_empty() {
            return Err("must name an IAM role (arn:PARTITION:iam::ACCOUNT:role/NAME).".into());
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err("must carry a 12-digit account id.".into());
        }
        let Some(path_and_name) = resource.strip_prefix("role/") else {
            return Err("must name a role (its resource part must start with role/).".into());
        };
        let name = path_and_name.rsplit('/').next().unwrap_or_default();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
        let path_ok = path_and_name.len() <= 512 + 64
            && path_and_name.bytes().all(|b| b.is_ascii_graphic() && b != b'*' && b != b'?');
        if !name_ok || !path_ok {
            return Err("must end in a valid role name (1 to 64 of A-Z a-z 0-9 +=,.@_-).".into());
        }
        Ok(Self { arn: value.to_owned(), partition: (*partition).to_owned(), account_id: (*account).to_owned() })
    }

    /// The whole ARN.
    pub fn as_str(&self) -> &str {
        &self.arn
    }

    /// `aws`, `aws-cn` or `aws-us-gov`.
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// The role's account: secrets configured by name are taken to live in it.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }
}

/// The value every local request must present: the function's own `AWS_SESSION_TOKEN`.
/// Held in wiped memory, compared in constant time, never printed.
#[derive(Clone)]
pub struct LocalToken(Zeroizing<String>);

impl LocalToken {
    /// Whether `candidate` equals the token, in time independent of where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let expected = self.0.as_bytes();
        // Length is not secret (AWS session tokens are long and of public shape).
        if expected.len() != candidate.len() {
            return false;
        }
        // Eight bytes per step, every step taken, the running difference passed through
        // `black_box` (as `subtle` does per byte) so no early exit can be compiled in: a token
        // of ~1 KB compared byte by byte was 6 % of a cached GET's instructions.
        let word = |chunk: &[u8]| {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            u64::from_ne_bytes(word)
        };
        let mut difference = 0u64;
        for (a, b) in expected.chunks(8).zip(candidate.chunks(8)) {
            difference = std::hint::black_box(difference | (word(a) ^ word(b)));
        }
        bool::from(difference.ct_eq(&0))
    }

    /// Whether `text` contains the token, so a log line can leave it out. Not constant-time:
    /// call it only on requests that already proved they hold the token (nothing to learn).
    pub fn appears_in(&self, text: &str) -> bool {
        !self.0.is_empty() && text.contains(self.0.as_str())
    }
}

impl fmt::Debug for LocalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalToken(<redacted>)")
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
    /// `AWS_ENDPOINT_URL_IAM`, else `AWS_ENDPOINT_URL`, else the SDK's default (deny mode only).
    pub iam: Option<String>,
}

/// The extension's whole configuration, parsed once at INIT.
#[derive(Debug, Clone)]
pub struct Config {
    /// The role each session assumes.
    pub role_arn: RoleArn,
    /// The secrets the function may read, with their local aliases.
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
        if !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(ConfigError::new("AWS_REGION", "must be a region name such as us-east-1."));
        }
        let allowlist = Allowlist::parse(required(env, var::SECRETS)?, &role_arn, &region)
            .map_err(|e: AllowlistError| ConfigError::new(var::SECRETS, e.to_string()))?;
        let allowlist = match env.get(var::KMS_KEYS).map(str::trim).filter(|v| !v.is_empty()) {
            Some(raw) => allowlist.with_kms(
                kms_grant(raw, &role_arn, &region).map_err(|reason| ConfigError::new(var::KMS_KEYS, reason))?,
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
            Some(token) => LocalToken(Zeroizing::new(token.to_owned())),
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
        let endpoints = endpoints(env, port)?;
        let end_of_invocation = match env.get(var::END_OF_INVOCATION).map(str::trim) {
            None | Some("runtime-done") => EndOfInvocation::RuntimeDone,
            Some("next-invoke") => EndOfInvocation::NextInvoke,
            Some(other) => {
                return Err(ConfigError::new(
                    var::END_OF_INVOCATION,
                    format!("must be runtime-done or next-invoke (got {other:?})."),
                ));
            }
        };
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

/// Most keys one session policy names (each key ARN is ~75 characters of the 2,048).
const MAX_KMS_KEYS: usize = 5;

/// `SCOPED_SECRETS_KMS_KEYS`: comma-separated key ARNs, or bare key ids in the role's account.
/// Only keys (a KMS authorisation names the key, never an alias), in the function's partition
/// and region (Secrets Manager decrypts with a key of the secret's own region).
fn kms_grant(raw: &str, role: &RoleArn, region: &str) -> Result<KmsGrant, String> {
    let is_key_id = |id: &str| {
        let uuid = id.len() == 36
            && id
                .bytes()
                .enumerate()
                .all(|(i, b)| if [8, 13, 18, 23].contains(&i) { b == b'-' } else { b.is_ascii_hexdigit() });
        let multi_region =
            id.strip_prefix("mrk-").is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        uuid || multi_region
    };
    let mut keys = Vec::new();
    for (index, item) in raw.split(',').map(str::trim).filter(|i| !i.is_empty()).enumerate() {
        let position = index + 1;
        let key = if is_key_id(item) {
            format!("arn:{}:kms:{region}:{}:key/{item}", role.partition(), role.account_id())
        } else {
            let parts: Vec<&str> = item.splitn(6, ':').collect();
            let well_formed = match parts.as_slice() {
                [arn, partition, service, key_region, account, resource] => {
                    *arn == "arn"
                        && *partition == role.partition()
                        && *service == "kms"
                        && *key_region == region
                        && account.len() == 12
                        && account.bytes().all(|b| b.is_ascii_digit())
                        && resource.strip_prefix("key/").is_some_and(is_key_id)
                }
                _ => false,
            };
            if !well_formed {
                return Err(format!(
                    "entry {position} must be a KMS key ARN (arn:{}:kms:{region}:ACCOUNT:key/KEY-ID) or a key id; \
                     aliases are not keys, and the key must be in the function's region.",
                    role.partition()
                ));
            }
            item.to_owned()
        };
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    if keys.len() > MAX_KMS_KEYS {
        return Err(format!("names {} keys; at most {MAX_KMS_KEYS}.", keys.len()));
    }
    let domain = if role.partition() == "aws-cn" { "amazonaws.com.cn" } else { "amazonaws.com" };
    Ok(KmsGrant { keys, via_service: format!("secretsmanager.{region}.{domain}") })
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

fn endpoints(env: &Env, port: u16) -> Result<AwsEndpoints, ConfigError> {
    let mut endpoints = AwsEndpoints::default();
    for (name, slot) in [("AWS_ENDPOINT_URL", 0), ("AWS_ENDPOINT_URL_STS", 1), ("AWS_ENDPOINT_URL_IAM", 2)] {
        let Some(url) = env.get(name).map(str::trim) else {
            continue;
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::new(name, "must be an http:// or https:// URL."));
        }
        if points_at_local_api(url, port) {
            return Err(ConfigError::new(
                name,
                format!("points at this extension's own port {port}; the extension would call itself."),
            ));
        }
        match slot {
            0 => {
                endpoints.secrets_manager = Some(url.to_owned());
                endpoints.sts.get_or_insert_with(|| url.to_owned());
                endpoints.iam.get_or_insert_with(|| url.to_owned());
            }
            1 => endpoints.sts = Some(url.to_owned()),
            _ => endpoints.iam = Some(url.to_owned()),
        }
    }
    Ok(endpoints)
}

fn points_at_local_api(url: &str, port: u16) -> bool {
    let authority = url.split("://").nth(1).unwrap_or_default().split('/').next().unwrap_or_default();
    let loopback = ["127.0.0.1", "localhost", "[::1]"];
    loopback.iter().any(|host| authority == format!("{host}:{port}")) || (port == 80 && loopback.contains(&authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            (var::ROLE_ARN, "arn:aws:iam::123456789012:role/app-secrets"),
            (var::SECRETS, "db=app/db,app/api"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
            ("AWS_SESSION_TOKEN", "token-value"),
        ]
    }

    fn with<'a>(extra: &[(&'a str, &'a str)]) -> Result<Config, ConfigError> {
        let mut pairs: Vec<(&str, &str)> = base();
        for (k, v) in extra {
            pairs.retain(|(name, _)| name != k);
            pairs.push((k, v));
        }
        Config::from_env(&Env::from_pairs(pairs))
    }

    #[test]
    fn defaults_apply_when_only_the_required_variables_are_set() {
        let config = with(&[]).expect("base configuration is valid");
        assert_eq!(config.port, 2773);
        assert_eq!(config.cache_ttl, Duration::from_secs(300));
        assert!(config.prefetch);
        assert_eq!(config.session_duration, Duration::from_secs(900));
        assert_eq!(config.deadline_margin, Duration::from_millis(2_000));
        assert_eq!(config.request_wait_timeout, Duration::from_millis(5_000));
        assert_eq!(config.initialization_type, InitializationType::OnDemand);
        assert_eq!(config.end_of_invocation, EndOfInvocation::RuntimeDone);
        assert_eq!(config.credential_window, Some(Duration::from_secs(60)));
        assert_eq!(config.revocation, RevocationMode::Wipe);
        assert_eq!(config.revocation_policy_budget, 4_096);
        assert_eq!(config.metrics_namespace.as_deref(), Some("ScopedSecrets"));
        assert_eq!(config.endpoints, AwsEndpoints::default());
        assert_eq!(config.allowlist.len(), 2);
    }

    #[test]
    fn each_rejection_names_its_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[(var::ROLE_ARN, "")], var::ROLE_ARN),
            (&[(var::ROLE_ARN, "not-an-arn")], var::ROLE_ARN),
            (&[(var::ROLE_ARN, "arn:aws:iam::12345:role/x")], var::ROLE_ARN),
            (&[(var::ROLE_ARN, "arn:aws:iam::123456789012:user/x")], var::ROLE_ARN),
            (&[(var::ROLE_ARN, "arn:aws:s3::123456789012:role/x")], var::ROLE_ARN),
            (&[(var::ROLE_ARN, "arn:evil:iam::123456789012:role/x")], var::ROLE_ARN),
            (&[(var::ROLE_ARN, "arn:aws:iam::123456789012:role/")], var::ROLE_ARN),
            (&[(var::ROLE_ARN, "arn:aws:iam::123456789012:role/a*b")], var::ROLE_ARN),
            (&[(var::SECRETS, "")], var::SECRETS),
            (&[(var::SECRETS, "app/*")], var::SECRETS),
            (&[(var::PORT, "0")], var::PORT),
            (&[(var::PORT, "65536")], var::PORT),
            (&[(var::PORT, "http")], var::PORT),
            (&[(var::PORT, "-1")], var::PORT),
            (&[(var::CACHE_TTL, "86401")], var::CACHE_TTL),
            (&[(var::CACHE_TTL, "1.5")], var::CACHE_TTL),
            (&[(var::PREFETCH, "maybe")], var::PREFETCH),
            (&[(var::SESSION_DURATION, "899")], var::SESSION_DURATION),
            (&[(var::SESSION_DURATION, "3601")], var::SESSION_DURATION),
            (&[(var::DEADLINE_MARGIN_MS, "60001")], var::DEADLINE_MARGIN_MS),
            (&[(var::REQUEST_WAIT_TIMEOUT_MS, "0")], var::REQUEST_WAIT_TIMEOUT_MS),
            (&[(var::UPSTREAM_TIMEOUT_MS, "99")], var::UPSTREAM_TIMEOUT_MS),
            (&[(var::MAX_CONNECTIONS, "0")], var::MAX_CONNECTIONS),
            (&[(var::INIT_BUDGET_MS, "999")], var::INIT_BUDGET_MS),
            (&[(var::END_OF_INVOCATION, "never")], var::END_OF_INVOCATION),
            (&[(var::CREDENTIAL_WINDOW, "3601")], var::CREDENTIAL_WINDOW),
            (&[(var::REVOCATION, "revoke")], var::REVOCATION),
            (&[(var::REVOCATION_POLICY_BUDGET, "511")], var::REVOCATION_POLICY_BUDGET),
            (&[(var::REVOCATION_POLICY_BUDGET, "10241")], var::REVOCATION_POLICY_BUDGET),
            (&[(var::METRICS_NAMESPACE, "bad namespace")], var::METRICS_NAMESPACE),
            (&[(var::UPSTREAM_KEEP_ALIVE, "sometimes")], var::UPSTREAM_KEEP_ALIVE),
            (&[(var::KMS_KEYS, "alias/orders")], var::KMS_KEYS),
            (&[(var::KMS_KEYS, "arn:aws:kms:us-east-1:123456789012:alias/orders")], var::KMS_KEYS),
            (
                &[(var::KMS_KEYS, "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab")],
                var::KMS_KEYS,
            ),
            (
                &[(var::KMS_KEYS, "arn:aws-cn:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab")],
                var::KMS_KEYS,
            ),
            (&[(var::KMS_KEYS, "arn:aws:kms:us-east-1:123456789012:key/*")], var::KMS_KEYS),
            (&[(var::KMS_KEYS, "1234abcd-12ab-34cd-56ef-1234567890a?")], var::KMS_KEYS),
            (&[("AWS_REGION", "")], "AWS_REGION"),
            (&[("AWS_REGION", "us east")], "AWS_REGION"),
            (&[("AWS_LAMBDA_RUNTIME_API", "")], "AWS_LAMBDA_RUNTIME_API"),
            (&[("AWS_SESSION_TOKEN", "")], "AWS_SESSION_TOKEN"),
            (&[("AWS_ENDPOINT_URL", "127.0.0.1:4566")], "AWS_ENDPOINT_URL"),
            (&[("AWS_ENDPOINT_URL", "http://127.0.0.1:2773")], "AWS_ENDPOINT_URL"),
            (&[("AWS_ENDPOINT_URL_STS", "http://localhost:2773/")], "AWS_ENDPOINT_URL_STS"),
        ];
        for (extra, variable) in cases {
            let error = with(extra).expect_err(&format!("{extra:?} must be rejected"));
            assert_eq!(error.variable, *variable, "{extra:?}");
            let sentence = error.to_string();
            assert!(sentence.starts_with(variable) && sentence.ends_with('.'), "{sentence}");
        }
    }

    #[test]
    fn kms_keys_are_key_arns_or_ids_in_the_role_account_and_region() {
        let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        let other = "arn:aws:kms:us-east-1:210987654321:key/mrk-0123456789abcdef0123456789abcdef";
        let raw = format!("{id}, {other},{id}");
        let config = with(&[(var::KMS_KEYS, raw.as_str())]).expect("valid");
        let grant = config.allowlist.kms().expect("a grant");
        assert_eq!(grant.keys, [format!("arn:aws:kms:us-east-1:123456789012:key/{id}"), other.to_owned()]);
        assert_eq!(grant.via_service, "secretsmanager.us-east-1.amazonaws.com");
        assert!(with(&[]).expect("valid").allowlist.kms().is_none(), "no keys: no grant");
        let six: Vec<String> = (0..6).map(|i| format!("1234abcd-12ab-34cd-56ef-12345678900{i}")).collect();
        let six = six.join(",");
        let error = with(&[(var::KMS_KEYS, six.as_str())]).expect_err("too many");
        assert_eq!(error.variable, var::KMS_KEYS);
    }

    #[test]
    fn accepted_values_parse_to_their_typed_form() {
        let config = with(&[
            (var::PORT, "8080"),
            (var::CACHE_TTL, "0"),
            (var::PREFETCH, "off"),
            (var::SESSION_DURATION, "3600"),
            (var::DEADLINE_MARGIN_MS, "0"),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "provisioned-concurrency"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
            (var::END_OF_INVOCATION, "next-invoke"),
            (var::CREDENTIAL_WINDOW, "0"),
            (var::REVOCATION, "deny"),
            (var::METRICS_NAMESPACE, "off"),
        ])
        .expect("valid");
        assert_eq!(config.credential_window, None);
        assert_eq!(config.revocation, RevocationMode::Deny);
        assert_eq!(config.metrics_namespace, None);
        assert_eq!(config.end_of_invocation, EndOfInvocation::NextInvoke);
        assert_eq!(config.port, 8080);
        assert_eq!(config.cache_ttl, Duration::ZERO);
        assert!(!config.prefetch);
        assert_eq!(config.session_duration, Duration::from_secs(3600));
        assert_eq!(config.initialization_type, InitializationType::ProvisionedConcurrency);
        assert_eq!(config.endpoints.sts.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(config.endpoints.secrets_manager.as_deref(), Some("http://127.0.0.1:4566"));
    }

    #[test]
    fn each_initialization_type_parses_and_an_unknown_one_runs_on_demand() {
        let cases = [
            ("on-demand", InitializationType::OnDemand, None),
            ("provisioned-concurrency", InitializationType::ProvisionedConcurrency, None),
            ("snap-start", InitializationType::SnapStart, None),
            ("lambda-managed-instances", InitializationType::ManagedInstances, None),
            ("warp-speed", InitializationType::OnDemand, Some("warp-speed")),
            ("odd\nvalue with spaces", InitializationType::OnDemand, Some("oddvaluewithspaces")),
        ];
        for (value, expected, unknown) in cases {
            let config = with(&[("AWS_LAMBDA_INITIALIZATION_TYPE", value)]).expect(value);
            assert_eq!(config.initialization_type, expected, "{value}");
            assert_eq!(config.unrecognised_initialization_type.as_deref(), unknown, "{value}");
        }
    }

    #[test]
    fn without_a_session_token_the_container_token_protects_the_local_api() {
        let mut pairs = base();
        pairs.retain(|(name, _)| *name != "AWS_SESSION_TOKEN");
        pairs.push(("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-token"));
        pairs.push(("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:9001/credentials"));
        pairs.push(("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start"));
        let config = Config::from_env(&Env::from_pairs(pairs.clone())).expect("valid");
        assert!(config.local_token.matches(b"container-token"));
        assert!(matches!(config.function_credentials, FunctionCredentialSource::Container));
        // With both, the session token wins, as in AWS's own extension.
        pairs.push(("AWS_SESSION_TOKEN", "session-token"));
        let config = Config::from_env(&Env::from_pairs(pairs)).expect("valid");
        assert!(config.local_token.matches(b"session-token"));
        assert!(!config.local_token.matches(b"container-token"));
    }

    #[test]
    fn the_function_facing_secrets_manager_endpoint_is_never_followed() {
        let config = with(&[
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:2773"),
            ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:4567"),
        ])
        .expect("valid");
        assert_eq!(config.endpoints.secrets_manager, None);
        assert_eq!(config.endpoints.sts.as_deref(), Some("http://127.0.0.1:4567"));
    }

    #[test]
    fn the_token_is_compared_exactly_and_never_printed() {
        let config = with(&[]).expect("valid");
        assert!(config.local_token.matches(b"token-value"));
        for wrong in [&b"token-valuE"[..], b"token-valu", b"token-value ", b""] {
            assert!(!config.local_token.matches(wrong));
        }
        // A token of AWS's length, differing in any one byte (every position of every word).
        let long: &'static str =
            String::leak((0..1_027).map(|i| char::from(b'A' + (i % 26) as u8)).collect::<String>());
        let config = with(&[("AWS_SESSION_TOKEN", long)]).expect("valid");
        assert!(config.local_token.matches(long.as_bytes()));
        for position in 0..long.len() {
            let mut wrong = long.as_bytes().to_vec();
            wrong[position] ^= 0x20;
            assert!(!config.local_token.matches(&wrong), "a difference at byte {position}");
        }
        let config = with(&[]).expect("valid");
        assert!(config.local_token.appears_in("app/token-value/x"));
        assert!(!config.local_token.appears_in("app/token-valu"));
        let printed = format!("{config:?} {:?}", Env::from_pairs(base()));
        assert!(!printed.contains("token-value"), "{printed}");
    }
}
