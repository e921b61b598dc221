//! Test support (`tests/tests/e2e/audit_log.rs`): a log shipper that can stall.
//!
//! `gated_relay COMMAND [ARGS…]` runs the command with its stdout a one-page pipe (4 KiB, the
//! smallest Linux allows; the extension asks for 1 MiB when it starts, as it does on Lambda) and
//! copies that pipe to its own stdout, line by line, except while the file named by
//! `GATED_RELAY_GATE` exists: then it stops reading, as a log pipeline that does not keep up,
//! and the command's writes to stdout block once the pipe is full. SIGTERM is
//! passed on to the command; the relay exits with the command's status once its stdout closes.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn pass_on(signal: libc::c_int) {
    let child = CHILD.load(Ordering::SeqCst);
    if child > 0 {
        // SAFETY: kill is async-signal-safe and takes plain integers.
        unsafe { libc::kill(child, signal) };
    }
}

#[allow(unsafe_code, clippy::print_stderr)]
fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: gated_relay COMMAND [ARGS…]");
        return ExitCode::from(2);
    };
    let gate = std::env::var_os("GATED_RELAY_GATE").map(std::path::PathBuf::from);
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array we pass; we own both from here.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!("gated_relay: pipe: {}", std::io::Error::last_os_error());
        return ExitCode::from(2);
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ takes an integer; a failure leaves the default size.
    unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    let mut child = match Command::new(&program).args(args).stdout(Stdio::from(write)).spawn() {
        Ok(child) => child,
        Err(error) => {
            eprintln!("gated_relay: {}: {error}", program.to_string_lossy());
            return ExitCode::from(2);
        }
    };
    CHILD.store(i32::try_from(child.id()).unwrap_or_default(), Ordering::SeqCst);
    // SAFETY: the handler only reads an atomic and calls kill.
    unsafe { libc::signal(libc::SIGTERM, pass_on as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    let mut lines = BufReader::with_capacity(512, std::fs::File::from(read));
    let mut out = std::io::stdout().lock();
    let mut line = Vec::new();
    loop {
        while gate.as_ref().is_some_and(|gate| gate.exists()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        line.clear();
        match lines.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        }
    }
    match child.wait() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
