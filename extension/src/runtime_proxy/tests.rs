//! The proxy against a Runtime API on loopback that records what reaches it: what passes
//! unchanged, what is reported and when, and what an unreachable upstream looks like to the
//! runtime. Real sockets, paused time (so a timeout of the proxy's own would fire at once).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::domain::request_id::RequestId;

const ID: &str = "8f0e7c1a-1b2c-4d5e-9f00-112233445566";

/// What the upstream received: (method and path, headers, data frames, trailers).
type Seen = Arc<Mutex<Vec<(String, HeaderMap, Vec<Bytes>, Option<HeaderMap>)>>>;

/// A Runtime API on loopback: `/next` answers with `next_headers`; results answer 202, or 404
/// for any id but [`ID`]. Returns its address and what it received.
async fn lambda(next_headers: Vec<(&'static str, String)>) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(crate::http::accept_loop(
        listener,
        ConnectionLimits::default(),
        CancellationToken::new(),
        None,
        move |request: Request<Incoming>| {
            let (record, next_headers) = (Arc::clone(&record), next_headers.clone());
            async move {
                let line = format!("{} {}", request.method(), request.uri().path());
                let (parts, mut body) = request.into_parts();
                let (mut data, mut trailers) = (Vec::new(), None);
                while let Some(Ok(frame)) = body.frame().await {
                    match frame.into_data() {
                        Ok(chunk) => data.push(chunk),
                        Err(frame) => trailers = frame.into_trailers().ok(),
                    }
                }
                record.lock().expect("lock").push((line.clone(), parts.headers, data, trailers));
                let mut response = Response::new(Full::new(Bytes::from_static(b"{\"event\":1}")));
                if line.ends_with("/next") {
                    for (name, value) in next_headers {
                        response.headers_mut().insert(name, value.parse().expect("header"));
                    }
                } else if !line.contains(ID) {
                    *response.status_mut() = StatusCode::NOT_FOUND;
                    *response.body_mut() = Full::new(Bytes::from_static(b"Unknown request ID"));
                } else {
                    *response.status_mut() = StatusCode::ACCEPTED;
                }
                response
            }
        },
    ));
    (address, seen)
}

/// The proxy in front of `upstream`, on a port of its own. Returns its address and its reports.
async fn proxy(upstream: &str) -> (String, mpsc::Receiver<RuntimeEvent>, Arc<AtomicBool>) {
    let bound = Bound {
        listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        address: ([127, 0, 0, 1], 0).into(),
        marker: None,
    };
    let address = bound.listener.local_addr().expect("address").to_string();
    let (sender, receiver) = mpsc::channel(EVENT_QUEUE);
    let delivered = Arc::new(AtomicBool::new(false));
    tokio::spawn(serve_proxy(bound, upstream.to_owned(), sender, Arc::clone(&delivered), CancellationToken::new()));
    (address, receiver, delivered)
}

