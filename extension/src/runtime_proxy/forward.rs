//! Forwarding one runtime request to Lambda's Runtime API, and what its answer reports.
//!
//! The request goes out as it came (method, path and query, every header, `Host` included,
//! the body streamed frame by frame, trailers too: hyper sends those a `Trailer` header
//! announces, as Lambda's streaming runtimes send it), and Lambda's answer comes back as it
//! came, streamed. Only two answers are read for a report: the `/next` answer's headers, and
//! the status of a `/response` or `/error`, reported once Lambda accepted it (2xx) and the
//! request's body has been forwarded to its end (a streamed response ends its invocation when
//! the stream ends). Nothing else is parsed, kept or logged.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, oneshot};

use super::event::{MAX_TENANT_HEADER, Outcome, RuntimeEvent};
use crate::domain::request_id::RequestId;
use crate::tenant::header_text;

const API_PREFIX: &str = "/2018-06-01/runtime/invocation/";
const REQUEST_ID: &str = "lambda-runtime-aws-request-id";
const DEADLINE_MS: &str = "lambda-runtime-deadline-ms";
const TENANT_ID: &str = "lambda-runtime-aws-tenant-id";

/// What a request is, as far as reports go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET …/invocation/next`.
    Next,
    /// `POST …/invocation/{id}/response` or `…/error`, with a valid id.
    Result(RequestId, Outcome),
    /// Everything else (`init/error`, `restore/next`, `restore/error`, unknown paths, and
    /// results whose id is not valid): forwarded, never reported.
    Other,
}

impl Route {
    pub(crate) fn of(method: &Method, path: &str) -> Self {
        let Some(rest) = path.strip_prefix(API_PREFIX) else { return Route::Other };
        if rest == "next" {
            return if method == Method::GET { Route::Next } else { Route::Other };
        }
        if method != Method::POST {
            return Route::Other;
        }
        let (id, outcome) = match rest.rsplit_once('/') {
            Some((id, "response")) => (id, Outcome::Response),
            Some((id, "error")) => (id, Outcome::Error),
            _ => return Route::Other,
        };
        match RequestId::parse(id) {
            Ok(id) => Route::Result(id, outcome),
            Err(_) => Route::Other,
        }
    }
}

/// Forwards to Lambda's Runtime API and reports to the lifecycle loop.
pub(super) struct Forwarder {
    client: Client<HttpConnector, Tracked>,
    upstream: String,
    events: mpsc::Sender<RuntimeEvent>,
    delivered: Arc<AtomicBool>,
}

/// Why a request could not be forwarded: Lambda's API could not be reached (the runtime's
/// connection is then closed, as an unreachable API would close it).
#[derive(Debug, thiserror::Error)]
pub(super) enum ForwardError {
    /// The request's target could not be made into an upstream URI.
    #[error("the request target cannot be forwarded")]
    Target,
    /// Lambda's API did not answer.
    #[error("Lambda's Runtime API could not be reached: {0}")]
    Upstream(String),
}

impl Forwarder {
    pub(super) fn new(upstream: &str, events: mpsc::Sender<RuntimeEvent>, delivered: Arc<AtomicBool>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // No timeout of ours: `/next` is a long poll that lasts until the next invocation.
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { client, upstream: upstream.to_owned(), events, delivered }
    }

    /// Forwards `request` and returns Lambda's answer, reporting what it confirms.
    pub(super) async fn forward(&self, request: Request<Incoming>) -> Result<Response<Incoming>, ForwardError> {
        let route = Route::of(request.method(), request.uri().path());
        let (mut parts, body) = request.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("http://{}{target}", self.upstream).parse::<Uri>().map_err(|_| ForwardError::Target)?;
        remove_hop_by_hop(&mut parts.headers);
        let (body, ended) = Tracked::new(body, matches!(route, Route::Result(..)));
        let answer = self.client.request(Request::from_parts(parts, body)).await.map_err(|error| {
            tracing::warn!(event = "runtime_api_unreachable", cause = %error);
            ForwardError::Upstream(error.to_string())
        })?;
        match route {
            Route::Next if answer.status() == StatusCode::OK => self.report_next(answer.headers()),
            Route::Result(request_id, outcome) if answer.status().is_success() => {
                self.report_result(request_id, outcome, ended);
            }
            Route::Next | Route::Result(..) | Route::Other => {}
        }
        let (mut parts, body) = answer.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }

    fn report_next(&self, headers: &HeaderMap) {
        if let Some(event) = next_event(headers) {
            self.delivered.store(true, Ordering::Release);
            self.send(event);
        }
    }

