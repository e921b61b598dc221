//! The Lambda Extensions API and the Telemetry API subscription, as a small typed client.
//!
//! One request builder per call, header names as constants, and a serde-tagged event enum, in
//! the manner of `lambda-extension`; written here rather than depended on so that `init/error`
//! and `exit/error` are posted exactly when we decide, and the telemetry listener binds where we
//! decide. See <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-extensions-api.html>.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::domain::request_id::is_request_id;

const EXTENSION_NAME_HEADER: &str = "Lambda-Extension-Name";
const EXTENSION_ID_HEADER: &str = "Lambda-Extension-Identifier";
const ERROR_TYPE_HEADER: &str = "Lambda-Extension-Function-Error-Type";
const EXTENSION_API_VERSION: &str = "2020-01-01";
const TELEMETRY_API_VERSION: &str = "2022-07-01";
/// The Telemetry API schema used everywhere but Managed Instances.
pub const TELEMETRY_SCHEMA_VERSION: &str = "2022-12-13";
/// The schema Lambda Managed Instances requires.
pub const MANAGED_INSTANCES_SCHEMA_VERSION: &str = "2025-01-29";

/// The lifecycle events an extension registers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Events {
    /// INVOKE and SHUTDOWN: the ordinary life.
    InvokeAndShutdown,
    /// SHUTDOWN only: all Lambda Managed Instances allows an external extension (asking for
    /// INVOKE there fails registration with `Extension.InvalidEventType` and crashes Init).
    ShutdownOnly,
}

/// A failure talking to the Extensions or Telemetry API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request could not be sent or its answer read.
    #[error("the Lambda API could not be reached: {0}")]
    Transport(String),
    /// The API answered with an unexpected status.
    #[error("the Lambda API answered {status} to {operation}")]
    Status {
        /// Which call.
        operation: &'static str,
        /// The status received.
        status: StatusCode,
    },
    /// The API answered something we could not parse.
    #[error("the Lambda API's answer to {0} was malformed")]
    Malformed(&'static str),
}

/// Why Lambda is shutting the environment down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownReason {
    /// Normal spin-down.
    Spindown,
    /// The function timed out.
    Timeout,
    /// The runtime or an extension failed.
    Failure,
    /// Anything newer.
    #[serde(other)]
    Other,
}

/// An event from `/event/next`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "eventType", rename_all = "UPPERCASE")]
pub enum Event {
    /// An invocation started.
    #[serde(rename_all = "camelCase")]
    Invoke {
        /// The invocation's request id, checked as it is decoded ([`is_request_id`]): it becomes
        /// a scope label and part of a session name, so text no platform sends is refused before
        /// it is kept, whatever its size.
        #[serde(deserialize_with = "request_id")]
        request_id: String,
        /// Its deadline, Unix milliseconds.
        deadline_ms: u64,
    },
    /// The environment is shutting down.
    #[serde(rename_all = "camelCase")]
    Shutdown {
        /// Why.
        shutdown_reason: ShutdownReason,
        /// When Lambda stops waiting, Unix milliseconds.
        deadline_ms: u64,
    },
}

/// Decodes an `/event/next` answer.
///
/// # Errors
/// [`ApiError::Malformed`] for anything but an `INVOKE` (with a valid request id) or a
/// `SHUTDOWN` event.
pub(crate) fn decode_event(body: &[u8]) -> Result<Event, ApiError> {
    serde_json::from_slice(body).map_err(|_| ApiError::Malformed("event/next"))
}

/// An INVOKE's `requestId`, kept only if it can be a request id: copied out of the event's
/// text after the check, never before.
fn request_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Id;
    impl serde::de::Visitor<'_> for Id {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a request id: 1 to 64 of A-Z a-z 0-9 - _")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<String, E> {
            if is_request_id(text) {
                Ok(text.to_owned())
            } else {
                // The text is not echoed: it is the platform's, and may be anything.
                Err(E::custom("the requestId is not a request id"))
            }
        }
    }
    deserializer.deserialize_str(Id)
}

/// An extension that is not registered yet.
#[derive(Debug, Clone)]
pub struct ExtensionsApi {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime_api: String,
}

/// A registered extension: only this can poll events and report errors.
#[derive(Debug, Clone)]
pub struct Registered {
    api: ExtensionsApi,
    id: String,
}

