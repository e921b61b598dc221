//! The zeroizing cache and its single flight.
//!
//! A value is fresh for its TTL, or, with TTL 0, for as long as the scope that fetched it is
//! the one running (its generation). A value fetched for a scope that has since ended is never
//! stored. Concurrent requests for one key make one upstream call: the second waits on the
//! key's lock and then finds the first one's value, or, if that call failed, its failure (so N
//! waiters wait one upstream call, not N in turn). The lock is held only across the upstream
//! call itself: the waits for an invocation and for its session happen before it (see
//! [`super::Secrets::get`]). Dropping a value (expiry, wipe, eviction) wipes it: [`Item`] holds
//! its bytes in zeroizing memory. A key is an allowlist entry (secrets and parameters share one
//! index space) and what was asked of it ([`Wanted`]): a secret's version, or a parameter's
//! version with or without decryption. A `String` or `StringList` parameter reads the same
//! either way, so it is stored under both.
//!
//! Locks: the map is behind a std `Mutex` (held for a lookup or an insert, never across an
//! `.await`); each key's single-flight lock is a tokio `Mutex` (held across the fetch).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fnv::FnvHashMap;
use tokio::time::Instant;

use super::served::{Item, Served, Source};
use crate::config::allowlist::EntryIndex;
use crate::domain::error::ReadError;
use crate::domain::item::Wanted;
use crate::invocation::Invocations;
use crate::invocation::scope::Scope;

/// What is cached: one version of one allowlisted item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The allowlist entry.
    pub entry: EntryIndex,
    /// What was asked of it.
    pub wanted: Wanted,
}

struct Cached {
    value: Item,
    /// When the TTL runs out (`None`: past what an `Instant` can hold). Kept as the instant,
    /// not the fetch time: a read compares it with now, with no subtraction (callgrind: the
    /// `elapsed()` it replaced was ~40 of a cached GET's instructions).
    stale_at: Option<Instant>,
    generation: u64,
}

/// One key's single flight: its lock, and the outcome of the last fetch made under it.
#[derive(Default)]
struct Flight {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// How many fetches have finished under the lock.
    finished: AtomicU64,
    /// The last one's failure (`None`: it succeeded), for those that waited through it.
    failure: Mutex<Option<ReadError>>,
}

