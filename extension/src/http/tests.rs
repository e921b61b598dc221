//! Unit tests of the accept loop's pieces: the write deadline, the slot given up, the header
//! timeout's sweeper.

use super::*;
use std::io;
use tokio::io::AsyncWriteExt;

static JSON_TYPE: HeaderValue = HeaderValue::from_static("application/json");

#[tokio::test(start_paused = true)]
async fn a_write_the_peer_never_reads_fails_at_the_write_timeout() {
    // A 64-byte pipe whose other end never reads: the second write stalls.
    let (near, _far) = tokio::io::duplex(64);
    let mut stream = WriteDeadline::new(near, Duration::from_secs(5));
    stream.write_all(&[0u8; 64]).await.expect("fits the pipe");
    let started = tokio::time::Instant::now();
    let error = stream.write_all(&[0u8; 1]).await.expect_err("nobody reads");
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn progress_restarts_the_write_timeout() {
    let (near, mut far) = tokio::io::duplex(64);
    let mut stream = WriteDeadline::new(near, Duration::from_secs(5));
    let reader = tokio::spawn(async move {
        // Reads 64 bytes every 4 s: slow, but never 5 s without progress.
        let mut buffer = [0u8; 64];
        let mut total = 0;
        while total < 256 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            total += tokio::io::AsyncReadExt::read(&mut far, &mut buffer).await.expect("read");
        }
    });
    stream.write_all(&[0u8; 256]).await.expect("a slow reader is not a stalled one");
    reader.await.expect("joined");
}

#[tokio::test(start_paused = true)]
async fn the_slot_given_up_is_one_waiting_on_its_client_never_one_being_served() {
    let (slots, clock, shutdown) = (Slots::default(), Clock::default(), CancellationToken::new());
    let open = || slots.open(&clock, &shutdown);
    let dry = |slot: &Slot| slot.read_dry.store(true, Ordering::Release);
    let (idle, serving, silent, unread, stalled) = (open(), open(), open(), open(), open());
    idle.state.store(AFTER, Ordering::Release);
    dry(&idle);
    serving.state.store(SERVING, Ordering::Release);
    dry(&serving);
    dry(&silent);
    stalled.state.store(AFTER, Ordering::Release);
    stalled.write_stalled.store(true, Ordering::Release);
    tokio::time::advance(HEAD_GRACE).await;
    let just_opened = open();
    dry(&just_opened);
    assert!(slots.evict_one());
    assert!(silent.evict.is_cancelled(), "first: read dry without a head, past its grace");
    assert!(slots.evict_one());
    assert!(idle.evict.is_cancelled(), "then: idle after its answer");
    assert!(slots.evict_one());
    assert!(stalled.evict.is_cancelled(), "or stalled writing it");
    assert!(!slots.evict_one(), "never one being served, one not read yet, or one just opened");
    assert!(!serving.evict.is_cancelled() && !unread.evict.is_cancelled() && !just_opened.evict.is_cancelled());
    tokio::time::advance(HEAD_GRACE).await;
    assert!(slots.evict_one(), "once its grace is over");
    assert!(just_opened.evict.is_cancelled() && !unread.evict.is_cancelled());
    shutdown.cancel();
    assert!(unread.evict.is_cancelled() && serving.evict.is_cancelled(), "shutdown reaches every connection");
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_closes_connections_waiting_past_the_header_timeout_never_one_being_served() {
    let (slots, clock, shutdown) = (Arc::new(Slots::default()), Arc::new(Clock::default()), CancellationToken::new());
    let timeout = Duration::from_secs(5);
    let sweeper = {
        let (slots, clock, shutdown) = (Arc::clone(&slots), Arc::clone(&clock), shutdown.clone());
        tokio::spawn(async move { clock.sweep(&slots, timeout, &shutdown).await })
    };
    let (silent, serving, answered, writing) = (
        slots.open(&clock, &shutdown),
        slots.open(&clock, &shutdown),
        slots.open(&clock, &shutdown),
        slots.open(&clock, &shutdown),
    );
    serving.state.store(SERVING, Ordering::Release);
    answered.state.store(AFTER, Ordering::Release);
    writing.state.store(AFTER, Ordering::Release);
    let step = timeout / TICKS_PER_TIMEOUT;
    // Two seconds in, the answered one answers again: its wait starts over.
    for _ in 0..4 {
        tokio::time::advance(step).await;
        tokio::task::yield_now().await;
    }
    answered.stamp(&clock);
    // The one writing makes progress every second.
    let mut elapsed = Duration::ZERO;
    while !silent.evict.is_cancelled() {
        tokio::time::advance(step).await;
        tokio::task::yield_now().await;
        writing.stamp(&clock);
        elapsed = Duration::from_secs(2) + step * clock.now().saturating_sub(4);
        assert!(elapsed <= timeout * 12 / 10, "still open after {elapsed:?}");
    }
    assert!(elapsed > timeout, "closed after {elapsed:?}, before the timeout");
    assert!(!answered.evict.is_cancelled() && !writing.evict.is_cancelled() && !serving.evict.is_cancelled());
    for _ in 0..4 * TICKS_PER_TIMEOUT {
        tokio::time::advance(step).await;
        tokio::task::yield_now().await;
    }
    assert!(answered.evict.is_cancelled(), "its own timeout, counted from its last answer");
    assert!(!serving.evict.is_cancelled(), "a connection being served is never cut");
    shutdown.cancel();
    sweeper.await.expect("the sweeper stops at shutdown");
}

/// Serves one connection whose handler waits for `release`, sends one request and shuts down
/// the client's write side. Returns whether the handler was dropped within `watch` (it cannot
/// have finished: it is released only after), and what the client read once it was released.
async fn half_closed_client(notice_hangup: bool, watch: Duration) -> (bool, Vec<u8>) {
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let limits = ConnectionLimits { notice_hangup, ..ConnectionLimits::default() };
    let dropped = Arc::new(AtomicBool::new(false));
    let release = Arc::new(tokio::sync::Notify::new());
    let shutdown = CancellationToken::new();
    let server = {
        let (dropped, release) = (Arc::clone(&dropped), Arc::clone(&release));
        tokio::spawn(accept_loop(listener, limits, shutdown.clone(), None, move |_request| {
            let guard = Dropped(Arc::clone(&dropped));
            let release = Arc::clone(&release);
            async move {
                release.notified().await;
                drop(guard);
                json_response(StatusCode::OK, Bytes::from_static(b"{}"), &JSON_TYPE)
            }
        }))
    };
    let mut client = tokio::net::TcpStream::connect(address).await.expect("connect");
    client.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("request");
    client.shutdown().await.expect("half-close");
    // Time for the server to read the head and, if it watches, the EOF after it.
    let watched = tokio::time::Instant::now();
    while !dropped.load(Ordering::Acquire) && watched.elapsed() < watch {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let was_dropped = dropped.load(Ordering::Acquire);
    release.notify_one();
    let mut answer = Vec::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut client, &mut answer))
            .await;
    shutdown.cancel();
    server.await.expect("the accept loop ends");
    (was_dropped, answer)
}

