//! Secrets and credentials in the live extension's memory: gone once wiped (at the end of a
//! TTL-0 invocation, and at SHUTDOWN while the process still runs), present (so the scan can
//! fail) while legitimately cached.

use std::time::Duration;

use scoped_secrets_tests::Stack;
use scoped_secrets_tests::faults::{Fault, Service};
use scoped_secrets_tests::lambda::scan_memory;
use serde_json::json;

use super::TIMEOUT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_ttl_zero_invocation_no_canary_or_credential_remains_in_memory() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let canary = format!("canary-memory-{:016x}{:016x}", rand_u64(), rand_u64());
    let admin = aws_sdk_secretsmanager::Client::new(&stack.ministack.admin_config());
    admin.create_secret().name("app/canary").secret_string(&canary).send().await?;

    // Control: with a TTL the value is legitimately cached, and the scan finds it.
    let (cached, _) = stack.environment("app/canary", &[]).await?;
    cached.invoke(json!({ "secretId": "app/canary" }), TIMEOUT).await?;
    let pid = cached.extension.pid().expect("running");
    assert!(!scan_memory(pid, &[canary.as_bytes()])?.is_empty(), "the scan finds a cached canary");

    // TTL 0: once the invocation has ended, neither the value nor the session's credentials
    // remain anywhere in the process's memory.
    let (wiped, _) = stack.environment("app/canary", &[("SCOPED_SECRETS_CACHE_TTL", "0")]).await?;
    let invoked = wiped.invoke(json!({ "secretId": "app/canary" }), TIMEOUT).await?;
    assert_eq!(invoked.payload["status"], 200);
    let session = stack.proxy.assume_role_calls().pop().and_then(|c| c.credentials).expect("a session");
    let token = session.session_token.clone().unwrap_or_default();
    let needles: [&[u8]; 3] = [canary.as_bytes(), session.secret_access_key.as_bytes(), &token.as_bytes()[..64]];
    let pid = wiped.extension.pid().expect("running");
    // Memory locked (no page to swap) wherever no RLIMIT_MEMLOCK can fail an allocation: here
    // the tests run with CAP_IPC_LOCK (root), so the start-up line says locked and the kernel
    // counts locked pages; without it the line says why not.
    let ready = wiped.extension.output.wait_for_event("ready", TIMEOUT).await?;
    // No core dumps (the kernel's own view of the limit) and not dumpable.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let core = limits.lines().find(|line| line.starts_with("Max core file size")).unwrap_or_default();
    assert_eq!(core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(), ["0", "0"], "{core}");
    assert_eq!((ready["core_dumps_disabled"].as_bool(), ready["not_dumpable"].as_bool()), (Some(true), Some(true)));
    let privileged = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| scoped_secrets::hardening::has_ipc_lock(&status));
    if privileged {
        assert_eq!((ready["memory_locked"].as_bool(), ready["memory_lock_refused"].as_str()), (Some(true), Some("")));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let locked_kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmLck:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_default();
        assert!(locked_kib > 0, "the kernel reports locked pages: {locked_kib} kB");
    } else {
        assert_eq!(ready["memory_locked"], false);
        assert!(ready["memory_lock_refused"].as_str().is_some_and(|reason| !reason.is_empty()), "{ready}");
    }
    let found = scan_memory(pid, &needles)?;
    assert!(found.is_empty(), "still in memory after the wipe (0 canary, 1 secret key, 2 session token): {found:#?}");

    // Why upstream keep-alive is off by default: with it, the pooled connection's live buffer
    // still holds the last request's session token after the session was wiped.
    let extra = [("SCOPED_SECRETS_CACHE_TTL", "0"), ("SCOPED_SECRETS_UPSTREAM_KEEP_ALIVE", "true")];
    let (pooled, _) = stack.environment("app/canary", &extra).await?;
    pooled.invoke(json!({ "secretId": "app/canary" }), TIMEOUT).await?;
    let session = stack.proxy.assume_role_calls().pop().and_then(|c| c.credentials).expect("a session");
    let token = session.session_token.clone().unwrap_or_default();
    let found = scan_memory(pooled.extension.pid().expect("running"), &[canary.as_bytes(), &token.as_bytes()[..64]])?;
    let kinds: Vec<usize> = found.iter().map(|(index, _, _)| *index).collect();
    assert_eq!(kinds, [1], "keep-alive keeps the token in a connection buffer, and only that: {found:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_shutdown_wipe_no_canary_or_credential_remains_while_the_process_still_runs() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack.grant_revocation().await?;
    let canary = format!("canary-shutdown-{:016x}{:016x}", rand_u64(), rand_u64());
    let admin = aws_sdk_secretsmanager::Client::new(&stack.ministack.admin_config());
    admin.create_secret().name("app/canary").secret_string(&canary).send().await?;

    // Deny mode: SHUTDOWN wipes, then writes the deny to IAM while a session is still live.
    // The proxy holds that IAM call, which keeps the process alive after the wipe for the scan.
    let extra = [("SCOPED_SECRETS_REVOCATION", "deny"), ("SCOPED_SECRETS_DEADLINE_MARGIN_MS", "30000")];
    let (mut environment, _) = stack.environment("app/canary", &extra).await?;
    let invoked = environment.invoke(json!({ "secretId": "app/canary" }), TIMEOUT).await?;
    assert_eq!(invoked.payload["status"], 200);
    let session = stack.proxy.assume_role_calls().pop().and_then(|c| c.credentials).expect("a session");
    let token = session.session_token.clone().unwrap_or_default();
    let needles: [&[u8]; 3] = [canary.as_bytes(), session.secret_access_key.as_bytes(), &token.as_bytes()[..64]];
    let pid = environment.extension.pid().expect("running");
    // Control: cached (default TTL) until SHUTDOWN, and the scan finds it.
    assert!(
        scan_memory(pid, &needles[..1])?.iter().any(|(index, _, _)| *index == 0),
        "the scan finds the cached canary"
    );

    stack.proxy.faults().inject(Service::Iam, None, Fault::Hold, None);
    let shutdown = tokio::spawn(async move {
        let result = environment.shut_down().await;
        (environment, result)
    });
    tokio::time::timeout(Duration::from_secs(2), async {
        while stack.proxy.faults().held() == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("SHUTDOWN made no IAM call"))?;
    let scanning = std::time::Instant::now();
    let found = scan_memory(pid, &needles);
    let scanned_in = scanning.elapsed();
    // The scan means something only if the process was alive (not exited, not a zombie) to
    // its end: SHUTDOWN bounds the held IAM call by its deadline.
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with(['Z', 'X'])));
    stack.proxy.faults().release();
    let (environment, result) = shutdown.await?;
    assert!(alive, "the extension exited during the {scanned_in:?} scan; it proves nothing");
    let found = found?;
    assert!(found.is_empty(), "still in memory after the SHUTDOWN wipe (0 canary, 1 secret key, 2 token): {found:#?}");
    let (status, _) = result?;
    assert!(status.success(), "{status:?}");
    let report = environment.extension.output.wait_for_event("revocation_report", TIMEOUT).await?;
    assert_eq!(report["sessions_live_at_shutdown"], 1, "a live session made SHUTDOWN call IAM: {report}");
    let shutdown = environment.extension.output.wait_for_event("shutdown", TIMEOUT).await?;
    assert_eq!(shutdown["secrets_wiped"], 1, "the canary was cached until the SHUTDOWN wipe: {shutdown}");
    Ok(())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}
