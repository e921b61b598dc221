//! Secrets and credentials in the live extension's memory: gone once wiped, present (so the
//! scan can fail) while legitimately cached.

use scoped_secrets_tests::Stack;
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

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}
