//! End to end: the real release extension and the real example function in the local Lambda
//! environment, against MiniStack with IAM enforced, through a recording proxy.
//!
//! Build first: `layer/build.sh x86_64` (the extension as the layer ships it) and
//! `cargo build --release -p example-rust-reader`; `./tests/run.sh` does both.

#![allow(clippy::expect_used, clippy::type_complexity)]

use std::time::{Duration, Instant, SystemTime};

use scoped_secrets_tests::lambda::{Environment, Options, local_get};
use scoped_secrets_tests::ministack::read_secret_as;
use scoped_secrets_tests::{SECRETS, Stack, sha256_hex};
use serde_json::{Value, json};

#[path = "e2e/audit_log.rs"]
mod audit_log;
#[path = "e2e/credentials_end.rs"]
mod credentials_end;
#[path = "e2e/faults.rs"]
mod faults;
#[path = "e2e/hostile.rs"]
mod hostile;
#[path = "e2e/languages.rs"]
mod languages;
#[path = "e2e/layer.rs"]
mod layer;
#[path = "e2e/memory.rs"]
mod memory;
#[path = "e2e/modes.rs"]
mod modes;
#[path = "e2e/parameter_modes.rs"]
mod parameter_modes;
#[path = "e2e/parameters.rs"]
mod parameters;
#[path = "e2e/probe.rs"]
mod probe;
#[path = "e2e/runtime_proxy.rs"]
mod runtime_proxy;
#[path = "e2e/sdk_protocol.rs"]
mod sdk_protocol;
#[path = "e2e/template.rs"]
mod template;
#[path = "e2e/template_iam.rs"]
mod template_iam;
#[path = "e2e/version.rs"]
mod version;

const TIMEOUT: Duration = Duration::from_secs(5);

fn value_of(name: &str) -> &'static str {
    SECRETS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).expect("known secret")
}

fn read(secret_id: &str) -> Value {
    json!({ "secretId": secret_id })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invocation_reads_through_its_own_narrow_session() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (environment, _port) = stack.environment("db=app/db,app/api", &[("SCOPED_SECRETS_CACHE_TTL", "0")]).await?;

    let mut request_ids = Vec::new();
    for _ in 0..3 {
        let invoked = environment.invoke(read("db"), TIMEOUT).await?;
        assert_eq!(invoked.payload["status"], 200, "{:?}", invoked.payload);
        assert_eq!(invoked.payload["sha256"], sha256_hex(value_of("app/db")));
        request_ids.push(invoked.request_id);
    }

    let calls = stack.proxy.assume_role_calls();
    let names: Vec<_> = calls.iter().map(|c| c.role_session_name.clone()).collect();
    assert_eq!(
        calls.len(),
        3,
        "one AssumeRole per invocation that needed AWS: {names:?}\n{}",
        environment.extension.output.text()
    );
    let ready = environment.extension.output.wait_for_event("ready", TIMEOUT).await?;
    let environment_id = ready["environment_id"].as_str().expect("environment id").to_owned();
    for (call, request_id) in calls.iter().zip(&request_ids) {
        assert_eq!(call.status, 200);
        assert_eq!(call.role_session_name.as_deref(), Some(format!("ss-{environment_id}-{request_id}").as_str()));
        assert_eq!(call.duration_seconds, Some(900));
        assert_eq!(call.role_arn.as_deref(), Some(stack.world.scoped_role_arn.as_str()));
        let policy = call.policy_json().expect("a session policy on every AssumeRole");
        let read = &policy["Statement"][0];
        assert_eq!(read["Action"], "secretsmanager:GetSecretValue");
        assert_eq!(
            read["Resource"],
            json!([
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-??????",
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/api-??????"
            ])
        );
        assert!(read["Condition"]["DateLessThan"]["aws:CurrentTime"].is_string());
        assert_eq!(policy["Statement"].as_array().map(Vec::len), Some(2), "nothing else is allowed");
    }

    // Each invocation fetched each allowlisted secret exactly once (single flight): by the
    // prefetch's batch call, or by the function's request when it won the race for a secret.
    let mut fetched: Vec<String> =
        stack.proxy.secrets_manager_calls().iter().flat_map(|call| call.secret_ids()).collect();
    fetched.sort();
    let mut expected = vec!["app/api".to_owned(); 3];
    expected.extend(vec!["app/db".to_owned(); 3]);
    assert_eq!(fetched, expected);
    assert!(!stack.proxy.secrets_manager_calls_of("BatchGetSecretValue").is_empty(), "the prefetch batches");
    // Every allow is audited with its invocation's request id, and every session ended.
    let allows = environment.extension.output.events("allow");
    assert_eq!(allows.len(), 3);
    for (allow, request_id) in allows.iter().zip(&request_ids) {
        assert_eq!(allow["request_id"], request_id.as_str());
        assert_eq!(allow["secret_id"], "db");
    }
    let ended: Vec<Value> = environment.extension.output.events("session_ended");
    assert_eq!(ended.len(), 3, "each invocation's session ended with it");
    assert!(ended.iter().all(|e| e["reason"] == "runtime_done"), "{ended:?}");
    Ok(())
}

