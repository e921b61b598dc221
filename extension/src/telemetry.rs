//! The Telemetry API listener: learns when the runtime finished each invocation.
//!
//! Lambda POSTs batches of `platform` events here; `platform.runtimeDone` for a request id is
//! the signal to end that invocation's scope (wipe its credentials) before asking for the next
//! event. Nothing in a telemetry record is trusted beyond ending a scope early, which only
//! shortens a credential's life, with two exceptions that come from the platform itself:
//! `platform.restoreStart` (a SnapStart restore: the environment id is drawn anew) and the
//! `tenantId` of `platform.start` (tenant isolation: validated, then it resolves `{tenant}`;
//! a second tenant breaks the environment). Records are read only from the listener Lambda
//! was given. See <https://docs.aws.amazon.com/lambda/latest/dg/telemetry-schema-reference.html>.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::http::{ConnectionLimits, accept_loop, status_response as status};
use crate::tenant::{Observed, Tenancy};

/// How many finished request ids are remembered (runtimeDone may arrive before the INVOKE
/// event is processed).
const REMEMBERED: usize = 64;
/// Largest telemetry batch accepted (Lambda's own cap is 256 KiB as subscribed).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Connections served at once: Lambda delivers one batch at a time.
const MAX_CONNECTIONS: usize = 4;

/// Request ids whose runtime has finished.
#[derive(Debug)]
pub struct Completions {
    done: Mutex<VecDeque<String>>,
    notify: Notify,
    init_done: tokio::sync::watch::Sender<bool>,
    restore_started: tokio::sync::watch::Sender<bool>,
}

impl Default for Completions {
    fn default() -> Self {
        Self {
            done: Mutex::default(),
            notify: Notify::new(),
            init_done: tokio::sync::watch::Sender::new(false),
            restore_started: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Completions {
    /// Records a SnapStart restore (`platform.restoreStart`).
    pub fn record_restore_start(&self) {
        self.restore_started.send_replace(true);
    }

    /// Resolves once a restore has started.
    pub async fn wait_restore_start(&self) {
        let mut receiver = self.restore_started.subscribe();
        // The sender lives as long as `self`, so the channel cannot close while we wait.
        let _ = receiver.wait_for(|started| *started).await;
    }

    /// Records that the runtime finished its INIT (`platform.initRuntimeDone`).
    pub fn record_init_done(&self) {
        self.init_done.send_replace(true);
    }

    /// Resolves once the runtime has finished its INIT.
    pub async fn wait_init_done(&self) {
        let mut receiver = self.init_done.subscribe();
        // The sender lives as long as `self`, so the channel cannot close while we wait.
        let _ = receiver.wait_for(|done| *done).await;
    }

    /// Records that the runtime finished `request_id`.
    pub fn record(&self, request_id: &str) {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        if done.len() == REMEMBERED {
            done.pop_front();
        }
        done.push_back(request_id.to_owned());
        drop(done);
        self.notify.notify_waiters();
    }

    /// Resolves once the runtime has finished `request_id`.
    pub async fn wait(&self, request_id: &str) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_done(request_id) {
                return;
            }
            notified.await;
        }
    }

    fn is_done(&self, request_id: &str) -> bool {
        self.done.lock().unwrap_or_else(PoisonError::into_inner).iter().any(|id| id == request_id)
    }
}

#[derive(Deserialize)]
struct TelemetryEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    record: serde_json::Value,
}

/// Binds the listener. Lambda delivers to `sandbox.localdomain`; where that name does not
/// resolve (local runs) the loopback address is used.
///
/// # Errors
/// The bind failure.
pub async fn bind() -> std::io::Result<(TcpListener, String)> {
    let sandbox = tokio::net::lookup_host(("sandbox.localdomain", 0)).await.ok().and_then(|mut a| a.next());
    let (address, host) = match sandbox {
        Some(address) => (SocketAddr::new(address.ip(), 0), "sandbox.localdomain".to_owned()),
        None => (SocketAddr::from(([127, 0, 0, 1], 0)), "127.0.0.1".to_owned()),
    };
    let listener = TcpListener::bind(address).await?;
    let port = listener.local_addr()?.port();
    Ok((listener, format!("http://{host}:{port}/telemetry")))
}

