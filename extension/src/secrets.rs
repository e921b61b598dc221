//! Secrets: fetching with the current session into zeroizing memory, and the cache.
//!
//! A value leaves the SDK's output by move into [`Payload`] (`Zeroizing`), and the SDK strings
//! that are not moved are wiped. Concurrent requests for one secret make one upstream call
//! (a lock per cache key); the INVOKE prefetch fetches all missing or stale secrets with
//! `BatchGetSecretValue`, 20 per call, the chunks in parallel.
//! See <https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_BatchGetSecretValue.html>.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager as secretsmanager;
use secretsmanager::error::{ProvideErrorMetadata, SdkError};
use serde::Serialize;
use zeroize::{Zeroize, Zeroizing};

use crate::allowlist::EntryIndex;
use crate::invocation::{Lifecycle, Scope};
use crate::session::SessionError;

/// Secrets Manager's `BatchGetSecretValue` takes at most this many ids.
pub const BATCH_LIMIT: usize = 20;

/// The secret's bytes, wiped on drop.
pub enum Payload {
    /// `SecretString`.
    Text(Zeroizing<String>),
    /// `SecretBinary`.
    Binary(Zeroizing<Vec<u8>>),
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Payload::Text(_) => "Text(<redacted>)",
            Payload::Binary(_) => "Binary(<redacted>)",
        })
    }
}

/// One version of a secret, as `GetSecretValue` returns it.
pub struct SecretValue {
    arn: String,
    name: String,
    version_id: String,
    version_stages: Vec<String>,
    created_date: Option<f64>,
    payload: Payload,
    /// [`SecretValue::to_json`], made once on first use and wiped with the value: every cached
    /// read answers with these bytes instead of serialising again.
    json: std::sync::OnceLock<Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretValue")
            .field("name", &self.name)
            .field("version_id", &self.version_id)
            .finish_non_exhaustive()
    }
}

/// The wire shape of `GetSecretValue`, borrowed so the secret is serialised straight from
/// zeroizing memory into a zeroizing buffer.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Wire<'a> {
    #[serde(rename = "ARN")]
    arn: &'a str,
    name: &'a str,
    version_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_string: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_binary: Option<&'a str>,
    version_stages: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    created_date: Option<f64>,
}

impl SecretValue {
    /// The `GetSecretValue` JSON, in a buffer that is wiped when dropped.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let binary = match &self.payload {
            Payload::Binary(bytes) => Some(Zeroizing::new(aws_smithy_types::base64::encode(bytes.as_slice()))),
            Payload::Text(_) => None,
        };
        let wire = Wire {
            arn: &self.arn,
            name: &self.name,
            version_id: &self.version_id,
            secret_string: match &self.payload {
                Payload::Text(text) => Some(text.as_str()),
                Payload::Binary(_) => None,
            },
            secret_binary: binary.as_ref().map(|b| b.as_str()),
            version_stages: &self.version_stages,
            created_date: self.created_date,
        };
        // Sized so that serialisation never reallocates (a reallocation would leave a copy
        // behind in freed memory); escaping can at most sextuple a control character.
        let payload_len = match &self.payload {
            Payload::Text(text) => text.len() * 6,
            Payload::Binary(_) => binary.as_ref().map_or(0, |b| b.len()),
        };
        let mut buffer = Zeroizing::new(Vec::with_capacity(payload_len + self.arn.len() + self.name.len() + 256));
        // Serialising borrowed strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buffer, &wire);
        buffer
    }

    /// The `GetSecretValue` JSON as a response body that shares the value's own (zeroizing)
    /// copy, made once per value: the body keeps the value alive until hyper has sent it.
    pub fn json_body(self: &Arc<Self>) -> bytes::Bytes {
        struct Shared(Arc<SecretValue>);
        impl AsRef<[u8]> for Shared {
            fn as_ref(&self) -> &[u8] {
                self.0.json.get().map_or(&[], |json| json.as_slice())
            }
        }
        self.json.get_or_init(|| self.to_json());
        bytes::Bytes::from_owner(Shared(Arc::clone(self)))
    }

    /// The version id, for audit lines.
    pub fn version_id(&self) -> &str {
        &self.version_id
    }

    #[allow(clippy::too_many_arguments)]
    fn from_parts(
        arn: Option<String>,
        name: Option<String>,
        version_id: Option<String>,
        secret_string: Option<String>,
        secret_binary: Option<aws_smithy_types::Blob>,
        version_stages: Option<Vec<String>>,
        created_date: Option<aws_smithy_types::DateTime>,
    ) -> Self {
        let payload = match (secret_string, secret_binary) {
            // Moved into zeroizing memory: no copy is made.
            (Some(text), binary) => {
                if let Some(blob) = binary {
                    blob.into_inner().zeroize();
                }
                Payload::Text(Zeroizing::new(text))
            }
            (None, Some(blob)) => Payload::Binary(Zeroizing::new(blob.into_inner())),
            (None, None) => Payload::Text(Zeroizing::new(String::new())),
        };
        Self {
            arn: arn.unwrap_or_default(),
            name: name.unwrap_or_default(),
            version_id: version_id.unwrap_or_default(),
            version_stages: version_stages.unwrap_or_default(),
            created_date: created_date.map(|d| d.as_secs_f64()),
            payload,
            json: std::sync::OnceLock::new(),
        }
    }
}

