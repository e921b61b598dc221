//! SigV4 verification of requests from the function's own AWS SDK.
//!
//! Lambda gives the extension the function's credentials, so a request the SDK signed can be
//! checked exactly: re-sign it with `aws-sigv4` over the headers its own `Authorization` lists
//! (a minimum set is required), the body bytes actually received (never the client's
//! `x-amz-content-sha256`), the time in `X-Amz-Date` (±5 minutes), the `Host` as received, and
//! compare the signatures in constant time. The credential scope must name this region and the
//! service the request's `X-Amz-Target` belongs to (`secretsmanager` or `ssm`), and the access
//! key must be the function's.
//! See <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv4-create-signed-request.html>.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

use aws_sigv4::http_request::{
    PayloadChecksumKind, SessionTokenMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use http::HeaderMap;
use zeroize::Zeroizing;

use crate::domain::time::parse_amz_date;

/// How far `X-Amz-Date` may be from now.
pub const MAX_SKEW: Duration = Duration::from_secs(300);

/// Headers every signed request must cover.
const REQUIRED: &[&str] = &["host", "x-amz-date", "x-amz-target"];

/// The function's credentials, as Lambda sets them in the environment. Wiped when dropped.
#[derive(Clone)]
pub struct FunctionCredentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl fmt::Debug for FunctionCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FunctionCredentials(<redacted>)")
    }
}

impl FunctionCredentials {
    /// From `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    pub fn new(access_key_id: &str, secret_access_key: &str, session_token: Option<&str>) -> Self {
        Self {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: Zeroizing::new(secret_access_key.to_owned()),
            session_token: session_token.map(|t| Zeroizing::new(t.to_owned())),
        }
    }
}

/// Where the function's credentials come from at verification time: fixed (from the
/// environment), or read through the SDK's credential chain (SnapStart's container-credentials
/// endpoint), only when the first signed request needs them, and again when a request names
/// another access key (the endpoint rotated them) or they near their expiry.
pub struct CredentialSource {
    kind: SourceKind,
}

enum SourceKind {
    Absent,
    Fixed(Arc<FunctionCredentials>),
    Provider { provider: SharedCredentialsProvider, cached: tokio::sync::Mutex<Option<Loaded>> },
}

struct Loaded {
    credentials: Arc<FunctionCredentials>,
    expiry: Option<SystemTime>,
    at: Instant,
}

/// A request naming an unknown access key reloads at most this often.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Credentials closer than this to their expiry are reloaded first.
const EXPIRY_GUARD: Duration = Duration::from_secs(60);

impl fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            SourceKind::Absent => "absent",
            SourceKind::Fixed(_) => "environment",
            SourceKind::Provider { .. } => "provider",
        };
        f.debug_struct("CredentialSource").field("kind", &kind).finish()
    }
}

impl CredentialSource {
    /// No credentials: every signed request is refused.
    pub fn absent() -> Self {
        Self { kind: SourceKind::Absent }
    }

    /// The credentials Lambda put in the environment.
    pub fn fixed(credentials: FunctionCredentials) -> Self {
        Self { kind: SourceKind::Fixed(Arc::new(credentials)) }
    }

    /// Credentials read from `provider` when a signed request first needs them.
    pub fn provider(provider: SharedCredentialsProvider) -> Self {
        Self { kind: SourceKind::Provider { provider, cached: tokio::sync::Mutex::new(None) } }
    }

    /// The credentials to verify a request signed with `access_key_id` against; `None` when
    /// there are none (or the provider failed).
    pub async fn current(&self, access_key_id: Option<&str>) -> Option<Arc<FunctionCredentials>> {
        let (provider, cached) = match &self.kind {
            SourceKind::Absent => return None,
            SourceKind::Fixed(credentials) => return Some(Arc::clone(credentials)),
            SourceKind::Provider { provider, cached } => (provider, cached),
        };
        let mut cached = cached.lock().await;
        if let Some(loaded) = cached.as_ref() {
            let named = access_key_id.is_none_or(|key| loaded.credentials.access_key_id == key);
            let fresh = loaded.expiry.is_none_or(|expiry| expiry > SystemTime::now() + EXPIRY_GUARD);
            if (named || loaded.at.elapsed() < RELOAD_INTERVAL) && fresh {
                return Some(Arc::clone(&loaded.credentials));
            }
        }
        match provider.provide_credentials().await {
            Ok(credentials) => {
                let loaded = Loaded {
                    credentials: Arc::new(FunctionCredentials::new(
                        credentials.access_key_id(),
                        credentials.secret_access_key(),
                        credentials.session_token(),
                    )),
                    expiry: credentials.expiry(),
                    at: Instant::now(),
                };
                let current = Arc::clone(&loaded.credentials);
                *cached = Some(loaded);
                Some(current)
            }
            Err(error) => {
                tracing::warn!(event = "function_credentials_unavailable", cause = %error);
                None
            }
        }
    }
}

/// The access key a request's `Authorization` header names, if it parses.
pub fn access_key_of(headers: &HeaderMap) -> Option<&str> {
    Authorization::parse(single(headers, "authorization")?).map(|parsed| parsed.access_key_id)
}

