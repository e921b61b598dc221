//! Every way Lambda runs a function: SnapStart, tenant isolation, Lambda Managed Instances,
//! provisioned concurrency, and an initialisation type this version does not know. The local
//! Lambda environment is extended where the simulator lacks a mode (see `lambda.rs`).

use std::time::Duration;

use scoped_secrets_tests::container::ContainerCredentials;
use scoped_secrets_tests::lambda::{Environment, Options, Program, local_get, scan_memory};
use scoped_secrets_tests::{Stack, sha256_hex};
use serde_json::json;

use super::{TIMEOUT, read, value_of};

const TOKEN_HEADER: &str = "X-Aws-Parameters-Secrets-Token";

/// A token that no other test uses.
fn container_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("container-token-{:016x}", hasher.finish())
}

/// Starts an environment; a failed INIT is an error with the extension's output.
pub(super) async fn start(options: Options) -> anyhow::Result<Environment> {
    match Environment::start(options).await? {
        Ok(environment) => Ok(environment),
        Err(failed) => anyhow::bail!("INIT failed: {:?}\n{}", failed.reported, failed.output.text()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snap_start_fetches_and_draws_nothing_before_restore() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let token = container_token();
    let container = ContainerCredentials::start(stack.world.exec_credentials.clone(), &token).await?;
    let port = scoped_secrets_tests::lambda::free_port()?;
    let options = Options {
        env: stack.snap_start_env("app/db", port, &container, &[("SCOPED_SECRETS_REQUEST_WAIT_TIMEOUT_MS", "500")]),
        start_function: false,
        ..Options::default()
    };
    let mut environment = start(options).await?;
    let output = environment.extension.output.clone();
    let ready = output.wait_for_event("ready", TIMEOUT).await?;
    assert_eq!(ready["environment_id"], "drawn_after_restore", "nothing random before the snapshot");
    assert_eq!(ready["initialization_type"], "snap-start");

    // A request during INIT: 503 snapstart_init, with the container token as the local token.
    let target = "/secretsmanager/get?secretId=app/db";
    let (status, body) = local_get(port, target, &[(TOKEN_HEADER, &token)]).await?;
    assert_eq!((status, body["error"].as_str()), (503, Some("snapstart_init")), "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("in the handler"), "{body}");
    let (status, _) = local_get(port, target, &[(TOKEN_HEADER, "wrong")]).await?;
    assert_eq!(status, 403, "the token is still checked");
    environment.start_function().await?;
    // INIT is over but the snapshot is not restored: a request waits for the restore, then
    // gives up, and an SDK-protocol request loads no credentials to verify itself with.
    let (status, body) = local_get(port, target, &[(TOKEN_HEADER, &token)]).await?;
    assert_eq!((status, body["error"].as_str()), (503, Some("no_active_invocation")), "{body}");

    // Nothing was asked of AWS or of the credentials endpoint, and the live process holds no
    // credential and no secret: a snapshot taken now would freeze nothing.
    assert!(stack.proxy.exchanges().is_empty(), "no AWS call before the first INVOKE");
    assert_eq!(container.served(), 0, "no credentials loaded before restore");
    let exec = &stack.world.exec_credentials;
    let exec_token = exec.session_token.clone().unwrap_or_default();
    let needles: [&[u8]; 3] =
        [exec.secret_access_key.as_bytes(), &exec_token.as_bytes()[..64], value_of("app/db").as_bytes()];
    let pid = environment.extension.pid().expect("running");
    let found = scan_memory(pid, &needles)?;
    assert!(found.is_empty(), "before the first INVOKE (0 key, 1 token, 2 secret): {found:#?}");
    assert!(output.events("restored").is_empty());

    // Restore: the platform's restoreStart draws the environment id; the INVOKE then reads
    // through a session named with it, on credentials from the container endpoint.
    let status = environment
        .send_telemetry(vec![json!({ "time": "2026-01-01T00:00:00.000Z", "type": "platform.restoreStart",
            "record": { "runtimeVersion": "x", "runtimeVersionArn": "arn" } })])
        .await?;
    assert_eq!(status, 200);
    let restored = output.wait_for_event("restored", TIMEOUT).await?;
    assert_eq!(restored["trigger"], "restore_start");
    let first_id = restored["environment_id"].as_str().expect("an id").to_owned();
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["sha256"], sha256_hex(value_of("app/db")), "{}", invoked.payload);
    let call = stack.proxy.assume_role_calls().pop().expect("a session after restore");
    assert!(call.role_session_name.as_deref().is_some_and(|n| n.starts_with(&format!("ss-{first_id}-"))));
    assert_eq!(call.caller_access_key_id.as_deref(), Some(exec.access_key_id.as_str()), "container credentials");
    assert!(container.served() >= 1);
    // Control: the scan does find a secret that is legitimately cached now.
    let found = scan_memory(pid, &[value_of("app/db").as_bytes()])?;
    assert!(!found.is_empty(), "the scan sees a cached secret");
    environment.shut_down().await?;

    // The same start state again, restored without a restoreStart record: the first INVOKE
    // draws the id, and it is not the first environment's.
    let port = scoped_secrets_tests::lambda::free_port()?;
    let options = Options { env: stack.snap_start_env("app/db", port, &container, &[]), ..Options::default() };
    let second = start(options).await?;
    let invoked = second.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["status"], 200, "{}", invoked.payload);
    let restored = second.extension.output.wait_for_event("restored", TIMEOUT).await?;
    assert_eq!(restored["trigger"], "first_invoke");
    assert_ne!(restored["environment_id"].as_str(), Some(first_id.as_str()), "two restores, two ids");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snap_start_sdk_requests_verify_with_the_container_credentials() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let token = container_token();
    let container = ContainerCredentials::start(stack.world.exec_credentials.clone(), &token).await?;
    let port = scoped_secrets_tests::lambda::free_port()?;
    let options = Options {
        env: stack.snap_start_env("app/db,app/api", port, &container, &[("SCOPED_SECRETS_CACHE_TTL", "0")]),
        runtime: Program::rust_sdk_reader(),
        ..Options::default()
    };
    let environment = start(options).await?;
    // The function's unchanged SDK signs with the credentials its default chain read from the
    // container endpoint; the extension verifies with the same ones.
    let db = environment.invoke(json!({ "op": "get", "secretId": "app/db" }), TIMEOUT).await?.payload;
    assert_eq!(db["sha256"], sha256_hex(value_of("app/db")), "{db}");
    let batch =
        environment.invoke(json!({ "op": "batch", "secretIds": ["app/db", "app/api"] }), TIMEOUT).await?.payload;
    assert_eq!(batch["values"].as_array().map(Vec::len), Some(2), "{batch}");
    let refused = environment.invoke(json!({ "op": "get", "secretId": "other/x" }), TIMEOUT).await?.payload;
    assert_eq!(refused["error"], "AccessDeniedException", "{refused}");
    assert!(container.served() >= 2, "the function and the extension both read the endpoint");
    assert_eq!(container.refused(), 0);
    let sdk_allows = environment.extension.output.events("allow").iter().filter(|l| l["api"] == "sdk").count();
    assert_eq!(sdk_allows, 3, "{}", environment.extension.output.text());
    Ok(())
}

pub(crate) const TENANT_SECRETS: &[(&str, &str)] = &[
    ("tenants/blue/db", "canary-blue-3c9e1f20-value"),
    ("tenants/red/db", "canary-red-88a41d7b-value"),
    ("tenants/shared", "canary-shared-19f0e6c4-value"),
];

pub(crate) fn tenant_value(name: &str) -> &'static str {
    TENANT_SECRETS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).expect("known secret")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_reads_its_own_secrets_only_and_a_second_tenant_ends_the_environment() -> anyhow::Result<()> {
    let stack = Stack::start_with("tenants/", TENANT_SECRETS).await?;
    let allowlist = "db=tenants/{tenant}/db,tenants/shared";
    let port = scoped_secrets_tests::lambda::free_port()?;
    let mut options = Options { env: stack.function_env(allowlist, port, &[]), ..Options::default() };
    options.platform.tenant_id = Some("blue".to_owned());
    let environment = start(options).await?;
    let output = environment.extension.output.clone();
    assert_eq!(output.wait_for_event("ready", TIMEOUT).await?["tenant_scoped"], true);

    // `db` and `tenants/{tenant}/db` resolve to blue's secret.
    let invoked = environment.invoke(read("db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["sha256"], sha256_hex(tenant_value("tenants/blue/db")), "{}", invoked.payload);
    let known = output.wait_for_event("tenant_known", TIMEOUT).await?;
    assert_eq!(known["tenant_id"], "blue");
    let session = stack.proxy.assume_role_calls().pop().expect("a session");
    let policy = session.policy_json().expect("policy");
    assert_eq!(
        policy["Statement"][0]["Resource"],
        json!([
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:tenants/blue/db-??????",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:tenants/shared-??????"
        ])
    );

    // Red's secret: refused locally, nothing asked of AWS ...
    let payload = json!({ "secretId": "tenants/blue/db", "thenSecretId": "tenants/red/db" });
    let invoked = environment.invoke(payload, TIMEOUT).await?;
    assert_eq!(invoked.payload["status"], 200);
    assert_eq!(
        (invoked.payload["then"]["status"].as_u64(), invoked.payload["then"]["error"].as_str()),
        (Some(403), Some("secret_not_allowed"))
    );
    assert!(
        stack.proxy.secrets_manager_calls().iter().all(|c| !c.secret_ids().iter().any(|id| id.contains("tenants/red"))),
        "red's secret is never asked of AWS"
    );
    // ... and the session's own credentials are refused by AWS for it, though the scoped role
    // reaches every tenant.
    let credentials = stack.proxy.assume_role_calls().pop().and_then(|c| c.credentials).expect("credentials");
    let endpoint = stack.ministack.endpoint();
    let read_as = |id| scoped_secrets_tests::ministack::read_secret_as(&endpoint, &credentials, id);
    assert_eq!(read_as("tenants/blue/db").await.as_deref(), Ok(tenant_value("tenants/blue/db")));
    assert_eq!(read_as("tenants/red/db").await, Err("AccessDeniedException".into()));
    let admin = scoped_secrets_tests::ministack::MiniStack::admin_credentials();
    assert_eq!(
        scoped_secrets_tests::ministack::read_secret_as(&endpoint, &admin, "tenants/red/db").await.as_deref(),
        Ok(tenant_value("tenants/red/db")),
        "control: red's secret exists"
    );

    // Another tenant in the same environment: everything wiped, exit/error, non-zero exit.
    environment.set_tenant(Some("red"));
    let (request_id, _) = environment.enqueue(read("db"), TIMEOUT).await?;
    let broken = output.wait_for_event("tenant_invariant_broken", TIMEOUT).await?;
    assert_eq!(broken["tenant_id"], "blue");
    let mut environment = environment;
    let status = environment.extension.wait(TIMEOUT).await?;
    assert!(!status.success(), "the extension stops");
    let reported = environment.reported();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!((reported[0].path.as_str(), reported[0].error_type.as_str()), ("exit/error", "Extension.TenantChanged"));
    assert!(
        !output.events("allow").iter().any(|l| l["request_id"] == request_id.as_str()),
        "nothing served to the second tenant's invocation"
    );
    assert!(!output.text().contains(tenant_value("tenants/red/db")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tenant_ids_never_reach_a_pattern() -> anyhow::Result<()> {
    let stack = Stack::start_with("tenants/", TENANT_SECRETS).await?;
    let long = "b".repeat(200);
    for hostile in ["*", "../x", long.as_str()] {
        let port = scoped_secrets_tests::lambda::free_port()?;
        let mut options = Options {
            env: stack.function_env(
                "db=tenants/{tenant}/db",
                port,
                &[("SCOPED_SECRETS_REQUEST_WAIT_TIMEOUT_MS", "1000")],
            ),
            ..Options::default()
        };
        options.platform.tenant_id = Some(hostile.to_owned());
        let environment = start(options).await?;
        let invoked = environment.invoke(read("db"), TIMEOUT).await?;
        assert_eq!(
            (invoked.payload["status"].as_u64(), invoked.payload["error"].as_str()),
            (Some(503), Some("tenant_refused")),
            "{hostile:.20}: {}",
            invoked.payload
        );
        let refused = environment.extension.output.wait_for_event("tenant_refused", TIMEOUT).await?;
        assert_eq!(refused["tenant_id_chars"], hostile.len());
        assert!(!environment.extension.output.text().contains(&format!("tenants/{hostile}")), "{hostile:.20}");
    }
    assert!(stack.proxy.exchanges().is_empty(), "no session and no read for a refused tenant");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_instances_registers_shutdown_only_and_serves_per_fetch_sessions() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let port = scoped_secrets_tests::lambda::free_port()?;
    let extra = [("AWS_LAMBDA_INITIALIZATION_TYPE", "lambda-managed-instances"), ("SCOPED_SECRETS_CACHE_TTL", "0")];
    let mut options = Options { env: stack.function_env("app/db,app/api", port, &extra), ..Options::default() };
    options.platform.managed_instances = true;
    let mut environment = start(options).await?;
    assert_eq!(environment.registrations(), [json!({ "events": ["SHUTDOWN"] })]);
    let subscriptions = environment.telemetry_subscriptions();
    assert_eq!(subscriptions.len(), 1);
    assert_eq!(subscriptions[0]["schemaVersion"], scoped_secrets_tests::lambda::MANAGED_INSTANCES_SCHEMA);

    // Reads from concurrent invocations, one with its request id asserted in a header.
    let token = stack.token();
    let target = "/secretsmanager/get?secretId=app/db";
    let reads = (0..3).map(|i| {
        let (token, id) = (token.clone(), format!("req-{i}"));
        tokio::spawn(async move {
            local_get(port, target, &[(TOKEN_HEADER, &token), ("X-Scoped-Secrets-Request-Id", &id)]).await
        })
    });
    for read in reads {
        let (status, body) = read.await??;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["SecretString"], value_of("app/db"));
    }
    let (status, body) =
        local_get(port, target, &[(TOKEN_HEADER, &token), ("X-Scoped-Secrets-Request-Id", "a b")]).await?;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request_id")));
    let invoked = environment.invoke(read("app/api"), TIMEOUT).await?;
    assert_eq!(invoked.payload["sha256"], sha256_hex(value_of("app/api")), "{}", invoked.payload);

    let output = environment.extension.output.clone();
    // On Managed Instances no `/event/next` flushes the log between invocations: a line reaches
    // stdout within the writer's 3 ms linger, and the harness's copy a moment later. Wait
    // (bounded) for the four reads' lines and for each session's end.
    let waiting = std::time::Instant::now();
    let settled = || {
        let asserted = output.events("allow").iter().filter(|l| l["request_id_asserted"] == true).count();
        asserted >= 4 && output.events("session_ended").len() >= stack.proxy.assume_role_calls().len()
    };
    while !settled() && waiting.elapsed() < TIMEOUT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let allows = output.events("allow");
    let mut asserted: Vec<&str> =
        allows.iter().filter(|l| l["request_id_asserted"] == true).filter_map(|l| l["request_id"].as_str()).collect();
    asserted.sort_unstable();
    // The three reads that named an invocation, and the example function's own read: on Managed
    // Instances it names its invocation too; without the Runtime API proxy that is asserted.
    let mut expected = vec!["req-0", "req-1", "req-2", invoked.request_id.as_str()];
    expected.sort_unstable();
    assert_eq!(asserted, expected);
    // Each session served one fetch and ended with it; each is bounded by the credential window.
    let ended = output.events("session_ended");
    assert!(!ended.is_empty() && ended.iter().all(|e| e["reason"] == "fetch_done"), "{ended:?}");
    let calls = stack.proxy.assume_role_calls();
    assert_eq!(calls.len(), ended.len(), "no session outlives its fetch");
    for call in &calls {
        let end = call.policy_json().expect("policy")["Statement"][0]["Condition"]["DateLessThan"]["aws:CurrentTime"]
            .as_str()
            .expect("bound")
            .to_owned();
        let window_end = scoped_secrets::domain::time::iso8601_ceil(call.at + Duration::from_secs(61));
        assert!(end <= window_end, "bounded by the 60 s window: {end}");
    }
    let (status, _) = environment.shut_down().await?;
    assert!(status.success(), "{}", output.text());
    assert_eq!(output.wait_for_event("shutdown", TIMEOUT).await?["reason"], "spindown");
    assert!(environment.reported().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_instances_refuses_invoke_registration_like_lambda() -> anyhow::Result<()> {
    // The extension run as if on-demand against an LMI platform: registration is refused and
    // INIT fails, which is what the extension avoids by registering SHUTDOWN only.
    let stack = Stack::start().await?;
    let port = scoped_secrets_tests::lambda::free_port()?;
    let mut options = Options { env: stack.function_env("app/db", port, &[]), ..Options::default() };
    options.platform.managed_instances = true;
    let Err(failed) = Environment::start(options).await? else {
        anyhow::bail!("an INVOKE registration must fail on LMI")
    };
    assert!(failed.exit_status.is_some_and(|s| !s.success()));
    let failure = failed.output.wait_for_event("register_failed", TIMEOUT).await?;
    assert!(failure["cause"].as_str().unwrap_or_default().contains("400"), "{failure}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_concurrency_leaves_no_credential_in_memory_through_a_long_idle() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let port = scoped_secrets_tests::lambda::free_port()?;
    let extra = [("AWS_LAMBDA_INITIALIZATION_TYPE", "provisioned-concurrency"), ("SCOPED_SECRETS_CACHE_TTL", "4")];
    let options =
        Options { env: stack.function_env("app/db", port, &extra), start_function: false, ..Options::default() };
    let mut environment = start(options).await?;
    let output = environment.extension.output.clone();
    // The function's INIT reads a secret.
    let (status, body) =
        local_get(port, "/secretsmanager/get?secretId=app/db", &[(TOKEN_HEADER, &stack.token())]).await?;
    assert_eq!(status, 200, "{body}");
    let session = stack.proxy.assume_role_calls().pop().and_then(|c| c.credentials).expect("an init session");
    let ended = output.wait_for_event("session_ended", TIMEOUT).await?;
    assert_eq!((ended["request_id"].as_str(), ended["reason"].as_str()), (Some("init"), Some("fetch_done")));
    let pid = environment.extension.pid().expect("running");
    let token = session.session_token.clone().unwrap_or_default();
    let needles: [&[u8]; 3] =
        [session.secret_access_key.as_bytes(), &token.as_bytes()[..64], value_of("app/db").as_bytes()];
    // The init session is gone as soon as its fetch is done; the secret itself is cached within
    // its TTL (the control: the scan does see it).
    let found = scan_memory(pid, &needles)?;
    let mut kinds: Vec<usize> = found.iter().map(|(index, _, _)| *index).collect();
    kinds.dedup();
    assert_eq!(kinds, [2], "only the cached secret (0 key, 1 token, 2 secret): {found:#?}");

    // INIT ends; a long idle follows (no INVOKE). The TTL runs out on its own clock.
    environment.start_function().await?;
    let expired = output.wait_for_event("secrets_expired", Duration::from_secs(10)).await?;
    assert_eq!(expired["secrets_wiped"], 1);
    let found = scan_memory(pid, &needles)?;
    assert!(found.is_empty(), "nothing credential-bearing or secret waits for the first INVOKE: {found:#?}");

    // The first INVOKE starts its own session.
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["sha256"], sha256_hex(value_of("app/db")));
    assert_eq!(stack.proxy.assume_role_calls().len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_initialization_type_is_logged_and_runs_on_demand() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (environment, _port) =
        stack.environment("app/db", &[("AWS_LAMBDA_INITIALIZATION_TYPE", "quantum-start")]).await?;
    let output = &environment.extension.output;
    let warning = output.wait_for_event("unknown_initialization_type", TIMEOUT).await?;
    assert_eq!((warning["value"].as_str(), warning["running_as"].as_str()), (Some("quantum-start"), Some("on-demand")));
    assert_eq!(output.wait_for_event("ready", TIMEOUT).await?["initialization_type"], "on-demand");
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["sha256"], sha256_hex(value_of("app/db")));
    // Waits for the line: the on-demand life ends the session at the runtime's answer.
    output.wait_for_matching("session_ended", TIMEOUT, |e| e["reason"] == "runtime_done").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_invocation_waits_for_its_platform_start_and_no_longer() -> anyhow::Result<()> {
    // The cost of confirming each invocation's tenant: the Telemetry API's buffering of its
    // platform.start (25 ms asked for), not the wait timeout. Both environments cache (TTL
    // 300 s), so after the first invocation no AWS call is in the way.
    let stack = Stack::start_with("tenants/", TENANT_SECRETS).await?;
    let mut medians = Vec::new();
    for (allowlist, tenant) in [("db=tenants/blue/db", None), ("db=tenants/{tenant}/db", Some("blue"))] {
        let port = scoped_secrets_tests::lambda::free_port()?;
        let mut options = Options { env: stack.function_env(allowlist, port, &[]), ..Options::default() };
        options.platform.tenant_id = tenant.map(str::to_owned);
        let environment = start(options).await?;
        let mut durations = Vec::new();
        for _ in 0..11 {
            let invoked = environment.invoke(read("db"), TIMEOUT).await?;
            assert_eq!(invoked.payload["sha256"], sha256_hex(tenant_value("tenants/blue/db")), "{}", invoked.payload);
            durations.push(invoked.duration);
        }
        durations.remove(0);
        durations.sort_unstable();
        medians.push(durations[durations.len() / 2]);
    }
    eprintln!("median invocation (cached read): fixed allowlist {:?}, tenant-scoped {:?}", medians[0], medians[1]);
    assert!(medians[1] < medians[0] + Duration::from_millis(500), "{medians:?}: bounded by telemetry, not the timeout");
    Ok(())
}
