//! What the cache holds and hands out: an [`Item`] (a secret or a parameter, each shared by
//! every answer made from it), and a [`Served`] item with where it came from.

use std::sync::Arc;

use super::parameter::ParameterValue;
use super::value::SecretValue;

/// Where an answer came from, for the audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The zeroizing cache.
    Cache,
    /// A fetch made for this request (or one it waited on).
    Aws,
}

impl Source {
    /// Lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Aws => "aws",
        }
    }
}

/// What the cache holds: a secret or a parameter, each shared by every answer made from it.
#[derive(Debug, Clone)]
pub enum Item {
    /// A secret's version.
    Secret(Arc<SecretValue>),
    /// A parameter's version.
    Parameter(Arc<ParameterValue>),
}

impl Item {
    /// The version (a secret's version id, a parameter's version number), for audit lines.
    pub fn version_id(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Item::Secret(secret) => secret.version_id().into(),
            Item::Parameter(parameter) => parameter.version().to_string().into(),
        }
    }
}

/// An item served, with where it came from.
#[derive(Debug)]
pub struct Served {
    /// The value.
    pub value: Item,

    /// Cache or AWS.
    pub source: Source,
    /// The scope (request id or `init`) whose session fetched it, when it came from AWS.
    pub scope: Option<String>,
}
