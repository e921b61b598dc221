//! A transparent recording proxy in front of MiniStack.
//!
//! The extension under test gets `AWS_ENDPOINT_URL=<proxy>`; every request is forwarded
//! unchanged (same method, path, headers including `Host`, so SigV4 signatures still verify
//! upstream, same body) and the upstream answer is returned unchanged. Each exchange is
//! recorded so tests can count and inspect the extension's AWS calls, and read the
//! credentials STS really issued (to prove AWS itself refuses them later). The proxy never
//! invents an AWS answer: if the upstream cannot be reached it answers `502` with a plain
//! text body and records the failure in [`Exchange::upstream_error`].
//!
//! Faults ([`crate::faults`]) perturb chosen exchanges on the way: [`AwsProxy::faults`]
//! delays, holds, drops, resets, throttles or fails them, or truncates MiniStack's answer; and
//! [`AwsProxy::stop`] / [`AwsProxy::restart`] take the endpoint away (connections refused,
//! live ones cut) and bring it back on the same port.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::faults::{Fault, Faults, Service};
use crate::ministack::StaticCredentials;

/// One request/response pair that went through the proxy.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// When the request arrived at the proxy.
    pub at: SystemTime,
    /// Time from the request's arrival to the upstream answer being fully read.
    pub elapsed: Duration,
    /// `POST`, `GET`, …
    pub method: String,
    /// Path and query, e.g. `/`.
    pub path: String,
    /// The `X-Amz-Target` header (`secretsmanager.GetSecretValue`), if any.
    pub target: Option<String>,
    /// Request headers as received (names lower-case).
    pub request_headers: Vec<(String, String)>,
    /// Request body as received.
    pub request_body: Bytes,
    /// Upstream status (502 if the upstream failed, 0 if a fault closed the connection unanswered).
    pub status: u16,
    /// Upstream response body.
    pub response_body: Bytes,
    /// Why the upstream could not answer, if it could not.
    pub upstream_error: Option<String>,
    /// The fault injected into this exchange ([`Fault::name`]), if any.
    pub fault: Option<&'static str>,
}

impl Exchange {
    /// A request header by (case-insensitive) name.
    pub fn request_header(&self, name: &str) -> Option<&str> {
        self.request_headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The access key id the request was signed with (from `Authorization: … Credential=`).
    pub fn access_key_id(&self) -> Option<String> {
        let authorization = self.request_header("authorization")?;
        let start = authorization.find("Credential=")? + "Credential=".len();
        let rest = &authorization[start..];
        Some(rest.split('/').next()?.to_owned())
    }

    /// Form parameters of a query-protocol request (body and URL query merged, decoded).
    pub fn form_params(&self) -> BTreeMap<String, String> {
        let mut params = BTreeMap::new();
        if let Some((_, query)) = self.path.split_once('?') {
            params.extend(parse_form(query));
        }
        if let Ok(body) = std::str::from_utf8(&self.request_body) {
            params.extend(parse_form(body));
        }
        params
    }
}

/// An STS `AssumeRole` call seen by the proxy.
#[derive(Debug, Clone)]
pub struct AssumeRoleCall {
    /// When the request arrived.
    pub at: SystemTime,
    /// Access key id of the caller (the execution role's session, normally).
    pub caller_access_key_id: Option<String>,
    /// `RoleArn`.
    pub role_arn: Option<String>,
    /// `RoleSessionName`.
    pub role_session_name: Option<String>,
    /// `DurationSeconds`, if sent and numeric.
    pub duration_seconds: Option<u32>,
    /// `Policy`: the session policy JSON, URL-decoded.
    pub policy: Option<String>,
    /// Every form parameter, decoded.
    pub params: BTreeMap<String, String>,
    /// HTTP status of the answer.
    pub status: u16,
    /// The issued credentials (only on 200).
    pub credentials: Option<StaticCredentials>,
    /// `Expiration` as STS wrote it (`2026-01-01T00:00:00Z`), only on 200.
    pub expiration: Option<String>,
    /// `<Code>` of an error answer (e.g. `AccessDenied`).
    pub error_code: Option<String>,
}

impl AssumeRoleCall {
    /// The session policy parsed as JSON.
    pub fn policy_json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.policy.as_deref()?).ok()
    }
}

