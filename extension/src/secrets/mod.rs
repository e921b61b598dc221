//! The store: secrets fetched with the current scope's session into zeroizing memory, and the
//! cache they are served from.
//!
//! A read goes through [`Secrets::get`]: the cache ([`cache`]) answers, or one fetch per key
//! (single flight) asks Secrets Manager with the scope's session. At INVOKE, [`Secrets::prefetch`]
//! fetches every allowlisted secret that is missing or stale with `BatchGetSecretValue`, 20 per
//! call, the calls in parallel, while the function starts.
//! See <https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_BatchGetSecretValue.html>.

pub mod cache;
pub mod value;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager as secretsmanager;
use secretsmanager::error::{ProvideErrorMetadata, SdkError};
use secretsmanager::operation::get_secret_value::GetSecretValueOutput;

use self::cache::{Cache, Key};
use self::value::{SecretValue, Served, Source};
use crate::config::allowlist::EntryIndex;
use crate::domain::error::ReadError;
use crate::domain::version::Version;
use crate::evidence::Evidence;
use crate::invocation::Invocations;
use crate::invocation::scope::Scope;
use crate::session::Session;
use crate::tenant::Tenancy;

/// Secrets Manager's `BatchGetSecretValue` takes at most this many ids.
pub const BATCH_LIMIT: usize = 20;

/// Counters for the SHUTDOWN summary and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Answers from the cache.
    pub cache_hits: AtomicU64,
    /// Secrets fetched from AWS.
    pub fetched: AtomicU64,
    /// Calls to Secrets Manager.
    pub upstream_calls: AtomicU64,
}

/// The cache plus the logic that fills it.
pub struct Secrets {
    tenancy: Arc<Tenancy>,
    invocations: Arc<Invocations>,
    cache: Cache,
    counters: Counters,
    evidence: Arc<Evidence>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets").field("cache", &self.cache).finish_non_exhaustive()
    }
}

