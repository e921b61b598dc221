//! Parameter Store in the Lambda modes (issue 17): Managed Instances' per-fetch sessions and
//! asserted request ids, and tenant isolation's `{tenant}` parameter entries.

use std::time::Duration;

use scoped_secrets_tests::Stack;
use scoped_secrets_tests::lambda::{Options, local_get};
use scoped_secrets_tests::ministack::read_parameter_as;
use serde_json::json;

use super::TIMEOUT;

const CONFIG_V1: &str = "canary-config-blue-4d2a91";
const CONFIG_V2: &str = "canary-config-red-b7e310";
const HELD: Duration = Duration::from_secs(20);

fn arn(name: &str) -> String {
    format!("arn:aws:ssm:us-east-1:123456789012:parameter/{}", name.trim_start_matches('/'))
}

/// Lambda modes with parameters: on Managed Instances concurrent reads each get a per-fetch
/// session whose policy names the parameter; in tenant isolation a `{tenant}` parameter entry
/// resolves to the platform's tenant only, and another tenant's parameter is refused locally
/// and by AWS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_follow_managed_instances_and_tenant_isolation() -> anyhow::Result<()> {
    let stack = Stack::start_with("tenants/", &[("tenants/blue/db", "canary-blue-db-0c4e")]).await?;
    let ministack = &stack.ministack;
    ministack.put_parameter("/tenants/blue/config", CONFIG_V1, "String", None, false).await?;
    ministack.put_parameter("/tenants/red/config", CONFIG_V2, "String", None, false).await?;
    let token = stack.token();

    // Managed Instances: three concurrent reads with asserted request ids, a session per fetch.
    let settings = [
        ("SCOPED_SECRETS_PARAMETERS", "/tenants/blue/config"),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "lambda-managed-instances"),
        ("SCOPED_SECRETS_CACHE_TTL", "0"),
    ];
    let mut options = Options::default();
    options.platform.managed_instances = true;
    let (mut environment, port) = stack.environment_with("tenants/blue/db", &settings, options).await?;
    let reads = (0..3).map(|i| {
        let (token, id) = (token.clone(), format!("req-{i}"));
        tokio::spawn(async move {
            let headers = [("X-Aws-Parameters-Secrets-Token", token.as_str()), ("X-Scoped-Secrets-Request-Id", &id)];
            local_get(port, "/systemsmanager/parameters/get?name=/tenants/blue/config", &headers).await
        })
    });
    for read in reads {
        let (status, answer) = read.await??;
        assert_eq!((status, answer["Parameter"]["Value"].as_str()), (200, Some(CONFIG_V1)), "{answer}");
    }
    let log = environment.extension.output.clone();
    // Each line is written before its answer, but the harness reads the pipe on its own: under
    // load the last line can reach the test's copy a moment after the answers did.
    let asserted_reads = || -> Vec<String> {
        log.events("allow")
            .iter()
            .filter(|a| a["kind"] == "parameter" && a["request_id_asserted"] == true)
            .filter_map(|a| a["request_id"].as_str().map(str::to_owned))
            .collect()
    };
    let waiting = std::time::Instant::now();
    while asserted_reads().len() < 3 && waiting.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut asserted = asserted_reads();
    asserted.sort();
    assert_eq!(asserted, ["req-0", "req-1", "req-2"]);
    let sessions = stack.proxy.assume_role_calls().len();
    let ended = log.wait_for_count("session_ended", sessions.max(1), std::time::Duration::from_secs(5)).await?;
    assert!(ended.iter().all(|e| e["reason"] == "fetch_done"), "{ended:?}");
    for call in stack.proxy.assume_role_calls() {
        let policy = call.policy_json().expect("policy");
        assert!(policy.to_string().contains(&arn("/tenants/blue/config")), "{policy}");
    }
    assert!(environment.shut_down().await?.0.success());

    // Tenant isolation: {tenant} resolves to blue; red's parameter is never asked of AWS.
    let settings = [("SCOPED_SECRETS_PARAMETERS", "config=/tenants/{tenant}/config")];
    let mut options = Options::default();
    options.platform.tenant_id = Some("blue".to_owned());
    let (environment, port) = stack.environment_with("db=tenants/{tenant}/db", &settings, options).await?;
    let (request_id, at) = environment.enqueue(json!({ "secretId": "db", "pauseMs": 3_000 }), HELD).await?;
    environment.extension.output.wait_for_event("tenant_known", TIMEOUT).await?;
    let header = [("X-Aws-Parameters-Secrets-Token", token.as_str())];
    let get = |name: &'static str| async move {
        local_get(port, &format!("/systemsmanager/parameters/get?name={name}"), &header).await
    };
    let (status, answer) = get("config").await?;
    assert_eq!((status, answer["Parameter"]["Value"].as_str()), (200, Some(CONFIG_V1)), "{answer}");
    let (status, answer) = get("/tenants/red/config").await?;
    assert_eq!((status, answer["error"].as_str()), (403, Some("parameter_not_allowed")));
    environment.complete(&request_id, at, HELD).await?;
    assert!(!stack.proxy.ssm_calls().iter().any(|c| c.parameter_names().iter().any(|n| n.contains("red"))));
    let session = stack.proxy.assume_role_calls().pop().expect("a session");
    let statements = session.policy_json().expect("policy")["Statement"].clone();
    let parameters = statements.as_array().into_iter().flatten().find(|s| s["Sid"] == "ReadAllowlistedParameters");
    let blue = arn("/tenants/blue/config");
    assert_eq!(parameters.map(|s| s["Resource"].clone()), Some(json!([blue, format!("{blue}:*")])));
    let credentials = session.credentials.expect("credentials");
    let endpoint = stack.ministack.endpoint();
    let red = read_parameter_as(&endpoint, &credentials, "/tenants/red/config").await;
    assert_eq!(red, Err("AccessDeniedException".into()), "the scoped role reaches red; the session does not");
    Ok(())
}
