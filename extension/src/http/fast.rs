//! The local API's fast lane: a connection's requests are parsed here (with `httparse`, the
//! parser hyper itself uses) and its GET requests answered here, a cached read at once and any
//! other GET through [`FastLane::answer`]; the first request the lane does not take, and the
//! rest of the connection, go to hyper with every byte read so far ([`Prefixed`]).
//!
//! Why: under load the extension's CPU per cached GET sets whether requests queue at it or at
//! the client (docs/performance.md, "Who waits"), and hyper's own work per request (the request
//! head turned into a `Request`, its dispatcher, its encoder and write queue) was ~7 k of the
//! ~10 k instructions of a cached GET under callgrind. This lane builds the same `Request` the
//! checks read, so every check is the one the hyper path runs (`LocalApi::answer_now`,
//! `LocalApi::handle_get`), and writes a cached read's answer with one `writev` of a head made
//! on the stack and the body the cache holds: no copy of a secret is made into a connection's
//! buffers.
//!
//! What it never takes: a request with a body or with a framing header (`Content-Length`,
//! `Transfer-Encoding`, `Expect`, `Upgrade`, `TE`, `Trailer`, a `Connection` other than
//! `keep-alive`), another method than GET, an HTTP/1.0 request, a request hyper's parser or the
//! `http` crate would reject, or one whose head is larger than the read buffer: those are
//! hyper's, which answers or refuses them as before.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version, header};
use http_body_util::{BodyExt, Empty, Full};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{AFTER, Clock, SERVING, Slot};
use crate::domain::text::{decimal, same_bytes};

/// What the lane serves with: the GET requests of a listener (the local API's).
pub trait FastLane: Send + Sync + 'static {
    /// A request answered at once (a cached read): the body of its 200 JSON answer
    /// (`application/json`, `no-store`); `None`, with nothing logged or counted, for
    /// [`FastLane::answer`].
    fn answer_now(&self, request: &Request<Empty<Bytes>>) -> Option<Bytes>;

    /// Any other GET request's answer (a read that waits, a refusal, `/ping`).
    fn answer(
        &self,
        request: Request<Empty<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send + '_>>;

    /// Names of custom headers its requests carry (the token header): the lane uses these
    /// `static` names instead of copying each request's into a block of its own, as
    /// `HeaderName::from_bytes` does for a name it does not know.
    fn header_names(&self) -> &'static [HeaderName] {
        &[]
    }
}

/// A listener's [`FastLane`].
pub type FastAnswer = Arc<dyn FastLane>;

/// The lane's read buffer: a head that does not fit goes to hyper (which bounds it by
/// [`super::ConnectionLimits::max_head_bytes`]).
const READ_BUFFER: usize = 8 * 1024;
/// Headers the lane parses; a request with more goes to hyper.
const MAX_HEADERS: usize = 32;

/// What a connection keeps from one request to the next.
#[derive(Debug)]
pub(crate) struct Kept {
    /// Where each header of the head being read lies in it.
    spans: Vec<(Span, Span)>,
    /// The last request target and its parsed form: a function reads the same secret again
    /// and again, and parsing the target was ~850 of a cached GET's ~7.6 k instructions
    /// (callgrind). A copy, not a slice of the read buffer (which it would keep from being
    /// reused); an id the caller sent, never a value or a credential.
    target: Option<(Bytes, Uri)>,
}

impl Kept {
    /// Nothing kept yet.
    pub(crate) fn new() -> Self {
        Self { spans: Vec::with_capacity(MAX_HEADERS), target: None }
    }
}

/// How a connection left the lane.
pub(super) enum Outcome {
    /// Closed: the client hung up, a read or write failed, or the connection was evicted.
    Closed,
    /// For hyper, with what was read and not answered (a whole head, or part of one).
    HandOff(BytesMut),
}