/// Which version of a secret a request wants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Version {
    /// `AWSCURRENT`, the default.
    Current,
    /// A staging label other than `AWSCURRENT`.
    Stage(String),
    /// A version id.
    Id(String),
}

/// Why a secret could not be served. Carries no secret, credential or token.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Secrets Manager has no such secret or version.
    #[error("the secret or version does not exist")]
    NotFound,
    /// AWS refused the session (the role's or the session's policy).
    #[error("AWS refused access with the session's credentials ({code})")]
    AccessDenied {
        /// The AWS error code.
        code: String,
    },
    /// AWS rejected the request's parameters.
    #[error("AWS rejected the request ({code})")]
    InvalidRequest {
        /// The AWS error code.
        code: String,
    },
    /// AWS throttled us.
    #[error("AWS throttled the request")]
    Throttled,
    /// AWS did not answer within the upstream timeout.
    #[error("AWS did not answer in time")]
    UpstreamTimeout,
    /// Any other upstream failure.
    #[error("AWS call failed ({kind})")]
    Upstream {
        /// Short, value-free description.
        kind: String,
    },
    /// The session could not be started.
    #[error("could not start a session: {0}")]
    Session(#[from] SessionError),
    /// No invocation began within the wait timeout.
    #[error("no invocation was active within the wait timeout")]
    NoActiveInvocation,
    /// The session was not ready within the wait timeout.
    #[error("the session was not ready within the wait timeout")]
    WaitTimeout,
    /// The invocation ended while the request waited.
    #[error("the invocation ended before the secret was fetched")]
    InvocationEnded,
    /// The extension is shutting down.
    #[error("the extension is shutting down")]
    ShuttingDown,
    /// A SnapStart INIT: nothing is fetched before restore.
    #[error("nothing is fetched during a SnapStart INIT")]
    SnapStartInit,
    /// The tenant was not known within the wait timeout.
    #[error("the tenant was not known within the wait timeout")]
    TenantUnknown,
    /// The platform's tenant id was not valid.
    #[error("the platform's tenant id was refused")]
    TenantRefused,
    /// A second tenant appeared: nothing is served any more.
    #[error("a second tenant appeared in this environment")]
    TenantChanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    entry: EntryIndex,
    version: Version,
}

struct Cached {
    value: Arc<SecretValue>,
    fetched_at: Instant,
    generation: u64,
}

/// Where an answer came from, for the audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The zeroizing cache.
    Cache,
    /// A fetch made for this request (or one it waited on).
    Aws,
}

