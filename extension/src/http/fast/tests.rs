//! The fast lane against real sockets: which requests it answers, which it leaves to hyper,
//! and that a client sees one answer per request, in order, however its bytes arrive.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::http::{ConnectionLimits, accept_loop, closing_response, json_response};

static JSON_TYPE: HeaderValue = HeaderValue::from_static("application/json");

/// Answers `/cached` at once, `/close` later with `Connection: close`, anything else later;
/// counts each kind.
#[derive(Default)]
struct Lane {
    now: AtomicUsize,
    later: Mutex<Vec<String>>,
}

impl FastLane for Lane {
    fn answer_now(&self, request: &Request<Empty<Bytes>>) -> Option<Bytes> {
        (request.uri().path() == "/cached").then(|| {
            self.now.fetch_add(1, Ordering::SeqCst);
            Bytes::from_static(br#"{"lane":"now"}"#)
        })
    }

    fn answer(
        &self,
        request: Request<Empty<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send + '_>> {
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            self.later.lock().expect("lock").push(path.clone());
            if path == "/close" {
                return closing_response(StatusCode::NO_CONTENT);
            }
            let mut answer = json_response(StatusCode::OK, Bytes::from(format!(r#"{{"lane":"{path}"}}"#)), &JSON_TYPE);
            if path == "/missing" {
                *answer.status_mut() = StatusCode::NOT_FOUND;
            }
            answer
        })
    }
}

struct Server {
    port: u16,
    lane: Arc<Lane>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let lane = Arc::new(Lane::default());
    let shutdown = CancellationToken::new();
    let fast: FastAnswer = Arc::clone(&lane) as FastAnswer;
    let task = tokio::spawn(accept_loop(
        listener,
        ConnectionLimits::default(),
        shutdown.clone(),
        Some(fast),
        |request: Request<hyper::body::Incoming>| async move {
            let body = format!(r#"{{"hyper":"{} {}"}}"#, request.method(), request.uri().path());
            json_response(StatusCode::OK, Bytes::from(body), &JSON_TYPE)
        },
    ));
    Server { port, lane, shutdown, task }
}

impl Server {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("the accept loop ends");
    }
}

/// One parsed answer: status, headers (lower-case names), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// Sends `parts` (each its own write, a pause between), then reads until `count` answers came
/// or the server closed.
async fn exchange(port: u16, parts: &[&[u8]], count: usize) -> (Vec<Answer>, bool) {
    let mut client = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    client.set_nodelay(true).expect("nodelay");
    for part in parts {
        client.write_all(part).await.expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut read = Vec::new();
    let mut answers = Vec::new();
    let mut closed = false;
    while answers.len() < count {
        let mut chunk = [0_u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        if n == 0 {
            closed = true;
            break;
        }
        read.extend_from_slice(&chunk[..n]);
        while let Some((answer, used)) = parse_answer(&read) {
            answers.push(answer);
            read.drain(..used);
        }
    }
    if !closed {
        let mut rest = [0_u8; 64];
        closed = matches!(tokio::time::timeout(Duration::from_millis(100), client.read(&mut rest)).await, Ok(Ok(0)));
    }
    (answers, closed)
}

fn parse_answer(bytes: &[u8]) -> Option<(Answer, usize)> {
    let mut slots = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut slots);
    let httparse::Status::Complete(head) = parsed.parse(bytes).expect("a well-formed answer") else { return None };
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let length: usize =
        headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().expect("a length"));
    if bytes.len() < head + length {
        return None;
    }
    let body = String::from_utf8_lossy(&bytes[head..head + length]).into_owned();
    Some((Answer { status: parsed.code.expect("a status"), headers, body }, head + length))
}

const CACHED: &[u8] = b"GET /cached HTTP/1.1\r\nHost: localhost\r\n\r\n";

#[tokio::test]
async fn a_cached_read_is_answered_by_the_lane_with_hypers_headers() {
    let server = start().await;
    let (answers, closed) = exchange(server.port, &[CACHED, CACHED], 2).await;
    assert!(!closed, "kept alive");
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, r#"{"lane":"now"}"#);
        assert_eq!(answer.header("content-type"), ["application/json"]);
        assert_eq!(answer.header("cache-control"), ["no-store"]);
        assert_eq!(answer.header("content-length"), ["14"]);
        let date = answer.header("date");
        assert_eq!(date.len(), 1);
        assert!(httpdate::parse_http_date(date[0]).is_ok(), "date {date:?}");
        assert_eq!(answer.headers.len(), 4, "{:?}", answer.headers);
    }
    assert_eq!(server.lane.now.load(Ordering::SeqCst), 2);
    server.stop().await;
}

#[tokio::test]
async fn pipelined_requests_get_their_answers_in_order_whoever_answers_them() {
    let server = start().await;
    let pipelined: &[u8] = b"GET /cached HTTP/1.1\r\nHost: h\r\n\r\n\
GET /slow HTTP/1.1\r\nHost: h\r\n\r\n\
GET /missing HTTP/1.1\r\nHost: h\r\n\r\n\
GET /cached HTTP/1.1\r\nHost: h\r\n\r\n\
POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
GET /cached HTTP/1.1\r\nHost: h\r\n\r\n";
    let (answers, _) = exchange(server.port, &[pipelined], 6).await;
    let bodies: Vec<(u16, &str)> = answers.iter().map(|a| (a.status, a.body.as_str())).collect();
    assert_eq!(
        bodies,
        [
            (200, r#"{"lane":"now"}"#),
            (200, r#"{"lane":"/slow"}"#),
            (404, r#"{"lane":"/missing"}"#),
            (200, r#"{"lane":"now"}"#),
            (200, r#"{"hyper":"POST /form"}"#),
            (200, r#"{"hyper":"GET /cached"}"#),
        ],
        "after the POST, hyper serves the connection"
    );
    assert_eq!(answers[2].header("content-length"), ["19"]);
    assert_eq!(answers[2].header("date").len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_request_in_pieces_is_answered_once_whole() {
    let server = start().await;
    let pieces: Vec<&[u8]> = CACHED.chunks(3).chain(CACHED.chunks(7)).collect();
    let (answers, closed) = exchange(server.port, &pieces, 2).await;
    assert!(!closed);
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|a| a.body == r#"{"lane":"now"}"#));
    server.stop().await;
}

#[tokio::test]
async fn requests_framed_otherwise_go_to_hyper_from_the_start() {
    let cases: [&[u8]; 8] = [
        b"GET /cached HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        b"GET /cached HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /cached HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
        b"GET /cached HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"GET /cached HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n",
        b"GET /cached HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /cached HTTP/1.0\r\nHost: h\r\n\r\n",
        b"PUT /cached HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    ];
    let server = start().await;
    for case in cases {
        let (answers, _) = exchange(server.port, &[case], 1).await;
        let shown = String::from_utf8_lossy(case);
        assert_eq!(answers.len(), 1, "{shown}");
        assert!(answers[0].body.starts_with(r#"{"hyper":"#), "{shown} answered by {}", answers[0].body);
    }
    assert_eq!(server.lane.now.load(Ordering::SeqCst), 0, "the lane answered none of them");
    // `Connection: keep-alive` is HTTP/1.1's default: the lane's.
    let keep_alive: &[u8] = b"GET /cached HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n";
    let (answers, _) = exchange(server.port, &[keep_alive], 1).await;
    assert_eq!(answers[0].body, r#"{"lane":"now"}"#);
    server.stop().await;
}

#[tokio::test]
async fn what_hyper_would_refuse_or_cannot_fit_goes_to_hyper_whole() {
    let server = start().await;
    // Not HTTP: hyper's 400, and the connection closed.
    let (answers, closed) = exchange(server.port, &[b"NOT HTTP AT ALL\r\n\r\n"], 1).await;
    assert_eq!(answers.first().map(|a| a.status), Some(400));
    assert!(closed);
    // A head larger than the lane's buffer, within hyper's cap: hyper reads all of it.
    let large = format!("GET /cached HTTP/1.1\r\nHost: h\r\nX-Large: {}\r\n\r\n", "a".repeat(12 * 1024));
    let (answers, _) = exchange(server.port, &[large.as_bytes()], 1).await;
    assert_eq!(answers[0].body, r#"{"hyper":"GET /cached"}"#);
    // More headers than the lane parses.
    let many: String = (0..40).map(|n| format!("X-H{n}: v\r\n")).collect();
    let request = format!("GET /cached HTTP/1.1\r\nHost: h\r\n{many}\r\n");
    let (answers, _) = exchange(server.port, &[request.as_bytes()], 1).await;
    assert_eq!(answers[0].body, r#"{"hyper":"GET /cached"}"#);
    // A header value hyper's `http` refuses (a control character): hyper's 400.
    let (answers, _) = exchange(server.port, &[b"GET /cached HTTP/1.1\r\nHost: h\r\nX-Bad: a\x01b\r\n\r\n"], 1).await;
    assert_eq!(answers.first().map(|a| a.status), Some(400));
    assert_eq!(server.lane.now.load(Ordering::SeqCst), 0);
    server.stop().await;
}

#[tokio::test]
async fn an_answer_that_closes_closes_the_connection() {
    let server = start().await;
    let close: &[u8] = b"GET /close HTTP/1.1\r\nHost: h\r\n\r\n";
    let (answers, closed) = exchange(server.port, &[close, CACHED], 2).await;
    assert_eq!(answers.len(), 1, "nothing answered after the close");
    assert_eq!(answers[0].status, 204);
    assert_eq!(answers[0].header("connection"), ["close"]);
    assert!(closed);
    assert_eq!(server.lane.now.load(Ordering::SeqCst), 0);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_lane_connections() {
    let server = start().await;
    let mut client = TcpStream::connect(("127.0.0.1", server.port)).await.expect("connect");
    client.write_all(CACHED).await.expect("write");
    let mut buffer = [0_u8; 1024];
    let n = client.read(&mut buffer).await.expect("an answer");
    assert!(buffer[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    server.shutdown.cancel();
    let read = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buffer)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed at shutdown: {read:?}");
    server.task.await.expect("the accept loop ends");
}

#[tokio::test]
async fn a_client_that_keeps_sending_is_cut_at_shutdown() {
    let server = start().await;
    let client = TcpStream::connect(("127.0.0.1", server.port)).await.expect("connect");
    let (mut reader, mut writer) = client.into_split();
    let sending = tokio::spawn(async move {
        // Pipelined reads without end, as fast as the socket takes them.
        let burst: Vec<u8> = CACHED.repeat(64);
        while writer.write_all(&burst).await.is_ok() {}
    });
    let draining = tokio::spawn(async move {
        let mut buffer = vec![0_u8; 64 * 1024];
        let mut read = 0;
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return read,
                Ok(n) => read += n,
            }
        }
    });
    while server.lane.now.load(Ordering::SeqCst) < 1_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), server.task)
        .await
        .expect("the accept loop ends at shutdown however fast the client sends")
        .expect("joined");
    let read = tokio::time::timeout(Duration::from_secs(2), draining).await.expect("closed").expect("joined");
    assert!(read > 0);
    sending.abort();
}

#[test]
fn the_ready_head_is_hypers_for_every_length() {
    for length in [0, 1, 9, 10, 99, 65_536, usize::MAX] {
        let mut head = [0_u8; HEAD_CAPACITY];
        let used = ready_head(&mut head, length);
        let text = std::str::from_utf8(&head[..used]).expect("text");
        let expected_start = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: {length}\r\ndate: "
        );
        assert!(text.starts_with(&expected_start), "{text}");
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        assert_eq!(used, expected_start.len() + 29 + 4);
    }
}
