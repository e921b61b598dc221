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
//!
//! Started as an OS-only runtime's `bootstrap` (`provided.al2023`), where Lambda runs no
//! `AWS_LAMBDA_EXEC_WRAPPER`: [`main`] starts itself through the configured wrapper, as a
//! managed runtime is started, so its Runtime API calls go through scoped-secrets' proxy. On
//! Lambda Managed Instances each read names its invocation (`X-Scoped-Secrets-Request-Id`), so
//! it is served with that invocation's own session.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The argument this program passes itself when it starts again through the wrapper.
const THROUGH_WRAPPER: &str = "--started-through-wrapper";

/// The bootstrap: through `AWS_LAMBDA_EXEC_WRAPPER` first, if one is set (the wrapper then
/// `exec`s this program again, with [`THROUGH_WRAPPER`]), then the function. The shell
/// equivalent of a custom runtime's `bootstrap` script is
/// `exec /opt/scoped-secrets-wrapper "$LAMBDA_TASK_ROOT/my-function"`.
fn main() -> Result<(), Error> {
    let through_wrapper = std::env::args_os().nth(1).is_some_and(|arg| arg == THROUGH_WRAPPER);
    if let Some(wrapper) = std::env::var_os("AWS_LAMBDA_EXEC_WRAPPER").filter(|w| !w.is_empty() && !through_wrapper) {
        use std::os::unix::process::CommandExt;
        let program = std::env::current_exe()?;
        // Only returns if the wrapper could not be started.
        return Err(std::process::Command::new(wrapper).arg(program).arg(THROUGH_WRAPPER).exec().into());
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(serve())
}

async fn serve() -> Result<(), Error> {
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
    // Managed Instances run invocations at once in one environment: each read says whose it is.
    let managed = std::env::var("AWS_LAMBDA_INITIALIZATION_TYPE").is_ok_and(|t| t == "lambda-managed-instances");
    let invocation = managed.then_some(event.context.request_id.as_str());
    let started = std::time::Instant::now();
    let mut answer = read(client, &secret_id, stage, invocation).await?;
    if timed {
        answer["readUs"] = json!(started.elapsed().as_micros() as u64);
    }
    if let Some(pause) = payload.get("pauseMs").and_then(Value::as_u64) {
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
    if let Some(then) = payload.get("thenSecretId").and_then(Value::as_str) {
        answer["then"] = read(client, then, None, invocation).await?;
    }
    Ok(answer)
}

/// One GET on the local API; the answer carries a digest, never the value.
async fn read(
    client: &Client<HttpConnector, Empty<Bytes>>,
    secret_id: &str,
    stage: Option<&str>,
    invocation: Option<&str>,
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
    let mut request = http::Request::get(format!("http://localhost:{port}/secretsmanager/get?{query}"))
        .header("X-Aws-Parameters-Secrets-Token", token);
    if let Some(invocation) = invocation {
        request = request.header("X-Scoped-Secrets-Request-Id", invocation);
    }
    let request = request.body(Empty::new())?;
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
