//! Every stable error code a local caller can receive, in one place.
//!
//! A code names one reason a request was refused or a read failed. It is what the audit line's
//! `code` field says, what the GET API's `error` field says, what the least-privilege report
//! counts denies by, and what each protocol maps to its own wire form (the GET API to an HTTP
//! status, the SDK protocol to an AWS error type): both mappings are exhaustive `match`es over
//! [`Code`], so a new code cannot ship without an answer in each. Codes never change meaning;
//! `docs/api.md` lists them all (a test checks it).

/// Defines [`Code`], [`Code::ALL`] and [`Code::as_str`] from one list, so none can miss a code.
macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// A stable, machine-readable reason.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// Every code.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as callers and audit lines see it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $name,)*
                }
            }
        }
    };
}

codes! {
    // The envelope: checks that need nothing but the request.
    /// Not a GET (the GET API) / not `POST /` (the SDK protocol).
    MethodNotAllowed => "method_not_allowed",
    /// `X-Forwarded-For` or `Forwarded` present.
    ForwardedRequest => "forwarded_request",
    /// A GET with a body.
    BodyNotAllowed => "body_not_allowed",
    /// An absolute-form request target.
    AbsoluteTarget => "absolute_target",
    /// A request target over the limit.
    TargetTooLong => "target_too_long",
    /// A `Host` that is not loopback, or repeated.
    InvalidHost => "invalid_host",
    /// No such path.
    NotFound => "not_found",
    /// No token header.
    MissingToken => "missing_token",
    /// A token header that is not the token.
    InvalidToken => "invalid_token",
    /// A malformed `X-Scoped-Secrets-Request-Id`.
    InvalidRequestId => "invalid_request_id",
    /// An `X-Scoped-Secrets-Request-Id` that names no invocation running now (Managed
    /// Instances, where the Runtime API proxy knows which are).
    RequestIdNotLive => "request_id_not_live",
    // The GET API's query.
    /// The query is not UTF-8.
    InvalidQuery => "invalid_query",
    /// A parameter the API does not take.
    UnknownParameter => "unknown_parameter",
    /// A parameter given twice.
    DuplicateParameter => "duplicate_parameter",
    /// `refreshNow` is not a boolean.
    InvalidRefreshNow => "invalid_refresh_now",
    /// No `secretId`.
    MissingSecretId => "missing_secret_id",
    /// A `secretId` too long or with control characters.
    InvalidSecretId => "invalid_secret_id",
    /// `versionStage` and `versionId` together.
    ConflictingVersion => "conflicting_version",
    /// A malformed `versionStage`.
    InvalidVersionStage => "invalid_version_stage",
    /// A malformed `versionId`.
    InvalidVersionId => "invalid_version_id",
    /// A `jsonKey` that is empty, too long or has control characters.
    InvalidJsonKey => "invalid_json_key",
    // The GET API's parameter path.
    /// No `name`.
    MissingName => "missing_name",
    /// A `name` too long, with control characters, or with a malformed `:version`/`:label`.
    InvalidName => "invalid_name",
    /// A `version` that is not a positive whole number.
    InvalidParameterVersion => "invalid_parameter_version",
    /// A malformed `label`.
    InvalidLabel => "invalid_label",
    /// `withDecryption` is not a boolean.
    InvalidWithDecryption => "invalid_with_decryption",
    /// A `/aws/reference/secretsmanager/` name without decryption, or with a version or label.
    InvalidReference => "invalid_reference",
    // The SDK protocol.
    /// The body is over the limit or was not received whole.
    BodyTooLarge => "body_too_large",
    /// The body did not arrive in time.
    BodyTimeout => "body_timeout",
    /// No function credentials to verify signatures with.
    NoFunctionCredentials => "no_function_credentials",
    /// `X-Amz-Date` missing or outside the clock window.
    SignatureStale => "signature_stale",
    /// Another access key, region or service in the credential scope.
    SignatureWrongCredentials => "signature_wrong_credentials",
    /// A malformed `Authorization` header, or a required header not signed.
    SignatureMalformed => "signature_malformed",
    /// The signature does not verify.
    SignatureMismatch => "signature_mismatch",
    /// Not `application/x-amz-json-1.x`.
    UnsupportedContentType => "unsupported_content_type",
    /// An operation the local endpoint does not serve.
    UnsupportedOperation => "unsupported_operation",
    /// A body that is not a valid input of the operation.
    InvalidParameter => "invalid_parameter",
    // Reads.
    /// Not in the allowlist: nothing was asked of AWS.
    SecretNotAllowed => "secret_not_allowed",
    /// Secrets Manager has no such secret or version.
    SecretNotFound => "secret_not_found",
    /// The parameter is not in the allowlist: nothing was asked of AWS.
    ParameterNotAllowed => "parameter_not_allowed",
    /// Parameter Store has no such parameter.
    ParameterNotFound => "parameter_not_found",
    /// Parameter Store has no such version or label of the parameter.
    ParameterVersionNotFound => "parameter_version_not_found",
    /// `jsonKey` was asked of a secret that is not a JSON object.
    SecretNotJsonObject => "secret_not_json_object",
    /// `jsonKey` names no top-level key of the secret.
    JsonKeyNotFound => "json_key_not_found",
    /// AWS refused the read with the scoped session.
    UpstreamAccessDenied => "upstream_access_denied",
    /// AWS rejected the request's parameters.
    InvalidRequest => "invalid_request",
    /// A `VersionId` with a `VersionStage` that version does not carry.
    VersionStageMismatch => "version_stage_mismatch",
    /// AWS throttled the read through every retry.
    UpstreamThrottled => "upstream_throttled",
    /// AWS did not answer in time.
    UpstreamTimeout => "upstream_timeout",
    /// Any other upstream failure.
    UpstreamError => "upstream_error",
    /// STS did not answer in time.
    SessionTimeout => "session_timeout",
    /// STS throttled `AssumeRole` through every retry.
    SessionThrottled => "session_throttled",
    /// STS refused `AssumeRole`.
    SessionRefused => "session_refused",
    /// A session could not be started for another reason.
    SessionFailed => "session_failed",
    /// No invocation began within the wait timeout.
    NoActiveInvocation => "no_active_invocation",
    /// The invocation's session was not ready within the wait timeout.
    SessionWaitTimeout => "session_wait_timeout",
    /// The invocation ended while the request waited.
    InvocationEnded => "invocation_ended",
    /// The extension is shutting down.
    ShuttingDown => "shutting_down",
    /// A SnapStart INIT: nothing is fetched before restore.
    SnapstartInit => "snapstart_init",
    /// The tenant is not known yet.
    TenantUnknown => "tenant_unknown",
    /// The platform's tenant id is not valid.
    TenantRefused => "tenant_refused",
    /// A second tenant appeared.
    TenantChanged => "tenant_changed",
}

