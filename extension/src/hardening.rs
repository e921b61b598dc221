//! Process hardening, done first thing in `main`: no core dumps, and not dumpable, so neither
//! a crash nor another process of the same user (the function) can read our memory through
//! `/proc/PID/mem` or `ptrace`.

/// What hardening achieved, for the start-up log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    /// `RLIMIT_CORE` set to 0.
    pub core_dumps_disabled: bool,
    /// `PR_SET_DUMPABLE` set to 0.
    pub not_dumpable: bool,
}

/// Applies the hardening this platform allows. Failures are reported, not fatal: Lambda's
/// sandbox allows both, and a local run without them still works.
#[allow(unsafe_code)]
pub fn harden() -> Hardening {
    #[cfg(target_os = "linux")]
    {
        let limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: setrlimit reads the struct we pass by pointer; it outlives the call.
        let core_dumps_disabled = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &limit) } == 0;
        // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes plain integers and touches no memory of ours.
        let not_dumpable = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0;
        Hardening { core_dumps_disabled, not_dumpable }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Hardening { core_dumps_disabled: false, not_dumpable: false }
    }
}