/// Values by key, each with when and by which scope it was fetched.
pub struct Cache {
    ttl: Duration,
    invocations: Arc<Invocations>,
    /// FNV, not SipHash: keys are allowlist entries and versions AWS has, not a caller's choice.
    entries: Mutex<FnvHashMap<Key, Cached>>,
    in_flight: Mutex<HashMap<Key, Arc<Flight>>>,
    /// Woken when a value is stored, so the expiry sweeper learns of a new deadline.
    stored: tokio::sync::Notify,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl Cache {
    /// An empty cache whose values live `ttl` (zero: as long as their invocation).
    pub fn new(ttl: Duration, invocations: Arc<Invocations>) -> Self {
        Self {
            ttl,
            invocations,
            entries: Mutex::default(),
            in_flight: Mutex::default(),
            stored: tokio::sync::Notify::new(),
        }
    }

    /// The fresh value for `key`, else the one `fetch` gets (and, fresh enough to keep, stores).
    /// Concurrent callers for one key share one `fetch`, its value or its failure; `refresh`
    /// skips the cache for this call unless a fetch finished while it waited (a failure leaves
    /// the cache as it was).
    ///
    /// # Errors
    /// `fetch`'s error, or the failure of the fetch this call waited through.
    pub async fn get_or_fetch<F, Fut>(&self, key: Key, refresh: bool, fetch: F) -> Result<Served, ReadError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Item, Arc<Scope>), ReadError>>,
    {
        if let Some(value) = self.fresh(&key).filter(|_| !refresh) {
            return Ok(Served { value, source: Source::Cache, scope: None });
        }
        let flight = self.flight(&key);
        let seen = flight.finished.load(Ordering::Acquire);
        let _guard = flight.lock.lock().await;
        let joined = flight.finished.load(Ordering::Acquire) != seen;
        if let Some(value) = self.fresh(&key).filter(|_| !refresh || joined) {
            // Another request fetched it while this one waited: one upstream call for both.
            return Ok(Served { value, source: Source::Cache, scope: None });
        }
        if joined && let Some(failure) = flight.failure.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Err(failure);
        }
        let fetched = fetch().await;
        *flight.failure.lock().unwrap_or_else(PoisonError::into_inner) = fetched.as_ref().err().cloned();
        flight.finished.fetch_add(1, Ordering::AcqRel);
        let (value, scope) = fetched?;
        self.store(&scope, key, value.clone());
        Ok(Served { value, source: Source::Aws, scope: Some(scope.label().to_owned()) })
    }

    /// Takes the single-flight locks of `keys` that hold no fresh value, in order, and returns
    /// those keys with their guards (the prefetch fetches them in one batch while holding them).
    pub async fn lock_missing(&self, keys: Vec<Key>) -> Vec<(Key, KeyGuard)> {
        let mut locked = Vec::new();
        for key in keys {
            if self.fresh(&key).is_some() {
                continue;
            }
            let flight = self.flight(&key);
            let guard = KeyGuard { _guard: Arc::clone(&flight.lock).lock_owned().await, _flight: flight };
            if self.fresh(&key).is_none() {
                locked.push((key, guard));
            }
        }
        locked
    }

    /// Keeps `value` for `key`, unless `scope` has ended (then it is dropped and wiped, never
    /// cached past its end). A per-fetch scope, or one of several invocations running at once,
    /// is not the one running: with TTL 0 its values serve their own request only.
    pub fn store(&self, scope: &Scope, key: Key, value: Item) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked under the map's lock, so an end that races this store is seen by one of them.
        if scope.has_ended() || (self.ttl.is_zero() && !scope.keeps_values_while_running()) {
            return;
        }
        let (stale_at, generation) = (Instant::now().checked_add(self.ttl), scope.generation());
        if let (Wanted::Parameter { version, decrypt }, Item::Parameter(parameter)) = (&key.wanted, &value)
            && !parameter.is_secure()
        {
            // The same answer with or without decryption: either request finds it.
            let other =
                Key { entry: key.entry, wanted: Wanted::Parameter { version: version.clone(), decrypt: !decrypt } };
            entries.insert(other, Cached { value: value.clone(), stale_at, generation });
        }
        entries.insert(key, Cached { value, stale_at, generation });
        drop(entries);
        self.stored.notify_one();
    }

    /// Drops values that may not outlive their invocation (TTL 0) or are stale. Returns how many.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let before = entries.len();
        entries.retain(|_, cached| !self.ttl.is_zero() && cached.stale_at.is_none_or(|at| now < at));
        before - entries.len()
    }

    /// Wipes every value. Returns how many there were.
    pub fn wipe_all(&self) -> usize {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let count = entries.len();
        entries.clear();
        entries.shrink_to_fit();
        count
    }

    /// How many values are cached.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the oldest value goes stale (`None`: nothing cached, or TTL 0, whose values end
    /// with their invocation instead).
    pub fn earliest_expiry(&self) -> Option<Instant> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.values().filter_map(|cached| cached.stale_at).min()
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
                () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {}
            }
            let wiped = self.expire();
            if wiped > 0 {
                tracing::info!(target: "audit", event = "secrets_expired", secrets_wiped = wiped as u64);
            }
        }
    }

    /// The fresh value for `key`, served from the cache, without waiting for anything.
    pub fn fresh_served(&self, key: &Key) -> Option<Served> {
        self.fresh(key).map(|value| Served { value, source: Source::Cache, scope: None })
    }

    fn fresh(&self, key: &Key) -> Option<Item> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = entries.get(key)?;
        let fresh = if self.ttl.is_zero() {
            self.invocations.is_current_generation(cached.generation)
        } else {
            cached.stale_at.is_none_or(|at| Instant::now() < at)
        };
        fresh.then(|| cached.value.clone())
    }

    fn flight(&self, key: &Key) -> Arc<Flight> {
        let mut flights = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        // Flights nobody holds are dropped, so the map stays as small as the number of keys
        // being fetched right now.
        flights.retain(|_, flight| Arc::strong_count(flight) > 1);
        Arc::clone(flights.entry(key.clone()).or_default())
    }
}

/// A key's single-flight lock, held until dropped (the prefetch holds several while its batch
/// is out); it keeps the key's flight in the map while held.
pub struct KeyGuard {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    _flight: Arc<Flight>,
}

