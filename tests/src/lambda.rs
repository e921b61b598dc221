//! The local Lambda environment: `lambda-simulator` 0.2.0, wrapped where it falls short.
//!
//! The simulator provides the Runtime, Extensions and Telemetry APIs, INVOKE with a real
//! `deadlineMs`, `platform.runtimeDone` and SHUTDOWN. What it lacks, this module adds:
//! - **`init/error` and `exit/error`**: the simulator has no such routes. A small front proxy
//!   sits before it (the processes get the proxy's address as `AWS_LAMBDA_RUNTIME_API`),
//!   records those two calls itself and forwards everything else. An `init/error` fails the
//!   environment's INIT the way Lambda does: the function is never started or invoked.
//! - **Process output**: `Simulator::spawn_process` cannot capture stdout, so processes are
//!   spawned here with the simulator's own Lambda variables, and every line they print is kept
//!   for assertions (and echoed to stderr when `SCOPED_SECRETS_TEST_ECHO` is set).
//! - **INIT order**: the extension is started first and the function only once the extension
//!   has registered and polled `/event/next`, as Lambda orders them.
//! - **Telemetry as the modes shape it**: the front proxy takes the extension's Telemetry API
//!   subscription, gives the simulator a relay of its own as the destination, and the relay
//!   forwards every batch to the destination the extension subscribed with (its secret path
//!   included). In tenant isolation mode ([`Platform::tenant_id`]) the relay adds `tenantId`
//!   to each `platform.start` record, as Lambda does (the simulator has no tenants);
//!   [`Environment::send_telemetry`] delivers records the simulator never makes (SnapStart's
//!   `platform.restoreStart`, a second tenant's `platform.start`) to that destination, as
//!   Lambda would; [`Environment::post_to_telemetry_listener`] sends elsewhere on the
//!   listener, as a forger who does not know the path would.
//! - **Orderings Lambda allows, made certain**: [`Platform::extension_invoke_delay`] lets the
//!   function get its event before the extension, [`Platform::init_done_delay`] holds back
//!   `platform.initRuntimeDone` (buffered telemetry), so a test can put a read in the window
//!   between them.
//! - **SnapStart's runtime hooks**: a runtime in `snap-start` mode calls
//!   `/2018-06-01/runtime/restore/next` after its INIT; the simulator has no such route, so the
//!   proxy answers it at once (the snapshot is restored immediately; no memory is snapshotted).
//! - **Lambda Managed Instances** ([`Platform::managed_instances`]): the proxy refuses a
//!   registration that asks for INVOKE with `Extension.InvalidEventType`, and a telemetry
//!   subscription in a schema other than `2025-01-29`, as LMI does (the simulator accepts both).
//!   The simulator runs one invocation at a time; with [`Platform::concurrent_runtime`] the
//!   front proxy answers the Runtime API itself ([`crate::runtime_api`]), handing out as many
//!   invocations at once as runtimes poll for ([`Options::runtime_processes`]).
//! - **The wrapper**: the simulator runs no `AWS_LAMBDA_EXEC_WRAPPER`. When the function's
//!   environment names one under `/opt/` (the layer's files; here, `layer/` of this repository),
//!   the harness starts a managed runtime's interface client through it, as Lambda does
//!   ([`Program::lambda_runs_wrapper`]); a custom runtime's `bootstrap` gets the variable and
//!   starts itself through it, as on an OS-only runtime. Each environment has its own
//!   `TMPDIR` (where the extension leaves the marker the wrapper reads) and its own free port
//!   for the extension's Runtime API proxy.
//! - **The Runtime API as Lambda answers it**: in tenant isolation mode the `/next` answer
//!   carries `Lambda-Runtime-Aws-Tenant-Id`, added by the front proxy (the simulator has no
//!   tenants). A response streamed to `…/response` (`Lambda-Runtime-Function-Response-Mode:
//!   streaming`) is received chunk by chunk, each chunk's arrival and the trailers recorded
//!   ([`Environment::streamed_responses`]), then handed to the simulator whole (it has no
//!   streaming). [`Platform::record_payloads`] keeps the exact bytes of every event sent and
//!   every result received, to compare byte for byte.
//! - **Telemetry delivery** can be delayed ([`Environment::set_telemetry_delay`]): the relay
//!   answers the simulator at once and delivers each batch to the extension that much later,
//!   in order, as a slow Telemetry API would.
//! - **Post-response time** ([`Invoked::post_response`]): the front proxy notes when Lambda
//!   accepted the function's result and when the extension next called `/event/next`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lambda_simulator::{InvocationBuilder, InvocationStatus, ShutdownReason, Simulator};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::ministack::workspace_root;
use crate::runtime_api::{ConcurrentRuntime, Outcome};

/// An `init/error` or `exit/error` an extension reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedError {
    /// `init/error` or `exit/error`.
    pub path: String,
    /// The `Lambda-Extension-Function-Error-Type` header.
    pub error_type: String,
    /// The JSON body (`errorMessage`, `errorType`).
    pub body: Value,
}

/// Lines printed by a process, shared with the reader task.
///
/// Kept as the bytes read, with where each line ends: the reader splits the pipe into lines as
/// it reads (as Lambda's log agent does) but makes no `String` of each. Under the bench's load
/// the extension prints ~140,000 audit lines a second, and a reader that built a `String` per
/// line, took a lock per line and read the environment per line (for the echo switch) used
/// 7-9 % of a core on a two-core machine, taken from `wrk` and the server under test (bare
/// hyper has no reader): `Strings` are made when a test asks for lines.
#[derive(Debug, Clone, Default)]
pub struct Output(Arc<Mutex<Lines>>);

/// Whole lines, back to back, each without its newline, and the offset where each one ends.
#[derive(Debug, Default)]
struct Lines {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// Lines holding this are counted, not kept ([`Output::count_lines_containing`]).
    counted: Option<(memchr::memmem::Finder<'static>, usize)>,
}

impl Lines {
    fn to_strings(&self) -> Vec<String> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let line = String::from_utf8_lossy(&self.bytes[start..end]).into_owned();
                start = end;
                line
            })
            .collect()
    }

    fn push(&mut self, prefix: &[u8], line: &[u8]) {
        if let Some((pattern, count)) = &mut self.counted
            && pattern.find(line).is_some()
        {
            *count += 1;
            return;
        }
        self.bytes.extend_from_slice(prefix);
        self.bytes.extend_from_slice(line);
        self.ends.push(self.bytes.len());
    }
}

