//! The local HTTP API on 127.0.0.1, compatible with AWS's Parameters and Secrets Lambda
//! Extension: `GET /secretsmanager/get?secretId=…` with the `X-Aws-Parameters-Secrets-Token`
//! header, and a token-free `GET /ping`.
//!
//! Every request is checked before anything is fetched: GET only, no `X-Forwarded-For`, no
//! body, an origin-form target, a loopback `Host`, the token (constant-time), well-formed
//! query parameters, and the allowlist. Every answer that is not 200 carries a JSON body with a
//! stable error code; [`error_for`] is the one place that maps fetch failures to HTTP.
//! Every allow and deny is an audit line with the invocation's request id and the secret id.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::LocalToken;
use crate::invocation::{Lifecycle, Phase};
use crate::secrets::{FetchError, Secrets, Version};
use crate::session::SessionError;

/// The header a function may send on Managed Instances to name its invocation in audit lines
/// (asserted by the caller, not verified: concurrent invocations share one environment).
pub const REQUEST_ID_HEADER: &str = "x-scoped-secrets-request-id";
/// The token header AWS's extension defines.
pub const TOKEN_HEADER: &str = "x-aws-parameters-secrets-token";
/// Longest request target accepted.
pub const MAX_TARGET_BYTES: usize = 4_096;
/// How long a refusal seen between invocations waits for its INVOKE, to name it in the audit line.
const ATTRIBUTION_SETTLE: Duration = Duration::from_millis(100);
/// What an audit line shows for a requested id that contains the local token.
const REDACTED_ID: &str = "<contains the local token>";
/// Longest secret id accepted (Secrets Manager's own limit is 2,048).
pub const MAX_SECRET_ID_BYTES: usize = 2_048;

/// Bounds on the accept loop and each connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once; the rest wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive.
    pub header_timeout: Duration,
    /// Read buffer, so the cap on a request's head (hyper answers 431 above it).
    pub max_head_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { max_connections: 128, header_timeout: Duration::from_secs(5), max_head_bytes: 16 * 1024 }
    }
}

/// Accepts HTTP/1 connections until `shutdown`, then lets the open ones finish their current
/// request. Shared by the local API and the telemetry listener.
pub async fn accept_loop<H, F>(listener: TcpListener, limits: ConnectionLimits, shutdown: CancellationToken, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly, never spin.
                    tracing::warn!(event = "accept_failed", cause = %error);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let response = handler(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_head_bytes.max(8_192))
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_millis(500), connection).await;
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// What the local API handler needs.
#[derive(Debug)]
pub struct LocalApi {
    /// The allowlist, as the environment's tenant (if any) resolves it.
    pub tenancy: Arc<crate::tenant::Tenancy>,
    /// Take the caller's [`REQUEST_ID_HEADER`] for audit lines (Managed Instances, where no
    /// INVOKE event names the invocation).
    pub caller_request_ids: bool,
    /// The token callers present.
    pub token: LocalToken,
    /// The cache and fetcher.
    pub secrets: Arc<Secrets>,
    /// The current phase, for request ids in audit lines.
    pub lifecycle: Arc<Lifecycle>,
    /// Local requests refused, for the SHUTDOWN summary.
    pub denied: std::sync::atomic::AtomicU64,
    /// The function's credentials, to verify SDK-protocol signatures with.
    pub function_credentials: crate::sigv4::CredentialSource,
    /// The function's region (the signature's credential scope).
    pub region: String,
    /// Reads per secret and denies per reason, for the reports and metrics.
    pub evidence: Arc<crate::metrics::Evidence>,
    /// Secrets served.
    pub served: std::sync::atomic::AtomicU64,
}

/// A refusal: status, stable code, and a sentence for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation, never containing a value or token.
    pub message: &'static str,
}

const fn refusal(status: StatusCode, code: &'static str, message: &'static str) -> Refusal {
    Refusal { status, code, message }
}

/// Which face of the local API a read came through (audit lines, least-privilege report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `GET /secretsmanager/get?secretId=…` (AWS's Parameters and Secrets extension).
    Get,
    /// `GET /v1/{secretId}` (AWS's Secrets Manager Agent).
    AgentPath,
    /// `POST /` with `X-Amz-Target` (the function's own AWS SDK, SigV4-verified).
    Sdk,
}