impl Source {
    /// Lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Aws => "aws",
        }
    }
}

/// A secret served, with where it came from.
#[derive(Debug)]
pub struct Served {
    /// The value.
    pub value: Arc<SecretValue>,
    /// Cache or AWS.
    pub source: Source,
    /// The scope (request id or `init`) whose session fetched it, when it came from AWS.
    pub scope: Option<String>,
}

/// Counters for the SHUTDOWN summary and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Answers from the cache.
    pub cache_hits: std::sync::atomic::AtomicU64,
    /// Secrets fetched from AWS.
    pub fetched: std::sync::atomic::AtomicU64,
    /// Calls to Secrets Manager.
    pub upstream_calls: std::sync::atomic::AtomicU64,
}

/// The cache plus the logic that fills it.
pub struct Secrets {
    tenancy: Arc<crate::tenant::Tenancy>,
    ttl: Duration,
    /// Woken when a value is stored, so the expiry sweeper learns of a new deadline.
    stored: tokio::sync::Notify,
    lifecycle: Arc<Lifecycle>,
    cache: Mutex<HashMap<Key, Cached>>,
    in_flight: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    counters: Counters,
    evidence: Arc<crate::metrics::Evidence>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl Secrets {
    /// An empty cache over `allowlist`.
    pub fn new(
        tenancy: Arc<crate::tenant::Tenancy>,
        ttl: Duration,
        lifecycle: Arc<Lifecycle>,
        evidence: Arc<crate::metrics::Evidence>,
    ) -> Self {
        Self {
            tenancy,
            ttl,
            stored: tokio::sync::Notify::new(),
            lifecycle,
            cache: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            evidence,
        }
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The allowlisted secret `entry` at `version`, from the cache or from AWS; `refresh` skips
    /// the cache for this read (a failure leaves the cache as it was).
    ///
    /// # Errors
    /// [`FetchError`], never containing a value.
    pub async fn get(&self, entry: EntryIndex, version: Version, refresh: bool) -> Result<Served, FetchError> {
        use std::sync::atomic::Ordering::Relaxed;
        let key = Key { entry, version };
        if let Some(value) = self.fresh(&key).filter(|_| !refresh) {
            self.counters.cache_hits.fetch_add(1, Relaxed);
            self.evidence.cache(true);
            return Ok(Served { value, source: Source::Cache, scope: None });
        }
        let lock = self.key_lock(&key);
        let _guard = lock.lock().await;
        if let Some(value) = self.fresh(&key).filter(|_| !refresh) {
            // Another request fetched it while this one waited: one upstream call for both.
            self.counters.cache_hits.fetch_add(1, Relaxed);
            self.evidence.cache(true);
            return Ok(Served { value, source: Source::Cache, scope: None });
        }
        self.evidence.cache(false);
        let waiting = Instant::now();
        let scope = self.lifecycle.current_scope().await?;
        let session = tokio::time::timeout(self.lifecycle.wait_timeout(), scope.session())
            .await
            .map_err(|_elapsed| FetchError::WaitTimeout)??;
        self.evidence.waited(waiting.elapsed());
        let allowlist = self.tenancy.current().ok_or(FetchError::TenantUnknown)?;
        let secret_id = allowlist.entry(entry).map(|e| e.secret_id().to_owned()).unwrap_or_default();
        let output = match self.fetch_one(&session, &secret_id, &key.version).await {
            // Refused with credentials that worked before (a revocation by another environment
            // of this function): re-assume once and try again.
            Err(refused @ FetchError::AccessDenied { .. }) if session.has_succeeded() => {
                match scope.renew_after_denial(&session).await {
                    Ok(Some(renewed)) => {
                        let output = self.fetch_one(&renewed, &secret_id, &key.version).await;
                        scope.release(&renewed).await;
                        output
                    }
                    Ok(None) => Err(refused),
                    Err(error) => Err(error),
                }
            }
            other => other,
        };
        scope.release(&session).await;
        let output = output?;
        let value = Arc::new(SecretValue::from_parts(
            output.arn,
            output.name,
            output.version_id,
            output.secret_string,
            output.secret_binary,
            output.version_stages,
            output.created_date,
        ));
        self.counters.fetched.fetch_add(1, Relaxed);
        self.store(&scope, key, Arc::clone(&value));
        Ok(Served { value, source: Source::Aws, scope: Some(scope.label().to_owned()) })
    }

    async fn fetch_one(
        &self,
        session: &crate::session::Session,
        secret_id: &str,
        version: &Version,
    ) -> Result<secretsmanager::operation::get_secret_value::GetSecretValueOutput, FetchError> {
        let mut request = session.client().get_secret_value().secret_id(secret_id);
        request = match version {
            Version::Current => request,
            Version::Stage(stage) => request.version_stage(stage),
            Version::Id(id) => request.version_id(id),
        };
        self.counters.upstream_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let output = request.send().await.map_err(|e| classify(&e));
        self.evidence.fetch(started.elapsed());
        let output = output?;
        session.mark_succeeded();
        Ok(output)
    }

    /// Fetches every allowlisted secret whose current version is missing or stale, in as few
    /// `BatchGetSecretValue` calls as AWS allows, the calls in parallel. Failures are logged and
    /// left for the requests themselves to report.
    pub async fn prefetch(&self, scope: &Arc<Scope>) {
        let allowlist = match self.tenancy.allowlist(self.lifecycle.wait_timeout()).await {
            Ok(allowlist) => allowlist,
            Err(error) => {
                tracing::warn!(event = "prefetch_failed", request_id = %scope.label(), cause = %error);
                return;
            }
        };
        let mut guards = Vec::new();
        let mut wanted: Vec<(EntryIndex, String)> = Vec::new();
        for (index, entry) in allowlist.iter() {
            let key = Key { entry: index, version: Version::Current };
            if self.fresh(&key).is_some() {
                continue;
            }
            let lock = self.key_lock(&key);
            guards.push(lock.lock_owned().await);
            if self.fresh(&key).is_none() {
                wanted.push((index, entry.secret_id().to_owned()));
            }
        }
        if wanted.is_empty() {
            return;
        }
        let session = match scope.session().await {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(event = "prefetch_failed", request_id = %scope.label(), cause = %error);
                return;
            }
        };
        let calls = wanted.chunks(BATCH_LIMIT).map(|chunk| {
            let ids: Vec<String> = chunk.iter().map(|(_, id)| id.clone()).collect();
            self.counters.upstream_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            session.client().batch_get_secret_value().set_secret_id_list(Some(ids)).send()
        });
        let results = join_all(calls.collect()).await;
        for result in results {
            match result {
                Ok(output) => {
                    session.mark_succeeded();
                    for error in output.errors.unwrap_or_default() {
                        tracing::warn!(
                            event = "prefetch_error",
                            request_id = %scope.label(),
                            secret_id = error.secret_id.as_deref().unwrap_or(""),
                            code = error.error_code.as_deref().unwrap_or(""),
                        );
                    }
                    for item in output.secret_values.unwrap_or_default() {
                        let value = SecretValue::from_parts(
                            item.arn,
                            item.name,
                            item.version_id,
                            item.secret_string,
                            item.secret_binary,
                            item.version_stages,
                            item.created_date,
                        );
                        let index = wanted
                            .iter()
                            .find(|(_, id)| *id == value.arn || *id == value.name)
                            .map(|(index, _)| *index)
                            .or_else(|| allowlist.find(&value.arn));
                        if let Some(index) = index {
                            self.counters.fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            self.store(scope, Key { entry: index, version: Version::Current }, Arc::new(value));
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(event = "prefetch_failed", request_id = %scope.label(), cause = %classify(&error));
                }
            }
        }
        scope.release(&session).await;
        drop(guards);
    }

    /// Drops cached values that may not outlive their invocation (TTL 0) or are stale.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let before = cache.len();
        cache.retain(|_, cached| !self.ttl.is_zero() && now.duration_since(cached.fetched_at) < self.ttl);
        before - cache.len()
    }

    /// Wipes every cached value. Returns how many there were.
    pub fn wipe_all(&self) -> usize {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let count = cache.len();
        cache.clear();
        cache.shrink_to_fit();
        count
    }

    /// How many values are cached.
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn fresh(&self, key: &Key) -> Option<Arc<SecretValue>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = cache.get(key)?;
        let fresh = if self.ttl.is_zero() {
            self.lifecycle.is_current_generation(cached.generation)
        } else {
            cached.fetched_at.elapsed() < self.ttl
        };
        fresh.then(|| Arc::clone(&cached.value))
    }

    fn store(&self, scope: &Scope, key: Key, value: Arc<SecretValue>) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked under the cache lock: a value fetched for an invocation that has since
        // ended is dropped (and wiped), never cached past its end. A per-fetch scope is no
        // invocation: with TTL 0 its values serve their own request only.
        if scope.has_ended() || (self.ttl.is_zero() && scope.is_per_fetch()) {
            return;
        }
        cache.insert(key, Cached { value, fetched_at: Instant::now(), generation: scope.generation() });
        drop(cache);
        self.stored.notify_one();
    }