impl Output {
    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|l| l.to_strings()).unwrap_or_default()
    }

    /// Every line that parses as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        self.lines().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// JSON lines whose `event` field is `event`.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.json_lines().into_iter().filter(|l| l["event"] == event).collect()
    }

    /// Removes and returns every line so far (the benchmark drains the audit lines of a load run).
    pub fn take_lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut l| {
                let lines = l.to_strings();
                (l.bytes, l.ends) = Default::default();
                lines
            })
            .unwrap_or_default()
    }

    /// From now on, lines that contain `pattern` are counted and not kept (the benchmark checks
    /// one `allow` line per request without keeping ~140,000 lines a second in memory, as a
    /// log agent that ships its lines does not).
    pub fn count_lines_containing(&self, pattern: &[u8]) {
        if let Ok(mut lines) = self.0.lock() {
            lines.counted = Some((memchr::memmem::Finder::new(pattern).into_owned(), 0));
        }
    }

    /// How many lines [`Output::count_lines_containing`] counted since the last call.
    pub fn take_counted(&self) -> usize {
        self.0
            .lock()
            .ok()
            .and_then(|mut l| l.counted.as_mut().map(|(_, count)| std::mem::take(count)))
            .unwrap_or_default()
    }

    /// The whole output as one string (for "never appears" scans).
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until a JSON line with `event` appears.
    pub async fn wait_for_event(&self, event: &str, timeout: Duration) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            if let Some(line) = self.events(event).into_iter().next() {
                return Ok(line);
            }
            if started.elapsed() > timeout {
                bail!("no {event:?} line within {timeout:?}; output:\n{}", self.text());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The JSON lines with `event` for `request_id`, once there is at least one: an invocation's
    /// end is logged before the extension answers the runtime, but the answer can reach a test
    /// before the log writer has put the line on stdout.
    pub async fn wait_for_request(
        &self,
        event: &str,
        request_id: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        self.wait_for_matching(event, timeout, |l| l["request_id"] == request_id).await
    }

    /// The JSON lines with `event` that `matches`, once there is at least one (as
    /// `wait_for_request`, for a line told apart by another field).
    pub async fn wait_for_matching(
        &self,
        event: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let started = Instant::now();
        loop {
            let lines: Vec<Value> = self.events(event).into_iter().filter(|l| matches(l)).collect();
            if !lines.is_empty() {
                return Ok(lines);
            }
            if started.elapsed() > timeout {
                bail!("no matching {event:?} line within {timeout:?}; output:\n{}", self.text());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The JSON lines with `event` once there are at least `count` of them. A line is logged
    /// before its answer but written by the extension's log writer within about 3 ms (and read
    /// by this harness on a task of its own): a test that counts lines after its answers waits.
    pub async fn wait_for_count(&self, event: &str, count: usize, timeout: Duration) -> anyhow::Result<Vec<Value>> {
        let started = Instant::now();
        loop {
            let lines = self.events(event);
            if lines.len() >= count {
                return Ok(lines);
            }
            if started.elapsed() > timeout {
                bail!("{} {event:?} lines of {count} within {timeout:?}; output:\n{}", lines.len(), self.text());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Appends the whole lines at the start of `chunk` (each ending with a newline) and returns
    /// how many bytes they took; what follows the last newline is a line still being written.
    fn push_lines(&self, chunk: &[u8], prefix: &[u8], echo: bool) -> usize {
        let mut start = 0;
        let Ok(mut lines) = self.0.lock() else { return chunk.len() };
        for end in memchr::memchr_iter(b'\n', chunk) {
            let line = &chunk[start..end];
            if echo {
                eprintln!("{}{}", String::from_utf8_lossy(prefix), String::from_utf8_lossy(line));
            }
            lines.push(prefix, line);
            start = end + 1;
        }
        start
    }

    /// Reads `from` to its end, keeping each line (with `prefix` before it), one lock per read.
    async fn read_lines(&self, mut from: impl tokio::io::AsyncRead + Unpin, prefix: &'static [u8]) {
        let echo = std::env::var_os("SCOPED_SECRETS_TEST_ECHO").is_some();
        // The pipe's own size at most: one read takes what the writer's batch put in it.
        let mut buffer = Vec::with_capacity(64 * 1024);
        loop {
            match from.read_buf(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let taken = self.push_lines(&buffer, prefix, echo);
                    buffer.drain(..taken);
                    if buffer.capacity() - buffer.len() < 16 * 1024 {
                        buffer.reserve(64 * 1024);
                    }
                }
            }
        }
        // A last line without its newline, as `lines()` would have read it.
        if !buffer.is_empty() {
            buffer.push(b'\n');
            self.push_lines(&buffer, prefix, echo);
        }
    }
}

/// A spawned process whose output is kept.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Its stdout and stderr lines.
    pub output: Output,
}

impl Process {
    fn spawn(
        program: &Path,
        args: &[String],
        dir: Option<&Path>,
        env: &HashMap<String, String>,
        discard_stdout: bool,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(program);
        command.args(args);
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        command
            .env_clear()
            .envs(env)
            .stdin(std::process::Stdio::null())
            .stdout(if discard_stdout { std::process::Stdio::null() } else { std::process::Stdio::piped() })
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("spawning {}", program.display()))?;
        let output = Output::default();
        if let Some(stdout) = child.stdout.take() {
            let output = output.clone();
            tokio::spawn(async move { output.read_lines(stdout, b"").await });
        }
        if let Some(stderr) = child.stderr.take() {
            let output = output.clone();
            tokio::spawn(async move { output.read_lines(stderr, b"stderr: ").await });
        }
        Ok(Self { child, output })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the process to exit, bounded.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .context("process did not exit in time")?
            .context("waiting for process")
    }

    /// Whether it has exited, and how.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends a signal (e.g. `libc::SIGTERM` = 15).
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
        }
    }
}

/// The Cargo target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Overrides the extension binary the environments run (see [`Program::extension`]).
pub const EXTENSION_BIN_ENV: &str = "SCOPED_SECRETS_EXTENSION_BIN";
/// Overrides the Rust example function's binary (see [`Program::rust_reader`]): the demo runs
/// the one it builds in its own fast-compiling profile.
pub const RUST_READER_BIN_ENV: &str = "SCOPED_SECRETS_RUST_READER_BIN";

/// A process the environment starts: the extension, or the function's runtime (the `bootstrap`
/// of a custom runtime, or a managed runtime's interface client with the handler).
#[derive(Debug, Clone)]
pub struct Program {
    /// The executable (a bare name is looked up on `PATH`).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its working directory (a managed runtime's task root), if not inherited.
    pub dir: Option<PathBuf>,
    /// Variables on top of the environment's (e.g. `LAMBDA_TASK_ROOT`).
    pub env: Vec<(String, String)>,
    /// What to do when the executable is missing.
    pub hint: &'static str,
    /// Send its stdout to `/dev/null` instead of keeping it (the benchmark's measure of what
    /// writing the log costs); [`Output`] then holds only stderr.
    pub discard_stdout: bool,
    /// A managed runtime (its interface client): Lambda starts it through
    /// `AWS_LAMBDA_EXEC_WRAPPER` when that is set. A custom runtime's `bootstrap` is started as
    /// it is (Lambda runs no wrapper on OS-only runtimes).
    pub lambda_runs_wrapper: bool,
}

impl Program {
    /// `program` with no arguments, working directory or variables of its own.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            dir: None,
            env: Vec::new(),
            hint: "",
            discard_stdout: false,
            lambda_runs_wrapper: false,
        }
    }

    /// This program started through `wrapper`, as Lambda starts a wrapped runtime: the wrapper
    /// with the runtime's command line as its arguments.
    pub fn through(&self, wrapper: &Path) -> Self {
        let mut args = vec![self.program.display().to_string()];
        args.extend(self.args.iter().cloned());
        Self { program: wrapper.to_path_buf(), args, ..self.clone() }
    }

    /// The extension: `$SCOPED_SECRETS_EXTENSION_BIN`, else the x86_64 musl build that
    /// `layer/build.sh` puts in the layer zip, so the suite tests what ships.
    pub fn extension() -> Self {
        let program = std::env::var_os(EXTENSION_BIN_ENV).map_or_else(
            || target_dir().join("x86_64-unknown-linux-musl").join("release").join("scoped-secrets"),
            PathBuf::from,
        );
        Self {
            hint: "build it with `layer/build.sh x86_64` (./tests/run.sh does), \
                   or point SCOPED_SECRETS_EXTENSION_BIN at another build",
            ..Self::new(program)
        }
    }

    /// The Rust example (`examples/rust-reader`, `lambda_runtime`): `$SCOPED_SECRETS_RUST_READER_BIN`,
    /// else its release build.
    pub fn rust_reader() -> Self {
        let program = std::env::var_os(RUST_READER_BIN_ENV)
            .map_or_else(|| target_dir().join("release").join("rust-reader"), PathBuf::from);
        Self {
            hint: "build it with `cargo build --release -p example-rust-reader` (./tests/run.sh does), \
                   or point SCOPED_SECRETS_RUST_READER_BIN at another build",
            ..Self::new(program)
        }
    }

    /// The Rust SDK example (`examples/rust-sdk-reader`: plain `aws-sdk-secretsmanager` calls),
    /// its release build.
    pub fn rust_sdk_reader() -> Self {
        Self {
            hint: "build it with `cargo build --release -p example-rust-sdk-reader` (./tests/run.sh does)",
            ..Self::new(target_dir().join("release").join("rust-sdk-reader"))
        }
    }

    /// A managed runtime's interface client running `handler` from `task_root`:
    /// `program args… handler`, started in `task_root` with `LAMBDA_TASK_ROOT` and `_HANDLER`
    /// set, as Lambda starts it.
    pub fn interface_client(program: PathBuf, args: &[&str], task_root: PathBuf, handler: &str) -> Self {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.push(handler.to_owned());
        Self {
            args: all,
            env: vec![
                ("LAMBDA_TASK_ROOT".to_owned(), task_root.display().to_string()),
                ("_HANDLER".to_owned(), handler.to_owned()),
            ],
            dir: Some(task_root),
            hint: "./tests/prepare.sh installs the examples' runtime interface clients",
            lambda_runs_wrapper: true,
            ..Self::new(program)
        }
    }

    fn spawn(&self, env: &HashMap<String, String>) -> anyhow::Result<Process> {
        if self.program.components().count() > 1 && !self.program.is_file() {
            bail!("{} is missing: {}", self.program.display(), self.hint);
        }
        let mut env = env.clone();
        env.extend(self.env.iter().cloned());
        Process::spawn(&self.program, &self.args, self.dir.as_deref(), &env, self.discard_stdout)
    }
}

