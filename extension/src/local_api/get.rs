//! The GET protocol of AWS's Parameters and Secrets Lambda Extension (and the `/v1/` path of
//! its Secrets Manager Agent): `GET /secretsmanager/get?secretId=…[&versionStage=…|&versionId=…]
//! [&jsonKey=…]` and `GET /systemsmanager/parameters/get?name=…` ([`super::parameters`]) with the
//! `X-Aws-Parameters-Secrets-Token` header, and a token-free `GET /ping`.
//!
//! [`route`] decides from the request alone (no I/O): envelope, path, token (constant-time),
//! query. A read then goes through the [`ReadPath`]; every answer that is not 200 carries
//! `{"error": CODE, "message": …}`, with the status [`status_of`] gives the code.
//! `jsonKey` (the secrets path only) answers the same JSON with `SecretString` replaced by one
//! top-level field of the secret's JSON object.
//! See <https://docs.aws.amazon.com/secretsmanager/latest/userguide/retrieving-secrets_lambda.html>.

use std::cell::RefCell;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::Full;
use hyper::body::Body;
use tokio::time::Instant;

use super::envelope::{Headers, Refusal, refuse_absolute_target};
use super::parameters::{self, ParameterQuery};
use super::read::{Read, ReadPath};
use crate::config::LocalToken;
use crate::domain::api::Api;
use crate::domain::code::Code;
use crate::domain::item::Wanted;
use crate::domain::text::{form_pairs, has_replacement, percent_decode_lossy, same_bytes};
use crate::domain::version::{self, Version};
use crate::http::json_response;
use crate::secrets::served::Item;