    /// When the oldest cached value goes stale (`None`: nothing cached, or TTL 0, whose
    /// values end with their invocation instead).
    pub fn earliest_expiry(&self) -> Option<Instant> {
        if self.ttl.is_zero() {
            return None;
        }
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.values().map(|cached| cached.fetched_at + self.ttl).min()
    }

    /// Wipes each value as its TTL runs out, even when no invocation comes (provisioned
    /// concurrency's idle after INIT, Managed Instances' long-lived environment), until
    /// `shutdown`.
    pub async fn expire_on_time(&self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let next = self.earliest_expiry();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.stored.notified(), if next.is_none() => continue,
                () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {}
            }
            let wiped = self.expire();
            if wiped > 0 {
                tracing::info!(target: "audit", event = "secrets_expired", secrets_wiped = wiped as u64);
            }
        }
    }

    fn key_lock(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        // Entries whose lock nobody holds are dropped, so the map stays as small as the
        // number of keys being fetched right now.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(locks.entry(key.clone()).or_default())
    }
}

fn classify<E: ProvideErrorMetadata + fmt::Debug, R: fmt::Debug>(error: &SdkError<E, R>) -> FetchError {
    match error {
        SdkError::TimeoutError(_) => FetchError::UpstreamTimeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => FetchError::UpstreamTimeout,
        SdkError::DispatchFailure(_) => FetchError::Upstream { kind: "connection failed".into() },
        SdkError::ServiceError(service) => {
            let mut code = service.err().code().unwrap_or("Unknown").to_owned();
            code.retain(|c| c.is_ascii_alphanumeric());
            match code.as_str() {
                "ResourceNotFoundException" => FetchError::NotFound,
                "AccessDeniedException"
                | "AccessDenied"
                | "UnrecognizedClientException"
                | "ExpiredTokenException"
                | "InvalidSignatureException" => FetchError::AccessDenied { code },
                "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => FetchError::Throttled,
                "InvalidParameterException" | "InvalidRequestException" | "ValidationException" => {
                    FetchError::InvalidRequest { code }
                }
                _ => FetchError::Upstream { kind: code },
            }
        }
        _ => FetchError::Upstream { kind: "unexpected answer".into() },
    }
}

/// Runs futures concurrently on the current task and collects their outputs in order
/// (a few lines instead of a dependency on `futures`).
pub(crate) async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::with_capacity(futures.len());
    for future in futures {
        set.push(Box::pin(future));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        let mut pending = false;
        for (future, output) in set.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(context) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
