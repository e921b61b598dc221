//! The local API on 127.0.0.1: a router, the one read path, and its two protocols.
//!
//! - [`get`]: AWS's Parameters and Secrets extension's GET API (token-checked) and `/ping`;
//! - [`sdk`]: the AWS JSON protocols on `POST /` (SigV4-verified), for unchanged SDK code:
//!   Secrets Manager's, and Systems Manager's in [`ssm`];
//! - [`read`]: the one read path both call once they have parsed a request, which writes the
//!   audit line of every allow and deny;
//! - [`envelope`]: the checks both protocols share, and [`envelope::Refusal`]; [`parameters`]:
//!   what both share for Parameter Store (a name's target, reading it) and the GET API's
//!   parameter path.
//!
//! Each protocol maps the stable [`crate::domain::code::Code`] of a refusal to its own wire
//! form; neither calls into the other.

pub mod envelope;
pub mod get;
pub mod parameters;
pub mod read;
pub mod sdk;
pub mod ssm;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;

use self::envelope::Refusal;
use self::read::ReadPath;
use self::sdk::Signatures;
use crate::config::LocalToken;
use crate::domain::api::Api;
use crate::domain::code::Code;
use crate::domain::request_id::RequestId;
use crate::http::FastLane;

/// The header a function may send on Managed Instances to name its invocation: checked against
/// the invocations running once the Runtime API proxy knows them (the read then uses that
/// invocation's session), else only a label the caller asserts in audit lines.
pub const REQUEST_ID_HEADER: &str = "x-scoped-secrets-request-id";

/// What the local API serves with.
#[derive(Debug)]
pub struct LocalApi {
    /// The one read path.
    pub reader: ReadPath,
    /// The token GET callers present.
    pub token: LocalToken,
    /// What SDK-protocol signatures are verified against.
    pub signatures: Signatures,
    /// Take the caller's [`REQUEST_ID_HEADER`] for audit lines (Managed Instances, where no
    /// INVOKE event names the invocation).
    pub caller_request_ids: bool,
}

impl LocalApi {
    /// Answers one request: `POST /` is the SDK protocol, everything else the GET API.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() == Method::POST && request.uri().path() == "/" {
            // Boxed so a GET's future does not carry the SDK protocol's (every request's
            // future is moved on its way into hyper: 3.3 KB with it inline, 1.4 KB without).
            return Box::pin(sdk::handle(&self.reader, &self.signatures, request)).await;
        }
        self.handle_get(&request).await
    }

    /// [`LocalApi::handle`] for anything but the SDK protocol's `POST /`: the GET API (which
    /// refuses other methods).
    pub async fn handle_get<B: hyper::body::Body>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        match self.caller_request_id(request) {
            Ok(caller) => get::handle(&self.reader, &self.token, caller.as_deref(), request).await,
            Err(refusal) => {
                let status = get::status_of(refusal.code).as_u16();
                self.reader.audit_deny(Api::Get, None, None, refusal.code, status).await;
                get::error_response(refusal)
            }
        }
    }

    /// [`LocalApi::handle`] for a cached GET that needs no wait, answered at once without a
    /// future (see [`get::answer_now`]): the body of its 200 answer, which [`ready_answer`]
    /// makes; `None` for every other request.
    pub fn answer_now<B>(&self, request: &Request<B>) -> Option<Bytes>
    where
        B: hyper::body::Body,
    {
        if request.method() != Method::GET {
            return None;
        }
        let caller = self.caller_request_id(request).ok()?;
        get::answer_now(&self.reader, &self.token, caller.as_deref(), request)
    }

    /// The caller's own request id, where it is taken (Managed Instances): 1 to 64 of
    /// `A-Z a-z 0-9 - _`, else the request is refused.
    fn caller_request_id<B>(&self, request: &Request<B>) -> Result<Option<String>, Refusal> {
        if !self.caller_request_ids {
            return Ok(None);
        }
        let mut values = request.headers().get_all(REQUEST_ID_HEADER).iter();
        let Some(value) = values.next() else { return Ok(None) };
        let id = value.to_str().ok().map(RequestId::parse);
        match (id, values.next()) {
            (Some(Ok(id)), None) => Ok(Some(id.as_str().to_owned())),
            _ => Err(Refusal::of(Code::InvalidRequestId)),
        }
    }
}

/// The connection's fast lane ([`crate::http::FastLane`]) serves the GET API: a cached read
/// at once, anything else through [`LocalApi::handle_get`]; the SDK protocol's `POST /` goes to
/// hyper.
impl FastLane for LocalApi {
    fn answer_now(&self, request: &Request<Empty<Bytes>>) -> Option<Bytes> {
        LocalApi::answer_now(self, request)
    }

    fn answer(
        &self,
        request: Request<Empty<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send + '_>> {
        Box::pin(async move { self.handle_get(&request).await })
    }

    fn header_names(&self) -> &'static [HeaderName] {
        static NAMES: [HeaderName; 2] =
            [HeaderName::from_static(get::TOKEN_HEADER), HeaderName::from_static(REQUEST_ID_HEADER)];
        &NAMES
    }
}

/// The 200 JSON answer with `body` from [`LocalApi::answer_now`], in `request`'s own header map
/// ([`crate::http::json_response_in`]). The request is taken by value where it already is (the
/// accept loop's handler): moving it into a function and out again was a copy of its ~250
/// bytes, and emptying its map in place a default map built and dropped.
#[inline]
pub fn ready_answer<B>(request: Request<B>, body: Bytes) -> Response<Full<Bytes>> {
    crate::http::json_response_in(request.into_parts().0.headers, StatusCode::OK, body, &get::JSON)
}
