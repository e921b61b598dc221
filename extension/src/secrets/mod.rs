//! The store: secrets and parameters fetched with the current scope's session into zeroizing
//! memory, and the cache they are served from.
//!
//! A read goes through [`Secrets::get`]: the cache ([`cache`]) answers, or one fetch per key
//! (single flight) asks Secrets Manager (`GetSecretValue`) or Parameter Store (`GetParameter`)
//! with the scope's session. At INVOKE, [`Secrets::prefetch`] fetches every allowlisted item
//! that is missing or stale while the function starts: secrets with `BatchGetSecretValue` (20 a
//! call), parameters with `GetParameters` (10 a call), all the calls in parallel.
//! See <https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_BatchGetSecretValue.html>.

pub mod cache;
pub mod parameter;
mod prefetch;
pub mod served;
mod upstream;
pub mod value;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use self::cache::{Cache, Key};
use self::served::{Item, Served, Source};
use self::upstream::classify;
use self::value::SecretValue;
use crate::config::allowlist::EntryIndex;
use crate::domain::error::ReadError;
use crate::domain::item::Wanted;
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

    /// What `wanted` asks of the allowlisted item `entry`, from the cache or from AWS; `refresh`
    /// skips the cache for this read (a failure leaves the cache as it was). Every wait (for an
    /// invocation, for its session) ends at `deadline` and happens before the key's
    /// single-flight lock is taken, so concurrent readers wait side by side, not in turn; the
    /// lock then covers one upstream call.
    ///
    /// A read that began in the init phase and whose init scope ended before it was served
    /// (the first INVOKE, or the end of INIT, came meanwhile) is not served by the init session:
    /// it is read again under the scope that is current now. `named`: the scope of the
    /// invocation the caller named (Managed Instances through the Runtime API proxy), whose
    /// session fetches instead of the current scope's.
    ///
    /// # Errors
    /// [`ReadError`], never containing a value.
    pub async fn get(
        &self,
        entry: EntryIndex,
        wanted: Wanted,
        refresh: bool,
        deadline: tokio::time::Instant,
        named: Option<&Arc<Scope>>,
    ) -> Result<Served, ReadError> {
        let key = Key { entry, wanted };
        let served = if refresh { None } else { self.cache.fresh_served(&key) };
        let served = match served {
            Some(served) => Ok(served),
            // Boxed: the miss path holds the SDK's futures (6.7 KB), and every request's
            // future is moved twice on its way into hyper; inline, a cached GET copied ~10 KB
            // per request (17 % of its instructions under callgrind).
            None => Box::pin(self.get_with_scope(&key, refresh, deadline, named)).await,
        };
        self.count(served.as_ref());
        served
    }

    /// The fresh cached value of `entry`, without waiting and without counting it (the local
    /// API's ready path: [`Secrets::count`] once it serves it; otherwise it goes through
    /// [`Secrets::get`], which counts).
    pub fn cached(&self, entry: EntryIndex, wanted: Wanted) -> Option<Served> {
        self.cache.fresh_served(&Key { entry, wanted })
    }

    /// Counts what [`Secrets::get`] or [`Secrets::cached`] served: a cache hit or a fetch.
    pub fn count(&self, served: Result<&Served, &ReadError>) {
        match served {
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
    }

    /// The miss path of [`Secrets::get`]: the scope, its session, then the key's single flight.
    async fn get_with_scope(
        &self,
        key: &Key,
        refresh: bool,
        deadline: tokio::time::Instant,
        named: Option<&Arc<Scope>>,
    ) -> Result<Served, ReadError> {
        let waiting = Instant::now();
        let mut retried = false;
        loop {
            let scope = match named {
                Some(scope) => Arc::clone(scope),
                None => self.invocations.current_scope_until(deadline).await?,
            };
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
                .get_or_fetch(key.clone(), refresh, || self.fetch(key.entry, &key.wanted, &scope, &session))
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

    /// One fetch with `scope`'s `session`: one `GetSecretValue` or `GetParameter`, and, when AWS
    /// refuses credentials that worked before (a revocation by another environment of this
    /// function), one renewal and one more try.
    async fn fetch(
        &self,
        entry: EntryIndex,
        wanted: &Wanted,
        scope: &Arc<Scope>,
        session: &Arc<Session>,
    ) -> Result<(Item, Arc<Scope>), ReadError> {
        let allowlist = self.tenancy.current().ok_or(ReadError::TenantUnknown)?;
        let id = allowlist.entry(entry).map(|e| e.upstream_id().to_owned()).unwrap_or_default();
        let item = match self.fetch_one(session, &id, wanted).await {
            Err(refused @ ReadError::AccessDenied { .. }) if session.has_succeeded() => {
                match scope.renew_after_denial(session).await {
                    Ok(Some(renewed)) => {
                        let item = self.fetch_one(&renewed, &id, wanted).await;
                        scope.release(&renewed).await;
                        item
                    }
                    Ok(None) => Err(refused),
                    Err(error) => Err(error),
                }
            }
            other => other,
        };
        Ok((item?, Arc::clone(scope)))
    }

    async fn fetch_one(&self, session: &Session, id: &str, wanted: &Wanted) -> Result<Item, ReadError> {
        self.counters.upstream_calls.fetch_add(1, Relaxed);
        let started = Instant::now();
        let item = match wanted {
            Wanted::Secret(version) => get_secret(session, id, version).await.map(|v| Item::Secret(Arc::new(v))),
            Wanted::Parameter { version, decrypt } => {
                parameter::get(session, id, version, *decrypt).await.map(|v| Item::Parameter(Arc::new(v)))
            }
        };
        self.evidence.fetch(started.elapsed());
        let item = item?;
        session.mark_succeeded();
        Ok(item)
    }
}

/// One `GetSecretValue` with `session`, the value moved into zeroizing memory.
async fn get_secret(session: &Session, secret_id: &str, version: &Version) -> Result<SecretValue, ReadError> {
    let client = session.client().ok_or_else(|| ReadError::Upstream { kind: "no Secrets Manager client".into() })?;
    let mut request = client.get_secret_value().secret_id(secret_id);
    request = match version {
        Version::Current => request,
        Version::Stage(stage) => request.version_stage(stage),
        Version::Id(id) => request.version_id(id),
    };
    let output = request.send().await.map_err(|e| classify(&e))?;
    Ok(SecretValue::from_parts(
        output.arn,
        output.name,
        output.version_id,
        output.secret_string,
        output.secret_binary,
        output.version_stages,
        output.created_date,
    ))
}

/// Whether `scope` is the init phase's (the scope before any invocation).
fn is_init(scope: &Scope) -> bool {
    scope.generation() == 0 && scope.label() == "init"
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
                    let read = secrets.get(0, Wanted::Secret(Version::Current), false, deadline, None).await;
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
