//! The Telemetry API listener: learns when the runtime finished each invocation.
//!
//! Lambda POSTs batches of `platform` events here; `platform.runtimeDone` for a request id is
//! the signal to end that invocation's scope (wipe its credentials) before asking for the next
//! event. `platform.initRuntimeDone` ends the init scope, `platform.restoreStart` (a SnapStart
//! restore) draws the environment id anew, and the `tenantId` of `platform.start` names the
//! tenant of the invocation being served (see [`crate::tenant`]).
//!
//! Only Lambda's own deliveries count. Any process in the sandbox can find the listener's port,
//! and an SSRF that can POST to it could forge those records; so the subscription gives Lambda
//! a destination whose path is 128 random bits drawn at INIT ([`SubscriptionPath`]), compared
//! in constant time, never logged. Any other request is refused with a status, audited
//! (`telemetry_refused`, without echoing what it sent) and its connection closed, before its
//! body is read. Ids in accepted records are bounded before anything is kept, so memory stays
//! flat whatever the records say. See
//! <https://docs.aws.amazon.com/lambda/latest/dg/telemetry-schema-reference.html>.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::domain::request_id::is_request_id;
use crate::http::{ConnectionLimits, accept_loop, closing_response, status_response as status};
use crate::tenant::Tenancy;

/// How many finished request ids are remembered (runtimeDone may arrive before the INVOKE
/// event is processed); each is at most 64 bytes.
const REMEMBERED: usize = 64;
/// Largest telemetry batch accepted (Lambda's own cap on `maxBytes` is 1 MiB; we subscribe
/// with 256 KiB).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Connections served at once. Lambda delivers one batch at a time; the rest is headroom for
/// local clients, whose connections are closed after one refusal and give up their slot to a
/// new connection while they have sent no request (see [`crate::http`]).
const MAX_CONNECTIONS: usize = 16;
/// Lambda sends a batch's head and body at once: a client slower than this is not Lambda.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for a batch's body once its head has arrived.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// The secret path Lambda delivers to: `/telemetry/` and 32 hex digits (128 random bits).
///
/// Drawn at INIT, before the subscription. Under SnapStart that is before the snapshot, so
/// every environment restored from one snapshot shares it: the subscription is made once, at
/// INIT, and cannot be renewed after a restore. What it defends against is a process or an
/// SSRF inside one sandbox, which cannot read the extension's memory (not dumpable) in that
/// sandbox or in another.
#[derive(Clone)]
pub struct SubscriptionPath(Zeroizing<String>);

impl SubscriptionPath {
    /// Draws a new path from the operating system's random source.
    ///
    /// # Errors
    /// When there is no random source: an unguessable path cannot be made, and INIT fails.
    pub fn draw() -> std::io::Result<Self> {
        let mut bytes = Zeroizing::new([0u8; 16]);
        getrandom::fill(bytes.as_mut()).map_err(|error| std::io::Error::other(error.to_string()))?;
        let mut path = Zeroizing::new(String::with_capacity(42));
        path.push_str("/telemetry/");
        for byte in bytes.iter() {
            path.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            path.push(char::from(b"0123456789abcdef"[usize::from(byte & 0x0f)]));
        }
        Ok(Self(path))
    }

    /// Whether `target` (a request's path and query) is this path, in time independent of
    /// where they differ (the length is not secret).
    pub fn matches(&self, target: &str) -> bool {
        use subtle::ConstantTimeEq;
        let expected = self.0.as_bytes();
        expected.len() == target.len() && bool::from(expected.ct_eq(target.as_bytes()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SubscriptionPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubscriptionPath(<redacted>)")
    }
}

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
    /// Records a SnapStart restore (`platform.restoreStart`). A restore follows the snapshot,
    /// which follows INIT: one reported before `platform.initRuntimeDone` is not believed
    /// (returns false), and the first INVOKE stands in for it.
    pub fn record_restore_start(&self) -> bool {
        if !*self.init_done.borrow() {
            return false;
        }
        self.restore_started.send_replace(true);
        true
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

    /// Records that the runtime finished `request_id`. Returns false (and keeps nothing) for
    /// text that cannot be a request id.
    pub fn record(&self, request_id: &str) -> bool {
        if !is_request_id(request_id) {
            return false;
        }
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        if done.len() == REMEMBERED {
            done.pop_front();
        }
        done.push_back(request_id.to_owned());
        drop(done);
        self.notify.notify_waiters();
        true
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

    /// What is kept (ids remembered, the longest in bytes), the end of INIT, a restore: for the
    /// fuzz targets' bounds.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn footprint(&self) -> (usize, usize, bool, bool) {
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        let longest = done.iter().map(String::len).max().unwrap_or(0);
        (done.len(), longest, *self.init_done.borrow(), *self.restore_started.borrow())
    }
}

/// One event of a batch; the record is parsed only for the types that matter.
#[derive(Deserialize)]
struct TelemetryEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    record: Option<&'a RawValue>,
}

/// The fields read from a record: borrowed from the batch (copied only when JSON escapes
/// must be undone), so an id is never copied before it is bounded.
#[derive(Deserialize, Default)]
struct Record<'a> {
    #[serde(default, rename = "requestId", borrow)]
    request_id: Option<Text<'a>>,
    #[serde(default, rename = "tenantId", borrow)]
    tenant_id: Option<Text<'a>>,
}

