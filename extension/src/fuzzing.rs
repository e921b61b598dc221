//! Entry points for the fuzz targets in `fuzz/`, built only with the `fuzzing` feature (off by
//! default, hidden from the docs), so no parser the extension keeps to itself becomes part of
//! its face: each function here is a thin wrapper over a crate-private one, and each harness
//! builds the parts a parser feeds offline, with known credentials and a fixed clock.
//!
//! - [`header_lines`]: fuzz input's `name:value` lines as a request's headers.
//! - [`parse_authorization`]: the SigV4 `Authorization` header parser ([`crate::sigv4`]).
//! - [`Sdk`]: the SDK protocols' `POST /` ([`crate::local_api::sdk`], [`crate::local_api::ssm`])
//!   through routing and signature verification at [`now`], with a read path whose every fetch
//!   is refused and counted ([`Answer::fetches`]), and [`Sdk::sign`] to reach the valid path.
//! - [`Telemetry`]: one delivery to the telemetry listener ([`crate::telemetry`]) and what it
//!   left in the completions and the tenancy it feeds.
//! - [`decode_event`]: the Extensions API's `/event/next` decoder ([`crate::extensions_api`]).
//! - [`runtime_route`], [`runtime_next`]: the Runtime API proxy's routing of a runtime request
//!   and its reading of a `/next` answer ([`crate::runtime_proxy`]).
//! - [`Lane`]: the local API's fast lane reading a connection's bytes (`crate::http::fast`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use crate::config::allowlist::Allowlist;
use crate::config::{Config, Env};
use crate::domain::code::Code;
use crate::domain::request_id::RequestId;
use crate::evidence::Evidence;
use crate::extensions_api::{ApiError, Event};
use crate::invocation::{Invocations, Start};
use crate::local_api::read::ReadPath;
use crate::local_api::sdk::Signatures;
use crate::runtime_proxy::{Outcome, Route, RuntimeEvent};
use crate::secrets::Secrets;
use crate::session::SessionFactory;
use crate::sigv4::{CredentialSource, FunctionCredentials};
use crate::telemetry::{Completions, Sinks, SubscriptionPath};
use crate::tenant::Tenancy;

/// The function's session token: also the local token.
pub const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEFuzzSessionToken0123456789";
/// The function's access key id.
pub const ACCESS_KEY_ID: &str = "AKIAFUZZEXAMPLE00001";
/// The function's secret access key.
pub const SECRET_ACCESS_KEY: &str = "fuzzSecretAccessKey/K7MDENGbPxRfiCYEXAMPLEKEY";
/// The function's region.
pub const REGION: &str = "us-east-1";
/// The secrets allowlist the harness is configured with.
pub const SECRETS: &str = "db=app/db,app/api";
/// The parameters allowlist the harness is configured with.
pub const PARAMETERS: &str = "/app/db,cfg=/app/config";

/// Each `name:value` line of `lines` as a header, in order, skipping a line without a colon or
/// with a name or value the `http` crate refuses (as hyper refuses them when it parses a head):
/// how the request harnesses turn fuzz input into headers.
pub fn header_lines<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Vec<(HeaderName, HeaderValue)> {
    lines
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            let name = HeaderName::from_bytes(&line[..colon]).ok()?;
            Some((name, HeaderValue::from_bytes(&line[colon + 1..]).ok()?))
        })
        .collect()
}

/// The fixed clock signatures are judged against: 2026-11-25T12:00:00Z.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_608_000)
}

/// A parsed `Authorization` header's parts, borrowed from the header's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationParts<'a> {
    /// The access key id.
    pub access_key_id: &'a str,
    /// The credential scope's date.
    pub date: &'a str,
    /// The credential scope's region.
    pub region: &'a str,
    /// The credential scope's service.
    pub service: &'a str,
    /// The credential scope's terminator.
    pub terminator: &'a str,
    /// The signed header names.
    pub signed_headers: Vec<&'a str>,
    /// The signature, 64 hex digits.
    pub signature: &'a str,
}

/// The SigV4 `Authorization` header parser.
pub fn parse_authorization(value: &str) -> Option<AuthorizationParts<'_>> {
    crate::sigv4::Authorization::parse(value).map(|a| AuthorizationParts {
        access_key_id: a.access_key_id,
        date: a.date,
        region: a.region,
        service: a.service,
        terminator: a.terminator,
        signed_headers: a.signed_headers,
        signature: a.signature,
    })
}

/// The configuration every harness shares: the known credentials and allowlists, and an
/// endpoint on a closed loopback port, so nothing can reach AWS.
fn config() -> Config {
    let env = Env::from_pairs([
        ("SCOPED_SECRETS_ROLE_ARN", "arn:aws:iam::123456789012:role/app-secrets"),
        ("SCOPED_SECRETS_SECRETS", SECRETS),
        ("SCOPED_SECRETS_PARAMETERS", PARAMETERS),
        ("AWS_REGION", REGION),
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
        ("AWS_SESSION_TOKEN", SESSION_TOKEN),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
    ]);
    match Config::from_env(&env) {
        Ok(config) => config,
        Err(error) => panic!("the fuzz harness's own configuration is invalid: {error}"),
    }
}