/// Why a signature was refused (for the audit line; never the signature or a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No or unparsable `Authorization` header.
    #[error("missing or malformed Authorization header")]
    MalformedAuthorization,
    /// A required header is not signed.
    #[error("a required header is not signed")]
    UnsignedRequiredHeader,
    /// `X-Amz-Date` missing, malformed, or more than 5 minutes from now.
    #[error("X-Amz-Date is missing or outside the 5-minute window")]
    StaleDate,
    /// The access key is not the function's.
    #[error("the access key is not the function's")]
    WrongAccessKey,
    /// The credential scope names another date, region or service.
    #[error("the credential scope does not match")]
    WrongScope,
    /// The signature does not match.
    #[error("the signature does not match")]
    BadSignature,
}

/// The request to verify, as received.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// `POST`.
    pub method: &'a str,
    /// Path and query, as received.
    pub path_and_query: &'a str,
    /// Every header, as received.
    pub headers: &'a HeaderMap,
    /// The body bytes received.
    pub body: &'a [u8],
}

/// Verifies one request signed for `service` (`secretsmanager`, `ssm`) in `region`.
///
/// # Errors
/// The reason it is refused.
pub fn verify(
    request: Signed<'_>,
    credentials: &FunctionCredentials,
    region: &str,
    service: &str,
    now: SystemTime,
) -> Result<(), Refused> {
    let Signed { method, path_and_query, headers, body } = request;
    let authorization = single(headers, "authorization").ok_or(Refused::MalformedAuthorization)?;
    let parsed = Authorization::parse(authorization).ok_or(Refused::MalformedAuthorization)?;
    let mut required: Vec<&str> = REQUIRED.to_vec();
    if credentials.session_token.is_some() {
        required.push("x-amz-security-token");
    }
    if !required.iter().all(|name| parsed.signed_headers.contains(name)) {
        return Err(Refused::UnsignedRequiredHeader);
    }
    let date_text = single(headers, "x-amz-date").ok_or(Refused::StaleDate)?;
    let time = parse_amz_date(date_text).ok_or(Refused::StaleDate)?;
    let skew = now.duration_since(time).unwrap_or_else(|e| e.duration());
    if skew > MAX_SKEW {
        return Err(Refused::StaleDate);
    }
    if !constant_time_eq(parsed.access_key_id.as_bytes(), credentials.access_key_id.as_bytes()) {
        return Err(Refused::WrongAccessKey);
    }
    if parsed.date != &date_text[..8]
        || parsed.region != region
        || parsed.service != service
        || parsed.terminator != "aws4_request"
    {
        return Err(Refused::WrongScope);
    }

    // The headers to sign: exactly those the client listed, as received. The signer adds
    // x-amz-date (from `time`), x-amz-security-token (from our copy of the credentials) and
    // x-amz-content-sha256 (hashed from the body received) itself.
    let mut signed = Vec::new();
    for name in &parsed.signed_headers {
        if matches!(*name, "x-amz-date" | "x-amz-security-token" | "x-amz-content-sha256") {
            continue;
        }
        let value = single(headers, name).ok_or(Refused::BadSignature)?;
        signed.push((*name, value));
    }
    let host = single(headers, "host").ok_or(Refused::BadSignature)?;
    let uri = format!("http://{host}{path_and_query}");
    let request = SignableRequest::new(method, uri, signed.into_iter(), SignableBody::Bytes(body))
        .map_err(|_| Refused::BadSignature)?;
    let mut settings = SigningSettings::default();
    settings.excluded_headers = None;
    settings.signature_location = SignatureLocation::Headers;
    settings.session_token_mode = SessionTokenMode::Include;
    if parsed.signed_headers.contains(&"x-amz-content-sha256") {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.as_str().to_owned(),
        credentials.session_token.as_ref().map(|t| t.as_str().to_owned()),
        None,
        "function",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|_| Refused::BadSignature)?;
    let output = sign(request, &params.into()).map_err(|_| Refused::BadSignature)?;
    if constant_time_eq(output.signature().as_bytes(), parsed.signature.as_bytes()) {
        Ok(())
    } else {
        Err(Refused::BadSignature)
    }
}