impl ExtensionsApi {
    /// A client for `AWS_LAMBDA_RUNTIME_API` (`host:port`).
    pub fn new(runtime_api: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self { client: Client::builder(TokioExecutor::new()).build(connector), runtime_api: runtime_api.to_owned() }
    }

    /// Registers `name` (the binary's file name, as Lambda requires) for `events`.
    ///
    /// # Errors
    /// [`ApiError`] when Lambda refuses or cannot be reached.
    pub async fn register(self, name: &str, events: Events) -> Result<Registered, ApiError> {
        let events = match events {
            Events::InvokeAndShutdown => json!(["INVOKE", "SHUTDOWN"]),
            Events::ShutdownOnly => json!(["SHUTDOWN"]),
        };
        let body = json!({ "events": events }).to_string();
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/{EXTENSION_API_VERSION}/extension/register", self.runtime_api))
            .header(EXTENSION_NAME_HEADER, name)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| ApiError::Malformed("register"))?;
        let (status, headers, _) = self.send(request).await?;
        if status != StatusCode::OK {
            return Err(ApiError::Status { operation: "register", status });
        }
        let id = headers
            .get(EXTENSION_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Malformed("register"))?
            .to_owned();
        Ok(Registered { api: self, id })
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<(StatusCode, http::HeaderMap, Bytes), ApiError> {
        let response = self.client.request(request).await.map_err(|e| ApiError::Transport(e.to_string()))?;
        let (parts, body) = response.into_parts();
        // The Lambda API's answers are small; cap what we read anyway.
        let limited = http_body_util::Limited::new(body, 1 << 20);
        let body = limited.collect().await.map_err(|e| ApiError::Transport(e.to_string()))?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }
}

impl Registered {
    /// Blocks until the next lifecycle event.
    ///
    /// # Errors
    /// [`ApiError`]; the caller reports it with `exit/error`.
    pub async fn next_event(&self) -> Result<Event, ApiError> {
        // Lambda ships what is on stdout with the invocation that wrote it: every line of this
        // one is written before we ask for the next.
        crate::logging::flush();
        let request = self.request(Method::GET, "event/next", None, Bytes::new())?;
        let (status, _, body) = self.api.send(request).await?;
        if status != StatusCode::OK {
            return Err(ApiError::Status { operation: "event/next", status });
        }
        decode_event(&body)
    }

    /// Reports a failed INIT; Lambda then fails the function's INIT with `error_type`.
    ///
    /// # Errors
    /// [`ApiError`] when the report could not be delivered.
    pub async fn init_error(&self, error_type: &str, message: &str) -> Result<(), ApiError> {
        self.report("init/error", error_type, message).await
    }

    /// Reports an unrecoverable error after INIT; Lambda then resets the environment.
    ///
    /// # Errors
    /// [`ApiError`] when the report could not be delivered.
    pub async fn exit_error(&self, error_type: &str, message: &str) -> Result<(), ApiError> {
        self.report("exit/error", error_type, message).await
    }

