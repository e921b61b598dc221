//! The Runtime API proxy: a runtime started through `/opt/scoped-secrets-wrapper` talks to
//! Lambda through the extension, which ends each invocation the moment the function answers.
//!
//! The functions here run through the wrapper as Lambda runs a wrapped runtime (the harness
//! honours `AWS_LAMBDA_EXEC_WRAPPER`, `/opt/` standing for the layer's files), or the test
//! plays the runtime itself on the proxy's address (`RuntimeClient`) to send what no example
//! sends: 6 MB both ways, an error, an init error, a streamed response with trailers.

use std::time::{Duration, Instant};

use scoped_secrets_tests::lambda::{Environment, Options, Program, local_get, scan_memory};
use scoped_secrets_tests::runtime_api::Outcome;
use scoped_secrets_tests::runtime_client::RuntimeClient;
use scoped_secrets_tests::{Stack, sha256_hex};
use serde_json::{Value, json};

use super::modes::start;
use super::{TIMEOUT, read, value_of};

const WRAPPER: (&str, &str) = ("AWS_LAMBDA_EXEC_WRAPPER", "/opt/scoped-secrets-wrapper");
const TOKEN_HEADER: &str = "X-Aws-Parameters-Secrets-Token";

fn events_for(environment: &Environment, event: &str, request_id: &str) -> Vec<Value> {
    environment.extension.output.events(event).into_iter().filter(|l| l["request_id"] == request_id).collect()
}

/// The `event` lines of `request_id`, waited for (`Output::wait_for_request`).
async fn logged_for(environment: &Environment, event: &str, request_id: &str) -> anyhow::Result<Vec<Value>> {
    environment.extension.output.wait_for_request(event, request_id, TIMEOUT).await
}

/// Telemetry held back 5 s: the invocation still ends at the function's response, and by the
/// time the extension asks for the next event its session's credentials and the TTL-0 secret
/// are gone from its memory, though runtimeDone has not arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invocation_ends_at_the_response_while_telemetry_is_still_on_its_way() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let extra = [WRAPPER, ("SCOPED_SECRETS_CACHE_TTL", "0")];
    let (environment, _port) = stack.environment("app/db", &extra).await?;
    let output = environment.extension.output.clone();
    let ready = output.wait_for_event("ready", TIMEOUT).await?;
    assert_eq!(ready["end_of_invocation"], "auto");
    assert_eq!(ready["runtime_proxy"].as_str(), environment.runtime_proxy().as_deref());

    let delay = Duration::from_secs(5);
    environment.set_telemetry_delay(delay);
    let started = Instant::now();
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["sha256"], sha256_hex(value_of("app/db")), "{}", invoked.payload);
    let post_response = invoked.post_response.expect("the extension asked for its next event");
    assert!(post_response < Duration::from_secs(1), "no telemetry wait: {post_response:?}");

    // Scanned once the extension has called /event/next, before the delayed runtimeDone lands.
    let session = stack.proxy.assume_role_calls().pop().and_then(|c| c.credentials).expect("a session");
    let token = session.session_token.clone().unwrap_or_default();
    let needles: [&[u8]; 3] =
        [session.secret_access_key.as_bytes(), &token.as_bytes()[..64], value_of("app/db").as_bytes()];
    let found = scan_memory(environment.extension.pid().expect("running"), &needles)?;
    assert!(started.elapsed() < delay, "the scan ran after telemetry could have arrived");
    assert!(found.is_empty(), "after the response (0 key, 1 token, 2 secret): {found:#?}");

    let ended = logged_for(&environment, "invocation_ended", &invoked.request_id).await?;
    assert_eq!(ended.len(), 1, "{}", output.text());
    assert_eq!(
        (ended[0]["reason"].as_str(), ended[0]["end_of_invocation"].as_str()),
        (Some("response"), Some("runtime_api"))
    );
    let session_ended = logged_for(&environment, "session_ended", &invoked.request_id).await?;
    assert_eq!(session_ended.len(), 1);
    assert_eq!(session_ended[0]["reason"], "response");
    assert_eq!(output.events("runtime_proxy_in_use").len(), 1);
    Ok(())
}