/// A Secrets Manager call seen by the proxy.
#[derive(Debug, Clone)]
pub struct SecretsManagerCall {
    /// When the request arrived.
    pub at: SystemTime,
    /// Operation from `X-Amz-Target: secretsmanager.<Operation>`.
    pub operation: String,
    /// Access key id the request was signed with.
    pub access_key_id: Option<String>,
    /// Request body parsed as JSON (`Null` if it was not JSON).
    pub request: serde_json::Value,
    /// HTTP status of the answer.
    pub status: u16,
    /// Response body parsed as JSON (`Null` if it was not JSON).
    pub response: serde_json::Value,
    /// Error code of a failed call (`__type` without any `namespace#` prefix).
    pub error_code: Option<String>,
}

impl SecretsManagerCall {
    /// Secret ids the request asked for: `SecretId`, or every `SecretIdList` entry.
    pub fn secret_ids(&self) -> Vec<String> {
        self.strings(&["SecretId", "SecretIdList"])
    }

    /// Parameter names a Systems Manager request asked for: `Name`, or every `Names` entry.
    pub fn parameter_names(&self) -> Vec<String> {
        self.strings(&["Name", "Names"])
    }

    fn strings(&self, fields: &[&str]) -> Vec<String> {
        let mut ids = Vec::new();
        for field in fields {
            match self.request.get(*field) {
                Some(serde_json::Value::String(id)) => ids.push(id.clone()),
                Some(serde_json::Value::Array(list)) => {
                    ids.extend(list.iter().filter_map(|v| v.as_str().map(str::to_owned)));
                }
                _ => {}
            }
        }
        ids
    }
}

/// A Systems Manager call (`X-Amz-Target: AmazonSSM.*`), in the same shape.
pub type SsmCall = SecretsManagerCall;

type Recorded = Arc<Mutex<Vec<Exchange>>>;
type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// The recording proxy; stops serving when dropped.
#[derive(Debug)]
pub struct AwsProxy {
    addr: SocketAddr,
    upstream: String,
    recorded: Recorded,
    faults: Arc<Faults>,
    client: UpstreamClient,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl AwsProxy {
    /// Starts the proxy on `127.0.0.1:<free port>`, forwarding to `upstream`
    /// (`http://127.0.0.1:PORT`, no trailing slash needed).
    pub async fn start(upstream: String) -> anyhow::Result<AwsProxy> {
        let upstream = upstream.trim_end_matches('/').to_owned();
        let _: hyper::Uri = upstream.parse().with_context(|| format!("upstream {upstream:?} is not a URI"))?;
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("binding the proxy to loopback")?;
        let addr = listener.local_addr().context("reading the proxy address")?;
        let recorded: Recorded = Arc::default();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: UpstreamClient =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        let faults = Arc::new(Faults::default());
        let server = tokio::spawn(serve(listener, upstream.clone(), client.clone(), recorded.clone(), faults.clone()));
        Ok(AwsProxy { addr, upstream, recorded, faults, client, server: Mutex::new(Some(server)) })
    }

    /// The faults injected into the exchanges from now on.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Takes the endpoint away, as a stopped emulator: the port refuses connections, and every
    /// open connection (with whatever request it carries) is closed unanswered.
    pub fn stop(&self) {
        if let Some(server) = self.server.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            // Aborting the accept loop drops the listener and its JoinSet of connections.
            server.abort();
        }
    }

    /// Serves again on the same port after [`AwsProxy::stop`].
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        // The aborted accept loop drops its listener at its next poll; until then the port
        // may still be bound.
        let listener = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match TcpListener::bind(self.addr).await {
                    Ok(listener) => return listener,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await
        .context("binding the proxy's port again")?;
        let server = tokio::spawn(serve(
            listener,
            self.upstream.clone(),
            self.client.clone(),
            self.recorded.clone(),
            self.faults.clone(),
        ));
        *self.server.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(server);
        Ok(())
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The upstream it forwards to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// A snapshot of every exchange so far, in arrival order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        let mut exchanges = lock(&self.recorded).clone();
        exchanges.sort_by_key(|e| e.at);
        exchanges
    }