    /// Subscribes `destination` to `platform` telemetry in `schema_version` with the shortest
    /// buffering Lambda allows (25 ms), so `platform.runtimeDone` arrives promptly.
    /// See <https://docs.aws.amazon.com/lambda/latest/dg/telemetry-api.html>.
    ///
    /// # Errors
    /// [`ApiError`] when Lambda refuses the subscription.
    pub async fn subscribe_telemetry(&self, destination: &str, schema_version: &str) -> Result<(), ApiError> {
        let body = json!({
            "schemaVersion": schema_version,
            "types": ["platform"],
            "buffering": { "maxItems": 1000, "maxBytes": 262_144, "timeoutMs": 25 },
            "destination": { "protocol": "HTTP", "URI": destination },
        })
        .to_string();
        let request = Request::builder()
            .method(Method::PUT)
            .uri(format!("http://{}/{TELEMETRY_API_VERSION}/telemetry", self.api.runtime_api))
            .header(EXTENSION_ID_HEADER, &self.id)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| ApiError::Malformed("telemetry"))?;
        let (status, _, _) = self.api.send(request).await?;
        if !status.is_success() {
            return Err(ApiError::Status { operation: "telemetry", status });
        }
        Ok(())
    }

    async fn report(&self, path: &'static str, error_type: &str, message: &str) -> Result<(), ApiError> {
        // Lambda may end the environment as soon as it has the report: the lines that explain
        // it go first.
        crate::logging::flush();
        let body = json!({ "errorMessage": message, "errorType": error_type, "stackTrace": [] }).to_string();
        let mut request = self.request(Method::POST, path, Some(error_type), Bytes::from(body))?;
        request.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        let (status, _, _) = self.api.send(request).await?;
        if !status.is_success() {
            return Err(ApiError::Status { operation: path, status });
        }
        Ok(())
    }

    fn request(
        &self,
        method: Method,
        path: &'static str,
        error_type: Option<&str>,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, ApiError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}/{EXTENSION_API_VERSION}/extension/{path}", self.api.runtime_api))
            .header(EXTENSION_ID_HEADER, &self.id);
        if let Some(error_type) = error_type {
            builder = builder.header(ERROR_TYPE_HEADER, error_type);
        }
        builder.body(Full::new(body)).map_err(|_| ApiError::Malformed(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_events_parse_from_lambdas_own_payloads() {
        let cases = [
            (
                r#"{"eventType":"INVOKE","deadlineMs":1700000003000,"requestId":"3da1f2dc-3222-475e-9205-e2e6c6318895","invokedFunctionArn":"arn:aws:lambda:us-east-1:123456789012:function:f","tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-5f35ae12-0c0fec141ab77a00bc047aa2;Parent=2be948a625588e32;Sampled=1"}}"#,
                Event::Invoke {
                    request_id: "3da1f2dc-3222-475e-9205-e2e6c6318895".into(),
                    deadline_ms: 1_700_000_003_000,
                },
            ),
            (
                r#"{"eventType":"SHUTDOWN","shutdownReason":"spindown","deadlineMs":1700000002000}"#,
                Event::Shutdown { shutdown_reason: ShutdownReason::Spindown, deadline_ms: 1_700_000_002_000 },
            ),
            (
                r#"{"eventType":"SHUTDOWN","shutdownReason":"timeout","deadlineMs":1}"#,
                Event::Shutdown { shutdown_reason: ShutdownReason::Timeout, deadline_ms: 1 },
            ),
            (
                r#"{"eventType":"SHUTDOWN","shutdownReason":"failure","deadlineMs":1}"#,
                Event::Shutdown { shutdown_reason: ShutdownReason::Failure, deadline_ms: 1 },
            ),
            (
                r#"{"eventType":"SHUTDOWN","shutdownReason":"something-new","deadlineMs":1}"#,
                Event::Shutdown { shutdown_reason: ShutdownReason::Other, deadline_ms: 1 },
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(serde_json::from_str::<Event>(payload).expect(payload), expected);
        }
        assert!(serde_json::from_str::<Event>(r#"{"eventType":"RESTORE"}"#).is_err());
    }

    #[test]
    fn an_invoke_whose_request_id_no_platform_sends_is_refused_at_decode() {
        let invoke = |id: &str| format!(r#"{{"eventType":"INVOKE","deadlineMs":1,"requestId":"{id}"}}"#);
        let valid = "8f0e7c1a-1b2c-4d5e-9f00-112233445566";
        assert_eq!(
            decode_event(invoke(valid).as_bytes()).ok(),
            Some(Event::Invoke { request_id: valid.into(), deadline_ms: 1 })
        );
        assert_eq!(
            decode_event(invoke(r"req\u002d1").as_bytes()).ok(),
            Some(Event::Invoke { request_id: "req-1".into(), deadline_ms: 1 }),
            "JSON escapes are undone before the check"
        );
        let long = "x".repeat(65);
        let huge = "y".repeat(1 << 20);
        for invalid in ["", "a b", "../x", "a/b", "a:b", r"a\nb", r"\u00e9", &long, &huge] {
            let decoded = decode_event(invoke(invalid).as_bytes());
            assert!(matches!(decoded, Err(ApiError::Malformed("event/next"))), "{:.20}", invalid);
        }
        let wrong_type = br#"{"eventType":"INVOKE","deadlineMs":1,"requestId":7}"#;
        assert!(decode_event(wrong_type).is_err());
        let text = decode_event(invoke(&long).as_bytes()).map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(!text.contains(&long), "the error does not echo the id");
    }
}
