//! The SAM template's own IAM, enforced: its roles, policies, permissions boundary, trust and
//! secrets are created in MiniStack from the template's documents (intrinsics resolved to the
//! emulator's ARNs), the extension runs with the template's environment variables, and the
//! template's Python function reads through it. Then AWS's side of least privilege is checked
//! with real credentials: what the template grants works, and nothing more does.
//!
//! One deliberate difference: Lambda assumes the execution role (`lambda.amazonaws.com`); here
//! the emulator's admin does, so that role's trust is the account's instead of the template's.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow};
use scoped_secrets_tests::aws_proxy::AwsProxy;
use scoped_secrets_tests::examples;
use scoped_secrets_tests::lambda::{Environment, Options, free_port};
use scoped_secrets_tests::ministack::{
    ACCOUNT_ID, MiniStack, REGION, StaticCredentials, read_parameter_as, read_secret_as,
};
use scoped_secrets_tests::sha256_hex;
use serde_json::{Value, json};

use super::TIMEOUT;
use crate::template::template_json;

/// Replaces `Ref`, `Fn::GetAtt … Arn` and `Fn::Sub` with the values in `names`.
fn resolve(value: &Value, names: &BTreeMap<String, String>) -> anyhow::Result<Value> {
    let lookup = |name: &str| names.get(name).cloned().ok_or_else(|| anyhow!("nothing for {name} in the test's world"));
    Ok(match value {
        Value::Object(object) if object.len() == 1 && object.contains_key("Ref") => {
            json!(lookup(object["Ref"].as_str().unwrap_or_default())?)
        }
        Value::Object(object) if object.len() == 1 && object.contains_key("Fn::GetAtt") => {
            let target = &object["Fn::GetAtt"];
            json!(lookup(&format!(
                "{}.{}",
                target[0].as_str().unwrap_or_default(),
                target[1].as_str().unwrap_or_default()
            ))?)
        }
        Value::Object(object) if object.len() == 1 && object.contains_key("Fn::Sub") => {
            let mut text = object["Fn::Sub"].as_str().context("Fn::Sub with variables")?.to_owned();
            while let Some(start) = text.find("${") {
                let end = text[start..].find('}').context("unclosed ${")? + start;
                let value = lookup(&text[start + 2..end])?;
                text.replace_range(start..=end, &value);
            }
            json!(text)
        }
        Value::Object(object) => Value::Object(
            object.iter().map(|(k, v)| Ok((k.clone(), resolve(v, names)?))).collect::<anyhow::Result<_>>()?,
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| resolve(v, names)).collect::<anyhow::Result<_>>()?),
        other => other.clone(),
    })
}