    /// Forgets every recorded exchange.
    pub fn clear(&self) {
        lock(&self.recorded).clear();
    }

    /// STS `AssumeRole` calls (form parameter `Action=AssumeRole`), parsed.
    pub fn assume_role_calls(&self) -> Vec<AssumeRoleCall> {
        self.exchanges()
            .iter()
            .filter_map(|exchange| {
                let params = exchange.form_params();
                (params.get("Action").map(String::as_str) == Some("AssumeRole"))
                    .then(|| parse_assume_role(exchange, params))
            })
            .collect()
    }

    /// Secrets Manager calls (`X-Amz-Target: secretsmanager.*`), parsed.
    pub fn secrets_manager_calls(&self) -> Vec<SecretsManagerCall> {
        self.json_calls("secretsmanager.")
    }

    /// Systems Manager calls (`X-Amz-Target: AmazonSSM.*`), parsed.
    pub fn ssm_calls(&self) -> Vec<SsmCall> {
        self.json_calls("AmazonSSM.")
    }

    /// Systems Manager calls of one operation (`"GetParameter"`, `"GetParameters"`).
    pub fn ssm_calls_of(&self, operation: &str) -> Vec<SsmCall> {
        self.ssm_calls().into_iter().filter(|call| call.operation == operation).collect()
    }

    fn json_calls(&self, prefix: &str) -> Vec<SecretsManagerCall> {
        self.exchanges()
            .iter()
            .filter_map(|exchange| {
                let operation = exchange.target.as_deref()?.strip_prefix(prefix)?;
                let response: serde_json::Value = serde_json::from_slice(&exchange.response_body).unwrap_or_default();
                let error_code = if (200..300).contains(&exchange.status) {
                    None
                } else {
                    response
                        .get("__type")
                        .and_then(|v| v.as_str())
                        .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned())
                };
                Some(SecretsManagerCall {
                    at: exchange.at,
                    operation: operation.to_owned(),
                    access_key_id: exchange.access_key_id(),
                    request: serde_json::from_slice(&exchange.request_body).unwrap_or_default(),
                    status: exchange.status,
                    response,
                    error_code,
                })
            })
            .collect()
    }

    /// Secrets Manager calls of one operation (`"GetSecretValue"`, `"BatchGetSecretValue"`).
    pub fn secrets_manager_calls_of(&self, operation: &str) -> Vec<SecretsManagerCall> {
        self.secrets_manager_calls().into_iter().filter(|call| call.operation == operation).collect()
    }
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection task.
        self.faults.clear();
        self.stop();
    }
}

fn lock(recorded: &Recorded) -> MutexGuard<'_, Vec<Exchange>> {
    recorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn serve(
    listener: TcpListener,
    upstream: String,
    client: UpstreamClient,
    recorded: Recorded,
    faults: Arc<Faults>,
) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let context = Context {
            upstream: upstream.clone(),
            client: client.clone(),
            recorded: recorded.clone(),
            faults: faults.clone(),
            fd,
        };
        connections.spawn(async move {
            let service = service_fn(move |request| forward(request, context.clone()));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Headers that belong to one hop and must not be forwarded as such.
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

fn strip_hop_by_hop(headers: &mut HeaderMap, body_len: usize) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // The body is forwarded whole, so its length is known.
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(body_len));
}

/// What each connection's service needs.
#[derive(Clone)]
struct Context {
    upstream: String,
    client: UpstreamClient,
    recorded: Recorded,
    faults: Arc<Faults>,
    /// The connection's socket, for a reset.
    fd: std::os::fd::RawFd,
}

/// A connection closed on purpose, without an answer (a `Drop` or `Reset` fault).
#[derive(Debug)]
struct Unanswered;

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed unanswered by an injected fault")
    }
}

impl std::error::Error for Unanswered {}

