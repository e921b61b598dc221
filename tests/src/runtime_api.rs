//! A Runtime API of the harness's own, for Lambda Managed Instances: it hands out invocations
//! to as many `/next` long polls as are waiting, so two (or more) run at once, which
//! lambda-simulator 0.2.0 (one runtime, one invocation at a time) cannot do.
//!
//! It is Lambda's side of the Runtime API and nothing more, written from AWS's documentation:
//! `GET /2018-06-01/runtime/invocation/next` answers 200 with the event as the body and the
//! `Lambda-Runtime-Aws-Request-Id`, `Lambda-Runtime-Deadline-Ms`,
//! `Lambda-Runtime-Invoked-Function-Arn` and `Lambda-Runtime-Trace-Id` headers; `POST
//! …/invocation/{id}/response` and `…/error` answer 202 once, 404 for an id it never handed out
//! (or already answered), and keep the body as received; `POST …/init/error` answers 202. The
//! Extensions and Telemetry APIs stay the simulator's (on Managed Instances an extension
//! registers SHUTDOWN only, so no INVOKE event is involved).
//! See <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::Notify;

/// A function's result, as the Runtime API received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `…/response`, with its body.
    Response(Bytes),
    /// `…/error`, with its body.
    Error(Bytes),
}

struct Queued {
    request_id: String,
    payload: Bytes,
    deadline_ms: u64,
}

/// The harness's Runtime API: a queue of invocations and the results that came back.
#[derive(Default)]
pub struct ConcurrentRuntime {
    queue: Mutex<VecDeque<Queued>>,
    queued: Notify,
    /// Handed out, not answered yet.
    running: Mutex<HashSet<String>>,
    results: Mutex<HashMap<String, Outcome>>,
    answered: Notify,
    polls: AtomicUsize,
    sequence: AtomicUsize,
}

impl std::fmt::Debug for ConcurrentRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrentRuntime").field("polls", &self.polls()).finish_non_exhaustive()
    }
}

impl ConcurrentRuntime {
    /// Queues an invocation with `payload` and `timeout`. Returns its request id.
    pub fn enqueue(&self, payload: &serde_json::Value, timeout: Duration) -> String {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let request_id = format!("{:08x}-lmi0-4000-8000-{:012x}", std::process::id(), n);
        let deadline = SystemTime::now() + timeout;
        let deadline_ms = deadline.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let payload = Bytes::from(payload.to_string());
        if let Ok(mut queue) = self.queue.lock() {
            queue.push_back(Queued { request_id: request_id.clone(), payload, deadline_ms });
        }
        self.queued.notify_one();
        request_id
    }

    /// How many `/next` requests have arrived.
    pub fn polls(&self) -> usize {
        self.polls.load(Ordering::Relaxed)
    }

    /// Waits (bounded) for `request_id`'s result.
    pub async fn result(&self, request_id: &str, timeout: Duration) -> anyhow::Result<Outcome> {
        tokio::time::timeout(timeout, async {
            loop {
                let answered = self.answered.notified();
                tokio::pin!(answered);
                answered.as_mut().enable();
                if let Some(outcome) = self.results.lock().ok().and_then(|r| r.get(request_id).cloned()) {
                    return outcome;
                }
                answered.await;
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("no result for {request_id} within {timeout:?}"))
    }

    /// Answers one Runtime API request.
    pub async fn handle(&self, request: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let Some(rest) = path.strip_prefix("/2018-06-01/runtime/") else { return status(404) };
        if rest == "invocation/next" {
            return self.next().await;
        }
        if rest == "init/error" {
            return status(202);
        }
        let Some((id, kind)) = rest.strip_prefix("invocation/").and_then(|r| r.rsplit_once('/')) else {
            return status(404);
        };
        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let outcome = match kind {
            "response" => Outcome::Response(body),
            "error" => Outcome::Error(body),
            _ => return status(404),
        };
        if !self.running.lock().is_ok_and(|mut r| r.remove(id)) {
            return status(404);
        }
        if let Ok(mut results) = self.results.lock() {
            results.insert(id.to_owned(), outcome);
        }
        self.answered.notify_waiters();
        status(202)
    }

    async fn next(&self) -> hyper::Response<Full<Bytes>> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let queued = loop {
            let notified = self.queued.notified();
            if let Some(queued) = self.queue.lock().ok().and_then(|mut q| q.pop_front()) {
                break queued;
            }
            notified.await;
        };
        if let Ok(mut running) = self.running.lock() {
            running.insert(queued.request_id.clone());
        }
        let mut response = hyper::Response::new(Full::new(queued.payload));
        let headers = response.headers_mut();
        let arn = format!("arn:aws:lambda:us-east-1:{}:function:scoped-secrets-example", crate::ministack::ACCOUNT_ID);
        for (name, value) in [
            ("lambda-runtime-aws-request-id", queued.request_id),
            ("lambda-runtime-deadline-ms", queued.deadline_ms.to_string()),
            ("lambda-runtime-invoked-function-arn", arn),
            ("lambda-runtime-trace-id", "Root=1-00000000-000000000000000000000000;Sampled=0".to_owned()),
            ("content-type", "application/json".to_owned()),
        ] {
            if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        response
    }
}

fn status(code: u16) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response
}
