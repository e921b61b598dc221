//! The Systems Manager protocol on the local endpoint, for unchanged SDK code: with
//! `AWS_ENDPOINT_URL_SSM=http://127.0.0.1:2773`, an SDK's `GetParameter` and `GetParameters`
//! (`X-Amz-Target: AmazonSSM.<Operation>`, SigV4 for `ssm`, verified in [`super::sdk`]) read
//! through the same [`ReadPath`] as everything else, and errors come back as Parameter Store's
//! own types ([`ssm_form`]), so code that catches `ParameterNotFound` keeps working.
//!
//! A name may carry its version or label (`/app/db:3`, `/app/db:prod`), and
//! `/aws/reference/secretsmanager/ID` reads the secret `ID` through the secrets allowlist, as
//! Parameter Store does (with `WithDecryption`, else `ValidationException`).
//! `GetParameters` answers `Parameters` and `InvalidParameters` (names that do not exist) as
//! Parameter Store does, and, as Parameter Store does for a caller that may not read one of
//! the names, refuses the whole call when one is not allowlisted, before anything is asked of AWS.
//! See <https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_GetParameters.html>.

use std::sync::Arc;

use tokio::time::Instant;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::envelope::{AMZ_JSON, Refusal, Refused};
use super::parameters::{Target, read};
use super::read::ReadPath;
use crate::domain::api::Api;
use crate::domain::code::Code;
use crate::http::json_response;
use crate::secrets::parameter::ParameterValue;