fn runtime() -> Runtime {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => panic!("the fuzz harness needs a runtime: {error}"),
    }
}

/// The SDK protocols' `POST /`, served by a read path that has no session: the environment is
/// shutting down, so every fetch the path attempts is refused at once with
/// [`Code::ShuttingDown`] and counted, and nothing waits.
#[derive(Debug)]
pub struct Sdk {
    runtime: Runtime,
    config: Arc<Config>,
    invocations: Arc<Invocations>,
    tenancy: Arc<Tenancy>,
    signatures: Signatures,
}

/// What one request was answered.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// How many reads reached the store and asked for a session (each is refused with
    /// [`Code::ShuttingDown`]: this read path has none).
    pub fetches: u64,
    /// Every refusal audited, by code.
    pub denies: BTreeMap<Code, u64>,
}

impl Default for Sdk {
    fn default() -> Self {
        Self::new()
    }
}

impl Sdk {
    /// The harness: the configuration above, no session, a wait timeout of zero.
    pub fn new() -> Self {
        let runtime = runtime();
        let config = Arc::new(config());
        let tenancy = Arc::new(Tenancy::new(config.allowlist.clone(), CancellationToken::new()));
        let invocations = runtime.block_on(async {
            let sdk = crate::aws::sdk_loader(&config)
                .credentials_provider(aws_credential_types::Credentials::new("AKIDHARNESS", "x", None, None, "fuzz"))
                .load()
                .await;
            let evidence = Arc::new(Evidence::new(config.allowlist.len()));
            let factory = Arc::new(SessionFactory::new(
                &sdk,
                Arc::clone(&config),
                Arc::clone(&tenancy),
                Some("fuzzenv1".into()),
                evidence,
            ));
            let invocations = Arc::new(Invocations::new(factory, Start::Init(now()), Duration::ZERO, None));
            invocations.shut_down().await;
            invocations
        });
        let credentials = FunctionCredentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, Some(SESSION_TOKEN));
        let signatures = Signatures { credentials: CredentialSource::fixed(credentials), region: REGION.to_owned() };
        Self { runtime, config, invocations, tenancy, signatures }
    }

    /// Answers `request` at [`now`], with fresh evidence and an empty cache.
    pub fn handle(&self, request: Request<Full<Bytes>>) -> Answer {
        let evidence = Arc::new(Evidence::new(self.config.allowlist.len()));
        let secrets = Arc::new(Secrets::new(
            Arc::clone(&self.tenancy),
            Duration::from_secs(300),
            Arc::clone(&self.invocations),
            Arc::clone(&evidence),
        ));
        let reader = ReadPath {
            tenancy: Arc::clone(&self.tenancy),
            secrets,
            invocations: Arc::clone(&self.invocations),
            evidence: Arc::clone(&evidence),
            token: self.config.local_token.clone(),
            runtime_proxy_delivered: Arc::new(AtomicBool::new(false)),
        };
        self.runtime.block_on(async {
            let response = crate::local_api::sdk::handle_at(&reader, &self.signatures, request, now()).await;
            let (parts, body) = response.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let denies = evidence.denies();
            let fetches = denies.get(&Code::ShuttingDown).copied().unwrap_or(0);
            Answer { status: parts.status.as_u16(), headers: parts.headers, body, fetches, denies }
        })
    }

    /// Signs `request` as an AWS SDK would, with the function's credentials (or `secret` in
    /// place of its secret key), for `service` at `time`, over every header it carries (each
    /// header's last value) and its body. Returns false when it cannot be signed (no `Host`, a
    /// value that is not text): the request is then left as it was.
    pub fn sign(
        request: &mut Request<Full<Bytes>>,
        body: &[u8],
        service: &str,
        time: SystemTime,
        secret: &str,
    ) -> bool {
        const SIGNER_SETS: [&str; 4] = ["authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"];
        let Some(host) = request.headers().get("host").and_then(|v| v.to_str().ok()) else { return false };
        let uri = format!("http://{host}{}", request.uri().path_and_query().map_or("/", |p| p.as_str()));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        for (name, value) in request.headers() {
            if SIGNER_SETS.contains(&name.as_str()) {
                continue;
            }
            let Ok(value) = value.to_str() else { return false };
            headers.retain(|(n, _)| *n != name.as_str());
            headers.push((name.as_str(), value));
        }
        let Ok(signable) =
            SignableRequest::new(request.method().as_str(), uri, headers.into_iter(), SignableBody::Bytes(body))
        else {
            return false;
        };
        let identity = aws_credential_types::Credentials::new(
            ACCESS_KEY_ID,
            secret.to_owned(),
            Some(SESSION_TOKEN.to_owned()),
            None,
            "fuzz",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::Headers;
        let Ok(params) = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(REGION)
            .name(service)
            .time(time)
            .settings(settings)
            .build()
        else {
            return false;
        };
        let Ok(output) = sign(signable, &params.into()) else { return false };
        let (instructions, _) = output.into_parts();
        let mut set = Vec::new();
        for (name, value) in instructions.headers() {
            let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) else {
                return false;
            };
            set.push((name, value));
        }
        for (name, value) in set {
            request.headers_mut().insert(name, value);
        }
        true
    }
}