/// What the simulated platform does differently from the simulator's on-demand default.
#[derive(Debug, Clone, Default)]
pub struct Platform {
    /// Lambda Managed Instances: refuse INVOKE registration and telemetry schemas other than
    /// `2025-01-29`.
    pub managed_instances: bool,
    /// Tenant isolation mode: the `tenantId` added to every `platform.start` record, and the
    /// `Lambda-Runtime-Aws-Tenant-Id` of every `/next` answer.
    pub tenant_id: Option<String>,
    /// Serve the Runtime API from the harness's own ([`crate::runtime_api`]): invocations run
    /// concurrently, one per runtime polling (Managed Instances).
    pub concurrent_runtime: bool,
    /// Keep the bytes of every event sent on `/next` and every result received.
    pub record_payloads: bool,
    /// Hold each INVOKE event this long before the extension gets it (the runtime gets its
    /// event at once): the extension learning of an invocation after its function, as it
    /// can in Lambda, made certain instead of left to scheduling.
    pub extension_invoke_delay: Option<Duration>,
    /// Hold a telemetry batch holding `platform.initRuntimeDone` this long (Lambda buffers
    /// telemetry, so the end of INIT can reach the extension after the first INVOKE).
    pub init_done_delay: Option<Duration>,
}

/// The telemetry schema Lambda Managed Instances requires.
pub const MANAGED_INSTANCES_SCHEMA: &str = "2025-01-29";

/// How to start an environment.
#[derive(Debug, Clone)]
pub struct Options {
    /// The platform's mode-specific behaviour.
    pub platform: Platform,
    /// Variables for both processes (the function's configuration, the execution role's credentials).
    pub env: Vec<(String, String)>,
    /// Variables for the extension only.
    pub extension_env: Vec<(String, String)>,
    /// The function's timeout.
    pub invocation_timeout: Duration,
    /// Start the function (false: only the extension, e.g. to test requests during INIT).
    pub start_function: bool,
    /// The extension process ([`Program::extension`]: the x86_64 layer binary).
    pub extension: Program,
    /// The function's runtime process ([`Program::rust_reader`] unless a test picks another).
    pub runtime: Program,
    /// How many runtime processes to start (more than one: concurrent invocations, with
    /// [`Platform::concurrent_runtime`]).
    pub runtime_processes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            platform: Platform::default(),
            env: Vec::new(),
            extension_env: Vec::new(),
            invocation_timeout: Duration::from_secs(5),
            start_function: true,
            extension: Program::extension(),
            runtime: Program::rust_reader(),
            runtime_processes: 1,
        }
    }
}

/// The function's `AWS_LAMBDA_EXEC_WRAPPER` as it runs here: `/opt/NAME` is the layer's file,
/// `layer/NAME` in this repository.
fn local_wrapper(configured: &str) -> anyhow::Result<PathBuf> {
    let path = match configured.strip_prefix("/opt/") {
        Some(name) => workspace_root().join("layer").join(name),
        None => PathBuf::from(configured),
    };
    anyhow::ensure!(path.is_file(), "AWS_LAMBDA_EXEC_WRAPPER {configured}: no such file here ({})", path.display());
    Ok(path)
}