    fn report_result(&self, request_id: RequestId, outcome: Outcome, ended: Option<oneshot::Receiver<bool>>) {
        let Some(mut ended) = ended else { return };
        let event = RuntimeEvent::Responded { request_id, outcome };
        match ended.try_recv() {
            // The whole body went out before Lambda answered (every buffered response).
            Ok(true) => self.send(event),
            Ok(false) | Err(oneshot::error::TryRecvError::Closed) => {}
            // Lambda answered before the stream's end: report once it has ended.
            Err(oneshot::error::TryRecvError::Empty) => {
                let events = self.events.clone();
                tokio::spawn(async move {
                    if ended.await == Ok(true) {
                        send(&events, event);
                    }
                });
            }
        }
    }

    fn send(&self, event: RuntimeEvent) {
        send(&self.events, event);
    }
}

/// What a `/next` answer's headers report: `None` (logged) unless they name a valid request
/// id and a deadline.
pub(crate) fn next_event(headers: &HeaderMap) -> Option<RuntimeEvent> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let request_id = match text(REQUEST_ID).map(RequestId::parse) {
        Some(Ok(id)) => id,
        Some(Err(reason)) => {
            let chars = headers.get(REQUEST_ID).map_or(0, |v| v.len()) as u64;
            tracing::warn!(event = "runtime_api_request_id_refused", request_id_chars = chars, reason);
            return None;
        }
        None => return None,
    };
    let Some(deadline_ms) = text(DEADLINE_MS).and_then(|v| v.trim().parse::<u64>().ok()) else {
        tracing::warn!(event = "runtime_api_deadline_missing", request_id = %request_id);
        return None;
    };
    // Lambda's own text, bounded before it is kept: an id this long is no valid tenant id.
    let tenant_id = headers.get(TENANT_ID).map(|v| header_text(v.as_bytes(), MAX_TENANT_HEADER));
    Some(RuntimeEvent::Next { request_id, deadline_ms, tenant_id })
}

fn send(events: &mpsc::Sender<RuntimeEvent>, event: RuntimeEvent) {
    if events.try_send(event).is_err() {
        tracing::warn!(event = "runtime_event_dropped");
    }
}

/// Headers that describe one hop, not the message: hyper frames each side itself.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    for name in [header::CONNECTION, header::UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The runtime's request body on its way to Lambda, which says (once) whether it was forwarded
/// to its end.
pub(super) struct Tracked {
    inner: Incoming,
    ended: Option<oneshot::Sender<bool>>,
}

impl Tracked {
    fn new(inner: Incoming, track: bool) -> (Self, Option<oneshot::Receiver<bool>>) {
        let (sender, receiver) = if track {
            let (sender, receiver) = oneshot::channel();
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        (Self { inner, ended: sender }, receiver)
    }

    fn settle(&mut self, whole: bool) {
        if let Some(ended) = self.ended.take() {
            let _ = ended.send(whole);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.settle(true),
            Poll::Ready(Some(Err(_))) => self.settle(false),
            // Trailers are a message's last frame: hyper writes them and drops the body without
            // polling it again, and a chunked `Incoming` never says it is at its end.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || self.inner.is_end_stream() => self.settle(true),
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // hyper may never poll a body it knows is empty, and drops a body it has sent.
        let whole = self.inner.is_end_stream();
        self.settle(whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lambdas_invocation_routes_with_valid_ids_are_reported() {
        let id = "8f0e7c1a-1b2c-4d5e-9f00-112233445566";
        let valid = RequestId::parse(id).expect("valid");
        let cases = [
            (Method::GET, "/2018-06-01/runtime/invocation/next".to_owned(), Route::Next),
            (Method::POST, "/2018-06-01/runtime/invocation/next".to_owned(), Route::Other),
            (Method::POST, format!("{API_PREFIX}{id}/response"), Route::Result(valid.clone(), Outcome::Response)),
            (Method::POST, format!("{API_PREFIX}{id}/error"), Route::Result(valid, Outcome::Error)),
            (Method::GET, format!("{API_PREFIX}{id}/response"), Route::Other),
            (Method::POST, format!("{API_PREFIX}{id}/other"), Route::Other),
            (Method::POST, format!("{API_PREFIX}a/b/response"), Route::Other),
            (Method::POST, format!("{API_PREFIX}{}/response", "x".repeat(65)), Route::Other),
            (Method::POST, format!("{API_PREFIX}%2e%2e/response"), Route::Other),
            (Method::POST, format!("{API_PREFIX}/response"), Route::Other),
            (Method::POST, "/2018-06-01/runtime/init/error".to_owned(), Route::Other),
            (Method::GET, "/2018-06-01/runtime/restore/next".to_owned(), Route::Other),
            (Method::POST, format!("/2099-01-01/runtime/invocation/{id}/response"), Route::Other),
        ];
        for (method, path, expected) in cases {
            assert_eq!(Route::of(&method, &path), expected, "{method} {path}");
        }
    }
}