async fn forward(request: Request<Incoming>, context: Context) -> Result<Response<Full<Bytes>>, Unanswered> {
    let Context { upstream, client, recorded, faults, fd } = context;
    let at = SystemTime::now();
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let method = parts.method.to_string();
    let path = parts.uri.path_and_query().map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let request_headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let target =
        parts.headers.get(HeaderName::from_static("x-amz-target")).and_then(|v| v.to_str().ok()).map(str::to_owned);

    let request_body = match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => Err(anyhow::Error::new(error).context("reading the request body")),
    };
    let service = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(Service::of);
    let operation = match &target {
        Some(target) => target.split_once('.').map(|(_, operation)| operation.to_owned()),
        None => request_body.as_ref().ok().and_then(|body| {
            let form = std::str::from_utf8(body).ok()?;
            parse_form(form).into_iter().find(|(name, _)| name == "Action").map(|(_, action)| action)
        }),
    };
    let fault = faults.take(service, operation.as_deref());
    let record = |status, response_body, upstream_error| Exchange {
        at,
        elapsed: started.elapsed(),
        method: method.clone(),
        path: path.clone(),
        target: target.clone(),
        request_headers: request_headers.clone(),
        request_body: request_body.as_ref().cloned().unwrap_or_default(),
        status,
        response_body,
        upstream_error,
        fault: fault.map(Fault::name),
    };
    match (fault, service) {
        (Some(Fault::Delay(delay)), _) => tokio::time::sleep(delay).await,
        (Some(Fault::Hold), _) => faults.wait_release().await,
        (Some(fault @ (Fault::Drop | Fault::Reset)), _) => {
            if fault == Fault::Reset {
                crate::faults::reset_on_close(fd);
            }
            lock(&recorded).push(record(0, Bytes::new(), Some(format!("{} by the proxy", fault.name()))));
            return Err(Unanswered);
        }
        (Some(fault @ (Fault::Throttle | Fault::ServerError)), Some(service)) => {
            let (status, content_type, body) = crate::faults::error_answer(service, fault);
            lock(&recorded).push(record(status, body.clone(), None));
            let mut response = Response::new(Full::new(body));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
            return Ok(response);
        }
        _ => {}
    }
    let result = match &request_body {
        Ok(request_body) => call_upstream(&client, &upstream, &path, &parts, request_body.clone()).await,
        Err(error) => Err(anyhow::anyhow!("{error:#}")),
    };
    let (status, response_body, upstream_error, response) = match result {
        Ok((mut response_parts, mut response_body)) => {
            if fault == Some(Fault::Malformed) {
                response_body = response_body.slice(..response_body.len() / 2);
            }
            strip_hop_by_hop(&mut response_parts.headers, response_body.len());
            let status = response_parts.status.as_u16();
            let response = Response::from_parts(response_parts, Full::new(response_body.clone()));
            (status, response_body, None, response)
        }
        Err(error) => {
            let message = format!("{error:#}");
            let body = Bytes::from(message.clone());
            let mut response = Response::new(Full::new(body.clone()));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            (502, body, Some(message), response)
        }
    };
    lock(&recorded).push(record(status, response_body, upstream_error));
    Ok(response)
}

/// Sends the request on unchanged (minus hop-by-hop headers) and reads the whole answer.
async fn call_upstream(
    client: &UpstreamClient,
    upstream: &str,
    path: &str,
    parts: &hyper::http::request::Parts,
    request_body: Bytes,
) -> anyhow::Result<(hyper::http::response::Parts, Bytes)> {
    let uri: hyper::Uri = format!("{upstream}{path}").parse().context("building the upstream URI")?;
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers, request_body.len());
    let mut upstream_request = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(Full::new(request_body))
        .context("building the upstream request")?;
    // Keeps the client's Host (signed by SigV4); hyper only adds one if absent.
    *upstream_request.headers_mut() = headers;
    let response = client.request(upstream_request).await.context("calling the upstream")?;
    let (response_parts, response_body) = response.into_parts();
    let response_body = response_body.collect().await.context("reading the upstream body")?.to_bytes();
    Ok((response_parts, response_body))
}