impl Code {
    /// The sentence a caller gets with the code when the refusal has nothing more specific to
    /// say. Never a value, a credential or the token.
    pub const fn message(self) -> &'static str {
        match self {
            Code::MethodNotAllowed => "Only GET is served (and POST / for the SDK protocol).",
            Code::ForwardedRequest => "Proxied requests are refused.",
            Code::BodyNotAllowed => "A GET request carries no body.",
            Code::AbsoluteTarget => "Use an origin-form request target.",
            Code::TargetTooLong => "The request target is too long.",
            Code::InvalidHost => "The Host header must name the loopback address, once.",
            Code::NotFound => "No such path; use /secretsmanager/get or /systemsmanager/parameters/get.",
            Code::MissingToken => "The X-Aws-Parameters-Secrets-Token header is required.",
            Code::InvalidToken => "The X-Aws-Parameters-Secrets-Token header is not valid.",
            Code::InvalidRequestId => "X-Scoped-Secrets-Request-Id must be one value of 1 to 64 of A-Z a-z 0-9 - _.",
            Code::RequestIdNotLive => {
                "X-Scoped-Secrets-Request-Id names no invocation running now; send the request id of the \
                 invocation making the request."
            }
            Code::InvalidQuery => "The query string is not valid UTF-8.",
            Code::UnknownParameter => {
                "Only secretId (or the /v1/ path), versionStage, versionId, refreshNow and jsonKey are accepted \
                 (on /systemsmanager/parameters/get: name, version, label, withDecryption)."
            }
            Code::DuplicateParameter => "Each query parameter may appear once.",
            Code::InvalidRefreshNow => "refreshNow is true, false, 1 or 0.",
            Code::MissingSecretId => "The secretId query parameter is required.",
            Code::InvalidSecretId => "The secretId is too long or contains control characters.",
            Code::ConflictingVersion => "Give versionStage or versionId, not both.",
            Code::InvalidVersionStage => "The versionStage is not a valid staging label.",
            Code::InvalidVersionId => "The versionId is not a valid version id.",
            Code::InvalidJsonKey => "jsonKey is 1 to 256 characters without control characters.",
            Code::MissingName => "The name query parameter is required.",
            Code::InvalidName => {
                "The name is too long, has control characters, or ends in a malformed :version or :label."
            }
            Code::InvalidParameterVersion => "version is a whole number from 1.",
            Code::InvalidLabel => "label is 1 to 100 of A-Z a-z 0-9 . - _ and does not start with a digit.",
            Code::InvalidWithDecryption => "withDecryption is true or false.",
            Code::InvalidReference => {
                "A /aws/reference/secretsmanager/ name is read with withDecryption=true and without a version or label."
            }
            Code::BodyTooLarge => "The request body is too large or was not received whole.",
            Code::BodyTimeout => "The request body did not arrive in time.",
            Code::NoFunctionCredentials => "The extension has no function credentials to verify signatures with.",
            Code::SignatureStale
            | Code::SignatureWrongCredentials
            | Code::SignatureMalformed
            | Code::SignatureMismatch => "The request signature does not verify with the function's credentials.",
            Code::UnsupportedContentType => "Use Content-Type application/x-amz-json-1.1.",
            Code::UnsupportedOperation => {
                "The local endpoint serves only GetSecretValue, BatchGetSecretValue, GetParameter and \
                 GetParameters; nothing else reaches AWS."
            }
            Code::InvalidParameter => "The request body is not a valid input for the operation.",
            Code::SecretNotAllowed => "The secret is not in this function's allowlist.",
            Code::SecretNotFound => "Secrets Manager has no such secret or version.",
            Code::ParameterNotAllowed => "The parameter is not in this function's allowlist.",
            Code::ParameterNotFound => "Parameter Store has no such parameter.",
            Code::ParameterVersionNotFound => "Parameter Store has no such version or label of the parameter.",
            Code::SecretNotJsonObject => "jsonKey needs a secret whose SecretString is a JSON object.",
            Code::JsonKeyNotFound => "The secret has no such top-level key.",
            Code::UpstreamAccessDenied => {
                "AWS refused the read with the scoped session; check the scoped role's policy."
            }
            Code::InvalidRequest => "AWS rejected the request.",
            Code::VersionStageMismatch => {
                "You provided a VersionStage that is not associated to the provided VersionId."
            }
            Code::UpstreamThrottled => "AWS throttled the request; retry.",
            Code::UpstreamTimeout => "AWS did not answer in time.",
            Code::UpstreamError => "The call to AWS failed.",
            Code::SessionTimeout => "STS did not answer in time.",
            Code::SessionThrottled => "STS throttled AssumeRole through every retry; retry.",
            Code::SessionRefused => "STS refused to start a session; check the role's trust policy.",
            Code::SessionFailed => "A session could not be started.",
            Code::NoActiveInvocation => "No invocation began within the wait timeout.",
            Code::SessionWaitTimeout => "The invocation's session was not ready within the wait timeout.",
            Code::InvocationEnded => "The invocation ended first.",
            Code::ShuttingDown => "The extension is shutting down.",
            Code::SnapstartInit => {
                "SnapStart: no secret is fetched before the snapshot is restored; \
                 read secrets in the handler, not during INIT."
            }
            Code::TenantUnknown => {
                "The tenant is not known yet (it comes with the first invocation); read tenant secrets in the handler."
            }
            Code::TenantRefused => {
                "The platform's tenant id is not valid for a secret name; tenant secrets are not served."
            }
            Code::TenantChanged => {
                "A second tenant appeared in this environment; everything was wiped and nothing is served."
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once_lower_snake_case_and_distinct() {
        let names: std::collections::BTreeSet<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), Code::ALL.len(), "two codes share a name");
        let variants: std::collections::BTreeSet<Code> = Code::ALL.iter().copied().collect();
        assert_eq!(variants.len(), Code::ALL.len(), "a code is listed twice");
        for &code in Code::ALL {
            let name = code.as_str();
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
            assert!(code.message().ends_with('.'), "{name}: a sentence");
        }
    }
}
