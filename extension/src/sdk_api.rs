//! The Secrets Manager protocol on the local endpoint, for unchanged SDK code.
//!
//! Every current AWS SDK honours `AWS_ENDPOINT_URL_SECRETS_MANAGER`; pointed here, it sends
//! `POST /` with `X-Amz-Target: secretsmanager.<Operation>` and an `application/x-amz-json-1.1`
//! body, SigV4-signed with the function's own credentials. This module verifies the signature
//! ([`crate::sigv4`]), serves `GetSecretValue` and `BatchGetSecretValue` through the same read
//! path as the GET API ([`LocalApi::read`]), and answers errors the way the SDKs understand
//! them: HTTP 400 with `{"__type": CODE, "message": …}` (the code must be in the body), or a
//! 500 `InternalServiceError` where an SDK retry is the right outcome.
//! See <https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_GetSecretValue.html>.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::secrets::{FetchError, SecretValue, Version};
use crate::server::{Api, LocalApi, ReadError};

/// Largest request body accepted (a batch of 20 ARNs is about 2 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time allowed for the whole request body to arrive once the head has (the local API's header
/// timeout): a client that declares a body and never sends it must not hold a connection slot.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// `BatchGetSecretValue` takes at most this many ids, as in AWS.
const MAX_BATCH: usize = 20;

/// An SDK-shaped refusal.
struct SdkError {
    status: StatusCode,
    kind: &'static str,
    message: &'static str,
    /// The stable code for the audit line.
    code: &'static str,
}

const fn sdk_error(status: StatusCode, kind: &'static str, code: &'static str, message: &'static str) -> SdkError {
    SdkError { status, kind, message, code }
}

/// Why nothing is served during a SnapStart INIT (both faces of the API say the same).
pub const SNAPSTART_INIT_MESSAGE: &str = "SnapStart: no secret is fetched before the snapshot is restored; \
     read secrets in the handler, not during INIT.";

const NOT_ALLOWED: SdkError = sdk_error(
    StatusCode::BAD_REQUEST,
    "AccessDeniedException",
    "secret_not_allowed",
    "The secret is not in this function's allowlist.",
);

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct GetSecretValueInput {
    secret_id: String,
    version_id: Option<String>,
    version_stage: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct BatchGetSecretValueInput {
    secret_id_list: Option<Vec<String>>,
    filters: Option<Value>,
    max_results: Option<u32>,
    next_token: Option<String>,
}

/// Answers one `POST /`.
pub async fn handle(api: &LocalApi, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match answer(api, request).await {
        Ok(response) => response,
        Err((error, secret_id)) => {
            api.audit_deny(Api::Sdk, None, secret_id.as_deref(), error.code, error.status.as_u16()).await;
            error_response(&error)
        }
    }
}

async fn answer(
    api: &LocalApi,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, (SdkError, Option<String>)> {
    let bad = |code, message| (sdk_error(StatusCode::BAD_REQUEST, "InvalidRequestException", code, message), None);
    let denied = |code, message| (sdk_error(StatusCode::BAD_REQUEST, "AccessDeniedException", code, message), None);
    let (parts, body) = request.into_parts();
    if parts.headers.contains_key("x-forwarded-for") || parts.headers.contains_key(header::FORWARDED) {
        return Err(denied("forwarded_request", "Proxied requests are refused."));
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        return Err(bad("absolute_target", "Use an origin-form request target."));
    }
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(bad("body_too_large", "The request body is too large."));
    }
    let body = read_body(body).await.map_err(|code| match code {
        "body_timeout" => bad(code, "The request body did not arrive in time."),
        _ => bad(code, "The request body is too large or was not received whole."),
    })?;
    // SnapStart: before restore nothing credential-bearing is loaded, not even the function's
    // credentials to check the signature with.
    if let Err(error) = api.lifecycle.wait_past_snapshot().await {
        let refused = match error {
            FetchError::SnapStartInit => sdk_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
                "snapstart_init",
                SNAPSTART_INIT_MESSAGE,
            ),
            other => read_error(&ReadError::Fetch(other)),
        };
        return Err((refused, None));
    }
    let access_key = crate::sigv4::access_key_of(&parts.headers).map(str::to_owned);
    let Some(credentials) = api.function_credentials.current(access_key.as_deref()).await else {
        return Err(denied(
            "no_function_credentials",
            "The extension has no function credentials to verify signatures with.",
        ));
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Err(refused) = crate::sigv4::verify(
        parts.method.as_str(),
        path_and_query,
        &parts.headers,
        &body,
        &credentials,
        &api.region,
        SystemTime::now(),
    ) {
        tracing::debug!(event = "signature_refused", cause = %refused);
        let code = match refused {
            crate::sigv4::Refused::StaleDate => "signature_stale",
            crate::sigv4::Refused::WrongAccessKey | crate::sigv4::Refused::WrongScope => "signature_wrong_credentials",
            crate::sigv4::Refused::MalformedAuthorization | crate::sigv4::Refused::UnsignedRequiredHeader => {
                "signature_malformed"
            }
            crate::sigv4::Refused::BadSignature => "signature_mismatch",
        };
        return Err(denied(code, "The request signature does not verify with the function's credentials."));
    }
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.starts_with("application/x-amz-json-1.") {
        return Err(bad("unsupported_content_type", "Use Content-Type application/x-amz-json-1.1."));
    }
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
    match target {
        "secretsmanager.GetSecretValue" => get_secret_value(api, &body).await,
        "secretsmanager.BatchGetSecretValue" => batch_get_secret_value(api, &body).await,
        _ => Err(bad(
            "unsupported_operation",
            "The local endpoint serves only GetSecretValue and BatchGetSecretValue; nothing else reaches AWS.",
        )),
    }
}

/// The whole body, at most [`MAX_BODY_BYTES`], within [`BODY_TIMEOUT`]; else the audit code.
async fn read_body<B>(body: B) -> Result<Zeroizing<Vec<u8>>, &'static str>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Ok(collected) = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect()).await else {
        return Err("body_timeout");
    };
    let Ok(body) = collected else { return Err("body_too_large") };
    // Request bodies name secrets, not values, but are wiped anyway.
    Ok(Zeroizing::new(body.to_bytes().to_vec()))
}

