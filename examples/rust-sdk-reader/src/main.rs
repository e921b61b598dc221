//! Example function: ordinary AWS SDK code, unchanged. With the scoped-secrets layer attached
//! and `AWS_ENDPOINT_URL_SECRETS_MANAGER=http://127.0.0.1:2773` set, the SDK's
//! `GetSecretValue` and `BatchGetSecretValue` calls are answered by the extension (SigV4-checked,
//! allowlisted, per-invocation scoped) instead of by Secrets Manager with the execution role.
//!
//! Event: `{"op": "get", "secretId": "app/db"}` (optional `versionId`), `{"op": "batch", "secretIds": [...]}` or
//! `{"op": "put", "secretId": "app/db"}` (refused by the extension). Answers carry SHA-256
//! digests and error codes, never a value.
//!
//! `{"op": "forge", "how": "wrong-key" | "tampered-body" | "stale", "secretId": …}` is not
//! something a function does: it sends what a forger would (a request signed with a wrong secret
//! key, a body changed after signing, a signature dated 6 minutes ago) through the SDK's own
//! signer, so the test suite can show the extension refuses each.

use std::time::{Duration, SystemTime};

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_secretsmanager::config::{ConfigBag, Credentials, Intercept, RuntimeComponents};
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_smithy_async::time::StaticTimeSource;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::RetryConfig;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // The standard loader: it reads AWS_ENDPOINT_URL_SECRETS_MANAGER like every other setting.
    // (The HTTP client is named only because this workspace builds the SDK without its default
    // TLS stack; a function using the SDK's defaults needs no such line.)
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http).load().await;
    let client = Client::new(&config);
    let client = &client;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move { handle(client, event.payload).await }))
        .await
}

async fn handle(client: &Client, payload: Value) -> Result<Value, Error> {
    let secret_id = payload["secretId"].as_str().unwrap_or_default().to_owned();
    Ok(match payload["op"].as_str().unwrap_or("get") {
        "get" => match client
            .get_secret_value()
            .secret_id(&secret_id)
            .set_version_id(payload["versionId"].as_str().map(str::to_owned))
            .send()
            .await
        {
            Ok(output) => json!({
                "sha256": output.secret_string().map(digest),
                "binarySha256": output.secret_binary().map(|b| hex(&Sha256::digest(b.as_ref()))),
                "versionId": output.version_id(),
                "name": output.name(),
            }),
            Err(error) => json!({ "error": error.code(), "message": error.message() }),
        },
        "batch" => {
            let ids: Vec<String> = payload["secretIds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            match client.batch_get_secret_value().set_secret_id_list(Some(ids)).send().await {
                Ok(output) => json!({
                    "values": output.secret_values().iter().map(|v| json!({
                        "name": v.name(), "sha256": v.secret_string().map(digest),
                    })).collect::<Vec<_>>(),
                    "errors": output.errors().iter().map(|e| json!({
                        "secretId": e.secret_id(), "errorCode": e.error_code(),
                    })).collect::<Vec<_>>(),
                }),
                Err(error) => json!({ "error": error.code(), "message": error.message() }),
            }
        }
        "forge" => forge(client, &secret_id, payload["how"].as_str().unwrap_or_default()).await,
        "put" => match client.put_secret_value().secret_id(&secret_id).secret_string("overwritten").send().await {
            Ok(_) => json!({ "put": "accepted" }),
            Err(error) => json!({ "error": error.code(), "message": error.message() }),
        },
        other => json!({ "error": "UnknownOp", "message": other }),
    })
}

/// Sends a forged `GetSecretValue` through the SDK's own signer; one attempt, so the refusal
/// comes back as is.
async fn forge(client: &Client, secret_id: &str, how: &str) -> Value {
    let once = aws_sdk_secretsmanager::Config::builder().retry_config(RetryConfig::disabled());
    let request = client.get_secret_value().secret_id(secret_id).customize();
    let sent = match how {
        "wrong-key" => {
            let env = |name: &str| std::env::var(name).unwrap_or_default();
            let forged = Credentials::new(
                env("AWS_ACCESS_KEY_ID"),
                "not-the-function-secret-key",
                std::env::var("AWS_SESSION_TOKEN").ok(),
                None,
                "forger",
            );
            request.config_override(once.credentials_provider(forged)).send().await
        }
        "tampered-body" => request.config_override(once).interceptor(TamperAfterSigning).send().await,
        "stale" => {
            let six_minutes_ago = SystemTime::now() - Duration::from_secs(360);
            request.config_override(once.time_source(StaticTimeSource::new(six_minutes_ago))).send().await
        }
        other => return json!({ "error": "UnknownForgery", "message": other }),
    };
    match sent {
        Ok(output) => json!({
            "sha256": output.secret_string().map(digest),
            "versionId": output.version_id(),
            "name": output.name(),
        }),
        Err(error) => json!({ "error": error.code(), "message": error.message() }),
    }
}

/// Replaces the body after the request was signed: asks for another secret with the same
/// signature.
#[derive(Debug)]
struct TamperAfterSigning;

impl Intercept for TamperAfterSigning {
    fn name(&self) -> &'static str {
        "TamperAfterSigning"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let body = br#"{"SecretId":"app/api"}"#;
        let request = context.request_mut();
        *request.body_mut() = SdkBody::from(&body[..]);
        request.headers_mut().insert("content-length", body.len().to_string());
        Ok(())
    }
}

fn digest(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
