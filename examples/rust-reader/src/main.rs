//! Example function: reads one secret through the scoped-secrets local API, exactly as AWS's
//! Parameters and Secrets Lambda Extension documents it (GET on localhost with the
//! `X-Aws-Parameters-Secrets-Token` header), and returns a SHA-256 digest of it. The value
//! itself is never returned or logged.
//!
//! Event: `{"secretId": "app/db"}` (optional `versionStage`); without it, `SECRET_ID` from the
//! environment. Optional `pauseMs` then `thenSecretId`: after the first read, wait and read a
//! second secret (the answer gains `"then": {…}`), to show credentials renewing within one
//! invocation. Port: `SCOPED_SECRETS_PORT`, else `PARAMETERS_SECRETS_EXTENSION_HTTP_PORT`,
//! else 2773. Optional `"timed": true`: each answer gains `readUs`, the read's latency as the
//! function saw it (request sent to body received), which the benchmark (`bench/run.sh`)
//! reports as the extension's per-invocation cost.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let client = &client;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move { handle(client, event).await })).await
}

async fn handle(client: &Client<HttpConnector, Empty<Bytes>>, event: LambdaEvent<Value>) -> Result<Value, Error> {
    let payload = &event.payload;
    let secret_id = payload
        .get("secretId")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| std::env::var("SECRET_ID").ok())
        .ok_or("no secretId in the event and no SECRET_ID in the environment")?;
    let stage = payload.get("versionStage").and_then(Value::as_str);
    let timed = payload.get("timed").and_then(Value::as_bool).unwrap_or(false);
    let started = std::time::Instant::now();
    let mut answer = read(client, &secret_id, stage).await?;
    if timed {
        answer["readUs"] = json!(started.elapsed().as_micros() as u64);
    }
    if let Some(pause) = payload.get("pauseMs").and_then(Value::as_u64) {
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
    if let Some(then) = payload.get("thenSecretId").and_then(Value::as_str) {
        answer["then"] = read(client, then, None).await?;
    }
    Ok(answer)
}

/// One GET on the local API; the answer carries a digest, never the value.
async fn read(
    client: &Client<HttpConnector, Empty<Bytes>>,
    secret_id: &str,
    stage: Option<&str>,
) -> Result<Value, Error> {
    let port = std::env::var("SCOPED_SECRETS_PORT")
        .or_else(|_| std::env::var("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT"))
        .unwrap_or_else(|_| "2773".to_owned());
    let mut query = format!("secretId={}", encode(secret_id));
    if let Some(stage) = stage {
        query.push_str(&format!("&versionStage={}", encode(stage)));
    }
    // SnapStart functions have no AWS_SESSION_TOKEN; the container-credentials token stands in.
    let token = std::env::var("AWS_SESSION_TOKEN")
        .or_else(|_| std::env::var("AWS_CONTAINER_AUTHORIZATION_TOKEN"))
        .unwrap_or_default();
    let request = http::Request::get(format!("http://localhost:{port}/secretsmanager/get?{query}"))
        .header("X-Aws-Parameters-Secrets-Token", token)
        .body(Empty::new())?;
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status != 200 {
        // Error bodies carry a code and a message, never a value.
        return Ok(json!({ "secretId": secret_id, "status": status, "error": answer.get("error") }));
    }
    let digest = answer.get("SecretString").and_then(Value::as_str).map(|value| hex(&Sha256::digest(value.as_bytes())));
    Ok(json!({
        "secretId": secret_id,
        "status": status,
        "versionId": answer.get("VersionId"),
        "sha256": digest,
    }))
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