fn parse_assume_role(exchange: &Exchange, params: BTreeMap<String, String>) -> AssumeRoleCall {
    let body = String::from_utf8_lossy(&exchange.response_body);
    let ok = exchange.status == 200;
    let credentials = ok
        .then(|| {
            Some(StaticCredentials {
                access_key_id: xml_field(&body, "AccessKeyId")?,
                secret_access_key: xml_field(&body, "SecretAccessKey")?,
                session_token: Some(xml_field(&body, "SessionToken")?),
            })
        })
        .flatten();
    AssumeRoleCall {
        at: exchange.at,
        caller_access_key_id: exchange.access_key_id(),
        role_arn: params.get("RoleArn").cloned(),
        role_session_name: params.get("RoleSessionName").cloned(),
        duration_seconds: params.get("DurationSeconds").and_then(|d| d.parse().ok()),
        policy: params.get("Policy").cloned(),
        status: exchange.status,
        credentials,
        expiration: ok.then(|| xml_field(&body, "Expiration")).flatten(),
        error_code: (!ok).then(|| xml_field(&body, "Code")).flatten(),
        params,
    }
}

/// Text of the first `<tag>…</tag>` element, entities decoded. Enough for STS's flat answers.
fn xml_field(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(
        xml[start..start + len]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// `application/x-www-form-urlencoded` pairs, decoded (`+` is a space, `%XX` a byte).
fn parse_form(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::expect_used)] // Tests may panic with a reason.
mod tests {
    use super::*;
    use crate::ministack::{MiniStack, read_secret_as};

    #[test]
    fn form_and_xml_helpers() {
        let params: BTreeMap<_, _> =
            parse_form("Action=AssumeRole&Policy=%7B%22a%22%3A+1%7D&X=%ZZ&Y=%4").into_iter().collect();
        assert_eq!(params["Action"], "AssumeRole");
        assert_eq!(params["Policy"], "{\"a\": 1}");
        assert_eq!(params["X"], "%ZZ");
        assert_eq!(params["Y"], "%4");
        let xml =
            "<R><Credentials><AccessKeyId>ASIA1</AccessKeyId><SessionToken>a&amp;b</SessionToken></Credentials></R>";
        assert_eq!(xml_field(xml, "AccessKeyId").as_deref(), Some("ASIA1"));
        assert_eq!(xml_field(xml, "SessionToken").as_deref(), Some("a&b"));
        assert_eq!(xml_field(xml, "Expiration"), None);
    }

    #[tokio::test]
    async fn records_assume_role_and_its_credentials() {
        let stack = MiniStack::start().await.expect("MiniStack starts");
        let world = stack
            .world("app/", &[("app/db", "db-v1"), ("app/api", "api-v1"), ("other/x", "x-v1")])
            .await
            .expect("world");
        let proxy = AwsProxy::start(stack.endpoint()).await.expect("proxy starts");

        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                 "Resource": "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-??????"},
                {"Effect": "Allow", "Action": "secretsmanager:BatchGetSecretValue", "Resource": "*"}
            ]
        });
        let sts = aws_sdk_sts::Client::new(&world.exec_credentials.sdk_config(&proxy.endpoint()));
        let out = sts
            .assume_role()
            .role_arn(&world.scoped_role_arn)
            .role_session_name("ss-env-proxy")
            .duration_seconds(900)
            .policy(policy.to_string())
            .send()
            .await
            .expect("AssumeRole through the proxy (SigV4 still verifies upstream)");
        let sdk_key = out.credentials().expect("credentials").access_key_id().to_owned();

        let calls = proxy.assume_role_calls();
        assert_eq!(calls.len(), 1);
        let call = &calls[0];
        assert_eq!(call.status, 200);
        assert_eq!(call.role_arn.as_deref(), Some(world.scoped_role_arn.as_str()));
        assert_eq!(call.role_session_name.as_deref(), Some("ss-env-proxy"));
        assert_eq!(call.duration_seconds, Some(900));
        assert_eq!(call.policy_json(), Some(policy));
        assert_eq!(call.caller_access_key_id.as_deref(), Some(world.exec_credentials.access_key_id.as_str()));
        assert!(call.expiration.as_deref().is_some_and(|e| e.ends_with('Z')));
        let creds = call.credentials.clone().expect("parsed credentials");
        assert_eq!(creds.access_key_id, sdk_key);

        // The recorded credentials are real: AWS (MiniStack) honours and scopes them.
        let ep = stack.endpoint();
        assert_eq!(read_secret_as(&ep, &creds, "app/db").await, Ok("db-v1".to_owned()));
        assert_eq!(read_secret_as(&ep, &creds, "other/x").await, Err("AccessDeniedException".to_owned()));

        // A refused AssumeRole is recorded with its code and no credentials.
        let admin_sts = aws_sdk_sts::Client::new(&MiniStack::admin_credentials().sdk_config(&proxy.endpoint()));
        admin_sts
            .assume_role()
            .role_arn(&world.scoped_role_arn)
            .role_session_name("admin")
            .send()
            .await
            .expect_err("trust policy refuses the admin");
        let calls = proxy.assume_role_calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].status, 403);
        assert_eq!(calls[1].error_code.as_deref(), Some("AccessDenied"));
        assert!(calls[1].credentials.is_none());

        // Secrets Manager calls through the proxy.
        proxy.clear();
        assert!(proxy.exchanges().is_empty());
        let pep = proxy.endpoint();
        assert_eq!(read_secret_as(&pep, &creds, "app/db").await, Ok("db-v1".to_owned()));
        assert_eq!(read_secret_as(&pep, &creds, "app/api").await, Err("AccessDeniedException".to_owned()));
        let sm = aws_sdk_secretsmanager::Client::new(&creds.sdk_config(&pep));
        let batch = sm
            .batch_get_secret_value()
            .secret_id_list("app/db")
            .secret_id_list("app/api")
            .send()
            .await
            .expect("BatchGetSecretValue answers 200");
        assert_eq!(batch.secret_values().len(), 1);
        assert_eq!(batch.errors().len(), 1);

        let gets = proxy.secrets_manager_calls_of("GetSecretValue");
        assert_eq!(gets.len(), 2);
        assert_eq!(gets[0].secret_ids(), vec!["app/db".to_owned()]);
        assert_eq!(gets[0].status, 200);
        assert_eq!(gets[0].response["SecretString"], "db-v1");
        assert_eq!(gets[0].access_key_id.as_deref(), Some(creds.access_key_id.as_str()));
        assert_eq!(gets[1].error_code.as_deref(), Some("AccessDeniedException"));
        let batches = proxy.secrets_manager_calls_of("BatchGetSecretValue");
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].secret_ids(), vec!["app/db".to_owned(), "app/api".to_owned()]);
        assert_eq!(batches[0].status, 200);
        assert_eq!(batches[0].response["Errors"][0]["ErrorCode"], "AccessDeniedException");
        assert_eq!(proxy.secrets_manager_calls().len(), 3);
        assert!(proxy.assume_role_calls().is_empty());
    }

    #[tokio::test]
    async fn unreachable_upstream_is_a_recorded_502() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let proxy = AwsProxy::start(format!("http://127.0.0.1:{port}")).await.expect("proxy");
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let request = Request::post(format!("{}/", proxy.endpoint()))
            .header("x-amz-target", "secretsmanager.GetSecretValue")
            .body(Full::new(Bytes::from_static(b"{\"SecretId\":\"a\"}")))
            .expect("request");
        let response = client.request(request).await.expect("proxy answers");
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let exchanges = proxy.exchanges();
        assert_eq!(exchanges.len(), 1);
        assert_eq!(exchanges[0].status, 502);
        assert!(exchanges[0].upstream_error.is_some());
        assert_eq!(&exchanges[0].request_body[..], b"{\"SecretId\":\"a\"}");
        assert_eq!(proxy.secrets_manager_calls()[0].secret_ids(), vec!["a".to_owned()]);
    }
}
