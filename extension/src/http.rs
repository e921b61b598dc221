//! HTTP plumbing shared by every listener of the extension (the local API, the telemetry
//! listener, the Runtime API proxy): the accept loop with its limits, and JSON answers no cache
//! may keep.
//!
//! Every listener binds loopback only and serves HTTP/1 through hyper, with a cap on
//! concurrent connections (the rest wait in the kernel's backlog), a header timeout and a cap
//! on a request's head. At shutdown the loop stops accepting and lets open connections finish
//! their current request, bounded by [`ConnectionLimits::graceful_close`]. The loop is generic
//! over the answer's body, so the proxy streams what the local API and telemetry buffer.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long an open connection may take to finish its request once shutdown begins (the default).
pub const GRACEFUL_CLOSE: Duration = Duration::from_millis(500);
/// How long the loop waits after a failed `accept` (out of file descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Bounds on the accept loop and each connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once; the rest wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive, counted from when the connection is
    /// ready for its next request (so it also closes idle keep-alive connections); `None`: no
    /// limit (the Runtime API proxy: a runtime's connection is idle for as long as its function
    /// runs, as it may be with Lambda's own Runtime API).
    pub header_timeout: Option<Duration>,
    /// Read buffer, so the cap on a request's head (hyper answers 431 above it).
    pub max_head_bytes: usize,
    /// How long open connections may take to finish their current request once shutdown begins.
    pub graceful_close: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 128,
            header_timeout: Some(Duration::from_secs(5)),
            max_head_bytes: 16 * 1024,
            graceful_close: GRACEFUL_CLOSE,
        }
    }
}

/// A handler's failure: the connection is closed without an answer.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Accepts HTTP/1 connections until `shutdown`, then lets the open ones finish their current
/// request. Every request gets `handler`'s answer.
pub async fn accept_loop<H, F, B>(
    listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve(listener, limits, shutdown, move |request| {
        let answer = handler(request);
        async move { Ok::<_, Infallible>(answer.await) }
    })
    .await;
}

/// [`accept_loop`] for a handler that may fail: a failed request's connection is closed
/// without an answer (the Runtime API proxy: what its runtime sees when Lambda's API cannot be
/// reached).
pub async fn serve<H, F, B, E>(listener: TcpListener, limits: ConnectionLimits, shutdown: CancellationToken, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
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
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(handler);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_head_bytes.max(8_192))
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
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

/// An answer with `content_type` that no cache may keep.
pub fn json_response(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An empty answer with `status`.
pub fn status_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
