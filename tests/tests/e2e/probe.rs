//! What an outside adversarial probe of the release binary found (issue 15), each closed and
//! proved here on the real binary: forged platform events, clients that never read, readers
//! waiting in turn, the token reaching an audit line through a decoding, the first read racing
//! the init session, a complete ARN with another suffix, and the small mismatches.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use scoped_secrets_tests::container::ContainerCredentials;
use scoped_secrets_tests::faults::{Fault, Service};
use scoped_secrets_tests::lambda::{Environment, Options, local_get};
use scoped_secrets_tests::{Stack, sha256_hex};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::sdk_protocol::{send, signed_request};
use super::{TIMEOUT, read, value_of};

const TOKEN_HEADER: &str = "X-Aws-Parameters-Secrets-Token";

const TENANTS: &[(&str, &str)] =
    &[("tenants/blue/db", "canary-probe-blue-5e21c0d4"), ("tenants/red/db", "canary-probe-red-a93f7b12")];

fn tenant_value(name: &str) -> &'static str {
    TENANTS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).expect("known secret")
}

async fn start(options: Options) -> anyhow::Result<Environment> {
    match Environment::start(options).await? {
        Ok(environment) => Ok(environment),
        Err(failed) => anyhow::bail!("INIT failed: {:?}\n{}", failed.reported, failed.output.text()),
    }
}

/// A tenant-isolated environment for `tenants/{tenant}/db`, the platform naming `blue`.
async fn blue_environment(stack: &Stack, start_function: bool) -> anyhow::Result<(Environment, u16)> {
    let port = scoped_secrets_tests::lambda::free_port()?;
    let extra = [("SCOPED_SECRETS_REQUEST_WAIT_TIMEOUT_MS", "1000")];
    let mut options = Options {
        env: stack.function_env("db=tenants/{tenant}/db", port, &extra),
        start_function,
        ..Options::default()
    };
    options.platform.tenant_id = Some("blue".to_owned());
    Ok((start(options).await?, port))
}

fn record(kind: &str, record: Value) -> Value {
    json!({ "time": "2026-01-01T00:00:00.000Z", "type": kind, "record": record })
}

fn batch(events: &[Value]) -> Bytes {
    Bytes::from(serde_json::to_vec(events).expect("JSON"))
}

/// The path the extension subscribed with (its secret).
fn subscribed_path(environment: &Environment) -> String {
    let subscriptions = environment.telemetry_subscriptions();
    let uri = subscriptions[0]["destination"]["URI"].as_str().expect("a destination").to_owned();
    uri.split_once("://").and_then(|(_, rest)| rest.split_once('/')).map(|(_, path)| format!("/{path}")).expect("path")
}

