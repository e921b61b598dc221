//! Why a read failed and why a session could not be had: the crate-wide errors of the read
//! path, each with the one [`Code`] that both protocols of the local API map to their answers.
//!
//! No variant carries a secret value, a credential or the token: only AWS error codes and short
//! descriptions, so every error may be logged and its code returned to the caller.

use super::code::Code;

/// Why a session (one `AssumeRole`) could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// STS refused (trust policy, role policy, or our request).
    #[error("STS refused AssumeRole ({code})")]
    Refused {
        /// The AWS error code.
        code: String,
    },
    /// STS did not answer in time.
    #[error("STS did not answer within the upstream timeout")]
    Timeout,
    /// STS kept throttling `AssumeRole` through every retry.
    #[error("STS throttled AssumeRole")]
    Throttled,
    /// STS could not be reached or answered garbage.
    #[error("STS call failed ({kind})")]
    Upstream {
        /// A short, credential-free description.
        kind: String,
    },
    /// The session name would be invalid for STS (checked here: the emulator does not).
    #[error("generated session name is not valid for STS")]
    InvalidName,
    /// A tenant-scoped allowlist has no tenant yet: there is no policy to ask for.
    #[error("the allowlist waits for its tenant")]
    TenantUnknown,
}

impl SessionError {
    /// The stable code.
    pub fn code(&self) -> Code {
        match self {
            SessionError::Timeout => Code::SessionTimeout,
            SessionError::Throttled => Code::SessionThrottled,
            SessionError::Refused { .. } => Code::SessionRefused,
            SessionError::Upstream { .. } | SessionError::InvalidName | SessionError::TenantUnknown => {
                Code::SessionFailed
            }
        }
    }
}

/// Why a secret or parameter could not be served. `Clone`: callers that joined one fetch share
/// its failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// Not in the allowlist: nothing was asked of AWS.
    #[error("the secret is not in the allowlist")]
    NotAllowed,
    /// Secrets Manager has no such secret or version.
    #[error("the secret or version does not exist")]
    NotFound,
    /// The parameter is not in the allowlist: nothing was asked of AWS.
    #[error("the parameter is not in the allowlist")]
    ParameterNotAllowed,
    /// Parameter Store has no such parameter.
    #[error("the parameter does not exist")]
    ParameterNotFound,
    /// Parameter Store has no such version or label of the parameter.
    #[error("the parameter version or label does not exist")]
    ParameterVersionNotFound,
    /// AWS refused the session (the role's or the session's policy).
    #[error("AWS refused access with the session's credentials ({code})")]
    AccessDenied {
        /// The AWS error code.
        code: String,
    },
    /// AWS rejected the request's parameters.
    #[error("AWS rejected the request ({code})")]
    InvalidRequest {
        /// The AWS error code.
        code: String,
    },
    /// AWS throttled us.
    #[error("AWS throttled the request")]
    Throttled,
    /// AWS did not answer within the upstream timeout.
    #[error("AWS did not answer in time")]
    UpstreamTimeout,
    /// Any other upstream failure.
    #[error("AWS call failed ({kind})")]
    Upstream {
        /// Short, value-free description.
        kind: String,
    },
    /// The session could not be started.
    #[error("could not start a session: {0}")]
    Session(#[from] SessionError),
    /// No invocation began within the wait timeout.
    #[error("no invocation was active within the wait timeout")]
    NoActiveInvocation,
    /// The session was not ready within the wait timeout.
    #[error("the session was not ready within the wait timeout")]
    WaitTimeout,
    /// The invocation ended while the request waited.
    #[error("the invocation ended before the secret was fetched")]
    InvocationEnded,
    /// The extension is shutting down.
    #[error("the extension is shutting down")]
    ShuttingDown,
    /// A SnapStart INIT: nothing is fetched before restore.
    #[error("nothing is fetched during a SnapStart INIT")]
    SnapStartInit,
    /// A version asked for by id together with a staging label that version does not carry
    /// (AWS refuses the pair with `InvalidRequestException`).
    #[error("the version id and the staging label name different versions")]
    VersionStageMismatch,
    /// The tenant was not known within the wait timeout.
    #[error("the tenant was not known within the wait timeout")]
    TenantUnknown,
    /// The platform's tenant id was not valid.
    #[error("the platform's tenant id was refused")]
    TenantRefused,
    /// A second tenant appeared: nothing is served any more.
    #[error("a second tenant appeared in this environment")]
    TenantChanged,
    /// The request named an invocation that is not running (Managed Instances).
    #[error("the named invocation is not running")]
    RequestIdNotLive,
}

impl ReadError {
    /// The stable code both protocols answer with.
    pub fn code(&self) -> Code {
        match self {
            ReadError::NotAllowed => Code::SecretNotAllowed,
            ReadError::NotFound => Code::SecretNotFound,
            ReadError::ParameterNotAllowed => Code::ParameterNotAllowed,
            ReadError::ParameterNotFound => Code::ParameterNotFound,
            ReadError::ParameterVersionNotFound => Code::ParameterVersionNotFound,
            ReadError::AccessDenied { .. } => Code::UpstreamAccessDenied,
            ReadError::InvalidRequest { .. } => Code::InvalidRequest,
            ReadError::Throttled => Code::UpstreamThrottled,
            ReadError::UpstreamTimeout => Code::UpstreamTimeout,
            ReadError::Upstream { .. } => Code::UpstreamError,
            ReadError::Session(session) => session.code(),
            ReadError::NoActiveInvocation => Code::NoActiveInvocation,
            ReadError::WaitTimeout => Code::SessionWaitTimeout,
            ReadError::InvocationEnded => Code::InvocationEnded,
            ReadError::ShuttingDown => Code::ShuttingDown,
            ReadError::SnapStartInit => Code::SnapstartInit,
            ReadError::VersionStageMismatch => Code::VersionStageMismatch,
            ReadError::TenantUnknown => Code::TenantUnknown,
            ReadError::TenantRefused => Code::TenantRefused,
            ReadError::TenantChanged => Code::TenantChanged,
            ReadError::RequestIdNotLive => Code::RequestIdNotLive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_read_failure_has_its_own_code() {
        let errors = [
            ReadError::NotAllowed,
            ReadError::NotFound,
            ReadError::ParameterNotAllowed,
            ReadError::ParameterNotFound,
            ReadError::ParameterVersionNotFound,
            ReadError::AccessDenied { code: "AccessDeniedException".into() },
            ReadError::InvalidRequest { code: "InvalidParameterException".into() },
            ReadError::Throttled,
            ReadError::UpstreamTimeout,
            ReadError::Upstream { kind: "x".into() },
            ReadError::Session(SessionError::Timeout),
            ReadError::Session(SessionError::Throttled),
            ReadError::Session(SessionError::Refused { code: "AccessDenied".into() }),
            ReadError::Session(SessionError::InvalidName),
            ReadError::NoActiveInvocation,
            ReadError::WaitTimeout,
            ReadError::InvocationEnded,
            ReadError::ShuttingDown,
            ReadError::SnapStartInit,
            ReadError::VersionStageMismatch,
            ReadError::TenantUnknown,
            ReadError::TenantRefused,
            ReadError::TenantChanged,
            ReadError::RequestIdNotLive,
        ];
        let codes: std::collections::BTreeSet<Code> = errors.iter().map(ReadError::code).collect();
        assert_eq!(codes.len(), errors.len());
    }
}