/// The test is the runtime, on the proxy's address: a 6 MB event and a 6 MB response, a
/// function error, a streamed response, an upstream refusal and an init error, each as Lambda
/// sent or received it, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_passes_the_runtime_api_through_byte_for_byte() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut options = Options { start_function: false, ..Options::default() };
    options.platform.record_payloads = true;
    let (environment, _port) = stack.environment_with("app/db", &[], options).await?;
    let proxy = RuntimeClient::new(&environment.runtime_proxy().expect("a proxy"));
    let direct = RuntimeClient::new(environment.runtime_api());
    let output = environment.extension.output.clone();
    let timeout = Duration::from_secs(30);

    // 6 MB each way.
    let blob = "e".repeat(6_000_000);
    let (request_id, enqueued) = environment.enqueue(json!({ "blob": blob }), timeout).await?;
    let next = proxy.next().await?;
    assert_eq!(next.status, 200);
    assert_eq!(next.header("lambda-runtime-aws-request-id"), Some(request_id.as_str()));
    assert_eq!(Some(next.body.clone()), environment.event_sent(&request_id), "the 6 MB event, as sent");
    let answer = bytes::Bytes::from(format!("\"{}\"", "r".repeat(6_000_000)));
    assert_eq!(proxy.respond(&request_id, answer.clone()).await?.status, 202);
    assert_eq!(environment.result_received(&request_id), Some(("response".to_owned(), answer)));
    environment.complete(&request_id, enqueued, timeout).await?;
    let ended = logged_for(&environment, "invocation_ended", &request_id).await?;
    assert_eq!(
        (ended[0]["reason"].as_str(), ended[0]["end_of_invocation"].as_str()),
        (Some("response"), Some("runtime_api"))
    );

    // A function error.
    let (request_id, enqueued) = environment.enqueue(json!({}), timeout).await?;
    assert_eq!(proxy.next().await?.header("lambda-runtime-aws-request-id"), Some(request_id.as_str()));
    let error = bytes::Bytes::from_static(br#"{"errorMessage":"no","errorType":"Function.Refused","stackTrace":[]}"#);
    assert_eq!(proxy.fail(&request_id, "Function.Refused", error.clone()).await?.status, 202);
    assert_eq!(environment.result_received(&request_id), Some(("error".to_owned(), error)));
    let invoked = environment.complete(&request_id, enqueued, timeout).await?;
    assert_eq!(invoked.status, lambda_simulator::InvocationStatus::Error);
    assert_eq!(logged_for(&environment, "invocation_ended", &request_id).await?[0]["reason"], "error");

    // A streamed response: chunks arrive as they are written, the trailers after them, and the
    // invocation ends with the stream, not before.
    let (request_id, enqueued) = environment.enqueue(json!({}), timeout).await?;
    assert_eq!(proxy.next().await?.header("lambda-runtime-aws-request-id"), Some(request_id.as_str()));
    let (stream, answered) = proxy.stream(&request_id);
    let pause = Duration::from_millis(300);
    for chunk in [&b"{\"part\":1,"[..], b"\"more\":[2,"] {
        stream.chunk(chunk).await?;
        tokio::time::sleep(pause).await;
    }
    assert!(events_for(&environment, "invocation_ended", &request_id).is_empty(), "ended mid-stream");
    stream.chunk(b"3]}").await?;
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("lambda-runtime-function-error-type", "Function.Partial".parse()?);
    trailers.insert("lambda-runtime-function-error-body", "eyJlcnJvciI6InBhcnRpYWwifQ==".parse()?);
    stream.finish(trailers.clone()).await?;
    assert_eq!(answered.await??.status, 202);
    environment.complete(&request_id, enqueued, timeout).await?;
    let streamed = environment.streamed_responses().into_iter().find(|s| s.request_id == request_id).expect("streamed");
    let chunks: Vec<&[u8]> = streamed.chunks.iter().map(|(_, data)| data.as_ref()).collect();
    assert_eq!(chunks, [&b"{\"part\":1,"[..], b"\"more\":[2,", b"3]}"], "chunk by chunk");
    let spread = streamed.chunks[2].0 - streamed.chunks[0].0;
    assert!(spread >= pause * 2 - Duration::from_millis(50), "each chunk as it was written: {spread:?}");
    assert_eq!(streamed.trailers, Some(trailers));
    assert_eq!(
        streamed.headers.get("lambda-runtime-function-response-mode").map(|v| v.as_bytes()),
        Some(&b"streaming"[..])
    );
    // It ended at the stream's end, through the proxy, not at telemetry's runtimeDone.
    let ended = logged_for(&environment, "invocation_ended", &request_id).await?;
    assert_eq!(ended.len(), 1, "the streamed invocation ended once");
    assert_eq!(
        (ended[0]["reason"].as_str(), ended[0]["end_of_invocation"].as_str()),
        (Some("response"), Some("runtime_api"))
    );

    // Lambda's refusal reaches the runtime as Lambda made it.
    let unknown = "00000000-0000-4000-8000-000000000000";
    let through = proxy.respond(unknown, bytes::Bytes::from_static(b"{}")).await?;
    let straight = direct.respond(unknown, bytes::Bytes::from_static(b"{}")).await?;
    assert_eq!((through.status, &through.body), (straight.status, &straight.body));
    assert!(through.status.is_client_error());

    // init/error, forwarded as is (the simulator accepts it; nothing is reported for it).
    let init_error = bytes::Bytes::from_static(br#"{"errorMessage":"bad config","errorType":"Runtime.Init"}"#);
    let answer = proxy.init_error("Runtime.Init", init_error.clone()).await?;
    assert!(answer.status.is_success(), "{answer:?}");
    assert_eq!(environment.runtime_init_errors(), [("Runtime.Init".to_owned(), init_error)]);

    // Nothing the runtime sent or received was logged.
    let text = output.text();
    assert!(!text.contains("eeeeeeeeeeeeeeee") && !text.contains("rrrrrrrrrrrrrrrr") && !text.contains("bad config"));
    assert!(!text.contains("\"part\"") && !text.contains("eyJlcnJvciI6"));
    Ok(())
}

/// Tenant isolation through the proxy: the tenant comes with the runtime's `/next` answer, so
/// an invocation is served at once although telemetry (with its platform.start) is 2 s late;
/// another tenant's secret is still refused, locally and by AWS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_is_served_from_the_next_answer_without_waiting_for_telemetry() -> anyhow::Result<()> {
    let stack = Stack::start_with("tenants/", super::modes::TENANT_SECRETS).await?;
    let port = scoped_secrets_tests::lambda::free_port()?;
    let allowlist = "db=tenants/{tenant}/db,tenants/shared";
    let mut options = Options { env: stack.function_env(allowlist, port, &[WRAPPER]), ..Options::default() };
    options.platform.tenant_id = Some("blue".to_owned());
    let environment = start(options).await?;
    let delay = Duration::from_secs(2);
    environment.set_telemetry_delay(delay);

    let payload = json!({ "secretId": "db", "thenSecretId": "tenants/red/db" });
    let invoked = environment.invoke(payload, TIMEOUT).await?;
    let blue = super::modes::tenant_value("tenants/blue/db");
    assert_eq!(invoked.payload["sha256"], sha256_hex(blue), "{}", invoked.payload);
    assert!(invoked.duration < delay, "served without the telemetry wait: {:?}", invoked.duration);
    assert_eq!(
        (invoked.payload["then"]["status"].as_u64(), invoked.payload["then"]["error"].as_str()),
        (Some(403), Some("secret_not_allowed"))
    );
    let known = environment.extension.output.wait_for_event("tenant_known", TIMEOUT).await?;
    assert_eq!((known["tenant_id"].as_str(), known["source"].as_str()), (Some("blue"), Some("runtime_api")));
    let call = stack.proxy.assume_role_calls().pop().expect("a session");
    let resources = &call.policy_json().expect("policy")["Statement"][0]["Resource"];
    assert_eq!(
        resources,
        &json!([
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:tenants/blue/db-??????",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:tenants/shared-??????"
        ])
    );
    let credentials = call.credentials.expect("credentials");
    let endpoint = stack.ministack.endpoint();
    let red = scoped_secrets_tests::ministack::read_secret_as(&endpoint, &credentials, "tenants/red/db").await;
    assert_eq!(red, Err("AccessDeniedException".into()), "AWS refuses the session red's secret");
    assert!(
        stack.proxy.secrets_manager_calls().iter().all(|c| !c.secret_ids().iter().any(|id| id.contains("tenants/red"))),
        "red's secret is never asked of AWS"
    );
    Ok(())
}

