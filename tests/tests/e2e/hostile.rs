//! Hostile local clients against the real release binary: malformed, smuggled, oversized,
//! slow and flooding requests, sent as raw bytes over TCP (an HTTP client library would refuse
//! to send most of them). Every case asserts the exact status and error code, and the suite
//! asserts that nothing was asked of AWS and nothing secret reached the extension's output.
//! All of it runs after INIT and outside any invocation.

use std::time::{Duration, Instant};

use scoped_secrets_tests::{SECRETS, Stack};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read off the wire.
#[derive(Debug, Clone)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The stable code: `error` on the GET API, `__type` on the SDK protocol.
    fn code(&self) -> Option<String> {
        let json = self.json();
        json["error"].as_str().or_else(|| json["__type"].as_str()).map(str::to_owned)
    }
}

/// What came back on one connection.
#[derive(Debug)]
struct Exchange {
    responses: Vec<RawResponse>,
    /// The server closed the connection (EOF or reset) before the read bound.
    closed: bool,
    /// When the last byte (or the close) arrived, from the first write.
    elapsed: Duration,
}

/// Parses as many complete responses as `buffer` holds (a response without `Content-Length`
/// is complete only at close, when `at_close` is set).
fn parse_responses(buffer: &[u8], at_close: bool) -> Vec<RawResponse> {
    let mut responses = Vec::new();
    let mut rest = buffer;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let after = &rest[end + 4..];
        let length = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
        let length = match length {
            Some(length) if after.len() >= length => length,
            None if at_close => after.len(),
            _ => break,
        };
        responses.push(RawResponse { status, headers, body: after[..length].to_vec() });
        rest = &after[length..];
    }
    responses
}

/// Writes `request` to a fresh connection and reads until `expected` responses are complete,
/// the server closes, or `bound` passes.
async fn exchange(port: u16, request: &[u8], expected: usize, bound: Duration) -> anyhow::Result<Exchange> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let started = Instant::now();
    // The server may refuse early and close while a large request is still being written.
    let _ = stream.write_all(request).await;
    read_responses(&mut stream, started, expected, bound).await
}

async fn read_responses(
    stream: &mut TcpStream,
    started: Instant,
    expected: usize,
    bound: Duration,
) -> anyhow::Result<Exchange> {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut closed = false;
    loop {
        let remaining = bound.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, stream.read(&mut chunk)).await {
            Err(_elapsed) => break,
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                buffer.extend_from_slice(&chunk[..n]);
                if expected > 0 && parse_responses(&buffer, false).len() >= expected {
                    break;
                }
            }
        }
    }
    Ok(Exchange { responses: parse_responses(&buffer, closed), closed, elapsed: started.elapsed() })
}

/// `METHOD target HTTP/1.1` with a loopback `Host`, `Connection: close`, and `headers`.
fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut bytes = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n").into_bytes();
    for (name, value) in headers {
        bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    bytes
}

fn get(target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    request("GET", target, headers)
}

/// Replaces every `{}` in a template with raw bytes (for non-UTF-8 requests).
fn with_bytes(template: &str, raw: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut parts = template.split("{}");
    if let Some(first) = parts.next() {
        bytes.extend_from_slice(first.as_bytes());
    }
    for part in parts {
        bytes.extend_from_slice(raw);
        bytes.extend_from_slice(part.as_bytes());
    }
    bytes
}

/// One hostile request and its exact answer.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
    /// The JSON body's code; `None` where hyper answers before the handler (no JSON body).
    code: Option<&'static str>,
    /// The audit line's code, where the handler answered with a refusal.
    audit: Option<&'static str>,
}

fn case(name: &'static str, bytes: Vec<u8>, status: u16, code: &'static str) -> Case {
    Case { name, bytes, status, code: Some(code), audit: Some(code) }
}

/// A case hyper itself answers (parse errors, oversized heads): no JSON body, no audit line.
fn by_hyper(name: &'static str, bytes: Vec<u8>, status: u16) -> Case {
    Case { name, bytes, status, code: None, audit: None }
}

/// An SDK-protocol case: the `__type` in the body, the stable code in the audit line.
fn sdk(name: &'static str, bytes: Vec<u8>, kind: &'static str, audit: &'static str) -> Case {
    Case { name, bytes, status: 400, code: Some(kind), audit: Some(audit) }
}

