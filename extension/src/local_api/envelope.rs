//! The envelope checks both protocols share: what no local caller needs and an SSRF would
//! bring (a proxy's headers, an absolute-form target, a foreign `Host`), refused before the
//! token, the signature or the allowlist are looked at. Each protocol calls them in its order.

use http::{HeaderMap, HeaderValue, Uri, Version};

use crate::domain::code::Code;
use crate::domain::text::same_bytes;

/// A refusal: the stable code, and a sentence for the caller (the code's own unless the check
/// has something more specific to say). Never a value, a credential or the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The stable code.
    pub code: Code,
    /// The sentence.
    pub message: &'static str,
}

impl Refusal {
    /// A refusal with the code's own sentence.
    pub const fn of(code: Code) -> Self {
        Self { code, message: code.message() }
    }

    /// A refusal with a sentence of its own.
    pub const fn with(code: Code, message: &'static str) -> Self {
        Self { code, message }
    }
}

/// A refusal and the id it concerned, if the request got far enough to name one (the AWS JSON
/// protocols' handlers return it; the caller audits and answers it).
pub type Refused = (Refusal, Option<String>);

/// The content type of the Secrets Manager and Systems Manager JSON protocols (a `static`:
/// checked once, at compile time).
pub static AMZ_JSON: HeaderValue = HeaderValue::from_static("application/x-amz-json-1.1");

impl From<Code> for Refusal {
    fn from(code: Code) -> Self {
        Self::of(code)
    }
}

/// An absolute-form target (`GET http://host/…`): only a proxy sends one.
///
/// # Errors
/// [`Code::AbsoluteTarget`].
pub fn refuse_absolute_target(uri: &Uri) -> Result<(), Refusal> {
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(Refusal::of(Code::AbsoluteTarget));
    }
    Ok(())
}

/// The `Host` header names the loopback address (any case, any port), once (RFC 9112 §3.2:
/// checking only the first of two would let a second, foreign one through to whatever reads
/// the other). HTTP/1.1 requires it (RFC 9112 §3.2: a request without one is refused);
/// HTTP/1.0 may leave it out. `first`: the first `Host` value; `another`: a second came.
fn check_host_values(version: Version, first: Option<&HeaderValue>, another: bool) -> Result<(), Refusal> {
    // Bytes, not `to_str`: a value with a byte outside visible ASCII cannot equal a loopback
    // name, so it is refused all the same, without a validating pass first (callgrind: the
    // string steps were half of this check's ~540 instructions per cached GET).
    let host = match first {
        Some(value) => value.as_bytes(),
        None if version == Version::HTTP_10 || version == Version::HTTP_09 => b"localhost",
        None => return Err(Refusal::with(Code::InvalidHost, "HTTP/1.1 requires a Host header.")),
    };
    if another {
        return Err(Refusal::with(Code::InvalidHost, "The Host header must appear once."));
    }
    // The port's digits walked once from the end; a `:` before them ends the name.
    let digits = host.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let hostname = match host.len().checked_sub(digits + 1) {
        Some(colon) if host[colon] == b':' => &host[..colon],
        _ => host,
    };
    let loopback: [&[u8]; 4] = [b"localhost", b"127.0.0.1", b"[::1]", b"0.0.0.0"];
    // The name as clients send it first, a word at a time; then in any case.
    let exact = loopback.iter().any(|name| same_bytes(hostname, name));
    if !exact && !loopback.iter().any(|name| hostname.eq_ignore_ascii_case(name)) {
        return Err(Refusal::with(Code::InvalidHost, "The Host header must name the loopback address."));
    }
    Ok(())
}

/// Keeps the first value in `first`, and notes in `repeated` that another came.
fn first_or_repeated<'a>(first: &mut Option<&'a HeaderValue>, repeated: &mut bool, value: &'a HeaderValue) {
    if first.is_some() {
        *repeated = true;
    } else {
        *first = Some(value);
    }
}

/// The headers the envelope checks of both protocols read (and the GET API's token), found
/// in one pass over a request's headers: a lookup by name hashes the name, and the six lookups
/// of a cached GET (two proxy headers, the two body headers, `Host`, the token) were about 800
/// of its instructions under callgrind; a request carries a handful of headers, and one walk
/// over them compares lengths first. Each field holds what the lookup it replaces found: the first value, and
/// whether there was another.
#[derive(Debug, Default)]
pub struct Headers<'a> {
    /// `X-Forwarded-For` or `Forwarded` is present.
    pub forwarded: bool,
    /// `Transfer-Encoding` is present.
    pub transfer_encoding: bool,
    /// The first `Content-Length`.
    pub content_length: Option<&'a HeaderValue>,
    /// The first `Host`.
    pub host: Option<&'a HeaderValue>,
    /// A second `Host` came.
    pub hosts_repeated: bool,
    /// The first value of the header named `token_name`.
    pub token: Option<&'a HeaderValue>,
    /// A second token header came.
    pub tokens_repeated: bool,
}

impl<'a> Headers<'a> {
    /// Walks `headers` once; `token_name` is the (lowercase) name of the token header (the
    /// SDK protocol, which has none, reads no `token`).
    pub fn scan(headers: &'a HeaderMap, token_name: &str) -> Self {
        let mut seen = Self::default();
        for (name, value) in headers {
            let name = name.as_str();
            if same_bytes(name.as_bytes(), token_name.as_bytes()) {
                first_or_repeated(&mut seen.token, &mut seen.tokens_repeated, value);
                continue;
            }
            match name {
                "host" => first_or_repeated(&mut seen.host, &mut seen.hosts_repeated, value),
                "content-length" => {
                    seen.content_length.get_or_insert(value);
                }
                "transfer-encoding" => seen.transfer_encoding = true,
                "x-forwarded-for" | "forwarded" => seen.forwarded = true,
                _ => {}
            }
        }
        seen
    }