/// `GetParameters` takes 1 to 10 names, as in AWS.
const MAX_NAMES: usize = 10;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct GetParameterInput {
    name: String,
    with_decryption: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct GetParametersInput {
    names: Vec<String>,
    with_decryption: Option<bool>,
}

/// `AmazonSSM.GetParameter`.
pub(super) async fn get_parameter(
    reader: &ReadPath,
    body: &[u8],
    deadline: Instant,
) -> Result<Response<Full<Bytes>>, Refused> {
    let Ok(input) = serde_json::from_slice::<GetParameterInput>(body) else {
        let refusal = Refusal::with(Code::InvalidParameter, "The request body is not a valid GetParameter input.");
        return Err((refusal, None));
    };
    let decrypt = input.with_decryption.unwrap_or(false);
    let value = read(reader, Api::Sdk, None, &input.name, None, decrypt, deadline)
        .await
        .map_err(|refusal| (refusal, Some(input.name)))?;
    Ok(json_response(StatusCode::OK, Bytes::from_owner(value.sdk_body()), &AMZ_JSON))
}

/// `AmazonSSM.GetParameters`: every name allowlisted or the whole call refused; then each read
/// concurrently, the missing ones in `InvalidParameters`.
pub(super) async fn get_parameters(
    reader: &ReadPath,
    body: &[u8],
    deadline: Instant,
) -> Result<Response<Full<Bytes>>, Refused> {
    let invalid = |message| (Refusal::with(Code::InvalidParameter, message), None);
    let Ok(input) = serde_json::from_slice::<GetParametersInput>(body) else {
        return Err(invalid("The request body is not a valid GetParameters input."));
    };
    if input.names.is_empty() || input.names.len() > MAX_NAMES {
        return Err(invalid("Names must hold 1 to 10 names."));
    }
    let decrypt = input.with_decryption.unwrap_or(false);
    // Nothing is asked of AWS unless every name may be read.
    let mut refused: Vec<(Refusal, &String)> = Vec::new();
    for name in &input.names {
        let checked: Result<(), Refusal> = match Target::of(name) {
            Ok(Target::Reference(_)) if !decrypt => Err(Refusal::of(Code::InvalidReference)),
            Ok(target) => {
                let (kind, id) = target.allowlisted_as();
                reader.check(kind, id, deadline).await.map_err(|e| Refusal::of(e.code()))
            }
            Err(refusal) => Err(refusal),
        };
        if let Err(refusal) = checked {
            refused.push((refusal, name));
        }
    }
    let mut refusals = refused.into_iter();
    if let Some((first, name)) = refusals.next() {
        for (refusal, other) in refusals {
            let status = ssm_form(refusal.code).0.as_u16();
            reader.audit_parameter_deny(Api::Sdk, None, Some(other), refusal.code, status).await;
        }
        return Err((first, Some(name.clone())));
    }
    let reads = input.names.iter().map(|name| read(reader, Api::Sdk, None, name, None, decrypt, deadline));
    let results = futures_util::future::join_all(reads).await;
    let mut values: Vec<Arc<ParameterValue>> = Vec::new();
    let mut missing: Vec<&str> = Vec::new();
    let mut failed: Option<Refused> = None;
    for (name, result) in input.names.iter().zip(results) {
        match result {
            Ok(value) => values.push(value),
            Err(refusal) => {
                let not_found = matches!(
                    refusal.code,
                    Code::ParameterNotFound | Code::ParameterVersionNotFound | Code::SecretNotFound
                );
                if not_found {
                    missing.push(name);
                }
                if not_found || failed.is_some() {
                    let status = ssm_form(refusal.code).0.as_u16();
                    reader.audit_parameter_deny(Api::Sdk, None, Some(name), refusal.code, status).await;
                } else {
                    failed = Some((refusal, Some(name.clone())));
                }
            }
        }
    }
    if let Some(failed) = failed {
        return Err(failed);
    }
    // {"InvalidParameters":[…],"Parameters":[…]} in a zeroizing buffer, from each value's own.
    let missing = serde_json::to_vec(&missing).unwrap_or_else(|_| b"[]".to_vec());
    let size = values.iter().map(|v| v.sdk_object().len() + 1).sum::<usize>() + missing.len() + 40;
    let mut buffer = Zeroizing::new(Vec::with_capacity(size));
    buffer.extend_from_slice(b"{\"InvalidParameters\":");
    buffer.extend_from_slice(&missing);
    buffer.extend_from_slice(b",\"Parameters\":[");
    for (index, value) in values.iter().enumerate() {
        if index > 0 {
            buffer.push(b',');
        }
        buffer.extend_from_slice(value.sdk_object());
    }
    buffer.extend_from_slice(b"]}");
    Ok(json_response(StatusCode::OK, Bytes::from_owner(buffer), &AMZ_JSON))
}

/// Each code's status and error type on the Systems Manager protocol (one `match`: every code
/// has one). As on the Secrets Manager protocol, refusals an SDK must not retry are 400s with the
/// type Parameter Store itself would send (`ParameterNotFound`, `ParameterVersionNotFound`,
/// `ValidationException`, `AccessDeniedException`), and failures a retry may cure are 5xx.
pub fn ssm_form(code: Code) -> (StatusCode, &'static str) {
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
        Code::ParameterNotFound | Code::SecretNotFound => (S::BAD_REQUEST, "ParameterNotFound"),
        Code::ParameterVersionNotFound => (S::BAD_REQUEST, "ParameterVersionNotFound"),
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
        | Code::RequestIdNotLive
        | Code::InvalidJsonKey
        | Code::MissingName
        | Code::InvalidName
        | Code::InvalidParameterVersion
        | Code::InvalidLabel
        | Code::InvalidWithDecryption
        | Code::InvalidReference
        | Code::VersionStageMismatch
        | Code::SecretNotJsonObject
        | Code::JsonKeyNotFound
        | Code::MethodNotAllowed
        | Code::BodyNotAllowed
        | Code::AbsoluteTarget
        | Code::TargetTooLong
        | Code::NotFound
        | Code::BodyTooLarge
        | Code::BodyTimeout
        | Code::UnsupportedContentType
        | Code::UnsupportedOperation
        | Code::InvalidRequest => (S::BAD_REQUEST, "ValidationException"),
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
        | Code::TenantChanged => (S::INTERNAL_SERVER_ERROR, "InternalServerError"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_parameter_store_form() {
        let cases = [
            (Code::ParameterNotAllowed, 400, "AccessDeniedException"),
            (Code::ParameterNotFound, 400, "ParameterNotFound"),
            (Code::ParameterVersionNotFound, 400, "ParameterVersionNotFound"),
            (Code::InvalidReference, 400, "ValidationException"),
            (Code::UnsupportedOperation, 400, "ValidationException"),
            (Code::UpstreamThrottled, 400, "ThrottlingException"),
            (Code::SessionFailed, 500, "InternalServerError"),
            (Code::SnapstartInit, 503, "ServiceUnavailableException"),
        ];
        for (code, status, kind) in cases {
            assert_eq!(ssm_form(code), (StatusCode::from_u16(status).expect("status"), kind), "{code:?}");
        }
        for &code in Code::ALL {
            let (status, kind) = ssm_form(code);
            assert!(status.is_client_error() || status.is_server_error(), "{code:?}");
            assert!(!kind.is_empty());
        }
    }
}
