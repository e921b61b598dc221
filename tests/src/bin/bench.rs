//! The benchmark behind `bench/run.sh`: what the extension adds to cold start, to every
//! invocation and to the function's memory, against the physical limit, in one table.
//!
//! Every figure comes from the real release binaries (the layer's static musl extension, the
//! Rust example function, a bare hyper server built the same way) in the local Lambda
//! environment against MiniStack with IAM enforced. Each measure is repeated; the table gives
//! the median, the 99th percentile (nearest rank, so the maximum below 100 samples) and the
//! spread (min–max) over the repetitions.
//!
//! The extension's stdout (its JSON lines, one audit line per request) is a pipe read line by
//! line by this process, as Lambda's log agent reads it; the lines are counted, checked (one
//! `allow` per request served) and dropped after each load run. The bare server writes nothing.
//!
//! `bench [--runs N] [--starts N] [--invocations N] [--seconds S] [--only SECTIONS]
//! [--connections 1,8,64] [--pin LOAD_CPU,SERVER_CPU] --bare PATH`

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lambda_simulator::ShutdownReason;
use scoped_secrets_tests::Stack;
use scoped_secrets_tests::lambda::{Environment, InitFailed, Options, free_port, target_dir};
use scoped_secrets_tests::runtime_client::RuntimeClient;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// The secret every read asks for, and the allowlist.
const SECRET: &str = "app/db";
const TARGET: &str = "/secretsmanager/get?secretId=app%2Fdb";
/// Concurrent connections of the load runs.
const CONNECTIONS: [u32; 3] = [1, 8, 64];
/// wrk prints one parseable line at the end of a run (latencies in µs).
const WRK_SCRIPT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
"#;

#[derive(Debug)]
struct Args {
    runs: usize,
    starts: usize,
    invocations: usize,
    seconds: u64,
    bare: PathBuf,
    /// Only these sections (`start`, `invocation`, `proxy`, `trips`, `load`, `size`), e.g. to profile one.
    only: Vec<String>,
    /// Only these connection counts in `load` (of 1, 8, 64), e.g. to profile one.
    connections: Vec<u32>,
    /// `load` with wrk on the first CPU and each server (every thread) on the second, instead of
    /// wherever the scheduler puts them: less spread between runs on a shared machine.
    pin: Option<(u32, u32)>,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut args = Args {
            runs: 5,
            starts: 20,
            invocations: 30,
            seconds: 3,
            bare: PathBuf::new(),
            only: Vec::new(),
            connections: CONNECTIONS.to_vec(),
            pin: None,
        };
        let mut raw = std::env::args().skip(1);
        while let Some(flag) = raw.next() {
            let value = raw.next().with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--runs" => args.runs = value.parse()?,
                "--starts" => args.starts = value.parse()?,
                "--invocations" => args.invocations = value.parse()?,
                "--seconds" => args.seconds = value.parse()?,
                "--bare" => args.bare = PathBuf::from(value),
                "--only" => args.only = value.split(',').map(str::to_owned).collect(),
                "--connections" => args.connections = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
                "--pin" => {
                    let (load, server) = value.split_once(',').context("--pin LOAD_CPU,SERVER_CPU")?;
                    args.pin = Some((load.parse()?, server.parse()?));
                }
                _ => bail!("unknown flag {flag}"),
            }
        }
        ensure!(args.connections.iter().all(|c| CONNECTIONS.contains(c)), "--connections: 1, 8 or 64");
        ensure!(args.bare.is_file(), "--bare must name the bare hyper server binary");
        ensure!(args.runs > 0 && args.starts > 0 && args.invocations > 0 && args.seconds > 0, "counts must be > 0");
        Ok(args)
    }
}

/// Repeated measurements of one quantity.
#[derive(Debug, Default, Clone)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    fn median(&self) -> f64 {
        let sorted = self.sorted();
        match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    /// Nearest rank.
    fn p99(&self) -> f64 {
        let sorted = self.sorted();
        let rank = ((sorted.len() as f64) * 0.99).ceil() as usize;
        sorted.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN)
    }

    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// One line of the table.
struct Row {
    what: String,
    unit: &'static str,
    samples: Samples,
    /// The target, and whether the median meets it.
    target: Option<(String, bool)>,
}