/// The token header AWS's extension defines.
pub const TOKEN_HEADER: &str = "x-aws-parameters-secrets-token";
/// Longest request target accepted.
pub const MAX_TARGET_BYTES: usize = 4_096;
/// Longest secret id accepted (Secrets Manager's own limit is 2,048).
pub const MAX_SECRET_ID_BYTES: usize = 2_048;
/// Longest `jsonKey` accepted.
pub const MAX_JSON_KEY_CHARS: usize = 256;
/// The parameters path of AWS's extension.
pub const PARAMETERS_PATH: &str = "/systemsmanager/parameters/get";
/// Content type of the GET API's answers (a `static`: checked once, at compile time).
pub(super) static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Where a local GET request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /ping`: no token needed, no secret data.
    Ping,
    /// A read that passed every check needing nothing but the request (the allowlist is next).
    Read {
        /// Which face of the API.
        api: Api,
        /// The parsed query.
        query: SecretQuery,
    },
    /// A parameter read (`/systemsmanager/parameters/get`) that passed the same checks.
    Parameter {
        /// The parsed query.
        query: ParameterQuery,
    },
}

/// Answers one GET request (`caller`: the Managed Instances request id it asserted).
pub async fn handle<B: Body>(
    reader: &ReadPath,
    token: &LocalToken,
    caller: Option<&str>,
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    let deadline = reader.deadline();
    let (api, query) = match route(request, token) {
        Ok(Route::Ping) => return json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#), &JSON),
        Ok(Route::Read { api, query }) => (api, query),
        Ok(Route::Parameter { query }) => return answer_parameter(reader, caller, &query, deadline).await,
        Err((refusal, api)) => {
            let status = status_of(refusal.code).as_u16();
            if request.uri().path() == PARAMETERS_PATH {
                reader.audit_parameter_deny(api, caller, None, refusal.code, status).await;
            } else {
                reader.audit_deny(api, caller, None, refusal.code, status).await;
            }
            return error_response(refusal);
        }
    };
    let read = Read { secret_id: &query.secret_id, api, refresh: query.refresh, caller, stage_of_id: None };
    let answered = reader.read(read, query.version.clone(), deadline).await.map_err(|e| e.code()).and_then(|value| {
        match &query.json_key {
            // The body is the value's own zeroizing JSON: wiped with the value.
            None => Ok(value.json_body()),
            Some(key) => value.json_with_key(key).map(Bytes::from_owner).map_err(|e| e.code()),
        }
    });
    match answered {
        Ok(body) => json_response(StatusCode::OK, body, &JSON),
        Err(code) => {
            let refusal = Refusal::of(code);
            let status = status_of(refusal.code).as_u16();
            reader.audit_deny(api, caller, Some(&query.secret_id), refusal.code, status).await;
            error_response(refusal)
        }
    }
}

/// Answers a cached read at once, without a future: a `/secretsmanager/get` or `/v1/` read that
/// routes and needs no `jsonKey`, or a parameter read, served by [`ReadPath::read_ready`]. The
/// body of the 200 JSON answer; `None`, with nothing logged or counted, for anything else
/// ([`handle`] answers it).
pub fn answer_now<B: Body>(
    reader: &ReadPath,
    token: &LocalToken,
    caller: Option<&str>,
    request: &Request<B>,
) -> Option<Bytes> {
    let checked = route_checked(request, token).ok().filter(|checked| *checked != Checked::Ping)?;
    let target = request.uri().path_and_query()?.as_str();
    LAST_ROUTE.with(|last| {
        // Not re-entered (nothing below answers a request); were it, the read goes the long way.
        let mut last = last.try_borrow_mut().ok()?;
        let parsed_before = last.as_ref().is_some_and(|(before, _)| same_bytes(before.as_bytes(), target.as_bytes()));
        if !parsed_before {
            *last = Some((target.to_owned(), checked.parse(request.uri()).ok()?));
        }
        let (_, route) = last.as_ref()?;
        // The body is the value's own zeroizing JSON: wiped with the value.
        match route {
            Route::Read { api, query } if query.json_key.is_none() => {
                let read =
                    Read { secret_id: &query.secret_id, api: *api, refresh: query.refresh, caller, stage_of_id: None };
                match reader.read_ready(read, Wanted::Secret(query.version.clone()))? {
                    Item::Secret(value) => Some(value.json_body()),
                    Item::Parameter(_) => None,
                }
            }
            Route::Parameter { query } => {
                let ParameterQuery { name, version, decrypt } = query;
                let value = parameters::read_ready(reader, Api::Get, caller, name, version.clone(), *decrypt)?;
                Some(value.get_body())
            }
            Route::Read { .. } | Route::Ping => None,
        }
    })
}

thread_local! {
    /// The target (path and query) the ready path last parsed, and its route: a function reads
    /// the same secret or parameter again and again, and parsing its query was ~1 k of a
    /// cached GET's instructions (callgrind). Checked afresh on every request: envelope, path
    /// and token.
    static LAST_ROUTE: RefCell<Option<(String, Route)>> = const { RefCell::new(None) };
}

/// Answers a routed `/systemsmanager/parameters/get` (`caller`: the Managed Instances request
/// id it asserted): 200 with `{"Parameter": {…}}`, else the code's status and JSON error.
async fn answer_parameter(
    reader: &ReadPath,
    caller: Option<&str>,
    query: &ParameterQuery,
    deadline: Instant,
) -> Response<Full<Bytes>> {
    let ParameterQuery { name, version, decrypt } = query;
    match parameters::read(reader, Api::Get, caller, name, version.clone(), *decrypt, deadline).await {
        // The body is the value's own zeroizing JSON: wiped with the value.
        Ok(value) => json_response(StatusCode::OK, value.get_body(), &JSON),
        Err(refusal) => {
            let status = status_of(refusal.code).as_u16();
            reader.audit_parameter_deny(Api::Get, caller, Some(&query.name), refusal.code, status).await;
            error_response(refusal)
        }
    }
}

/// The local GET API's decision from the request alone, with no I/O: envelope (method, proxy
/// headers, body, target form and length, host), path, token (constant-time), query. The
/// handler's front half, and what the request fuzz target drives.
///
/// # Errors
/// The [`Refusal`] and the face of the API it was refused on.
pub fn route<B: Body>(request: &Request<B>, token: &LocalToken) -> Result<Route, (Refusal, Api)> {
    route_checked(request, token)?.parse(request.uri())
}

/// Where a request goes once its envelope, path and token are checked; its query not read yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    Ping,
    Parameter,
    Read(Api),
}

/// [`route`]'s checks: envelope, path, token (everything but the query).
fn route_checked<B: Body>(request: &Request<B>, token: &LocalToken) -> Result<Checked, (Refusal, Api)> {
    let headers = Headers::scan(request.headers(), TOKEN_HEADER);
    check_envelope(request, &headers).map_err(|r| (r, Api::Get))?;
    let path = request.uri().path();
    let checked = match path {
        "/ping" => return Ok(Checked::Ping),
        PARAMETERS_PATH => Checked::Parameter,
        "/secretsmanager/get" => Checked::Read(Api::Get),
        _ if path.starts_with("/v1/") => Checked::Read(Api::AgentPath),
        _ => return Err((Refusal::of(Code::NotFound), Api::Get)),
    };
    let api = match checked {
        Checked::Read(api) => api,
        Checked::Ping | Checked::Parameter => Api::Get,
    };
    check_token(&headers, token).map_err(|r| (r, api))?;
    Ok(checked)
}

impl Checked {
    /// The route, with the query (and a `/v1/` path's secret id) parsed.
    fn parse(self, uri: &Uri) -> Result<Route, (Refusal, Api)> {
        let query = uri.query().unwrap_or_default();
        match self {
            Self::Ping => Ok(Route::Ping),
            Self::Parameter => {
                let query = ParameterQuery::parse(query).map_err(|r| (r, Api::Get))?;
                Ok(Route::Parameter { query })
            }
            Self::Read(api) => {
                let path_secret_id = (api == Api::AgentPath).then(|| percent_decode_lossy(&uri.path()[4..]));
                let query = SecretQuery::parse(query, path_secret_id).map_err(|r| (r, api))?;
                Ok(Route::Read { api, query })
            }
        }
    }
}

/// The HTTP status of each code on the GET API (one `match`: every code has one).
pub fn status_of(code: Code) -> StatusCode {
    use StatusCode as S;
    match code {
        Code::MethodNotAllowed => S::METHOD_NOT_ALLOWED,
        Code::BodyNotAllowed | Code::TargetTooLong | Code::BodyTooLarge => S::PAYLOAD_TOO_LARGE,
        Code::NotFound
        | Code::SecretNotFound
        | Code::ParameterNotFound
        | Code::ParameterVersionNotFound
        | Code::JsonKeyNotFound => S::NOT_FOUND,
        Code::MissingToken => S::UNAUTHORIZED,
        Code::InvalidToken
        | Code::SecretNotAllowed
        | Code::ParameterNotAllowed
        | Code::UpstreamAccessDenied
        | Code::NoFunctionCredentials
        | Code::SignatureStale
        | Code::SignatureWrongCredentials
        | Code::SignatureMalformed
        | Code::SignatureMismatch => S::FORBIDDEN,
        Code::ForwardedRequest
        | Code::AbsoluteTarget
        | Code::InvalidHost
        | Code::InvalidRequestId
        | Code::RequestIdNotLive
        | Code::InvalidQuery
        | Code::UnknownParameter
        | Code::DuplicateParameter
        | Code::InvalidRefreshNow
        | Code::MissingSecretId
        | Code::InvalidSecretId
        | Code::ConflictingVersion
        | Code::InvalidVersionStage
        | Code::InvalidVersionId
        | Code::InvalidJsonKey
        | Code::MissingName
        | Code::InvalidName
        | Code::InvalidParameterVersion
        | Code::InvalidLabel
        | Code::InvalidWithDecryption
        | Code::InvalidReference
        | Code::SecretNotJsonObject
        | Code::BodyTimeout
        | Code::UnsupportedContentType
        | Code::UnsupportedOperation
        | Code::InvalidParameter
        | Code::InvalidRequest
        | Code::VersionStageMismatch => S::BAD_REQUEST,
        Code::UpstreamTimeout | Code::SessionTimeout | Code::SessionWaitTimeout => S::GATEWAY_TIMEOUT,
        Code::UpstreamError | Code::SessionRefused | Code::SessionFailed => S::BAD_GATEWAY,
        Code::UpstreamThrottled
        | Code::SessionThrottled
        | Code::NoActiveInvocation
        | Code::InvocationEnded
        | Code::ShuttingDown
        | Code::SnapstartInit
        | Code::TenantUnknown
        | Code::TenantRefused
        | Code::TenantChanged => S::SERVICE_UNAVAILABLE,
    }
}

/// `{"error": CODE, "message": …}` with the code's status; a 503 says when to retry.
pub fn error_response(refusal: Refusal) -> Response<Full<Bytes>> {
    let status = status_of(refusal.code);
    let body = serde_json::json!({ "error": refusal.code.as_str(), "message": refusal.message }).to_string();
    let mut response = json_response(status, Bytes::from(body), &JSON);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn check_token(headers: &Headers<'_>, token: &LocalToken) -> Result<(), Refusal> {
    let Some(presented) = headers.token else {
        return Err(Refusal::of(Code::MissingToken));
    };
    if headers.tokens_repeated || !token.matches(presented.as_bytes()) {
        return Err(Refusal::of(Code::InvalidToken));
    }
    Ok(())
}

/// Checks that apply to every GET path: method, proxies, body, target form and length, host
/// (`headers`: the request's, scanned once).
fn check_envelope<B: Body>(request: &Request<B>, headers: &Headers<'_>) -> Result<(), Refusal> {
    if request.method() != Method::GET {
        return Err(Refusal::with(Code::MethodNotAllowed, "Only GET is served."));
    }
    headers.refuse_forwarded()?;
    let declared = headers.content_length.and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if headers.transfer_encoding || declared.is_some_and(|n| n > 0) || !request.body().is_end_stream() {
        return Err(Refusal::of(Code::BodyNotAllowed));
    }
    refuse_absolute_target(request.uri())?;
    if request.uri().path_and_query().map_or(0, |p| p.as_str().len()) > MAX_TARGET_BYTES {
        return Err(Refusal::of(Code::TargetTooLong));
    }
    headers.check_host(request.version())
}

/// A parsed `/secretsmanager/get` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretQuery {
    /// `secretId`.
    pub secret_id: String,
    /// `versionStage` or `versionId`.
    pub version: Version,
    /// `refreshNow`: skip the cache for this read.
    pub refresh: bool,
    /// `jsonKey`: answer with this top-level field of the secret's JSON object only.
    pub json_key: Option<String>,
}

impl SecretQuery {
    /// Parses the query string: `secretId` once (unless the path named the secret, as in
    /// `/v1/{secretId}`), at most one of `versionStage`/`versionId`, `refreshNow` and `jsonKey`.
    ///
    /// # Errors
    /// A [`Refusal`] with the reason.
    pub fn parse(query: &str, path_secret_id: Option<String>) -> Result<Self, Refusal> {
        let (mut secret_id, mut stage, mut id, mut refresh, mut json_key) = (None, None, None, None, None);
        let from_path = path_secret_id.is_some();
        for (name, value) in form_pairs(query) {
            if has_replacement(&value) || has_replacement(&name) {
                return Err(Refusal::of(Code::InvalidQuery));
            }
            let slot = match name.as_ref() {
                "secretId" if !from_path => &mut secret_id,
                "refreshNow" => &mut refresh,
                "versionStage" => &mut stage,
                "versionId" => &mut id,
                "jsonKey" => &mut json_key,
                _ => return Err(Refusal::of(Code::UnknownParameter)),
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(Refusal::of(Code::DuplicateParameter));
            }
        }
        let refresh = match refresh.as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(_) => return Err(Refusal::of(Code::InvalidRefreshNow)),
        };
        let Some(secret_id) = path_secret_id.or(secret_id).filter(|s| !s.is_empty()) else {
            return Err(Refusal::of(Code::MissingSecretId));
        };
        if secret_id.len() > MAX_SECRET_ID_BYTES || secret_id.chars().any(char::is_control) {
            return Err(Refusal::of(Code::InvalidSecretId));
        }
        let json_key_valid = |key: &String| {
            (1..=MAX_JSON_KEY_CHARS).contains(&key.chars().count()) && !key.chars().any(char::is_control)
        };
        if json_key.as_ref().is_some_and(|key| !json_key_valid(key)) {
            return Err(Refusal::of(Code::InvalidJsonKey));
        }
        let version = match (stage, id) {
            (Some(_), Some(_)) => return Err(Refusal::of(Code::ConflictingVersion)),
            (Some(stage), None) if !version::is_stage(&stage) => return Err(Refusal::of(Code::InvalidVersionStage)),
            (None, Some(id)) if !version::is_version_id(&id) => return Err(Refusal::of(Code::InvalidVersionId)),
            (Some(stage), None) => Version::stage(stage),
            (None, Some(id)) => Version::Id(id),
            (None, None) => Version::Current,
        };
        Ok(Self { secret_id, version, refresh, json_key })
    }
}

#[cfg(test)]
mod tests;
