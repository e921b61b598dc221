//! The writer behind every log and audit line: lines are queued in memory and written to stdout
//! by one thread, in batches, off the request path.
//!
//! What an audit line still promises (README, "Logs"):
//! - every line is queued, whole and in the order it was logged, before the request that
//!   produced it is answered, and no line is dropped: when the queue is full ([`CAPACITY`]),
//!   the caller blocks until the writer has made room (a stalled stdout stalls reads);
//! - the writer waits at most [`LINGER`] after a line arrives before writing it, so a line
//!   reaches stdout within about 3 ms when stdout drains;
//! - [`Sink::flush`] returns once every line queued before the call was written: the extension
//!   calls it before each `/event/next`, before `init/error` and `exit/error`, before exiting,
//!   and from the panic hook (bounded there).
//!
//! What an abort can lose: a `SIGKILL`, or Lambda's kill after its SHUTDOWN deadline, loses the
//! lines still queued, at most the last [`LINGER`] of them (or a full queue when stdout is
//! stalled). A line logged before an answer may then be missing although the answer was sent.
//!
//! If stdout fails (closed), lines are discarded from then on: there is nowhere to write them.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Bytes queued before a caller blocks: about 400 audit lines, a third of a millisecond of
/// writes at 60,000 requests per second is a few dozen.
pub const CAPACITY: usize = 128 * 1024;

/// How long the writer lets lines gather after the first one arrives, unless someone flushes or
/// the queue is half full.
///
/// 3 ms, not 1: under load every batch wakes the writer and whoever reads the pipe, and on a
/// machine with few cores each wake-up preempts the thread serving requests. With 1 ms the
/// batches were ~30 KiB; with 3 ms the half-full queue (64 KiB) ends them first at 100,000
/// lines per second, half the wake-ups. Measured (bench, 8 connections, six pairs of runs):
/// throughput 0.75-0.88x of bare hyper at 1 ms (mean 0.81x), 0.82-0.92x at 3 ms (0.87x).
pub const LINGER: Duration = Duration::from_millis(3);

/// A queue of lines and the thread that writes them.
pub struct Sink {
    state: Mutex<State>,
    /// Producers to the writer: a first line while it sleeps, a flush, a half-full queue.
    work: Condvar,
    /// The writer to producers and flushers: a batch was written (room, flush progress).
    written: Condvar,
    /// Where lines go; held by the writer while it writes.
    out: Mutex<Box<dyn Write + Send>>,
    capacity: usize,
    linger: Duration,
}

#[derive(Debug, Default)]
struct State {
    queue: Vec<u8>,
    /// Bytes ever queued and ever written (or discarded once the output failed).
    queued: u64,
    done: u64,
    /// Callers waiting in [`Sink::flush`]: the writer does not linger while there are any.
    flushers: usize,
    /// Producers waiting for room in a full queue.
    blocked: usize,
    /// The writer sleeps until a producer wakes it.
    idle: bool,
    /// No writer thread (it could not be started): producers write themselves.
    direct: bool,
    /// The output failed: lines are discarded.
    broken: bool,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("capacity", &self.capacity).field("linger", &self.linger).finish_non_exhaustive()
    }
}

impl Sink {
    /// A sink writing to `out` from a thread of its own. If the thread cannot be started, lines
    /// are written by the caller, one `write` each, as before the writer existed.
    pub fn start<W: Write + Send + 'static>(out: W, capacity: usize, linger: Duration) -> Arc<Self> {
        let sink = Arc::new(Self {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            written: Condvar::new(),
            out: Mutex::new(Box::new(out)),
            capacity,
            linger,
        });
        let writer = Arc::clone(&sink);
        let started =
            std::thread::Builder::new().name("log-writer".to_owned()).stack_size(64 * 1024).spawn(move || writer.run());
        if started.is_err() {
            sink.lock().direct = true;
        }
        sink
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `line` (already terminated by a newline), blocking while the queue is full.
    pub fn push(&self, line: &[u8]) {
        self.push_parts(&[line]);
    }

    /// Queues one line given in parts (the last one ends with its newline), whole: no other
    /// line comes between them. Blocks while the queue is full. The parts are copied into the
    /// queue as they are: a line made of a fresh head and a kept tail is not put together in a
    /// buffer of its own first.
    pub fn push_parts(&self, parts: &[&[u8]]) {
        let length: usize = parts.iter().map(|part| part.len()).sum();
        let mut state = self.lock();
        if state.broken {
            return;
        }
        if state.direct {
            let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
            let written = parts.iter().try_for_each(|part| out.write_all(part));
            state.broken = written.and_then(|()| out.flush()).is_err();
            return;
        }
        while !state.queue.is_empty() && state.queue.len() + length > self.capacity && !state.broken {
            self.work.notify_one();
            state.blocked += 1;
            state = self.written.wait(state).unwrap_or_else(PoisonError::into_inner);
            state.blocked -= 1;
        }
        let wake = (state.idle && state.queue.is_empty()) || state.queue.len() + length >= self.capacity / 2;
        state.queue.reserve(length);
        for part in parts {
            state.queue.extend_from_slice(part);
        }
        state.queued += length as u64;
        drop(state);
        if wake {
            self.work.notify_one();
        }
    }