#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    fn add(&mut self, what: impl Into<String>, unit: &'static str, samples: &Samples) -> &mut Row {
        self.0.push(Row { what: what.into(), unit, samples: samples.clone(), target: None });
        self.0.last_mut().expect("just pushed")
    }

    fn print(&self) {
        println!("| measure | unit | median | p99 | spread (min–max) | n | target |");
        println!("|---|---|---|---|---|---|---|");
        for row in &self.0 {
            let s = &row.samples;
            let target = match &row.target {
                Some((text, true)) => format!("{text}: met"),
                Some((text, false)) => format!("{text}: **missed**"),
                None => String::new(),
            };
            println!(
                "| {} | {} | {} | {} | {}–{} | {} | {} |",
                row.what,
                row.unit,
                fmt(s.median()),
                fmt(s.p99()),
                fmt(s.min()),
                fmt(s.max()),
                s.0.len(),
                target
            );
        }
    }
}

impl Row {
    fn target(&mut self, text: &str, met: impl Fn(f64) -> bool) {
        self.target = Some((text.to_owned(), met(self.samples.median())));
    }
}

fn fmt(value: f64) -> String {
    if value.is_nan() {
        "–".into()
    } else if value.abs() >= 1000.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let stack = Stack::start().await?;
    let mut table = Table::default();
    let wanted = |section: &str| args.only.is_empty() || args.only.iter().any(|s| s == section);
    if wanted("start") {
        eprintln!("==> start → serving, idle memory, SHUTDOWN → exit: {} environments", args.starts);
        starts(&stack, &args, &mut table).await?;
    }
    if wanted("invocation") {
        eprintln!("==> per-invocation overhead: {} invocations each", args.invocations);
        per_invocation(&stack, &args, &mut table).await?;
    }
    if wanted("proxy") {
        eprintln!(
            "==> post-response time with and without the Runtime API proxy: {} invocations each",
            args.invocations
        );
        post_response(&stack, &args, &mut table).await?;
        eprintln!("==> what the proxy adds to a runtime's /next and /response: {} calls each way", args.invocations);
        proxy_latency(&stack, &args, &mut table).await?;
    }
    if wanted("trips") {
        eprintln!("==> round trips per invocation that fetches");
        round_trips(&stack, &mut table).await?;
    }
    if wanted("load") {
        eprintln!(
            "==> cached GET under load: {} runs × {:?} connections × {} s: ours, ours with stdout to /dev/null, bare",
            args.runs, args.connections, args.seconds
        );
        load(&stack, &args, &mut table).await?;
    }
    if wanted("size") {
        sizes(&mut table)?;
    }
    println!();
    table.print();
    Ok(())
}

/// Starts an environment with `allowlist` and `extra` on a port of our choosing.
async fn environment(
    stack: &Stack,
    extra: &[(&str, &str)],
    start_function: bool,
) -> anyhow::Result<(Environment, u16)> {
    let port = free_port()?;
    let options = Options { env: stack.function_env(SECRET, port, extra), start_function, ..Options::default() };
    match Environment::start(options).await? {
        Ok(environment) => Ok((environment, port)),
        Err(InitFailed { reported, output, .. }) => bail!("INIT failed: {reported:?}\n{}", output.text()),
    }
}

/// Polls `GET /ping` until it answers 200; returns when it first did.
async fn first_ping(port: u16) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let _ = stream.set_nodelay(true);
            stream.write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await?;
            let mut head = [0u8; 12];
            if stream.read_exact(&mut head).await.is_ok() && &head == b"HTTP/1.1 200" {
                return Ok(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_micros(250)).await;
    }
    bail!("the extension never answered /ping")
}

/// The CPU time process `pid` has used (user + system, all its threads), in microseconds.
fn cpu_us(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).context("no /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of proc_pid_stat(5); the state (field 3) is index 0 here.
    let ticks: f64 =
        fields.get(11..13).context("short /proc stat")?.iter().map(|f| f.parse::<f64>().unwrap_or(0.0)).sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks * 1e6 / per_second.max(1.0))
}

fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

