//! How credentials end: the credential window, revocation at SHUTDOWN (wipe and deny), and the
//! evidence the extension leaves (revocation report, least-privilege report, EMF metrics).

use std::time::{Duration, SystemTime};

use lambda_simulator::ShutdownReason;
use scoped_secrets_tests::aws_proxy::AssumeRoleCall;
use scoped_secrets_tests::lambda::Environment;
use scoped_secrets_tests::ministack::{StaticCredentials, read_secret_as};
use scoped_secrets_tests::{SECRETS, Stack, sha256_hex};
use serde_json::{Value, json};

use super::{TIMEOUT, read, value_of};

async fn environment_id(environment: &Environment) -> anyhow::Result<String> {
    let ready = environment.extension.output.wait_for_event("ready", TIMEOUT).await?;
    Ok(ready["environment_id"].as_str().unwrap_or_default().to_owned())
}

fn sessions_of(stack: &Stack, environment_id: &str) -> Vec<AssumeRoleCall> {
    let prefix = format!("ss-{environment_id}-");
    stack
        .proxy
        .assume_role_calls()
        .into_iter()
        .filter(|c| c.role_session_name.as_deref().is_some_and(|n| n.starts_with(&prefix)))
        .collect()
}

fn credentials(call: &AssumeRoleCall) -> StaticCredentials {
    call.credentials.clone().expect("AssumeRole issued credentials")
}

fn policy_end(call: &AssumeRoleCall) -> String {
    call.policy_json().expect("policy")["Statement"][0]["Condition"]["DateLessThan"]["aws:CurrentTime"]
        .as_str()
        .expect("bound")
        .to_owned()
}

