//! The audit lines written for every request (each `allow` and `deny`), formatted straight
//! into the line buffer and queued, without going through `tracing`: the dispatch, the field
//! visitor and the escaping of every field name were 3.4 k of a cached GET's 20 k instructions
//! under callgrind. The lines have the shape of the tracing ones (same key order, same escaping:
//! tested), so nothing reading the log can tell them apart.
//!
//! They are written once [`super::init`] has installed logging (as the tracing lines: a unit
//! test that does not install it prints nothing), at `INFO`, which the audit target always is.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::{INSTALLED, LINE, push_escaped, stdout};
use crate::domain::time::push_rfc3339_micros;

/// The fields of one audit line, appended in the order they are given. Always inlined: each
/// call then appends its constant pieces (`,"name":` and the quotes) as a few stores, where a
/// call per field went through `memcpy` three times (callgrind: ~60 instructions a field).
#[derive(Debug)]
pub struct Fields<'a>(&'a mut String);

impl Fields<'_> {
    /// `"name":"value"`, the value escaped.
    #[inline(always)]
    pub fn str(&mut self, name: &'static str, value: &str) -> &mut Self {
        self.key(name);
        self.0.push('"');
        push_escaped(self.0, value);
        self.0.push('"');
        self
    }

    /// `"name":true` or `false`.
    #[inline(always)]
    pub fn bool(&mut self, name: &'static str, value: bool) -> &mut Self {
        self.key(name);
        self.0.push_str(if value { "true" } else { "false" });
        self
    }

    /// `"name":123`.
    #[inline(always)]
    pub fn u64(&mut self, name: &'static str, value: u64) -> &mut Self {
        self.key(name);
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.0.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
        self
    }

    #[inline(always)]
    fn key(&mut self, name: &'static str) {
        // Names are this crate's identifiers: nothing to escape.
        debug_assert!(super::is_plain(name.as_bytes()));
        self.0.push_str(",\"");
        self.0.push_str(name);
        self.0.push_str("\":");
    }
}

/// Queues the audit line `event` with the fields `fields` adds, as
/// `tracing::info!(target: "audit", event = …, …)` would write it.
pub fn write(event: &'static str, fields: impl FnOnce(&mut Fields<'_>)) {
    write_with(event, |line| {
        push_tail(line, fields);
        stdout().push(line.as_bytes());
    });
}

/// One call site's last line: what its fields were made of (`K`), and its text after the
/// event. A call site that writes the same fields again and again (a cached read, once per
/// request) then formats only the timestamp.
#[derive(Debug)]
pub struct Memo<K>(RefCell<Option<(K, String)>>);

impl<K> Memo<K> {
    /// Nothing written yet.
    pub const fn new() -> Self {
        Self(RefCell::new(None))
    }
}