/// With `SCOPED_SECRETS_KMS_KEYS`, the session may have Secrets Manager decrypt with those keys
/// for the allowlisted secrets only, and AWS (the emulator's IAM) accepts that policy. (MiniStack
/// does not ask KMS when it serves a secret, so the grant's effect cannot be shown here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_keys_add_a_decrypt_grant_bound_to_secrets_manager_and_the_allowlist() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let key_id = "1234abcd-12ab-34cd-56ef-1234567890ab";
    let (mut environment, _port) = stack.environment("app/db", &[("SCOPED_SECRETS_KMS_KEYS", key_id)]).await?;
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["sha256"], sha256_hex(value_of("app/db")), "{}", invoked.payload);
    let calls = stack.proxy.assume_role_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].status, 200, "the emulator's IAM took the policy");
    let policy = calls[0].policy_json().expect("a session policy");
    let decrypt = &policy["Statement"][2];
    assert_eq!(decrypt["Action"], "kms:Decrypt");
    assert_eq!(decrypt["Resource"], json!([format!("arn:aws:kms:us-east-1:123456789012:key/{key_id}")]));
    assert_eq!(decrypt["Condition"]["StringEquals"]["kms:ViaService"], "secretsmanager.us-east-1.amazonaws.com");
    assert_eq!(
        decrypt["Condition"]["StringLike"]["kms:EncryptionContext:SecretARN"],
        json!(["arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-??????"])
    );
    assert_eq!(decrypt["Condition"]["DateLessThan"], policy["Statement"][0]["Condition"]["DateLessThan"]);
    let (status, _) = environment.shut_down().await?;
    assert!(status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_cache_needs_no_session() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (environment, _port) = stack.environment("app/db", &[]).await?;
    for _ in 0..3 {
        let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
        assert_eq!(invoked.payload["sha256"], sha256_hex(value_of("app/db")));
    }
    assert_eq!(stack.proxy.assume_role_calls().len(), 1, "only the first invocation needed AWS");
    let sources: Vec<Value> =
        environment.extension.output.events("allow").iter().map(|l| l["source"].clone()).collect();
    assert_eq!(sources.len(), 3);
    assert!(sources.iter().skip(1).all(|s| s == "cache"), "{sources:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_outside_the_allowlist_is_refused_locally_and_by_aws() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (environment, _port) = stack.environment("app/db", &[("SCOPED_SECRETS_CACHE_TTL", "0")]).await?;
    let invoked = environment.invoke(read("app/api"), TIMEOUT).await?;
    assert_eq!(invoked.payload["status"], 403);
    assert_eq!(invoked.payload["error"], "secret_not_allowed");
    assert!(
        stack.proxy.secrets_manager_calls().iter().all(|c| !c.secret_ids().iter().any(|id| id.contains("app/api"))),
        "a refused secret is never asked of AWS"
    );
    let deny = environment.extension.output.wait_for_event("deny", TIMEOUT).await?;
    assert_eq!((deny["secret_id"].as_str(), deny["code"].as_str()), (Some("app/api"), Some("secret_not_allowed")));
    assert_eq!(deny["request_id"], invoked.request_id.as_str());

    // The session's own credentials, used directly, reach app/db and nothing else: AWS itself
    // enforces the session policy, even for secrets the scoped role's policy would allow.
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["status"], 200);
    let credentials = stack.proxy.assume_role_calls().last().and_then(|c| c.credentials.clone()).expect("credentials");
    let endpoint = stack.ministack.endpoint();
    assert_eq!(read_secret_as(&endpoint, &credentials, "app/db").await.as_deref(), Ok(value_of("app/db")));
    for outside in ["app/api", "app/other", "other/x"] {
        assert_eq!(
            read_secret_as(&endpoint, &credentials, outside).await,
            Err("AccessDeniedException".into()),
            "{outside}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_credentials_are_refused_once_the_deadline_has_passed() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (environment, _port) = stack.environment("app/db", &[("SCOPED_SECRETS_DEADLINE_MARGIN_MS", "0")]).await?;
    let timeout = Duration::from_millis(1_500);
    let invoked = environment.invoke(read("app/db"), timeout).await?;
    assert_eq!(invoked.payload["status"], 200);
    let call = stack.proxy.assume_role_calls().pop().expect("one session");
    let credentials = call.credentials.clone().expect("credentials");
    let end = call.policy_json().expect("policy")["Statement"][0]["Condition"]["DateLessThan"]["aws:CurrentTime"]
        .as_str()
        .expect("end")
        .to_owned();

    let endpoint = stack.ministack.endpoint();
    // Before the deadline (the invocation finished early) AWS honours them ...
    assert_eq!(read_secret_as(&endpoint, &credentials, "app/db").await.as_deref(), Ok(value_of("app/db")));
    // ... and after it, although STS issued them for 900 s, AWS refuses them.
    let deadline = invoked.enqueued_at + timeout;
    tokio::time::sleep_until((deadline + Duration::from_millis(1_100)).into()).await;
    assert_eq!(
        read_secret_as(&endpoint, &credentials, "app/db").await,
        Err("AccessDeniedException".into()),
        "credentials must die with the invocation (policy end {end})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_token_or_through_a_proxy_are_refused_and_fetch_nothing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (environment, port) = stack.environment("app/db", &[]).await?;
    let token = stack.token();
    let target = "/secretsmanager/get?secretId=app%2Fdb";
    let cases: Vec<(Vec<(&str, &str)>, u16, &str)> = vec![
        (vec![], 401, "missing_token"),
        (vec![("X-Aws-Parameters-Secrets-Token", "wrong")], 403, "invalid_token"),
        (vec![("X-Aws-Parameters-Secrets-Token", "")], 403, "invalid_token"),
        (vec![("X-Aws-Parameters-Secrets-Token", &token[..token.len() - 1])], 403, "invalid_token"),
        (vec![("Authorization", &token)], 401, "missing_token"),
        (vec![("X-Aws-Parameters-Secrets-Token", &token), ("X-Forwarded-For", "10.1.2.3")], 400, "forwarded_request"),
        (vec![("X-Aws-Parameters-Secrets-Token", &token), ("Host", "attacker.example")], 400, "invalid_host"),
    ];
    for (headers, status, code) in &cases {
        let (got_status, body) = local_get(port, target, headers).await?;
        assert_eq!((got_status, body["error"].as_str()), (*status, Some(*code)), "{headers:?}");
    }
    let (status, body) = local_get(port, &format!("{target}&X-Aws-Parameters-Secrets-Token={token}"), &[]).await?;
    assert_eq!((status, body["error"].as_str()), (401, Some("missing_token")), "a token in the query is no token");
    let (status, body) = local_get(port, "/ping", &[]).await?;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")), "the health path needs no token");
    assert!(stack.proxy.exchanges().is_empty(), "nothing was asked of AWS for refused requests");
    let denies = environment.extension.output.wait_for_count("deny", cases.len() + 1, TIMEOUT).await?;
    assert_eq!(denies.len(), cases.len() + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_racing_its_invoke_waits_and_one_with_no_invoke_coming_times_out() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let extra = [
        ("SCOPED_SECRETS_CACHE_TTL", "0"),
        ("SCOPED_SECRETS_PREFETCH", "false"),
        ("SCOPED_SECRETS_REQUEST_WAIT_TIMEOUT_MS", "1500"),
    ];
    let (environment, port) = stack.environment("app/db", &extra).await?;
    environment.invoke(read("app/db"), TIMEOUT).await?;
    let token = stack.token();

    // Between invocations (as a function thread racing its INVOKE would be): the request waits.
    let racing = {
        let token = token.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer =
                local_get(port, "/secretsmanager/get?secretId=app/db", &[("X-Aws-Parameters-Secrets-Token", &token)])
                    .await;
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!racing.is_finished(), "the request must wait for the invocation");
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    let (answer, waited) = racing.await?;
    let (status, body) = answer?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["SecretString"], value_of("app/db"));
    assert!(waited >= Duration::from_millis(400));
    let allows = environment.extension.output.events("allow");
    assert!(allows.iter().any(|a| a["request_id"] == invoked.request_id.as_str()), "served within the new invocation");

    // No invocation comes: after the wait timeout, a clear 503.
    let started = Instant::now();
    let (status, body) =
        local_get(port, "/secretsmanager/get?secretId=app/db", &[("X-Aws-Parameters-Secrets-Token", &token)]).await?;
    assert_eq!((status, body["error"].as_str()), (503, Some("no_active_invocation")));
    assert!(started.elapsed() >= Duration::from_millis(1_400), "it waited the configured time first");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_is_served_after_the_ttl_and_at_once_with_ttl_zero() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (no_cache, _) = stack.environment("app/db", &[("SCOPED_SECRETS_CACHE_TTL", "0")]).await?;
    let (cached, _) = stack.environment("app/db", &[("SCOPED_SECRETS_CACHE_TTL", "2")]).await?;
    let old = sha256_hex(value_of("app/db"));
    for environment in [&no_cache, &cached] {
        assert_eq!(environment.invoke(read("app/db"), TIMEOUT).await?.payload["sha256"], old);
    }
    let rotated_at = Instant::now();
    stack.ministack.rotate("app/db", "canary-db-rotated-4c1d").await?;
    let new = sha256_hex("canary-db-rotated-4c1d");
    assert_eq!(no_cache.invoke(read("app/db"), TIMEOUT).await?.payload["sha256"], new, "TTL 0: at once");
    let still_cached = cached.invoke(read("app/db"), TIMEOUT).await?;
    if rotated_at.elapsed() < Duration::from_millis(1_800) {
        assert_eq!(still_cached.payload["sha256"], old, "within the TTL the cached version is served");
    }
    tokio::time::sleep_until((rotated_at + Duration::from_millis(2_100)).into()).await;
    assert_eq!(cached.invoke(read("app/db"), TIMEOUT).await?.payload["sha256"], new, "after the TTL: the new version");
    let previous = cached.invoke(json!({ "secretId": "app/db", "versionStage": "AWSPREVIOUS" }), TIMEOUT).await?;
    assert_eq!(previous.payload["sha256"], old, "versionStage goes to GetSecretValue");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wipes_everything_and_exits_zero_inside_the_deadline() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (mut environment, _port) = stack.environment("app/db,app/api", &[]).await?;
    environment.invoke(read("app/db"), TIMEOUT).await?;
    let (status, elapsed) = environment.shut_down().await?;
    assert!(status.success(), "exit status {status:?}");
    assert!(elapsed < Duration::from_millis(2_000), "exited after {elapsed:?}");
    let summary = environment.extension.output.wait_for_event("shutdown", TIMEOUT).await?;
    assert_eq!(summary["reason"], "spindown");
    assert_eq!(summary["secrets_wiped"], 2, "both prefetched secrets were cached, then wiped");
    assert_eq!(summary["sessions_started"], summary["sessions_ended"], "{summary}");
    assert_eq!(summary["secrets_served"], 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_credential_or_token_appears_in_the_output_at_trace_level() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let extra = [("SCOPED_SECRETS_LOG_LEVEL", "trace"), ("RUST_LOG", "trace"), ("SCOPED_SECRETS_CACHE_TTL", "0")];
    let (mut environment, port) = stack.environment("app/db,app/missing", &extra).await?;
    environment.invoke(read("app/db"), TIMEOUT).await?;
    environment.invoke(read("app/missing"), TIMEOUT).await?; // 404 upstream
    environment.invoke(read("other/x"), TIMEOUT).await?; // local deny
    local_get(port, "/secretsmanager/get?secretId=app/db", &[("X-Aws-Parameters-Secrets-Token", "forged-token-value")])
        .await?;
    environment.shut_down().await?;

    let output = environment.extension.output.text();
    assert!(output.contains("\"level\":\"TRACE\"") || output.contains("\"level\":\"DEBUG\""), "the run was verbose");
    let mut forbidden: Vec<String> = SECRETS.iter().map(|(_, v)| (*v).to_owned()).collect();
    let exec = &stack.world.exec_credentials;
    forbidden.push(exec.secret_access_key.clone());
    forbidden.extend(exec.session_token.clone());
    forbidden.push("forged-token-value".into());
    for call in stack.proxy.assume_role_calls() {
        let credentials = call.credentials.expect("issued");
        forbidden.push(credentials.secret_access_key);
        forbidden.extend(credentials.session_token);
    }
    assert!(forbidden.len() >= 8);
    for needle in &forbidden {
        // Tokens are long: a 16-character window is enough to catch a partial leak.
        let probe = &needle[..needle.len().min(16)];
        assert!(
            !output.contains(probe),
            "the extension's output contains a secret or credential ({} chars)",
            needle.len()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_fails_init_with_the_reason() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let busy = std::net::TcpListener::bind("127.0.0.1:0")?;
    let busy_port = busy.local_addr()?.port().to_string();
    // Each list fits alone; together they pass the session policy's 2,048 characters.
    let long_secrets: String = (0..10).map(|i| format!("app/{}-{i}", "s".repeat(30))).collect::<Vec<_>>().join(",");
    let long_parameters: String = (0..10).map(|i| format!("/app/{}-{i}", "p".repeat(30))).collect::<Vec<_>>().join(",");
    let cases: Vec<(Vec<(&str, &str)>, &str, &str)> = vec![
        (vec![("SCOPED_SECRETS_ROLE_ARN", "")], "Extension.ConfigInvalid", "SCOPED_SECRETS_ROLE_ARN is required"),
        (vec![("SCOPED_SECRETS_SECRETS", "app/*")], "Extension.ConfigInvalid", "SCOPED_SECRETS_SECRETS entry 1"),
        (
            vec![("SCOPED_SECRETS_SESSION_DURATION", "60")],
            "Extension.ConfigInvalid",
            "SCOPED_SECRETS_SESSION_DURATION must be from 900 to 3600",
        ),
        (
            vec![("SCOPED_SECRETS_LOG_LEVEL", "loud")],
            "Extension.ConfigInvalid",
            "SCOPED_SECRETS_LOG_LEVEL must be one of",
        ),
        (
            vec![("SCOPED_SECRETS_KMS_KEYS", "alias/orders")],
            "Extension.ConfigInvalid",
            "SCOPED_SECRETS_KMS_KEYS entry 1 must be a KMS key ARN",
        ),
        (vec![("SCOPED_SECRETS_PORT", busy_port.as_str())], "Extension.BindFailed", "could not listen on 127.0.0.1:"),
        (
            vec![("SCOPED_SECRETS_PARAMETERS", "app/config")],
            "Extension.ConfigInvalid",
            "SCOPED_SECRETS_PARAMETERS entry 1",
        ),
        (
            vec![("SCOPED_SECRETS_SECRETS", ""), ("SCOPED_SECRETS_PARAMETERS", "")],
            "Extension.ConfigInvalid",
            "SCOPED_SECRETS_SECRETS and SCOPED_SECRETS_PARAMETERS are both empty",
        ),
        (
            vec![("SCOPED_SECRETS_SECRETS", &long_secrets), ("SCOPED_SECRETS_PARAMETERS", &long_parameters)],
            "Extension.ConfigInvalid",
            "SCOPED_SECRETS_SECRETS and SCOPED_SECRETS_PARAMETERS together would produce a session policy of",
        ),
    ];
    for (overrides, error_type, reason) in cases {
        let port = scoped_secrets_tests::lambda::free_port()?.to_string();
        let mut extra = vec![("SCOPED_SECRETS_PORT", port.as_str())];
        extra.extend(overrides.iter().copied());
        let options = Options { env: stack.function_env("app/db", 0, &extra), ..Options::default() };
        let failed = match Environment::start(options).await? {
            Ok(_) => anyhow::bail!("INIT must fail for {overrides:?}"),
            Err(failed) => failed,
        };
        let reported = failed.reported.expect("an init/error report");
        assert_eq!(reported.error_type, error_type, "{overrides:?}");
        let message = reported.body["errorMessage"].as_str().unwrap_or_default();
        assert!(message.contains(reason) && message.ends_with('.'), "{overrides:?}: {message}");
        assert!(failed.exit_status.is_some_and(|s| !s.success()), "the extension exits non-zero");
    }
    assert!(stack.proxy.exchanges().is_empty(), "a failed INIT asks nothing of AWS");
    drop(busy);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_init_use_an_init_session_that_ends_at_the_first_invoke() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let port = scoped_secrets_tests::lambda::free_port()?;
    let options = Options {
        env: stack.function_env("app/db", port, &[("SCOPED_SECRETS_CACHE_TTL", "0")]),
        start_function: false,
        ..Options::default()
    };
    let Ok(mut environment) = Environment::start(options).await? else { anyhow::bail!("INIT failed") };
    let token = stack.token();
    let (status, body) =
        local_get(port, "/secretsmanager/get?secretId=app/db", &[("X-Aws-Parameters-Secrets-Token", &token)]).await?;
    assert_eq!(status, 200, "{body}");
    let init_call = stack.proxy.assume_role_calls().pop().expect("an init session");
    assert!(init_call.role_session_name.as_deref().is_some_and(|n| n.ends_with("-init")));
    let end = init_call.policy_json().expect("policy")["Statement"][0]["Condition"]["DateLessThan"]["aws:CurrentTime"]
        .as_str()
        .expect("end")
        .to_owned();
    let now = scoped_secrets::domain::time::iso8601_ceil(SystemTime::now());
    let in_15s = scoped_secrets::domain::time::iso8601_ceil(SystemTime::now() + Duration::from_secs(15));
    assert!(end > now && end <= in_15s, "the init session ends with the init budget ({end})");

    environment.start_function().await?;
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["status"], 200);
    let ended = environment.extension.output.events("session_ended");
    assert_eq!(ended[0]["request_id"], "init");
    assert_eq!(ended[0]["reason"], "init_done", "the init session ends with the runtime's INIT");
    assert_eq!(stack.proxy.assume_role_calls().len(), 2, "the invocation did not reuse the init session");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_next_invoke_the_session_ends_at_the_next_invoke_or_the_deadline() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let extra = [("SCOPED_SECRETS_END_OF_INVOCATION", "next-invoke"), ("SCOPED_SECRETS_CACHE_TTL", "0")];
    let (environment, _port) = stack.environment("app/db", &extra).await?;
    let first = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(first.payload["status"], 200);
    assert!(environment.extension.output.events("session_ended").is_empty(), "left open for the next INVOKE");
    let timeout = Duration::from_millis(1_000);
    let second = environment.invoke(read("app/db"), timeout).await?;
    assert_eq!(second.payload["status"], 200);
    let ended = environment.extension.output.wait_for_event("session_ended", TIMEOUT).await?;
    assert_eq!(
        (ended["request_id"].as_str(), ended["reason"].as_str()),
        (Some(first.request_id.as_str()), Some("next_invocation"))
    );
    // No INVOKE follows the second: its deadline timer ends it.
    tokio::time::sleep_until((second.enqueued_at + timeout + Duration::from_millis(500)).into()).await;
    let ended = environment.extension.output.events("session_ended");
    assert_eq!(ended.len(), 2, "{ended:?}");
    assert_eq!(
        (ended[1]["request_id"].as_str(), ended[1]["reason"].as_str()),
        (Some(second.request_id.as_str()), Some("deadline"))
    );
    assert_eq!(stack.proxy.assume_role_calls().len(), 2, "still one session per invocation");
    Ok(())
}
