//! A runtime's side of the Runtime API, for tests and the benchmark that play the runtime
//! themselves: `/next`, a buffered or streamed result, `init/error`, against Lambda's address or
//! the extension's proxy, over one keep-alive connection pool as a runtime interface client
//! keeps one.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::{HeaderMap, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

/// A runtime talking to the Runtime API at one address.
#[derive(Debug, Clone)]
pub struct RuntimeClient {
    client: Client<HttpConnector, BoxBody<Bytes, Infallible>>,
    api: String,
}

/// An answer: status, headers, body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl RuntimeClient {
    /// A runtime whose `AWS_LAMBDA_RUNTIME_API` is `api` (`host:port`).
    pub fn new(api: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self { client: Client::builder(TokioExecutor::new()).build(connector), api: api.to_owned() }
    }

    /// `GET /2018-06-01/runtime/invocation/next`.
    pub async fn next(&self) -> anyhow::Result<Answer> {
        self.send(hyper::Method::GET, "/2018-06-01/runtime/invocation/next", &[], Bytes::new()).await
    }

    /// `POST …/invocation/{request_id}/response` with `body`.
    pub async fn respond(&self, request_id: &str, body: Bytes) -> anyhow::Result<Answer> {
        let path = format!("/2018-06-01/runtime/invocation/{request_id}/response");
        self.send(hyper::Method::POST, &path, &[], body).await
    }

    /// `POST …/invocation/{request_id}/error` with `Lambda-Runtime-Function-Error-Type` and `body`.
    pub async fn fail(&self, request_id: &str, error_type: &str, body: Bytes) -> anyhow::Result<Answer> {
        let path = format!("/2018-06-01/runtime/invocation/{request_id}/error");
        self.send(hyper::Method::POST, &path, &[("lambda-runtime-function-error-type", error_type)], body).await
    }

    /// `POST /2018-06-01/runtime/init/error`.
    pub async fn init_error(&self, error_type: &str, body: Bytes) -> anyhow::Result<Answer> {
        let headers = [("lambda-runtime-function-error-type", error_type), ("content-type", "application/json")];
        self.send(hyper::Method::POST, "/2018-06-01/runtime/init/error", &headers, body).await
    }

    /// Any request.
    pub async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        self.request(method, path, headers, Full::new(body).boxed()).await
    }

    /// Starts a streamed response (`Lambda-Runtime-Function-Response-Mode: streaming`, chunked,
    /// with the error trailers announced): the returned sender writes its chunks and trailers,
    /// and the task answers with Lambda's answer once the stream has ended.
    pub fn stream(&self, request_id: &str) -> (StreamSender, tokio::task::JoinHandle<anyhow::Result<Answer>>) {
        let (sender, receiver) = mpsc::channel(16);
        let path = format!("/2018-06-01/runtime/invocation/{request_id}/response");
        let this = self.clone();
        let answer = tokio::spawn(async move {
            let headers = [
                ("lambda-runtime-function-response-mode", "streaming"),
                ("transfer-encoding", "chunked"),
                ("content-type", "application/json"),
                ("trailer", "Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body"),
            ];
            this.request(hyper::Method::POST, &path, &headers, ChannelBody(receiver).boxed()).await
        });
        (StreamSender(sender), answer)
    }

    async fn request(
        &self,
        method: hyper::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: BoxBody<Bytes, Infallible>,
    ) -> anyhow::Result<Answer> {
        let mut request = hyper::Request::builder().method(method).uri(format!("http://{}{path}", self.api));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.client.request(request.body(body)?).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer { status: parts.status, headers: parts.headers, body })
    }
}

/// Writes a streamed response's chunks, then its trailers.
#[derive(Debug)]
pub struct StreamSender(mpsc::Sender<Frame<Bytes>>);

impl StreamSender {
    /// Sends one chunk.
    pub async fn chunk(&self, data: &'static [u8]) -> anyhow::Result<()> {
        self.0.send(Frame::data(Bytes::from_static(data))).await.map_err(|_| anyhow::anyhow!("stream closed"))
    }

    /// Ends the stream with `trailers`.
    pub async fn finish(self, trailers: HeaderMap) -> anyhow::Result<()> {
        self.0.send(Frame::trailers(trailers)).await.map_err(|_| anyhow::anyhow!("stream closed"))
    }
}

/// A body fed frame by frame from a channel; it ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}
