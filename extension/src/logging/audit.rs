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
use crate::domain::time::{SECOND_LEN, push_rfc3339_micros, with_rfc3339_micros};

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
        self.0.push_str(std::str::from_utf8(crate::domain::text::decimal(value, &mut digits)).unwrap_or_default());
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
    if !INSTALLED.load(Ordering::Acquire) {
        return;
    }
    with_line(|line| {
        push_head(line, SystemTime::now(), event);
        push_tail(line, fields);
        stdout().push(line.as_bytes());
    });
}

/// One call site's last line: what its fields were made of (`K`), its event, and its text
/// from the timestamp's `Z` on. A call site that writes the same fields again and again (a
/// cached read, once per request) then formats only the timestamp.
#[derive(Debug)]
pub struct Memo<K>(RefCell<Option<(K, &'static str, String)>>);

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

/// [`write`], with the text after the timestamp taken from `memo` when the event is the last
/// line's and `same` says the fields are made of what its were (the line is then byte for byte
/// the one [`write`] would queue: tested); else formatted, and kept with `key()` for the next
/// line. `same` and `key` must cover everything `fields` reads.
pub fn write_memoized<K>(
    event: &'static str,
    memo: &Memo<K>,
    same: impl FnOnce(&K) -> bool,
    key: impl FnOnce() -> K,
    fields: impl FnOnce(&mut Fields<'_>),
) {
    if !INSTALLED.load(Ordering::Acquire) {
        return;
    }
    queue_memoized(SystemTime::now(), event, memo, same, key, fields, |parts| stdout().push_parts(parts));
}

/// [`write_memoized`]'s line, handed to `queue` in parts. On a hit no line is put together:
/// the parts are the timestamp's pieces ([`with_rfc3339_micros`]) and the kept rest, copied
/// once, into the queue (a line built in a buffer first was ~350 instructions of a cached GET,
/// and a second copy of its ~300 bytes).
fn queue_memoized<K>(
    now: SystemTime,
    event: &'static str,
    memo: &Memo<K>,
    same: impl FnOnce(&K) -> bool,
    key: impl FnOnce() -> K,
    fields: impl FnOnce(&mut Fields<'_>),
    queue: impl FnOnce(&[&[u8]]),
) {
    // Re-entrant use (a line written while this one is formatted) goes without the memo.
    let kept = memo.0.try_borrow_mut();
    if let Ok(kept) = &kept
        && let Some((last, last_event, rest)) = kept.as_ref()
        && std::ptr::eq(*last_event, event)
        && same(last)
    {
        return with_rfc3339_micros(now, |second, micros| {
            // The opening, second and digits of a four-digit year are 40 bytes: put together
            // here in moves of known length, where each piece queued alone was a `memcpy` call.
            let mut head = [0u8; OPEN.len() + SECOND_LEN + 6];
            if let Ok(second) = <&[u8; SECOND_LEN]>::try_from(second.as_bytes()) {
                head[..OPEN.len()].copy_from_slice(OPEN.as_bytes());
                head[OPEN.len()..OPEN.len() + SECOND_LEN].copy_from_slice(second);
                head[OPEN.len() + SECOND_LEN..].copy_from_slice(micros);
                queue(&[&head, rest.as_bytes()]);
            } else {
                queue(&[OPEN.as_bytes(), second.as_bytes(), micros, rest.as_bytes()]);
            }
        });
    }
    with_line(|line| {
        let at = push_head(line, now, event);
        push_tail(line, fields);
        if let Ok(mut kept) = kept {
            match kept.as_mut() {
                Some((last, last_event, rest)) => {
                    *last = key();
                    *last_event = event;
                    rest.clear();
                    rest.push_str(&line[at..]);
                }
                None => *kept = Some((key(), event, line[at..].to_owned())),
            }
        }
        queue(&[line.as_bytes()]);
    });
}

/// Runs `f` with the thread's line buffer, emptied (a fresh one if the thread's is in use: a
/// line written while another is formatted, as the tracing lines do).
fn with_line(f: impl FnOnce(&mut String)) {
    LINE.with(|line| {
        let mut fallback = String::new();
        let mut borrowed = line.try_borrow_mut();
        let line = match borrowed.as_deref_mut() {
            Ok(line) => line,
            Err(_) => &mut fallback,
        };
        line.clear();
        f(line);
    });
}

/// Every line's first characters.
const OPEN: &str = r#"{"timestamp":""#;

/// The timestamp, level and event. Returns where the timestamp's closing `Z` is: what follows
/// the digits is the same from one line to the next when the event and fields are.
fn push_head(line: &mut String, now: SystemTime, event: &'static str) -> usize {
    line.push_str(OPEN);
    push_rfc3339_micros(line, now);
    let at = line.len() - 1;
    line.push_str(r#"","level":"INFO","event":"#);
    line.push('"');
    push_escaped(line, event);
    line.push('"');
    at
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
        let sets = [("allow", "a", "app/db", true), ("allow", "a", "app/db", true), ("allow", "b", "app/db", true)];
        let sets = sets.iter().chain(&[("allow", "b", "app/db", false), ("allow", "b", "app/\"db\"", false)]);
        // The same fields under another event are formatted afresh, and so is the way back.
        let sets = sets.chain(&[("allow", "b", "app/\"db\"", false), ("deny", "b", "app/\"db\"", false)]);
        let sets = sets.chain(&[("allow", "b", "app/\"db\"", false), ("allow", "a", "app/db", true)]);
        let mut formatted = 0;
        // Times in the same second and across seconds, with every digit of the microseconds.
        let start = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_764_000_000_123_456);
        for (step, &(event, request_id, secret_id, flag)) in sets.enumerate() {
            let fields = |line: &mut Fields<'_>| {
                line.str("request_id", request_id).str("secret_id", secret_id).bool("flag", flag);
            };
            let now = start + std::time::Duration::from_micros(step as u64 * 700_001);
            let mut fresh = String::new();
            format(&mut fresh, now, event, fields);
            let mut memoized = Vec::new();
            queue_memoized(
                now,
                event,
                &memo,
                |last: &(String, String, bool)| last.0 == request_id && last.1 == secret_id && last.2 == flag,
                || (request_id.to_owned(), secret_id.to_owned(), flag),
                |line| {
                    formatted += 1;
                    fields(line);
                },
                |parts| memoized = parts.concat(),
            );
            assert_eq!(String::from_utf8(memoized).expect("UTF-8"), fresh, "step {step}");
        }
        assert_eq!(formatted, 7, "formatted again only when the event or a field changed");
        // Re-entrant use goes without it, and leaves it alone.
        let held = memo.0.borrow_mut();
        let mut queued = Vec::new();
        queue_memoized(
            start,
            "allow",
            &memo,
            |_| true,
            || unreachable!(),
            |fields| {
                fields.str("request_id", "c");
            },
            |parts| queued = parts.concat(),
        );
        let mut fresh = String::new();
        format(&mut fresh, start, "allow", |fields| {
            fields.str("request_id", "c");
        });
        assert_eq!(String::from_utf8(queued).expect("UTF-8"), fresh);
        drop(held);
    }
}