/// What the telemetry listener feeds.
#[derive(Debug)]
pub struct Sinks {
    /// Finished invocations, the end of INIT, restores.
    pub completions: Arc<Completions>,
    /// The environment's tenant.
    pub tenancy: Arc<Tenancy>,
    /// Cancelled when a second tenant appears: the run loop then wipes and exits.
    pub broken: CancellationToken,
}

/// Serves telemetry batches until `shutdown`.
pub async fn serve(listener: TcpListener, sinks: Arc<Sinks>, shutdown: CancellationToken) {
    let limits = ConnectionLimits { max_connections: MAX_CONNECTIONS, ..Default::default() };
    accept_loop(listener, limits, shutdown, move |request| {
        let sinks = Arc::clone(&sinks);
        async move { handle(request, &sinks).await }
    })
    .await;
}

async fn handle(request: Request<Incoming>, sinks: &Sinks) -> Response<Full<Bytes>> {
    let completions = &sinks.completions;
    if request.method() != Method::POST {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Ok(body) = Limited::new(request.into_body(), MAX_BATCH_BYTES).collect().await else {
        return status(StatusCode::PAYLOAD_TOO_LARGE);
    };
    let Ok(events) = serde_json::from_slice::<Vec<TelemetryEvent>>(&body.to_bytes()) else {
        return status(StatusCode::BAD_REQUEST);
    };
    for event in events {
        match event.kind.as_str() {
            "platform.runtimeDone" => {
                if let Some(request_id) = event.record.get("requestId").and_then(|v| v.as_str()) {
                    tracing::debug!(event = "runtime_done", request_id);
                    completions.record(request_id);
                }
            }
            "platform.initRuntimeDone" => {
                tracing::debug!(event = "init_runtime_done");
                completions.record_init_done();
            }
            "platform.restoreStart" => {
                tracing::debug!(event = "restore_start");
                completions.record_restore_start();
            }
            "platform.start" => {
                if let Some(tenant) = event.record.get("tenantId").and_then(|v| v.as_str()) {
                    let request_id = event.record.get("requestId").and_then(|v| v.as_str());
                    observe_tenant(sinks, tenant, request_id);
                }
            }
            _ => {}
        }
    }
    status(StatusCode::OK)
}

fn observe_tenant(sinks: &Sinks, raw: &str, request_id: Option<&str>) {
    match sinks.tenancy.observe(raw, request_id) {
        Observed::Same => {}
        Observed::First(tenant) => {
            tracing::info!(target: "audit", event = "tenant_known", tenant_id = tenant.as_str());
        }
        Observed::Refused(why) => {
            // The platform's text is not echoed: only its length and what is wrong with it.
            tracing::warn!(target: "audit", event = "tenant_refused", tenant_id_chars = raw.len() as u64, reason = why);
        }
        Observed::Changed => {
            tracing::error!(target: "audit", event = "tenant_changed", tenant_id_chars = raw.len() as u64);
            sinks.broken.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_completion_recorded_before_or_after_the_wait_releases_it() {
        let completions = Arc::new(Completions::default());
        completions.record("early");
        tokio::time::timeout(std::time::Duration::from_secs(1), completions.wait("early")).await.expect("already done");
        let waiter = {
            let completions = Arc::clone(&completions);
            tokio::spawn(async move { completions.wait("late").await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        completions.record("other");
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "another request's completion must not release it");
        completions.record("late");
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await.expect("released").expect("joined");
    }

    #[test]
    fn only_the_newest_ids_are_remembered() {
        let completions = Completions::default();
        for i in 0..=REMEMBERED {
            completions.record(&i.to_string());
        }
        assert!(!completions.is_done("0"));
        assert!(completions.is_done(&REMEMBERED.to_string()));
    }
}
