//! HTTP plumbing shared by every listener of the extension (the local API, the telemetry
//! listener, the Runtime API proxy): the accept loop with its limits, and JSON answers no cache
//! may keep.
//!
//! Every listener binds loopback only and serves HTTP/1 through hyper, with a cap on
//! concurrent connections, a header timeout (which also closes a keep-alive connection left
//! idle between requests: kept by one sweeper per listener, not by a timer per request, see
//! [`Clock`]), a cap on a request's head, and a write timeout: a client that stops
//! reading its answers (a pipelining client that never reads) is cut off once a write has
//! stalled that long, so it cannot keep its slot. When every slot is taken, a new connection
//! takes the slot of the oldest one that is waiting on its client: first one that was read dry
//! without a whole request head and is older than [`HEAD_GRACE`] (a real client sends its head
//! at once, and a connection not read yet is never cut), else one waiting for its next request
//! or stalled writing, after an answer; a connection whose request is being handled is never
//! cut. So local clients that connect and wait cannot starve a listener. At shutdown the loop
//! stops accepting and lets open connections finish their current request, bounded by
//! [`ConnectionLimits::graceful_close`]. The loop is generic over the answer's body, so the
//! proxy streams what the local API and telemetry buffer; the proxy alone has no header or
//! write timeout (a runtime's connection idles while its function runs, as with Lambda's own
//! Runtime API).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long an open connection may take to finish its request once shutdown begins.
pub const GRACEFUL_CLOSE: Duration = Duration::from_millis(500);
/// How long the loop waits after a failed `accept` (out of file descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// How long a new connection may take to send its head before it can lose its slot.
pub const HEAD_GRACE: Duration = Duration::from_millis(100);
/// While a connection waits for a slot, how often the loop looks again for one to free.
const EVICT_RETRY: Duration = Duration::from_millis(25);

/// Bounds on the accept loop and each connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once; past it a new one takes an idle one's slot, or waits.
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive, and for a keep-alive connection to
    /// stay idle between requests; `None`: no limit (the Runtime API proxy).
    pub header_timeout: Option<Duration>,
    /// Read buffer, so the cap on a request's head (hyper answers 431 above it).
    pub max_head_bytes: usize,
    /// How long one write may stall (the client not reading) before the connection is closed;
    /// `None`: no limit (the Runtime API proxy).
    pub write_timeout: Option<Duration>,
    /// How long open connections may take to finish their current request once shutdown begins.
    pub graceful_close: Duration,
    /// Read on while a request is handled, to drop its handler if the client hangs up (the
    /// proxy's long polls). Off, no read ahead: that took a fresh 8 KiB buffer per request.
    pub notice_hangup: bool,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 128,
            header_timeout: Some(Duration::from_secs(5)),
            max_head_bytes: 16 * 1024,
            write_timeout: Some(Duration::from_secs(5)),
            graceful_close: GRACEFUL_CLOSE,
            notice_hangup: false,
        }
    }
}

/// Where a connection is, for choosing which one gives up its slot.
const NEW: u8 = 0;
const SERVING: u8 = 1;
const AFTER: u8 = 2;

/// One open connection as the accept loop sees it.
#[derive(Debug)]
struct Slot {
    /// [`NEW`]: no whole request head yet; [`SERVING`]: a request is being handled;
    /// [`AFTER`]: idle, or writing its answer, after at least one request.
    state: AtomicU8,
    /// The last read found nothing to read: the connection waits on its client.
    read_dry: AtomicBool,
    /// A write is stalled: the client is not reading.
    write_stalled: AtomicBool,
    /// When the connection was accepted.
    opened: Instant,
    /// The [`Clock`] tick at which it began waiting for a request head (accepted, or its last
    /// answer's last byte went out).
    waiting_since: AtomicU32,
    /// Cancelled to take the connection's slot for a new one, and with the listener's shutdown
    /// (a child of its token): the connection's task waits on this one token, not two.
    evict: CancellationToken,
}

impl Slot {
    /// The connection began (or goes on) waiting on its client now.
    fn stamp(&self, clock: &Clock) {
        self.waiting_since.store(clock.now(), Ordering::Relaxed);
    }

    /// Whether the connection may give up its slot: it waits on its client, not on us.
    fn is_waiting_on_client(&self, now: Instant) -> Option<u8> {
        let state = self.state.load(Ordering::Acquire);
        let dry = self.read_dry.load(Ordering::Acquire);
        let waiting = match state {
            NEW => dry && now.duration_since(self.opened) >= HEAD_GRACE,
            AFTER => dry || self.write_stalled.load(Ordering::Acquire),
            _ => false,
        };
        (waiting && !self.evict.is_cancelled()).then_some(state)
    }
}