#[tokio::test]
async fn a_handler_runs_to_its_answer_for_a_client_that_half_closed() {
    let (cancelled, answer) = half_closed_client(false, Duration::from_millis(200)).await;
    assert!(!cancelled, "the handler was dropped at the client's EOF");
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "answer: {:?}", String::from_utf8_lossy(&answer));
}

#[tokio::test]
async fn with_notice_hangup_the_handler_is_dropped_when_the_client_goes() {
    let (cancelled, answer) = half_closed_client(true, Duration::from_secs(5)).await;
    assert!(cancelled, "the handler still ran after the client's EOF");
    assert!(answer.is_empty(), "answer: {:?}", String::from_utf8_lossy(&answer));
}

/// An answer made in a request's own header map carries the answer's two headers and nothing
/// of the request's, whatever it held (a custom name, repeated values, many entries).
#[test]
fn an_answer_in_the_request_map_keeps_none_of_the_request_headers() {
    static JSON: HeaderValue = HeaderValue::from_static("application/json");
    let mut request = HeaderMap::new();
    request.insert(header::HOST, HeaderValue::from_static("127.0.0.1:2773"));
    request.insert("x-aws-parameters-secrets-token", HeaderValue::from_static("the-token"));
    for n in 0..40 {
        let name = http::HeaderName::from_bytes(format!("x-extra-{n}").as_bytes()).expect("a name");
        request.append(name.clone(), HeaderValue::from_static("a"));
        request.append(name, HeaderValue::from_static("b"));
    }
    let answer = json_response_in(request, StatusCode::OK, Bytes::from_static(b"{}"), &JSON);
    let fresh = json_response(StatusCode::OK, Bytes::from_static(b"{}"), &JSON);
    assert_eq!(answer.status(), fresh.status());
    assert_eq!(answer.headers(), fresh.headers());
    assert_eq!(answer.headers().len(), 2);
    assert_eq!(answer.headers().get(header::CACHE_CONTROL), Some(&HeaderValue::from_static("no-store")));
}