/// Managed Instances through the proxy: two invocations run at once, each read is served by
/// its own invocation's session (named after it, ended at its own response), and a request id
/// that names no running invocation is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_instances_give_concurrent_invocations_their_own_sessions() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let port = scoped_secrets_tests::lambda::free_port()?;
    let extra = [
        WRAPPER,
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "lambda-managed-instances"),
        ("SCOPED_SECRETS_CACHE_TTL", "0"),
        ("SCOPED_SECRETS_REQUEST_WAIT_TIMEOUT_MS", "1000"),
    ];
    let mut options =
        Options { env: stack.function_env("app/db,app/api", port, &extra), runtime_processes: 2, ..Options::default() };
    options.platform.managed_instances = true;
    options.platform.concurrent_runtime = true;
    let mut environment = start(options).await?;
    let output = environment.extension.output.clone();
    let ready = output.wait_for_event("ready", TIMEOUT).await?;
    let environment_id = ready["environment_id"].as_str().expect("id").to_owned();

    // Both read, pause together, then read again: two invocations in flight at once.
    let payload = json!({ "secretId": "app/db", "pauseMs": 1_000, "thenSecretId": "app/api" });
    let first = environment.enqueue_concurrent(&payload, TIMEOUT)?;
    let second = environment.enqueue_concurrent(&payload, TIMEOUT)?;
    for id in [&first, &second] {
        let Outcome::Response(body) = environment.concurrent_result(id, TIMEOUT).await? else {
            anyhow::bail!("{id} failed\n{}", output.text());
        };
        let answer: Value = serde_json::from_slice(&body)?;
        assert_eq!(answer["sha256"], sha256_hex(value_of("app/db")), "{answer}");
        assert_eq!(answer["then"]["sha256"], sha256_hex(value_of("app/api")), "{answer}");
    }
    let names: Vec<String> = stack.proxy.assume_role_calls().into_iter().filter_map(|c| c.role_session_name).collect();
    let mut expected = vec![format!("ss-{environment_id}-{first}"), format!("ss-{environment_id}-{second}")];
    expected.sort();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "one session per invocation, named after it");
    let allows = output.wait_for_count("allow", 4, TIMEOUT).await?;
    assert_eq!(allows.len(), 4);
    assert!(allows.iter().all(|l| l["request_id_checked"] == true && l["request_id_asserted"] == false), "{allows:?}");
    for id in [&first, &second] {
        // Lambda's 202 reaches the runtime before the loop has handled the proxy's report.
        let ended = logged_for(&environment, "session_ended", id).await?;
        assert_eq!(ended.len(), 1, "{}", output.text());
        assert_eq!(ended[0]["reason"], "response");
        assert_eq!(events_for(&environment, "allow", id).len(), 2, "both reads with its own session");
    }

    // A request id that names no running invocation: refused, whether it ended or never was.
    let target = "/secretsmanager/get?secretId=app/db";
    let token = stack.token();
    for (id, waits) in [(first.as_str(), false), ("never-handed-out", true)] {
        let asked = Instant::now();
        let (status, body) =
            local_get(port, target, &[(TOKEN_HEADER, &token), ("X-Scoped-Secrets-Request-Id", id)]).await?;
        assert_eq!((status, body["error"].as_str()), (400, Some("request_id_not_live")), "{id}: {body}");
        assert_eq!(asked.elapsed() >= Duration::from_millis(900), waits, "{id}: waits only for an id it never saw");
    }
    let denies = output.events("deny");
    assert!(denies.iter().all(|l| l["request_id_checked"] == true && l["code"] == "request_id_not_live"), "{denies:?}");
    // Without a name: the environment-wide per-fetch session, as without the proxy.
    let (status, _) = local_get(port, target, &[(TOKEN_HEADER, &token)]).await?;
    assert_eq!(status, 200);
    let (status, _) = environment.shut_down().await?;
    assert!(status.success(), "{}", output.text());
    Ok(())
}

