//! The AWS JSON protocols on the local endpoint, for unchanged SDK code: Secrets Manager's, and
//! (in [`super::ssm`]) Systems Manager's.
//!
//! Every current AWS SDK honours `AWS_ENDPOINT_URL_SECRETS_MANAGER` and `AWS_ENDPOINT_URL_SSM`;
//! pointed here, it sends `POST /` with `X-Amz-Target: secretsmanager.<Operation>` (or
//! `AmazonSSM.<Operation>`) and an `application/x-amz-json-1.1` body, SigV4-signed with the
//! function's own credentials for that service. This module verifies the signature
//! ([`crate::sigv4`]), serves `GetSecretValue` and `BatchGetSecretValue` (and hands
//! `GetParameter` and `GetParameters` to [`super::ssm`]) through the same [`ReadPath`] as the
//! GET API, and answers errors the way the SDKs understand them: HTTP 400 with
//! `{"__type": TYPE, "message": …}` (the type must be in the body), or a 5xx where an SDK retry
//! is the right outcome; [`sdk_form`] (and [`super::ssm::ssm_form`]) give each code its status
//! and type.
//! See <https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_GetSecretValue.html>.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::envelope::{AMZ_JSON, Headers, Refusal, Refused, refuse_absolute_target};
use super::read::{Read, ReadPath};
use super::ssm;
use crate::domain::api::Api;
use crate::domain::code::Code;
use crate::domain::version::{self, Version};
use crate::http::json_response;
use crate::secrets::value::SecretValue;
use crate::sigv4::{self, CredentialSource};

/// Largest request body accepted (a batch of 20 ARNs is about 2 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time allowed for the whole request body to arrive once the head has (the local API's header
/// timeout): a client that declares a body and never sends it must not hold a connection slot.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// `BatchGetSecretValue` takes at most this many ids, as in AWS.
const MAX_BATCH: usize = 20;

/// Which AWS JSON protocol a request speaks, from its `X-Amz-Target`: it decides the service
/// the signature must be for, and the wire form of every refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `secretsmanager.<Operation>` (and anything unknown).
    SecretsManager,
    /// `AmazonSSM.<Operation>`.
    Ssm,
}

impl Protocol {
    /// The protocol `headers` name.
    pub fn of(headers: &http::HeaderMap) -> Self {
        let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if target.starts_with("AmazonSSM.") { Protocol::Ssm } else { Protocol::SecretsManager }
    }

    /// The SigV4 signing name.
    pub fn service(self) -> &'static str {
        match self {
            Protocol::SecretsManager => "secretsmanager",
            Protocol::Ssm => "ssm",
        }
    }

    /// Each code's status and error type in this protocol.
    pub fn form(self, code: Code) -> (StatusCode, &'static str) {
        match self {
            Protocol::SecretsManager => sdk_form(code),
            Protocol::Ssm => ssm::ssm_form(code),
        }
    }
}

/// What signatures are verified against: the function's own credentials and region.
#[derive(Debug)]
pub struct Signatures {
    /// The function's credentials (Lambda gives the extension the same ones).
    pub credentials: CredentialSource,
    /// The function's region (the signature's credential scope).
    pub region: String,
}

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
pub async fn handle<B>(reader: &ReadPath, signatures: &Signatures, request: Request<B>) -> Response<Full<Bytes>>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    handle_at(reader, signatures, request, SystemTime::now()).await
}

/// [`handle`] with the clock `X-Amz-Date` is judged against given (the fuzz targets fix it).
pub(crate) async fn handle_at<B>(
    reader: &ReadPath,
    signatures: &Signatures,
    request: Request<B>,
    now: SystemTime,
) -> Response<Full<Bytes>>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let protocol = Protocol::of(request.headers());
    match answer(reader, signatures, protocol, request, now).await {
        Ok(response) => response,
        Err((refusal, id)) => {
            let status = protocol.form(refusal.code).0.as_u16();
            match protocol {
                Protocol::SecretsManager => {
                    reader.audit_deny(Api::Sdk, None, id.as_deref(), refusal.code, status).await
                }
                Protocol::Ssm => reader.audit_parameter_deny(Api::Sdk, None, id.as_deref(), refusal.code, status).await,
            }
            error_response(protocol, refusal)
        }
    }
}