const TOKEN_HEADER: &str = "X-Aws-Parameters-Secrets-Token";
/// An allowlisted secret: a refusal here is the check's, not the allowlist's.
const ALLOWED: &str = "/secretsmanager/get?secretId=app%2Fdb";
/// A secret outside the allowlist: a request that passes every earlier check ends here.
const OUTSIDE: &str = "/secretsmanager/get?secretId=other%2Fx";

#[allow(clippy::too_many_lines)]
fn cases(token: &str, secret_key: &str) -> Vec<Case> {
    let t = token;
    let tok = |target: &str| get(target, &[(TOKEN_HEADER, t)]);
    let upper = t.to_ascii_uppercase();
    let long_token = "A".repeat(8 * 1024);
    let long_id = format!("/secretsmanager/get?secretId={}", "a".repeat(2_049));
    let long_target = format!("/secretsmanager/get?secretId={}", "a".repeat(5_000));
    let huge_target = format!("/secretsmanager/get?secretId={}", "a".repeat(20_000));
    let big_header = "b".repeat(20 * 1024);
    let many_headers: Vec<(String, String)> = (0..120).map(|i| (format!("X-Filler-{i}"), "1".to_owned())).collect();
    let many_headers: Vec<(&str, &str)> = many_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let long_version = format!("{OUTSIDE}&versionId={}", "a".repeat(65));
    let chunked_body = {
        let mut bytes = request("POST", "/", &[("Transfer-Encoding", "chunked")]);
        let data = vec![b'{'; 70 * 1024];
        bytes.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        bytes.extend_from_slice(&data);
        bytes.extend_from_slice(b"\r\n0\r\n\r\n");
        bytes
    };
    let sdk_headers = [
        ("Content-Type", "application/x-amz-json-1.1"),
        ("X-Amz-Target", "secretsmanager.GetSecretValue"),
        ("Content-Length", "22"),
    ];
    let mut unsigned = request("POST", "/", &sdk_headers);
    unsigned.extend_from_slice(br#"{"SecretId":"app/db"}"#);
    unsigned.push(b'\n');
    let mut token_as_sdk = request("POST", "/", &[sdk_headers[0], sdk_headers[1], sdk_headers[2], (TOKEN_HEADER, t)]);
    token_as_sdk.extend_from_slice(b"{\"SecretId\":\"app/db\"}\n");
    let mut forwarded_sdk =
        request("POST", "/", &[sdk_headers[0], sdk_headers[1], sdk_headers[2], ("X-Forwarded-For", "10.0.0.1")]);
    forwarded_sdk.extend_from_slice(b"{\"SecretId\":\"app/db\"}\n");
    let mut get_with_body = get(ALLOWED, &[(TOKEN_HEADER, t), ("Content-Length", "5")]);
    get_with_body.extend_from_slice(b"hello");

    vec![
        // Tokens of many shapes, and tokens in the wrong place.
        case("no token", get(ALLOWED, &[]), 401, "missing_token"),
        case("empty token", get(ALLOWED, &[(TOKEN_HEADER, "")]), 403, "invalid_token"),
        case("wrong token", get(ALLOWED, &[(TOKEN_HEADER, "wrong")]), 403, "invalid_token"),
        case("truncated token", get(ALLOWED, &[(TOKEN_HEADER, &t[..t.len() - 1])]), 403, "invalid_token"),
        case("token with a byte appended", get(ALLOWED, &[(TOKEN_HEADER, &format!("{t}x"))]), 403, "invalid_token"),
        case("token in upper case", get(ALLOWED, &[(TOKEN_HEADER, &upper)]), 403, "invalid_token"),
        case("token header twice", get(ALLOWED, &[(TOKEN_HEADER, t), (TOKEN_HEADER, t)]), 403, "invalid_token"),
        case(
            "token split across two headers",
            get(ALLOWED, &[(TOKEN_HEADER, &t[..10]), (TOKEN_HEADER, &t[10..])]),
            403,
            "invalid_token",
        ),
        case(
            "token listed twice in one header",
            get(ALLOWED, &[(TOKEN_HEADER, &format!("{t}, {t}"))]),
            403,
            "invalid_token",
        ),
        case("8 KiB token", get(ALLOWED, &[(TOKEN_HEADER, &long_token)]), 403, "invalid_token"),
        case(
            "non-ASCII bytes in the token",
            with_bytes(
                &format!(
                    "GET {ALLOWED} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{TOKEN_HEADER}: {{}}\r\n\r\n"
                ),
                b"\xff\xfe\x80",
            ),
            403,
            "invalid_token",
        ),
        case("secret access key as the token", get(ALLOWED, &[(TOKEN_HEADER, secret_key)]), 403, "invalid_token"),
        case(
            "token as a bearer token",
            get(ALLOWED, &[("Authorization", &format!("Bearer {t}"))]),
            401,
            "missing_token",
        ),
        case("token in a cookie", get(ALLOWED, &[("Cookie", &format!("{TOKEN_HEADER}={t}"))]), 401, "missing_token"),
        case("token in a misspelt header", get(ALLOWED, &[("X-Aws-Parameters-Secret-Token", t)]), 401, "missing_token"),
        case("token in the query", get(&format!("{ALLOWED}&{TOKEN_HEADER}={t}"), &[]), 401, "missing_token"),
        case("token in the query of /v1/", get(&format!("/v1/app%2Fdb?{TOKEN_HEADER}={t}"), &[]), 401, "missing_token"),
        case(
            "token with surrounding whitespace is the token",
            get(OUTSIDE, &[(TOKEN_HEADER, &format!("  {t}\t"))]),
            403,
            "secret_not_allowed",
        ),
        case(
            "token asked for as the secret id",
            get(&format!("/secretsmanager/get?secretId={t}"), &[(TOKEN_HEADER, t)]),
            403,
            "secret_not_allowed",
        ),
        by_hyper(
            "NUL byte in the token",
            with_bytes(&format!("GET {ALLOWED} HTTP/1.1\r\nHost: localhost\r\n{TOKEN_HEADER}: a{{}}b\r\n\r\n"), b"\0"),
            400,
        ),
        by_hyper(
            "token folded over two lines",
            format!(
                "GET {ALLOWED} HTTP/1.1\r\nHost: localhost\r\n{TOKEN_HEADER}: {}\r\n {}\r\n\r\n",
                &t[..10],
                &t[10..]
            )
            .into_bytes(),
            400,
        ),
        // Proxies.
        case(
            "X-Forwarded-For",
            get(ALLOWED, &[(TOKEN_HEADER, t), ("X-Forwarded-For", "10.1.2.3")]),
            400,
            "forwarded_request",
        ),
        case(
            "Forwarded",
            get(ALLOWED, &[(TOKEN_HEADER, t), ("Forwarded", "for=10.1.2.3;proto=http")]),
            400,
            "forwarded_request",
        ),
        case(
            "empty X-Forwarded-For",
            get(ALLOWED, &[(TOKEN_HEADER, t), ("X-Forwarded-For", "")]),
            400,
            "forwarded_request",
        ),
        case(
            "X-Forwarded-For in mixed case",
            get(ALLOWED, &[(TOKEN_HEADER, t), ("x-FoRwArDeD-fOr", "127.0.0.1")]),
            400,
            "forwarded_request",
        ),
        case("X-Forwarded-For on /ping", get("/ping", &[("X-Forwarded-For", "10.1.2.3")]), 400, "forwarded_request"),
        sdk("X-Forwarded-For on the SDK protocol", forwarded_sdk, "AccessDeniedException", "forwarded_request"),
        // Methods.
        case(
            "POST to the GET path",
            request("POST", ALLOWED, &[(TOKEN_HEADER, t), ("Content-Length", "0")]),
            405,
            "method_not_allowed",
        ),
        case("PUT", request("PUT", ALLOWED, &[(TOKEN_HEADER, t)]), 405, "method_not_allowed"),
        case("DELETE", request("DELETE", ALLOWED, &[(TOKEN_HEADER, t)]), 405, "method_not_allowed"),
        case("PATCH", request("PATCH", ALLOWED, &[(TOKEN_HEADER, t)]), 405, "method_not_allowed"),
        case("TRACE", request("TRACE", ALLOWED, &[(TOKEN_HEADER, t)]), 405, "method_not_allowed"),
        case("OPTIONS with an asterisk target", request("OPTIONS", "*", &[]), 405, "method_not_allowed"),
        case("CONNECT with an authority target", request("CONNECT", "127.0.0.1:443", &[]), 405, "method_not_allowed"),
        case("lower-case get", request("get", ALLOWED, &[(TOKEN_HEADER, t)]), 405, "method_not_allowed"),
        case("an invented method", request("STEAL", ALLOWED, &[(TOKEN_HEADER, t)]), 405, "method_not_allowed"),
        case("POST /ping", request("POST", "/ping", &[]), 405, "method_not_allowed"),
        case("POST to /v1/", request("POST", "/v1/app%2Fdb", &[(TOKEN_HEADER, t)]), 405, "method_not_allowed"),
        // Request targets.
        case("GET with an asterisk target", get("*", &[(TOKEN_HEADER, t)]), 404, "not_found"),
        case(
            "absolute-form target on loopback",
            get(&format!("http://127.0.0.1{ALLOWED}"), &[(TOKEN_HEADER, t)]),
            400,
            "absolute_target",
        ),
        case(
            "absolute-form target elsewhere",
            get(&format!("http://evil.example{ALLOWED}"), &[(TOKEN_HEADER, t)]),
            400,
            "absolute_target",
        ),
        sdk(
            "absolute-form target on the SDK protocol",
            request("POST", "http://127.0.0.1/", &[("Content-Length", "0")]),
            "InvalidRequestException",
            "absolute_target",
        ),
        case("dot-dot segment", tok(&ALLOWED.replace("/get", "/../secretsmanager/get")), 404, "not_found"),
        case(
            "encoded dot-dot segment",
            tok("/secretsmanager/%2e%2e/secretsmanager/get?secretId=app%2Fdb"),
            404,
            "not_found",
        ),
        case("encoded slash", tok("/secretsmanager%2Fget?secretId=app%2Fdb"), 404, "not_found"),
        case("trailing slash", tok("/secretsmanager/get/?secretId=app%2Fdb"), 404, "not_found"),
        case("double slash", tok("//secretsmanager/get?secretId=app%2Fdb"), 404, "not_found"),
        case("path in upper case", tok("/SECRETSMANAGER/GET?secretId=app%2Fdb"), 404, "not_found"),
        case("path parameter", tok("/secretsmanager/get;x=1?secretId=app%2Fdb"), 404, "not_found"),
        case("traversal inside a /v1/ id", tok("/v1/..%2F..%2Fother%2Fx"), 403, "secret_not_allowed"),
        case("encoded dots before an allowlisted /v1/ id", tok("/v1/%2e%2e/app/db"), 403, "secret_not_allowed"),
        case("NUL inside a /v1/ id", tok("/v1/app%2Fdb%00"), 400, "invalid_secret_id"),
        case("empty /v1/ id", tok("/v1/"), 400, "missing_secret_id"),
        case("secretId beside a /v1/ id", tok("/v1/app%2Fdb?secretId=other%2Fx"), 400, "unknown_parameter"),
        case("non-UTF-8 /v1/ id", tok("/v1/%FF%FE"), 403, "secret_not_allowed"),
        // Queries.
        case(
            "secretId twice",
            tok("/secretsmanager/get?secretId=other%2Fx&secretId=app%2Fdb"),
            400,
            "duplicate_parameter",
        ),
        case(
            "versionStage twice",
            tok(&format!("{OUTSIDE}&versionStage=A&versionStage=B")),
            400,
            "duplicate_parameter",
        ),
        case("secretId over 2,048 bytes", tok(&long_id), 400, "invalid_secret_id"),
        case("target over 4,096 bytes", tok(&long_target), 413, "target_too_long"),
        case("unknown parameter", tok(&format!("{OUTSIDE}&debug=1")), 400, "unknown_parameter"),
        case("secretid in lower case", tok("/secretsmanager/get?secretid=app%2Fdb"), 400, "unknown_parameter"),
        case("no query", tok("/secretsmanager/get"), 400, "missing_secret_id"),
        case("secretId without a value", tok("/secretsmanager/get?secretId"), 400, "missing_secret_id"),
        case("percent-encoded non-UTF-8 query", tok("/secretsmanager/get?secretId=%FF%FE"), 400, "invalid_query"),
        by_hyper(
            "raw non-UTF-8 bytes in the query",
            with_bytes(
                &format!(
                    "GET /secretsmanager/get?secretId={{}} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{TOKEN_HEADER}: {t}\r\n\r\n"
                ),
                b"\xff\xfe",
            ),
            400,
        ),
        by_hyper(
            "raw non-UTF-8 bytes in the path",
            with_bytes(
                &format!(
                    "GET /secretsmanager/{{}}?secretId=x HTTP/1.1\r\nHost: localhost\r\n{TOKEN_HEADER}: {t}\r\n\r\n"
                ),
                b"\xff\xfe",
            ),
            400,
        ),
        case("NUL in the secretId", tok("/secretsmanager/get?secretId=app%2Fdb%00"), 400, "invalid_secret_id"),
        case(
            "versionStage and versionId",
            tok(&format!("{OUTSIDE}&versionStage=A&versionId=b")),
            400,
            "conflicting_version",
        ),
        case(
            "versionStage with a slash",
            tok(&format!("{OUTSIDE}&versionStage=..%2F..")),
            400,
            "invalid_version_stage",
        ),
        case("versionId over 64 bytes", tok(&long_version), 400, "invalid_version_id"),
        case("refreshNow other than a boolean", tok(&format!("{OUTSIDE}&refreshNow=yes")), 400, "invalid_refresh_now"),
        // Hosts.
        case("foreign Host", get_host(ALLOWED, t, &["evil.example"]), 400, "invalid_host"),
        case(
            "Host that starts like localhost",
            get_host(ALLOWED, t, &["localhost.evil.example:2773"]),
            400,
            "invalid_host",
        ),
        case("Host twice, loopback first", get_host(ALLOWED, t, &["localhost", "evil.example"]), 400, "invalid_host"),
        case("empty Host", get_host(ALLOWED, t, &[""]), 400, "invalid_host"),
        case(
            "non-UTF-8 Host",
            with_bytes(
                &format!(
                    "GET {ALLOWED} HTTP/1.1\r\nHost: localhost{{}}\r\nConnection: close\r\n{TOKEN_HEADER}: {t}\r\n\r\n"
                ),
                b"\xff",
            ),
            400,
            "invalid_host",
        ),
        // Sizes and bodies.
        by_hyper("20 KiB header", get(ALLOWED, &[(TOKEN_HEADER, t), ("X-Big", &big_header)]), 431),
        by_hyper("120 headers", get(ALLOWED, &many_headers), 431),
        by_hyper("20 KiB target", get(&huge_target, &[(TOKEN_HEADER, t)]), 431),
        case("GET with a body", get_with_body, 413, "body_not_allowed"),
        case(
            "GET with a chunked body",
            get(ALLOWED, &[(TOKEN_HEADER, t), ("Transfer-Encoding", "chunked")]),
            413,
            "body_not_allowed",
        ),
        case(
            "GET declaring a terabyte body",
            get(ALLOWED, &[(TOKEN_HEADER, t), ("Content-Length", "1000000000000")]),
            413,
            "body_not_allowed",
        ),
        by_hyper("Content-Length not a number", get(ALLOWED, &[(TOKEN_HEADER, t), ("Content-Length", "abc")]), 400),
        by_hyper(
            "two different Content-Lengths",
            get(ALLOWED, &[(TOKEN_HEADER, t), ("Content-Length", "0"), ("Content-Length", "5")]),
            400,
        ),
        sdk(
            "SDK body declared over 64 KiB",
            request("POST", "/", &[("Content-Length", "70000")]),
            "InvalidRequestException",
            "body_too_large",
        ),
        sdk("SDK chunked body over 64 KiB", chunked_body, "InvalidRequestException", "body_too_large"),
        sdk("unsigned SDK request", unsigned, "AccessDeniedException", "signature_malformed"),
        sdk(
            "SDK request with the GET token instead of a signature",
            token_as_sdk,
            "AccessDeniedException",
            "signature_malformed",
        ),
        // Protocol versions and garbage.
        case(
            "HTTP/1.0 without a token",
            b"GET /secretsmanager/get?secretId=app%2Fdb HTTP/1.0\r\n\r\n".to_vec(),
            401,
            "missing_token",
        ),
        by_hyper("HTTP/0.9 request line", b"GET /ping\r\n\r\n".to_vec(), 400),
        by_hyper("unknown HTTP version", b"GET /ping HTTP/1.2\r\nHost: localhost\r\n\r\n".to_vec(), 400),
        by_hyper("a TLS ClientHello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400),
    ]
}

fn get_host(target: &str, token: &str, hosts: &[&str]) -> Vec<u8> {
    let mut bytes = format!("GET {target} HTTP/1.1\r\nConnection: close\r\n{TOKEN_HEADER}: {token}\r\n").into_bytes();
    for host in hosts {
        bytes.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    bytes
}

/// Resident memory of `pid` in KiB (`VmRSS` in `/proc/PID/status`).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

/// Established client-side connections to `port` (from `/proc/net/tcp`).
fn established_to(port: u16) -> anyhow::Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let remote = format!("0100007F:{port:04X}");
    Ok(table
        .lines()
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"01")
        })
        .count())
}

