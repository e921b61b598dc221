//! The session ledger: every session this environment was issued, by name and policy bound
//! (never a credential), for the revocation report at SHUTDOWN and the deny it may write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use crate::session::Session;

/// Every session this environment was issued, for the revocation report: counts, and those
/// whose policy bound may still be ahead (the ones AWS would still honour). Names and bounds
/// only, never a credential.
#[derive(Debug, Default)]
pub struct SessionLedger {
    /// `AssumeRole` calls that succeeded.
    pub started: AtomicU64,
    /// Sessions ended in memory (credentials dropped).
    pub ended: AtomicU64,
    /// Sessions whose policy bound passed (pruned from `live`).
    expired: AtomicU64,
    /// Sessions whose bound may still be ahead; pruned as they pass.
    live: Mutex<Vec<IssuedSession>>,
    /// The scoped role's unique id (`AROA…`), from the first AssumeRole answer.
    pub role_id: OnceLock<String>,
}

/// A session as the ledger remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSession {
    /// `RoleSessionName`.
    pub name: String,
    /// The session policy's `aws:CurrentTime` bound.
    pub end: SystemTime,
}

impl SessionLedger {
    pub(super) fn record_started(&self, session: &Session) {
        if let Some(role_id) = session.role_id() {
            let _ = self.role_id.set(role_id.to_owned());
        }
        self.record(IssuedSession { name: session.name().to_owned(), end: session.end() }, SystemTime::now());
    }

    fn record(&self, issued: IssuedSession, now: SystemTime) {
        self.started.fetch_add(1, Ordering::Relaxed);
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        self.prune(&mut live, now);
        live.push(issued);
    }

    fn prune(&self, live: &mut Vec<IssuedSession>, now: SystemTime) {
        let before = live.len();
        live.retain(|session| session.end > now);
        self.expired.fetch_add((before - live.len()) as u64, Ordering::Relaxed);
    }

    /// The sessions AWS could still honour at `now`, and how many have ended by policy.
    pub fn at(&self, now: SystemTime) -> (Vec<IssuedSession>, u64) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        self.prune(&mut live, now);
        (live.clone(), self.expired.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn sessions_leave_the_live_list_once_their_bound_has_passed() {
        let ledger = SessionLedger::default();
        let at = |seconds: u64| UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds);
        ledger.record(IssuedSession { name: "ss-e-a".into(), end: at(10) }, at(0));
        ledger.record(IssuedSession { name: "ss-e-b".into(), end: at(20) }, at(5));
        let (live, expired) = ledger.at(at(15));
        assert_eq!((live.len(), expired), (1, 1));
        assert_eq!(live[0].name, "ss-e-b");
        assert_eq!(ledger.started.load(Ordering::Relaxed), 2);
        let (live, expired) = ledger.at(at(20));
        assert!(live.is_empty(), "a bound of exactly now has passed: AWS refuses at the instant");
        assert_eq!(expired, 2);
    }
}