async fn get_secret_value(api: &LocalApi, body: &[u8]) -> Result<Response<Full<Bytes>>, (SdkError, Option<String>)> {
    let Ok(input) = serde_json::from_slice::<GetSecretValueInput>(body) else {
        let error = sdk_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterException",
            "invalid_parameter",
            "The request body is not a valid GetSecretValue input.",
        );
        return Err((error, None));
    };
    let version = version_of(input.version_id, input.version_stage).map_err(|e| (e, Some(input.secret_id.clone())))?;
    let value = api
        .read(&input.secret_id, version, false, Api::Sdk, None)
        .await
        .map_err(|e| (read_error(&e), Some(input.secret_id.clone())))?;
    Ok(json_response(StatusCode::OK, value.json_body()))
}

async fn batch_get_secret_value(
    api: &LocalApi,
    body: &[u8],
) -> Result<Response<Full<Bytes>>, (SdkError, Option<String>)> {
    let invalid =
        |message| (sdk_error(StatusCode::BAD_REQUEST, "InvalidParameterException", "invalid_parameter", message), None);
    let Ok(input) = serde_json::from_slice::<BatchGetSecretValueInput>(body) else {
        return Err(invalid("The request body is not a valid BatchGetSecretValue input."));
    };
    if input.filters.is_some() || input.next_token.is_some() || input.max_results.is_some() {
        return Err(invalid("The local endpoint takes SecretIdList only (no Filters, MaxResults or NextToken)."));
    }
    let ids = input.secret_id_list.unwrap_or_default();
    if ids.is_empty() || ids.len() > MAX_BATCH {
        return Err(invalid("SecretIdList must hold 1 to 20 ids."));
    }
    // Each id through the shared read path, concurrently; refusals become Errors[] entries,
    // as AWS reports them inside a 200.
    let reads = ids.iter().map(|id| api.read(id, Version::Current, false, Api::Sdk, None));
    let results = crate::secrets::join_all(reads.collect()).await;
    let mut values: Vec<Arc<SecretValue>> = Vec::new();
    let mut errors = Vec::new();
    for (id, result) in ids.iter().zip(results) {
        match result {
            Ok(value) => values.push(value),
            Err(error) => {
                let sdk = read_error(&error);
                api.audit_deny(Api::Sdk, None, Some(id), sdk.code, sdk.status.as_u16()).await;
                errors.push(json!({ "SecretId": id, "ErrorCode": sdk.kind, "Message": sdk.message }));
            }
        }
    }
    // {"SecretValues":[…],"Errors":[…]} assembled in a zeroizing buffer from each value's own.
    let errors = serde_json::to_vec(&errors).unwrap_or_else(|_| b"[]".to_vec());
    let parts: Vec<Zeroizing<Vec<u8>>> = values.iter().map(|v| v.to_json()).collect();
    let size = parts.iter().map(|p| p.len() + 1).sum::<usize>() + errors.len() + 40;
    let mut buffer = Zeroizing::new(Vec::with_capacity(size));
    buffer.extend_from_slice(b"{\"SecretValues\":[");
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            buffer.push(b',');
        }
        buffer.extend_from_slice(part);
    }
    buffer.extend_from_slice(b"],\"Errors\":");
    buffer.extend_from_slice(&errors);
    buffer.push(b'}');
    Ok(json_response(StatusCode::OK, Bytes::from_owner(buffer)))
}

