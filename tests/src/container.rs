//! A local container-credentials endpoint, as SnapStart functions get one: Lambda sets
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN` (and no
//! `AWS_ACCESS_KEY_ID`/`AWS_SESSION_TOKEN`), and the SDKs' default chains read credentials from
//! it. This one hands out MiniStack credentials (the execution role's session) to callers that
//! present the token, and counts every request, so a test can prove none came before restore.
//! The simulator has no such endpoint; nothing here answers for AWS itself.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use crate::ministack::StaticCredentials;

/// The running endpoint.
#[derive(Debug)]
pub struct ContainerCredentials {
    address: String,
    token: String,
    served: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ContainerCredentials {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ContainerCredentials {
    /// Serves `credentials` to requests whose `Authorization` header is `token`.
    ///
    /// # Errors
    /// When the listener cannot bind.
    pub async fn start(credentials: StaticCredentials, token: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let (served, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let expiration = scoped_secrets::domain::time::iso8601_ceil(SystemTime::now() + Duration::from_secs(3_600));
        let answer = Bytes::from(
            serde_json::json!({
                "AccessKeyId": credentials.access_key_id,
                "SecretAccessKey": credentials.secret_access_key,
                "Token": credentials.session_token,
                "Expiration": expiration,
            })
            .to_string(),
        );
        let expected = token.to_owned();
        let (served_count, refused_count) = (Arc::clone(&served), Arc::clone(&refused));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (answer, expected) = (answer.clone(), expected.clone());
                let (served, refused) = (Arc::clone(&served_count), Arc::clone(&refused_count));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let authorized = request
                            .headers()
                            .get(hyper::header::AUTHORIZATION)
                            .is_some_and(|value| value.as_bytes() == expected.as_bytes());
                        let response = if authorized && request.method() == hyper::Method::GET {
                            served.fetch_add(1, Ordering::SeqCst);
                            let mut response = hyper::Response::new(Full::new(answer.clone()));
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            response
                        } else {
                            refused.fetch_add(1, Ordering::SeqCst);
                            let mut response = hyper::Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = hyper::StatusCode::FORBIDDEN;
                            response
                        };
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { address, token: token.to_owned(), served, refused, task })
    }

    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    pub fn full_uri(&self) -> String {
        format!("http://{}/2021-04-23/credentials", self.address)
    }

    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Credentials handed out so far.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Requests refused (no or wrong token).
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}
