//! The two kinds of item the extension serves, and what a read of each asks for: a secret at a
//! version, or a parameter at a version, decrypted or not. One allowlist holds both kinds in one
//! index space; the cache keys values by entry and [`Wanted`].

use super::parameter::ParameterVersion;
use super::version::Version;

/// Which store an item lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A Secrets Manager secret (`SCOPED_SECRETS_SECRETS`).
    Secret,
    /// A Parameter Store parameter (`SCOPED_SECRETS_PARAMETERS`).
    Parameter,
}

impl Kind {
    /// Lower-case name for audit lines and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Parameter => "parameter",
        }
    }
}

/// What one read asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Wanted {
    /// A secret's version.
    Secret(Version),
    /// A parameter's version, decrypted (`WithDecryption`) or not.
    Parameter {
        /// Which version.
        version: ParameterVersion,
        /// `WithDecryption`: a `SecureString`'s plaintext rather than its ciphertext.
        decrypt: bool,
    },
}

impl Wanted {
    /// The kind of item it reads.
    pub fn kind(&self) -> Kind {
        match self {
            Wanted::Secret(_) => Kind::Secret,
            Wanted::Parameter { .. } => Kind::Parameter,
        }
    }

    /// A parameter read's `WithDecryption`; `None` for a secret.
    pub fn decrypt(&self) -> Option<bool> {
        match self {
            Wanted::Secret(_) => None,
            Wanted::Parameter { decrypt, .. } => Some(*decrypt),
        }
    }
}