/// Serves `io`'s requests while `answer` answers them; see the module.
pub(super) async fn serve<S>(
    io: &mut S,
    slot: &Slot,
    clock: &Clock,
    answer: &FastAnswer,
    graceful_close: Duration,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buffer = BytesMut::with_capacity(READ_BUFFER);
    // Kept from answer to answer, as hyper keeps its header map.
    let mut headers = HeaderMap::new();
    let mut kept = Kept::new();
    // One waiter on the eviction token for the connection's life: a fresh one for each read
    // registered and removed itself under the token's lock every time (~190 instructions of a
    // cached GET under callgrind).
    let mut evicted = std::pin::pin!(slot.evict.cancelled());
    loop {
        // Every whole head already read (a pipelining client sends several); none once the
        // connection is evicted or the listener shuts down (an answer being written finishes).
        while !buffer.is_empty() {
            if slot.evict.is_cancelled() {
                return Outcome::Closed;
            }
            let parsed = parse(&mut buffer, std::mem::take(&mut headers), &mut kept, answer.header_names());
            let (head, request) = match parsed {
                Parsed::Request(head, request) => (head, request),
                Parsed::Partial => break,
                Parsed::NotOurs => return Outcome::HandOff(buffer),
            };
            slot.state.store(SERVING, Ordering::Release);
            let ready = answer.answer_now(&request);
            // Shutdown lets the request being answered finish within `graceful_close`.
            let cut = async {
                evicted.as_mut().await;
                tokio::time::sleep(graceful_close).await;
            };
            let served = async {
                match ready {
                    Some(body) => {
                        headers = request.into_parts().0.headers;
                        headers.clear();
                        drop(head);
                        slot.stamp(clock);
                        slot.state.store(AFTER, Ordering::Release);
                        let mut head = [0_u8; HEAD_CAPACITY];
                        let length = ready_head(&mut head, body.len());
                        write_both(io, &head[..length], &body).await.map(|()| true)
                    }
                    None => {
                        let response = answer.answer(request).await;
                        drop(head);
                        slot.stamp(clock);
                        slot.state.store(AFTER, Ordering::Release);
                        write_response(io, response).await
                    }
                }
            };
            tokio::select! {
                biased;
                served = served => match served {
                    Ok(true) => {}
                    Ok(false) | Err(_) => return Outcome::Closed,
                },
                () = cut => return Outcome::Closed,
            }
        }
        if buffer.len() >= READ_BUFFER {
            return Outcome::HandOff(buffer);
        }
        // A client that keeps sending would otherwise win every `biased` read below.
        if slot.evict.is_cancelled() {
            return Outcome::Closed;
        }
        buffer.reserve(READ_BUFFER - buffer.len());
        tokio::select! {
            biased;
            read = io.read_buf(&mut buffer) => match read {
                Ok(0) | Err(_) => return Outcome::Closed,
                Ok(_) => {}
            },
            () = evicted.as_mut() => return Outcome::Closed,
        }
    }
}

/// Writes an answer made by [`FastLane::answer`]: its status, its headers, its length and the
/// date, then its body. Returns whether the connection stays open (not if the answer says
/// `Connection: close`).
async fn write_response<S: AsyncWrite + Unpin>(io: &mut S, response: Response<Full<Bytes>>) -> io::Result<bool> {
    let (parts, body) = response.into_parts();
    // Full's one frame, ready at once: the body's own bytes, not a copy.
    let body = body.collect().await.map(|collected| collected.to_bytes()).unwrap_or_default();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::DATE {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"content-length: ");
    head.extend_from_slice(decimal(body.len() as u64, &mut [0; 20]));
    head.extend_from_slice(b"\r\ndate: ");
    with_date(|date| head.extend_from_slice(date));
    head.extend_from_slice(b"\r\n\r\n");
    write_both(io, &head, &body).await?;
    let closes =
        parts.headers.get_all(header::CONNECTION).iter().any(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
    Ok(!closes)
}

/// A request's head and what follows it, put back together for hyper.
fn unread(head: &Bytes, rest: &BytesMut) -> BytesMut {
    let mut all = BytesMut::with_capacity(head.len() + rest.len());
    all.extend_from_slice(head);
    all.extend_from_slice(rest);
    all
}

// Matched where it is made, once per request: boxing the request would allocate for each.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
    /// A whole head the lane may answer: its bytes (taken from the buffer) and its request.
    Request(Bytes, Request<Empty<Bytes>>),
    /// Not a whole head yet.
    Partial,
    /// hyper's: see the module.
    NotOurs,
}