async fn sleep_until(at: SystemTime) {
    tokio::time::sleep(at.duration_since(SystemTime::now()).unwrap_or_default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_window_ends_access_mid_invocation_and_a_later_read_renews() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let extra = [
        ("SCOPED_SECRETS_CREDENTIAL_WINDOW", "2"),
        ("SCOPED_SECRETS_PREFETCH", "false"),
        ("SCOPED_SECRETS_CACHE_TTL", "0"),
    ];
    let (environment, _port) = stack.environment("app/db,app/api", &extra).await?;
    let timeout = Duration::from_secs(10);
    let payload = json!({ "secretId": "app/db", "pauseMs": 4_000, "thenSecretId": "app/api" });
    let (request_id, enqueued_at) = environment.enqueue(payload, timeout).await?;
    stack.wait_until("the first session", |proxy| !proxy.assume_role_calls().is_empty()).await?;
    let first = stack.proxy.assume_role_calls().remove(0);
    let in_three_seconds = scoped_secrets::domain::time::iso8601_ceil(first.at + Duration::from_secs(3));
    assert!(policy_end(&first) <= in_three_seconds, "bounded by the 2 s window, not the 10 s deadline");

    // After the window, while the invocation still runs, AWS refuses the captured credentials.
    sleep_until(first.at + Duration::from_millis(3_300)).await;
    let refused = read_secret_as(&stack.ministack.endpoint(), &credentials(&first), "app/db").await;
    assert_eq!(refused, Err("AccessDeniedException".into()));
    assert_eq!(stack.proxy.assume_role_calls().len(), 1, "the function is still pausing");

    // The read after the pause gets a fresh session, transparently.
    let invoked = environment.complete(&request_id, enqueued_at, timeout).await?;
    assert_eq!(invoked.payload["sha256"], sha256_hex(value_of("app/db")));
    assert_eq!(invoked.payload["then"]["sha256"], sha256_hex(value_of("app/api")), "{}", invoked.payload);
    let calls = stack.proxy.assume_role_calls();
    assert_eq!(calls.len(), 2, "one more AssumeRole");
    let first_name = calls[0].role_session_name.clone().unwrap_or_default();
    assert_eq!(calls[1].role_session_name, Some(format!("{first_name}-1")), "a distinct, numbered session name");
    let ended = environment.extension.output.wait_for_count("session_ended", 2, TIMEOUT).await?;
    let reasons: Vec<Value> = ended.iter().map(|e| e["reason"].clone()).collect();
    assert_eq!(reasons, [json!("window"), json!("runtime_done")]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_sessions_by_fate_secrets_never_read_and_metrics_without_values() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let extra = [
        ("SCOPED_SECRETS_CACHE_TTL", "0"),
        ("SCOPED_SECRETS_CREDENTIAL_WINDOW", "0"),
        ("SCOPED_SECRETS_DEADLINE_MARGIN_MS", "0"),
        ("SCOPED_SECRETS_METRICS_NAMESPACE", "ScopedSecretsTest"),
    ];
    let (mut environment, _port) = stack.environment("db=app/db,app/api,app/other", &extra).await?;
    let short = Duration::from_millis(1_000);
    environment.invoke(read("db"), short).await?;
    environment.invoke(read("db"), short).await?;
    environment.invoke(read("other/x"), short).await?;
    // Those three sessions end by policy at their deadlines; the fourth is live at SHUTDOWN.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    environment.invoke(read("app/db"), Duration::from_secs(30)).await?;
    let (status, _) = environment.shut_down().await?;
    assert!(status.success());

    let output = &environment.extension.output;
    let report = output.wait_for_event("revocation_report", TIMEOUT).await?;
    assert_eq!(report["mode"], "wipe");
    assert_eq!(report["sessions_issued"], 4);
    assert_eq!(report["sessions_ended_by_policy"], 3);
    assert_eq!(report["sessions_live_at_shutdown"], 1);
    assert_eq!(report["live"][0]["action"], "wiped");
    assert_eq!(report["deny"], Value::Null, "wipe mode writes nothing to IAM");

    let least = output.wait_for_event("least_privilege_report", TIMEOUT).await?;
    assert_eq!(least["never_read"], json!(["app/api", "app/other"]));
    assert_eq!(
        least["secrets"][0],
        json!({ "secret_id": "app/db", "alias": "db", "reads": { "get": 3, "v1": 0, "sdk": 0 } })
    );
    assert_eq!(least["denies"], json!({ "secret_not_allowed": 1 }));

    let documents: Vec<Value> = output.json_lines().into_iter().filter(|l| l.get("_aws").is_some()).collect();
    assert!(documents.len() >= 4, "one document per invocation, and one at SHUTDOWN");
    for document in &documents {
        let metrics = &document["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(metrics["Namespace"], "ScopedSecretsTest");
        assert_eq!(metrics["Dimensions"], json!([["FunctionName"]]));
        assert!(document["FunctionName"].is_string() && document["_aws"]["Timestamp"].is_u64());
        for metric in metrics["Metrics"].as_array().expect("metrics") {
            let name = metric["Name"].as_str().expect("name");
            assert!(document.get(name).is_some(), "{name} declared but missing in {document}");
        }
        let text = document.to_string();
        for (_, value) in SECRETS {
            assert!(!text.contains(value), "a metric document holds a secret");
        }
    }
    let started: u64 = documents.iter().filter_map(|d| d["SessionsStarted"].as_u64()).sum();
    assert_eq!(started, 4);
    assert_eq!(documents.last().map(|d| d["SessionsLiveAtShutdown"].clone()), Some(json!(1)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_revocation_refuses_live_sessions_at_shutdown_and_collapses_when_the_budget_is_full() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    stack.grant_revocation().await?;
    // A moot statement left by an environment long gone: the next write must drop it.
    let moot = scoped_secrets::revocation::environment_statement(
        &stack.world.scoped_role_id,
        "gonegone",
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_060),
    );
    let seeded = json!({ "Version": "2012-10-17", "Statement": [moot] });
    stack.ministack.put_role_policy(&stack.world.scoped_role_name, "scoped-secrets-revocations", &seeded).await?;

    // B: another environment of the same function, in wipe mode, reading throughout.
    let b_extra = [
        ("SCOPED_SECRETS_CACHE_TTL", "0"),
        ("SCOPED_SECRETS_PREFETCH", "false"),
        ("SCOPED_SECRETS_CREDENTIAL_WINDOW", "0"),
    ];
    let (b, _) = stack.environment("app/db,app/api", &b_extra).await?;
    b.invoke(read("app/db"), TIMEOUT).await?;
    let b_env = environment_id(&b).await?;

    // A: deny mode; SHUTDOWN (timeout) comes after its invocation ran past the deadline, so its
    // session is still valid at AWS (deadline + 30 s margin) when SHUTDOWN arrives.
    let deny = [
        ("SCOPED_SECRETS_REVOCATION", "deny"),
        ("SCOPED_SECRETS_DEADLINE_MARGIN_MS", "30000"),
        ("SCOPED_SECRETS_CREDENTIAL_WINDOW", "0"),
    ];
    let (mut a, _) = stack.environment("app/db", &deny).await?;
    let a_env = environment_id(&a).await?;
    a.enqueue(json!({ "secretId": "app/db", "pauseMs": 3_000 }), Duration::from_millis(1_000)).await?;
    a.extension.output.wait_for_event("session_ended", TIMEOUT).await?;
    let a_session = sessions_of(&stack, &a_env).pop().expect("A's session");
    let endpoint = stack.ministack.endpoint();
    assert_eq!(read_secret_as(&endpoint, &credentials(&a_session), "app/db").await.as_deref(), Ok(value_of("app/db")));
    let (status, elapsed) = a.shut_down_for(ShutdownReason::Timeout).await?;
    assert!(status.success() && elapsed < Duration::from_millis(2_000), "{status:?} after {elapsed:?}");
    let report = a.extension.output.wait_for_event("revocation_report", TIMEOUT).await?;
    assert_eq!((report["mode"].as_str(), report["sessions_live_at_shutdown"].as_u64()), (Some("deny"), Some(1)));
    assert_eq!(report["live"][0]["action"], "wiped_and_denied", "{report}");
    assert_eq!(report["deny"]["collapsed"], false);
    assert_eq!(report["deny"]["dropped_moot"], 1);

    // A's credentials are refused right away, long before their policy bound ...
    assert_eq!(
        read_secret_as(&endpoint, &credentials(&a_session), "app/db").await,
        Err("AccessDeniedException".into())
    );
    // ... B's are not, and B keeps working.
    let b_session = sessions_of(&stack, &b_env).pop().expect("B's session");
    assert_eq!(read_secret_as(&endpoint, &credentials(&b_session), "app/db").await.as_deref(), Ok(value_of("app/db")));
    assert_eq!(b.invoke(read("app/db"), TIMEOUT).await?.payload["status"], 200);
    let statements = stack.revocation_statements().await?;
    assert_eq!(statements.len(), 1, "the moot statement was dropped: {statements:?}");
    assert_eq!(statements[0]["Sid"], format!("ScopedSecretsEnv{a_env}"));

    // C: deny mode with a budget too small for two statements: its write collapses into the
    // role-wide deny. B, mid-invocation, is refused, re-assumes once and still reads.
    let small = [
        ("SCOPED_SECRETS_REVOCATION", "deny"),
        ("SCOPED_SECRETS_REVOCATION_POLICY_BUDGET", "512"),
        ("SCOPED_SECRETS_DEADLINE_MARGIN_MS", "30000"),
    ];
    let (mut c, _) = stack.environment("app/db", &small).await?;
    c.invoke(read("app/db"), TIMEOUT).await?;
    let payload = json!({ "secretId": "app/db", "pauseMs": 2_500, "thenSecretId": "app/api" });
    let (b_request, b_enqueued) = b.enqueue(payload, Duration::from_secs(10)).await?;
    stack.wait_until("B's first read", |_| b.extension.output.events("allow").len() == 3).await?;
    c.shut_down().await?;
    let report = c.extension.output.wait_for_event("revocation_report", TIMEOUT).await?;
    assert_eq!(report["deny"]["collapsed"], true, "{report}");
    let statements = stack.revocation_statements().await?;
    assert_eq!(statements.len(), 1);
    assert!(statements[0]["Condition"].get("StringLike").is_none(), "role-wide: {statements:?}");

    let invoked = b.complete(&b_request, b_enqueued, Duration::from_secs(10)).await?;
    assert_eq!(invoked.payload["then"]["status"], 200, "B re-assumed and read: {}", invoked.payload);
    let b_names: Vec<String> = sessions_of(&stack, &b_env).iter().filter_map(|c| c.role_session_name.clone()).collect();
    assert!(b_names.last().is_some_and(|n| n.ends_with("-1")), "B re-assumed once: {b_names:?}");
    let refused = b.extension.output.wait_for_matching("session_ended", TIMEOUT, |e| e["reason"] == "refused").await?;
    assert_eq!(refused.len(), 1, "{refused:?}");
    Ok(())
}
