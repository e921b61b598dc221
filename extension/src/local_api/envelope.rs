//! The envelope checks both protocols share: what no local caller needs and an SSRF would
//! bring (a proxy's headers, an absolute-form target, a foreign `Host`), refused before the
//! token, the signature or the allowlist are looked at. Each protocol calls them in its order.

use http::{HeaderMap, Uri, header};

use crate::domain::code::Code;

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

/// The content type of the Secrets Manager and Systems Manager JSON protocols.
pub const AMZ_JSON: &str = "application/x-amz-json-1.1";

impl From<Code> for Refusal {
    fn from(code: Code) -> Self {
        Self::of(code)
    }
}

/// `X-Forwarded-For` or `Forwarded`: a proxy relayed the request (an SSRF through a proxy).
///
/// # Errors
/// [`Code::ForwardedRequest`].
pub fn refuse_forwarded(headers: &HeaderMap) -> Result<(), Refusal> {
    if headers.contains_key("x-forwarded-for") || headers.contains_key(header::FORWARDED) {
        return Err(Refusal::of(Code::ForwardedRequest));
    }
    Ok(())
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

/// The `Host` header, if any, names the loopback address, once (RFC 9112 §3.2: checking only
/// the first of two would let a second, foreign one through to whatever reads the other).
///
/// # Errors
/// [`Code::InvalidHost`].
pub fn check_host(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next().map_or(Some("localhost"), |v| v.to_str().ok()).unwrap_or_default();
    if hosts.next().is_some() {
        return Err(Refusal::with(Code::InvalidHost, "The Host header must appear once."));
    }
    let hostname = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    if !matches!(hostname, "localhost" | "127.0.0.1" | "[::1]" | "0.0.0.0") {
        return Err(Refusal::with(Code::InvalidHost, "The Host header must name the loopback address."));
    }
    Ok(())
}