/// Parses the head at the start of `buffer`; a head the lane may answer is taken out of it.
pub(crate) fn parse(buffer: &mut BytesMut, headers: HeaderMap, kept: &mut Kept, names: &[HeaderName]) -> Parsed {
    // Not zeroed first (1 KiB, ~140 instructions a request): httparse writes those it fills.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match parsed.parse_with_uninit_headers(buffer, &mut slots) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotOurs,
    };
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return Parsed::NotOurs;
    }
    let base = buffer.as_ptr() as usize;
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        (start, start + part.len())
    };
    let Some(target) = parsed.path.map(|path| at(path.as_bytes())) else { return Parsed::NotOurs };
    kept.spans.clear();
    for header in parsed.headers.iter() {
        if frames(header.name.as_bytes(), header.value) {
            return Parsed::NotOurs;
        }
        kept.spans.push((at(header.name.as_bytes()), at(header.value)));
    }
    let head = buffer.split_to(length).freeze();
    match request(&head, target, kept, headers, names) {
        Some(request) => Parsed::Request(head, request),
        None => {
            // Put back: hyper reads the head again from the start.
            let rest = std::mem::take(buffer);
            *buffer = unread(&head, &rest);
            Parsed::NotOurs
        }
    }
}

/// Where a part of a head lies in it: start and end.
pub(crate) type Span = (usize, usize);

/// Whether a header bears on how the message is framed or the connection kept: hyper's.
fn frames(name: &[u8], value: &[u8]) -> bool {
    const FRAMING: [&[u8]; 6] = [b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"te", b"trailer"];
    if name.eq_ignore_ascii_case(b"connection") {
        return !value.eq_ignore_ascii_case(b"keep-alive");
    }
    FRAMING.iter().any(|framing| name.eq_ignore_ascii_case(framing))
}

/// The `Request` hyper would have built from the same head (its target and header values
/// share the head's bytes); `None` where hyper would have refused it.
fn request(
    head: &Bytes,
    target: Span,
    kept: &mut Kept,
    mut headers: HeaderMap,
    names: &[HeaderName],
) -> Option<Request<Empty<Bytes>>> {
    let target = &head[target.0..target.1];
    let uri = match &kept.target {
        Some((last, uri)) if same_bytes(last, target) => uri.clone(),
        _ => {
            let copy = Bytes::copy_from_slice(target);
            let uri = Uri::from_maybe_shared(copy.clone()).ok()?;
            kept.target = Some((copy, uri.clone()));
            uri
        }
    };
    headers.reserve(kept.spans.len());
    for &(name, value) in &kept.spans {
        let name = &head[name.0..name.1];
        let known = names
            .iter()
            .find(|known| known.as_str().len() == name.len() && known.as_str().as_bytes().eq_ignore_ascii_case(name));
        let name = match known {
            Some(known) => known.clone(),
            None => HeaderName::from_bytes(name).ok()?,
        };
        let value = HeaderValue::from_maybe_shared(head.slice(value.0..value.1)).ok()?;
        headers.append(name, value);
    }
    let mut request = Request::new(Empty::new());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

/// Room for the answer's head: the status line, three headers, a length of up to 20 digits
/// and the date.
const HEAD_CAPACITY: usize = 160;

/// Writes the head of a 200 JSON answer with a body of `length` bytes into `out` (what
/// `http::json_response_in` and hyper's encoder write: the content type, `no-store`, the
/// length and the date) and returns its length.
fn ready_head(out: &mut [u8; HEAD_CAPACITY], length: usize) -> usize {
    const START: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: ";
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(START);
    put(decimal(length as u64, &mut [0; 20]));
    put(b"\r\ndate: ");
    with_date(|date| put(date));
    put(b"\r\n\r\n");
    at
}

thread_local! {
    /// The `Date` value for the current second, made once a second (as hyper caches its own).
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Calls `f` with the IMF-fixdate of now (`Mon, 07 Dec 2026 12:00:00 GMT`).
fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == date.1.len() {
                date.1.copy_from_slice(text.as_bytes());
                date.0 = second;
            }
        }
        f(&date.1);
    });
}

/// Writes `head` then `body`, with as few writes as the socket takes (one `writev` when both
/// fit in its buffer).
async fn write_both<S: AsyncWrite + Unpin>(io: &mut S, mut head: &[u8], body: &Bytes) -> io::Result<()> {
    let mut body = body.clone();
    while !head.is_empty() {
        let written = io.write_vectored(&[IoSlice::new(head), IoSlice::new(&body)]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = written.min(head.len());
        head = &head[from_head..];
        body.advance(written - from_head);
    }
    io.write_all(&body).await
}

mod prefixed;
#[cfg(test)]
mod tests;

pub(super) use prefixed::Prefixed;
