//! Logging: JSON lines on stdout through `tracing`, never a secret.
//!
//! The level comes from `SCOPED_SECRETS_LOG_LEVEL`, else `AWS_LAMBDA_LOG_LEVEL` (set by Lambda's
//! advanced logging controls), else `RUST_LOG`, else `info`. Audit lines (target `audit`) are
//! always written. Third-party crates (the AWS SDK, hyper, rustls) are capped at `info` whatever
//! the level: their wire logs are where credentials and bodies would appear.
//!
//! The lines are written by [`JsonLines`], not by `tracing-subscriber`'s JSON formatter: an
//! audit line is written for every request, and that formatter (tracing-serde, a serde map,
//! string escaping by character, a date formatted per line) was 43 % of the extension's
//! instructions per cached GET under callgrind. The lines keep its shape:
//! `{"timestamp":…,"level":…,<fields>,"target":…}`.
//!
//! Lines are not written by the code that logs them: [`sink`] queues them and one thread writes
//! them to stdout in batches, so a request is not answered only after a `write` to a pipe. The
//! promises an audit line keeps (one line per decision, in order, on stdout before the next
//! `/event/next` and before exit, never dropped) are the sink's.

pub mod audit;
pub mod sink;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::level_filters::LevelFilter;

use tracing::field::{Field, Visit};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{Env, var};
use crate::domain::time::push_rfc3339_micros;

/// Installs the JSON subscriber. Returns a sentence when the level variable is invalid (the
/// caller reports it with `init/error`; logging then runs at `info`).
pub fn init(env: &Env) -> Result<(), String> {
    let (level, problem) = match level_from(env) {
        Ok(level) => (level, None),
        Err(problem) => (LevelFilter::INFO, Some(problem)),
    };
    let filter = Targets::new()
        .with_default(level.min(LevelFilter::INFO))
        .with_target("scoped_secrets", level)
        .with_target("audit", LevelFilter::INFO.max(level));
    // Fails only if a subscriber is already installed (tests): keep that one.
    if tracing_subscriber::registry().with(JsonLines.with_filter(filter)).try_init().is_ok() {
        INSTALLED.store(true, Ordering::Release);
    }
    flush_on_panic();
    problem.map_or(Ok(()), Err)
}

/// Set once [`init`] installed the JSON lines: [`audit`] lines are written from then on.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The sink in front of stdout, started by the first line.
fn stdout() -> &'static sink::Sink {
    static STDOUT: OnceLock<Arc<sink::Sink>> = OnceLock::new();
    STDOUT.get_or_init(|| {
        grow_pipe(std::os::fd::AsRawFd::as_raw_fd(&std::io::stdout()), PIPE_BYTES);
        sink::Sink::start(std::io::stdout(), sink::CAPACITY, sink::LINGER)
    })
}

/// What stdout's pipe is asked to hold: about 30 ms of lines at 100,000 a second, where the
/// default 64 KiB holds one of the writer's batches. Kernel memory, used only while the reader
/// lags.
const PIPE_BYTES: i32 = 1024 * 1024;

/// Asks the pipe behind `fd`, if it is one, to hold `bytes` (`F_SETPIPE_SZ`), so a batch goes in
/// whole while the reader drains the one before instead of in pieces, a wake-up of both sides
/// each. Returns the pipe's size, or `None` when `fd` is not a pipe or the kernel refused (above
/// `/proc/sys/fs/pipe-max-size`, or the user's pipe pages used up): lines go out all the same.
/// Measured: 0.92x of bare hyper's throughput at 8 connections against 0.88x without it (four
/// pairs of runs; docs/performance.md).
fn grow_pipe(fd: i32, bytes: i32) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: fcntl on a descriptor number with an integer argument; no memory of ours.
        let size = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, bytes) };
        usize::try_from(size).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd, bytes);
        None
    }
}

/// Returns once every line logged before the call is on stdout (blocking: the wait is the
/// writer's current batch, microseconds unless stdout is stalled). Called before each
/// `/event/next`, before `init/error` and `exit/error`, and before exiting.
pub fn flush() {
    stdout().flush();
}

/// A panic aborts the process (`panic = "abort"`): write the queued lines first, waiting at
/// most 100 ms, then run the previous hook.
fn flush_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        stdout().flush_within(Duration::from_millis(100));
        previous(info);
    }));
}

fn level_from(env: &Env) -> Result<LevelFilter, String> {
    let sources = [(var::LOG_LEVEL, true), ("AWS_LAMBDA_LOG_LEVEL", true), ("RUST_LOG", false)];
    for (name, strict) in sources {
        let Some(raw) = env.get(name) else { continue };
        return match parse_level(raw) {
            Some(level) => Ok(level),
            // RUST_LOG may hold a directive list meant for other tools: ignore what we cannot read.
            None if !strict => continue,
            None => Err(format!(
                "{name} must be one of off, error, warn, info, debug, trace (got {:?}).",
                raw.chars().take(32).collect::<String>()
            )),
        };
    }
    Ok(LevelFilter::INFO)
}

