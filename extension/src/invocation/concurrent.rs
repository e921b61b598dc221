//! Invocations running at once in one environment (Lambda Managed Instances), as the Runtime
//! API proxy makes them known: each `/next` answer opens a scope of its own, the function's
//! `/response` or `/error` (or its deadline) ends it. A local request that names its invocation
//! (`X-Scoped-Secrets-Request-Id`) is served by that invocation's scope, and only while it runs.
//!
//! Bounded: at most [`MAX_LIVE`] scopes (Lambda's own per-environment concurrency is far
//! lower); the ids of the [`REMEMBERED`] newest that ended are kept, so a request naming one of
//! them is refused at once instead of waiting. Locks are std `Mutex`es, held for a lookup or an
//! insert, never across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use tokio::sync::watch;

use super::scope::Scope;
use crate::domain::error::ReadError;
use crate::domain::request_id::RequestId;

/// Scopes running at once, at most.
pub const MAX_LIVE: usize = 1_024;
/// Ended ids remembered.
const REMEMBERED: usize = 256;

/// A running invocation: its scope and its deadline.
#[derive(Debug)]
struct Live {
    scope: Arc<Scope>,
    deadline: SystemTime,
}

/// The invocations running now, by request id.
#[derive(Debug)]
pub struct Concurrent {
    live: Mutex<HashMap<RequestId, Live>>,
    ended: Mutex<VecDeque<RequestId>>,
    /// Bumped on every change, to wake [`Concurrent::wait_live`].
    changed: watch::Sender<u64>,
}

impl Default for Concurrent {
    fn default() -> Self {
        Self { live: Mutex::default(), ended: Mutex::default(), changed: watch::Sender::new(0) }
    }
}

impl Concurrent {
    /// Adds `scope` for `id` until `deadline`. `false` when full or already there.
    pub(super) fn insert(&self, id: RequestId, scope: Arc<Scope>, deadline: SystemTime) -> bool {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live.len() >= MAX_LIVE || live.contains_key(&id) {
            return false;
        }
        live.insert(id, Live { scope, deadline });
        drop(live);
        self.changed.send_modify(|count| *count += 1);
        true
    }

    /// Takes out `id`'s scope, remembering that it ended.
    pub(super) fn remove(&self, id: &RequestId) -> Option<Arc<Scope>> {
        let removed = self.live.lock().unwrap_or_else(PoisonError::into_inner).remove(id)?;
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        if ended.len() == REMEMBERED {
            ended.pop_front();
        }
        ended.push_back(id.clone());
        drop(ended);
        self.changed.send_modify(|count| *count += 1);
        Some(removed.scope)
    }

    /// The ids whose deadline has passed at `now`.
    pub(super) fn overdue(&self, now: SystemTime) -> Vec<RequestId> {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| id.clone()).collect()
    }

    /// The earliest deadline of a running invocation.
    pub fn earliest_deadline(&self) -> Option<SystemTime> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).values().map(|l| l.deadline).min()
    }

    /// Every running scope, taken out (SHUTDOWN).
    pub(super) fn drain(&self) -> Vec<Arc<Scope>> {
        let drained: Vec<Arc<Scope>> =
            self.live.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, l)| l.scope).collect();
        self.changed.send_modify(|count| *count += 1);
        drained
    }

    /// How many run now.
    pub fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, id: &RequestId) -> Option<Arc<Scope>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).get(id).map(|l| Arc::clone(&l.scope))
    }

    fn has_ended(&self, id: &RequestId) -> bool {
        self.ended.lock().unwrap_or_else(PoisonError::into_inner).contains(id)
    }

    /// `id`'s scope, waiting until `deadline` for it to begin (its `/next` answer and the request
    /// it led to race to the extension).
    ///
    /// # Errors
    /// [`ReadError::RequestIdNotLive`] when it has ended, or does not begin within the wait.
    pub async fn wait_live(&self, id: &RequestId, deadline: tokio::time::Instant) -> Result<Arc<Scope>, ReadError> {
        let mut receiver = self.changed.subscribe();
        let found = async {
            loop {
                if let Some(scope) = self.get(id) {
                    return Ok(scope);
                }
                if self.has_ended(id) {
                    return Err(ReadError::RequestIdNotLive);
                }
                if receiver.changed().await.is_err() {
                    return Err(ReadError::RequestIdNotLive);
                }
            }
        };
        tokio::time::timeout_at(deadline, found).await.unwrap_or(Err(ReadError::RequestIdNotLive))
    }
}