/// A directory of its own for one environment (its `TMPDIR`).
fn environment_dir() -> anyhow::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = target_dir().join("tmp").join(format!("lambda-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    Ok(dir)
}

/// The outcome of an invocation.
#[derive(Debug, Clone)]
pub struct Invoked {
    /// The request id.
    pub request_id: String,
    /// Success, error or timeout.
    pub status: InvocationStatus,
    /// The function's answer.
    pub payload: Value,
    /// When INVOKE was enqueued.
    pub enqueued_at: Instant,
    /// From enqueue to the function's response.
    pub duration: Duration,
    /// From the function's response to the extension's next `/event/next`: what the
    /// runtimeDone wait (telemetry buffering + ending the scope) adds to the invocation.
    pub extension_after_response: Duration,
    /// The same, measured where Lambda would: from Lambda's acceptance of the function's
    /// result to the arrival of the extension's next `/event/next`, both at the front proxy.
    pub post_response: Option<Duration>,
}

/// A running local Lambda environment: the simulator, its front proxy, the extension and the
/// function.
pub struct Environment {
    simulator: Option<Simulator>,
    front: FrontProxy,
    /// The extension process.
    pub extension: Process,
    /// The function process, once started (the first, when several run).
    pub function: Option<Process>,
    /// Further runtime processes ([`Options::runtime_processes`]).
    pub more_functions: Vec<Process>,
    env: HashMap<String, String>,
    runtime: Program,
    runtime_processes: usize,
    /// Where the extension's Runtime API proxy listens, if it does.
    runtime_proxy_port: Option<u16>,
    /// This environment's `TMPDIR`.
    tmp_dir: PathBuf,
    /// The extension's stdout goes to `/dev/null`: its lines cannot be waited for.
    extension_quiet: bool,
    /// When the extension process was spawned.
    pub spawned_at: Instant,
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment").field("runtime_api", &self.front.address).finish_non_exhaustive()
    }
}

/// INIT did not complete.
#[derive(Debug)]
pub struct InitFailed {
    /// What the extension reported, if it reported anything.
    pub reported: Option<ReportedError>,
    /// The extension's exit status, if it exited.
    pub exit_status: Option<ExitStatus>,
    /// The extension's output.
    pub output: Output,
}

impl Environment {
    /// Starts the extension and, once it is registered and polling, the function.
    ///
    /// # Errors
    /// `Ok(Err(InitFailed))` when INIT fails the way Lambda fails it (an `init/error`, or the
    /// extension exiting before it polls); `Err` for harness problems.
    pub async fn start(options: Options) -> anyhow::Result<Result<Environment, InitFailed>> {
        let simulator = Simulator::builder()
            .function_name("scoped-secrets-example")
            .invocation_timeout(options.invocation_timeout)
            .shutdown_timeout(Duration::from_millis(2_000))
            .extension_ready_timeout(options.invocation_timeout + Duration::from_secs(2))
            .account_id(crate::ministack::ACCOUNT_ID)
            .build()
            .await
            .context("starting lambda-simulator")?;
        let front = FrontProxy::start(simulator.addr().to_string(), options.platform.clone()).await?;
        let mut env: HashMap<String, String> = simulator.lambda_env_vars();
        env.insert("AWS_LAMBDA_RUNTIME_API".into(), front.address.clone());
        env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
        env.insert("AWS_EC2_METADATA_DISABLED".into(), "true".into());
        let tmp_dir = environment_dir()?;
        env.insert("TMPDIR".into(), tmp_dir.display().to_string());
        env.extend(options.env.iter().cloned());
        // Tests run in parallel: each extension's proxy gets a free port of its own.
        if !env.contains_key("SCOPED_SECRETS_RUNTIME_PROXY_PORT") {
            env.insert("SCOPED_SECRETS_RUNTIME_PROXY_PORT".into(), free_port()?.to_string());
        }
        let runtime_proxy_port = env.get("SCOPED_SECRETS_RUNTIME_PROXY_PORT").and_then(|p| p.trim().parse().ok());
        if let Some(wrapper) = env.get("AWS_LAMBDA_EXEC_WRAPPER").cloned() {
            env.insert("AWS_LAMBDA_EXEC_WRAPPER".into(), local_wrapper(&wrapper)?.display().to_string());
        }
        let mut extension_env = env.clone();
        extension_env.extend(options.extension_env.iter().cloned());
        let spawned_at = Instant::now();
        let mut extension = options.extension.spawn(&extension_env)?;

        // Lambda's INIT: the extension registers and polls, or reports init/error, or dies.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(reported) = front.reported().into_iter().find(|r| r.path == "init/error") {
                let exit_status = extension.wait(Duration::from_secs(5)).await.ok();
                simulator.shutdown().await;
                return Ok(Err(InitFailed { reported: Some(reported), exit_status, output: extension.output.clone() }));
            }
            if let Some(status) = extension.try_status() {
                // Give the front proxy a moment to record a report sent just before exiting.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let reported = front.reported().into_iter().find(|r| r.path == "init/error");
                simulator.shutdown().await;
                return Ok(Err(InitFailed { reported, exit_status: Some(status), output: extension.output.clone() }));
            }
            let mut polled = false;
            for registered in simulator.get_registered_extensions().await {
                polled |= simulator.first_next_poll_at(&registered.id).await.is_some();
            }
            if polled {
                break;
            }
            if Instant::now() > deadline {
                bail!("the extension neither polled nor failed within 10 s; output:\n{}", extension.output.text());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut environment = Environment {
            simulator: Some(simulator),
            front,
            extension,
            function: None,
            more_functions: Vec::new(),
            env,
            runtime: options.runtime,
            runtime_processes: options.runtime_processes.max(1),
            runtime_proxy_port,
            tmp_dir,
            extension_quiet: options.extension.discard_stdout,
            spawned_at,
        };
        if options.start_function {
            environment.start_function().await?;
        }
        Ok(Ok(environment))
    }

    /// Starts the function's runtime process and waits for its first `/invocation/next` only,
    /// not for the extension to learn that INIT is over: an invocation enqueued now reaches a
    /// runtime whose INIT the extension may still think is running (a cold start's first
    /// invocation).
    pub async fn start_function_unsettled(&mut self) -> anyhow::Result<()> {
        let function = self.runtime.spawn(&self.env)?;
        self.function = Some(function);
        let simulator = self.simulator()?;
        simulator
            .wait_for(|| async { simulator.is_initialized().await }, Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!("the function did not initialise: {e}"))
    }

    /// Starts the function's runtime process ([`Options::runtime`]; through the function's
    /// `AWS_LAMBDA_EXEC_WRAPPER` if Lambda would) and waits for its first `/invocation/next`.
    pub async fn start_function(&mut self) -> anyhow::Result<()> {
        let runtime = match self.env.get("AWS_LAMBDA_EXEC_WRAPPER") {
            Some(wrapper) if self.runtime.lambda_runs_wrapper => self.runtime.through(Path::new(wrapper)),
            _ => self.runtime.clone(),
        };
        for n in 0..self.runtime_processes {
            let process = runtime.spawn(&self.env)?;
            if n == 0 {
                self.function = Some(process);
            } else {
                self.more_functions.push(process);
            }
        }
        if let Some(concurrent) = self.front.state.runtime.clone() {
            let (wanted, started) = (self.runtime_processes, Instant::now());
            while concurrent.polls() < wanted {
                anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "the runtimes did not poll within 10 s");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            return Ok(());
        }
        let simulator = self.simulator()?;
        simulator
            .wait_for(|| async { simulator.is_initialized().await }, Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!("the function did not initialise: {e}"))?;
        // The extension ends its init session when telemetry reports the runtime's INIT done;
        // wait for that, so a test's first INVOKE does not race it (or, with no output to read,
        // give it a moment). Managed Instances have no init session.
        if self.env.get("AWS_LAMBDA_INITIALIZATION_TYPE").is_some_and(|t| t == "lambda-managed-instances") {
            return Ok(());
        }
        if self.extension_quiet {
            tokio::time::sleep(Duration::from_millis(200)).await;
        } else {
            self.extension.output.wait_for_event("init_ended", Duration::from_secs(3)).await?;
        }
        Ok(())
    }

