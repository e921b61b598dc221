//! The physical limit the benchmark compares the local API with: a bare hyper server on
//! 127.0.0.1 answering every request with one fixed body, with nothing else in the way (no
//! checks, no cache, no audit line, the system allocator).
//!
//! It is built like the extension (same hyper and tokio, the release profile, the musl target
//! when `bench/run.sh` builds it) and served like it: a current-thread runtime, HTTP/1 with
//! keep-alive, `TCP_NODELAY`, and the local API's `Content-Type` and `Cache-Control` headers.
//!
//! `bare_hyper PORT BODY_BYTES`: prints `listening` once bound, then serves until killed.

#![allow(clippy::print_stdout)] // the one line the bench waits for

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    // JSON-looking filler of exactly `size` bytes, like the secret the extension serves.
    let mut body = vec![b'x'; size.max(2)];
    body[0] = b'{';
    body[size.max(2) - 1] = b'}';
    let body = Bytes::from(body);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(port, body))
}

async fn serve(port: u16, body: Bytes) -> std::io::Result<()> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("listening {}", listener.local_addr()?.port());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_request| {
                let mut response = Response::new(Full::new(body.clone()));
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
