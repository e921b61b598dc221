//! The audit log's promises now that lines are written by a thread of their own (issue 16):
//! one line per decision under concurrent load, in order per client; nothing dropped when
//! stdout stalls (reads wait instead); every line out before the process exits on SHUTDOWN and
//! on SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use scoped_secrets_tests::Stack;
use scoped_secrets_tests::lambda::{Environment, Options, Output, Program, local_get};
use serde_json::json;

use super::TIMEOUT;

const TOKEN_HEADER: &str = "X-Aws-Parameters-Secrets-Token";
const HELD: Duration = Duration::from_secs(30);
const CLIENTS: usize = 8;

/// `CLIENTS` clients, each reading `reads` times one after the other: an allowed secret, the
/// same target with a wrong token (the ready path keeps the last target's parsed query: the
/// token is still checked on every request), then an id of its own that is not allowlisted (a
/// deny naming the client and the read).
async fn load(port: u16, token: &str, reads: usize) -> anyhow::Result<()> {
    let clients = (0..CLIENTS).map(|client| {
        let token = token.to_owned();
        tokio::spawn(async move {
            let header = [(TOKEN_HEADER, token.as_str())];
            for read in 0..reads {
                let (status, _) = local_get(port, "/secretsmanager/get?secretId=db", &header).await?;
                anyhow::ensure!(status == 200, "allowed read: {status}");
                let wrong = [(TOKEN_HEADER, "wrong")];
                let (status, _) = local_get(port, "/secretsmanager/get?secretId=db", &wrong).await?;
                anyhow::ensure!(status == 403, "the allowed target with a wrong token: {status}");
                let target = format!("/secretsmanager/get?secretId=unlisted-{client}-{read}");
                let (status, _) = local_get(port, &target, &header).await?;
                anyhow::ensure!(status == 403, "unlisted read: {status}");
            }
            Ok(())
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await??;
    }
    Ok(())
}

/// One allow line per allowed read (the clients' and the function's own) and one deny line per
/// refused one, no more; each client's denies in the order it made them.
fn assert_one_line_per_decision(output: &Output, reads: usize, request_id: &str) {
    let allows: Vec<_> = output.events("allow").into_iter().filter(|l| l["secret_id"] == "db").collect();
    let denies: Vec<_> = output
        .events("deny")
        .into_iter()
        .filter(|l| l["secret_id"].as_str().is_some_and(|s| s.starts_with("unlisted-")))
        .collect();
    assert_eq!((allows.len(), denies.len()), (CLIENTS * reads + 1, CLIENTS * reads), "one line per decision");
    let wrong_tokens = output.events("deny").into_iter().filter(|l| l["code"] == "invalid_token").count();
    assert_eq!(wrong_tokens, CLIENTS * reads, "every wrong token refused, the target parsed before or not");
    assert!(allows.iter().chain(&denies).all(|l| l["request_id"] == request_id), "attributed to the invocation");
    let mut next = [0; CLIENTS];
    for deny in &denies {
        let id = deny["secret_id"].as_str().unwrap_or_default();
        let mut parts = id.trim_start_matches("unlisted-").split('-').map(|n| n.parse::<usize>().unwrap_or(usize::MAX));
        let (client, read) = (parts.next().unwrap_or(usize::MAX), parts.next().unwrap_or(usize::MAX));
        assert!(client < CLIENTS, "{id}");
        assert_eq!(read, next[client], "client {client}'s lines in the order of its reads");
        next[client] += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_one_line_in_order_and_all_are_out_before_shutdown_ends() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let token = stack.token();
    let (mut environment, port) = stack.environment("db=app/db", &[]).await?;
    let output = environment.extension.output.clone();
    let (request_id, at) = environment.enqueue(json!({ "secretId": "db", "pauseMs": 2_000 }), HELD).await?;
    let reads = 40;
    load(port, &token, reads).await?;
    environment.complete(&request_id, at, HELD).await?;
    // The function's own read is one more allow line.
    output.wait_for_count("allow", CLIENTS * reads + 1, TIMEOUT).await?;
    output.wait_for_count("deny", 2 * CLIENTS * reads, TIMEOUT).await?;
    assert!(environment.shut_down().await?.0.success());
    output.wait_for_count("shutdown", 1, TIMEOUT).await?;
    let lines = output.json_lines();
    let report = lines.iter().position(|l| l["event"] == "shutdown").expect("the shutdown line");
    let last_decision = lines.iter().rposition(|l| l["event"] == "deny").expect("a deny");
    assert!(last_decision < report, "the shutdown line comes after every decision");
    assert_one_line_per_decision(&output, reads, &request_id);
    Ok(())
}

/// A log pipeline that stops reading: reads wait for room in the log instead of losing lines,
/// and every line arrives, in order, once it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_makes_reads_wait_and_loses_no_line() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let token = stack.token();
    let (mut environment, port, gate) = start_gated(&stack, "stalled").await?;
    let output = environment.extension.output.clone();
    let (request_id, at) = environment.enqueue(json!({ "secretId": "db", "pauseMs": 20_000 }), HELD).await?;
    output.wait_for_count("allow", 1, TIMEOUT).await?;

    std::fs::write(&gate, b"")?;
    // About 330 bytes a line: 8 clients × 320 reads × 3 lines is twice the queue (128 KiB) and
    // the pipe (the extension asks for 1 MiB).
    let reads = 320;
    let loading = tokio::spawn({
        let token = token.clone();
        async move { load(port, &token, reads).await }
    });
    // The reads stop making progress: the log is full and they wait for it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!loading.is_finished(), "every read was answered although nothing could take its audit line");
    let shown = output.events("deny").len();
    assert!(shown < 2 * CLIENTS * reads, "lines went past a stalled pipe: {shown}");
    std::fs::remove_file(&gate)?;
    loading.await??;
    environment.complete(&request_id, at, HELD).await?;
    output.wait_for_count("deny", 2 * CLIENTS * reads, Duration::from_secs(20)).await?;
    assert!(environment.shut_down().await?.0.success());
    output.wait_for_count("shutdown", 1, TIMEOUT).await?;
    output.wait_for_count("allow", CLIENTS * reads + 1, TIMEOUT).await?;
    assert_one_line_per_decision(&output, reads, &request_id);
    Ok(())
}

/// SIGTERM (Lambda's signal when it ends an environment without SHUTDOWN) with lines queued
/// behind a slow pipe: they are all out before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_queued_at_sigterm_are_all_written_before_exit() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let token = stack.token();
    let (mut environment, port, gate) = start_gated(&stack, "sigterm").await?;
    let output = environment.extension.output.clone();
    let (request_id, _at) = environment.enqueue(json!({ "secretId": "db", "pauseMs": 20_000 }), HELD).await?;
    output.wait_for_count("allow", 1, TIMEOUT).await?;
    // Fewer lines than the queue and the pipe hold: every read is answered while the relay
    // reads nothing, so the lines are queued when the signal comes.
    std::fs::write(&gate, b"")?;
    let reads = 20;
    load(port, &token, reads).await?;
    environment.extension.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::remove_file(&gate)?;
    let status = environment.extension.wait(Duration::from_secs(10)).await?;
    assert!(status.success(), "{status:?}\n{}", output.text());
    output.wait_for_count("shutdown", 1, TIMEOUT).await?;
    output.wait_for_count("deny", 2 * CLIENTS * reads, TIMEOUT).await?;
    output.wait_for_count("allow", CLIENTS * reads + 1, TIMEOUT).await?;
    assert_one_line_per_decision(&output, reads, &request_id);
    Ok(())
}

/// An environment whose extension's stdout goes through the gated relay, and the relay's gate
/// (absent: the relay reads; present: it stalls).
async fn start_gated(stack: &Stack, name: &str) -> anyhow::Result<(Environment, u16, PathBuf)> {
    let gate = gate_file(name)?;
    let relay = PathBuf::from(env!("CARGO_BIN_EXE_gated_relay"));
    let mut options = Options { extension: Program::extension().through(&relay), ..Options::default() };
    options.extension_env.push(("GATED_RELAY_GATE".to_owned(), gate.display().to_string()));
    let (environment, port) = stack.environment_with("db=app/db", &[], options).await?;
    Ok((environment, port, gate))
}

/// A path for the relay's gate, unique to this test run.
fn gate_file(name: &str) -> anyhow::Result<PathBuf> {
    let dir = scoped_secrets_tests::lambda::target_dir().join("tmp");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("gate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    Ok(path)
}
