//! The marker file that tells `/opt/scoped-secrets-wrapper` the proxy is listening:
//! `$TMPDIR/scoped-secrets-runtime-proxy` (Lambda sets no `TMPDIR`: `/tmp`), holding the
//! proxy's address, `127.0.0.1:PORT`.
//!
//! Lambda starts the runtime (and so the wrapper) only once every extension has registered,
//! and the proxy is bound, and this written, before the extension registers: when the wrapper
//! runs, the marker is there if and only if the proxy is. Without it (the extension failed
//! before binding, or the proxy is off) the wrapper leaves the runtime on Lambda's own Runtime
//! API, so the function never waits on a port nobody serves. The file holds no secret; it is
//! written under a temporary name and renamed into place (a rename replaces a planted link
//! rather than following it), and removed when the extension exits. After a crash it stays:
//! a runtime started later would be refused at once on the dead port, never left hanging.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The marker's file name in the temporary directory.
pub const FILE_NAME: &str = "scoped-secrets-runtime-proxy";

/// A written marker; dropping it removes the file.
#[derive(Debug)]
pub struct Marker {
    path: PathBuf,
}

impl Marker {
    /// Writes `address` to the marker file.
    ///
    /// # Errors
    /// The file system's.
    pub fn write(address: SocketAddr) -> std::io::Result<Self> {
        let directory = std::env::temp_dir();
        let path = directory.join(FILE_NAME);
        let staging = directory.join(format!(".{FILE_NAME}.{}", std::process::id()));
        // A leftover of a crashed process with the same id.
        let _ = std::fs::remove_file(&staging);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
            .and_then(|mut file| file.write_all(format!("{address}\n").as_bytes()))
            .and_then(|()| std::fs::rename(&staging, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&staging);
        }
        written.map(|()| Self { path })
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
