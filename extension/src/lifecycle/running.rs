//! The invocations the lifecycle loop is in, and the transitions that open and close them.
//!
//! An invocation begins at whichever of its two announcements reaches the loop first: the
//! Extensions API's INVOKE or, through the Runtime API proxy, the runtime's `/next` answer
//! ([`RuntimeEvent::Next`]). It ends (`auto`) at whichever comes first of the function's
//! `/response` or `/error` through the proxy, its `platform.runtimeDone` from telemetry, or its
//! deadline. The loop asks for the next event only once the invocation has ended *and* its
//! INVOKE has arrived: the proxy can report the response before the loop has seen the INVOKE,
//! so invocations that ended before their INVOKE are remembered ([`Pending`]), bounded.
//!
//! On Managed Instances no INVOKE comes: each `/next` answer opens a concurrent scope, its
//! `/response`, `/error` or deadline closes it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::AbortHandle;
use tokio::time::Sleep;

use super::init::Extension;
use crate::domain::request_id::RequestId;
use crate::invocation::scope::Scope;
use crate::runtime_proxy::Outcome;
use crate::tenant::Observed;

/// How many invocations that ended before their INVOKE arrived are remembered.
const PENDING: usize = 64;

/// How an invocation's end was known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// Its `/next` came through the Runtime API proxy.
    RuntimeApi,
    /// Only the Extensions API and telemetry know it.
    Telemetry,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::RuntimeApi => "runtime_api",
            Via::Telemetry => "telemetry",
        }
    }
}

/// The invocation the loop is in.
pub(super) struct Running {
    pub(super) scope: Arc<Scope>,
    pub(super) request_id: String,
    began: Instant,
    /// Its deadline: the loop waits for the end until then (`next-invoke`: ends it then).
    pub(super) deadline: Pin<Box<Sleep>>,
    prefetch: Option<AbortHandle>,
    /// Whether the Extensions API's INVOKE for it has arrived (the next event may be asked for
    /// only after it).
    pub(super) invoke_received: bool,
    /// Whether its `/next` came through the proxy.
    pub(super) via: Via,
}

impl Running {
    /// Stops its prefetch (a newer invocation replaces it).
    pub(super) fn abort_prefetch(&self) {
        if let Some(prefetch) = &self.prefetch {
            prefetch.abort();
        }
    }
}

/// Invocations that ended before their INVOKE arrived: when it does, the loop asks for the next
/// event at once instead of beginning them again.
#[derive(Debug, Default)]
pub(super) struct Pending(VecDeque<String>);

impl Pending {
    pub(super) fn remember(&mut self, request_id: String) {
        if self.0.len() == PENDING {
            self.0.pop_front();
        }
        self.0.push_back(request_id);
    }

    /// Whether `request_id` ended before its INVOKE (forgotten once asked).
    pub(super) fn take(&mut self, request_id: &str) -> bool {
        let found = self.0.iter().position(|id| id == request_id);
        found.map(|index| self.0.remove(index)).is_some()
    }
}

impl Extension {
    /// Opens invocation `request_id`'s scope (ending any open one), wipes what a previous scope
    /// left with TTL 0, and starts the prefetch.
    pub(super) async fn begin_invocation(
        &self,
        request_id: String,
        deadline_ms: u64,
        invoke_received: bool,
        via: Via,
    ) -> Running {
        let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
        // Named before its scope opens: no read of this invocation can look before it is. A
        // tenant record (telemetry's, or the proxy's `/next` header) that named it early is
        // decided now.
        self.tenancy.serve(&request_id);
        let scope = self.invocations.begin(&request_id, deadline + self.config.deadline_margin).await;
        // Values a previous scope fetched with TTL 0 go now (with next-invoke nothing wiped them).
        self.secrets.cache().expire();
        let prefetch = self.config.prefetch.then(|| {
            let (secrets, scope) = (Arc::clone(&self.secrets), Arc::clone(&scope));
            self.tasks.spawn(async move { secrets.prefetch(&scope).await }).abort_handle()
        });
        let until_deadline = deadline.duration_since(SystemTime::now()).unwrap_or_default();
        Running {
            scope,
            request_id,
            began: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(until_deadline)),
            prefetch,
            invoke_received,
            via,
        }
    }

    /// The invocation is over (`reason`: `response`, `error`, `runtime_done`, `deadline`): its
    /// scope ends before the next event is asked for.
    pub(super) async fn end_invocation(&self, invocation: Running, reason: &'static str) {
        let waited = invocation.began.elapsed();
        let ending = Instant::now();
        let request_id = invocation.request_id.clone();
        let via = invocation.via;
        let wiped = self.end_scope(invocation, reason).await;
        tracing::info!(
            target: "audit",
            event = "invocation_ended",
            request_id = %request_id,
            reason,
            end_of_invocation = via.as_str(),
            invocation_ms = waited.as_millis() as u64,
            secrets_wiped = wiped as u64,
            end_us = ending.elapsed().as_micros() as u64,
        );
        self.emit_metrics(&[]);
    }

    /// Ends `invocation`'s scope: its prefetch stops, its session is dropped, TTL-0 values go.
    /// Returns how many values were wiped.
    pub(super) async fn end_scope(&self, invocation: Running, reason: &'static str) -> usize {
        invocation.abort_prefetch();
        self.invocations.finish(&invocation.scope, reason).await;
        self.secrets.cache().expire()
    }

    /// The tenant Lambda named in invocation `request_id`'s `/next` answer: decided at once
    /// for the invocation being served, else kept until its scope opens ([`Tenancy::serve`]);
    /// the tenancy writes the audit line. Returns `false` when it is another tenant than the
    /// environment's (the caller then stops everything).
    ///
    /// [`Tenancy::serve`]: crate::tenant::Tenancy::serve
    pub(super) fn observe_tenant(&self, raw: &str, request_id: &RequestId) -> bool {
        self.tenancy.observe_from(raw, request_id.as_str(), "runtime_api") != Observed::Changed
    }

    /// Managed Instances: invocation `request_id` begins beside the others.
    pub(super) fn begin_concurrent(&self, request_id: &RequestId, deadline_ms: u64) {
        let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
        let began = self.invocations.begin_concurrent(request_id, deadline, deadline + self.config.deadline_margin);
        if began.is_none() {
            tracing::warn!(event = "concurrent_invocation_not_tracked", request_id = %request_id);
        }
    }

    /// Managed Instances: invocation `request_id` ended (`reason`).
    pub(super) async fn end_concurrent(&self, request_id: &RequestId, reason: &'static str) {
        if self.invocations.finish_concurrent(request_id, reason).await {
            tracing::info!(
                target: "audit",
                event = "invocation_ended",
                request_id = %request_id,
                reason,
                end_of_invocation = Via::RuntimeApi.as_str(),
                concurrent = self.invocations.concurrent().len() as u64,
            );
        }
    }
}

/// How `outcome` ends an invocation, for its audit lines.
pub(super) fn reason_of(outcome: Outcome) -> &'static str {
    outcome.as_str()
}
