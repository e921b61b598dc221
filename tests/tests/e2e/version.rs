//! Which build is running, told everywhere it can be looked up: the `ready` and `shutdown`
//! lines, each EMF document, and the user agent of every AWS call (what CloudTrail records for
//! each `AssumeRole`, secret read and IAM write), from the layer's binary.

use std::time::Duration;

use scoped_secrets::version::VERSION;
use scoped_secrets_tests::Stack;
use scoped_secrets_tests::ministack::workspace_root;
use serde_json::Value;

use super::{TIMEOUT, read};

/// The commit the layer binary should name.
#[derive(Debug)]
enum Commit {
    /// `SCOPED_SECRETS_GIT_COMMIT` as the test's environment sets it (for `layer/build.sh` too).
    Exactly(String),
    /// A git checkout: `layer/build.sh` named some commit (which one depends on when it last
    /// built the layer).
    Any,
    /// Neither (a source archive), or the variable set empty.
    None,
}

fn expected_commit() -> Commit {
    if let Ok(commit) = std::env::var("SCOPED_SECRETS_GIT_COMMIT") {
        let commit = commit.trim();
        return if commit.is_empty() { Commit::None } else { Commit::Exactly(commit.to_owned()) };
    }
    let in_git = std::process::Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .is_ok_and(|output| output.status.success());
    if in_git { Commit::Any } else { Commit::None }
}

fn is_commit(text: &str) -> bool {
    let hash = text.strip_suffix("-dirty").unwrap_or(text);
    hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_is_in_the_logs_the_metrics_and_the_user_agent_of_every_aws_call() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // Deny mode, so SHUTDOWN writes IAM too: the session is still valid at AWS (its deadline
    // is ahead) when SHUTDOWN comes right after the invocation.
    stack.grant_revocation().await?;
    let extra = [
        ("SCOPED_SECRETS_REVOCATION", "deny"),
        ("SCOPED_SECRETS_METRICS_NAMESPACE", "ScopedSecretsTest"),
        ("SCOPED_SECRETS_CACHE_TTL", "0"),
    ];
    let (mut environment, _port) = stack.environment("db=app/db", &extra).await?;
    let invoked = environment.invoke(read("db"), Duration::from_secs(30)).await?;
    assert_eq!(invoked.payload["status"], 200, "{}", invoked.payload);
    let (status, _) = environment.shut_down().await?;
    assert!(status.success());
    let output = &environment.extension.output;

    // The ready line: the crate version, and the commit the layer build had.
    let ready = output.wait_for_event("ready", TIMEOUT).await?;
    assert_eq!(ready["version"], VERSION, "{ready}");
    let commit = ready.get("git_commit").and_then(Value::as_str).map(str::to_owned);
    match expected_commit() {
        Commit::Exactly(expected) => assert_eq!(commit.as_deref(), Some(expected.as_str()), "{ready}"),
        Commit::Any => assert!(commit.as_deref().is_some_and(is_commit), "a 12-digit commit: {ready}"),
        Commit::None => assert_eq!(commit, None, "no commit, no field: {ready}"),
    }
    let described = match &commit {
        Some(commit) => format!("{VERSION}+{commit}"),
        None => VERSION.to_owned(),
    };

    // The SHUTDOWN summary.
    let summary = output.wait_for_event("shutdown", TIMEOUT).await?;
    assert_eq!(summary["version"], VERSION, "{summary}");
    assert_eq!(summary.get("git_commit").and_then(Value::as_str), commit.as_deref(), "{summary}");

    // Each EMF document: a property that no dimension and no metric names.
    let documents: Vec<Value> = output.json_lines().into_iter().filter(|l| l.get("_aws").is_some()).collect();
    assert!(!documents.is_empty(), "a metrics namespace was set");
    for document in &documents {
        assert_eq!(document["ScopedSecretsVersion"], VERSION, "{document}");
        assert_eq!(document.get("ScopedSecretsCommit").and_then(Value::as_str), commit.as_deref());
        let declared = &document["_aws"]["CloudWatchMetrics"][0];
        let named = format!("{}{}", declared["Dimensions"], declared["Metrics"]);
        assert!(!named.contains("ScopedSecretsVersion") && !named.contains("ScopedSecretsCommit"), "{declared}");
    }

    // Every AWS call's user agent ends in the app id `app/scoped-secrets#VERSION[+COMMIT]`, in
    // both headers the Rust SDK sends (CloudTrail's userAgent is the User-Agent header).
    let app_id = format!("app/scoped-secrets#{described}");
    let exchanges = stack.proxy.exchanges();
    let mut services: Vec<&str> = Vec::new();
    for exchange in &exchanges {
        for header in ["user-agent", "x-amz-user-agent"] {
            let agent = exchange.request_header(header).unwrap_or_default();
            assert!(
                agent.split(' ').any(|token| token == app_id),
                "{header} of {} {:?} names {app_id}: {agent:?}",
                exchange.method,
                exchange.target
            );
        }
        let params = exchange.form_params();
        services.push(match (exchange.target.as_deref(), params.get("Action").map(String::as_str)) {
            (Some(target), _) if target.starts_with("secretsmanager.") => "secretsmanager",
            (_, Some("AssumeRole")) => "sts",
            (_, Some("GetRolePolicy" | "PutRolePolicy" | "DeleteRolePolicy")) => "iam",
            _ => "other",
        });
    }
    if let Some(first) = exchanges.first() {
        eprintln!("user agent: {}", first.request_header("user-agent").unwrap_or_default());
    }
    for service in ["sts", "secretsmanager", "iam"] {
        assert!(services.contains(&service), "a {service} call was seen: {services:?}");
    }
    Ok(())
}