fn single<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?.to_str().ok()?;
    values.next().is_none().then_some(value)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=hex`
/// Crate-visible for the `fuzzing` feature's entry point.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Authorization<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) date: &'a str,
    pub(crate) region: &'a str,
    pub(crate) service: &'a str,
    pub(crate) terminator: &'a str,
    pub(crate) signed_headers: Vec<&'a str>,
    pub(crate) signature: &'a str,
}

impl<'a> Authorization<'a> {
    pub(crate) fn parse(value: &'a str) -> Option<Self> {
        let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in rest.split(',').map(str::trim) {
            let (key, value) = part.split_once('=')?;
            let slot = match key {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed_headers,
                "Signature" => &mut signature,
                _ => return None,
            };
            if slot.replace(value).is_some() {
                return None;
            }
        }
        let scope: Vec<&str> = credential?.split('/').collect();
        let [access_key_id, date, region, service, terminator] = scope.as_slice() else { return None };
        let signed_headers: Vec<&str> = signed_headers?.split(';').collect();
        let signature = signature?;
        let well_formed = signature.len() == 64
            && signature.bytes().all(|b| b.is_ascii_hexdigit())
            && signed_headers
                .iter()
                .all(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        well_formed.then_some(Self { access_key_id, date, region, service, terminator, signed_headers, signature })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_headers_parse_strictly() {
        let signature = "a".repeat(64);
        let good = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261125/us-east-1/secretsmanager/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={signature}"
        );
        let parsed = Authorization::parse(&good).expect("parses");
        assert_eq!(parsed.access_key_id, "AKIDEXAMPLE");
        assert_eq!(parsed.region, "us-east-1");
        assert_eq!(parsed.signed_headers, ["content-type", "host", "x-amz-date", "x-amz-target"]);
        let bad = [
            String::new(),
            good.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"),
            good.replace(&signature, "zz"),
            good.replace("/aws4_request", ""),
            format!("{good}, Signature={signature}"),
            good.replace("SignedHeaders=content-type", "SignedHeaders=Content-Type"),
            good.replace(", Signature", ", Extra=1, Signature"),
        ];
        for text in bad {
            assert_eq!(Authorization::parse(&text), None, "{text}");
        }
    }

    fn signed(secret: &str, body: &[u8], time: SystemTime) -> (HeaderMap, FunctionCredentials) {
        // Sign as a client would, with aws-sigv4 itself.
        let client =
            aws_credential_types::Credentials::new("AKIDEXAMPLE", secret, Some("token-1".into()), None, "t").into();
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::Headers;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&client)
            .region("us-east-1")
            .name("secretsmanager")
            .time(time)
            .settings(settings)
            .build()
            .expect("params");
        let headers = [
            ("host", "127.0.0.1:2773"),
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "secretsmanager.GetSecretValue"),
        ];
        let request =
            SignableRequest::new("POST", "http://127.0.0.1:2773/", headers.iter().copied(), SignableBody::Bytes(body))
                .expect("request");
        let (instructions, _) = sign(request, &params.into()).expect("signed").into_parts();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(name, value.parse().expect("value"));
        }
        for (name, value) in instructions.headers() {
            map.insert(http::HeaderName::from_bytes(name.as_bytes()).expect("name"), value.parse().expect("value"));
        }
        (map, FunctionCredentials::new("AKIDEXAMPLE", "secret-1", Some("token-1")))
    }

    #[test]
    fn a_genuine_request_passes_and_every_forgery_is_refused() {
        let now = SystemTime::now();
        let body = br#"{"SecretId":"app/db"}"#;
        let (headers, credentials) = signed("secret-1", body, now);
        fn request<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Signed<'a> {
            Signed { method: "POST", path_and_query: "/", headers, body }
        }
        let check = |headers: &HeaderMap, body: &[u8], now: SystemTime| {
            verify(request(headers, body), &credentials, "us-east-1", "secretsmanager", now)
        };
        assert_eq!(check(&headers, body, now), Ok(()));
        assert_eq!(check(&headers, br#"{"SecretId":"app/api"}"#, now), Err(Refused::BadSignature), "tampered body");
        assert_eq!(check(&headers, body, now + Duration::from_secs(301)), Err(Refused::StaleDate), "replayed later");
        let (wrong_key, _) = signed("secret-2", body, now);
        assert_eq!(check(&wrong_key, body, now), Err(Refused::BadSignature), "wrong secret key");
        let mut other_target = headers.clone();
        other_target.insert("x-amz-target", "secretsmanager.PutSecretValue".parse().expect("value"));
        assert_eq!(check(&other_target, body, now), Err(Refused::BadSignature), "header changed after signing");
        let mut other_host = headers.clone();
        other_host.insert("host", "127.0.0.1:2774".parse().expect("value"));
        assert_eq!(check(&other_host, body, now), Err(Refused::BadSignature));
        let mut no_auth = headers.clone();
        no_auth.remove("authorization");
        assert_eq!(check(&no_auth, body, now), Err(Refused::MalformedAuthorization));
        let wrong_region = verify(request(&headers, body), &credentials, "eu-west-1", "secretsmanager", now);
        assert_eq!(wrong_region, Err(Refused::WrongScope));
        let other_service = verify(request(&headers, body), &credentials, "us-east-1", "ssm", now);
        assert_eq!(other_service, Err(Refused::WrongScope), "signed for Secrets Manager, presented as SSM");
        let other_function = FunctionCredentials::new("AKIDOTHER", "secret-1", Some("token-1"));
        assert_eq!(
            verify(request(&headers, body), &other_function, "us-east-1", "secretsmanager", now),
            Err(Refused::WrongAccessKey)
        );
        let other_token = FunctionCredentials::new("AKIDEXAMPLE", "secret-1", Some("token-2"));
        assert_eq!(
            verify(request(&headers, body), &other_token, "us-east-1", "secretsmanager", now),
            Err(Refused::BadSignature)
        );
    }
}