/// A string field, borrowed where it can be (serde borrows a `Cow` only as a direct field).
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl Text<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

/// Binds the listener and draws its secret path. Lambda delivers to `sandbox.localdomain`;
/// where that name does not resolve (local runs) the loopback address is used. Returns the
/// listener, the destination URI to subscribe with (never to be logged), and the path.
///
/// # Errors
/// The bind failure, or no random source.
pub async fn bind() -> std::io::Result<(TcpListener, String, SubscriptionPath)> {
    let path = SubscriptionPath::draw()?;
    let sandbox = tokio::net::lookup_host(("sandbox.localdomain", 0)).await.ok().and_then(|mut a| a.next());
    let (address, host) = match sandbox {
        Some(address) => (SocketAddr::new(address.ip(), 0), "sandbox.localdomain".to_owned()),
        None => (SocketAddr::from(([127, 0, 0, 1], 0)), "127.0.0.1".to_owned()),
    };
    let listener = TcpListener::bind(address).await?;
    let port = listener.local_addr()?.port();
    let destination = format!("http://{host}:{port}{}", path.as_str());
    Ok((listener, destination, path))
}

/// What the telemetry listener feeds.
#[derive(Debug)]
pub struct Sinks {
    /// The only path deliveries are taken on.
    pub path: SubscriptionPath,
    /// Finished invocations, the end of INIT, restores.
    pub completions: Arc<Completions>,
    /// The environment's tenant.
    pub tenancy: Arc<Tenancy>,
}

/// Serves telemetry batches until `shutdown`.
pub async fn serve(listener: TcpListener, sinks: Arc<Sinks>, shutdown: CancellationToken) {
    let limits = ConnectionLimits {
        max_connections: MAX_CONNECTIONS,
        header_timeout: Some(HEADER_TIMEOUT),
        ..Default::default()
    };
    accept_loop(listener, limits, shutdown, None, move |request| {
        let sinks = Arc::clone(&sinks);
        async move { handle(request, &sinks).await }
    })
    .await;
}

/// Refuses a request: one audit line (what was wrong, never what was sent), a status, and the
/// connection closed.
fn refuse(status: StatusCode, reason: &'static str, target_chars: usize) -> Response<Full<Bytes>> {
    tracing::warn!(target: "audit", event = "telemetry_refused", reason, target_chars = target_chars as u64, status = status.as_u16());
    closing_response(status)
}

/// Answers one delivery (generic over the body so the fuzz target can hand one in).
pub(crate) async fn handle<B>(request: Request<B>, sinks: &Sinks) -> Response<Full<Bytes>>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let target = request.uri().path_and_query().map_or("", |p| p.as_str());
    let target_chars = target.len();
    // The path first: nothing else about a request that does not know it is looked at.
    if !sinks.path.matches(target) || request.uri().authority().is_some() {
        return refuse(StatusCode::FORBIDDEN, "unknown_path", target_chars);
    }
    if request.method() != Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "method", target_chars);
    }
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(request.into_body(), MAX_BATCH_BYTES).collect());
    let body = match collected.await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(_)) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", target_chars),
        Err(_) => return refuse(StatusCode::REQUEST_TIMEOUT, "body_timeout", target_chars),
    };
    let Ok(events) = serde_json::from_slice::<Vec<TelemetryEvent<'_>>>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "malformed", target_chars);
    };
    for event in events {
        take(&event, sinks);
    }
    status(StatusCode::OK)
}

