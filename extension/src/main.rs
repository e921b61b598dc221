//! `/opt/extensions/scoped-secrets`: hardening, logging, a single-threaded runtime, then
//! [`scoped_secrets::run`].

use std::process::ExitCode;

/// Every heap block is wiped before it is freed: the copies the SDK and hyper make of secrets
/// and credentials go too, not only our zeroizing values. Blocks of 8 KiB and more have pages
/// of their own, which go back to the kernel when freed (a connection's buffers leave with it).
#[global_allocator]
static ALLOCATOR: scoped_secrets::allocator::ZeroOnFree<scoped_secrets::allocator::MapLarge> =
    scoped_secrets::allocator::ZeroOnFree(scoped_secrets::allocator::MapLarge(std::alloc::System));

fn main() -> ExitCode {
    let hardening = scoped_secrets::hardening::harden();
    // Freed blocks skip the pages never touched, where such a page can only hold zeros
    // (`/proc/swaps` is read only when memory is not locked).
    scoped_secrets::allocator::skip_untouched_pages(
        hardening.memory.is_locked() || !scoped_secrets::hardening::swap_configured(),
    );
    let env = scoped_secrets::config::Env::from_process();
    let log_problem = scoped_secrets::logging::init(&env).err();
    // The extension name Lambda knows us by is our file name.
    let name = std::env::args()
        .next()
        .as_deref()
        .and_then(|path| std::path::Path::new(path).file_name()?.to_str().map(str::to_owned))
        .unwrap_or_else(|| "scoped-secrets".to_owned());
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(event = "runtime_failed", cause = %error);
            scoped_secrets::logging::flush();
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(scoped_secrets::run(env, name, hardening, log_problem));
    // Every line (the SHUTDOWN reports last) is on stdout before the process ends.
    scoped_secrets::logging::flush();
    code
}