/// One delivery to the telemetry listener, with fresh completions and tenancy each time.
#[derive(Debug)]
pub struct Telemetry {
    runtime: Runtime,
    path: SubscriptionPath,
    template: Allowlist,
}

/// What a delivery was answered and what it left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The status.
    pub status: u16,
    /// Request ids recorded as finished.
    pub completions: usize,
    /// The longest of them, in bytes.
    pub longest_completion: usize,
    /// Whether the end of INIT was recorded.
    pub init_done: bool,
    /// Whether a restore was recorded.
    pub restore_started: bool,
    /// Ids and tenant texts the tenancy keeps.
    pub tenancy_kept: usize,
    /// The longest of them, in bytes.
    pub longest_tenancy_text: usize,
    /// The environment's tenant, once decided.
    pub tenant: Option<String>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// The harness: a drawn subscription path, and a tenant-scoped allowlist.
    pub fn new() -> Self {
        let path = match SubscriptionPath::draw() {
            Ok(path) => path,
            Err(error) => panic!("no random source: {error}"),
        };
        let role = crate::domain::arn::RoleArn::parse("arn:aws:iam::123456789012:role/app-secrets");
        let template = role.and_then(|role| {
            Allowlist::parse("db=tenants/{tenant}/db,shared/config", &role, REGION).map_err(|e| e.to_string())
        });
        let template = match template {
            Ok(template) => template,
            Err(error) => panic!("the fuzz harness's own allowlist is invalid: {error}"),
        };
        Self { runtime: runtime(), path, template }
    }

    /// The subscription's secret path (Lambda's destination).
    pub fn path(&self) -> &str {
        self.path.as_str()
    }

    /// Delivers `body` with `method` to `target` (a path and query); `serving`: the invocation
    /// the lifecycle named first, if any. In a fresh state each time.
    pub fn deliver(&self, serving: Option<&str>, method: Method, target: &str, body: Bytes) -> Delivered {
        let tenancy = Arc::new(Tenancy::new(self.template.clone(), CancellationToken::new()));
        if let Some(id) = serving {
            tenancy.serve(id);
        }
        let sinks = Sinks {
            path: self.path.clone(),
            completions: Arc::new(Completions::default()),
            tenancy: Arc::clone(&tenancy),
        };
        let Ok(request) = Request::builder().method(method).uri(target).body(Full::new(body)) else {
            return Delivered {
                status: 0,
                completions: 0,
                longest_completion: 0,
                init_done: false,
                restore_started: false,
                tenancy_kept: 0,
                longest_tenancy_text: 0,
                tenant: None,
            };
        };
        let status = self.runtime.block_on(crate::telemetry::handle(request, &sinks)).status().as_u16();
        let (completions, longest_completion, init_done, restore_started) = sinks.completions.footprint();
        let (tenancy_kept, longest_tenancy_text) = tenancy.footprint();
        Delivered {
            status,
            completions,
            longest_completion,
            init_done,
            restore_started,
            tenancy_kept,
            longest_tenancy_text,
            tenant: tenancy.tenant().map(|t| t.as_str().to_owned()),
        }
    }
}

/// The Extensions API's `/event/next` decoder.
///
/// # Errors
/// [`ApiError::Malformed`] for anything it refuses.
pub fn decode_event(body: &[u8]) -> Result<Event, ApiError> {
    crate::extensions_api::decode_event(body)
}

/// What the Runtime API proxy makes of a runtime request, as far as its reports go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeRoute {
    /// `GET …/invocation/next`.
    Next,
    /// `POST …/invocation/{id}/response` or `…/error`, with a valid id.
    Result(RequestId, Outcome),
    /// Forwarded, never reported.
    Other,
}

/// The proxy's routing of `method` `path`.
pub fn runtime_route(method: &Method, path: &str) -> RuntimeRoute {
    match Route::of(method, path) {
        Route::Next => RuntimeRoute::Next,
        Route::Result(id, outcome) => RuntimeRoute::Result(id, outcome),
        Route::Other => RuntimeRoute::Other,
    }
}

/// What the proxy reports of a `/next` answer's headers.
pub fn runtime_next(headers: &HeaderMap) -> Option<RuntimeEvent> {
    crate::runtime_proxy::next_event(headers)
}

mod lane;
pub use lane::{Lane, LaneHead};