    /// Returns once every line queued before the call has been written (or the output failed).
    pub fn flush(&self) {
        let mut state = self.lock();
        let target = state.queued;
        if state.done >= target {
            return;
        }
        state.flushers += 1;
        self.work.notify_one();
        while state.done < target {
            state = self.written.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.flushers -= 1;
    }

    /// [`Sink::flush`], giving up after `timeout`, and never waiting for a lock the caller may
    /// hold (the panic hook runs wherever the panic happened). Returns whether all was written.
    pub fn flush_within(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = loop {
            match self.state.try_lock() {
                Ok(state) => break state,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => break poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(std::sync::TryLockError::WouldBlock) => return false,
            }
        };
        let target = state.queued;
        state.flushers += 1;
        self.work.notify_one();
        while state.done < target {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self.written.wait_timeout(state, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
        state.flushers -= 1;
        state.done >= target
    }

    /// The writer thread: waits for a line, lets more gather for up to `linger`, writes them
    /// all with one `write_all`, and tells the waiting producers and flushers.
    fn run(&self) {
        let mut batch = Vec::new();
        let mut state = self.lock();
        loop {
            while state.queue.is_empty() {
                state.idle = true;
                // Idle for a while: give back what a burst grew. Not at once: a writer faster
                // than its producers (stdout to /dev/null) is idle between any two batches, and
                // gave its buffers back and grew them again every batch (16,000 `mmap`s in a
                // bench run instead of a few hundred).
                let (waited, idle) =
                    self.work.wait_timeout(state, RECYCLE_AFTER).unwrap_or_else(PoisonError::into_inner);
                state = waited;
                if idle.timed_out() && state.queue.is_empty() {
                    recycle(&mut state.queue);
                    recycle(&mut batch);
                    state = self.work.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
                state.idle = false;
            }
            let until = Instant::now() + self.linger;
            while state.flushers == 0 && state.queue.len() < self.capacity / 2 {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                state = self.work.wait_timeout(state, until - now).unwrap_or_else(PoisonError::into_inner).0;
            }
            std::mem::swap(&mut state.queue, &mut batch);
            let broken = state.broken;
            drop(state);
            let failed = !broken && {
                let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
                out.write_all(&batch).and_then(|()| out.flush()).is_err()
            };
            let length = batch.len() as u64;
            batch.clear();
            state = self.lock();
            state.done += length;
            state.broken |= failed;
            // A notification is a `futex` call even with nobody waiting: only when someone is.
            if state.flushers > 0 || state.blocked > 0 {
                self.written.notify_all();
            }
        }
    }
}

/// How long the writer waits without a line before it gives back buffers a burst grew.
const RECYCLE_AFTER: Duration = Duration::from_millis(100);

/// An idle writer keeps buffers of at most this much: a millisecond of lines at 100,000
/// requests per second. A larger one, grown by load or a stalled stdout, is given back.
pub const KEEP: usize = 32 * 1024;

/// Empties a buffer for reuse, and gives its memory back if it grew larger than [`KEEP`]: a
/// buffer that size has pages of its own (the extension's allocator maps blocks of 8 KiB and
/// more), so freeing it returns it to the system instead of keeping the largest burst ever
/// resident (the two buffers reached 128 KiB each under 64 connections and stayed so after the
/// load).
fn recycle(batch: &mut Vec<u8>) {
    if batch.capacity() > KEEP {
        *batch = Vec::new();
    } else {
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_batch_grown_by_a_burst_is_given_back_a_normal_one_kept() {
        let mut normal = Vec::with_capacity(KEEP);
        normal.extend_from_slice(&[b'x'; 1000]);
        recycle(&mut normal);
        assert!(normal.is_empty());
        assert_eq!(normal.capacity(), KEEP, "kept for the next batch");
        let mut burst = vec![b'x'; 4 * KEEP];
        recycle(&mut burst);
        assert!(burst.is_empty());
        assert_eq!(burst.capacity(), 0, "given back");
    }

    /// An output that records what reaches it, in how many writes, optionally slowly, and that
    /// can be stalled (a pipe nobody reads) or fail.
    #[derive(Clone, Default)]
    struct Recorder {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicUsize>,
        stalled: Arc<(Mutex<bool>, Condvar)>,
        slow: Option<Duration>,
        failing: bool,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, released) = &*self.stalled;
            let mut stalled = lock.lock().expect("lock");
            while *stalled {
                stalled = released.wait(stalled).expect("lock");
            }
            drop(stalled);
            if self.failing {
                return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
            }
            if let Some(delay) = self.slow {
                std::thread::sleep(delay);
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.bytes.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn lines(&self) -> Vec<String> {
            let bytes = self.bytes.lock().expect("lock");
            String::from_utf8(bytes.clone()).expect("utf-8").lines().map(str::to_owned).collect()
        }

        fn stall(&self, stalled: bool) {
            *self.stalled.0.lock().expect("lock") = stalled;
            self.stalled.1.notify_all();
        }
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what} within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn every_line_arrives_once_whole_and_in_order_per_producer_under_concurrent_load_in_parts_too() {
        let out = Recorder { slow: Some(Duration::from_micros(200)), ..Recorder::default() };
        // A small queue, so producers block on it again and again.
        let sink = Sink::start(out.clone(), 4096, LINGER);
        let producers: Vec<_> = (0..8)
            .map(|producer| {
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || {
                    for line in 0..2000 {
                        let text = format!("{{\"producer\":{producer},\"line\":{line}}}\n");
                        // Every other line in three parts, as a repeated audit line is queued.
                        if line % 2 == 0 {
                            sink.push(text.as_bytes());
                        } else {
                            let (head, rest) = text.as_bytes().split_at(5);
                            let (middle, tail) = rest.split_at(7);
                            sink.push_parts(&[head, middle, tail]);
                        }
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.join().expect("producer");
        }
        sink.flush();
        let lines = out.lines();
        assert_eq!(lines.len(), 8 * 2000, "one line per push, none lost, none doubled");
        let mut next = [0_u64; 8];
        for line in &lines {
            let parsed: serde_json::Value = serde_json::from_str(line).expect("every line whole");
            let producer = usize::try_from(parsed["producer"].as_u64().expect("producer")).expect("index");
            assert_eq!(parsed["line"].as_u64(), Some(next[producer]), "order kept per producer");
            next[producer] += 1;
        }
        let writes = out.writes.load(Ordering::SeqCst);
        assert!(writes < lines.len() / 4, "lines are batched: {writes} writes for {} lines", lines.len());
    }

    #[test]
    fn flush_returns_only_when_every_earlier_line_is_written() {
        let out = Recorder { slow: Some(Duration::from_millis(2)), ..Recorder::default() };
        // A linger far longer than the test: only the flush can make the writer write now.
        let sink = Sink::start(out.clone(), CAPACITY, Duration::from_secs(3600));
        for line in 0..100 {
            sink.push(format!("line {line}\n").as_bytes());
        }
        sink.flush();
        assert_eq!(out.lines().len(), 100);
        sink.push(b"after\n");
        sink.flush();
        assert_eq!(out.lines().last().map(String::as_str), Some("after"));
    }

    #[test]
    fn a_line_is_written_after_the_linger_without_a_flush() {
        let out = Recorder::default();
        let sink = Sink::start(out.clone(), CAPACITY, LINGER);
        sink.push(b"alone\n");
        wait_until("the line on the output", || out.lines() == ["alone"]);
        assert_eq!(out.writes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_stalled_output_blocks_producers_instead_of_dropping_lines() {
        let out = Recorder::default();
        out.stall(true);
        let sink = Sink::start(out.clone(), 1024, LINGER);
        let pushed = Arc::new(AtomicUsize::new(0));
        let producer = {
            let (sink, pushed) = (Arc::clone(&sink), Arc::clone(&pushed));
            std::thread::spawn(move || {
                for line in 0..1000 {
                    sink.push(format!("{line:0>99}\n").as_bytes());
                    pushed.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        // The writer holds one batch (at most the queue), the queue holds the rest: then the
        // producer waits.
        wait_until("the producer blocked", || {
            let before = pushed.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            before > 0 && pushed.load(Ordering::SeqCst) == before
        });
        let blocked_at = pushed.load(Ordering::SeqCst);
        assert!(blocked_at <= 21, "at most two queues' worth accepted while stalled: {blocked_at}");
        assert!(out.lines().is_empty());
        out.stall(false);
        producer.join().expect("producer");
        sink.flush();
        let lines = out.lines();
        assert_eq!(lines.len(), 1000, "nothing dropped");
        assert!(lines.iter().enumerate().all(|(index, line)| line.parse() == Ok(index)), "in order");
    }

    #[test]
    fn a_failed_output_never_hangs_a_producer_or_a_flush() {
        let out = Recorder { failing: true, ..Recorder::default() };
        let sink = Sink::start(out, 256, LINGER);
        for _ in 0..100 {
            sink.push(&[b'x'; 99]);
        }
        sink.flush();
        assert!(sink.flush_within(Duration::from_secs(1)));
    }

    #[test]
    fn flush_within_gives_up_on_a_stalled_output() {
        let out = Recorder::default();
        out.stall(true);
        let sink = Sink::start(out.clone(), CAPACITY, LINGER);
        sink.push(b"stuck\n");
        assert!(!sink.flush_within(Duration::from_millis(50)));
        out.stall(false);
        sink.flush();
        assert_eq!(out.lines(), ["stuck"]);
    }
}
