//! The process environment, captured once so configuration is read from a value, not from
//! globals, and wiped when dropped (it holds the execution role's credentials).

use std::collections::HashMap;
use std::fmt;

/// The process environment, captured once. Tests build it from a map instead of mutating
/// the real environment.
#[derive(Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// Captures the process environment (non-UTF-8 entries are ignored).
    pub fn from_process() -> Self {
        Self(std::env::vars().collect())
    }

    /// An environment made of the given pairs.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// The value of `name`, `None` when unset or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.trim().is_empty())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // The captured environment holds the execution role's credentials: wipe our copy.
        use zeroize::Zeroize;
        for value in self.0.values_mut() {
            value.zeroize();
        }
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be credentials: list the names only.
        let mut names: Vec<&String> = self.0.keys().collect();
        names.sort();
        f.debug_struct("Env").field("names", &names).finish()
    }
}
