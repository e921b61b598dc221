//! How the extension reads an AWS SDK error: one [`ReadError`] per AWS error code, for
//! Secrets Manager and Parameter Store alike (both SDKs share the error type), never carrying
//! more than the code.

use std::fmt;

use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

use crate::domain::error::ReadError;

/// The [`ReadError`] an SDK call's failure stands for.
pub(super) fn classify<E: ProvideErrorMetadata + fmt::Debug, R: fmt::Debug>(error: &SdkError<E, R>) -> ReadError {
    match error {
        SdkError::TimeoutError(_) => ReadError::UpstreamTimeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => ReadError::UpstreamTimeout,
        SdkError::DispatchFailure(_) => ReadError::Upstream { kind: "connection failed".into() },
        SdkError::ServiceError(service) => {
            let mut code = service.err().code().unwrap_or("Unknown").to_owned();
            code.retain(|c| c.is_ascii_alphanumeric());
            match code.as_str() {
                "ResourceNotFoundException" => ReadError::NotFound,
                "ParameterNotFound" => ReadError::ParameterNotFound,
                "ParameterVersionNotFound" => ReadError::ParameterVersionNotFound,
                "AccessDeniedException"
                | "AccessDenied"
                | "UnrecognizedClientException"
                | "ExpiredTokenException"
                | "InvalidSignatureException" => ReadError::AccessDenied { code },
                "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => ReadError::Throttled,
                "InvalidParameterException" | "InvalidRequestException" | "ValidationException" | "InvalidKeyId" => {
                    ReadError::InvalidRequest { code }
                }
                _ => ReadError::Upstream { kind: code },
            }
        }
        _ => ReadError::Upstream { kind: "unexpected answer".into() },
    }
}