impl Secrets {
    /// An empty store whose values live `ttl` (zero: as long as their invocation).
    pub fn new(tenancy: Arc<Tenancy>, ttl: Duration, invocations: Arc<Invocations>, evidence: Arc<Evidence>) -> Self {
        let cache = Cache::new(ttl, Arc::clone(&invocations));
        Self { tenancy, invocations, cache, counters: Counters::default(), evidence }
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The cache (expiry and wiping are the lifecycle's to drive).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The allowlisted secret `entry` at `version`, from the cache or from AWS; `refresh` skips
    /// the cache for this read (a failure leaves the cache as it was). Every wait (for an
    /// invocation, for its session) ends at `deadline` and happens before the key's
    /// single-flight lock is taken, so concurrent readers wait side by side, not in turn; the
    /// lock then covers one upstream call.
    ///
    /// A read that began in the init phase and whose init scope ended before it was served
    /// (the first INVOKE, or the end of INIT, came meanwhile) is not served by the init session:
    /// it is read again under the scope that is current now.
    ///
    /// # Errors
    /// [`ReadError`], never containing a value.
    pub async fn get(
        &self,
        entry: EntryIndex,
        version: Version,
        refresh: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Served, ReadError> {
        let key = Key { entry, version: version.clone() };
        let served = if refresh { None } else { self.cache.fresh_served(&key) };
        let served = match served {
            Some(served) => Ok(served),
            None => self.get_with_scope(&key, refresh, deadline).await,
        };
        match &served {
            Ok(Served { source: Source::Cache, .. }) => {
                self.counters.cache_hits.fetch_add(1, Relaxed);
                self.evidence.cache(true);
            }
            Ok(Served { source: Source::Aws, .. }) => {
                self.counters.fetched.fetch_add(1, Relaxed);
                self.evidence.cache(false);
            }
            Err(_) => self.evidence.cache(false),
        }
        served
    }

    /// The miss path of [`Secrets::get`]: the scope, its session, then the key's single flight.
    async fn get_with_scope(
        &self,
        key: &Key,
        refresh: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Served, ReadError> {
        let waiting = Instant::now();
        let mut retried = false;
        loop {
            let scope = self.invocations.current_scope_until(deadline).await?;
            let session = match tokio::time::timeout_at(deadline, scope.session()).await {
                Ok(Ok(session)) => session,
                // The init scope ended while this read waited for its session: read again
                // under the scope that is current now (once).
                Ok(Err(ReadError::InvocationEnded)) if is_init(&scope) && !retried => {
                    retried = true;
                    continue;
                }
                Ok(Err(error)) => return Err(error),
                Err(_elapsed) => return Err(ReadError::WaitTimeout),
            };
            self.evidence.waited(waiting.elapsed());
            let served = self
                .cache
                .get_or_fetch(key.clone(), refresh, || self.fetch(key.entry, &key.version, &scope, &session))
                .await;
            scope.release(&session).await;
            drop(session);
            if is_init(&scope) && scope.has_ended() && !retried {
                // Fetched with the init session, but the init scope ended before the answer
                // went out: dropped (wiped, never cached), and read again.
                if let Ok(Served { source: Source::Aws, .. }) | Err(_) = &served {
                    retried = true;
                    continue;
                }
            }
            return served;
        }
    }

    /// One fetch with `scope`'s `session`: one `GetSecretValue`, and, when AWS refuses
    /// credentials that worked before (a revocation by another environment of this function),
    /// one renewal and one more try.
    async fn fetch(
        &self,
        entry: EntryIndex,
        version: &Version,
        scope: &Arc<Scope>,
        session: &Arc<Session>,
    ) -> Result<(Arc<SecretValue>, Arc<Scope>), ReadError> {
        let allowlist = self.tenancy.current().ok_or(ReadError::TenantUnknown)?;
        let secret_id = allowlist.entry(entry).map(|e| e.secret_id().to_owned()).unwrap_or_default();
        let output = match self.fetch_one(session, &secret_id, version).await {
            Err(refused @ ReadError::AccessDenied { .. }) if session.has_succeeded() => {
                match scope.renew_after_denial(session).await {
                    Ok(Some(renewed)) => {
                        let output = self.fetch_one(&renewed, &secret_id, version).await;
                        scope.release(&renewed).await;
                        output
                    }
                    Ok(None) => Err(refused),
                    Err(error) => Err(error),
                }
            }
            other => other,
        };
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
        Ok((value, Arc::clone(scope)))
    }

    async fn fetch_one(
        &self,
        session: &Session,
        secret_id: &str,
        version: &Version,
    ) -> Result<GetSecretValueOutput, ReadError> {
        let mut request = session.client().get_secret_value().secret_id(secret_id);
        request = match version {
            Version::Current => request,
            Version::Stage(stage) => request.version_stage(stage),
            Version::Id(id) => request.version_id(id),
        };
        self.counters.upstream_calls.fetch_add(1, Relaxed);
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
        let deadline = tokio::time::Instant::now() + self.invocations.wait_timeout();
        let allowlist = match self.tenancy.allowlist(deadline).await {
            Ok(allowlist) => allowlist,
            Err(error) => {
                tracing::warn!(event = "prefetch_failed", request_id = %scope.label(), cause = %error);
                return;
            }
        };
        let keys: Vec<Key> = allowlist
            .iter()
            .map(|(entry, _)| Key { entry, version: Version::Current })
            .filter(|key| self.cache.fresh_served(key).is_none())
            .collect();
        if keys.is_empty() {
            return;
        }
        // The session first, with no key locked: a request for one of these secrets meanwhile
        // waits for the same session, not behind the prefetch's wait for it.
        let session = match scope.session().await {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(event = "prefetch_failed", request_id = %scope.label(), cause = %error);
                return;
            }
        };
        // Held until the batch is stored: a request for one of these waits for it instead of
        // fetching it a second time.
        let locked = self.cache.lock_missing(keys).await;
        let wanted: Vec<(EntryIndex, String)> = locked
            .iter()
            .filter_map(|(key, _)| Some((key.entry, allowlist.entry(key.entry)?.secret_id().to_owned())))
            .collect();
        if wanted.is_empty() {
            scope.release(&session).await;
            return;
        }
        let calls = wanted.chunks(BATCH_LIMIT).map(|chunk| {
            let ids: Vec<String> = chunk.iter().map(|(_, id)| id.clone()).collect();
            self.counters.upstream_calls.fetch_add(1, Relaxed);
            session.client().batch_get_secret_value().set_secret_id_list(Some(ids)).send()
        });
        for result in futures_util::future::join_all(calls).await {
            let output = match result {
                Ok(output) => output,
                Err(error) => {
                    tracing::warn!(event = "prefetch_failed", request_id = %scope.label(), cause = %classify(&error));
                    continue;
                }
            };
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
                let entry = wanted
                    .iter()
                    .find(|(_, id)| *id == value.arn() || *id == value.name())
                    .map(|(entry, _)| *entry)
                    .or_else(|| allowlist.find(value.arn()));
                if let Some(entry) = entry {
                    self.counters.fetched.fetch_add(1, Relaxed);
                    self.cache.store(scope, Key { entry, version: Version::Current }, Arc::new(value));
                }
            }
        }
        scope.release(&session).await;
        drop(locked);
    }
}

/// Whether `scope` is the init phase's (the scope before any invocation).
fn is_init(scope: &Scope) -> bool {
    scope.generation() == 0 && scope.label() == "init"
}

fn classify<E: ProvideErrorMetadata + fmt::Debug, R: fmt::Debug>(error: &SdkError<E, R>) -> ReadError {
    match error {
        SdkError::TimeoutError(_) => ReadError::UpstreamTimeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => ReadError::UpstreamTimeout,
        SdkError::DispatchFailure(_) => ReadError::Upstream { kind: "connection failed".into() },
        SdkError::ServiceError(service) => {
            let mut code = service.err().code().unwrap_or("Unknown").to_owned();
            code.retain(|c| c.is_ascii_alphanumeric());
            match code.as_str() {
                "ResourceNotFoundException" => ReadError::NotFound,
                "AccessDeniedException"
                | "AccessDenied"
                | "UnrecognizedClientException"
                | "ExpiredTokenException"
                | "InvalidSignatureException" => ReadError::AccessDenied { code },
                "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => ReadError::Throttled,
                "InvalidParameterException" | "InvalidRequestException" | "ValidationException" => {
                    ReadError::InvalidRequest { code }
                }
                _ => ReadError::Upstream { kind: code },
            }
        }
        _ => ReadError::Upstream { kind: "unexpected answer".into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::code::Code;
    use crate::invocation::Start;
    use crate::testing;
    use std::time::SystemTime;

    /// Five concurrent reads of one secret, each with a one-second wait; when each answered.
    async fn five_readers(secrets: &Arc<Secrets>) -> Vec<(Result<(), Code>, Duration)> {
        let started = tokio::time::Instant::now();
        let readers: Vec<_> = (0..5)
            .map(|_| {
                let secrets = Arc::clone(secrets);
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                    let read = secrets.get(0, Version::Current, false, deadline).await;
                    (read.map(|_| ()).map_err(|e| e.code()), started.elapsed())
                })
            })
            .collect();
        let mut answers = Vec::new();
        for reader in readers {
            answers.push(reader.await.expect("joined"));
        }
        answers
    }

    async fn secrets(invocations: Arc<Invocations>) -> Arc<Secrets> {
        let (_, tenancy, evidence) = testing::factory(testing::config("app/db", &[])).await;
        Arc::new(Secrets::new(tenancy, Duration::from_secs(300), invocations, evidence))
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_readers_between_invocations_wait_side_by_side_not_in_turn() {
        let invocations = testing::invocations(Start::Init(SystemTime::now()), Duration::from_secs(1)).await;
        invocations.end_init().await;
        let secrets = secrets(invocations).await;
        let answers = five_readers(&secrets).await;
        for (result, at) in answers {
            assert_eq!((result, at), (Err(Code::NoActiveInvocation), Duration::from_secs(1)), "one wait each");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_readers_share_one_failed_session_start() {
        let invocations = testing::invocations(Start::Init(SystemTime::now()), Duration::from_secs(1)).await;
        invocations.begin("r1", SystemTime::now() + Duration::from_secs(60)).await;
        let secrets = secrets(invocations).await;
        let answers = five_readers(&secrets).await;
        let first = answers[0].1;
        for (result, at) in answers {
            assert_eq!(result, Err(Code::SessionFailed), "STS is a closed port");
            assert_eq!(at, first, "answered together, not one after another");
        }
    }
}
