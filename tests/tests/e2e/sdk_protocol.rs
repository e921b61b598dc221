//! Unchanged AWS SDK code reads through the extension: the Secrets Manager protocol on the
//! local endpoint, SigV4-verified; plus the Secrets Manager Agent's `refreshNow` and `/v1/`.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use scoped_secrets_tests::examples;
use scoped_secrets_tests::lambda::{Options, Program, local_get};
use scoped_secrets_tests::ministack::StaticCredentials;
use scoped_secrets_tests::{SECRETS, Stack, sha256_hex};
use serde_json::{Value, json};

use super::{TIMEOUT, read, value_of};

fn sdk_calls_naming(stack: &Stack, secret: &str) -> usize {
    stack.proxy.secrets_manager_calls().iter().filter(|c| c.secret_ids().iter().any(|id| id.contains(secret))).count()
}

/// One unchanged SDK function (Rust, boto3 or JavaScript v3) through the whole protocol: string
/// and binary secrets, a batch with `Errors[]`, refusals in the SDK's own exceptions, and the
/// SDK's own signer forging requests that the extension refuses without calling AWS.
async fn unchanged_sdk_code_reads_through_the_extension(runtime: Program) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let admin = aws_sdk_secretsmanager::Client::new(&stack.ministack.admin_config());
    admin
        .create_secret()
        .name("app/bin")
        .secret_binary(aws_sdk_secretsmanager::primitives::Blob::new(binary.clone()))
        .send()
        .await?;
    let allowlist = "app/db,app/api,app/bin,app/missing";
    // No INVOKE prefetch, so that every AWS call is one a request asked for: an invocation whose
    // only request is forged must then make none.
    let settings = [("SCOPED_SECRETS_CACHE_TTL", "0"), ("SCOPED_SECRETS_PREFETCH", "false")];
    let (mut environment, _port) =
        stack.environment_with(allowlist, &settings, Options { runtime, ..Options::default() }).await?;
    let output = |environment: &scoped_secrets_tests::lambda::Environment| {
        environment.function.as_ref().map(|f| f.output.text()).unwrap_or_default()
    };

    let db = environment.invoke(json!({ "op": "get", "secretId": "app/db" }), TIMEOUT).await?.payload;
    assert_eq!(
        (db["sha256"].clone(), db["name"].clone()),
        (json!(sha256_hex(value_of("app/db"))), json!("app/db")),
        "{db}\n{}",
        output(&environment)
    );
    let bin = environment.invoke(json!({ "op": "get", "secretId": "app/bin" }), TIMEOUT).await?.payload;
    let expected: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&binary).iter().map(|b| format!("{b:02x}")).collect()
    };
    assert_eq!(bin["binarySha256"], expected, "a binary secret round-trips: {bin}");

    let batch = json!({ "op": "batch", "secretIds": ["app/db", "app/api", "other/x"] });
    let batch = environment.invoke(batch, TIMEOUT).await?.payload;
    assert_eq!(batch["values"].as_array().map(Vec::len), Some(2), "{batch}");
    assert_eq!(batch["errors"], json!([{ "secretId": "other/x", "errorCode": "AccessDeniedException" }]));

    let refused = environment.invoke(json!({ "op": "get", "secretId": "other/x" }), TIMEOUT).await?.payload;
    assert_eq!(refused["error"], "AccessDeniedException", "the SDK's own exception: {refused}");
    assert_eq!(sdk_calls_naming(&stack, "other/x"), 0, "never asked of AWS");
    // A version that does not exist: ResourceNotFoundException. (A secret that does not exist
    // at all is AccessDeniedException, from AWS as from the emulator: the session policy names
    // `NAME-??????`, which no ARN matches when there is no secret, and authorisation comes first.)
    let version = "00000000-0000-4000-8000-000000000000";
    let missing = json!({ "op": "get", "secretId": "app/db", "versionId": version });
    let missing = environment.invoke(missing, TIMEOUT).await?.payload;
    assert_eq!(missing["error"], "ResourceNotFoundException", "{missing}");
    let absent = environment.invoke(json!({ "op": "get", "secretId": "app/missing" }), TIMEOUT).await?.payload;
    assert_eq!(absent["error"], "AccessDeniedException", "{absent}");
    let put = environment.invoke(json!({ "op": "put", "secretId": "app/db" }), TIMEOUT).await?.payload;
    assert_eq!(put["error"], "InvalidRequestException", "{put}");
    assert!(put["message"].as_str().is_some_and(|m| m.contains("only GetSecretValue")), "{put}");
    assert!(stack.proxy.secrets_manager_calls_of("PutSecretValue").is_empty(), "nothing reaches AWS");

    // Forged by the SDK's own signer: each refused with the SDK's AccessDeniedException, in an
    // invocation that then makes no AWS call at all (no session, no fetch).
    for how in ["wrong-key", "tampered-body", "stale"] {
        let (sts, sm) = (stack.proxy.assume_role_calls().len(), stack.proxy.secrets_manager_calls().len());
        let forged = json!({ "op": "forge", "how": how, "secretId": "app/db" });
        let forged = environment.invoke(forged, TIMEOUT).await?.payload;
        assert_eq!(forged["error"], "AccessDeniedException", "{how}: {forged}\n{}", output(&environment));
        assert!(forged.get("sha256").is_none(), "{how}: nothing served");
        let calls = (stack.proxy.assume_role_calls().len(), stack.proxy.secrets_manager_calls().len());
        assert_eq!(calls, (sts, sm), "{how}: no AWS call");
    }

    // No loop: every audit line is one of the function's own requests (the extension's own
    // upstream calls went to AWS_ENDPOINT_URL, never to itself).
    let log = &environment.extension.output;
    let lines: Vec<Value> = log.events("allow").into_iter().chain(log.events("deny")).collect();
    assert!(lines.iter().all(|l| l["api"] == "sdk"), "{lines:?}");
    assert_eq!(
        lines.len(),
        12,
        "db, bin, 3 in the batch, other/x, missing version and secret, put, 3 forged: {lines:?}"
    );
    let codes: Vec<String> = log.events("deny").iter().filter_map(|l| l["code"].as_str().map(str::to_owned)).collect();
    let forged: Vec<&str> = codes.iter().rev().take(3).rev().map(String::as_str).collect();
    assert_eq!(forged, ["signature_mismatch", "signature_mismatch", "signature_stale"], "{codes:?}");
    let expected = ["secret_not_allowed", "upstream_access_denied", "secret_not_found", "unsupported_operation"];
    assert!(codes.iter().all(|c| expected.contains(&c.as_str()) || forged.contains(&c.as_str())), "{codes:?}");

    // No value in anything the function or the extension printed.
    let printed = format!("{}{}", output(&environment), log.text());
    for (_, value) in SECRETS {
        assert!(!printed.contains(value), "a secret value in the output");
    }
    let (status, _) = environment.shut_down().await?;
    assert!(status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_rust_sdk_code_reads_through_the_extension() -> anyhow::Result<()> {
    unchanged_sdk_code_reads_through_the_extension(examples::rust_sdk_reader()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_boto3_code_reads_through_the_extension() -> anyhow::Result<()> {
    unchanged_sdk_code_reads_through_the_extension(examples::python_sdk_reader()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_javascript_sdk_code_reads_through_the_extension() -> anyhow::Result<()> {
    unchanged_sdk_code_reads_through_the_extension(examples::node_sdk_reader()?).await
}

/// A `GetSecretValue` request signed as an SDK would, with `credentials` and `time`.
pub(super) fn signed_request(
    port: u16,
    credentials: &StaticCredentials,
    secret: &str,
    body: &str,
    time: SystemTime,
) -> http::Request<Full<Bytes>> {
    let identity = aws_credential_types::Credentials::new(
        &credentials.access_key_id,
        secret,
        credentials.session_token.clone(),
        None,
        "test",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::Headers;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("secretsmanager")
        .time(time)
        .settings(settings)
        .build()
        .expect("signing params");
    let host = format!("127.0.0.1:{port}");
    let headers = [
        ("host", host.as_str()),
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", "secretsmanager.GetSecretValue"),
    ];
    let signable = SignableRequest::new(
        "POST",
        format!("http://{host}/"),
        headers.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params.into()).expect("signed").into_parts();
    let mut request = http::Request::post(format!("http://{host}/"));
    for (name, value) in headers.iter().filter(|(n, _)| *n != "host") {
        request = request.header(*name, *value);
    }
    for (name, value) in instructions.headers() {
        request = request.header(name, value);
    }
    request.body(Full::new(Bytes::from(body.to_owned()))).expect("request")
}

pub(super) async fn send(request: http::Request<Full<Bytes>>) -> anyhow::Result<(u16, Value)> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_sdk_requests_are_refused_and_fetch_nothing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (environment, port) = stack.environment("app/db", &[]).await?;
    environment.invoke(read("app/db"), TIMEOUT).await?; // the prefetch caches app/db (TTL 300)
    let calls_before = stack.proxy.secrets_manager_calls().len();
    let credentials = &stack.world.exec_credentials;
    let secret = credentials.secret_access_key.clone();
    let body = r#"{"SecretId":"app/db"}"#;
    let now = SystemTime::now();

    let (status, genuine) = send(signed_request(port, credentials, &secret, body, now)).await?;
    assert_eq!(
        (status, genuine["SecretString"].as_str()),
        (200, Some(value_of("app/db"))),
        "the control request: {genuine}"
    );

    let wrong_key = signed_request(port, credentials, "not-the-function-secret", body, now);
    let mut tampered = signed_request(port, credentials, &secret, body, now);
    *tampered.body_mut() = Full::new(Bytes::from_static(br#"{"SecretId":"app/api"}"#));
    let stale = signed_request(port, credentials, &secret, body, now - Duration::from_secs(360));
    for (name, request) in
        [("wrong secret key", wrong_key), ("body changed after signing", tampered), ("6 minutes old", stale)]
    {
        let (status, answer) = send(request).await?;
        assert_eq!((status, answer["__type"].as_str()), (400, Some("AccessDeniedException")), "{name}: {answer}");
    }
    let unsigned = http::Request::post(format!("http://127.0.0.1:{port}/"))
        .header("x-amz-target", "secretsmanager.GetSecretValue")
        .header("content-type", "application/x-amz-json-1.1")
        .body(Full::new(Bytes::from_static(br#"{"SecretId":"app/db"}"#)))?;
    assert_eq!(send(unsigned).await?.1["__type"], "AccessDeniedException");
    assert_eq!(stack.proxy.secrets_manager_calls().len(), calls_before, "nothing was fetched for a forged request");
    let denies: Vec<String> = environment
        .extension
        .output
        .wait_for_count("deny", 4, TIMEOUT)
        .await?
        .iter()
        .filter_map(|d| d["code"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(denies, ["signature_mismatch", "signature_mismatch", "signature_stale", "signature_malformed"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_now_skips_the_cache_and_the_agent_path_answers_like_the_query() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (environment, port) = stack.environment("app/db", &[]).await?;
    let token = stack.token();
    let header = [("X-Aws-Parameters-Secrets-Token", token.as_str())];
    // Hold an invocation open (the function reads, then pauses) so refreshes have a session.
    let (request_id, enqueued_at) =
        environment.enqueue(json!({ "secretId": "app/db", "pauseMs": 2_500 }), Duration::from_secs(10)).await?;
    environment.extension.output.wait_for_event("allow", TIMEOUT).await?;
    stack.ministack.rotate("app/db", "canary-db-rotated-77aa").await?;

    let (_, cached) = local_get(port, "/secretsmanager/get?secretId=app%2Fdb", &header).await?;
    assert_eq!(cached["SecretString"], value_of("app/db"), "within the TTL: cached");
    let (_, path_form) = local_get(port, "/v1/app%2Fdb", &header).await?;
    assert_eq!(path_form, cached, "/v1/{{secretId}} answers exactly like the query form");
    let (status, refreshed) = local_get(port, "/secretsmanager/get?secretId=app%2Fdb&refreshNow=true", &header).await?;
    assert_eq!((status, refreshed["SecretString"].as_str()), (200, Some("canary-db-rotated-77aa")));
    let (_, after) = local_get(port, "/v1/app/db?refreshNow=0", &header).await?;
    assert_eq!(after["SecretString"], "canary-db-rotated-77aa", "the refresh updated the cache");
    let (status, _) = local_get(port, "/v1/other%2Fx", &header).await?;
    assert_eq!(status, 403, "the agent path is allowlisted too");
    let (status, _) = local_get(port, "/v1/app%2Fdb", &[]).await?;
    assert_eq!(status, 401, "and token-checked");
    environment.complete(&request_id, enqueued_at, Duration::from_secs(10)).await?;
    let apis: Vec<Value> = environment.extension.output.events("allow").iter().map(|a| a["api"].clone()).collect();
    assert_eq!(apis, [json!("get"), json!("get"), json!("v1"), json!("get"), json!("v1")]);
    Ok(())
}
