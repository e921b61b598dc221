//! Process hardening, done first thing in `main`: no core dumps, and not dumpable, so neither
//! a crash nor another process of the same user (the function) can read our memory through
//! `/proc/PID/mem` or `ptrace`; and, where the sandbox allows it, memory locked so no page of
//! it (secrets included) is ever written to swap.

/// What hardening achieved, for the start-up log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    /// `RLIMIT_CORE` set to 0.
    pub core_dumps_disabled: bool,
    /// `PR_SET_DUMPABLE` set to 0.
    pub not_dumpable: bool,
    /// Whether every page is locked in memory.
    pub memory: MemoryLock,
}

/// The outcome of the best-effort memory lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLock {
    /// `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)` succeeded: pages are locked as they
    /// are first touched (no up-front cost), now and for every later mapping.
    Locked,
    /// Not attempted: `RLIMIT_MEMLOCK` is finite (this many bytes) and the process may not
    /// exceed it. With a finite limit, `MCL_FUTURE` would make any mapping past the limit fail,
    /// so an allocation could abort the extension; swapping is refused by the platform instead
    /// (Lambda has no swap).
    Refused {
        /// `RLIMIT_MEMLOCK`'s soft limit.
        limit_bytes: u64,
    },
    /// Attempted and refused by the kernel (`errno`).
    Failed {
        /// The error number.
        errno: i32,
    },
    /// Not available on this platform.
    Unsupported,
}

impl MemoryLock {
    /// Whether memory is locked.
    pub fn is_locked(self) -> bool {
        self == MemoryLock::Locked
    }

    /// Why not, in a few words (empty when locked), for the start-up line.
    pub fn reason(self) -> String {
        match self {
            MemoryLock::Locked => String::new(),
            MemoryLock::Refused { limit_bytes } => format!("RLIMIT_MEMLOCK is {limit_bytes} bytes"),
            MemoryLock::Failed { errno } => format!("mlockall failed (errno {errno})"),
            MemoryLock::Unsupported => "not supported on this platform".to_owned(),
        }
    }
}

/// Whether to try `mlockall` with `MCL_FUTURE`: only when no limit can be hit (an unlimited
/// `RLIMIT_MEMLOCK`, or `CAP_IPC_LOCK`, which lifts it).
pub fn should_lock(limit: Option<u64>, has_ipc_lock: bool) -> bool {
    limit.is_none() || has_ipc_lock
}

/// Whether `CAP_IPC_LOCK` (bit 14) is in the `CapEff:` line of a `/proc/self/status` text.
pub fn has_ipc_lock(status: &str) -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Applies the hardening this platform allows. Failures are reported, not fatal: Lambda's
/// sandbox allows the first two, and a local run without them still works.
#[allow(unsafe_code)]
pub fn harden() -> Hardening {
    #[cfg(target_os = "linux")]
    {
        let limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: setrlimit reads the struct we pass by pointer; it outlives the call.
        let core_dumps_disabled = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &limit) } == 0;
        // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes plain integers and touches no memory of ours.
        let not_dumpable = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0;
        Hardening { core_dumps_disabled, not_dumpable, memory: lock_memory() }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Hardening { core_dumps_disabled: false, not_dumpable: false, memory: MemoryLock::Unsupported }
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lock_memory() -> MemoryLock {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass by pointer; it outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return MemoryLock::Failed { errno: errno() };
    }
    let finite = (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur);
    let capable = finite.is_some() && std::fs::read_to_string("/proc/self/status").is_ok_and(|s| has_ipc_lock(&s));
    if !should_lock(finite, capable) {
        return MemoryLock::Refused { limit_bytes: finite.unwrap_or_default() };
    }
    // SAFETY: mlockall takes flags only and touches no memory of ours.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } == 0 {
        MemoryLock::Locked
    } else {
        MemoryLock::Failed { errno: errno() }
    }
}

/// Whether the system may write memory to swap: `/proc/swaps` lists a swap area, or cannot be
/// read (then assume it does). Lambda has none.
pub fn swap_configured() -> bool {
    std::fs::read_to_string("/proc/swaps").map_or(true, |swaps| swaps_listed(&swaps))
}

/// Whether a `/proc/swaps` text lists a swap area (a line after its header).
pub fn swaps_listed(swaps: &str) -> bool {
    swaps.lines().skip(1).any(|line| !line.trim().is_empty())
}

#[cfg(target_os = "linux")]
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_is_seen_in_proc_swaps() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(!swaps_listed(header), "only the header: no swap (Lambda)");
        assert!(!swaps_listed(""));
        assert!(swaps_listed(&format!("{header}/swapfile                               file\t\t1048572\t\t0\t\t-2\n")));
    }

    #[test]
    fn memory_is_locked_only_where_no_limit_can_abort_an_allocation() {
        assert!(should_lock(None, false), "unlimited");
        assert!(should_lock(Some(65_536), true), "CAP_IPC_LOCK lifts the limit");
        assert!(!should_lock(Some(65_536), false), "a finite limit: MCL_FUTURE could fail a later mapping");
        assert!(!should_lock(Some(0), false));
    }

    #[test]
    fn cap_ipc_lock_is_read_from_the_effective_set() {
        let status =
            |eff: &str| format!("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t{eff}\nCapBnd:\t000001ffffffffff\n");
        assert!(has_ipc_lock(&status("000001ffffffffff")), "root");
        assert!(has_ipc_lock(&status("0000000000004000")), "only CAP_IPC_LOCK");
        assert!(!has_ipc_lock(&status("0000000000000000")), "an unprivileged user");
        assert!(!has_ipc_lock(&status("00000000a80425fb")), "Docker's default set has no CAP_IPC_LOCK");
        assert!(!has_ipc_lock("Name:\tx\n"), "no CapEff line");
        assert_eq!(MemoryLock::Refused { limit_bytes: 65_536 }.reason(), "RLIMIT_MEMLOCK is 65536 bytes");
        assert!(MemoryLock::Locked.is_locked() && MemoryLock::Locked.reason().is_empty());
    }
}
