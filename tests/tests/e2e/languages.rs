//! The example functions in Rust, Python and Node.js, each under its real runtime interface
//! client (`lambda_runtime`, `awslambdaric`, `aws-lambda-ric`), in the local Lambda environment
//! with the extension, against MiniStack: each reads an allowlisted secret by alias, by the
//! `SECRET_ID` default and by version stage, returns its digest and never the value, and gets
//! the extension's refusal for a secret outside the allowlist.

use scoped_secrets_tests::examples;
use scoped_secrets_tests::lambda::{Options, Program};
use scoped_secrets_tests::{SECRETS, Stack, sha256_hex};
use serde_json::json;

use super::{TIMEOUT, value_of};

async fn reads_through_the_extension(runtime: Program) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let options = Options { runtime, ..Options::default() };
    let (mut environment, _port) =
        stack.environment_with("db=app/db", &[("SCOPED_SECRETS_CACHE_TTL", "0"), ("SECRET_ID", "db")], options).await?;
    let digest = sha256_hex(value_of("app/db"));

    let invoked = environment.invoke(json!({"secretId": "db"}), TIMEOUT).await?;
    let output = || environment.function.as_ref().map(|f| f.output.text()).unwrap_or_default();
    assert_eq!(invoked.payload["status"], 200, "{}\n{}", invoked.payload, output());
    assert_eq!(invoked.payload["secretId"], "db");
    assert_eq!(invoked.payload["sha256"], digest.as_str());
    assert!(invoked.payload["versionId"].as_str().is_some_and(|v| !v.is_empty()), "{}", invoked.payload);
    let keys: Vec<&String> = invoked.payload.as_object().map(|o| o.keys().collect()).unwrap_or_default();
    assert_eq!(keys, ["secretId", "sha256", "status", "versionId"], "the Rust example's shape");
    let first_request = invoked.request_id;

    let invoked = environment.invoke(json!({}), TIMEOUT).await?;
    assert_eq!(invoked.payload["secretId"], "db", "SECRET_ID when the event names none");
    assert_eq!(invoked.payload["sha256"], digest.as_str());
    let invoked = environment.invoke(json!({"secretId": "db", "versionStage": "AWSCURRENT"}), TIMEOUT).await?;
    assert_eq!(invoked.payload["sha256"], digest.as_str(), "{}", invoked.payload);

    let invoked = environment.invoke(json!({"secretId": "app/api"}), TIMEOUT).await?;
    assert_eq!(invoked.payload, json!({"secretId": "app/api", "status": 403, "error": "secret_not_allowed"}));

    // The extension saw the function's token and audited each read with its invocation.
    let allows = environment.extension.output.events("allow");
    assert_eq!(allows.len(), 3, "{allows:?}");
    assert_eq!(allows[0]["request_id"], first_request.as_str());
    assert_eq!(environment.extension.output.events("deny").len(), 1);
    // No value in anything the function printed.
    let printed = output();
    for (_, value) in SECRETS {
        assert!(!printed.contains(value), "a secret value in the function's output");
    }
    let (status, _) = environment.shut_down().await?;
    assert!(status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_example_reads_through_the_extension() -> anyhow::Result<()> {
    reads_through_the_extension(examples::rust_reader()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_reads_through_the_extension_under_awslambdaric() -> anyhow::Result<()> {
    reads_through_the_extension(examples::python_reader()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_example_reads_through_the_extension_under_aws_lambda_ric() -> anyhow::Result<()> {
    reads_through_the_extension(examples::node_reader()?).await
}