/// The open connections, oldest first (a std `Mutex`: held for a push or a scan, never across
/// an `.await`).
#[derive(Debug, Default)]
struct Slots(Mutex<VecDeque<Weak<Slot>>>);

impl Slots {
    fn open(&self, clock: &Clock, shutdown: &CancellationToken) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            state: AtomicU8::new(NEW),
            read_dry: AtomicBool::new(false),
            write_stalled: AtomicBool::new(false),
            opened: Instant::now(),
            waiting_since: AtomicU32::new(clock.now()),
            evict: shutdown.child_token(),
        });
        let mut slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slots.retain(|slot| slot.strong_count() > 0);
        slots.push_back(Arc::downgrade(&slot));
        slot
    }

    /// Closes every connection that has waited more than `ticks` for a request head (`now`:
    /// the clock's tick): the header timeout.
    fn cut_waiting_longer_than(&self, now: u32, ticks: u32) {
        let mut slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slots.retain(|weak| {
            let Some(slot) = weak.upgrade() else { return false };
            let waiting = slot.state.load(Ordering::Acquire) != SERVING;
            let since = slot.waiting_since.load(Ordering::Relaxed);
            if waiting && now.wrapping_sub(since) > ticks {
                slot.evict.cancel();
                return false;
            }
            true
        });
    }

    /// Cuts the oldest connection waiting on its client without a whole head, else the oldest
    /// one waiting on its client after an answer. Returns whether one was cut.
    fn evict_one(&self) -> bool {
        let mut slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slots.retain(|slot| slot.strong_count() > 0);
        let now = Instant::now();
        for wanted in [NEW, AFTER] {
            let found = slots
                .iter()
                .position(|slot| slot.upgrade().is_some_and(|s| s.is_waiting_on_client(now) == Some(wanted)));
            if let Some(index) = found {
                if let Some(slot) = slots.remove(index).and_then(|weak| weak.upgrade()) {
                    slot.evict.cancel();
                }
                return true;
            }
        }
        false
    }
}

/// Coarse time for the header timeout: a tick count the listener's sweeper advances every
/// tenth of the timeout. A connection stamps the tick when it starts waiting for a request head
/// and when its answer makes progress; the sweeper closes one that has waited longer than the
/// timeout without a whole head (a partial head, silence, or an idle keep-alive), between 1.0
/// and 1.2 times the timeout after it began. hyper's own header timeout did the same with a
/// timer per request (an allocation, a timer-wheel entry and its removal: about 600
/// instructions of a cached GET under callgrind); a stamp is a load and a store.
#[derive(Debug, Default)]
struct Clock(AtomicU32);

/// Ticks per header timeout.
const TICKS_PER_TIMEOUT: u32 = 10;