/// Everything that must never reach the extension's output: the token, the execution role's
/// keys, and every secret value.
fn never_printed(stack: &Stack) -> Vec<String> {
    let credentials = &stack.world.exec_credentials;
    let mut values = vec![stack.token(), credentials.secret_access_key.clone()];
    // A prefix too: a log line truncating a long token would still leak it.
    values.push(stack.token().chars().take(24).collect());
    values.extend(SECRETS.iter().map(|(_, value)| (*value).to_owned()));
    values
}

/// Starts an environment for `app/db` at trace level and waits until the function's INIT is
/// over, so every request after it is outside any invocation.
async fn idle_environment(
    stack: &Stack,
    extra: &[(&str, &str)],
) -> anyhow::Result<(scoped_secrets_tests::lambda::Environment, u16)> {
    let mut variables = vec![("SCOPED_SECRETS_LOG_LEVEL", "trace"), ("RUST_LOG", "trace")];
    variables.extend_from_slice(extra);
    let (environment, port) = stack.environment("app/db", &variables).await?;
    environment.extension.output.wait_for_event("init_ended", Duration::from_secs(5)).await?;
    assert!(stack.proxy.exchanges().is_empty(), "nothing asked of AWS during INIT");
    Ok((environment, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_request_gets_its_exact_refusal_and_nothing_is_fetched_or_leaked() -> anyhow::Result<()> {
    let began = Instant::now();
    let stack = Stack::start().await?;
    let (environment, port) = idle_environment(&stack, &[]).await?;
    eprintln!("hostile: environment ready after {:?}", began.elapsed());
    let token = stack.token();
    let cases = cases(&token, &stack.world.exec_credentials.secret_access_key);

    let mut tasks = tokio::task::JoinSet::new();
    for (index, case) in cases.iter().enumerate() {
        let bytes = case.bytes.clone();
        tasks.spawn(async move { (index, exchange(port, &bytes, 1, Duration::from_secs(3)).await) });
    }
    let mut failures = Vec::new();
    let mut expected_audit: Vec<&str> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (index, exchanged) = joined?;
        let case = &cases[index];
        let Some(response) = exchanged?.responses.into_iter().next() else {
            failures.push(format!("{}: no response", case.name));
            continue;
        };
        let got = (response.status, response.code());
        if got != (case.status, case.code.map(str::to_owned)) {
            failures.push(format!("{}: got {got:?}, expected {:?}", case.name, (case.status, case.code)));
        }
        if case.code.is_some() {
            let content_type = response.header("content-type").unwrap_or_default();
            if !content_type.starts_with("application/") || response.header("cache-control") != Some("no-store") {
                failures.push(format!("{}: headers {:?}", case.name, response.headers));
            }
        }
        let body = String::from_utf8_lossy(&response.body);
        if never_printed(&stack).iter().any(|value| body.contains(value.as_str())) {
            failures.push(format!("{}: the answer echoes a secret or the token", case.name));
        }
        expected_audit.extend(case.audit);
    }

    // HTTP/1.0: answered, then closed (no keep-alive without asking for it).
    let old = exchange(port, b"GET /ping HTTP/1.0\r\n\r\n", 0, Duration::from_secs(3)).await?;
    let ping = old.responses.first().map(|r| (r.status, r.json()["status"].clone()));
    assert_eq!(ping, Some((200, Value::from("ready"))), "HTTP/1.0 /ping");
    assert!(old.closed, "an HTTP/1.0 connection is closed after its answer");

    // Pipelined on one connection: every request answered, in order, then closed on request.
    let mut pipelined = Vec::new();
    pipelined.extend_from_slice(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n");
    pipelined.extend_from_slice(format!("GET {ALLOWED} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
    pipelined.extend_from_slice(b"DELETE /ping HTTP/1.1\r\nHost: localhost\r\n\r\n");
    pipelined.extend_from_slice(
        format!("GET {OUTSIDE} HTTP/1.1\r\nHost: localhost\r\n{TOKEN_HEADER}: {token}\r\n\r\n").as_bytes(),
    );
    pipelined.extend_from_slice(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let answered = exchange(port, &pipelined, 0, Duration::from_secs(3)).await?;
    let answers: Vec<(u16, Option<String>)> = answered.responses.iter().map(|r| (r.status, r.code())).collect();
    let code = |c: &str| Some(c.to_owned());
    assert_eq!(
        answers,
        vec![
            (200, None),
            (401, code("missing_token")),
            (405, code("method_not_allowed")),
            (403, code("secret_not_allowed")),
            (404, code("not_found")),
        ],
        "pipelined answers in order"
    );
    assert!(answered.closed, "closed after the request that asked for it");
    expected_audit.extend(["missing_token", "method_not_allowed", "secret_not_allowed", "not_found"]);
    let distinct = cases.len() + 2;
    eprintln!(
        "hostile: {distinct} distinct cases ({} single requests, a pipelined and an HTTP/1.0 exchange)",
        cases.len()
    );
    assert!(distinct >= 40, "{distinct} cases");

    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    let output = &environment.extension.output;
    // Every refusal the handler made is one audit line with its code; hyper's own 400 and 431
    // never reach the handler.
    // (The last lines may still be on their way through the pipe.)
    let waited = Instant::now();
    while output.events("deny").len() < expected_audit.len() && waited.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut audited: Vec<String> =
        output.events("deny").iter().filter_map(|l| l["code"].as_str().map(str::to_owned)).collect();
    audited.sort();
    expected_audit.sort_unstable();
    assert_eq!(audited, expected_audit, "one audit line per refusal");
    assert!(output.events("allow").is_empty(), "nothing was served");
    assert!(
        output.events("deny").iter().any(|l| l["secret_id"] == "<contains the local token>"),
        "a token sent as a secret id is left out of the audit line"
    );
    assert!(stack.proxy.exchanges().is_empty(), "nothing was asked of AWS: {:?}", stack.proxy.exchanges().len());
    let text = output.text();
    for (index, value) in never_printed(&stack).iter().enumerate() {
        assert!(!text.contains(value.as_str()), "never_printed()[{index}] reached the output");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_at_the_header_timeout_while_others_are_served() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (environment, port) = idle_environment(&stack, &[]).await?;
    let bound = Duration::from_secs(8);

    let mut slow = tokio::task::JoinSet::new();
    // Headers started and never finished.
    slow.spawn(async move {
        ("partial head", exchange(port, b"GET /ping HTTP/1.1\r\nHost: localhost\r\nX-A: ", 0, bound).await)
    });
    // Connected, and not one byte sent.
    slow.spawn(async move { ("silent", exchange(port, b"", 0, bound).await) });
    // One header byte every 300 ms: the timeout bounds the whole head, not the gaps.
    slow.spawn(async move {
        let result = async {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
            let started = Instant::now();
            let head = b"GET /ping HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for byte in head {
                if stream.write_all(&[*byte]).await.is_err() || started.elapsed() > bound {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            read_responses(&mut stream, started, 0, bound).await
        }
        .await;
        ("one byte at a time", result)
    });
    // An idle keep-alive connection after one answer.
    slow.spawn(async move {
        let result = async {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
            stream.write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
            let first = read_responses(&mut stream, Instant::now(), 1, bound).await?;
            anyhow::ensure!(first.responses.first().map(|r| r.status) == Some(200), "first answer");
            read_responses(&mut stream, Instant::now(), 0, bound).await
        }
        .await;
        ("idle keep-alive", result)
    });
    // An SDK request whose declared body never comes.
    slow.spawn(async move {
        let head = request("POST", "/", &[("Content-Type", "application/x-amz-json-1.1"), ("Content-Length", "100")]);
        ("SDK body never sent", exchange(port, &head, 0, bound).await)
    });

    // Meanwhile, others are answered at once.
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let asked = Instant::now();
        let ping = exchange(port, &get("/ping", &[]), 1, Duration::from_secs(1)).await?;
        assert_eq!(ping.responses.first().map(|r| r.status), Some(200), "ping during the slow clients");
        assert!(asked.elapsed() < Duration::from_millis(500), "ping took {:?}", asked.elapsed());
        pings += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(pings >= 8, "{pings} pings");

    while let Some(joined) = slow.join_next().await {
        let (name, exchanged) = joined?;
        let exchanged = exchanged?;
        assert!(exchanged.closed, "{name}: still open after {bound:?}");
        let window = Duration::from_millis(4_500)..Duration::from_millis(7_000);
        assert!(window.contains(&exchanged.elapsed), "{name}: closed after {:?}", exchanged.elapsed);
        let answers: Vec<(u16, Option<String>)> = exchanged.responses.iter().map(|r| (r.status, r.code())).collect();
        if name == "SDK body never sent" {
            assert_eq!(answers, vec![(400, Some("InvalidRequestException".to_owned()))], "{name}");
        } else {
            assert!(answers.iter().all(|(status, _)| *status == 408), "{name}: {answers:?}");
        }
    }
    assert!(stack.proxy.exchanges().is_empty(), "nothing was asked of AWS");
    let text = environment.extension.output.text();
    assert!(never_printed(&stack).iter().all(|value| !text.contains(value.as_str())), "nothing leaked");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_connection_cap_is_queued_never_crashes_and_leaves_memory_flat() -> anyhow::Result<()> {
    const FLOOD: usize = 200;
    let stack = Stack::start().await?;
    let (mut environment, port) = idle_environment(&stack, &[("SCOPED_SECRETS_MAX_CONNECTIONS", "8")]).await?;
    let pid = environment.extension.pid().ok_or_else(|| anyhow::anyhow!("no extension pid"))?;
    // Warm up, so the allocator's and runtime's first-use growth is not counted as the flood's.
    for _ in 0..20 {
        exchange(port, &get("/ping", &[]), 1, Duration::from_secs(1)).await?;
    }
    let before = rss_kib(pid)?;

    // Wave 1: 200 connections at once, each with a request. Beyond the cap they wait in the
    // kernel's accept queue, and every one is answered.
    let started = Instant::now();
    let mut wave = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        wave.spawn(async move { exchange(port, &get("/ping", &[]), 1, Duration::from_secs(10)).await });
    }
    let mut answered = 0;
    while let Some(joined) = wave.join_next().await {
        if joined??.responses.first().map(|r| r.status) == Some(200) {
            answered += 1;
        }
    }
    let wave_time = started.elapsed();
    assert_eq!(answered, FLOOD, "every queued connection answered");

    // Wave 2: 200 connections that never finish a request, holding every slot, dropped after a
    // second. The queue drains as soon as they go.
    // Past the cap and the kernel's accept queue, further connects wait in SYN retries.
    let mut held = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        held.spawn(async move {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
            stream.write_all(b"GET /ping HTTP/1.1\r\n").await?;
            tokio::time::sleep(Duration::from_secs(60)).await;
            anyhow::Ok(stream)
        });
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let during = rss_kib(pid)?;
    let established = established_to(port)?;
    assert!(established >= 8, "the cap's 8 connections at least were accepted: {established}");
    held.abort_all();
    while held.join_next().await.is_some() {}
    let asked = Instant::now();
    let ping = exchange(port, &get("/ping", &[]), 1, Duration::from_secs(3)).await?;
    assert_eq!(ping.responses.first().map(|r| r.status), Some(200), "answers after the flood");
    let recovered = asked.elapsed();
    assert!(recovered < Duration::from_secs(2), "took {recovered:?} to answer after the flood");
    assert!(environment.extension.try_status().is_none(), "the extension is still running");

    let after = rss_kib(pid)?;
    eprintln!(
        "flood: {FLOOD} answered in {wave_time:?}; RSS {before} KiB before, {during} KiB with {established} idle \
         connections established, {after} KiB after; /ping {recovered:?} after"
    );
    // At most 8 connections are ever served at once: 8 × (16 KiB read buffer + hyper's state)
    // is well under 1 MiB; the rest is allocator slack. 4 MiB would be a leak per connection.
    assert!(after.saturating_sub(before) < 4 * 1024, "RSS grew from {before} KiB to {after} KiB");
    assert!(stack.proxy.exchanges().is_empty(), "nothing was asked of AWS");
    let text = environment.extension.output.text();
    assert!(never_printed(&stack).iter().all(|value| !text.contains(value.as_str())), "nothing leaked");
    Ok(())
}