async fn answer<B>(
    reader: &ReadPath,
    signatures: &Signatures,
    protocol: Protocol,
    request: Request<B>,
    now: SystemTime,
) -> Result<Response<Full<Bytes>>, Refused>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let refused = |refusal: Refusal| (refusal, None);
    let (parts, body) = request.into_parts();
    // No token header in this protocol: the signature stands for it.
    let seen = Headers::scan(&parts.headers, "");
    seen.refuse_forwarded().map_err(refused)?;
    refuse_absolute_target(&parts.uri).map_err(refused)?;
    seen.check_host(parts.version).map_err(refused)?;
    let declared = seen.content_length.and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(refused(Refusal::with(Code::BodyTooLarge, "The request body is too large.")));
    }
    let body = read_body(body).await.map_err(|code| refused(Refusal::of(code)))?;
    // The request's waits (the restore, the tenant, an invocation, a session) share one
    // deadline from here: the body's own time is bounded by BODY_TIMEOUT.
    let deadline = reader.deadline();
    // SnapStart: before restore nothing credential-bearing is loaded, not even the function's
    // credentials to check the signature with.
    reader.invocations.wait_past_snapshot(deadline).await.map_err(|error| refused(Refusal::of(error.code())))?;
    let access_key = sigv4::access_key_of(&parts.headers).map(str::to_owned);
    let Some(credentials) = signatures.credentials.current(access_key.as_deref()).await else {
        return Err(refused(Refusal::of(Code::NoFunctionCredentials)));
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let signed = sigv4::Signed { method: parts.method.as_str(), path_and_query, headers: &parts.headers, body: &body };
    let verified = sigv4::verify(signed, &credentials, &signatures.region, protocol.service(), now);
    if let Err(why) = verified {
        tracing::debug!(event = "signature_refused", cause = %why);
        let code = match why {
            sigv4::Refused::StaleDate => Code::SignatureStale,
            sigv4::Refused::WrongAccessKey | sigv4::Refused::WrongScope => Code::SignatureWrongCredentials,
            sigv4::Refused::MalformedAuthorization | sigv4::Refused::UnsignedRequiredHeader => Code::SignatureMalformed,
            sigv4::Refused::BadSignature => Code::SignatureMismatch,
        };
        return Err(refused(Refusal::of(code)));
    }
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.starts_with("application/x-amz-json-1.") {
        return Err(refused(Refusal::of(Code::UnsupportedContentType)));
    }
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
    match target {
        "secretsmanager.GetSecretValue" => get_secret_value(reader, &body, deadline).await,
        "secretsmanager.BatchGetSecretValue" => batch_get_secret_value(reader, &body, deadline).await,
        "AmazonSSM.GetParameter" => ssm::get_parameter(reader, &body, deadline).await,
        "AmazonSSM.GetParameters" => ssm::get_parameters(reader, &body, deadline).await,
        _ => Err(refused(Refusal::of(Code::UnsupportedOperation))),
    }
}

/// The whole body, at most [`MAX_BODY_BYTES`], within [`BODY_TIMEOUT`]; else the code.
async fn read_body<B>(body: B) -> Result<Zeroizing<Vec<u8>>, Code>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Ok(collected) = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect()).await else {
        return Err(Code::BodyTimeout);
    };
    let Ok(body) = collected else { return Err(Code::BodyTooLarge) };
    // Request bodies name secrets, not values, but are wiped anyway.
    Ok(Zeroizing::new(body.to_bytes().to_vec()))
}

async fn get_secret_value(reader: &ReadPath, body: &[u8], deadline: Instant) -> Result<Response<Full<Bytes>>, Refused> {
    let Ok(input) = serde_json::from_slice::<GetSecretValueInput>(body) else {
        let refusal = Refusal::with(Code::InvalidParameter, "The request body is not a valid GetSecretValue input.");
        return Err((refusal, None));
    };
    let (version, stage_of_id) =
        version_of(input.version_id, input.version_stage).map_err(|e| (e, Some(input.secret_id.clone())))?;
    let read = Read {
        secret_id: &input.secret_id,
        api: Api::Sdk,
        refresh: false,
        caller: None,
        stage_of_id: stage_of_id.as_deref(),
    };
    let value = reader
        .read(read, version, deadline)
        .await
        .map_err(|e| (Refusal::of(e.code()), Some(input.secret_id.clone())))?;
    Ok(json_response(StatusCode::OK, value.json_body(), &AMZ_JSON))
}