/// 1, 5, 6: start → serving, RSS idle, SHUTDOWN → exit, over fresh environments (no function:
/// only the extension's own INIT is timed).
async fn starts(stack: &Stack, args: &Args, table: &mut Table) -> anyhow::Result<()> {
    let (mut serving, mut ready, mut idle, mut exit, mut internal) =
        (Samples::default(), Samples::default(), Samples::default(), Samples::default(), Samples::default());
    for _ in 0..args.starts {
        let port = free_port()?;
        let options =
            Options { env: stack.function_env(SECRET, port, &[]), start_function: false, ..Options::default() };
        let ping = tokio::spawn(first_ping(port));
        let mut environment = match Environment::start(options).await? {
            Ok(environment) => environment,
            Err(InitFailed { reported, output, .. }) => bail!("INIT failed: {reported:?}\n{}", output.text()),
        };
        let served = ping.await??;
        serving.push(ms(served.saturating_duration_since(environment.spawned_at)));
        let line = environment.extension.output.wait_for_event("ready", Duration::from_secs(5)).await?;
        ready.push(line["start_to_ready_us"].as_f64().unwrap_or(f64::NAN) / 1e3);
        tokio::time::sleep(Duration::from_millis(200)).await;
        idle.push(rss_mb(environment.extension.pid().context("running")?)?);
        let (status, _, sent) = environment.shut_down_timed(ShutdownReason::Spindown).await?;
        ensure!(status.success(), "the extension exited with {status}");
        exit.push(ms(sent.context("the SHUTDOWN event was not seen")?));
        let line = environment.extension.output.wait_for_event("shutdown", Duration::from_secs(2)).await?;
        internal.push(line["shutdown_ms"].as_f64().unwrap_or(f64::NAN));
    }
    table
        .add("start → serving (spawn → first `/ping` 200, registered)", "ms", &serving)
        .target("< 10 ms", |m| m < 10.0);
    table.add("… of which the extension's own `start_to_ready_us`", "ms", &ready);
    table.add("RSS idle (after INIT, nothing fetched)", "MiB", &idle).target("< 8 MB", |m| m < 8.0 * 1e6 / 1048576.0);
    table.add("SHUTDOWN → exit (event sent → process exited)", "ms", &exit).target("< 20 ms", |m| m < 20.0);
    table.add("… of which the extension's own `shutdown_ms`", "ms", &internal);
    Ok(())
}

/// Invokes with a timed read; returns `readUs` (µs), the runtimeDone wait, and the extension's
/// `end_us` for that invocation.
async fn timed_invoke(environment: &Environment) -> anyhow::Result<(f64, f64)> {
    let invoked = environment.invoke(json!({ "secretId": SECRET, "timed": true }), Duration::from_secs(5)).await?;
    ensure!(invoked.payload["status"] == 200, "read failed: {}", invoked.payload);
    let read = invoked.payload["readUs"].as_f64().context("no readUs: is the example function current?")?;
    Ok((read, ms(invoked.extension_after_response)))
}

fn end_us(environment: &Environment) -> Samples {
    let mut samples = Samples::default();
    for line in environment.extension.output.events("invocation_ended") {
        if let Some(us) = line["end_us"].as_f64() {
            samples.push(us);
        }
    }
    samples
}

/// 4: the time the extension adds to an invocation, straight against MiniStack (no recording
/// proxy), less MiniStack's own service time measured through the extension's own client code.
async fn per_invocation(stack: &Stack, args: &Args, table: &mut Table) -> anyhow::Result<()> {
    let direct = stack.ministack.endpoint();
    // (a) a warm cache: the first invocation fetches, the rest are served from the cache.
    let (warm, _) = environment(stack, &[("AWS_ENDPOINT_URL", &direct)], true).await?;
    timed_invoke(&warm).await?;
    let (mut cached, mut wait) = (Samples::default(), Samples::default());
    for _ in 0..args.invocations {
        let (read, after) = timed_invoke(&warm).await?;
        cached.push(read / 1e3);
        wait.push(after);
    }
    let ended = end_us(&warm);

    // (b) TTL 0: every invocation assumes a session and fetches (the INVOKE prefetch, which the
    // function's read joins). Interleaved with the same two calls made directly, through the
    // extension's own session code and SDK client settings, for MiniStack's service time.
    let (cold, _) =
        environment(stack, &[("AWS_ENDPOINT_URL", &direct), ("SCOPED_SECRETS_CACHE_TTL", "0")], true).await?;
    let factory = direct_factory(stack, &direct).await?;
    let (mut fetch_read, mut assume, mut batch, mut ours) =
        (Samples::default(), Samples::default(), Samples::default(), Samples::default());
    for i in 0..args.invocations {
        let (read, after) = timed_invoke(&cold).await?;
        wait.push(after);
        let began = Instant::now();
        let session = factory
            .start(&format!("bench-{i:08}-0000-0000-0000-000000000000"), 0, SystemTime::now() + Duration::from_secs(60))
            .await?;
        let assumed = Instant::now();
        let client = session.client().context("the bench's allowlist has a secret")?;
        let output = client.batch_get_secret_value().secret_id_list(SECRET).send().await?;
        ensure!(output.secret_values().len() == 1, "the direct batch read nothing");
        let emulator = (assumed - began, assumed.elapsed());
        fetch_read.push(read / 1e3);
        assume.push(ms(emulator.0));
        batch.push(ms(emulator.1));
        ours.push(read / 1e3 - ms(emulator.0 + emulator.1));
    }
    table
        .add("per invocation, warm cache: the function's read (`readUs`)", "ms", &cached)
        .target("< 1 ms", |m| m < 1.0);
    table.add("per invocation, session + fetch: the function's read", "ms", &fetch_read);
    table.add("… MiniStack AssumeRole (same client code, measured directly)", "ms", &assume);
    table.add("… MiniStack BatchGetSecretValue (same client code)", "ms", &batch);
    table.add("… ours: the read less both emulator calls (paired)", "ms", &ours);
    table.add("runtimeDone wait: response → next `event/next` (both kinds)", "ms", &wait);
    table.add("… of which the extension's own `end_us` (end scope, wipe)", "µs", &ended);
    Ok(())
}