impl Api {
    /// Lower-case name for logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Get => "get",
            Api::AgentPath => "v1",
            Api::Sdk => "sdk",
        }
    }
}

/// Why a read of an allowlisted-or-not secret failed.
#[derive(Debug)]
pub enum ReadError {
    /// Not in the allowlist: nothing was asked of AWS.
    NotAllowed,
    /// The fetch failed.
    Fetch(FetchError),
}

impl LocalApi {
    /// Answers one request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() == Method::POST && request.uri().path() == "/" {
            return crate::sdk_api::handle(self, request).await;
        }
        let caller = match self.caller_request_id(&request) {
            Ok(caller) => caller,
            Err(refusal) => {
                self.audit_deny(Api::Get, None, None, refusal.code, refusal.status.as_u16()).await;
                return error_response(&refusal);
            }
        };
        match self.answer(&request, caller.as_deref()).await {
            Ok(response) => response,
            Err((refusal, secret_id, api)) => {
                self.audit_deny(api, caller.as_deref(), secret_id.as_deref(), refusal.code, refusal.status.as_u16())
                    .await;
                error_response(&refusal)
            }
        }
    }

    /// The one read path every face of the API shares: allowlist, cache or fetch (single
    /// flight, the invocation's session), evidence, and the audit line for an allow.
    ///
    /// # Errors
    /// [`ReadError`]; the caller answers in its own protocol and calls [`LocalApi::audit_deny`].
    pub async fn read(
        &self,
        secret_id: &str,
        version: Version,
        refresh: bool,
        api: Api,
        caller: Option<&str>,
    ) -> Result<Arc<crate::secrets::SecretValue>, ReadError> {
        let wait = self.lifecycle.wait_timeout();
        let allowlist = self.tenancy.allowlist(wait).await.map_err(ReadError::Fetch)?;
        let entry = allowlist.find(secret_id).ok_or(ReadError::NotAllowed)?;
        if self.tenancy.is_scoped() {
            // Served only once the platform has named this invocation's tenant as ours.
            let scope = self.lifecycle.current_scope().await.map_err(ReadError::Fetch)?;
            if !scope.is_per_fetch() {
                self.tenancy.wait_confirmed(scope.label(), wait).await.map_err(ReadError::Fetch)?;
            }
        }
        let served = self.secrets.get(entry, version, refresh).await.map_err(ReadError::Fetch)?;
        self.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.evidence.read(entry, api);
        let request_id = match caller {
            Some(caller) => caller.to_owned(),
            None => served.scope.unwrap_or_else(|| self.request_id()),
        };
        tracing::info!(
            target: "audit",
            event = "allow",
            request_id = %request_id,
            request_id_asserted = caller.is_some(),
            api = api.as_str(),
            secret_id = %printable(secret_id),
            version_id = served.value.version_id(),
            source = served.source.as_str(),
            refresh,
        );
        Ok(served.value)
    }

    /// The audit line (and counters) for a refused request.
    pub async fn audit_deny(
        &self,
        api: Api,
        caller: Option<&str>,
        secret_id: Option<&str>,
        code: &'static str,
        status: u16,
    ) {
        // Attributed to the invocation the request belongs to, even when it raced its INVOKE.
        let request_id = match caller {
            Some(caller) => caller.to_owned(),
            None => self.lifecycle.label_settled(ATTRIBUTION_SETTLE).await,
        };
        self.denied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.evidence.deny(code);
        // The id is the caller's text; a caller that sends its own token as an id (a bug, or
        // a probe) must not get it into the log. Only requests past the token check name an id.
        let secret_id = match secret_id {
            Some(id) if self.token.appears_in(id) => REDACTED_ID.to_owned(),
            Some(id) => printable(id),
            None => String::new(),
        };
        tracing::info!(
            target: "audit",
            event = "deny",
            request_id = %request_id,
            request_id_asserted = caller.is_some(),
            api = api.as_str(),
            secret_id = %secret_id,
            code,
            status,
        );
    }

    /// The caller's own request id, where it is taken (Managed Instances): 1 to 64 of
    /// `A-Z a-z 0-9 - _`, else the request is refused.
    fn caller_request_id<B>(&self, request: &Request<B>) -> Result<Option<String>, Refusal> {
        if !self.caller_request_ids {
            return Ok(None);
        }
        let mut values = request.headers().get_all(REQUEST_ID_HEADER).iter();
        let Some(value) = values.next() else { return Ok(None) };
        let valid = values.next().is_none()
            && (1..=64).contains(&value.len())
            && value.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(b));
        if !valid {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "invalid_request_id",
                "X-Scoped-Secrets-Request-Id must be one value of 1 to 64 of A-Z a-z 0-9 - _.",
            ));
        }
        Ok(value.to_str().ok().map(str::to_owned))
    }

    async fn answer(
        &self,
        request: &Request<Incoming>,
        caller: Option<&str>,
    ) -> Result<Response<Full<Bytes>>, (Refusal, Option<String>, Api)> {
        let (api, query) = match route(request, &self.token).map_err(|(refusal, api)| (refusal, None, api))? {
            Route::Ping => {
                return Ok(json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#), JSON));
            }
            Route::Read { api, query } => (api, query),
        };
        let value =
            self.read(&query.secret_id, query.version.clone(), query.refresh, api, caller).await.map_err(|error| {
                let refusal = match &error {
                    ReadError::NotAllowed => refusal(
                        StatusCode::FORBIDDEN,
                        "secret_not_allowed",
                        "The secret is not in this function's allowlist.",
                    ),
                    ReadError::Fetch(error) => error_for(error),
                };
                (refusal, Some(query.secret_id.clone()), api)
            })?;
        // The body is the value's own zeroizing JSON: wiped with the value.
        Ok(json_response(StatusCode::OK, value.json_body(), JSON))
    }

    fn request_id(&self) -> String {
        match self.lifecycle.phase() {
            Phase::Init(scope) | Phase::Active(scope) => scope.label().to_owned(),
            Phase::Snapshotting => "init".to_owned(),
            Phase::AwaitingRestore | Phase::Idle => "idle".into(),
            Phase::ShuttingDown => "shutdown".into(),
        }
    }
}

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
}