fn parse_level(raw: &str) -> Option<LevelFilter> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::OFF),
        "fatal" | "error" => Some(LevelFilter::ERROR),
        "warn" | "warning" => Some(LevelFilter::WARN),
        "info" => Some(LevelFilter::INFO),
        "debug" => Some(LevelFilter::DEBUG),
        "trace" => Some(LevelFilter::TRACE),
        _ => None,
    }
}

use tracing_subscriber::Layer as _;

/// Queues each event as one JSON line for stdout ([`sink`] keeps lines whole and in order). Fields are flattened into the line, as `tracing-subscriber`'s `flatten_event` did.
#[derive(Debug, Clone, Copy)]
pub struct JsonLines;

thread_local! {
    /// The line being built, reused so a line costs no allocation.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for JsonLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        LINE.with(|line| {
            // Re-entrant use (an event logged while one is written) falls back to a fresh buffer.
            let mut fallback = String::new();
            let mut borrowed = line.try_borrow_mut();
            let line = match borrowed.as_deref_mut() {
                Ok(line) => line,
                Err(_) => &mut fallback,
            };
            line.clear();
            format_line(line, event);
            stdout().push(line.as_bytes());
        });
    }
}

fn format_line(line: &mut String, event: &tracing::Event<'_>) {
    let metadata = event.metadata();
    line.push_str(r#"{"timestamp":""#);
    push_rfc3339_micros(line, std::time::SystemTime::now());
    line.push_str(r#"","level":""#);
    line.push_str(metadata.level().as_str());
    line.push('"');
    event.record(&mut Fields(line));
    line.push_str(r#","target":"#);
    push_string(line, metadata.target());
    line.push_str("}\n");
}

/// Appends each field as `,"name":value`.
struct Fields<'a>(&'a mut String);

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        // Field names are this crate's identifiers (and its dependencies'): nothing to escape.
        debug_assert!(is_plain(field.name().as_bytes()));
        self.0.push_str(",\"");
        self.0.push_str(field.name());
        self.0.push_str("\":");
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_string(self.0, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        self.0.push('"');
        let _ = write!(Escaping(self.0), "{value:?}");
        self.0.push('"');
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        self.0.push('"');
        let _ = write!(Escaping(self.0), "{value}");
        self.0.push('"');
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.0, "{value}");
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.0, "{value}");
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.key(field);
        let _ = write!(self.0, "{value}");
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.key(field);
        let _ = write!(self.0, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.0, "{value}");
        } else {
            self.0.push_str("null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.0.push_str(if value { "true" } else { "false" });
    }
}

/// Writes an audit record with nested fields (the SHUTDOWN reports) as one JSON line, in the
/// shape of the tracing lines: `timestamp`, `level`, `target`, `event`, then `fields`' members
/// (a struct that serialises to a JSON object).
pub fn audit_line<T: serde::Serialize>(event: &str, fields: &T) {
    write_line(&report_line(event, fields, std::time::SystemTime::now()));
}

fn report_line<T: serde::Serialize>(event: &str, fields: &T, now: std::time::SystemTime) -> String {
    let mut line = String::with_capacity(512);
    line.push_str(r#"{"timestamp":""#);
    push_rfc3339_micros(&mut line, now);
    line.push_str(r#"","level":"INFO","target":"audit","event":"#);
    push_string(&mut line, event);
    match serde_json::to_string(fields) {
        Ok(object) if object.len() > 2 && object.starts_with('{') => {
            line.push(',');
            line.push_str(&object[1..]);
        }
        _ => line.push('}'),
    }
    line
}

/// Queues one JSON document as a line for stdout, in order with the tracing lines (EMF
/// documents, the reports).
pub fn write_line(line: &str) {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    stdout().push(&bytes);
}

/// `text` as a JSON string, escaped as `serde_json` escapes it.
fn push_string(line: &mut String, text: &str) {
    line.push('"');
    push_escaped(line, text);
    line.push('"');
}

/// `text` JSON-escaped. Almost every text (ids, codes, names) has nothing to escape: eight
/// bytes at a time tell, and the text is copied whole (byte by byte, the scan was a tenth of a
/// cached GET's instructions under callgrind).
#[inline]
fn push_escaped(line: &mut String, text: &str) {
    if is_plain(text.as_bytes()) {
        line.push_str(text);
    } else {
        escape_into(line, text);
    }
}

/// Whether no byte of `bytes` needs escaping in a JSON string: none below 0x20, no `"`, no `\`.
fn is_plain(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Exact per word (no false positive or negative): a byte is zero / below n (n <= 0x80).
    let has_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let word = u64::from_ne_bytes(<[u8; 8]>::try_from(chunk).unwrap_or_default());
        let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        if below_space | has_zero(word ^ (ONES * u64::from(b'"'))) | has_zero(word ^ (ONES * u64::from(b'\\'))) != 0 {
            return false;
        }
    }
    !words.remainder().iter().any(|&byte| needs_escape(byte))
}

fn needs_escape(byte: u8) -> bool {
    (byte < 0x20) | (byte == b'"') | (byte == b'\\')
}

/// A `fmt::Write` that JSON-escapes what is written through it.
struct Escaping<'a>(&'a mut String);