    /// `X-Forwarded-For` or `Forwarded`: a proxy relayed the request (an SSRF through a proxy).
    ///
    /// # Errors
    /// [`Code::ForwardedRequest`].
    pub fn refuse_forwarded(&self) -> Result<(), Refusal> {
        if self.forwarded {
            return Err(Refusal::of(Code::ForwardedRequest));
        }
        Ok(())
    }

    /// The `Host` header names the loopback address, once; HTTP/1.1 requires it
    /// ([`check_host_values`]).
    ///
    /// # Errors
    /// [`Code::InvalidHost`].
    pub fn check_host(&self, version: Version) -> Result<(), Refusal> {
        check_host_values(version, self.host, self.hosts_repeated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, header};

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append(header::HOST, HeaderValue::from_str(host).expect("a header value"));
        }
        headers
    }

    /// The one-pass scan finds what the lookups it replaced found, whatever the order, case and
    /// repetition of the headers.
    #[test]
    fn the_scan_finds_what_a_lookup_per_header_finds() {
        const TOKEN: &str = "x-aws-parameters-secrets-token";
        let names = ["Host", "HOST", TOKEN, "X-Aws-Parameters-Secrets-Token", "content-length", "Transfer-Encoding"];
        let names = names.iter().chain(&["x-forwarded-for", "Forwarded", "accept", "user-agent", "x-forwarded-host"]);
        let names: Vec<&str> = names.copied().collect();
        // Every sequence of up to three headers from the list, values telling them apart.
        let mut sequences: Vec<Vec<usize>> = vec![vec![]];
        for _ in 0..3 {
            let longer: Vec<Vec<usize>> = sequences
                .iter()
                .filter(|s| s.len() == sequences.last().map_or(0, Vec::len))
                .flat_map(|s| (0..names.len()).map(move |n| [s.clone(), vec![n]].concat()))
                .collect();
            sequences.extend(longer);
        }
        for sequence in sequences {
            let mut headers = HeaderMap::new();
            for (at, &n) in sequence.iter().enumerate() {
                let name = HeaderName::from_bytes(names[n].as_bytes()).expect("a name");
                headers.append(name, HeaderValue::from_str(&at.to_string()).expect("a value"));
            }
            let seen = Headers::scan(&headers, TOKEN);
            let context = format!("{sequence:?}");
            let forwarded = headers.contains_key("x-forwarded-for") || headers.contains_key(header::FORWARDED);
            assert_eq!(seen.forwarded, forwarded, "{context}");
            assert_eq!(seen.transfer_encoding, headers.contains_key(header::TRANSFER_ENCODING), "{context}");
            assert_eq!(seen.content_length, headers.get(header::CONTENT_LENGTH), "{context}");
            assert_eq!(seen.host, headers.get(header::HOST), "{context}");
            assert_eq!(seen.hosts_repeated, headers.get_all(header::HOST).iter().count() > 1, "{context}");
            assert_eq!(seen.token, headers.get(TOKEN), "{context}");
            assert_eq!(seen.tokens_repeated, headers.get_all(TOKEN).iter().count() > 1, "{context}");
            let mut hosts = headers.get_all(header::HOST).iter();
            let (first, another) = (hosts.next(), hosts.next().is_some());
            for version in [Version::HTTP_10, Version::HTTP_11] {
                assert_eq!(seen.check_host(version), check_host_values(version, first, another), "{context}");
            }
        }
    }

    fn check_host(version: Version, headers: &HeaderMap) -> Result<(), Refusal> {
        Headers::scan(headers, "x-aws-parameters-secrets-token").check_host(version)
    }

    #[test]
    fn the_host_is_loopback_once_in_any_case_and_required_by_http_1_1() {
        for host in ["localhost", "localhost:2773", "LOCALHOST:2773", "LocalHost", "127.0.0.1:2773", "[::1]:2773"] {
            assert_eq!(check_host(Version::HTTP_11, &headers(&[host])), Ok(()), "{host}");
        }
        let hostile =
            [&["example.com"][..], &["localhost.evil"], &["127.0.0.1:x"], &["localhost", "evil"], &[""], &[":"]];
        for hosts in hostile {
            assert!(check_host(Version::HTTP_11, &headers(hosts)).is_err(), "{hosts:?}");
        }
        assert_eq!(
            check_host(Version::HTTP_11, &headers(&[])).map_err(|r| r.code),
            Err(Code::InvalidHost),
            "HTTP/1.1 without Host"
        );
        assert_eq!(check_host(Version::HTTP_10, &headers(&[])), Ok(()), "HTTP/1.0 may leave it out");
        // A byte outside visible ASCII (which `HeaderValue::to_str` refuses) is refused too.
        let mut odd = HeaderMap::new();
        for value in [&b"localhost\xff"[..], b"local\thost", b"localhost:27\xe973", b"\xc4\xb1ocalhost"] {
            odd.insert(header::HOST, HeaderValue::from_bytes(value).expect("a header value"));
            assert!(check_host(Version::HTTP_11, &odd).is_err(), "{value:?}");
        }
    }
}