/// Takes in one event from Lambda.
fn take(event: &TelemetryEvent<'_>, sinks: &Sinks) {
    let record = || -> Record<'_> {
        event.record.and_then(|raw| serde_json::from_str::<Record<'_>>(raw.get()).ok()).unwrap_or_default()
    };
    match event.kind.as_ref() {
        "platform.runtimeDone" => {
            let record = record();
            let Some(request_id) = record.request_id.as_ref().map(Text::as_str) else { return };
            if sinks.completions.record(request_id) {
                tracing::debug!(event = "runtime_done", request_id);
            } else {
                record_refused(&event.kind, "request_id", request_id.len());
            }
        }
        "platform.initRuntimeDone" => {
            tracing::debug!(event = "init_runtime_done");
            sinks.completions.record_init_done();
        }
        "platform.restoreStart" => {
            if sinks.completions.record_restore_start() {
                tracing::debug!(event = "restore_start");
            } else {
                tracing::warn!(target: "audit", event = "restore_refused", reason = "before_init_done");
            }
        }
        "platform.start" => {
            let record = record();
            let (Some(tenant), Some(request_id)) =
                (record.tenant_id.as_ref().map(Text::as_str), record.request_id.as_ref().map(Text::as_str))
            else {
                return;
            };
            if !is_request_id(request_id) {
                record_refused(&event.kind, "request_id", request_id.len());
                return;
            }
            sinks.tenancy.observe(tenant, request_id);
        }
        _ => {}
    }
}

/// An accepted batch whose record carried an id no platform sends: audited, nothing kept.
fn record_refused(kind: &str, field: &'static str, chars: usize) {
    let kind: String = kind.chars().filter(char::is_ascii_graphic).take(40).collect();
    tracing::warn!(target: "audit", event = "telemetry_record_refused", record_type = %kind, field, chars = chars as u64);
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
    fn a_restore_is_believed_only_after_init() {
        let completions = Completions::default();
        assert!(!completions.record_restore_start(), "no restore before the snapshot");
        assert!(!*completions.restore_started.borrow());
        completions.record_init_done();
        assert!(completions.record_restore_start());
        assert!(*completions.restore_started.borrow());
    }

    #[test]
    fn only_the_newest_short_ids_are_remembered() {
        let completions = Completions::default();
        for i in 0..=REMEMBERED {
            completions.record(&i.to_string());
        }
        assert!(!completions.is_done("0"));
        assert!(completions.is_done(&REMEMBERED.to_string()));
        let huge = "x".repeat(1 << 20);
        assert!(!completions.record(&huge), "an id no platform sends is not kept");
        assert!(!completions.is_done(&huge));
        assert!(completions.done.lock().expect("unpoisoned").iter().all(|id| id.len() <= 64));
    }

    #[test]
    fn the_subscription_path_is_random_and_matched_exactly() {
        let (a, b) = (SubscriptionPath::draw().expect("random"), SubscriptionPath::draw().expect("random"));
        assert_ne!(a.as_str(), b.as_str(), "drawn anew each time");
        assert!(a.as_str().starts_with("/telemetry/") && a.as_str().len() == 43);
        assert!(a.matches(a.as_str()));
        let path = a.as_str().to_owned();
        for wrong in
            ["/telemetry", "/", "", &path[..42], &format!("{path}/"), &format!("{path}?x=1"), &path.to_uppercase()]
        {
            assert!(!a.matches(wrong), "{wrong}");
        }
        assert_eq!(format!("{a:?}"), "SubscriptionPath(<redacted>)");
    }

    #[test]
    fn records_are_read_without_copying_their_ids() {
        let batch = br#"[{"type":"platform.start","record":{"requestId":"r1","tenantId":"blue","version":"$LATEST"}},
            {"type":"platform.report","record":{"metrics":{"durationMs":1.5}}},{"type":"platform.initStart"}]"#;
        let events: Vec<TelemetryEvent<'_>> = serde_json::from_slice(batch).expect("a batch");
        assert_eq!(events.len(), 3);
        let record: Record<'_> = serde_json::from_str(events[0].record.expect("a record").get()).expect("a record");
        assert!(matches!(record.request_id, Some(Text(Cow::Borrowed("r1")))));
        assert!(matches!(record.tenant_id, Some(Text(Cow::Borrowed("blue")))));
        let escaped: Record<'_> = serde_json::from_str(r#"{"requestId":"r\u0031"}"#).expect("a record");
        assert_eq!(escaped.request_id.as_ref().map(Text::as_str), Some("r1"), "escapes undone");
        assert!(events[2].record.is_none());
    }
}