impl std::fmt::Write for Escaping<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        push_escaped(self.0, text);
        Ok(())
    }
}

/// `text` with every byte JSON needs escaped (the rare path of [`push_escaped`]).
fn escape_into(line: &mut String, text: &str) {
    let bytes = text.as_bytes();
    let mut plain = 0;
    while let Some(offset) = bytes[plain..].iter().position(|&byte| needs_escape(byte)) {
        let index = plain + offset;
        line.push_str(&text[plain..index]);
        match bytes[index] {
            b'"' => line.push_str("\\\""),
            b'\\' => line.push_str("\\\\"),
            b'\n' => line.push_str("\\n"),
            b'\r' => line.push_str("\\r"),
            b'\t' => line.push_str("\\t"),
            0x08 => line.push_str("\\b"),
            0x0c => line.push_str("\\f"),
            byte => {
                let _ = write!(line, "\\u{byte:04x}");
            }
        }
        plain = index + 1;
    }
    line.push_str(&text[plain..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_pipe_is_grown_and_anything_else_left_alone() {
        use std::os::fd::AsRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let grown = grow_pipe(fds[1], PIPE_BYTES);
        // SAFETY: fcntl on our own descriptor.
        let now = usize::try_from(unsafe { libc::fcntl(fds[1], libc::F_GETPIPE_SZ) }).expect("a pipe's size");
        match grown {
            Some(size) => assert!(size >= 1024 * 1024 && now == size, "grown to {size}, reads {now}"),
            // A limit of this machine's: the pipe keeps its size.
            None => assert_eq!(now, 65_536),
        }
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        assert_eq!(grow_pipe(null.as_raw_fd(), PIPE_BYTES), None, "not a pipe");
    }

    #[test]
    fn lines_are_json_with_every_field_flattened_and_escaped_as_serde_json_escapes() {
        let cases = ["plain", "quote \" and \\ backslash", "new\nline\ttab\r", "\u{1}\u{1f}\u{7f}", "ünï/cødé", ""];
        for case in cases {
            let mut line = String::new();
            push_string(&mut line, case);
            assert_eq!(line, serde_json::to_string(case).expect("json"), "{case:?}");
        }
        let mut line = String::new();
        let _ = write!(Escaping(&mut line), "{:?}", "a\"b");
        assert_eq!(line, r#"\"a\\\"b\""#);
    }

    #[test]
    fn the_word_scan_finds_every_byte_to_escape_wherever_it_is() {
        for length in 0..40 {
            for at in 0..length {
                for special in (0u8..0x20).chain([b'"', b'\\']) {
                    let mut bytes = vec![b'a'; length];
                    bytes[at] = special;
                    assert!(!is_plain(&bytes), "{special:#x} at {at} of {length}");
                }
                for plain in [0x20u8, b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff] {
                    let mut bytes = vec![b'a'; length];
                    bytes[at] = plain;
                    assert!(is_plain(&bytes), "{plain:#x} at {at} of {length}");
                }
            }
        }
    }

    #[test]
    fn a_report_line_is_one_json_object_in_the_shape_of_the_tracing_lines() {
        #[derive(serde::Serialize)]
        struct Report {
            count: u64,
            names: Vec<&'static str>,
        }
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_764_000_000);
        let line = report_line("report", &Report { count: 2, names: vec!["a\"b"] }, now);
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(parsed["timestamp"], "2025-11-24T16:00:00.000000Z");
        assert_eq!((parsed["level"].as_str(), parsed["target"].as_str()), (Some("INFO"), Some("audit")));
        assert_eq!((parsed["event"].as_str(), parsed["count"].as_u64()), (Some("report"), Some(2)));
        assert_eq!(parsed["names"][0], "a\"b");
        let empty: serde_json::Value =
            serde_json::from_str(&report_line("e", &serde_json::json!({}), now)).expect("json");
        assert_eq!(empty["event"], "e");
    }

    #[test]
    fn the_level_comes_from_the_first_variable_set() {
        let cases = [
            (vec![], Ok(LevelFilter::INFO)),
            (vec![("RUST_LOG", "debug")], Ok(LevelFilter::DEBUG)),
            (vec![("RUST_LOG", "hyper=trace,info")], Ok(LevelFilter::INFO)),
            (vec![("AWS_LAMBDA_LOG_LEVEL", "WARN"), ("RUST_LOG", "trace")], Ok(LevelFilter::WARN)),
            (vec![(var::LOG_LEVEL, "trace"), ("AWS_LAMBDA_LOG_LEVEL", "ERROR")], Ok(LevelFilter::TRACE)),
        ];
        for (pairs, expected) in cases {
            assert_eq!(level_from(&Env::from_pairs(pairs.clone())), expected, "{pairs:?}");
        }
        let error = level_from(&Env::from_pairs([(var::LOG_LEVEL, "loud")])).expect_err("invalid");
        assert!(error.starts_with(var::LOG_LEVEL) && error.ends_with('.'), "{error}");
    }
}
