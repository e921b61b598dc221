//! Parameter Store through the same scoped sessions (issue 17): the GET API of AWS's extension
//! (`/systemsmanager/parameters/get`), unchanged boto3 and JavaScript v3 code with only
//! `AWS_ENDPOINT_URL_SSM` set, references to Secrets Manager secrets, the session policy for a
//! mixed allowlist (and AWS refusing the session's own credentials outside it), the prefetch's
//! `GetParameters`, SecureString values gone from memory with their invocation, and `jsonKey`.

use std::time::{Duration, Instant};

use scoped_secrets_tests::examples;
use scoped_secrets_tests::lambda::{Environment, Options, Program, local_get, scan_memory};
use scoped_secrets_tests::ministack::{read_parameter_as, read_secret_as};
use scoped_secrets_tests::{Stack, sha256_hex};
use serde_json::{Value, json};

use super::{TIMEOUT, value_of};

const CONFIG_V1: &str = "canary-config-v1-3c1d77e0";
const CONFIG_V2: &str = "canary-config-v2-7e22a9f1";
const SECURE: &str = "canary-secure-9a0b41c6";
const UNLISTED: &str = "canary-unlisted-55ef02b8";
/// The parameters the function may read: an alias, a StringList, a SecureString, and one that
/// does not exist.
const ALLOWLIST: &str = "config=/app/config,/app/list,/app/secure,/app/missing";
const HELD: Duration = Duration::from_secs(20);

fn arn(name: &str) -> String {
    format!("arn:aws:ssm:us-east-1:123456789012:parameter/{}", name.trim_start_matches('/'))
}

/// `/app/config` (v1 labelled `old`, v2 latest), `/app/list`, `/app/secure`, `/app/unlisted`
/// (inside the scoped role's reach, outside the allowlist).
async fn put_parameters(stack: &Stack) -> anyhow::Result<()> {
    let ministack = &stack.ministack;
    ministack.put_parameter("/app/config", CONFIG_V1, "String", None, false).await?;
    ministack.put_parameter("/app/config", CONFIG_V2, "String", None, true).await?;
    ministack.label_parameter("/app/config", 1, "old").await?;
    ministack.put_parameter("/app/list", "a,b,c", "StringList", None, false).await?;
    ministack.put_parameter("/app/secure", SECURE, "SecureString", None, false).await?;
    ministack.put_parameter("/app/unlisted", UNLISTED, "String", None, false).await?;
    Ok(())
}