/// The local GET API's decision from the request alone, with no I/O: envelope (method, proxy
/// headers, body, target form and length, host), path, token (constant-time), query. The
/// handler's front half, and what the request fuzz target drives.
///
/// # Errors
/// The [`Refusal`] and the face of the API it was refused on.
pub fn route<B: Body>(request: &Request<B>, token: &LocalToken) -> Result<Route, (Refusal, Api)> {
    check_envelope(request).map_err(|r| (r, Api::Get))?;
    let path = request.uri().path();
    let (api, path_secret_id) = match path {
        "/ping" => return Ok(Route::Ping),
        "/secretsmanager/get" => (Api::Get, None),
        _ if path.starts_with("/v1/") => (Api::AgentPath, Some(decode_path_id(&path[4..]))),
        _ => {
            let not_found = refusal(StatusCode::NOT_FOUND, "not_found", "No such path; use /secretsmanager/get.");
            return Err((not_found, Api::Get));
        }
    };
    check_token(request, token).map_err(|r| (r, api))?;
    let query = SecretQuery::parse(request.uri().query().unwrap_or_default(), path_secret_id).map_err(|r| (r, api))?;
    Ok(Route::Read { api, query })
}

fn check_token<B>(request: &Request<B>, token: &LocalToken) -> Result<(), Refusal> {
    let mut values = request.headers().get_all(TOKEN_HEADER).iter();
    let Some(presented) = values.next() else {
        return Err(refusal(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "The X-Aws-Parameters-Secrets-Token header is required.",
        ));
    };
    if values.next().is_some() || !token.matches(presented.as_bytes()) {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "invalid_token",
            "The X-Aws-Parameters-Secrets-Token header is not valid.",
        ));
    }
    Ok(())
}