fn version_of(id: Option<String>, stage: Option<String>) -> Result<Version, SdkError> {
    let invalid =
        |message| sdk_error(StatusCode::BAD_REQUEST, "InvalidParameterException", "invalid_parameter", message);
    let well_formed = |text: &str, max: usize| {
        (1..=max).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    };
    match (id, stage) {
        (Some(id), _) if !well_formed(&id, 64) => Err(invalid("VersionId is not a valid version id.")),
        (_, Some(stage)) if !well_formed(&stage, 256) => Err(invalid("VersionStage is not a valid staging label.")),
        // AWS accepts both when they name the same version; we fetch by id and let AWS check.
        (Some(id), _) => Ok(Version::Id(id)),
        (None, Some(stage)) if stage == "AWSCURRENT" => Ok(Version::Current),
        (None, Some(stage)) => Ok(Version::Stage(stage)),
        (None, None) => Ok(Version::Current),
    }
}

/// The one mapping from read failures to SDK errors.
fn read_error(error: &ReadError) -> SdkError {
    use StatusCode as S;
    let retry = |code| {
        sdk_error(
            S::INTERNAL_SERVER_ERROR,
            "InternalServiceError",
            code,
            "The extension could not complete the read; retry.",
        )
    };
    match error {
        ReadError::NotAllowed => NOT_ALLOWED,
        ReadError::Fetch(fetch) => {
            let local = crate::server::error_for(fetch).code;
            match fetch {
                FetchError::NotFound => sdk_error(
                    S::BAD_REQUEST,
                    "ResourceNotFoundException",
                    local,
                    "Secrets Manager can't find the specified secret.",
                ),
                FetchError::AccessDenied { .. } => sdk_error(
                    S::BAD_REQUEST,
                    "AccessDeniedException",
                    local,
                    "AWS refused the read with the scoped session.",
                ),
                FetchError::InvalidRequest { .. } => {
                    sdk_error(S::BAD_REQUEST, "InvalidRequestException", local, "Secrets Manager rejected the request.")
                }
                FetchError::Throttled => {
                    sdk_error(S::BAD_REQUEST, "ThrottlingException", local, "Rate exceeded; retry.")
                }
                _ => retry(local),
            }
        }
    }
}

fn error_response(error: &SdkError) -> Response<Full<Bytes>> {
    let body = json!({ "__type": error.kind, "message": error.message }).to_string();
    let mut response = json_response(error.status, Bytes::from(body));
    if let Ok(value) = HeaderValue::from_str(error.kind) {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}

/// The content type of the Secrets Manager JSON protocol.
const AMZ_JSON: &str = "application/x-amz-json-1.1";

fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    crate::server::json_response(status, body, AMZ_JSON)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body whose bytes never come.
    struct Never;

    impl Body for Never {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_is_bounded_in_size_and_in_time() {
        let small = read_body(Full::new(Bytes::from_static(b"{}"))).await.map(|b| b.to_vec());
        assert_eq!(small, Ok(b"{}".to_vec()));
        let large = read_body(Full::new(Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]))).await.map(|b| b.to_vec());
        assert_eq!(large, Err("body_too_large"));
        let started = tokio::time::Instant::now();
        assert_eq!(read_body(Never).await.map(|b| b.to_vec()), Err("body_timeout"));
        assert_eq!(started.elapsed(), BODY_TIMEOUT);
    }

    #[test]
    fn versions_map_like_aws_and_malformed_ones_are_refused() {
        assert_eq!(version_of(None, None).ok(), Some(Version::Current));
        assert_eq!(version_of(None, Some("AWSCURRENT".into())).ok(), Some(Version::Current));
        assert_eq!(version_of(None, Some("AWSPREVIOUS".into())).ok(), Some(Version::Stage("AWSPREVIOUS".into())));
        assert_eq!(version_of(Some("a-1".into()), None).ok(), Some(Version::Id("a-1".into())));
        assert!(version_of(Some("a/b".into()), None).is_err());
        assert!(version_of(None, Some(String::new())).is_err());
    }

    #[test]
    fn every_read_failure_has_an_sdk_error_type() {
        let cases = [
            (ReadError::NotAllowed, "AccessDeniedException", 400),
            (ReadError::Fetch(FetchError::NotFound), "ResourceNotFoundException", 400),
            (ReadError::Fetch(FetchError::AccessDenied { code: "x".into() }), "AccessDeniedException", 400),
            (ReadError::Fetch(FetchError::Throttled), "ThrottlingException", 400),
            (ReadError::Fetch(FetchError::UpstreamTimeout), "InternalServiceError", 500),
            (ReadError::Fetch(FetchError::NoActiveInvocation), "InternalServiceError", 500),
        ];
        for (error, kind, status) in cases {
            let sdk = read_error(&error);
            assert_eq!((sdk.kind, sdk.status.as_u16()), (kind, status), "{error:?}");
        }
    }
}