/// Issue 14: the post-response time (Lambda accepted the function's result → the extension's
/// next `/event/next`, both seen at the front proxy), with the runtime through the Runtime API
/// proxy (`auto` ends at the response) and without it (`auto` falls back to runtimeDone).
/// Warm cache, the same function. The proxy's added latency per `/next` and `/response` is not
/// measured yet.
async fn post_response(stack: &Stack, args: &Args, table: &mut Table) -> anyhow::Result<()> {
    let wrapper = ("AWS_LAMBDA_EXEC_WRAPPER", "/opt/scoped-secrets-wrapper");
    let cases: [(&str, &[(&str, &str)]); 2] =
        [("with the proxy (wrapper, `auto`)", &[wrapper]), ("without it (no wrapper: runtimeDone)", &[])];
    for (label, extra) in cases {
        let (environment, _) = environment(stack, extra, true).await?;
        timed_invoke(&environment).await?;
        let mut samples = Samples::default();
        for _ in 0..args.invocations {
            let invoked =
                environment.invoke(json!({ "secretId": SECRET, "timed": true }), Duration::from_secs(5)).await?;
            ensure!(invoked.payload["status"] == 200, "read failed: {}", invoked.payload);
            samples.push(ms(invoked.post_response.context("no post-response time measured")?));
        }
        let row = table.add(format!("post-response time {label}"), "ms", &samples);
        if extra.is_empty() {
            continue;
        }
        row.target("< 1 ms", |m| m < 1.0);
    }
    Ok(())
}

/// Issue 14: what the Runtime API proxy adds to a runtime's calls. The bench plays the runtime
/// (as the e2e tests do): the same `/next` and `/response` straight to the local Lambda
/// environment and through the proxy, alternating invocation by invocation, with a 2-byte and a
/// 1 MB event and result. Timed from sending the request to having the whole answer; `/next`
/// is asked once the invocation is queued, so it measures the answer, not a wait for work.
async fn proxy_latency(stack: &Stack, args: &Args, table: &mut Table) -> anyhow::Result<()> {
    let (environment, _) = environment(stack, &[], false).await?;
    let proxy = RuntimeClient::new(&environment.runtime_proxy().context("the extension has no proxy")?);
    let direct = RuntimeClient::new(environment.runtime_api());
    let timeout = Duration::from_secs(10);
    for (label, size) in [("2 B", 0_usize), ("1 MB", 1_000_000)] {
        // [next, response] × [direct, proxy]
        let mut samples: [[Samples; 2]; 2] = Default::default();
        for n in 0..args.invocations * 2 {
            let (via, client) = if n % 2 == 0 { (0, &direct) } else { (1, &proxy) };
            let event = if size == 0 { json!({}) } else { json!({ "blob": "e".repeat(size) }) };
            let (request_id, enqueued) = environment.enqueue(event, timeout).await?;
            let started = Instant::now();
            let next = client.next().await?;
            samples[0][via].push(ms(started.elapsed()));
            ensure!(next.header("lambda-runtime-aws-request-id") == Some(request_id.as_str()), "another invocation");
            let result =
                if size == 0 { Bytes::from_static(b"{}") } else { Bytes::from(format!("\"{}\"", "r".repeat(size))) };
            let started = Instant::now();
            let answer = client.respond(&request_id, result).await?;
            samples[1][via].push(ms(started.elapsed()));
            ensure!(answer.status == 202, "the result was refused: {}", answer.status);
            environment.complete(&request_id, enqueued, timeout).await?;
        }
        for (call, [straight, through]) in ["/next", "/response"].into_iter().zip(samples) {
            let base = straight.median();
            table.add(format!("runtime {call}, {label}, straight to Lambda"), "ms", &straight);
            table
                .add(format!("runtime {call}, {label}, through the proxy"), "ms", &through)
                .target(&format!("< {} ms (straight + 0.2 ms)", fmt(base + 0.2)), |m| m < base + 0.2);
        }
    }
    Ok(())
}