/// Checks that apply to every path: method, proxies, body, target form, host.
fn check_envelope<B: Body>(request: &Request<B>) -> Result<(), Refusal> {
    if request.method() != Method::GET {
        return Err(refusal(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Only GET is served."));
    }
    if request.headers().contains_key("x-forwarded-for") || request.headers().contains_key(header::FORWARDED) {
        return Err(refusal(StatusCode::BAD_REQUEST, "forwarded_request", "Proxied requests are refused."));
    }
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if request.headers().contains_key(header::TRANSFER_ENCODING)
        || declared.is_some_and(|n| n > 0)
        || !request.body().is_end_stream()
    {
        return Err(refusal(StatusCode::PAYLOAD_TOO_LARGE, "body_not_allowed", "A GET request carries no body."));
    }
    let uri = request.uri();
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(refusal(StatusCode::BAD_REQUEST, "absolute_target", "Use an origin-form request target."));
    }
    if uri.path_and_query().map_or(0, |p| p.as_str().len()) > MAX_TARGET_BYTES {
        return Err(refusal(StatusCode::PAYLOAD_TOO_LARGE, "target_too_long", "The request target is too long."));
    }
    // A repeated Host is refused (RFC 9112 §3.2): checking only the first would let a second,
    // foreign one through to whatever reads the other.
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next().map_or(Some("localhost"), |v| v.to_str().ok()).unwrap_or_default();
    if hosts.next().is_some() {
        return Err(refusal(StatusCode::BAD_REQUEST, "invalid_host", "The Host header must appear once."));
    }
    let hostname = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    if !matches!(hostname, "localhost" | "127.0.0.1" | "[::1]" | "0.0.0.0") {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "invalid_host",
            "The Host header must name the loopback address.",
        ));
    }
    Ok(())
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
}

impl SecretQuery {
    /// Parses the query string: `secretId` once (unless the path named the secret, as in
    /// `/v1/{secretId}`), at most one of `versionStage`/`versionId`, and `refreshNow`.
    ///
    /// # Errors
    /// A 400 [`Refusal`] with the reason.
    pub fn parse(query: &str, path_secret_id: Option<String>) -> Result<Self, Refusal> {
        let bad = |code, message| refusal(StatusCode::BAD_REQUEST, code, message);
        let (mut secret_id, mut stage, mut id, mut refresh) = (None, None, None, None);
        let from_path = path_secret_id.is_some();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if value.contains('\u{FFFD}') || name.contains('\u{FFFD}') {
                return Err(bad("invalid_query", "The query string is not valid UTF-8."));
            }
            let slot = match name.as_ref() {
                "secretId" if !from_path => &mut secret_id,
                "refreshNow" => &mut refresh,
                "versionStage" => &mut stage,
                "versionId" => &mut id,
                _ => {
                    return Err(bad(
                        "unknown_parameter",
                        "Only secretId (or the /v1/ path), versionStage, versionId and refreshNow are accepted.",
                    ));
                }
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(bad("duplicate_parameter", "Each query parameter may appear once."));
            }
        }
        let refresh = match refresh.as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(_) => return Err(bad("invalid_refresh_now", "refreshNow is true, false, 1 or 0.")),
        };
        let Some(secret_id) = path_secret_id.or(secret_id).filter(|s| !s.is_empty()) else {
            return Err(bad("missing_secret_id", "The secretId query parameter is required."));
        };
        if secret_id.len() > MAX_SECRET_ID_BYTES || secret_id.chars().any(char::is_control) {
            return Err(bad("invalid_secret_id", "The secretId is too long or contains control characters."));
        }
        let well_formed = |text: &str, max: usize| {
            (1..=max).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        };
        let version = match (stage, id) {
            (Some(_), Some(_)) => {
                return Err(bad("conflicting_version", "Give versionStage or versionId, not both."));
            }
            (Some(stage), None) if !well_formed(&stage, 256) => {
                return Err(bad("invalid_version_stage", "The versionStage is not a valid staging label."));
            }
            (None, Some(id)) if !well_formed(&id, 64) => {
                return Err(bad("invalid_version_id", "The versionId is not a valid version id."));
            }
            (Some(stage), None) if stage == "AWSCURRENT" => Version::Current,
            (Some(stage), None) => Version::Stage(stage),
            (None, Some(id)) => Version::Id(id),
            (None, None) => Version::Current,
        };
        Ok(Self { secret_id, version, refresh })
    }
}

