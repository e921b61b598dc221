//! The faces of the local API, named in audit lines and in the least-privilege report.

/// Which face of the local API a read came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `GET /secretsmanager/get?secretId=…` (AWS's Parameters and Secrets extension).
    Get,
    /// `GET /v1/{secretId}` (AWS's Secrets Manager Agent).
    AgentPath,
    /// `POST /` with `X-Amz-Target` (the function's own AWS SDK, SigV4-verified).
    Sdk,
}

impl Api {
    /// Every face, in the order of [`Api::index`].
    pub const ALL: [Api; 3] = [Api::Get, Api::AgentPath, Api::Sdk];

    /// Lower-case name for logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Get => "get",
            Api::AgentPath => "v1",
            Api::Sdk => "sdk",
        }
    }

    /// A dense index (for per-face counters).
    pub fn index(self) -> usize {
        match self {
            Api::Get => 0,
            Api::AgentPath => 1,
            Api::Sdk => 2,
        }
    }
}