/// The extension's session factory, built exactly as the extension builds it, with the
/// execution role's credentials, straight against MiniStack.
async fn direct_factory(stack: &Stack, endpoint: &str) -> anyhow::Result<scoped_secrets::session::SessionFactory> {
    let mut env = stack.function_env(SECRET, 9, &[("AWS_ENDPOINT_URL", endpoint)]);
    env.extend([
        ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
        ("AWS_LAMBDA_RUNTIME_API".to_owned(), "127.0.0.1:9".to_owned()),
    ]);
    let config = scoped_secrets::config::Config::from_env(&scoped_secrets::config::Env::from_pairs(env))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let exec = &stack.world.exec_credentials;
    let credentials = aws_credential_types::Credentials::new(
        exec.access_key_id.clone(),
        exec.secret_access_key.clone(),
        exec.session_token.clone(),
        None,
        "bench",
    );
    let sdk = scoped_secrets::aws::sdk_loader(&config).credentials_provider(credentials).load().await;
    let evidence = Arc::new(scoped_secrets::evidence::Evidence::new(config.allowlist.len()));
    let tenancy = Arc::new(scoped_secrets::tenant::Tenancy::new(
        config.allowlist.clone(),
        tokio_util::sync::CancellationToken::new(),
    ));
    Ok(scoped_secrets::session::SessionFactory::new(&sdk, Arc::new(config), tenancy, Some("benchenv".into()), evidence))
}

/// 4, continued: through the recording proxy, each fetching invocation makes exactly one STS
/// and one Secrets Manager call, and the second follows the first at once.
async fn round_trips(stack: &Stack, table: &mut Table) -> anyhow::Result<()> {
    let (environment, _) = environment(stack, &[("SCOPED_SECRETS_CACHE_TTL", "0")], true).await?;
    let (mut to_assume, mut gap) = (Samples::default(), Samples::default());
    for _ in 0..10 {
        stack.proxy.clear();
        let sent = SystemTime::now();
        timed_invoke(&environment).await?;
        let exchanges = stack.proxy.exchanges();
        let sts: Vec<_> =
            exchanges.iter().filter(|e| e.form_params().get("Action").is_some_and(|a| a == "AssumeRole")).collect();
        let sm: Vec<_> = exchanges.iter().filter(|e| e.target.is_some()).collect();
        ensure!(
            sts.len() == 1 && sm.len() == 1 && exchanges.len() == 2,
            "expected one AssumeRole and one Secrets Manager call, saw {:?}",
            exchanges.iter().map(|e| (&e.path, &e.target)).collect::<Vec<_>>()
        );
        let answered = sts[0].at + sts[0].elapsed;
        to_assume.push(ms(sts[0].at.duration_since(sent).unwrap_or_default()));
        gap.push(ms(sm[0].at.duration_since(answered).unwrap_or_default()));
    }
    table.add("fetching invocation: INVOKE enqueued → AssumeRole sent (1 STS call each)", "ms", &to_assume);
    table.add("… AssumeRole answered → BatchGetSecretValue sent (1 call each)", "ms", &gap);
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct WrkRun {
    requests: f64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The server's CPU time (user + system, every thread) over the run, per request.
    cpu_us_per_request: f64,
}

async fn wrk(
    port: u16,
    token: &str,
    connections: u32,
    seconds: u64,
    script: &Path,
    cpu: Option<u32>,
) -> anyhow::Result<WrkRun> {
    let mut command = match cpu {
        Some(cpu) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", &cpu.to_string(), "wrk"]);
            taskset
        }
        None => Command::new("wrk"),
    };
    let output = command
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "-s"])
        .arg(script)
        .args(["-H", &format!("X-Aws-Parameters-Secrets-Token: {token}")])
        .arg(format!("http://127.0.0.1:{port}{TARGET}"))
        .output()
        .await
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("BENCH ")).with_context(|| format!("wrk said: {text}"))?;
    let numbers: Vec<f64> = line.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    let [requests, duration_us, p50, p99, status_errors, socket_errors] = numbers[..] else {
        bail!("unexpected wrk line {line}");
    };
    ensure!(status_errors == 0.0 && socket_errors == 0.0, "wrk saw errors: {line}");
    Ok(WrkRun {
        requests,
        per_second: requests / duration_us * 1e6,
        p50_ms: p50 / 1e3,
        p99_ms: p99 / 1e3,
        cpu_us_per_request: 0.0,
    })
}

