//! What the Runtime API proxy reports to the lifecycle loop: an invocation's `/next` answer and
//! its accepted result, as Lambda's answers confirm them.

use crate::domain::request_id::RequestId;

/// What the proxy saw, as Lambda's answers confirm it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// Lambda answered the runtime's `/next`: the invocation has begun.
    Next {
        /// `Lambda-Runtime-Aws-Request-Id`.
        request_id: RequestId,
        /// `Lambda-Runtime-Deadline-Ms`, Unix milliseconds.
        deadline_ms: u64,
        /// `Lambda-Runtime-Aws-Tenant-Id` (tenant isolation mode), as sent, at most
        /// [`MAX_TENANT_HEADER`] bytes (a longer one is cut there, and is invalid either way).
        tenant_id: Option<String>,
    },
    /// Lambda accepted the function's result, its whole body forwarded: the invocation is over.
    Responded {
        /// The invocation.
        request_id: RequestId,
        /// `/response` or `/error`.
        outcome: Outcome,
    },
}

/// How the function ended its invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `POST /runtime/invocation/{id}/response` (buffered or streamed).
    Response,
    /// `POST /runtime/invocation/{id}/error`.
    Error,
}

impl Outcome {
    /// As audit lines name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Response => "response",
            Outcome::Error => "error",
        }
    }
}

/// The longest tenant id header passed on (longer ones are invalid tenant ids anyway).
pub const MAX_TENANT_HEADER: usize = 65;