/// Starts an environment for `db=app/db` and [`ALLOWLIST`] and holds an invocation open, so
/// local requests run inside it. Returns the environment, its port, the held request.
async fn held(
    stack: &Stack,
    extra: &[(&str, &str)],
    options: Options,
) -> anyhow::Result<(Environment, u16, String, Instant)> {
    let mut settings = vec![("SCOPED_SECRETS_PARAMETERS", ALLOWLIST)];
    settings.extend(extra.iter().copied());
    let (environment, port) = stack.environment_with("db=app/db", &settings, options).await?;
    let (request_id, at) = environment.enqueue(json!({ "secretId": "db", "pauseMs": 8_000 }), HELD).await?;
    environment.extension.output.wait_for_event("allow", TIMEOUT).await?;
    Ok((environment, port, request_id, at))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_read_through_the_get_api_as_awss_extension_answers() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    put_parameters(&stack).await?;
    let (environment, port, request_id, at) =
        held(&stack, &[("SCOPED_SECRETS_PREFETCH", "false")], Options::default()).await?;
    let token = stack.token();
    let header = [("X-Aws-Parameters-Secrets-Token", token.as_str())];
    let get = |query: String| async move {
        local_get(port, &format!("/systemsmanager/parameters/get?{query}"), &header).await
    };

    let (status, latest) = get("name=%2Fapp%2Fconfig".into()).await?;
    assert_eq!(status, 200, "{latest}");
    let fields: Vec<&str> =
        latest["Parameter"].as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    assert_eq!(
        fields,
        ["ARN", "DataType", "LastModifiedDate", "Name", "Selector", "SourceResult", "Type", "Value", "Version"]
    );
    let parameter = &latest["Parameter"];
    assert_eq!(
        (
            parameter["Value"].as_str(),
            parameter["Type"].as_str(),
            parameter["Version"].as_i64(),
            parameter["ARN"].as_str()
        ),
        (Some(CONFIG_V2), Some("String"), Some(2), Some(arn("/app/config").as_str()))
    );
    assert!(parameter["Selector"].is_null() && parameter["SourceResult"].is_null());
    // By alias, by ARN, without the leading slash: the same parameter.
    for name in ["config", "app/config", &arn("/app/config")] {
        let (status, answer) = get(format!("name={name}")).await?;
        assert_eq!((status, answer["Parameter"]["Value"].as_str()), (200, Some(CONFIG_V2)), "{name}");
    }
    // Versions and labels, in the query or in the name.
    for query in ["name=/app/config&version=1", "name=/app/config&label=old", "name=/app/config:1", "name=config:old"] {
        let (status, answer) = get(query.into()).await?;
        assert_eq!((status, answer["Parameter"]["Value"].as_str()), (200, Some(CONFIG_V1)), "{query}: {answer}");
        assert!(answer["Parameter"]["Selector"].as_str().is_some_and(|s| s == ":1" || s == ":old"), "{answer}");
    }
    let (status, list) = get("name=/app/list".into()).await?;
    assert_eq!(
        (status, list["Parameter"]["Type"].as_str(), list["Parameter"]["Value"].as_str()),
        (200, Some("StringList"), Some("a,b,c"))
    );
    // A SecureString without withDecryption: as AWS answers it, the ciphertext, not the value.
    let (status, sealed) = get("name=/app/secure".into()).await?;
    assert_eq!((status, sealed["Parameter"]["Type"].as_str()), (200, Some("SecureString")));
    assert!(sealed["Parameter"]["Value"].as_str().is_some_and(|v| !v.is_empty() && v != SECURE), "{sealed}");
    let (status, open) = get("name=/app/secure&withDecryption=true".into()).await?;
    assert_eq!((status, open["Parameter"]["Value"].as_str()), (200, Some(SECURE)));

    // A Secrets Manager secret through the parameters path, through the secrets allowlist.
    let (status, reference) = get("name=/aws/reference/secretsmanager/app/db&withDecryption=true".into()).await?;
    assert_eq!(status, 200, "{reference}");
    let referenced = &reference["Parameter"];
    assert_eq!(
        (referenced["Type"].as_str(), referenced["Value"].as_str()),
        (Some("SecureString"), Some(value_of("app/db")))
    );
    let source: Value = serde_json::from_str(referenced["SourceResult"].as_str().unwrap_or_default())?;
    assert_eq!((source["Name"].as_str(), source["SecretString"].as_str()), (Some("app/db"), Some(value_of("app/db"))));

    let refused = [
        ("name=/app/unlisted", 403, "parameter_not_allowed"),
        ("name=/app/missing", 404, "parameter_not_found"),
        ("name=/app/config&version=9", 404, "parameter_version_not_found"),
        ("name=/app/config&version=1&label=old", 400, "conflicting_version"),
        ("name=/app/config:1&label=old", 400, "conflicting_version"),
        ("name=/aws/reference/secretsmanager/other/x&withDecryption=true", 403, "secret_not_allowed"),
        ("name=/aws/reference/secretsmanager/app/db", 400, "invalid_reference"),
        ("name=/app/config&withDecryption=maybe", 400, "invalid_with_decryption"),
        ("secretId=app/db", 400, "unknown_parameter"),
    ];
    for (query, status, code) in refused {
        let (actual, answer) = get(query.into()).await?;
        assert_eq!((actual, answer["error"].as_str()), (status, Some(code)), "{query}: {answer}");
    }
    let (status, _) = local_get(port, "/systemsmanager/parameters/get?name=/app/config", &[]).await?;
    assert_eq!(status, 401, "token-checked");
    environment.complete(&request_id, at, HELD).await?;

    // Nothing outside the allowlist was asked of AWS; everything asked was the session's.
    let names: Vec<String> = stack.proxy.ssm_calls().iter().flat_map(|c| c.parameter_names()).collect();
    assert!(!names.iter().any(|n| n.contains("unlisted")), "{names:?}");
    assert!(
        !stack.proxy.secrets_manager_calls().iter().any(|c| c.secret_ids().iter().any(|id| id.contains("other/x")))
    );
    let session = stack.proxy.assume_role_calls().pop().expect("a session");
    let key = session.credentials.as_ref().map(|c| c.access_key_id.clone());
    assert!(stack.proxy.ssm_calls().iter().all(|c| c.access_key_id == key), "only the session's credentials read");

    // The session policy names exactly the allowlisted items, and AWS holds the session's own
    // credentials to it: the scoped role could read /app/unlisted, the session cannot.
    let policy = session.policy_json().expect("a session policy");
    let statements = policy["Statement"].as_array().cloned().unwrap_or_default();
    assert_eq!(statements.len(), 3, "secrets, batch, parameters: {policy}");
    assert_eq!(
        statements[0]["Resource"],
        json!(["arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-??????"])
    );
    let resources: Vec<String> = ["/app/config", "/app/list", "/app/secure", "/app/missing"]
        .iter()
        .flat_map(|n| [arn(n), format!("{}:*", arn(n))])
        .collect();
    assert_eq!(statements[2]["Action"], json!(["ssm:GetParameter", "ssm:GetParameters"]));
    assert_eq!(statements[2]["Resource"], json!(resources));
    assert_eq!(statements[2]["Condition"], statements[0]["Condition"], "the same aws:CurrentTime bound");
    let credentials = session.credentials.clone().expect("credentials");
    let endpoint = stack.ministack.endpoint();
    assert_eq!(read_parameter_as(&endpoint, &credentials, "/app/config").await.as_deref(), Ok(CONFIG_V2));
    assert_eq!(read_parameter_as(&endpoint, &credentials, "/app/unlisted").await, Err("AccessDeniedException".into()));
    assert_eq!(read_secret_as(&endpoint, &credentials, "app/api").await, Err("AccessDeniedException".into()));
    let admin = scoped_secrets_tests::ministack::MiniStack::admin_credentials();
    assert_eq!(read_parameter_as(&endpoint, &admin, "/app/unlisted").await.as_deref(), Ok(UNLISTED), "the control");

    // Audit lines name the kind and the parameter, never a value.
    let log = &environment.extension.output;
    let allows: Vec<Value> = log.events("allow").into_iter().filter(|a| a["kind"] == "parameter").collect();
    assert_eq!(allows.len(), 11, "{allows:#?}");
    assert!(allows.iter().all(|a| a["api"] == "get" && a["request_id"] == request_id.as_str()));
    assert!(allows.iter().any(|a| a["parameter"] == "/app/secure" && a["with_decryption"] == true));
    let denies: Vec<Value> = log.events("deny");
    assert!(denies.iter().any(|d| d["kind"] == "parameter"
        && d["parameter"] == "/app/unlisted"
        && d["code"] == "parameter_not_allowed"));
    let text = log.text();
    for value in [CONFIG_V1, CONFIG_V2, SECURE, UNLISTED, value_of("app/db")] {
        assert!(!text.contains(value), "a value in the extension's output");
    }
    Ok(())
}