impl<K> Default for Memo<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// [`write`], with the text after the event taken from `memo` when `same` says the fields
/// are made of what the last line's were (the line is then byte for byte the one [`write`]
/// would queue: tested); else formatted, and kept with `key()` for the next line. `same` and
/// `key` must cover everything `fields` reads.
pub fn write_memoized<K>(
    event: &'static str,
    memo: &Memo<K>,
    same: impl FnOnce(&K) -> bool,
    key: impl FnOnce() -> K,
    fields: impl FnOnce(&mut Fields<'_>),
) {
    write_with(event, |line| queue_memoized(line, memo, same, key, fields, |parts| stdout().push_parts(parts)));
}

/// Ends `line` (its head written) with the tail, through `memo` (see [`write_memoized`]), and
/// hands it to `queue` in parts: on a hit, the head and the kept tail as they are (one copy of
/// the tail, into the queue, instead of two).
fn queue_memoized<K>(
    line: &mut String,
    memo: &Memo<K>,
    same: impl FnOnce(&K) -> bool,
    key: impl FnOnce() -> K,
    fields: impl FnOnce(&mut Fields<'_>),
    queue: impl FnOnce(&[&[u8]]),
) {
    // Re-entrant use (a line written while this one is formatted) goes without the memo.
    let Ok(mut kept) = memo.0.try_borrow_mut() else {
        push_tail(line, fields);
        return queue(&[line.as_bytes()]);
    };
    let start = line.len();
    match kept.as_mut() {
        Some((last, tail)) if same(last) => return queue(&[line.as_bytes(), tail.as_bytes()]),
        Some((last, tail)) => {
            push_tail(line, fields);
            *last = key();
            tail.clear();
            tail.push_str(&line[start..]);
        }
        None => {
            push_tail(line, fields);
            *kept = Some((key(), line[start..].to_owned()));
        }
    }
    drop(kept);
    queue(&[line.as_bytes()]);
}

fn write_with(event: &'static str, finish: impl FnOnce(&mut String)) {
    if !INSTALLED.load(Ordering::Acquire) {
        return;
    }
    LINE.with(|line| {
        // Re-entrant use falls back to a fresh buffer, as the tracing lines do.
        let mut fallback = String::new();
        let mut borrowed = line.try_borrow_mut();
        let line = match borrowed.as_deref_mut() {
            Ok(line) => line,
            Err(_) => &mut fallback,
        };
        line.clear();
        push_head(line, SystemTime::now(), event);
        finish(line);
    });
}

/// The timestamp, level and event.
fn push_head(line: &mut String, now: SystemTime, event: &'static str) {
    line.push_str(r#"{"timestamp":""#);
    push_rfc3339_micros(line, now);
    line.push_str(r#"","level":"INFO","event":"#);
    line.push('"');
    push_escaped(line, event);
    line.push('"');
}

/// The fields, the target and the end of the line.
fn push_tail(line: &mut String, fields: impl FnOnce(&mut Fields<'_>)) {
    fields(&mut Fields(line));
    line.push_str(",\"target\":\"audit\"}\n");
}

#[cfg(test)]
fn format(line: &mut String, now: SystemTime, event: &'static str, fields: impl FnOnce(&mut Fields<'_>)) {
    push_head(line, now, event);
    push_tail(line, fields);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// The tracing lines' formatter, kept instead of queued.
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            let mut line = String::new();
            super::super::format_line(&mut line, event);
            self.0.lock().expect("lock").push(line);
        }
    }

    #[test]
    fn an_audit_line_is_the_line_tracing_would_write() {
        let captured = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(Arc::clone(&captured)));
        let id = "app/\"db\"\\\n\u{1}é";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "audit",
                event = "deny",
                request_id = "8f2c-11",
                request_id_checked = true,
                request_id_asserted = false,
                secret_id = id,
                status = 403u64,
                zero = 0u64,
                big = u64::MAX,
            );
        });
        let traced = captured.lock().expect("lock").pop().expect("one line");
        let mut direct = String::new();
        format(&mut direct, SystemTime::now(), "deny", |fields| {
            fields
                .str("request_id", "8f2c-11")
                .bool("request_id_checked", true)
                .bool("request_id_asserted", false)
                .str("secret_id", id)
                .u64("status", 403)
                .u64("zero", 0)
                .u64("big", u64::MAX);
        });
        // Everything after the timestamp is the same, byte for byte.
        let after_timestamp = |line: &str| line.split_once(r#"","level""#).map(|(_, rest)| rest.to_owned());
        assert_eq!(after_timestamp(&direct), after_timestamp(&traced), "{direct}\n{traced}");
        assert!(direct.ends_with('\n'));
        let parsed: serde_json::Value = serde_json::from_str(&direct).expect("one JSON object");
        assert_eq!(parsed["secret_id"], id);
    }

    /// Through a memo, every line is the one formatted afresh, whatever the order in which the
    /// fields change; the fields are formatted only when they changed.
    #[test]
    fn a_memoized_line_is_the_line_formatted_afresh() {
        let memo = Memo::new();
        let sets = [("a", "app/db", true), ("a", "app/db", true), ("b", "app/db", true), ("b", "app/db", false)];
        let sets = sets.iter().chain(&[("b", "app/\"db\"", false), ("b", "app/\"db\"", false), ("a", "app/db", true)]);
        let mut formatted = 0;
        for &(request_id, secret_id, flag) in sets {
            let fields = |line: &mut Fields<'_>| {
                line.str("request_id", request_id).str("secret_id", secret_id).bool("flag", flag);
            };
            let now = SystemTime::now();
            let mut fresh = String::new();
            format(&mut fresh, now, "allow", fields);
            let (mut head, mut memoized) = (String::new(), Vec::new());
            push_head(&mut head, now, "allow");
            queue_memoized(
                &mut head,
                &memo,
                |last: &(String, String, bool)| last.0 == request_id && last.1 == secret_id && last.2 == flag,
                || (request_id.to_owned(), secret_id.to_owned(), flag),
                |line| {
                    formatted += 1;
                    fields(line);
                },
                |parts| memoized = parts.concat(),
            );
            assert_eq!(String::from_utf8(memoized).expect("UTF-8"), fresh);
        }
        assert_eq!(formatted, 5, "formatted again only when a field changed");
        // Re-entrant use goes without it, and leaves it alone.
        let held = memo.0.borrow_mut();
        let (mut line, mut queued) = (String::new(), Vec::new());
        queue_memoized(
            &mut line,
            &memo,
            |_| true,
            || unreachable!(),
            |fields| {
                fields.str("request_id", "c");
            },
            |parts| queued = parts.concat(),
        );
        assert_eq!(queued, b",\"request_id\":\"c\",\"target\":\"audit\"}\n");
        drop(held);
    }
}