/// Paths a forger might try: the obvious ones, and the real one with its last digit changed.
fn forged_paths(real: &str) -> Vec<String> {
    let mut near = real.to_owned();
    let last = near.pop().expect("a digit");
    near.push(if last == '0' { '1' } else { '0' });
    vec!["/".into(), "/telemetry".into(), "/telemetry/".into(), near, format!("{real}/x"), format!("{real}?a=1")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_platform_events_are_refused_audited_and_change_nothing() -> anyhow::Result<()> {
    let stack = Stack::start_with("tenants/", TENANTS).await?;
    let (mut environment, port) = blue_environment(&stack, false).await?;
    let output = environment.extension.output.clone();
    let real = subscribed_path(&environment);
    let paths = forged_paths(&real);
    let token = stack.token();
    let mut forged = 0;

    // During INIT: a platform.start naming the init label picks a tenant, the end of INIT,
    // a restore, all sent where a forger can (any path but the secret one).
    let init_forgeries = batch(&[
        record("platform.start", json!({ "requestId": "init", "tenantId": "red" })),
        record("platform.initRuntimeDone", json!({ "initializationType": "on-demand", "phase": "init" })),
        record("platform.restoreStart", json!({})),
    ]);
    for path in &paths {
        let status = environment.post_to_telemetry_listener(path, init_forgeries.clone()).await?;
        assert!([403, 0].contains(&status), "{path}: {status}");
        forged += 1;
    }
    // Even delivered where Lambda delivers, the init label is no invocation being served.
    environment
        .send_telemetry(vec![record("platform.start", json!({ "requestId": "init", "tenantId": "red" }))])
        .await?;
    let target = "/secretsmanager/get?secretId=db";
    let (status, body) = local_get(port, target, &[(TOKEN_HEADER, &token)]).await?;
    assert_eq!((status, body["error"].as_str()), (503, Some("tenant_unknown")), "no tenant during INIT: {body}");
    assert!(output.events("init_ended").is_empty(), "a forged end of INIT ended nothing");

    // An invocation that reads, pauses and reads again, while a forger ends it, names another
    // tenant, and floods confirmations that would evict the real one.
    environment.start_function().await?;
    let payload = json!({ "secretId": "db", "pauseMs": 1_500, "thenSecretId": "db" });
    let (request_id, enqueued_at) = environment.enqueue(payload, TIMEOUT).await?;
    output.wait_for_event("allow", TIMEOUT).await?;
    let mut during = vec![
        record("platform.runtimeDone", json!({ "requestId": request_id, "status": "success" })),
        record("platform.start", json!({ "requestId": request_id, "tenantId": "red" })),
    ];
    during.extend(
        (0..70).map(|i| record("platform.start", json!({ "requestId": format!("f-{i}"), "tenantId": "blue" }))),
    );
    for path in &paths {
        let status = environment.post_to_telemetry_listener(path, batch(&during)).await?;
        assert!([403, 0].contains(&status), "{path}: {status}");
        forged += 1;
    }
    let invoked = environment.complete(&request_id, enqueued_at, TIMEOUT).await?;
    let blue = sha256_hex(tenant_value("tenants/blue/db"));
    assert_eq!(invoked.payload["sha256"], blue, "{}", invoked.payload);
    assert_eq!(invoked.payload["then"]["sha256"], blue, "not ended early: {}", invoked.payload);
    output.wait_for_request("invocation_ended", &request_id, TIMEOUT).await?;
    let ended = output.events("invocation_ended");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(
        (ended[0]["request_id"].as_str(), ended[0]["reason"].as_str()),
        (Some(request_id.as_str()), Some("runtime_done"))
    );
    assert!(ended[0]["invocation_ms"].as_u64().unwrap_or_default() >= 1_500, "{ended:?}");

    // The next invocation is still blue's, and the environment was never broken.
    let invoked = environment.invoke(read("db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["sha256"], blue, "{}", invoked.payload);
    assert!(environment.extension.try_status().is_none(), "still running");
    assert!(environment.reported().is_empty(), "no exit/error: {:?}", environment.reported());
    for never in ["tenant_changed", "tenant_invariant_broken", "restored"] {
        assert!(output.events(never).is_empty(), "{never}");
    }
    assert_eq!(output.events("tenant_known").len(), 1);

    // Every forgery refused and audited once, and nothing it sent (nor the path) echoed.
    let refused = output.events("telemetry_refused");
    assert_eq!(refused.len(), forged, "{refused:?}");
    assert!(refused.iter().all(|line| line["status"] == 403 && line["reason"] == "unknown_path"), "{refused:?}");
    let text = output.text();
    assert!(!text.contains(&real[11..]), "the secret path reached the output");
    assert!(!text.contains(tenant_value("tenants/red/db")) && !text.contains("f-69"));
    assert!(
        stack.proxy.secrets_manager_calls().iter().all(|c| c.secret_ids().iter().all(|id| !id.contains("red"))),
        "red's secret was never asked for"
    );
    environment.shut_down().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_before_init_is_over_draws_and_loads_nothing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let token = format!("container-token-probe-{}", std::process::id());
    let container = ContainerCredentials::start(stack.world.exec_credentials.clone(), &token).await?;
    let port = scoped_secrets_tests::lambda::free_port()?;
    let options = Options {
        env: stack.snap_start_env("app/db", port, &container, &[]),
        start_function: false,
        ..Options::default()
    };
    let mut environment = start(options).await?;
    let output = environment.extension.output.clone();
    let restore = batch(&[record("platform.restoreStart", json!({ "runtimeVersion": "x" }))]);
    for path in forged_paths(&subscribed_path(&environment)) {
        let status = environment.post_to_telemetry_listener(&path, restore.clone()).await?;
        assert!([403, 0].contains(&status), "{path}: {status}");
    }
    // And on the secret path too, while INIT runs: no restore can come before the snapshot.
    assert_eq!(environment.send_telemetry(vec![record("platform.restoreStart", json!({}))]).await?, 200);
    let (status, body) = local_get(port, "/secretsmanager/get?secretId=app/db", &[(TOKEN_HEADER, &token)]).await?;
    assert_eq!((status, body["error"].as_str()), (503, Some("snapstart_init")), "{body}");
    environment.start_function().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(output.events("restored").is_empty(), "no environment id drawn before the snapshot");
    assert_eq!(container.served(), 0, "no credentials loaded");
    assert!(stack.proxy.exchanges().is_empty(), "nothing asked of AWS");
    // The platform's own restore, after INIT, is believed.
    assert_eq!(environment.send_telemetry(vec![record("platform.restoreStart", json!({}))]).await?, 200);
    assert_eq!(output.wait_for_event("restored", TIMEOUT).await?["trigger"], "restore_start");
    environment.shut_down().await?;
    Ok(())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_records_with_huge_ids_leaves_memory_flat() -> anyhow::Result<()> {
    const FLOOD: usize = 120;
    let stack = Stack::start_with("tenants/", TENANTS).await?;
    let (environment, _port) = blue_environment(&stack, true).await?;
    let blue = sha256_hex(tenant_value("tenants/blue/db"));
    assert_eq!(environment.invoke(read("db"), TIMEOUT).await?.payload["sha256"], blue);
    let pid = environment.extension.pid().expect("running");
    let before = rss_kib(pid)?;

    // ~1 MiB ids, where a forger can send them and (as if the path had leaked) where Lambda
    // delivers: refused before anything is kept, either way.
    let huge = "x".repeat(1_000_000);
    let real = subscribed_path(&environment);
    let environment = std::sync::Arc::new(environment);
    let mut statuses = Vec::new();
    for wave in 0..FLOOD / 8 {
        let mut sent = tokio::task::JoinSet::new();
        for i in 0..8 {
            let (environment, huge, real) = (std::sync::Arc::clone(&environment), huge.clone(), real.clone());
            sent.spawn(async move {
                let kind = if (wave + i) % 2 == 0 { "platform.runtimeDone" } else { "platform.start" };
                let body = batch(&[record(kind, json!({ "requestId": huge, "tenantId": "blue" }))]);
                if i % 2 == 0 {
                    environment.post_to_telemetry_listener("/telemetry", body).await
                } else {
                    let events: Vec<Value> = serde_json::from_slice(&body)?;
                    let _ = real;
                    // A pooled connection the listener closed meanwhile (its idle timeout, or
                    // its slot given to a new connection) fails the send: nothing delivered.
                    Ok(environment.send_telemetry(events).await.unwrap_or(0))
                }
            });
        }
        while let Some(status) = sent.join_next().await {
            statuses.push(status??);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid)?;
    eprintln!("huge ids: {FLOOD} batches of 1 MB; RSS {before} KiB before, {after} KiB after");
    assert!(statuses.iter().all(|s| [200, 403, 0].contains(s)), "{statuses:?}");
    assert!(after.saturating_sub(before) < 8 * 1024, "RSS grew from {before} KiB to {after} KiB");
    let refused = environment.extension.output.events("telemetry_record_refused");
    assert_eq!(refused.len(), statuses.iter().filter(|s| **s == 200).count(), "each accepted record's id refused");
    assert!(refused.iter().all(|line| line["field"] == "request_id" && line["chars"] == 1_000_000));
    let invoked = environment.invoke(read("db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["sha256"], blue, "still serving: {}", invoked.payload);
    Ok(())
}

/// Connects with a small receive buffer and writes `request` again and again (every `every`,
/// or as fast as the server takes it), never reading. Returns when the server cut the
/// connection off (a write failed), or `None` if it was still open after `bound`.
async fn never_reading(
    address: SocketAddr,
    request: Vec<u8>,
    every: Option<Duration>,
    bound: Duration,
) -> Option<Duration> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.set_recv_buffer_size(4_096).ok()?;
    let mut stream = socket.connect(address).await.ok()?;
    let started = Instant::now();
    while started.elapsed() < bound {
        match tokio::time::timeout(Duration::from_millis(500), stream.write_all(&request)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Some(started.elapsed()),
            // Blocked: the server stopped reading; keep pushing.
            Err(_) => {}
        }
        if let Some(every) = every {
            tokio::time::sleep(every).await;
        }
    }
    None
}

/// [`never_reading`] again each time the server cuts it off, until `bound`: how long each
/// connection lasted, and how long the last one had been open when the bound came.
async fn never_reading_again(
    address: SocketAddr,
    request: Vec<u8>,
    every: Duration,
    bound: Duration,
) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut cuts = Vec::new();
    loop {
        let opened = Instant::now();
        let left = bound.saturating_sub(started.elapsed());
        match never_reading(address, request.clone(), Some(every), left).await {
            Some(lasted) if started.elapsed() < bound => cuts.push(lasted),
            _ => return (cuts, opened.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_cut_off_and_cannot_delay_runtime_done() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (environment, port) = stack.environment("app/db", &[]).await?;
    let telemetry: SocketAddr = environment.telemetry_address().expect("subscribed").parse()?;
    let local: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    // More than the telemetry listener's slots, each pipelining a batch every 100 ms and never
    // reading, connecting again whenever it is cut off, for 8 s.
    let batch_request =
        b"POST /telemetry HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"
            .to_vec();
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let request = batch_request.clone();
        attackers.spawn(never_reading_again(telemetry, request, Duration::from_millis(100), Duration::from_secs(8)));
    }
    // On the local API, pipelined pings as fast as it takes them: its answers fill the buffers.
    let bound = Duration::from_secs(14);
    let pings = b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(2_000);
    let mut flooders = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let request = pings.clone();
        flooders.spawn(async move { never_reading(local, request, None, bound).await });
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // Meanwhile an invocation ends at its runtimeDone, and others are answered at once.
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["sha256"], sha256_hex(value_of("app/db")), "{}", invoked.payload);
    let ended = environment.extension.output.wait_for_event("invocation_ended", TIMEOUT).await?;
    assert_eq!(ended["reason"], "runtime_done", "telemetry was delivered: {ended}");
    let asked = Instant::now();
    let (status, _) = local_get(port, "/ping", &[]).await?;
    assert_eq!(status, 200);
    assert!(asked.elapsed() < Duration::from_secs(1), "ping took {:?}", asked.elapsed());

    let mut longest = Duration::ZERO;
    let mut connections = 0;
    while let Some(joined) = attackers.join_next().await {
        let (cuts, open_at_end) = joined?;
        connections += cuts.len();
        longest = cuts.iter().copied().chain([open_at_end]).max().unwrap_or_default().max(longest);
    }
    eprintln!("telemetry: {connections} never-reading connections cut off, the longest lasted {longest:?}");
    assert!(longest < Duration::from_secs(2), "a never-reading client held a telemetry slot for {longest:?}");
    let mut cut = Vec::new();
    while let Some(joined) = flooders.join_next().await {
        let closed =
            joined?.unwrap_or_else(|| panic!("a local client that never reads was still connected after {bound:?}"));
        assert!(closed < Duration::from_secs(12), "local client cut off after {closed:?}");
        cut.push(closed);
    }
    eprintln!("local API: never-reading clients cut off after {cut:?}");
    assert!(!environment.extension.output.events("telemetry_refused").is_empty(), "refusals are audited");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_each_wait_one_timeout_not_one_after_another() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let token = stack.token();
    let five = |port: u16| {
        let token = token.clone();
        async move {
            let reads = (0..5).map(|_| {
                let token = token.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let (status, body) =
                        local_get(port, "/secretsmanager/get?secretId=app%2Fdb", &[(TOKEN_HEADER, &token)]).await?;
                    anyhow::Ok((status, body["error"].as_str().map(str::to_owned), started.elapsed()))
                })
            });
            let mut answers = Vec::new();
            for read in reads.collect::<Vec<_>>() {
                answers.push(read.await??);
            }
            anyhow::Ok(answers)
        }
    };

    // Between invocations, with a 1 s wait timeout: each waits its own second.
    let extra = [("SCOPED_SECRETS_REQUEST_WAIT_TIMEOUT_MS", "1000")];
    let (environment, port) = stack.environment("app/db", &extra).await?;
    let answers = five(port).await?;
    eprintln!("five readers between invocations: {answers:?}");
    for (status, code, elapsed) in &answers {
        assert_eq!((*status, code.as_deref()), (503, Some("no_active_invocation")));
        assert!(*elapsed < Duration::from_millis(1_800), "answered after {elapsed:?}");
    }
    drop(environment);

    // During INIT with STS not answering and a 1 s upstream timeout: one AssumeRole for all.
    stack.proxy.faults().inject(Service::Sts, Some("AssumeRole"), Fault::Hold, None);
    let extra = [("SCOPED_SECRETS_UPSTREAM_TIMEOUT_MS", "1000")];
    let options = Options { start_function: false, ..Options::default() };
    let (environment, port) = stack.environment_with("app/db", &extra, options).await?;
    let answers = five(port).await?;
    stack.proxy.faults().clear();
    eprintln!("five readers, STS not answering: {answers:?}");
    for (status, code, elapsed) in &answers {
        assert_eq!((*status, code.as_deref()), (504, Some("session_timeout")));
        assert!(*elapsed < Duration::from_millis(2_500), "answered after {elapsed:?}");
    }
    drop(environment);
    Ok(())
}

/// A session token of AWS's shape: `IQoJb3JpZ2luX2Vj` and ~900 base64 characters with `+`,
/// `/` and `=` padding.
fn aws_shaped_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let seed = std::collections::hash_map::RandomState::new();
    let mut token = "IQoJb3JpZ2luX2Vj".to_owned();
    for i in 0..898u64 {
        let mut hasher = seed.build_hasher();
        hasher.write_u64(i);
        token.push(char::from(ALPHABET[(hasher.finish() % 64) as usize]));
    }
    // Make sure every awkward character is there, then the padding.
    token.replace_range(40..43, "+/+");
    token.push_str("==");
    token
}

/// The letters and digits of `text`, lower-cased.
fn skeleton(text: &str) -> String {
    text.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_decoding_of_a_requested_id_gets_the_token_into_a_log_line() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let token = aws_shaped_token();
    let extra = [
        ("AWS_SESSION_TOKEN", token.as_str()),
        ("SCOPED_SECRETS_LOG_LEVEL", "trace"),
        ("RUST_LOG", "trace"),
        ("SCOPED_SECRETS_REQUEST_WAIT_TIMEOUT_MS", "500"),
    ];
    let (environment, port) = stack.environment("app/db", &extra).await?;
    let encoded: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
    let ids = [
        format!("secretId={token}"),
        format!("secretId={encoded}"),
        format!("secretId={}", encoded.replace('%', "%25")),
        format!("secretId={}", token.replace('+', "%20")),
        format!("secretId={}", &token[..300]),
        format!("secretId={}", &token[token.len() - 300..]),
        format!("secretId={}", token.to_lowercase()),
        format!("secretId={}", token.to_uppercase()),
        format!("secretId=app/{}", &token[100..400]),
        format!("secretId={}", token.replace('+', "-").replace('/', "_").replace('=', "")),
    ];
    let mut refusals = 0;
    for query in &ids {
        let (status, body) =
            local_get(port, &format!("/secretsmanager/get?{query}"), &[(TOKEN_HEADER, &token)]).await?;
        assert!(status >= 400, "{status} {body}");
        refusals += 1;
    }
    let (status, _) =
        local_get(port, &format!("/v1/{}", encoded.replace("%2F", "/")), &[(TOKEN_HEADER, &token)]).await?;
    assert!(status >= 400);
    refusals += 1;
    // The SDK protocol: a signed request (the token as the session token it is) naming the
    // token as its SecretId, with JSON escapes.
    let mut credentials = stack.world.exec_credentials.clone();
    credentials.session_token = Some(token.clone());
    let escaped = token.replace('+', "\\u002b").replace('/', "\\/");
    let body = format!(r#"{{"SecretId":"{escaped}"}}"#);
    let secret = credentials.secret_access_key.clone();
    let (status, answer) = send(signed_request(port, &credentials, &secret, &body, SystemTime::now())).await?;
    assert_eq!((status, answer["__type"].as_str()), (400, Some("AccessDeniedException")), "{answer}");
    refusals += 1;

    let output = &environment.extension.output;
    let waited = Instant::now();
    while output.events("deny").len() < refusals && waited.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let denies = output.events("deny");
    assert_eq!(denies.len(), refusals, "{denies:?}");
    // Every id carrying the token is left out; a target refused as too long (the token
    // percent-escaped twice) is refused before any id is read, so it names none.
    assert!(
        denies.iter().all(|d| d["secret_id"] == "<contains the local token>"
            || (d["code"] == "target_too_long" && d["secret_id"] == "")),
        "every id carrying the token is left out: {denies:?}"
    );
    // No line, at trace level, carries 16 of the token's letters and digits in a row.
    let token_skeleton = skeleton(&token);
    for line in output.lines() {
        let line_skeleton = skeleton(&line);
        let leak = token_skeleton
            .as_bytes()
            .windows(16)
            .find(|piece| line_skeleton.contains(std::str::from_utf8(piece).unwrap_or_default()));
        assert!(leak.is_none(), "a piece of the token reached the output: {line:.200}");
    }
    assert!(stack.proxy.exchanges().is_empty(), "nothing was asked of AWS");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_the_invoke_has_come_no_read_is_served_by_the_init_session() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // A cold start's first invocation, with the orderings Lambda allows made certain: the
    // function gets its event 300 ms before the extension, the end of INIT is held back by
    // telemetry buffering, and the init session's AssumeRole takes 1.5 s, so the function's
    // read starts under the init scope and the INVOKE arrives while it is in flight.
    stack.proxy.faults().inject(Service::Sts, Some("AssumeRole"), Fault::Delay(Duration::from_millis(1_500)), Some(1));
    let mut options = Options { start_function: false, ..Options::default() };
    options.platform.extension_invoke_delay = Some(Duration::from_millis(300));
    options.platform.init_done_delay = Some(Duration::from_secs(2));
    let (mut environment, _port) =
        stack.environment_with("app/db", &[("SCOPED_SECRETS_PREFETCH", "false")], options).await?;
    environment.start_function_unsettled().await?;
    let invoked = environment.invoke(read("app/db"), TIMEOUT).await?;
    assert_eq!(invoked.payload["sha256"], sha256_hex(value_of("app/db")), "{}", invoked.payload);

    let output = &environment.extension.output;
    let allows = output.events("allow");
    assert_eq!(allows.len(), 1, "{allows:?}");
    assert_eq!(allows[0]["request_id"], invoked.request_id.as_str(), "served as the invocation's, not init's");
    // The init session was started (its read began under INIT) but never used.
    let sessions = stack.proxy.assume_role_calls();
    let init = sessions.iter().find(|c| c.role_session_name.as_deref().is_some_and(|n| n.ends_with("-init")));
    let Some(init) = init else { panic!("the read began under the init scope\n{}", output.text()) };
    let init_key = init.credentials.as_ref().map(|c| c.access_key_id.clone());
    let reads = stack.proxy.secrets_manager_calls();
    assert!(!reads.is_empty());
    assert!(reads.iter().all(|call| call.access_key_id != init_key), "a read made with the init session");
    output.wait_for_request("session_ended", "init", TIMEOUT).await?;
    environment.shut_down().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_arn_is_served_only_if_it_is_the_secrets_own() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let options = Options { start_function: false, ..Options::default() };
    let (environment, port) = stack.environment_with("app/db", &[], options).await?;
    let token = stack.token();
    let header = [(TOKEN_HEADER, token.as_str())];
    // During INIT, the init scope serves.
    let (status, by_name) = local_get(port, "/secretsmanager/get?secretId=app%2Fdb", &header).await?;
    assert_eq!(status, 200, "{by_name}");
    let arn = by_name["ARN"].as_str().expect("an ARN").to_owned();
    let (status, by_arn) = local_get(port, &format!("/secretsmanager/get?secretId={arn}"), &header).await?;
    assert_eq!((status, &by_arn["SecretString"]), (200, &by_name["SecretString"]), "{by_arn}");
    let suffix = &arn[arn.len() - 6..];
    let other = format!("{}{}", &arn[..arn.len() - 6], if suffix == "abcdef" { "ghijkl" } else { "abcdef" });
    let (status, body) = local_get(port, &format!("/secretsmanager/get?secretId={other}"), &header).await?;
    assert_eq!((status, body["error"].as_str()), (404, Some("secret_not_found")), "{body}");
    assert!(body.get("SecretString").is_none());
    let deny = environment.extension.output.wait_for_event("deny", TIMEOUT).await?;
    assert_eq!((deny["code"].as_str(), deny["secret_id"].as_str()), (Some("secret_not_found"), Some(other.as_str())));
    Ok(())
}

/// Sends raw bytes and reads the first answer's status line and body.
async fn raw(port: u16, request: &[u8]) -> anyhow::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request).await?;
    let mut buffer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer)).await??;
    let text = String::from_utf8_lossy(&buffer);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_is_checked_on_both_protocols_in_any_case_and_required_by_http_1_1() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (environment, port) = stack.environment("app/db", &[]).await?;
    let token = stack.token();
    let no_host = format!(
        "GET /secretsmanager/get?secretId=app%2Fdb HTTP/1.1\r\n{TOKEN_HEADER}: {token}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        raw(port, no_host.as_bytes()).await?,
        (400, json!({ "error": "invalid_host", "message": "HTTP/1.1 requires a Host header." }))
    );
    let upper = format!("GET /ping HTTP/1.1\r\nHost: LOCALHOST:{port}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(port, upper.as_bytes()).await?.0, 200, "Host compared ignoring case");
    let sdk = b"POST / HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/x-amz-json-1.1\r\n\
                X-Amz-Target: secretsmanager.GetSecretValue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let (status, body) = raw(port, sdk).await?;
    assert_eq!((status, body["__type"].as_str()), (400, Some("AccessDeniedException")), "{body}");
    let output = &environment.extension.output;
    let waited = Instant::now();
    while output.events("deny").len() < 2 && waited.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let codes: Vec<(String, String)> = output
        .events("deny")
        .iter()
        .map(|d| (d["api"].as_str().unwrap_or("").to_owned(), d["code"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(codes, [("get".to_owned(), "invalid_host".to_owned()), ("sdk".to_owned(), "invalid_host".to_owned())]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_version_id_with_another_versions_stage_is_refused_as_aws_refuses_it() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack.ministack.rotate("app/db", "canary-db-probe-rotated-31c8").await?;
    let options = Options { start_function: false, ..Options::default() };
    let (_environment, port) = stack.environment_with("app/db", &[], options).await?;
    let credentials = &stack.world.exec_credentials;
    let secret = credentials.secret_access_key.clone();
    let get = |body: String| send(signed_request(port, credentials, &secret, &body, SystemTime::now()));
    let (status, current) = get(r#"{"SecretId":"app/db"}"#.to_owned()).await?;
    assert_eq!(status, 200, "{current}");
    let version = current["VersionId"].as_str().expect("a version id").to_owned();
    let (status, same) =
        get(format!(r#"{{"SecretId":"app/db","VersionId":"{version}","VersionStage":"AWSCURRENT"}}"#)).await?;
    assert_eq!(
        (status, same["VersionId"].as_str()),
        (200, Some(version.as_str())),
        "the pair names one version: {same}"
    );
    let (status, other) =
        get(format!(r#"{{"SecretId":"app/db","VersionId":"{version}","VersionStage":"AWSPREVIOUS"}}"#)).await?;
    assert_eq!((status, other["__type"].as_str()), (400, Some("InvalidRequestException")), "{other}");
    assert!(other.get("SecretString").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_id_equal_to_an_alias_reads_nothing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let port = scoped_secrets_tests::lambda::free_port()?;
    let extra = [("SCOPED_SECRETS_REQUEST_WAIT_TIMEOUT_MS", "1000")];
    let mut options = Options { env: stack.function_env("db=app/db,{tenant}", port, &extra), ..Options::default() };
    options.platform.tenant_id = Some("db".to_owned());
    let environment = start(options).await?;
    let invoked = environment.invoke(read("db"), TIMEOUT).await?;
    assert_eq!(
        (invoked.payload["status"].as_u64(), invoked.payload["error"].as_str()),
        (Some(503), Some("tenant_refused")),
        "tenant `db` must not read alias db's secret: {}",
        invoked.payload
    );
    let refused = environment.extension.output.wait_for_event("tenant_refused", TIMEOUT).await?;
    assert!(refused["reason"].as_str().unwrap_or_default().contains("two allowlist entries"), "{refused}");
    assert!(stack.proxy.secrets_manager_calls().is_empty(), "nothing fetched");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_reaching_the_extension_in_any_spelling_fails_init() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let port = scoped_secrets_tests::lambda::free_port()?;
    for endpoint in [
        format!("http://127.1:{port}"),
        format!("http://0.0.0.0:{port}"),
        format!("http://LOCALHOST:{port}"),
        format!("http://localhost.:{port}"),
        format!("http://127.0.0.1:0{port}"),
        format!("http://user@127.0.0.1:{port}"),
    ] {
        let env = stack.function_env("app/db", port, &[("AWS_ENDPOINT_URL_STS", endpoint.as_str())]);
        let failed = match Environment::start(Options { env, ..Options::default() }).await? {
            Ok(_) => anyhow::bail!("{endpoint}: INIT succeeded"),
            Err(failed) => failed,
        };
        let reported = failed.reported.expect("init/error");
        assert_eq!(reported.error_type, "Extension.ConfigInvalid", "{endpoint}");
        let message = reported.body["errorMessage"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("AWS_ENDPOINT_URL_STS points at this extension's own port"),
            "{endpoint}: {message}"
        );
    }
    Ok(())
}