/// One unchanged SDK function (boto3 or JavaScript v3), only `AWS_ENDPOINT_URL_SSM` pointing its
/// SSM client here: every kind of parameter, versions and labels, a reference, a missing
/// parameter and version, `GetParameters` with a missing name and with a refused one, and a
/// write refused, each in the SDK's own exception.
async fn unchanged_ssm_code_reads_through_the_extension(runtime: Program) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    put_parameters(&stack).await?;
    let settings = [("SCOPED_SECRETS_PARAMETERS", ALLOWLIST), ("SCOPED_SECRETS_PREFETCH", "false")];
    let (mut environment, _port) =
        stack.environment_with("db=app/db", &settings, Options { runtime, ..Options::default() }).await?;
    let invoke = |event: Value| {
        let environment = &environment;
        async move { environment.invoke(event, TIMEOUT).await.map(|i| i.payload) }
    };
    let output = |environment: &Environment| environment.function.as_ref().map(|f| f.output.text()).unwrap_or_default();

    let config = invoke(json!({ "op": "param", "name": "/app/config" })).await?;
    assert_eq!(
        (config["sha256"].clone(), config["version"].clone()),
        (json!(sha256_hex(CONFIG_V2)), json!(2)),
        "{config}\n{}",
        output(&environment)
    );
    assert_eq!(invoke(json!({ "op": "param", "name": "config" })).await?["sha256"], sha256_hex(CONFIG_V2), "by alias");
    let old = invoke(json!({ "op": "param", "name": "/app/config:old" })).await?;
    assert_eq!(
        (old["sha256"].clone(), old["selector"].clone()),
        (json!(sha256_hex(CONFIG_V1)), json!(":old")),
        "{old}"
    );
    assert_eq!(invoke(json!({ "op": "param", "name": "/app/config:1" })).await?["sha256"], sha256_hex(CONFIG_V1));
    let list = invoke(json!({ "op": "param", "name": "/app/list" })).await?;
    assert_eq!((list["type"].clone(), list["sha256"].clone()), (json!("StringList"), json!(sha256_hex("a,b,c"))));
    let sealed = invoke(json!({ "op": "param", "name": "/app/secure" })).await?;
    assert_eq!(sealed["type"], "SecureString");
    assert_ne!(sealed["sha256"], sha256_hex(SECURE), "without decryption: not the value");
    let open = invoke(json!({ "op": "param", "name": "/app/secure", "decrypt": true })).await?;
    assert_eq!(open["sha256"], sha256_hex(SECURE));
    let reference =
        invoke(json!({ "op": "param", "name": "/aws/reference/secretsmanager/db", "decrypt": true })).await?;
    assert_eq!(
        (reference["type"].clone(), reference["sha256"].clone()),
        (json!("SecureString"), json!(sha256_hex(value_of("app/db")))),
        "{reference}"
    );

    for (name, decrypt, error) in [
        ("/app/unlisted", false, "AccessDeniedException"),
        ("/app/missing", false, "ParameterNotFound"),
        ("/app/config:9", false, "ParameterVersionNotFound"),
        ("/aws/reference/secretsmanager/db", false, "ValidationException"),
        ("/aws/reference/secretsmanager/other/x", true, "AccessDeniedException"),
    ] {
        let refused = invoke(json!({ "op": "param", "name": name, "decrypt": decrypt })).await?;
        assert_eq!(refused["error"], error, "{name}: {refused}");
    }
    let batch =
        invoke(json!({ "op": "params", "names": ["/app/config", "/app/list", "/app/missing"], "decrypt": true }))
            .await?;
    let found: Vec<Value> = batch["parameters"].as_array().cloned().unwrap_or_default();
    assert_eq!(found.len(), 2, "{batch}");
    assert_eq!(batch["invalid"], json!(["/app/missing"]));
    let calls_before = stack.proxy.ssm_calls().len();
    let mixed = invoke(json!({ "op": "params", "names": ["/app/config", "/app/unlisted"] })).await?;
    assert_eq!(mixed["error"], "AccessDeniedException", "one refused name refuses the call: {mixed}");
    assert_eq!(stack.proxy.ssm_calls().len(), calls_before, "and nothing is asked of AWS");
    let put = invoke(json!({ "op": "put-param", "name": "/app/config" })).await?;
    assert_eq!(put["error"], "ValidationException", "{put}");

    // The SDK went to the extension, never to AWS with the execution role: every SSM call that
    // reached the emulator was signed by a scoped session.
    let exec = stack.world.exec_credentials.access_key_id.clone();
    assert!(stack.proxy.ssm_calls().iter().all(|c| c.access_key_id.as_deref() != Some(exec.as_str())));
    assert!(stack.proxy.ssm_calls_of("PutParameter").is_empty());
    let log = &environment.extension.output;
    let lines: Vec<Value> = log.events("allow").into_iter().chain(log.events("deny")).collect();
    assert!(lines.iter().all(|l| l["api"] == "sdk"), "{lines:?}");
    let printed = format!("{}{}", output(&environment), log.text());
    for value in [CONFIG_V1, CONFIG_V2, SECURE, UNLISTED] {
        assert!(!printed.contains(value), "a value in the output");
    }
    let (status, _) = environment.shut_down().await?;
    assert!(status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_boto3_ssm_code_reads_through_the_extension() -> anyhow::Result<()> {
    unchanged_ssm_code_reads_through_the_extension(examples::python_sdk_reader()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_javascript_ssm_code_reads_through_the_extension() -> anyhow::Result<()> {
    unchanged_ssm_code_reads_through_the_extension(examples::node_sdk_reader()?).await
}

/// The INVOKE prefetch asks `GetParameters` for the allowlisted parameters, ten names a call,
/// beside the secrets' batch, all with the invocation's session. MiniStack authorises
/// `GetParameters` against `*`, so under it each call is refused whole and the prefetch asks
/// for each name on its own (as it would in AWS for a call one refused name fails); the
/// function's reads are then served from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_asks_get_parameters_ten_names_a_call_beside_the_secrets() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let names: Vec<String> = (0..11).map(|i| format!("/app/p{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        stack.ministack.put_parameter(name, &format!("prefetched-{i}"), "String", None, false).await?;
    }
    let allowlist = names.join(",");
    let (environment, port) =
        stack.environment("app/db,app/api", &[("SCOPED_SECRETS_PARAMETERS", allowlist.as_str())]).await?;
    let (request_id, at) = environment.enqueue(json!({ "secretId": "app/db", "pauseMs": 3_000 }), HELD).await?;
    stack
        .wait_until("the prefetch's GetParameter calls", |proxy| proxy.ssm_calls_of("GetParameter").len() >= 11)
        .await?;
    let token = stack.token();
    let header = [("X-Aws-Parameters-Secrets-Token", token.as_str())];
    let (status, answer) = local_get(port, "/systemsmanager/parameters/get?name=/app/p10", &header).await?;
    assert_eq!((status, answer["Parameter"]["Value"].as_str()), (200, Some("prefetched-10")));
    environment.complete(&request_id, at, HELD).await?;

    let batches = stack.proxy.ssm_calls_of("GetParameters");
    let mut sizes: Vec<usize> = batches.iter().map(|c| c.parameter_names().len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 10], "ten names a call");
    let mut asked: Vec<String> = batches.iter().flat_map(|c| c.parameter_names()).collect();
    asked.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(asked, expected);
    assert!(batches.iter().all(|c| c.request["WithDecryption"] == true));
    assert!(batches.iter().all(|c| c.error_code.as_deref() == Some("AccessDeniedException")), "MiniStack's gap");
    assert_eq!(stack.proxy.ssm_calls_of("GetParameter").len(), 11, "then one each, once");
    assert!(!stack.proxy.secrets_manager_calls_of("BatchGetSecretValue").is_empty(), "the secrets' batch too");
    let session = stack.proxy.assume_role_calls().pop().and_then(|c| c.credentials).map(|c| c.access_key_id);
    assert!(stack.proxy.ssm_calls().iter().all(|c| c.access_key_id == session), "all with the invocation's session");
    let log = &environment.extension.output;
    assert_eq!(log.events("prefetch_batch_refused").len(), 2);
    let read = log.events("allow").into_iter().find(|a| a["parameter"] == "/app/p10").expect("the read");
    assert_eq!(read["source"], "cache", "served from the prefetch");
    Ok(())
}