async fn batch_get_secret_value(
    reader: &ReadPath,
    body: &[u8],
    deadline: Instant,
) -> Result<Response<Full<Bytes>>, Refused> {
    let invalid = |message| (Refusal::with(Code::InvalidParameter, message), None);
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
    let reads = ids.iter().map(|id| {
        let read = Read { secret_id: id, api: Api::Sdk, refresh: false, caller: None, stage_of_id: None };
        reader.read(read, Version::Current, deadline)
    });
    let results = futures_util::future::join_all(reads).await;
    let mut values: Vec<Arc<SecretValue>> = Vec::new();
    let mut errors = Vec::new();
    for (id, result) in ids.iter().zip(results) {
        match result {
            Ok(value) => values.push(value),
            Err(error) => {
                let code = error.code();
                let (status, kind) = sdk_form(code);
                reader.audit_deny(Api::Sdk, None, Some(id), code, status.as_u16()).await;
                errors.push(serde_json::json!({ "SecretId": id, "ErrorCode": kind, "Message": code.message() }));
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
    Ok(json_response(StatusCode::OK, Bytes::from_owner(buffer), &AMZ_JSON))
}

/// The version asked for, and the staging label it must carry when both were given.
fn version_of(id: Option<String>, stage: Option<String>) -> Result<(Version, Option<String>), Refusal> {
    match (id, stage) {
        (Some(id), _) if !version::is_version_id(&id) => {
            Err(Refusal::with(Code::InvalidParameter, "VersionId is not a valid version id."))
        }
        (_, Some(stage)) if !version::is_stage(&stage) => {
            Err(Refusal::with(Code::InvalidParameter, "VersionStage is not a valid staging label."))
        }
        // AWS accepts both only when they name the same version (else InvalidRequestException):
        // fetched by id, and the answer's labels must include the stage.
        (Some(id), stage) => Ok((Version::Id(id), stage)),
        (None, Some(stage)) => Ok((Version::stage(stage), None)),
        (None, None) => Ok((Version::Current, None)),
    }
}

/// Each code's status and AWS error type on the SDK protocol (one `match`: every code has
/// one). Refusals an SDK must not retry are 400s with the type AWS itself would send; failures
/// a retry may cure are 5xx (the SDKs retry them three times).
pub fn sdk_form(code: Code) -> (StatusCode, &'static str) {
    use StatusCode as S;
    match code {
        Code::ForwardedRequest
        | Code::InvalidHost
        | Code::MissingToken
        | Code::InvalidToken
        | Code::NoFunctionCredentials
        | Code::SignatureStale
        | Code::SignatureWrongCredentials
        | Code::SignatureMalformed
        | Code::SignatureMismatch
        | Code::SecretNotAllowed
        | Code::ParameterNotAllowed
        | Code::UpstreamAccessDenied => (S::BAD_REQUEST, "AccessDeniedException"),
        Code::SecretNotFound | Code::ParameterNotFound | Code::ParameterVersionNotFound => {
            (S::BAD_REQUEST, "ResourceNotFoundException")
        }
        Code::UpstreamThrottled => (S::BAD_REQUEST, "ThrottlingException"),
        Code::InvalidParameter
        | Code::InvalidQuery
        | Code::UnknownParameter
        | Code::DuplicateParameter
        | Code::InvalidRefreshNow
        | Code::MissingSecretId
        | Code::InvalidSecretId
        | Code::ConflictingVersion
        | Code::InvalidVersionStage
        | Code::InvalidVersionId
        | Code::InvalidRequestId
        | Code::InvalidJsonKey
        | Code::MissingName
        | Code::InvalidName
        | Code::InvalidParameterVersion
        | Code::InvalidLabel
        | Code::InvalidWithDecryption
        | Code::InvalidReference
        | Code::SecretNotJsonObject
        | Code::JsonKeyNotFound
        | Code::RequestIdNotLive => (S::BAD_REQUEST, "InvalidParameterException"),
        Code::MethodNotAllowed
        | Code::BodyNotAllowed
        | Code::AbsoluteTarget
        | Code::TargetTooLong
        | Code::NotFound
        | Code::BodyTooLarge
        | Code::BodyTimeout
        | Code::UnsupportedContentType
        | Code::UnsupportedOperation
        | Code::InvalidRequest
        | Code::VersionStageMismatch => (S::BAD_REQUEST, "InvalidRequestException"),
        Code::SnapstartInit => (S::SERVICE_UNAVAILABLE, "ServiceUnavailableException"),
        Code::UpstreamTimeout
        | Code::UpstreamError
        | Code::SessionTimeout
        | Code::SessionThrottled
        | Code::SessionRefused
        | Code::SessionFailed
        | Code::NoActiveInvocation
        | Code::SessionWaitTimeout
        | Code::InvocationEnded
        | Code::ShuttingDown
        | Code::TenantUnknown
        | Code::TenantRefused
        | Code::TenantChanged => (S::INTERNAL_SERVER_ERROR, "InternalServiceError"),
    }
}

fn error_response(protocol: Protocol, refusal: Refusal) -> Response<Full<Bytes>> {
    let (status, kind) = protocol.form(refusal.code);

    let body = serde_json::json!({ "__type": kind, "message": refusal.message }).to_string();
    let mut response = json_response(status, Bytes::from(body), &AMZ_JSON);
    response.headers_mut().insert("x-amzn-errortype", HeaderValue::from_static(kind));
    response
}

#[cfg(test)]
mod tests;