/// The one mapping from fetch failures to HTTP.
pub fn error_for(error: &FetchError) -> Refusal {
    use StatusCode as S;
    match error {
        FetchError::NotFound => {
            refusal(S::NOT_FOUND, "secret_not_found", "Secrets Manager has no such secret or version.")
        }
        FetchError::AccessDenied { .. } => refusal(
            S::FORBIDDEN,
            "upstream_access_denied",
            "AWS refused the read with the scoped session; check the scoped role's policy.",
        ),
        FetchError::InvalidRequest { .. } => {
            refusal(S::BAD_REQUEST, "invalid_request", "Secrets Manager rejected the request.")
        }
        FetchError::Throttled => {
            refusal(S::SERVICE_UNAVAILABLE, "upstream_throttled", "Secrets Manager throttled the request; retry.")
        }
        FetchError::UpstreamTimeout => {
            refusal(S::GATEWAY_TIMEOUT, "upstream_timeout", "Secrets Manager did not answer in time.")
        }
        FetchError::Upstream { .. } => refusal(S::BAD_GATEWAY, "upstream_error", "The call to Secrets Manager failed."),
        FetchError::Session(SessionError::Timeout) => {
            refusal(S::GATEWAY_TIMEOUT, "session_timeout", "STS did not answer in time.")
        }
        FetchError::Session(SessionError::Throttled) => {
            refusal(S::SERVICE_UNAVAILABLE, "session_throttled", "STS throttled AssumeRole through every retry; retry.")
        }
        FetchError::Session(SessionError::Refused { .. }) => {
            refusal(S::BAD_GATEWAY, "session_refused", "STS refused to start a session; check the role's trust policy.")
        }
        FetchError::Session(_) => refusal(S::BAD_GATEWAY, "session_failed", "A session could not be started."),
        FetchError::NoActiveInvocation => {
            refusal(S::SERVICE_UNAVAILABLE, "no_active_invocation", "No invocation began within the wait timeout.")
        }
        FetchError::WaitTimeout => refusal(
            S::GATEWAY_TIMEOUT,
            "session_wait_timeout",
            "The invocation's session was not ready within the wait timeout.",
        ),
        FetchError::InvocationEnded => {
            refusal(S::SERVICE_UNAVAILABLE, "invocation_ended", "The invocation ended first.")
        }
        FetchError::ShuttingDown => refusal(S::SERVICE_UNAVAILABLE, "shutting_down", "The extension is shutting down."),
        FetchError::SnapStartInit => {
            refusal(S::SERVICE_UNAVAILABLE, "snapstart_init", crate::sdk_api::SNAPSTART_INIT_MESSAGE)
        }
        FetchError::TenantUnknown => refusal(
            S::SERVICE_UNAVAILABLE,
            "tenant_unknown",
            "The tenant is not known yet (it comes with the first invocation); read tenant secrets in the handler.",
        ),
        FetchError::TenantRefused => refusal(
            S::SERVICE_UNAVAILABLE,
            "tenant_refused",
            "The platform's tenant id is not valid for a secret name; tenant secrets are not served.",
        ),
        FetchError::TenantChanged => refusal(
            S::SERVICE_UNAVAILABLE,
            "tenant_changed",
            "A second tenant appeared in this environment; everything was wiped and nothing is served.",
        ),
    }
}

