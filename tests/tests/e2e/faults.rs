//! Upstream faults: the proxy between the extension and MiniStack throttles, slows, drops,
//! resets, fails or garbles chosen calls, or the endpoint goes away mid-invocation. In every
//! case the extension stays up, the function gets a clear JSON error code, nothing secret
//! reaches the extension's output (at trace level, the SDK's own logs included), and reads
//! work again once the fault is gone, without restarting the extension.

use std::time::{Duration, Instant};

use scoped_secrets_tests::Stack;
use scoped_secrets_tests::faults::{Fault, Service};
use scoped_secrets_tests::lambda::Environment;
use serde_json::{Value, json};

use super::{TIMEOUT, read, value_of};

/// Every run here: one GET per invocation drives the AWS calls (no prefetch), nothing cached
/// across invocations, every log line the extension and the SDK can write.
const SETTINGS: [(&str, &str); 4] = [
    ("SCOPED_SECRETS_CACHE_TTL", "0"),
    ("SCOPED_SECRETS_PREFETCH", "false"),
    ("SCOPED_SECRETS_LOG_LEVEL", "trace"),
    ("RUST_LOG", "trace"),
];

fn settings<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = SETTINGS.to_vec();
    all.extend_from_slice(extra);
    all
}

/// The function's answer for one read: its status and error code.
fn outcome(payload: &Value) -> (u64, Option<&str>) {
    (payload["status"].as_u64().unwrap_or_default(), payload["error"].as_str())
}

/// What must never be printed: the local token, the execution role's secret key, every secret
/// value, and every secret key and session token STS issued in the run (as the proxy saw them).
fn never_printed(stack: &Stack) -> Vec<String> {
    let mut values = vec![stack.token(), stack.world.exec_credentials.secret_access_key.clone()];
    values.extend(scoped_secrets_tests::SECRETS.iter().map(|(_, value)| (*value).to_owned()));
    for call in stack.proxy.assume_role_calls() {
        if let Some(credentials) = call.credentials {
            values.push(credentials.secret_access_key);
            values.extend(credentials.session_token.map(|token| token.chars().take(40).collect::<String>()));
        }
    }
    values
}