impl std::fmt::Debug for KeyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyGuard")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::parameter::ParameterVersion;
    use crate::domain::version::Version;
    use crate::invocation::Start;
    use crate::secrets::parameter::ParameterValue;
    use crate::secrets::value::SecretValue;
    use crate::testing;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::SystemTime;

    fn value(version: &str) -> Item {
        Item::Secret(Arc::new(SecretValue::from_parts(
            Some("arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-AbC123".into()),
            Some("app/db".into()),
            Some(version.into()),
            Some("canary-value".into()),
            None,
            None,
            None,
        )))
    }

    fn key() -> Key {
        Key { entry: 0, wanted: Wanted::Secret(Version::Current) }
    }

    async fn setup(ttl: Duration) -> (Arc<Cache>, Arc<Invocations>, Arc<Scope>) {
        let invocations = testing::invocations(Start::Init(SystemTime::now()), Duration::from_secs(5)).await;
        let scope = invocations.begin("r1", SystemTime::now() + Duration::from_secs(60)).await;
        (Arc::new(Cache::new(ttl, Arc::clone(&invocations))), invocations, scope)
    }

    /// A fetch that counts its calls and takes `delay`.
    fn fetch(
        calls: &AtomicUsize,
        scope: &Arc<Scope>,
        version: &'static str,
        delay: Duration,
    ) -> impl Future<Output = Result<(Item, Arc<Scope>), ReadError>> {
        calls.fetch_add(1, Ordering::SeqCst);
        let scope = Arc::clone(scope);
        async move {
            tokio::time::sleep(delay).await;
            Ok((value(version), scope))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_is_served_from_the_cache_for_its_ttl_and_then_fetched_again() {
        let (cache, _, scope) = setup(Duration::from_secs(10)).await;
        let calls = AtomicUsize::new(0);
        let first = cache.get_or_fetch(key(), false, || fetch(&calls, &scope, "v1", Duration::ZERO)).await;
        assert_eq!(first.expect("fetched").source, Source::Aws);
        tokio::time::advance(Duration::from_secs(9)).await;
        let hit = cache.get_or_fetch(key(), false, || fetch(&calls, &scope, "v2", Duration::ZERO)).await;
        assert_eq!(hit.expect("cached").source, Source::Cache);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.earliest_expiry().map(|at| at - Instant::now()), Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        let stale = cache.get_or_fetch(key(), false, || fetch(&calls, &scope, "v2", Duration::ZERO)).await;
        assert_eq!(stale.expect("fetched again").value.version_id(), "v2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(cache.expire(), 1, "the stale value is wiped");
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_reads_of_one_secret_make_one_fetch() {
        let (cache, _, scope) = setup(Duration::from_secs(300)).await;
        let calls = AtomicUsize::new(0);
        let slow = || fetch(&calls, &scope, "v1", Duration::from_secs(1));
        let (a, b) = tokio::join!(cache.get_or_fetch(key(), false, slow), cache.get_or_fetch(key(), false, slow));
        let (a, b) = (a.expect("a"), b.expect("b"));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one upstream call for both");
        let (Item::Secret(a_value), Item::Secret(b_value)) = (&a.value, &b.value) else { panic!("secrets") };
        assert!(Arc::ptr_eq(a_value, b_value));
        assert_eq!([a.source, b.source].iter().filter(|s| **s == Source::Cache).count(), 1);
        let other = Key { entry: 0, wanted: Wanted::Secret(Version::Stage("AWSPREVIOUS".into())) };
        cache.get_or_fetch(other, false, || fetch(&calls, &scope, "v0", Duration::ZERO)).await.expect("other");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "another version is another key");
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_skips_the_cache_and_a_failed_refresh_keeps_the_value() {
        let (cache, _, scope) = setup(Duration::from_secs(300)).await;
        let calls = AtomicUsize::new(0);
        cache.get_or_fetch(key(), false, || fetch(&calls, &scope, "v1", Duration::ZERO)).await.expect("v1");
        let refreshed = cache.get_or_fetch(key(), true, || fetch(&calls, &scope, "v2", Duration::ZERO)).await;
        assert_eq!(refreshed.expect("refreshed").value.version_id(), "v2");
        let failed = cache.get_or_fetch(key(), true, || async { Err(ReadError::Throttled) }).await;
        assert!(matches!(failed, Err(ReadError::Throttled)));
        let kept = cache.get_or_fetch(key(), false, || async { Err(ReadError::Throttled) }).await;
        assert_eq!(kept.expect("still cached").value.version_id(), "v2");
    }

    #[tokio::test(start_paused = true)]
    async fn with_ttl_zero_a_value_lives_only_as_long_as_its_invocation() {
        let (cache, invocations, scope) = setup(Duration::ZERO).await;
        let calls = AtomicUsize::new(0);
        cache.get_or_fetch(key(), false, || fetch(&calls, &scope, "v1", Duration::ZERO)).await.expect("v1");
        tokio::time::advance(Duration::from_secs(3_600)).await;
        let hit = cache.get_or_fetch(key(), false, || fetch(&calls, &scope, "v1", Duration::ZERO)).await;
        assert_eq!(hit.expect("same invocation").source, Source::Cache, "no clock: the invocation bounds it");
        assert_eq!(cache.earliest_expiry(), None);
        invocations.finish(&scope, "runtime_done").await;
        let next = invocations.begin("r2", SystemTime::now() + Duration::from_secs(60)).await;
        let miss = cache.get_or_fetch(key(), false, || fetch(&calls, &next, "v1", Duration::ZERO)).await;
        assert_eq!(miss.expect("fetched for r2").source, Source::Aws, "r2 never sees r1's value");
        invocations.finish(&next, "runtime_done").await;
        assert_eq!(cache.expire(), 1, "the end of the invocation wipes its values");
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_fetched_for_an_ended_scope_is_served_once_and_never_kept() {
        let (cache, _, scope) = setup(Duration::from_secs(300)).await;
        let calls = AtomicUsize::new(0);
        let ended = Arc::clone(&scope);
        let racing = cache.get_or_fetch(key(), false, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                ended.end("runtime_done").await;
                Ok((value("v1"), ended))
            }
        });
        assert_eq!(racing.await.expect("served to its request").source, Source::Aws);
        assert!(cache.is_empty(), "not cached past its invocation's end");
    }

    #[tokio::test(start_paused = true)]
    async fn values_are_wiped_when_their_ttl_runs_out_even_with_no_invocation() {
        let (cache, _, scope) = setup(Duration::from_secs(10)).await;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let sweeper = {
            let (cache, shutdown) = (Arc::clone(&cache), shutdown.clone());
            tokio::spawn(async move { cache.expire_on_time(shutdown).await })
        };
        tokio::task::yield_now().await;
        cache.store(&scope, key(), value("v1"));
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(cache.len(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(cache.is_empty(), "the sweeper wiped it at its TTL");
        shutdown.cancel();
        sweeper.await.expect("the sweeper stops at shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn the_prefetch_locks_only_what_is_missing() {
        let (cache, _, scope) = setup(Duration::from_secs(300)).await;
        cache.store(&scope, key(), value("v1"));
        let other = Key { entry: 1, wanted: Wanted::Secret(Version::Current) };
        let locked = cache.lock_missing(vec![key(), other.clone()]).await;
        assert_eq!(locked.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), vec![other.clone()]);
        let calls = AtomicUsize::new(0);
        let waiting = cache.get_or_fetch(other.clone(), false, || fetch(&calls, &scope, "v1", Duration::ZERO));
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending(), "a read waits for the batch holding its lock");
        cache.store(&scope, other, value("batch"));
        drop(locked);
        assert_eq!(waiting.await.expect("served").value.version_id(), "batch");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "no second fetch");
    }

    fn parameter(kind: aws_sdk_ssm::types::ParameterType) -> Item {
        Item::Parameter(Arc::new(ParameterValue::from_sdk(
            aws_sdk_ssm::types::Parameter::builder().name("/app/config").r#type(kind).value("v").version(1).build(),
        )))
    }

    #[tokio::test(start_paused = true)]
    async fn parameters_are_keyed_by_decryption_unless_their_value_is_the_same_either_way() {
        let (cache, _, scope) = setup(Duration::from_secs(300)).await;
        let key =
            |entry, decrypt| Key { entry, wanted: Wanted::Parameter { version: ParameterVersion::Latest, decrypt } };
        cache.store(&scope, key(1, true), parameter(aws_sdk_ssm::types::ParameterType::String));
        cache.store(&scope, key(2, true), parameter(aws_sdk_ssm::types::ParameterType::SecureString));
        assert!(cache.fresh(&key(1, false)).is_some(), "a String reads the same without decryption");
        assert!(cache.fresh(&key(2, false)).is_none(), "a SecureString's ciphertext is another answer");
        assert!(cache.fresh(&key(2, true)).is_some());
        let version =
            Key { entry: 2, wanted: Wanted::Parameter { version: ParameterVersion::Number(1), decrypt: true } };
        assert!(cache.fresh(&version).is_none(), "another version is another key");
        assert!(cache.fresh(&Key { entry: 1, wanted: Wanted::Secret(Version::Current) }).is_none());
        assert_eq!(cache.len(), 3);
    }
}
