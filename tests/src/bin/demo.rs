//! The local demo: MiniStack with IAM enforced, the real extension and the real example function
//! in the local Lambda environment, a few invocations, the audit log, and proof that each
//! session's credentials are narrow and die with their invocation.
//!
//! Run it with `./tests/demo.sh`, which installs MiniStack and builds what it runs: this driver,
//! the extension and the Rust example, in the fast-compiling `demo` profile (Cargo.toml).

#![allow(clippy::print_stdout)] // the demo prints its story

use std::time::Duration;

use scoped_secrets_tests::Stack;
use scoped_secrets_tests::ministack::read_secret_as;
use serde_json::{Value, json};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // Deny-mode revocation: the execution role may edit the scoped role's inline policies.
    stack.grant_revocation().await?;
    println!("MiniStack (IAM enforced) on {}", stack.ministack.endpoint());
    println!("scoped role: {}", stack.world.scoped_role_arn);
    let allowlist = "db=app/db,app/api";
    println!("allowlist:   {allowlist}   (cache TTL 0: every invocation gets a fresh session)\n");
    let extra = [("SCOPED_SECRETS_CACHE_TTL", "0"), ("SCOPED_SECRETS_REVOCATION", "deny")];
    let (mut environment, _port) = stack.environment(allowlist, &extra).await?;

    let timeout = Duration::from_secs(3);
    let mut after_response = Vec::new();
    let reads = [
        json!({"secretId": "db"}),
        json!({"secretId": "app/api"}),
        json!({"secretId": "db"}),
        json!({"secretId": "other/x"}),
    ];
    for payload in reads {
        let invoked = environment.invoke(payload.clone(), timeout).await?;
        println!("invoke {payload} -> {}", invoked.payload);
        after_response.push(invoked.extension_after_response);
    }
    // More invocations, for a median of what the runtimeDone wait adds.
    for _ in 0..16 {
        after_response.push(environment.invoke(json!({"secretId": "db"}), timeout).await?.extension_after_response);
    }
    after_response.sort();
    println!(
        "\nfunction response -> extension's next /event/next (the runtimeDone wait), {} invocations: median {:.1} ms, max {:.1} ms",
        after_response.len(),
        after_response[after_response.len() / 2].as_secs_f64() * 1e3,
        after_response.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );

    let calls = stack.proxy.assume_role_calls();
    println!(
        "\nAssumeRole calls: {} for {} invocations (cache TTL 0: each invocation needs AWS once)",
        calls.len(),
        after_response.len()
    );
    if let Some(last) = calls.last() {
        println!("last session: {}", last.role_session_name.as_deref().unwrap_or_default());
        println!("its session policy: {}", last.policy.as_deref().unwrap_or_default());
        if let Some(credentials) = &last.credentials {
            let endpoint = stack.ministack.endpoint();
            for secret in ["app/db", "app/other", "other/x"] {
                let outcome = match read_secret_as(&endpoint, credentials, secret).await {
                    Ok(_) => "allowed".to_owned(),
                    Err(code) => format!("refused by AWS ({code})"),
                };
                println!("  the session's own credentials reading {secret:<10} -> {outcome}");
            }
        }
    }

    let last_credentials = calls.last().and_then(|call| call.credentials.clone());
    let (status, elapsed) = environment.shut_down().await?;
    println!("\nSHUTDOWN: extension exited with {status} after {} ms", elapsed.as_millis());
    let report = environment.extension.output.wait_for_event("revocation_report", Duration::from_secs(2)).await?;
    println!(
        "revocation: {} sessions issued, {} ended by policy, {} live at SHUTDOWN -> {}; deny write {} ms",
        report["sessions_issued"],
        report["sessions_ended_by_policy"],
        report["sessions_live_at_shutdown"],
        report["live"][0]["action"],
        report["deny"]["iam_ms"],
    );
    if let Some(credentials) = last_credentials {
        let outcome = match read_secret_as(&stack.ministack.endpoint(), &credentials, "app/db").await {
            Ok(_) => "still allowed".to_owned(),
            Err(code) => format!("refused by AWS ({code})"),
        };
        println!("the last session's credentials after SHUTDOWN, reading app/db -> {outcome}\n");
    }
    println!("Audit log (the extension's JSON lines with target \"audit\"):");
    for line in environment.extension.output.json_lines() {
        if line["target"] == "audit" || line["event"] == "ready" {
            println!("{}", compact(&line));
        }
    }
    Ok(())
}

fn compact(line: &Value) -> String {
    let mut line = line.clone();
    if let Some(object) = line.as_object_mut() {
        object.remove("target");
        object.remove("level");
    }
    line.to_string()
}
