//! The Runtime API proxy: Lambda's Runtime API, forwarded, on 127.0.0.1, so the extension sees
//! each invocation begin (the runtime's `/next` answer: request id, deadline, tenant) and end
//! (the function's `/response` or `/error`) the moment they happen, instead of when the
//! Telemetry API's buffer (≥ 25 ms, which Lambda bills) delivers `platform.runtimeDone`.
//!
//! The runtime reaches the proxy because `/opt/scoped-secrets-wrapper`, Lambda's
//! `AWS_LAMBDA_EXEC_WRAPPER`, points its `AWS_LAMBDA_RUNTIME_API` here; the extension itself is
//! started by Lambda, not through the wrapper, so its own `AWS_LAMBDA_RUNTIME_API` stays
//! Lambda's, and that is where the proxy forwards to. The listener is bound before the
//! extension registers (the runtime may start right after), and a marker file ([`marker`])
//! tells the wrapper it is there.
//!
//! What the proxy does: forward every request, whatever its path, byte for byte in both
//! directions, bodies streamed (a streamed response's chunks and trailers pass as they come),
//! with no timeout and no retry of its own; an upstream that cannot be reached closes the
//! runtime's connection, as Lambda's unreachable API would. What it never does: log or keep a
//! payload, or decide anything. It only reports ([`RuntimeEvent`]) to the lifecycle loop, and
//! only what Lambda's own answers confirm; a request id becomes an event only once it passed
//! [`RequestId::parse`](crate::domain::request_id::RequestId::parse). Anyone local could call Lambda's Runtime API directly, so the proxy
//! adds no power; a forged `/response` through it could only end a scope early.
//! See <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>.

mod event;
mod forward;
pub mod marker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use self::event::{MAX_TENANT_HEADER, Outcome, RuntimeEvent};
use self::forward::Forwarder;
#[cfg(feature = "fuzzing")]
pub(crate) use self::forward::{Route, next_event};
use self::marker::Marker;
use crate::http::{ConnectionLimits, serve};

/// Events waiting for the lifecycle loop; more are dropped (and logged). Each invocation makes
/// two, so this is far more than a loop that is never blocked for long can fall behind.
pub const EVENT_QUEUE: usize = 1_024;
/// Connections served at once: more than the runtime's concurrent `/next` long polls can need
/// (one per invocation in flight).
const MAX_CONNECTIONS: usize = 1_024;

/// Why the proxy could not be set up: the `init/error` type and a full sentence.
#[derive(Debug)]
pub struct BindFailure {
    /// `Extension.ConfigInvalid` or `Extension.BindFailed`.
    pub error_type: &'static str,
    /// The sentence.
    pub message: String,
}

/// A bound proxy listener, not serving yet, and the marker that tells the wrapper it is there
/// (removed when this is dropped).
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    address: SocketAddr,
    marker: Option<Marker>,
}

impl Bound {
    /// Where the proxy listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Takes the marker out, to be kept (and so removed) until the process exits.
    pub fn take_marker(&mut self) -> Option<Marker> {
        self.marker.take()
    }
}

/// Whether `runtime_api` (`host:port`) is the proxy's own address: the extension was started
/// through the wrapper (an image entrypoint that wraps every process, say) and would forward
/// to itself, and register with itself.
pub fn is_own_address(runtime_api: &str, port: u16) -> bool {
    let Some((host, found)) = runtime_api.trim().rsplit_once(':') else { return false };
    // The proxy binds 127.0.0.1 only: an IPv4 loopback or unspecified address reaches it.
    let reaches_proxy = host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    found.parse::<u16>() == Ok(port) && reaches_proxy
}

/// Binds the proxy on `127.0.0.1:port` and writes the marker.
///
/// # Errors
/// [`BindFailure`] when the port is taken.
pub async fn bind(port: u16) -> Result<Bound, BindFailure> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(address).await.map_err(|error| BindFailure {
        error_type: "Extension.BindFailed",
        message: format!(
            "The Runtime API proxy could not listen on {address}: {error}; another process may be using that \
             port (set SCOPED_SECRETS_RUNTIME_PROXY_PORT, or off)."
        ),
    })?;
    let marker = match Marker::write(address) {
        Ok(marker) => Some(marker),
        Err(error) => {
            // Without it the wrapper leaves the runtime on Lambda's own API: invocations then
            // end at telemetry, as without the wrapper.
            tracing::warn!(event = "runtime_proxy_marker_failed", cause = %error);
            None
        }
    };
    Ok(Bound { listener, address, marker })
}

/// Serves the proxy until `shutdown`, forwarding to `upstream` (Lambda's `host:port`) and
/// reporting to `events`. `delivered` is set once an invocation came through it.
pub async fn serve_proxy(
    bound: Bound,
    upstream: String,
    events: mpsc::Sender<RuntimeEvent>,
    delivered: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let forwarder = Arc::new(Forwarder::new(&upstream, events, delivered));
    let limits = ConnectionLimits {
        max_connections: MAX_CONNECTIONS,
        // A runtime's connection idles for as long as its function runs.
        header_timeout: None,
        // A long poll never finishes on its own: at SHUTDOWN the runtime's connection just closes.
        graceful_close: std::time::Duration::ZERO,
        // A runtime gone mid-poll must not leave its `/next` waiting on Lambda.
        notice_hangup: true,
        ..ConnectionLimits::default()
    };
    serve(bound.listener, limits, shutdown, None, move |request| {
        let forwarder = Arc::clone(&forwarder);
        async move { forwarder.forward(request).await }
    })
    .await;
}

#[cfg(test)]
mod tests;