/// The extension is still running, printed none of [`never_printed`], and logged each
/// refusal the function saw with its code (`codes`, in order).
fn assert_alive_and_silent(stack: &Stack, environment: &mut Environment, codes: &[&str]) {
    assert!(
        environment.extension.try_status().is_none(),
        "the extension crashed:\n{}",
        environment.extension.output.text()
    );
    let denies: Vec<Value> = environment.extension.output.events("deny");
    let logged: Vec<&str> = denies.iter().filter_map(|deny| deny["code"].as_str()).collect();
    assert_eq!(logged, codes, "each refusal is logged with its code");
    let output = environment.extension.output.text();
    for value in never_printed(stack) {
        assert!(!output.contains(&value), "a secret or credential reached the output");
    }
    assert_eq!(environment.extension.output.events("ready").len(), 1, "one start, no restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_throttling_is_retried_with_jittered_backoff_then_reported_and_recovered() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let wait = Duration::from_millis(3_000);
    let (mut environment, _port) =
        stack.environment("app/db", &settings(&[("SCOPED_SECRETS_REQUEST_WAIT_TIMEOUT_MS", "3000")])).await?;
    let faults = stack.proxy.faults();

    // Throttled twice, then STS answers: the read succeeds after two backoffs.
    let mut gaps = Vec::new();
    for _ in 0..2 {
        stack.proxy.clear();
        faults.inject(Service::Sts, Some("AssumeRole"), Fault::Throttle, Some(2));
        let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
        assert_eq!(outcome(&invoked.payload), (200, None), "{}", invoked.payload);
        let calls = stack.proxy.assume_role_calls();
        let codes: Vec<_> = calls.iter().map(|c| c.error_code.as_deref()).collect();
        assert_eq!(codes, [Some("Throttling"), Some("Throttling"), None], "two throttles, then a session");
        for (retry, pair) in calls.windows(2).enumerate() {
            let gap = pair[1].at.duration_since(pair[0].at)?;
            // Full jitter: the n-th backoff is uniform in [0, 200 ms × 2^(n-1)], plus the call.
            let ceiling = scoped_secrets::aws::THROTTLING_BACKOFF * 2u32.pow(retry as u32);
            assert!(gap <= ceiling + Duration::from_millis(250), "backoff {gap:?} over {ceiling:?}");
            gaps.push((gap, ceiling));
        }
    }
    // Jitter: not every wait is the deterministic exponential one.
    assert!(
        gaps.iter().any(|(gap, ceiling)| gap.abs_diff(*ceiling) > Duration::from_millis(30)),
        "the backoffs look deterministic: {gaps:?}"
    );

    // Throttled through every retry: a clear 503, after exactly the configured attempts, well
    // inside the request wait timeout.
    stack.proxy.clear();
    faults.inject(Service::Sts, Some("AssumeRole"), Fault::Throttle, None);
    let started = Instant::now();
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(outcome(&invoked.payload), (503, Some("session_throttled")), "{}", invoked.payload);
    assert!(started.elapsed() < wait, "bounded by the wait timeout: {:?}", started.elapsed());
    assert_eq!(stack.proxy.assume_role_calls().len(), scoped_secrets::aws::UPSTREAM_ATTEMPTS as usize);
    assert!(stack.proxy.secrets_manager_calls().is_empty(), "no session, no read");

    // STS recovers: so does the extension.
    faults.clear();
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(outcome(&invoked.payload), (200, None), "{}", invoked.payload);
    assert_eq!(invoked.payload["sha256"], scoped_secrets_tests::sha256_hex(value_of("app/db")));
    assert_alive_and_silent(&stack, &mut environment, &["session_throttled"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_slower_than_the_upstream_timeout_is_a_504_and_the_next_read_succeeds() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (mut environment, _port) =
        stack.environment("app/db", &settings(&[("SCOPED_SECRETS_UPSTREAM_TIMEOUT_MS", "700")])).await?;
    stack.proxy.faults().inject(
        Service::SecretsManager,
        Some("GetSecretValue"),
        Fault::Delay(Duration::from_secs(3)),
        Some(1),
    );
    let started = Instant::now();
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(outcome(&invoked.payload), (504, Some("upstream_timeout")), "{}", invoked.payload);
    assert!(started.elapsed() < Duration::from_millis(2_500), "cut at the upstream timeout: {:?}", started.elapsed());
    let applied = stack.proxy.faults().applied();
    assert_eq!(applied.len(), 1, "the one slow call was the one timed out: {applied:?}");

    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(outcome(&invoked.payload), (200, None), "{}", invoked.payload);
    assert_alive_and_silent(&stack, &mut environment, &["upstream_timeout"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_going_away_mid_invocation_fails_reads_clearly_until_it_returns() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (mut environment, _port) =
        stack.environment("app/db,app/api", &settings(&[("SCOPED_SECRETS_UPSTREAM_TIMEOUT_MS", "1000")])).await?;
    let two_reads = json!({ "secretId": "app/db", "pauseMs": 1_000, "thenSecretId": "app/api" });
    let first_read_done = |proxy: &scoped_secrets_tests::aws_proxy::AwsProxy| {
        proxy.secrets_manager_calls_of("GetSecretValue").iter().any(|c| c.status == 200)
    };

    // Stopped: the endpoint refuses connections after the invocation's session and first read.
    let (request_id, enqueued_at) = environment.enqueue(two_reads.clone(), TIMEOUT).await?;
    stack.wait_until("the first read", first_read_done).await?;
    stack.proxy.stop();
    let invoked = environment.complete(&request_id, enqueued_at, TIMEOUT).await?;
    assert_eq!(outcome(&invoked.payload), (200, None), "{}", invoked.payload);
    assert_eq!(outcome(&invoked.payload["then"]), (502, Some("upstream_error")), "{}", invoked.payload);
    // Still stopped at the next INVOKE: no session can be had.
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(outcome(&invoked.payload), (502, Some("session_failed")), "{}", invoked.payload);
    // Back on the same port: the next invocation reads again.
    stack.proxy.restart().await?;
    let invoked = environment.invoke(read("app/api"), TIMEOUT).await?;
    assert_eq!(outcome(&invoked.payload), (200, None), "{}", invoked.payload);

    // Frozen (SIGSTOP): connections hang, the read is cut at the upstream timeout.
    stack.proxy.clear();
    let (request_id, enqueued_at) = environment.enqueue(two_reads, TIMEOUT).await?;
    stack.wait_until("the first read", first_read_done).await?;
    stack.ministack.pause();
    let invoked = environment.complete(&request_id, enqueued_at, TIMEOUT).await;
    stack.ministack.resume();
    let invoked = invoked?;
    assert_eq!(outcome(&invoked.payload), (200, None), "{}", invoked.payload);
    assert_eq!(outcome(&invoked.payload["then"]), (504, Some("upstream_timeout")), "{}", invoked.payload);
    let invoked = environment.invoke(read("app/api"), TIMEOUT).await?;
    assert_eq!(outcome(&invoked.payload), (200, None), "{}", invoked.payload);
    assert_alive_and_silent(&stack, &mut environment, &["upstream_error", "session_failed", "upstream_timeout"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_failing_and_cut_answers_are_502s_or_are_retried_away() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (mut environment, _port) = stack.environment("app/db", &settings(&[])).await?;
    let attempts = scoped_secrets::aws::UPSTREAM_ATTEMPTS as usize;
    // (service, operation, fault, times, expected status and code, calls of that operation)
    let cases: Vec<(Service, &str, Fault, Option<usize>, (u64, Option<&str>), usize)> = vec![
        (Service::SecretsManager, "GetSecretValue", Fault::Malformed, Some(1), (502, Some("upstream_error")), 1),
        (Service::Sts, "AssumeRole", Fault::Malformed, Some(1), (502, Some("session_failed")), 1),
        (Service::SecretsManager, "GetSecretValue", Fault::ServerError, None, (502, Some("upstream_error")), attempts),
        (Service::Sts, "AssumeRole", Fault::ServerError, None, (502, Some("session_failed")), attempts),
        (Service::Sts, "AssumeRole", Fault::Reset, None, (502, Some("session_failed")), attempts),
        (Service::SecretsManager, "GetSecretValue", Fault::Drop, None, (502, Some("upstream_error")), attempts),
        // Transient once: the SDK's retry hides it.
        (Service::SecretsManager, "GetSecretValue", Fault::ServerError, Some(1), (200, None), 2),
        (Service::SecretsManager, "GetSecretValue", Fault::Reset, Some(1), (200, None), 2),
        (Service::SecretsManager, "GetSecretValue", Fault::Drop, Some(1), (200, None), 2),
        (Service::Sts, "AssumeRole", Fault::Reset, Some(1), (200, None), 2),
    ];
    let refusals: Vec<&str> = cases.iter().filter_map(|case| case.4.1).collect();
    for (service, operation, fault, times, expected, calls) in cases {
        stack.proxy.clear();
        stack.proxy.faults().clear();
        stack.proxy.faults().inject(service, Some(operation), fault, times);
        let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
        let case = format!("{operation} {} {times:?}", fault.name());
        assert_eq!(outcome(&invoked.payload), expected, "{case}: {}", invoked.payload);
        let seen = stack
            .proxy
            .exchanges()
            .iter()
            .filter(|e| {
                e.target.as_deref().is_some_and(|t| t.ends_with(operation))
                    || e.form_params().get("Action").map(String::as_str) == Some(operation)
            })
            .count();
        assert_eq!(seen, calls, "{case}: calls of {operation}");
        if expected.0 == 200 {
            assert_eq!(invoked.payload["sha256"], scoped_secrets_tests::sha256_hex(value_of("app/db")), "{case}");
        }
    }
    stack.proxy.faults().clear();
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(outcome(&invoked.payload), (200, None));
    assert_alive_and_silent(&stack, &mut environment, &refusals);
    Ok(())
}