impl Clock {
    fn now(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Every `timeout / TICKS_PER_TIMEOUT`: the clock advances, and connections waiting on
    /// their client for more than `timeout` (not being served) are closed. Stops at `shutdown`.
    async fn sweep(&self, slots: &Slots, timeout: Duration, shutdown: &CancellationToken) {
        let tick = (timeout / TICKS_PER_TIMEOUT).max(Duration::from_millis(1));
        let mut interval = tokio::time::interval_at(Instant::now() + tick, tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let now = self.0.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            slots.cut_waiting_longer_than(now, TICKS_PER_TIMEOUT);
        }
    }
}

/// A handler's failure: the connection is closed without an answer.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Accepts HTTP/1 connections until `shutdown`, then lets the open ones finish their current
/// request. Every request gets `handler`'s answer; with a fast lane, each connection's requests
/// are first offered to `fast`, and hyper serves the connection from the first one the lane
/// does not take ([`fast`]'s module: the local API's GET requests).
pub async fn accept_loop<H, F, B>(
    listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    fast: Option<FastAnswer>,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve(listener, limits, shutdown, fast, move |request| handler(request).map(Ok::<_, Infallible>)).await;
}

/// [`accept_loop`] for a handler that may fail: a failed request's connection is closed
/// without an answer (the Runtime API proxy: what its runtime sees when Lambda's API cannot be
/// reached).
pub async fn serve<H, F, B, E>(
    listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    fast: Option<FastAnswer>,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let slots = Arc::new(Slots::default());
    let clock = Arc::new(Clock::default());
    let tracker = TaskTracker::new();
    if let Some(timeout) = limits.header_timeout {
        let (slots, clock, shutdown) = (Arc::clone(&slots), Arc::clone(&clock), shutdown.clone());
        tracker.spawn(async move { clock.sweep(&slots, timeout, &shutdown).await });
    }
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // Back off briefly, never spin.
                    tracing::warn!(event = "accept_failed", cause = %error);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Every slot taken: one not being served makes room, else this one waits (and the
        // next ones in the kernel's backlog) while the loop keeps looking for one to free.
        let permit = loop {
            match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => break Some(permit),
                Err(TryAcquireError::Closed) => break None,
                Err(TryAcquireError::NoPermits) => {
                    slots.evict_one();
                    tokio::select! {
                        () = shutdown.cancelled() => break None,
                        permit = Arc::clone(&permits).acquire_owned() => break permit.ok(),
                        () = tokio::time::sleep(EVICT_RETRY) => {}
                    }
                }
            }
        };
        let Some(permit) = permit else { break };
        let _ = stream.set_nodelay(true);
        let slot = slots.open(&clock, &shutdown);
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let clock = Arc::clone(&clock);
        let fast = fast.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let mut io = WriteDeadline::watched(stream, limits.write_timeout, Arc::clone(&slot), Arc::clone(&clock));
            let unanswered = match &fast {
                None => BytesMut::new(),
                Some(answer) => match fast::serve(&mut io, &slot, &clock, answer, limits.graceful_close).await {
                    fast::Outcome::Closed => return,
                    fast::Outcome::HandOff(unanswered) => unanswered,
                },
            };
            let (state, stamps) = (Arc::clone(&slot), Arc::clone(&clock));
            let service = hyper::service::service_fn(move |request| {
                state.state.store(SERVING, Ordering::Release);
                let (state, stamps) = (Arc::clone(&state), Arc::clone(&stamps));
                // Combinators, here and in `accept_loop`, not `async` blocks: each block's
                // state machine moved the answer once more on its way out (memcpy of ~150
                // bytes, twice, in a cached GET under callgrind).
                handler(request).map(move |response| {
                    state.stamp(&stamps);
                    state.state.store(AFTER, Ordering::Release);
                    response
                })
            });
            // No timer for hyper: the header timeout is the sweeper's ([`Clock`]).
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.max_buf_size(limits.max_head_bytes.max(8_192)).keep_alive(true).half_close(!limits.notice_hangup);
            let connection = builder.serve_connection(TokioIo::new(fast::Prefixed::new(unanswered, io)), service);
            tokio::pin!(connection);
            // Biased, the connection first: no random branch order drawn on every wake-up.
            tokio::select! {
                biased;
                _ = connection.as_mut() => {}
                // Shutdown: the current request may finish. Evicted: dropped, closed without an
                // answer.
                () = slot.evict.cancelled() => if shutdown.is_cancelled() {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.graceful_close, connection).await;
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// `Cache-Control` of every JSON answer. A `static`, as the content types are: checked once, at
/// compile time (`HeaderValue::from_static` checked both values byte by byte on every answer,
/// ~190 instructions of a cached GET under callgrind).
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// An answer with `content_type` that no cache may keep.
pub fn json_response(status: StatusCode, body: Bytes, content_type: &'static HeaderValue) -> Response<Full<Bytes>> {
    json_response_in(HeaderMap::new(), status, body, content_type)
}

/// [`json_response`], its headers written into `headers` (emptied first): the request's own
/// map, whose storage then carries the answer's two headers and, once hyper has written them,
/// the next request's (hyper keeps an answer's emptied map for the next request head). A fresh
/// map instead was two allocations per answer, and the request's map two frees with their
/// wipes: ~400 instructions of a cached GET under callgrind. `clear` drops every entry (a
/// custom name's bytes are freed, so wiped); the values' bytes live in hyper's read buffer, not
/// in the map.
pub fn json_response_in(
    mut headers: HeaderMap,
    status: StatusCode,
    body: Bytes,
    content_type: &'static HeaderValue,
) -> Response<Full<Bytes>> {
    headers.clear();
    headers.insert(header::CONTENT_TYPE, content_type.clone());
    headers.insert(header::CACHE_CONTROL, NO_STORE.clone());
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// An empty answer with `status`.
pub fn status_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// An empty answer with `status` after which the connection is closed.
pub fn closing_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = status_response(status);
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

pub(crate) mod fast;
#[cfg(test)]
mod tests;
mod write_deadline;

pub use fast::{FastAnswer, FastLane};
pub use write_deadline::WriteDeadline;