async fn cached_gets(port: u16, token: &str, count: usize) -> anyhow::Result<usize> {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut size = 0;
    for _ in 0..count {
        let request = hyper::Request::get(format!("http://127.0.0.1:{port}{TARGET}"))
            .header("X-Aws-Parameters-Secrets-Token", token)
            .body(Empty::new())?;
        let response = client.request(request).await?;
        ensure!(response.status() == 200, "cached GET answered {}", response.status());
        size = response.into_body().collect().await?.to_bytes().len();
    }
    Ok(size)
}

struct Bare(Child);

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

async fn start_bare(bin: &Path, body_size: usize) -> anyhow::Result<(Bare, u16)> {
    let mut child = Command::new(bin)
        .args(["0", &body_size.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read_exact(&mut byte).await.is_ok() && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let port = String::from_utf8_lossy(&line).strip_prefix("listening ").and_then(|p| p.parse().ok());
    Ok((Bare(child), port.context("the bare server did not start")?))
}

/// A server under load: the extension (its stdout a pipe read by us, or `/dev/null`) or the
/// bare hyper server.
struct Server {
    port: u16,
    pid: u32,
    /// The extension's output, to check one `allow` line per request served.
    audit: Option<scoped_secrets_tests::lambda::Output>,
    runs: Vec<Vec<WrkRun>>,
    rss_after_64: Samples,
}

impl Server {
    fn new(port: u16, pid: u32, audit: Option<scoped_secrets_tests::lambda::Output>) -> Self {
        Self { port, pid, audit, runs: vec![Vec::new(); CONNECTIONS.len()], rss_after_64: Samples::default() }
    }

    fn pick(&self, index: usize, f: fn(&WrkRun) -> f64) -> Samples {
        let mut samples = Samples::default();
        for run in &self.runs[index] {
            samples.push(f(run));
        }
        samples
    }
}

/// An extension environment serving from a warm cache inside one long invocation (as a
/// function's reads would arrive), and that invocation's id, start and timeout.
async fn serving_environment(
    stack: &Stack,
    pause: Duration,
    discard_stdout: bool,
) -> anyhow::Result<(Environment, u16, String, Instant, Duration)> {
    let direct = stack.ministack.endpoint();
    let port = free_port()?;
    let mut extension = scoped_secrets_tests::lambda::Program::extension();
    extension.discard_stdout = discard_stdout;
    let options = Options {
        env: stack.function_env(SECRET, port, &[("AWS_ENDPOINT_URL", &direct)]),
        extension,
        ..Options::default()
    };
    let environment = match Environment::start(options).await? {
        Ok(environment) => environment,
        Err(InitFailed { reported, output, .. }) => bail!("INIT failed: {reported:?}\n{}", output.text()),
    };
    let invoked = environment.invoke(json!({ "secretId": SECRET }), Duration::from_secs(5)).await?;
    ensure!(invoked.payload["status"] == 200, "the first read failed: {}", invoked.payload);
    let timeout = pause + Duration::from_secs(10);
    let (request_id, enqueued_at) =
        environment.enqueue(json!({ "secretId": SECRET, "pauseMs": pause.as_millis() as u64 }), timeout).await?;
    if discard_stdout {
        tokio::time::sleep(Duration::from_millis(500)).await;
    } else {
        let output = environment.extension.output.clone();
        tokio::time::timeout(Duration::from_secs(5), async {
            while output.events("allow").len() < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .context("the long invocation never read")?;
    }
    Ok((environment, port, request_id, enqueued_at, timeout))
}

/// What marks an `allow` line.
const ALLOW: &str = r#""event":"allow""#;

/// Takes the `allow` lines `audit` holds (or counted) and those still on their way, and returns
/// how many.
/// The reader may lag the pipe a little, and requests wrk left in flight at its end are still
/// answered (and logged) after it counted: takes lines until at least `expected` came and none
/// for 100 ms (5 s at most).
async fn allow_lines(audit: &scoped_secrets_tests::lambda::Output, expected: f64) -> f64 {
    let (mut allows, deadline) = (0.0, Instant::now() + Duration::from_secs(5));
    loop {
        let new = audit.take_lines().iter().filter(|l| l.contains(ALLOW)).count() + audit.take_counted();
        allows += new as f64;
        if (allows >= expected && new == 0) || Instant::now() > deadline {
            return allows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 2, 3, 5: cached GETs under load during an invocation, the bare hyper server in the same run
/// with the same load generator, and memory along the way. The extension runs twice: with its
/// stdout a pipe we read (as in Lambda), and with stdout to `/dev/null`, to show what the
/// audit line per request costs.
async fn load(stack: &Stack, args: &Args, table: &mut Table) -> anyhow::Result<()> {
    let token = stack.token();
    // Each wrk run lasts its duration plus start-up; three servers, three connection counts.
    let pause = Duration::from_millis(args.runs as u64 * 9 * (args.seconds * 1_000 + 500) + 15_000);
    let (mut environment, port, request_id, enqueued_at, timeout) = serving_environment(stack, pause, false).await?;
    let pid = environment.extension.pid().context("running")?;
    let after_fetch = rss_mb(pid)?;
    let body_size = cached_gets(port, &token, 1_000).await?;
    let after_1k = rss_mb(pid)?;
    // Those requests' lines (and the first reads') out of the way before the first run.
    allow_lines(&environment.extension.output, 1_000.0).await;
    let (mut quiet, quiet_port, quiet_request, quiet_enqueued, _) = serving_environment(stack, pause, true).await?;
    let quiet_pid = quiet.extension.pid().context("running")?;

    // The load runs' `allow` lines are counted as they are read, not kept.
    environment.extension.output.count_lines_containing(ALLOW.as_bytes());
    let (bare, bare_port) = start_bare(&args.bare, body_size).await?;
    let bare_pid = bare.0.id().context("bare server running")?;
    let mut servers = [
        Server::new(port, pid, Some(environment.extension.output.clone())),
        Server::new(quiet_port, quiet_pid, None),
        Server::new(bare_port, bare_pid, None),
    ];
    if let Some((_, cpu)) = args.pin {
        for server in &servers {
            pin(server.pid, cpu)?;
        }
    }
    let script = std::env::temp_dir().join(format!("scoped-secrets-bench-{}.lua", std::process::id()));
    std::fs::write(&script, WRK_SCRIPT)?;
    for run in 0..args.runs {
        for (index, &connections) in CONNECTIONS.iter().enumerate() {
            if !args.connections.contains(&connections) {
                continue;
            }
            // Rotate which server goes first, so drift on a shared machine hits all three.
            for turn in 0..servers.len() {
                let server = &mut servers[(run + turn) % 3];
                let cpu_before = cpu_us(server.pid)?;
                let mut result =
                    wrk(server.port, &token, connections, args.seconds, &script, args.pin.map(|(load, _)| load))
                        .await?;
                result.cpu_us_per_request = (cpu_us(server.pid)? - cpu_before) / result.requests.max(1.0);
                if let Some(audit) = &server.audit {
                    let allows = allow_lines(audit, result.requests).await;
                    ensure!(
                        allows >= result.requests && allows <= result.requests + f64::from(connections),
                        "{allows} allow lines for {} requests",
                        result.requests
                    );
                }
                server.runs[index].push(result);
                if connections == 64 {
                    let rss = rss_mb(server.pid)?;
                    server.rss_after_64.push(rss);
                }
            }
        }
    }
    let _ = std::fs::remove_file(&script);
    drop(bare);
    ensure!(enqueued_at.elapsed() < pause, "the load outlasted the invocation; raise the pause");
    let [ours, quiet_server, bare_server] = &servers;
    for (index, connections) in CONNECTIONS.iter().enumerate() {
        if !args.connections.contains(connections) {
            continue;
        }
        let c = format!("cached GET c={connections}");
        let ratio = |a: &Samples, b: &Samples| {
            let mut ratio = Samples::default();
            ratio.push(a.median() / b.median());
            ratio
        };
        let (o50, q50, t50) = (
            ours.pick(index, |r| r.p50_ms),
            quiet_server.pick(index, |r| r.p50_ms),
            bare_server.pick(index, |r| r.p50_ms),
        );
        let (orps, qrps, trps) = (
            ours.pick(index, |r| r.per_second),
            quiet_server.pick(index, |r| r.per_second),
            bare_server.pick(index, |r| r.per_second),
        );
        table.add(format!("{c}: p50 latency, ours"), "ms", &o50);
        table.add(format!("{c}: p50 latency, ours, stdout to /dev/null"), "ms", &q50);
        table.add(format!("{c}: p50 latency, bare hyper"), "ms", &t50);
        table
            .add(format!("{c}: p50 ours / bare (ratio of medians)"), "×", &ratio(&o50, &t50))
            .target("≤ 1.15×", |r| r <= 1.15);
        table.add(format!("{c}: p99 latency, ours"), "ms", &ours.pick(index, |r| r.p99_ms));
        table.add(format!("{c}: p99 latency, bare hyper"), "ms", &bare_server.pick(index, |r| r.p99_ms));
        table.add(format!("{c}: throughput, ours"), "req/s", &orps);
        table.add(format!("{c}: throughput, ours, stdout to /dev/null"), "req/s", &qrps);
        table.add(format!("{c}: throughput, bare hyper"), "req/s", &trps);
        table
            .add(format!("{c}: throughput ours / bare"), "×", &ratio(&orps, &trps))
            .target("≥ 0.95×", |r| r >= 0.95);
        let (ocpu, tcpu) =
            (ours.pick(index, |r| r.cpu_us_per_request), bare_server.pick(index, |r| r.cpu_us_per_request));
        table.add(format!("{c}: server CPU per request, ours"), "µs", &ocpu);
        table.add(
            format!("{c}: server CPU per request, ours, stdout to /dev/null"),
            "µs",
            &quiet_server.pick(index, |r| r.cpu_us_per_request),
        );
        table.add(format!("{c}: server CPU per request, bare hyper"), "µs", &tcpu);
        table
            .add(format!("{c}: CPU per request ours / bare"), "×", &ratio(&ocpu, &tcpu))
            .target("≤ 1.1×", |r| r <= 1.1);
    }
    let one = |value: f64| {
        let mut samples = Samples::default();
        samples.push(value);
        samples
    };
    table.add("RSS after the first invocation (session + fetch)", "MiB", &one(after_fetch));
    table.add("RSS after 1,000 cached requests (one connection)", "MiB", &one(after_1k));
    if args.connections.contains(&64) {
        table
            .add("RSS after each 64-connection run", "MiB", &ours.rss_after_64)
            .target("< 8 MB", |m| m < 8.0 * 1e6 / 1048576.0);
        table.add("… bare hyper's RSS after each 64-connection run", "MiB", &bare_server.rss_after_64);
    }
    environment.complete(&request_id, enqueued_at, timeout).await?;
    quiet.complete(&quiet_request, quiet_enqueued, timeout).await?;
    // SHUTDOWN with the cache full (the invocation's session already ended at runtimeDone).
    let (status, _, sent) = environment.shut_down_timed(ShutdownReason::Spindown).await?;
    ensure!(status.success(), "the extension exited with {status}");
    table.add("SHUTDOWN → exit after the load (cache full)", "ms", &one(ms(sent.context("no SHUTDOWN seen")?)));
    quiet.shut_down().await?;
    Ok(())
}

/// Moves every thread of process `pid` to CPU `cpu` (`taskset -a`).
fn pin(pid: u32, cpu: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    ensure!(status.success(), "taskset -a -p -c {cpu} {pid}: {status}");
    Ok(())
}

/// 7: the binaries and the layer zips `layer/build.sh` made.
fn sizes(table: &mut Table) -> anyhow::Result<()> {
    let target = target_dir();
    for (arch, triple) in [("x86_64", "x86_64-unknown-linux-musl"), ("arm64", "aarch64-unknown-linux-musl")] {
        let binary = target.join(triple).join("release").join("scoped-secrets");
        let zip = target.join("layer").join(format!("scoped-secrets-{arch}.zip"));
        let size = |path: &Path| -> anyhow::Result<Samples> {
            let bytes =
                std::fs::metadata(path).with_context(|| format!("{} (run layer/build.sh)", path.display()))?.len();
            let mut samples = Samples::default();
            samples.push(bytes as f64 / 1e6);
            Ok(samples)
        };
        table.add(format!("binary, {arch} (static musl, stripped)"), "MB", &size(&binary)?);
        table.add(format!("layer zip, {arch}"), "MB", &size(&zip)?).target("< 4 MB", |m| m < 4.0);
    }
    Ok(())
}