fn credentials_of(
    assumed: &aws_sdk_sts::operation::assume_role::AssumeRoleOutput,
) -> anyhow::Result<StaticCredentials> {
    let credentials = assumed.credentials().context("AssumeRole returned no credentials")?;
    Ok(StaticCredentials {
        access_key_id: credentials.access_key_id().to_owned(),
        secret_access_key: credentials.secret_access_key().to_owned(),
        session_token: Some(credentials.session_token().to_owned()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_templates_own_iam_lets_the_extension_read_the_functions_secrets_and_nothing_more() -> anyhow::Result<()> {
    let template = template_json().await?;
    let resources = &template["Resources"];
    let properties = |name: &str| resources[name]["Properties"].clone();
    let ministack = MiniStack::start().await?;
    let admin = ministack.admin_config();
    let iam = aws_sdk_iam::Client::new(&admin);
    let secrets_manager = aws_sdk_secretsmanager::Client::new(&admin);
    let endpoint = ministack.endpoint();

    // The template's secrets under their default names, and one the template knows nothing of.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    names.insert("Revocation".into(), template["Parameters"]["Revocation"]["Default"].as_str().unwrap_or("").into());
    let mut values = BTreeMap::new();
    for (logical, parameter) in [("DatabaseSecret", "DatabaseSecretName"), ("ApiKeySecret", "ApiKeySecretName")] {
        assert_eq!(properties(logical)["Name"], json!({"Ref": parameter}));
        let name = template["Parameters"][parameter]["Default"].as_str().context("default secret name")?;
        let value = format!("canary-{logical}-3f9d27e1");
        let created = secrets_manager.create_secret().name(name).secret_string(&value).send().await?;
        names.insert(logical.into(), created.arn().context("secret ARN")?.into());
        values.insert(logical, value);
    }
    let stranger =
        secrets_manager.create_secret().name("another-app/db").secret_string("canary-stranger").send().await?;
    let stranger = stranger.arn().context("secret ARN")?.to_owned();
    // The template's parameter under its default name, and one the template knows nothing of.
    names.insert("AWS::Partition".into(), "aws".into());
    names.insert("AWS::Region".into(), REGION.into());
    names.insert("AWS::AccountId".into(), ACCOUNT_ID.into());
    assert_eq!(properties("ConfigParameter")["Name"], json!({"Ref": "ConfigParameterName"}));
    let config = template["Parameters"]["ConfigParameterName"]["Default"].as_str().context("default name")?.to_owned();
    names.insert("ConfigParameterName".into(), config.clone());
    ministack.put_parameter(&config, "canary-config-5b1e07", "String", None, false).await?;
    let stranger_parameter = "/another-app/config";
    ministack.put_parameter(stranger_parameter, "canary-stranger-config", "String", None, false).await?;
    let log_groups = resources.as_object().into_iter().flatten().filter(|(_, r)| r["Type"] == "AWS::Logs::LogGroup");
    for (log_group, _) in log_groups {
        names.insert(
            format!("{log_group}.Arn"),
            format!("arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:/aws/lambda/{log_group}:*"),
        );
    }
    names.insert("ExecutionRole".into(), "ExecutionRole".into());
    names.insert("ExecutionRole.Arn".into(), format!("arn:aws:iam::{ACCOUNT_ID}:role/ExecutionRole"));
    names.insert("ScopedRole.Arn".into(), format!("arn:aws:iam::{ACCOUNT_ID}:role/ScopedRole"));

    // The boundary, then the two roles, each with exactly the template's documents.
    let boundary = resolve(&properties("ScopedRoleBoundary")["PolicyDocument"], &names)?;
    let boundary =
        iam.create_policy().policy_name("ScopedRoleBoundary").policy_document(boundary.to_string()).send().await?;
    names.insert("ScopedRoleBoundary".into(), boundary.policy().and_then(|p| p.arn()).context("policy ARN")?.into());

    let execution = properties("ExecutionRole");
    let admin_trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT_ID}:root")}, "Action": "sts:AssumeRole"}]});
    iam.create_role().role_name("ExecutionRole").assume_role_policy_document(admin_trust.to_string()).send().await?;
    let mut execution_policies: Vec<(String, Value)> = execution["Policies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (p["PolicyName"].as_str().unwrap_or_default().to_owned(), p["PolicyDocument"].clone()))
        .collect();
    for (_, policy) in resources.as_object().into_iter().flatten() {
        // The unconditional role policies: with the default Revocation=wipe, that is all of them.
        // (The tenant example's own roles are checked in template.rs.)
        if policy["Type"] == "AWS::IAM::RolePolicy"
            && policy.get("Condition").is_none()
            && policy["Properties"]["RoleName"] == json!({"Ref": "ExecutionRole"})
        {
            let properties = &policy["Properties"];
            execution_policies.push((
                properties["PolicyName"].as_str().unwrap_or_default().to_owned(),
                properties["PolicyDocument"].clone(),
            ));
        }
    }
    for (name, document) in &execution_policies {
        let document = resolve(document, &names)?;
        ministack.put_role_policy("ExecutionRole", name, &document).await?;
    }

    let scoped = properties("ScopedRole");
    let max_session = scoped["MaxSessionDuration"].as_i64().context("MaxSessionDuration")?;
    iam.create_role()
        .role_name("ScopedRole")
        .assume_role_policy_document(resolve(&scoped["AssumeRolePolicyDocument"], &names)?.to_string())
        .max_session_duration(i32::try_from(max_session)?)
        .permissions_boundary(&names["ScopedRoleBoundary"])
        .send()
        .await?;
    for policy in scoped["Policies"].as_array().into_iter().flatten() {
        let document = resolve(&policy["PolicyDocument"], &names)?;
        ministack.put_role_policy("ScopedRole", policy["PolicyName"].as_str().unwrap_or("policy"), &document).await?;
    }

    let sts = aws_sdk_sts::Client::new(&admin);
    let execution_role_arn = names["ExecutionRole.Arn"].clone();
    let exec =
        credentials_of(&sts.assume_role().role_arn(&execution_role_arn).role_session_name("lambda").send().await?)?;

    // The template's Python function with the template's extension settings.
    let proxy = AwsProxy::start(endpoint.clone()).await?;
    let variables = resolve(&template["Globals"]["Function"]["Environment"]["Variables"], &names)?;
    let mut env: Vec<(String, String)> = exec.env_vars().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    for (name, value) in variables.as_object().into_iter().flatten() {
        env.push((name.clone(), value.as_str().unwrap_or_default().to_owned()));
    }
    env.push(("AWS_ENDPOINT_URL".into(), proxy.endpoint()));
    env.push(("SCOPED_SECRETS_PORT".into(), free_port()?.to_string()));
    let options = Options { env, runtime: examples::python_reader(), ..Options::default() };
    let mut environment: Environment = match Environment::start(options).await? {
        Ok(environment) => environment,
        Err(failed) => anyhow::bail!("INIT failed: {:?}\n{}", failed.reported, failed.output.text()),
    };
    let invoked = environment.invoke(json!({}), TIMEOUT).await?;
    assert_eq!(invoked.payload["status"], 200, "{}\n{}", invoked.payload, environment.extension.output.text());
    assert_eq!(invoked.payload["sha256"], sha256_hex(&values["DatabaseSecret"]), "SECRET_ID=db from the template");
    let invoked = environment.invoke(json!({"secretId": "api-key"}), TIMEOUT).await?;
    assert_eq!(invoked.payload["sha256"], sha256_hex(&values["ApiKeySecret"]));
    let invoked = environment.invoke(json!({"secretId": stranger}), TIMEOUT).await?;
    assert_eq!(invoked.payload["error"], "secret_not_allowed");
    environment.shut_down().await?;

    // AWS's side. The execution role itself reads nothing.
    for secret in [&names["DatabaseSecret"], &stranger] {
        assert_eq!(read_secret_as(&endpoint, &exec, secret).await, Err("AccessDeniedException".into()));
    }
    assert_eq!(read_parameter_as(&endpoint, &exec, &config).await, Err("AccessDeniedException".into()));
    // A session the extension was issued reads the function's secrets, not another's.
    let issued = proxy.assume_role_calls().iter().find_map(|c| c.credentials.clone()).context("a session")?;
    assert!(read_secret_as(&endpoint, &issued, &names["DatabaseSecret"]).await.is_ok());
    assert_eq!(read_secret_as(&endpoint, &issued, &stranger).await, Err("AccessDeniedException".into()));
    // The function's code could assume the scoped role itself, without a session policy: the
    // role's own policy is then the bound, still only the function's secrets.
    let exec_sts = aws_sdk_sts::Client::new(&exec.sdk_config(&endpoint));
    let scoped_arn = names["ScopedRole.Arn"].clone();
    let direct =
        credentials_of(&exec_sts.assume_role().role_arn(&scoped_arn).role_session_name("direct").send().await?)?;
    assert_eq!(
        read_secret_as(&endpoint, &direct, &names["ApiKeySecret"]).await.as_deref(),
        Ok(values["ApiKeySecret"].as_str())
    );
    assert_eq!(read_secret_as(&endpoint, &direct, &stranger).await, Err("AccessDeniedException".into()));
    assert_eq!(read_parameter_as(&endpoint, &direct, &config).await.as_deref(), Ok("canary-config-5b1e07"));
    assert_eq!(read_parameter_as(&endpoint, &direct, stranger_parameter).await, Err("AccessDeniedException".into()));
    // Trust: only the execution role may assume the scoped role; the scoped role may not
    // chain to itself, and a session of it cannot either.
    let direct_sts = aws_sdk_sts::Client::new(&direct.sdk_config(&endpoint));
    let refused = direct_sts.assume_role().role_arn(&scoped_arn).role_session_name("again").send().await;
    assert!(refused.is_err(), "the scoped role trusts only the execution role");
    // The boundary: a policy added to the scoped role later cannot widen its reach.
    let everything = json!({"Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["secretsmanager:*", "ssm:*"], "Resource": "*"}]});
    ministack.put_role_policy("ScopedRole", "too-broad", &everything).await?;
    let widened =
        credentials_of(&exec_sts.assume_role().role_arn(&scoped_arn).role_session_name("widened").send().await?)?;
    assert_eq!(
        read_secret_as(&endpoint, &widened, &stranger).await,
        Err("AccessDeniedException".into()),
        "the permissions boundary holds"
    );
    assert_eq!(
        read_parameter_as(&endpoint, &widened, stranger_parameter).await,
        Err("AccessDeniedException".into()),
        "for parameters too"
    );
    // Control: without the boundary, the same policy would have reached it.
    iam.delete_role_permissions_boundary().role_name("ScopedRole").send().await?;
    let unbounded =
        credentials_of(&exec_sts.assume_role().role_arn(&scoped_arn).role_session_name("unbounded").send().await?)?;
    assert!(read_secret_as(&endpoint, &unbounded, &stranger).await.is_ok(), "the boundary was what refused");
    assert!(read_parameter_as(&endpoint, &unbounded, stranger_parameter).await.is_ok());
    Ok(())
}