fn error_response(refusal: &Refusal) -> Response<Full<Bytes>> {
    let body = json!({ "error": refusal.code, "message": refusal.message }).to_string();
    let mut response = json_response(refusal.status, Bytes::from(body), JSON);
    if refusal.status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Content type of the GET API's answers.
const JSON: &str = "application/json";

/// An answer with `content_type` that no cache may keep (both the GET API and the SDK protocol).
pub(crate) fn json_response(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The secret id in `/v1/{secretId}`: the rest of the path, percent-decoded.
fn decode_path_id(encoded: &str) -> String {
    let decoded: Vec<u8> = percent_decode(encoded.as_bytes());
    // Invalid UTF-8 becomes U+FFFD, which no allowlist entry contains: refused, not guessed.
    String::from_utf8_lossy(&decoded).into_owned()
}

/// `%XX` sequences decoded; anything else (including a malformed `%`) kept as it is.
pub(crate) fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(high), Some(low)) =
                (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// A requested id as it may appear in a log line: bounded and without control characters.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(256).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_or_are_refused_with_a_stable_code() {
        let ok = [
            ("secretId=app%2Fdb", "app/db", Version::Current),
            ("secretId=app/db&versionStage=AWSCURRENT", "app/db", Version::Current),
            ("secretId=app/db&versionStage=AWSPREVIOUS", "app/db", Version::Stage("AWSPREVIOUS".into())),
            ("versionId=a1b2-c3&secretId=db", "db", Version::Id("a1b2-c3".into())),
            ("secretId=a+b", "a b", Version::Current),
        ];
        for (query, id, version) in ok {
            let expected = SecretQuery { secret_id: id.into(), version, refresh: false };
            assert_eq!(SecretQuery::parse(query, None), Ok(expected), "{query}");
        }
        let long = format!("secretId={}", "a".repeat(MAX_SECRET_ID_BYTES + 1));
        let refused = [
            ("", "missing_secret_id"),
            ("secretId=", "missing_secret_id"),
            ("secretid=x", "unknown_parameter"),
            ("secretId=x&other=1", "unknown_parameter"),
            ("secretId=x&secretId=y", "duplicate_parameter"),
            ("secretId=x&versionStage=A&versionId=b", "conflicting_version"),
            ("secretId=x&versionStage=A&versionStage=B", "duplicate_parameter"),
            ("secretId=x&versionStage=", "invalid_version_stage"),
            ("secretId=x&versionStage=a%2Fb", "invalid_version_stage"),
            ("secretId=x&versionId=a*b", "invalid_version_id"),
            ("secretId=%FF%FE", "invalid_query"),
            ("secretId=a%0Ab", "invalid_secret_id"),
            (long.as_str(), "invalid_secret_id"),
        ];
        for (query, code) in refused {
            let error = SecretQuery::parse(query, None).expect_err(query);
            assert_eq!((error.status, error.code), (StatusCode::BAD_REQUEST, code), "{query}");
        }
    }

    #[test]
    fn refresh_and_the_agent_path_parse_like_the_query_form() {
        let refreshed = SecretQuery::parse("secretId=db&refreshNow=true", None).expect("valid");
        assert!(refreshed.refresh);
        assert!(!SecretQuery::parse("secretId=db&refreshNow=0", None).expect("valid").refresh);
        let bad = SecretQuery::parse("secretId=db&refreshNow=yes", None).expect_err("invalid");
        assert_eq!(bad.code, "invalid_refresh_now");
        let path = SecretQuery::parse("versionStage=AWSPREVIOUS", Some(decode_path_id("app%2Fdb"))).expect("valid");
        assert_eq!((path.secret_id.as_str(), path.version), ("app/db", Version::Stage("AWSPREVIOUS".into())));
        assert_eq!(decode_path_id("app/db"), "app/db");
        let twice = SecretQuery::parse("secretId=other", Some("app/db".into())).expect_err("secretId with a path id");
        assert_eq!(twice.code, "unknown_parameter");
        assert_eq!(SecretQuery::parse("", Some(String::new())).expect_err("empty").code, "missing_secret_id");
        assert_eq!(decode_path_id("%FF"), "\u{FFFD}");
        assert_eq!(decode_path_id("a%2"), "a%2");
    }

    #[test]
    fn routing_needs_only_the_request_and_reads_need_the_token_once() {
        let env = crate::config::Env::from_pairs([
            ("SCOPED_SECRETS_ROLE_ARN", "arn:aws:iam::123456789012:role/app-secrets"),
            ("SCOPED_SECRETS_SECRETS", "app/db"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
            ("AWS_SESSION_TOKEN", "token-value"),
        ]);
        let config = crate::config::Config::from_env(&env).expect("valid configuration");
        let request = |uri: &str, tokens: &[&str]| {
            let mut builder = Request::get(uri);
            for token in tokens {
                builder = builder.header(TOKEN_HEADER, *token);
            }
            builder.body(http_body_util::Empty::<Bytes>::new()).expect("request")
        };
        let routed = |uri: &str, tokens: &[&str]| route(&request(uri, tokens), &config.local_token);
        assert_eq!(routed("/ping", &[]), Ok(Route::Ping));
        let code = |uri: &str, tokens: &[&str]| routed(uri, tokens).err().map(|(refusal, api)| (refusal.code, api));
        assert_eq!(code("/secretsmanager/get?secretId=app/db", &[]), Some(("missing_token", Api::Get)));
        assert_eq!(code("/v1/app%2Fdb", &["token-value", "token-value"]), Some(("invalid_token", Api::AgentPath)));
        assert_eq!(code("/secretsmanager/get?secretId=", &["token-value"]), Some(("missing_secret_id", Api::Get)));
        assert_eq!(code("/elsewhere", &["token-value"]), Some(("not_found", Api::Get)));
        let Ok(Route::Read { api, query }) = routed("/v1/app%2Fdb?versionStage=AWSPREVIOUS", &["token-value"]) else {
            panic!("a well-formed read routes");
        };
        assert_eq!((api, query.secret_id.as_str()), (Api::AgentPath, "app/db"));
        assert_eq!(query.version, Version::Stage("AWSPREVIOUS".into()));
    }

    #[test]
    fn the_envelope_refuses_what_no_local_caller_needs() {
        let request = |method: Method, uri: &str, headers: &[(&str, &str)]| {
            let mut builder = Request::builder().method(method).uri(uri);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            builder.body(http_body_util::Empty::<Bytes>::new()).expect("request")
        };
        let path = "/secretsmanager/get?secretId=x";
        let cases = [
            (request(Method::POST, path, &[]), Some("method_not_allowed")),
            (request(Method::DELETE, path, &[]), Some("method_not_allowed")),
            (request(Method::GET, path, &[("x-forwarded-for", "10.0.0.1")]), Some("forwarded_request")),
            (request(Method::GET, path, &[("forwarded", "for=1.2.3.4")]), Some("forwarded_request")),
            (request(Method::GET, path, &[("content-length", "5")]), Some("body_not_allowed")),
            (request(Method::GET, path, &[("transfer-encoding", "chunked")]), Some("body_not_allowed")),
            (request(Method::GET, "http://evil.example/secretsmanager/get", &[]), Some("absolute_target")),
            (request(Method::GET, path, &[("host", "evil.example")]), Some("invalid_host")),
            (request(Method::GET, path, &[("host", "evil.example:2773")]), Some("invalid_host")),
            (request(Method::GET, path, &[("host", "localhost"), ("host", "evil.example")]), Some("invalid_host")),
            (request(Method::GET, path, &[("host", "localhost"), ("host", "localhost")]), Some("invalid_host")),
            (request(Method::GET, path, &[("host", "")]), Some("invalid_host")),
            (request(Method::GET, path, &[("host", "localhost:2773")]), None),
            (request(Method::GET, path, &[("host", "127.0.0.1:2773")]), None),
            (request(Method::GET, path, &[]), None),
        ];
        let mut foreign_bytes = request(Method::GET, path, &[]);
        foreign_bytes.headers_mut().insert(header::HOST, HeaderValue::from_bytes(b"localhost\xff").expect("obs-text"));
        let cases = cases.into_iter().chain([(foreign_bytes, Some("invalid_host"))]);
        for (request, expected) in cases {
            let description = format!("{} {} {:?}", request.method(), request.uri(), request.headers());
            assert_eq!(check_envelope(&request).err().map(|r| r.code), expected, "{description}");
        }
    }

    #[test]
    fn every_fetch_failure_maps_to_a_distinct_documented_code() {
        let errors = [
            FetchError::NotFound,
            FetchError::AccessDenied { code: "AccessDeniedException".into() },
            FetchError::InvalidRequest { code: "InvalidParameterException".into() },
            FetchError::Throttled,
            FetchError::UpstreamTimeout,
            FetchError::Upstream { kind: "x".into() },
            FetchError::Session(SessionError::Timeout),
            FetchError::Session(SessionError::Throttled),
            FetchError::Session(SessionError::Refused { code: "AccessDenied".into() }),
            FetchError::Session(SessionError::InvalidName),
            FetchError::NoActiveInvocation,
            FetchError::WaitTimeout,
            FetchError::InvocationEnded,
            FetchError::ShuttingDown,
            FetchError::SnapStartInit,
            FetchError::TenantUnknown,
            FetchError::TenantRefused,
            FetchError::TenantChanged,
        ];
        let codes: std::collections::BTreeSet<&str> = errors.iter().map(|e| error_for(e).code).collect();
        assert_eq!(codes.len(), errors.len());
        for error in &errors {
            let refusal = error_for(error);
            assert!(refusal.status.is_client_error() || refusal.status.is_server_error());
        }
    }
}