/// A SecureString value is a secret: with TTL 0, once its invocation has ended, neither it nor
/// the session's credentials remain in the extension's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_string_is_gone_from_memory_with_its_invocation() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let canary = format!("canary-parameter-{:x}-{nanos:x}", std::process::id());
    stack.ministack.put_parameter("/app/canary", &canary, "SecureString", None, false).await?;
    let settings = [("SCOPED_SECRETS_PARAMETERS", "/app/canary"), ("SCOPED_SECRETS_CACHE_TTL", "0")];
    let (environment, port) = stack.environment("app/db", &settings).await?;
    let (request_id, at) = environment.enqueue(json!({ "secretId": "app/db", "pauseMs": 1_500 }), HELD).await?;
    let token = stack.token();
    let header = [("X-Aws-Parameters-Secrets-Token", token.as_str())];
    let (status, answer) =
        local_get(port, "/systemsmanager/parameters/get?name=/app/canary&withDecryption=true", &header).await?;
    assert_eq!((status, answer["Parameter"]["Value"].as_str()), (200, Some(canary.as_str())));
    let pid = environment.extension.pid().expect("running");
    assert!(!scan_memory(pid, &[canary.as_bytes()])?.is_empty(), "the control: cached during its invocation");
    environment.complete(&request_id, at, HELD).await?;
    environment.extension.output.wait_for_event("invocation_ended", TIMEOUT).await?;
    let session = stack.proxy.assume_role_calls().pop().and_then(|c| c.credentials).expect("a session");
    let found = scan_memory(pid, &[canary.as_bytes(), session.secret_access_key.as_bytes()])?;
    assert!(found.is_empty(), "still in memory after the invocation (0 value, 1 secret key): {found:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_key_answers_one_field_of_a_json_secret_and_nothing_else() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let secret = r#"{"user":"app","port":5432,"opts":{"tls":true},"pass":"canary-json-pass-61e0"}"#;
    let admin = aws_sdk_secretsmanager::Client::new(&stack.ministack.admin_config());
    admin.create_secret().name("app/json").secret_string(secret).send().await?;
    let (environment, port) = stack.environment("app/json,app/db", &[]).await?;
    let (request_id, at) = environment.enqueue(json!({ "secretId": "app/db", "pauseMs": 2_000 }), HELD).await?;
    let token = stack.token();
    let header = [("X-Aws-Parameters-Secrets-Token", token.as_str())];
    for (target, expected) in [
        ("/secretsmanager/get?secretId=app/json&jsonKey=user", "app"),
        ("/secretsmanager/get?secretId=app/json&jsonKey=port", "5432"),
        ("/v1/app%2Fjson?jsonKey=opts", r#"{"tls":true}"#),
    ] {
        let (status, answer) = local_get(port, target, &header).await?;
        assert_eq!((status, answer["SecretString"].as_str()), (200, Some(expected)), "{target}");
        assert_eq!(answer["Name"], "app/json");
        assert!(!answer.to_string().contains("canary-json-pass"), "{target}: another key's value");
    }
    for (target, status, code) in [
        ("/secretsmanager/get?secretId=app/json&jsonKey=missing", 404, "json_key_not_found"),
        ("/secretsmanager/get?secretId=app/db&jsonKey=user", 400, "secret_not_json_object"),
        ("/secretsmanager/get?secretId=app/json&jsonKey=", 400, "invalid_json_key"),
    ] {
        let (actual, answer) = local_get(port, target, &header).await?;
        assert_eq!((actual, answer["error"].as_str()), (status, Some(code)), "{target}");
    }
    environment.complete(&request_id, at, HELD).await?;
    assert!(!environment.extension.output.text().contains("canary-json-pass"));
    Ok(())
}