/// One request on a raw connection; returns the raw answer (head and a `Content-Length` body).
async fn raw(stream: &mut TcpStream, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = stream.read(&mut buffer).await.expect("read");
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            if read == 0 {
                return text;
            }
            continue;
        };
        let length = text[..end]
            .lines()
            .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if read == 0 || answer.len() >= end + 4 + length {
            return text;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_next_answer_is_reported_with_its_id_deadline_and_a_bounded_tenant() {
    let tenant = "t".repeat(500);
    let headers = vec![
        ("lambda-runtime-aws-request-id", ID.to_owned()),
        ("lambda-runtime-deadline-ms", "1700000003000".to_owned()),
        ("lambda-runtime-aws-tenant-id", tenant),
    ];
    let (upstream, _) = lambda(headers).await;
    let (address, mut events, delivered) = proxy(&upstream).await;
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    let answer = raw(&mut stream, "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains(&format!("lambda-runtime-aws-request-id: {ID}")));
    let Some(RuntimeEvent::Next { request_id, deadline_ms, tenant_id }) = events.recv().await else {
        panic!("no event")
    };
    assert_eq!((request_id.as_str(), deadline_ms), (ID, 1_700_000_003_000));
    assert_eq!(tenant_id.map(|t| t.len()), Some(MAX_TENANT_HEADER), "cut before it is kept");
    assert!(delivered.load(std::sync::atomic::Ordering::Acquire));

    // An id that is no request id is forwarded, never reported.
    let (upstream, _) = lambda(vec![
        ("lambda-runtime-aws-request-id", "../../etc".to_owned()),
        ("lambda-runtime-deadline-ms", "1".to_owned()),
    ])
    .await;
    let (address, mut events, delivered) = proxy(&upstream).await;
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    let answer = raw(&mut stream, "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(events.try_recv().is_err() && !delivered.load(std::sync::atomic::Ordering::Acquire));
}

#[tokio::test(start_paused = true)]
async fn a_result_is_reported_once_lambda_accepted_it_and_a_refusal_passes_through() {
    let (upstream, seen) = lambda(Vec::new()).await;
    let (address, mut events, _) = proxy(&upstream).await;
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    let body = "{\"ok\":true}";
    let request = format!(
        "POST /2018-06-01/runtime/invocation/{ID}/response HTTP/1.1\r\nHost: 127.0.0.1:2774\r\nX-Custom: Kept As Is\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert!(raw(&mut stream, &request).await.starts_with("HTTP/1.1 202"));
    let reported = events.recv().await.expect("an event");
    assert_eq!(
        reported,
        RuntimeEvent::Responded { request_id: RequestId::parse(ID).expect("valid"), outcome: Outcome::Response }
    );
    {
        let seen = seen.lock().expect("lock");
        let (line, headers, data, _) = &seen[0];
        assert_eq!(line, &format!("POST /2018-06-01/runtime/invocation/{ID}/response"));
        assert_eq!(headers.get("host").map(|v| v.as_bytes()), Some(&b"127.0.0.1:2774"[..]), "Host as sent");
        assert_eq!(headers.get("x-custom").map(|v| v.as_bytes()), Some(&b"Kept As Is"[..]));
        assert_eq!(data.concat(), body.as_bytes());
    }
    // Lambda's refusal (another id): the same status and body, and nothing reported.
    let other = "00000000-0000-4000-8000-000000000000";
    let request = format!(
        "POST /2018-06-01/runtime/invocation/{other}/error HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let answer = raw(&mut stream, &request).await;
    assert!(answer.starts_with("HTTP/1.1 404") && answer.ends_with("Unknown request ID"), "{answer}");
    tokio::task::yield_now().await;
    assert!(events.try_recv().is_err());
}

// The trailers are the stream's last frame: hyper drops the body after writing them without
// polling it again, so the end is seen on the trailers frame itself.
#[tokio::test]
async fn a_streamed_response_passes_frame_by_frame_with_trailers_and_ends_with_the_stream() {
    let (upstream, seen) = lambda(Vec::new()).await;
    let (address, mut events, _) = proxy(&upstream).await;
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    let head = format!(
        "POST /2018-06-01/runtime/invocation/{ID}/response HTTP/1.1\r\nHost: x\r\n\
         Lambda-Runtime-Function-Response-Mode: streaming\r\nTransfer-Encoding: chunked\r\n\
         Trailer: Lambda-Runtime-Function-Error-Type\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(b"5\r\nfirst\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(events.try_recv().is_err(), "not before the stream's end");
    stream.write_all(b"6\r\nsecond\r\n0\r\nLambda-Runtime-Function-Error-Type: Partial\r\n\r\n").await.expect("write");
    let mut answer = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer; upstream saw {:?}", seen.lock().expect("lock").len()))
        .expect("answer");
    assert_eq!(&answer, b"HTTP/1.1 202");
    let reported =
        tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("reported at the stream's end");
    assert!(matches!(reported, Some(RuntimeEvent::Responded { outcome: Outcome::Response, .. })));
    let seen = seen.lock().expect("lock");
    let (_, _, data, trailers) = &seen[0];
    assert_eq!(data, &[Bytes::from_static(b"first"), Bytes::from_static(b"second")], "frame by frame");
    let trailers = trailers.as_ref().expect("trailers");
    assert_eq!(trailers.get("lambda-runtime-function-error-type").map(|v| v.as_bytes()), Some(&b"Partial"[..]));
}

#[tokio::test(start_paused = true)]
async fn a_runtime_connection_idle_for_as_long_as_its_function_runs_stays_open() {
    let (upstream, _) =
        lambda(vec![("lambda-runtime-aws-request-id", ID.to_owned()), ("lambda-runtime-deadline-ms", "1".to_owned())])
            .await;
    let (address, _events, _) = proxy(&upstream).await;
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    assert!(
        raw(&mut stream, "GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    );
    // Fifteen minutes of function (the paused clock jumps there: any timer of ours would fire).
    tokio::time::sleep(Duration::from_secs(900)).await;
    let request = format!(
        "POST /2018-06-01/runtime/invocation/{ID}/response HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    assert!(raw(&mut stream, &request).await.starts_with("HTTP/1.1 202"), "the same connection still serves");
}

#[tokio::test]
async fn an_unreachable_lambda_closes_the_runtimes_connection_without_an_answer() {
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("address").to_string();
    let (address, _events, _) = proxy(&closed).await;
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    stream.write_all(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.expect("closed");
    assert!(
        read.is_ok_and(|n| n == 0) || answer.is_empty(),
        "no made-up status: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn the_extension_refuses_to_forward_to_itself() {
    for own in
        ["127.0.0.1:2774", "localhost:2774", "LOCALHOST:2774", " 127.0.0.1:2774", "127.1.2.3:2774", "0.0.0.0:2774"]
    {
        assert!(is_own_address(own, 2774), "{own}");
    }
    for other in ["127.0.0.1:9001", "127.0.0.1:27740", "10.0.0.1:2774", "2774", "", "[::1]:2774"] {
        assert!(!is_own_address(other, 2774), "{other}");
    }
}