/// The examples under their real runtime interface clients, started through the wrapper as
/// Lambda starts a wrapped runtime (the Rust `bootstrap` starts itself through it), read
/// secrets across invocations, each ended at its response.
async fn reads_through_the_proxy(runtime: Program) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let options = Options { runtime, ..Options::default() };
    let extra = [WRAPPER, ("SCOPED_SECRETS_CACHE_TTL", "0"), ("SECRET_ID", "db")];
    let (mut environment, _port) = stack.environment_with("db=app/db,app/api", &extra, options).await?;
    for secret in ["db", "app/api", "db"] {
        let invoked = environment.invoke(json!({ "secretId": secret }), TIMEOUT).await?;
        let expected = if secret == "db" { "app/db" } else { secret };
        assert_eq!(invoked.payload["sha256"], sha256_hex(value_of(expected)), "{}", invoked.payload);
        let ended = logged_for(&environment, "invocation_ended", &invoked.request_id).await?;
        assert_eq!(ended.len(), 1, "{}", environment.extension.output.text());
        // The proxy reports the response once Lambda accepted it; the simulator sends
        // runtimeDone at once, so either may reach the loop first: both are the function's
        // answer. (With telemetry held back, the response alone ends it: the first test.)
        let reason = ended[0]["reason"].as_str();
        assert!(matches!(reason, Some("response" | "runtime_done")), "{}", ended[0]);
        assert_eq!(ended[0]["end_of_invocation"], "runtime_api", "the invocation began at the proxy's /next");
    }
    let function = environment.function.as_ref().map(|f| f.output.text()).unwrap_or_default();
    assert!(!function.contains("scoped-secrets-wrapper:"), "the wrapper found the proxy: {function}");
    assert_eq!(stack.proxy.assume_role_calls().len(), 3, "one session per invocation");
    let (status, _) = environment.shut_down().await?;
    assert!(status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_example_reads_through_the_proxy_started_by_its_bootstrap() -> anyhow::Result<()> {
    reads_through_the_proxy(scoped_secrets_tests::examples::rust_reader()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_reads_through_the_proxy_under_awslambdaric() -> anyhow::Result<()> {
    reads_through_the_proxy(scoped_secrets_tests::examples::python_reader()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_example_reads_through_the_proxy_under_aws_lambda_ric() -> anyhow::Result<()> {
    reads_through_the_proxy(scoped_secrets_tests::examples::node_reader()?).await
}

/// With the proxy off the wrapper leaves the runtime on Lambda's API and says why; invocations
/// end at telemetry, as without the wrapper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_proxy_the_wrapper_steps_aside() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let extra = [WRAPPER, ("SCOPED_SECRETS_RUNTIME_PROXY_PORT", "off")];
    let (environment, _port) = stack.environment("app/db", &extra).await?;
    let ready = environment.extension.output.wait_for_event("ready", TIMEOUT).await?;
    assert_eq!(ready["runtime_proxy"], "off");
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["status"], 200);
    let ended = logged_for(&environment, "invocation_ended", &invoked.request_id).await?;
    assert_eq!(
        (ended[0]["reason"].as_str(), ended[0]["end_of_invocation"].as_str()),
        (Some("runtime_done"), Some("telemetry"))
    );
    let function = environment.function.as_ref().map(|f| f.output.text()).unwrap_or_default();
    assert!(function.contains("scoped-secrets-wrapper: the Runtime API proxy is not listening"), "{function}");
    Ok(())
}