    fn simulator(&self) -> anyhow::Result<&Simulator> {
        self.simulator.as_ref().context("the environment was shut down")
    }

    /// The address the processes use as `AWS_LAMBDA_RUNTIME_API`.
    pub fn runtime_api(&self) -> &str {
        &self.front.address
    }

    /// The extension's Runtime API proxy (`127.0.0.1:PORT`), if it has one.
    pub fn runtime_proxy(&self) -> Option<String> {
        self.runtime_proxy_port.map(|port| format!("127.0.0.1:{port}"))
    }

    /// The function's environment (the simulator's Lambda variables and the test's).
    pub fn function_env(&self) -> &HashMap<String, String> {
        &self.env
    }

    /// From now on, telemetry batches reach the extension `delay` after the simulator sent
    /// them (in order).
    pub fn set_telemetry_delay(&self, delay: Duration) {
        if let Ok(mut current) = self.front.state.telemetry_delay.lock() {
            *current = delay;
        }
    }

    /// Responses streamed to the Runtime API so far, as Lambda received them.
    pub fn streamed_responses(&self) -> Vec<StreamedResponse> {
        self.front.state.streams.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The exact bytes of the event `request_id`'s `/next` answer carried
    /// ([`Platform::record_payloads`]).
    pub fn event_sent(&self, request_id: &str) -> Option<Bytes> {
        self.front.state.events_sent.lock().ok()?.get(request_id).cloned()
    }

    /// The exact bytes of `request_id`'s result as Lambda received them, and its path's last
    /// segment (`response` or `error`) ([`Platform::record_payloads`]).
    pub fn result_received(&self, request_id: &str) -> Option<(String, Bytes)> {
        self.front.state.results_received.lock().ok()?.get(request_id).cloned()
    }

    /// Every `init/error` a runtime reported to the Runtime API: its error type header and body.
    pub fn runtime_init_errors(&self) -> Vec<(String, Bytes)> {
        self.front.state.runtime_init_errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The harness's own Runtime API ([`Platform::concurrent_runtime`]): queues an invocation.
    pub fn enqueue_concurrent(&self, payload: &Value, timeout: Duration) -> anyhow::Result<String> {
        let runtime = self.front.state.runtime.as_ref().context("not a concurrent runtime")?;
        Ok(runtime.enqueue(payload, timeout))
    }

    /// The harness's own Runtime API: `request_id`'s result, waiting up to `timeout`.
    pub async fn concurrent_result(&self, request_id: &str, timeout: Duration) -> anyhow::Result<Outcome> {
        let runtime = self.front.state.runtime.as_ref().context("not a concurrent runtime")?;
        runtime.result(request_id, timeout).await
    }

    /// What the extension reported to `init/error` or `exit/error`.
    pub fn reported(&self) -> Vec<ReportedError> {
        self.front.reported()
    }

    /// The bodies of the extension's registrations, as sent (`{"events": [...]}`).
    pub fn registrations(&self) -> Vec<Value> {
        self.front.state.registrations.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The bodies of the extension's Telemetry API subscriptions, as sent.
    pub fn telemetry_subscriptions(&self) -> Vec<Value> {
        self.front.state.subscriptions.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// From now on, `platform.start` records carry `tenant` (`None`: no `tenantId`).
    pub fn set_tenant(&self, tenant: Option<&str>) {
        if let Ok(mut current) = self.front.state.tenant_id.lock() {
            *current = tenant.map(str::to_owned);
        }
    }

    /// Delivers one telemetry batch to the extension's listener, as Lambda would (records the
    /// simulator never makes). Returns the listener's status.
    pub async fn send_telemetry(&self, events: Vec<Value>) -> anyhow::Result<u16> {
        let destination = self.front.state.destination().context("the extension has not subscribed to telemetry")?;
        let body = Bytes::from(serde_json::to_vec(&events)?);
        let request = hyper::Request::post(destination)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let response = self.front.state.client.request(request).await?;
        Ok(response.status().as_u16())
    }

    /// The extension's telemetry listener (`host:port` of the destination it subscribed).
    pub fn telemetry_address(&self) -> Option<String> {
        let destination = self.front.state.destination()?;
        let rest = destination.strip_prefix("http://")?;
        Some(rest.split('/').next()?.to_owned())
    }

    /// POSTs `body` to the extension's telemetry listener at `target` (a path of the caller's
    /// choosing, not the subscribed one): what any local process, or an SSRF, could send.
    /// Returns the status (0 if the connection was closed without one).
    pub async fn post_to_telemetry_listener(&self, target: &str, body: Bytes) -> anyhow::Result<u16> {
        let address = self.telemetry_address().context("the extension has not subscribed to telemetry")?;
        let request = hyper::Request::post(format!("http://{address}{target}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        Ok(self.front.state.client.request(request).await.map_or(0, |r| r.status().as_u16()))
    }

    /// Enqueues an invocation without waiting for it.
    pub async fn enqueue(&self, payload: Value, timeout: Duration) -> anyhow::Result<(String, Instant)> {
        let invocation = InvocationBuilder::new()
            .payload(payload)
            .timeout_ms(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
            .build()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let enqueued_at = Instant::now();
        let request_id = self.simulator()?.enqueue(invocation).await;
        Ok((request_id, enqueued_at))
    }

    /// Waits for an enqueued invocation to complete and for the extension to be ready again.
    pub async fn complete(&self, request_id: &str, enqueued_at: Instant, timeout: Duration) -> anyhow::Result<Invoked> {
        let simulator = self.simulator()?;
        let state = simulator
            .wait_for_invocation_complete(request_id, timeout + Duration::from_secs(2))
            .await
            .map_err(|e| anyhow::anyhow!("invocation {request_id} did not complete: {e}"))?;
        let responded = Instant::now();
        let duration = responded - enqueued_at;
        simulator
            .wait_for_extensions_ready(request_id, timeout + Duration::from_secs(2))
            .await
            .map_err(|e| anyhow::anyhow!("the extension did not finish {request_id}: {e}"))?;
        let extension_after_response = responded.elapsed();
        let payload = state.response.map(|r| r.payload).unwrap_or(Value::Null);
        Ok(Invoked {
            request_id: request_id.to_owned(),
            status: state.status,
            payload,
            enqueued_at,
            duration,
            extension_after_response,
            post_response: self.front.state.post_response(request_id),
        })
    }

    /// Invokes the function and waits for the invocation and the extension to finish.
    pub async fn invoke(&self, payload: Value, timeout: Duration) -> anyhow::Result<Invoked> {
        let (request_id, enqueued_at) = self.enqueue(payload, timeout).await?;
        self.complete(&request_id, enqueued_at, timeout).await
    }

    /// SHUTDOWN (spindown) with Lambda's 2,000 ms budget. Returns the extension's exit status
    /// and how long it took from the event to its exit.
    pub async fn shut_down(&mut self) -> anyhow::Result<(ExitStatus, Duration)> {
        self.shut_down_for(ShutdownReason::Spindown).await
    }

    /// SHUTDOWN with `reason` (Lambda's 2,000 ms budget).
    pub async fn shut_down_for(&mut self, reason: ShutdownReason) -> anyhow::Result<(ExitStatus, Duration)> {
        let (status, elapsed, _) = self.shut_down_timed(reason).await?;
        Ok((status, elapsed))
    }

    /// SHUTDOWN with `reason`. Returns the exit status, the time from asking the simulator to
    /// the extension's exit (which includes the simulator's telemetry flush), and the time from
    /// the SHUTDOWN event leaving for the extension to its exit, if the event was seen.
    pub async fn shut_down_timed(
        &mut self,
        reason: ShutdownReason,
    ) -> anyhow::Result<(ExitStatus, Duration, Option<Duration>)> {
        let simulator = self.simulator.take().context("already shut down")?;
        let started = Instant::now();
        let shutdown = tokio::spawn(simulator.graceful_shutdown(reason));
        let status = self.extension.wait(Duration::from_secs(5)).await?;
        let exited = Instant::now();
        let elapsed = exited - started;
        let sent = self.front.state.shutdown_sent.lock().ok().and_then(|sent| *sent);
        for function in self.function.iter_mut().chain(self.more_functions.iter_mut()) {
            let _ = function.child.start_kill();
        }
        let _ = shutdown.await;
        Ok((status, elapsed, sent.map(|sent| exited.saturating_duration_since(sent))))
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp_dir);
    }
}

/// A response streamed to the Runtime API, as Lambda received it.
#[derive(Debug, Clone)]
pub struct StreamedResponse {
    /// The invocation.
    pub request_id: String,
    /// The request's headers (`Lambda-Runtime-Function-Response-Mode`, `Trailer`, …).
    pub headers: hyper::HeaderMap,
    /// Each data frame and when it arrived.
    pub chunks: Vec<(Instant, Bytes)>,
    /// The trailers, if any came.
    pub trailers: Option<hyper::HeaderMap>,
}

/// The front proxy before the simulator: records `init/error` and `exit/error`, registrations
/// and telemetry subscriptions, and when the SHUTDOWN event went out; applies the platform's
/// mode, relays telemetry, forwards the rest.
struct FrontProxy {
    address: String,
    state: Arc<FrontState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct FrontState {
    upstream: String,
    platform: Platform,
    reported: Mutex<Vec<ReportedError>>,
    registrations: Mutex<Vec<Value>>,
    subscriptions: Mutex<Vec<Value>>,
    tenant_id: Mutex<Option<String>>,
    /// When the SHUTDOWN event went out to the extension.
    shutdown_sent: Mutex<Option<Instant>>,
    /// The extension's own telemetry listener.
    extension_destination: Mutex<Option<String>>,
    /// The relay the simulator delivers to instead.
    relay: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// How late telemetry batches reach the extension.
    telemetry_delay: Mutex<Duration>,
    /// Delayed batches, in order, with when each is due.
    telemetry_queue: tokio::sync::mpsc::UnboundedSender<(tokio::time::Instant, Bytes)>,
    /// When Lambda accepted each invocation's result.
    results_accepted: Mutex<HashMap<String, Instant>>,
    /// When each `/event/next` request arrived.
    event_polls: Mutex<Vec<Instant>>,
    streams: Mutex<Vec<StreamedResponse>>,
    events_sent: Mutex<HashMap<String, Bytes>>,
    results_received: Mutex<HashMap<String, (String, Bytes)>>,
    runtime_init_errors: Mutex<Vec<(String, Bytes)>>,
    /// The harness's own Runtime API, when it serves one.
    runtime: Option<Arc<ConcurrentRuntime>>,
}

impl FrontState {
    fn destination(&self) -> Option<String> {
        self.extension_destination.lock().ok().and_then(|d| d.clone())
    }

    /// From Lambda's acceptance of `request_id`'s result to the next `/event/next` after it.
    fn post_response(&self, request_id: &str) -> Option<Duration> {
        let accepted = *self.results_accepted.lock().ok()?.get(request_id)?;
        let polls = self.event_polls.lock().ok()?;
        polls.iter().find(|at| **at >= accepted).map(|at| at.duration_since(accepted))
    }

    /// Receives a streamed response frame by frame, recording each; returns the whole body.
    async fn receive_stream(&self, request_id: &str, headers: &hyper::HeaderMap, mut body: Incoming) -> Bytes {
        let mut record = StreamedResponse {
            request_id: request_id.to_owned(),
            headers: headers.clone(),
            chunks: Vec::new(),
            trailers: None,
        };
        let mut whole = BytesMut::new();
        while let Some(Ok(frame)) = body.frame().await {
            match frame.into_data() {
                Ok(data) => {
                    whole.extend_from_slice(&data);
                    record.chunks.push((Instant::now(), data));
                }
                Err(frame) => record.trailers = frame.into_trailers().ok(),
            }
        }
        if let Ok(mut streams) = self.streams.lock() {
            streams.push(record);
        }
        whole.freeze()
    }
}

/// The invocation and result kind of a Runtime API result path.
fn result_path(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix("/2018-06-01/runtime/invocation/")?
        .rsplit_once('/')
        .filter(|(_, k)| *k == "response" || *k == "error")
}

impl Drop for FrontProxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl FrontProxy {
    async fn start(upstream: String, platform: Platform) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let relay_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let relay = format!("http://{}/telemetry", relay_listener.local_addr()?);
        let tenant_id = Mutex::new(platform.tenant_id.clone());
        let (telemetry_queue, mut delayed) = tokio::sync::mpsc::unbounded_channel();
        let runtime = platform.concurrent_runtime.then(|| Arc::new(ConcurrentRuntime::default()));
        let state = Arc::new(FrontState {
            upstream,
            platform,
            reported: Mutex::default(),
            registrations: Mutex::default(),
            subscriptions: Mutex::default(),
            tenant_id,
            shutdown_sent: Mutex::default(),
            extension_destination: Mutex::default(),
            relay,
            client: Client::builder(TokioExecutor::new()).build_http(),
            telemetry_delay: Mutex::new(Duration::ZERO),
            telemetry_queue,
            results_accepted: Mutex::default(),
            event_polls: Mutex::default(),
            streams: Mutex::default(),
            events_sent: Mutex::default(),
            results_received: Mutex::default(),
            runtime_init_errors: Mutex::default(),
            runtime,
        });
        let front =
            serve_http(listener, Arc::clone(&state), |request, state| async move { forward(request, &state).await });
        let relay = serve_http(relay_listener, Arc::clone(&state), |request, state| async move {
            relay_telemetry(request, &state).await
        });
        let late = Arc::clone(&state);
        let deliver_late = tokio::spawn(async move {
            while let Some((due, body)) = delayed.recv().await {
                tokio::time::sleep_until(due).await;
                let _ = deliver_telemetry(&late, body).await;
            }
        });
        Ok(Self { address, state, tasks: vec![front, relay, deliver_late] })
    }

    fn reported(&self) -> Vec<ReportedError> {
        self.state.reported.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn serve_http<H, F>(
    listener: tokio::net::TcpListener,
    state: Arc<FrontState>,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    H: Fn(hyper::Request<Incoming>, Arc<FrontState>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = hyper::Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (state, handler) = (Arc::clone(&state), handler.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let (state, handler) = (Arc::clone(&state), handler.clone());
                    async move { Ok::<_, Infallible>(handler(request, state).await) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

fn lambda_error(status: hyper::StatusCode, error_type: &str, message: &str) -> hyper::Response<Full<Bytes>> {
    let body = serde_json::json!({ "errorMessage": message, "errorType": error_type }).to_string();
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

async fn forward(request: hyper::Request<Incoming>, state: &FrontState) -> hyper::Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    if let Some(runtime) = &state.runtime
        && path.starts_with("/2018-06-01/runtime/")
    {
        return runtime.handle(request).await;
    }
    if path == "/2020-01-01/extension/event/next"
        && let Ok(mut polls) = state.event_polls.lock()
    {
        polls.push(Instant::now());
    }
    let (mut parts, incoming) = request.into_parts();
    let result = result_path(&path).map(|(id, kind)| (id.to_owned(), kind.to_owned()));
    let streamed =
        parts.headers.get("lambda-runtime-function-response-mode").is_some_and(|mode| mode.as_bytes() == b"streaming");
    let mut body = match &result {
        Some((request_id, _)) if streamed => {
            let whole = state.receive_stream(request_id, &parts.headers, incoming).await;
            // The simulator has no streaming: it gets the whole body, in one piece.
            for name in ["transfer-encoding", "trailer", "lambda-runtime-function-response-mode"] {
                parts.headers.remove(name);
            }
            whole
        }
        _ => incoming.collect().await.map(|b| b.to_bytes()).unwrap_or_default(),
    };
    if let Some((request_id, kind)) = &result
        && state.platform.record_payloads
        && let Ok(mut received) = state.results_received.lock()
    {
        received.insert(request_id.clone(), (kind.clone(), body.clone()));
    }
    if path == "/2018-06-01/runtime/init/error" {
        let error_type = parts
            .headers
            .get("lambda-runtime-function-error-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if let Ok(mut errors) = state.runtime_init_errors.lock() {
            errors.push((error_type, body.clone()));
        }
    }
    for report in ["init/error", "exit/error"] {
        if path == format!("/2020-01-01/extension/{report}") {
            let error_type = parts
                .headers
                .get("Lambda-Extension-Function-Error-Type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if let Ok(mut reported) = state.reported.lock() {
                reported.push(ReportedError { path: report.to_owned(), error_type, body });
            }
            let mut response = hyper::Response::new(Full::new(Bytes::from_static(br#"{"status":"OK"}"#)));
            *response.status_mut() = hyper::StatusCode::ACCEPTED;
            return response;
        }
    }
    if path == "/2018-06-01/runtime/restore/next" {
        // SnapStart's runtime hooks API (the simulator has none): a runtime in snap-start mode
        // asks for its restore after INIT; the snapshot is "restored" at once.
        return status(hyper::StatusCode::OK);
    }
    if path == "/2020-01-01/extension/register" {
        let registration: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if let Ok(mut registrations) = state.registrations.lock() {
            registrations.push(registration.clone());
        }
        let asks_invoke = registration["events"].as_array().is_some_and(|e| e.iter().any(|e| e == "INVOKE"));
        if state.platform.managed_instances && asks_invoke {
            return lambda_error(
                hyper::StatusCode::BAD_REQUEST,
                "Extension.InvalidEventType",
                "Lambda Managed Instances: external extensions may register only SHUTDOWN.",
            );
        }
    }
    if path == "/2022-07-01/telemetry" {
        let mut subscription: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if let Ok(mut subscriptions) = state.subscriptions.lock() {
            subscriptions.push(subscription.clone());
        }
        if state.platform.managed_instances && subscription["schemaVersion"] != MANAGED_INSTANCES_SCHEMA {
            return lambda_error(
                hyper::StatusCode::BAD_REQUEST,
                "ValidationError",
                "Lambda Managed Instances requires telemetry schema 2025-01-29.",
            );
        }
        if let Some(uri) = subscription["destination"]["URI"].as_str()
            && let Ok(mut destination) = state.extension_destination.lock()
        {
            *destination = Some(uri.to_owned());
        }
        subscription["destination"]["URI"] = Value::String(state.relay.clone());
        body = Bytes::from(subscription.to_string());
    }
    let uri = format!("http://{}{}", state.upstream, parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    let mut outgoing = hyper::Request::builder().method(parts.method).uri(uri);
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST && name != hyper::header::CONTENT_LENGTH {
            outgoing = outgoing.header(name, value);
        }
    }
    let Ok(outgoing) = outgoing.body(Full::new(body)) else {
        return status(hyper::StatusCode::BAD_REQUEST);
    };
    match state.client.request(outgoing).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            if path == "/2018-06-01/runtime/invocation/next" && parts.status.is_success() {
                // Lambda sends the event as JSON; the simulator labels it text/plain, and
                // awslambdaric then hands the handler raw bytes instead of the parsed event.
                parts
                    .headers
                    .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
                // Tenant isolation mode: Lambda names the invocation's tenant (the simulator
                // has no tenants).
                let tenant = state.tenant_id.lock().ok().and_then(|t| t.clone());
                if let Some(tenant) = tenant.and_then(|t| hyper::header::HeaderValue::from_str(&t).ok()) {
                    parts.headers.insert("lambda-runtime-aws-tenant-id", tenant);
                }
                let request_id = parts.headers.get("lambda-runtime-aws-request-id").and_then(|v| v.to_str().ok());
                if state.platform.record_payloads
                    && let (Some(request_id), Ok(mut sent)) = (request_id, state.events_sent.lock())
                {
                    sent.insert(request_id.to_owned(), body.clone());
                }
            }
            if let Some((request_id, _)) = &result
                && parts.status.is_success()
                && let Ok(mut accepted) = state.results_accepted.lock()
            {
                accepted.insert(request_id.clone(), Instant::now());
            }
            let event_type = (path == "/2020-01-01/extension/event/next")
                .then(|| serde_json::from_slice::<Value>(&body).ok())
                .flatten()
                .map(|event| event["eventType"].clone());
            if event_type.as_ref().is_some_and(|t| t == "SHUTDOWN")
                && let Ok(mut sent) = state.shutdown_sent.lock()
            {
                *sent = Some(Instant::now());
            }
            if let (Some(delay), Some(true)) =
                (state.platform.extension_invoke_delay, event_type.as_ref().map(|t| t == "INVOKE"))
            {
                tokio::time::sleep(delay).await;
            }
            hyper::Response::from_parts(parts, Full::new(body))
        }
        Err(_) => status(hyper::StatusCode::BAD_GATEWAY),
    }
}

/// The telemetry relay: the simulator's batches, with the platform's mode applied, to the
/// extension's listener.
async fn relay_telemetry(request: hyper::Request<Incoming>, state: &FrontState) -> hyper::Response<Full<Bytes>> {
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if state.destination().is_none() {
        return status(hyper::StatusCode::SERVICE_UNAVAILABLE);
    }
    if let Some(delay) = state.platform.init_done_delay
        && serde_json::from_slice::<Vec<Value>>(&body)
            .is_ok_and(|events| events.iter().any(|e| e["type"] == "platform.initRuntimeDone"))
    {
        tokio::time::sleep(delay).await;
    }
    let tenant = state.tenant_id.lock().ok().and_then(|t| t.clone());
    let body = match (serde_json::from_slice::<Vec<Value>>(&body), tenant) {
        (Ok(mut events), Some(tenant)) => {
            for event in &mut events {
                if event["type"] == "platform.start" && event["record"].is_object() {
                    event["record"]["tenantId"] = Value::String(tenant.clone());
                }
            }
            Bytes::from(serde_json::to_vec(&events).unwrap_or_default())
        }
        _ => body,
    };
    let delay = state.telemetry_delay.lock().map(|d| *d).unwrap_or_default();
    if !delay.is_zero() {
        // Accepted now, delivered later, in order: the simulator's sender is not held up.
        let _ = state.telemetry_queue.send((tokio::time::Instant::now() + delay, body));
        return status(hyper::StatusCode::OK);
    }
    status(deliver_telemetry(state, body).await)
}

/// Posts one batch to the extension's listener. Returns its status (502 if unreachable).
async fn deliver_telemetry(state: &FrontState, body: Bytes) -> hyper::StatusCode {
    let Some(destination) = state.destination() else { return hyper::StatusCode::SERVICE_UNAVAILABLE };
    let Ok(request) =
        hyper::Request::post(destination).header(hyper::header::CONTENT_TYPE, "application/json").body(Full::new(body))
    else {
        return hyper::StatusCode::BAD_REQUEST;
    };
    match state.client.request(request).await {
        Ok(response) => response.status(),
        Err(_) => hyper::StatusCode::BAD_GATEWAY,
    }
}

fn status(code: hyper::StatusCode) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

/// A plain HTTP/1.1 GET to the extension's local API, as a function (or an attacker inside it)
/// would send it. Returns status and parsed JSON body.
pub async fn local_get(port: u16, target: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, Value)> {
    let client: Client<HttpConnector, http_body_util::Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut request = hyper::Request::get(format!("http://127.0.0.1:{port}{target}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client.request(request.body(http_body_util::Empty::new())?).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// Where `needles` appear in the readable memory of process `pid` (as root: `/proc/PID/maps` +
/// `/proc/PID/mem`; works on a non-dumpable process with CAP_SYS_PTRACE): one
/// `(needle index, mapping, offset)` per occurrence.
pub fn scan_memory(pid: u32, needles: &[&[u8]]) -> anyhow::Result<Vec<(usize, String, usize)>> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut memory = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut found = Vec::new();
    let mut regions = 0;
    let mut starts = [false; 256];
    for needle in needles {
        if let Some(first) = needle.first() {
            starts[usize::from(*first)] = true;
        }
    }
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(permissions)) = (fields.next(), fields.next()) else { continue };
        let path = fields.nth(3).unwrap_or_default();
        if !permissions.starts_with('r') || path == "[vvar]" || path == "[vsyscall]" {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (start, end) = (u64::from_str_radix(start, 16)?, u64::from_str_radix(end, 16)?);
        let mut data = vec![0u8; usize::try_from(end - start)?];
        if memory.seek(SeekFrom::Start(start)).is_err() || memory.read_exact(&mut data).is_err() {
            continue;
        }
        regions += 1;
        // One pass over the bytes, comparing needles only where one could start: fast enough
        // in a debug build to scan the whole process inside a SHUTDOWN budget.
        for offset in 0..data.len() {
            if !starts[usize::from(data[offset])] {
                continue;
            }
            for (index, needle) in needles.iter().enumerate() {
                if !needle.is_empty() && data[offset..].starts_with(needle) {
                    found.push((index, format!("{range} {permissions} {path}"), offset));
                }
            }
        }
    }
    anyhow::ensure!(regions > 0, "no readable memory in process {pid}");
    Ok(found)
}

/// A free loopback port for one test's extension (see [`crate::ministack::free_loopback_port`]).
pub fn free_port() -> anyhow::Result<u16> {
    crate::ministack::free_loopback_port()
}

#[cfg(test)]
mod output_tests {
    use super::Output;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, ReadBuf};

    /// A pipe that hands its bytes out a few at a time, so lines arrive split across reads.
    struct Trickle(&'static [u8], usize);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self.1.min(self.0.len()).min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn lines_split_across_reads_come_out_whole_in_order_with_their_prefix() {
        let output = Output::default();
        let text =
            b"{\"event\":\"allow\",\"n\":1}\n\nsecond line, longer than a read\n\xff bad utf-8\nlast without newline";
        for step in [1, 3, 7, 64] {
            let output = Output::default();
            output.read_lines(Trickle(text, step), b"stderr: ").await;
            assert_eq!(
                output.lines(),
                [
                    "stderr: {\"event\":\"allow\",\"n\":1}",
                    "stderr: ",
                    "stderr: second line, longer than a read",
                    "stderr: \u{FFFD} bad utf-8",
                    "stderr: last without newline"
                ],
                "{step} bytes a read"
            );
        }
        output.read_lines(Trickle(b"a\nb\n", 1), b"").await;
        assert_eq!(output.take_lines(), ["a", "b"]);
        assert!(output.lines().is_empty(), "taken");
    }

    #[tokio::test]
    async fn counted_lines_are_counted_once_and_not_kept_the_others_are() {
        let output = Output::default();
        output.count_lines_containing(br#""event":"allow""#);
        let text = b"{\"event\":\"allow\",\"n\":1}\n{\"event\":\"deny\"}\n{\"event\":\"allow\",\"n\":2}\n";
        output.read_lines(Trickle(text, 5), b"").await;
        assert_eq!(output.take_counted(), 2);
        assert_eq!(output.take_counted(), 0, "taken");
        assert_eq!(output.lines(), [r#"{"event":"deny"}"#]);
    }
}
