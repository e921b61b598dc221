//! The SAM template (`template.yaml`) as a user deploys it: cfn-lint and `sam validate` accept
//! it, `sam build` builds both layers and the script functions through their Makefiles, and its
//! IAM has the shape the README promises (the execution role can do nothing with Secrets
//! Manager; the scoped role reaches only the functions' secrets, bounded the same way, and
//! trusts only the execution role).
//!
//! The SAM tools (PyPI `aws-sam-cli`, `cfn-lint`) are installed by `tests/prepare.sh` into
//! `target/sam-venv`. They run offline: telemetry off, and every proxy variable pointing at a
//! closed loopback port, so any call they tried to make outside would fail at once, here.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use scoped_secrets_tests::lambda::target_dir;
use scoped_secrets_tests::ministack::workspace_root;
use serde_json::{Value, json};

/// Bound on one SAM or cfn-lint run: they answer in seconds; a hang fails the test.
const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

fn sam_tool(name: &str) -> PathBuf {
    workspace_root().join("target/sam-venv/bin").join(name)
}

/// Runs a SAM-venv tool in the workspace root, offline. Returns (exit code, stdout + stderr).
async fn run_tool(name: &str, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let program = sam_tool(name);
    if !program.is_file() {
        bail!("{} is missing: ./tests/prepare.sh installs aws-sam-cli and cfn-lint", program.display());
    }
    let mut command = tokio::process::Command::new(&program);
    command.args(args).current_dir(workspace_root()).stdin(Stdio::null()).kill_on_drop(true);
    // What cargo sets for this test process is not for the tools (nor the cargo that
    // `sam build` runs through the layer Makefile).
    for (key, _) in std::env::vars() {
        if key == "CARGO" || (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR") {
            command.env_remove(key);
        }
    }
    for proxy in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        command.env(proxy, "http://127.0.0.1:9");
    }
    command
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("SAM_CLI_TELEMETRY", "0")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let output = tokio::time::timeout(TOOL_TIMEOUT, command.output())
        .await
        .with_context(|| format!("{name} {args:?} did not finish within {TOOL_TIMEOUT:?}"))??;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok((output.status.code(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sam_template_passes_cfn_lint_and_sam_validate() -> anyhow::Result<()> {
    // Informational checks included: every stateful resource says what deletion does.
    let (code, output) = run_tool("cfn-lint", &["--include-checks", "I", "--", "template.yaml"]).await?;
    assert_eq!(code, Some(0), "cfn-lint:\n{output}");
    let (code, output) =
        run_tool("sam", &["validate", "--region", "us-east-1", "--template-file", "template.yaml"]).await?;
    assert_eq!(code, Some(0), "sam validate:\n{output}");
    assert!(output.contains("is a valid SAM Template"), "{output}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sam_build_builds_both_layers_and_the_script_functions_through_their_makefiles() -> anyhow::Result<()> {
    let binary = |triple: &str| target_dir().join(triple).join("release").join("scoped-secrets");
    let layers = [
        ("x86_64", "ScopedSecretsLayerX86", "PythonReaderFunction", "app.py", "examples/python-reader/app.py", false),
        ("arm64", "ScopedSecretsLayerArm64", "NodeReaderFunction", "index.mjs", "examples/node-reader/index.mjs", true),
    ];
    for (arch, layer, function, file, source, in_source) in layers {
        let triple = if arch == "arm64" { "aarch64-unknown-linux-musl" } else { "x86_64-unknown-linux-musl" };
        let before = std::fs::metadata(binary(triple)).and_then(|m| m.modified()).ok();
        let build_dir = target_dir().join(format!("sam-build-{arch}-{}", std::process::id()));
        let build_dir_arg = build_dir.display().to_string();
        let overrides = format!("Architecture={arch}");
        // A function and, with it, the layer version of its architecture. One run in SAM's
        // scratch copy, one in the source tree: the Makefile finds layer/build.sh either way.
        let mut args = vec!["build", function, "--template-file", "template.yaml", "--build-dir", &build_dir_arg];
        if in_source {
            args.push("--build-in-source");
        }
        args.extend(["--parameter-overrides", &overrides]);
        let (code, output) = run_tool("sam", &args).await?;
        assert_eq!(code, Some(0), "sam build {function} ({arch}):\n{output}");

        let built = build_dir.join(layer).join("extensions/scoped-secrets");
        assert_executable(&built)?;
        assert_eq!(std::fs::read(&built)?, std::fs::read(binary(triple))?, "{layer}: the layer build's binary");
        let wrapper = build_dir.join(layer).join("scoped-secrets-wrapper");
        assert_executable(&wrapper)?;
        assert_eq!(
            std::fs::read(&wrapper)?,
            std::fs::read(workspace_root().join("layer/scoped-secrets-wrapper"))?,
            "{layer}: the wrapper at the layer's root"
        );
        assert_eq!(
            std::fs::read(build_dir.join(function).join(file))?,
            std::fs::read(workspace_root().join(source))?,
            "{function}: its one file"
        );
        let after = std::fs::metadata(binary(triple)).and_then(|m| m.modified()).ok();
        assert_eq!(
            before, after,
            "{arch}: sam build rebuilt the extension instead of reusing layer/build.sh's build; its \
             environment changed a fingerprint"
        );
        std::fs::remove_dir_all(&build_dir)?;
    }
    Ok(())
}

fn assert_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).with_context(|| path.display().to_string())?.permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "{} is executable", path.display());
    Ok(())
}

/// The template as JSON, intrinsic functions in their long form (`{"Ref": …}`), decoded by
/// cfn-lint's own YAML reader.
pub(crate) async fn template_json() -> anyhow::Result<Value> {
    let script = "import json, sys\n\
                  from cfnlint.decode import decode\n\
                  template, problems = decode(sys.argv[1])\n\
                  assert not problems, problems\n\
                  print(json.dumps(template))";
    let (code, output) = run_tool("python", &["-c", script, "template.yaml"]).await?;
    anyhow::ensure!(code == Some(0), "decoding template.yaml:\n{output}");
    Ok(serde_json::from_str(&output)?)
}

fn get_att(resource: &str) -> Value {
    json!({"Fn::GetAtt": [resource, "Arn"]})
}

fn reference(resource: &str) -> Value {
    json!({"Ref": resource})
}

/// Every `(Action, Resource)` pair a policy document allows; fails on anything but plain
/// `Allow` statements.
fn allowed(document: &Value) -> Vec<(String, Value)> {
    let mut pairs = Vec::new();
    for statement in document["Statement"].as_array().into_iter().flatten() {
        assert_eq!(statement["Effect"], "Allow", "{statement}");
        assert!(statement.get("NotAction").is_none() && statement.get("NotResource").is_none(), "{statement}");
        let actions = match &statement["Action"] {
            Value::Array(actions) => actions.clone(),
            action => vec![action.clone()],
        };
        // Resources as a set: their order means nothing to IAM.
        let mut resource = statement["Resource"].clone();
        if let Value::Array(resources) = &mut resource {
            resources.sort_by_key(Value::to_string);
        }
        for action in actions {
            pairs.push((action.as_str().unwrap_or_default().to_owned(), resource.clone()));
        }
    }
    pairs
}

fn resources_of_type<'a>(template: &'a Value, kind: &str) -> Vec<(&'a String, &'a Value)> {
    template["Resources"].as_object().into_iter().flatten().filter(|(_, r)| r["Type"] == kind).collect()
}

/// The resources of `kind` but the tenant-isolation example's own (`Tenant*`, checked apart).
fn shared_resources_of_type<'a>(template: &'a Value, kind: &str) -> Vec<(&'a String, &'a Value)> {
    resources_of_type(template, kind).into_iter().filter(|(name, _)| !name.starts_with("Tenant")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sam_template_grants_least_privilege() -> anyhow::Result<()> {
    let template = template_json().await?;
    let resources = &template["Resources"];
    let roles: Vec<&String> = resources_of_type(&template, "AWS::IAM::Role").into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        roles,
        ["ExecutionRole", "ScopedRole", "TenantExecutionRole", "TenantScopedRole"],
        "a pair for the examples, a pair for the tenant example, no role made by SAM"
    );
    assert!(resources_of_type(&template, "AWS::IAM::Policy").is_empty(), "no policy attached elsewhere");
    // Sorted, as `allowed` sorts resources (resources_of_type lists them by name).
    let secrets: Vec<Value> =
        resources_of_type(&template, "AWS::SecretsManager::Secret").into_iter().map(|(n, _)| reference(n)).collect();
    assert_eq!(secrets.len(), 2);

    // The execution role: its own log streams and AssumeRole on the scoped role, nothing else.
    let execution = &resources["ExecutionRole"]["Properties"];
    assert!(execution.get("ManagedPolicyArns").is_none(), "no managed policy (AWSLambdaBasicExecutionRole is on *)");
    let mut execution_allows: Vec<(String, Value)> =
        execution["Policies"].as_array().into_iter().flatten().flat_map(|p| allowed(&p["PolicyDocument"])).collect();
    let mut revocation_allows = Vec::new();
    for (name, policy) in shared_resources_of_type(&template, "AWS::IAM::RolePolicy") {
        assert_eq!(policy["Properties"]["RoleName"], reference("ExecutionRole"), "{name}");
        let allows = allowed(&policy["Properties"]["PolicyDocument"]);
        match policy.get("Condition") {
            None => execution_allows.extend(allows),
            // Deny revocation (opt-in) writes the one inline policy on the scoped role.
            Some(condition) => {
                assert_eq!(condition, "UsesDenyRevocation", "{name}");
                revocation_allows.extend(allows);
            }
        }
    }
    let iam_actions = ["iam:GetRolePolicy", "iam:PutRolePolicy", "iam:DeleteRolePolicy"];
    assert_eq!(
        revocation_allows,
        iam_actions.iter().map(|a| ((*a).to_owned(), get_att("ScopedRole"))).collect::<Vec<_>>(),
        "only with Revocation=deny, and only on the scoped role"
    );
    let mut log_groups: Vec<Value> =
        shared_resources_of_type(&template, "AWS::Logs::LogGroup").into_iter().map(|(n, _)| get_att(n)).collect();
    log_groups.sort_by_key(Value::to_string);
    let functions = shared_resources_of_type(&template, "AWS::Serverless::Function").len();
    assert_eq!(log_groups.len(), functions, "one per function");
    for (action, resource) in &execution_allows {
        match action.as_str() {
            "logs:CreateLogStream" | "logs:PutLogEvents" => {
                assert_eq!(resource, &json!(log_groups), "{action}: the functions' own log groups");
            }
            "sts:AssumeRole" => assert_eq!(resource, &get_att("ScopedRole"), "{action}"),
            other => panic!("the execution role may not {other} (on {resource})"),
        }
    }
    assert!(execution_allows.iter().any(|(a, _)| a == "sts:AssumeRole"));
    assert_eq!(
        execution["AssumeRolePolicyDocument"]["Statement"][0]["Principal"],
        json!({"Service": "lambda.amazonaws.com"})
    );

    // The scoped role: the functions' secrets only, the same in its boundary, trusting only
    // the execution role, for the shortest session IAM allows a role to be configured with.
    let scoped = &resources["ScopedRole"]["Properties"];
    assert_eq!(scoped["MaxSessionDuration"], 3600);
    assert!(scoped.get("ManagedPolicyArns").is_none());
    let trust = scoped["AssumeRolePolicyDocument"]["Statement"].as_array().context("trust statements")?;
    assert_eq!(trust.len(), 1, "{trust:?}");
    assert_eq!(trust[0]["Effect"], "Allow");
    assert_eq!(trust[0]["Principal"], json!({"AWS": get_att("ExecutionRole")}));
    assert_eq!(trust[0]["Action"], "sts:AssumeRole", "no TagSession or SetSourceIdentity: the extension uses neither");
    // The example parameter: its exact ARN, and ARN:* for its :version and :label reads.
    let parameter = "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${ConfigParameterName}";
    let mut parameters = vec![json!({"Fn::Sub": parameter}), json!({"Fn::Sub": format!("{parameter}:*")})];
    parameters.sort_by_key(Value::to_string);
    assert_eq!(resources["ConfigParameter"]["Properties"]["Name"], reference("ConfigParameterName"));
    assert_eq!(resources["ConfigParameter"]["Properties"]["Type"], "String");
    let expected = vec![
        ("secretsmanager:GetSecretValue".to_owned(), json!(secrets)),
        ("secretsmanager:BatchGetSecretValue".to_owned(), json!("*")),
        ("ssm:GetParameter".to_owned(), json!(parameters)),
        ("ssm:GetParameters".to_owned(), json!(parameters)),
    ];
    let policies = scoped["Policies"].as_array().context("scoped role policies")?;
    assert_eq!(policies.len(), 1);
    assert_eq!(allowed(&policies[0]["PolicyDocument"]), expected, "the scoped role's policy");
    assert_eq!(scoped["PermissionsBoundary"], reference("ScopedRoleBoundary"));
    let boundary = &resources["ScopedRoleBoundary"];
    assert_eq!(boundary["Type"], "AWS::IAM::ManagedPolicy");
    assert_eq!(allowed(&boundary["Properties"]["PolicyDocument"]), expected, "the boundary has the same reach");

    // Every function runs as the execution role, with the layer and the extension's settings.
    let globals = &template["Globals"]["Function"];
    let variables = &globals["Environment"]["Variables"];
    assert_eq!(variables["SCOPED_SECRETS_ROLE_ARN"], get_att("ScopedRole"));
    assert_eq!(variables["AWS_LAMBDA_EXEC_WRAPPER"], "/opt/scoped-secrets-wrapper", "every function through the proxy");
    let allowlist = variables["SCOPED_SECRETS_SECRETS"]["Fn::Sub"].as_str().context("allowlist")?;
    for secret in &secrets {
        let name = secret["Ref"].as_str().unwrap_or_default();
        assert!(allowlist.contains(&format!("${{{name}}}")), "{name} in {allowlist}");
    }
    assert_eq!(
        globals["Layers"],
        json!([{"Fn::If": ["IsArm64", reference("ScopedSecretsLayerArm64"), reference("ScopedSecretsLayerX86")]}])
    );
    let functions = shared_resources_of_type(&template, "AWS::Serverless::Function");
    let mut runtimes: Vec<&str> = functions.iter().filter_map(|(_, f)| f["Properties"]["Runtime"].as_str()).collect();
    runtimes.sort_unstable();
    assert_eq!(
        runtimes,
        ["nodejs22.x", "nodejs22.x", "provided.al2023", "python3.13", "python3.13"],
        "Rust, Python and Node.js, and the two SDK examples"
    );
    let endpoint = "http://127.0.0.1:2773";
    assert_eq!(
        resources["PythonSdkReaderFunction"]["Properties"]["Environment"]["Variables"],
        json!({
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint,
            "AWS_ENDPOINT_URL_SSM": endpoint,
            "SCOPED_SECRETS_PARAMETERS": {"Fn::Sub": "config=${ConfigParameterName}"},
        }),
        "the boto3 example reads the parameter too"
    );
    assert_eq!(
        resources["NodeSdkReaderFunction"]["Properties"]["Environment"]["Variables"],
        json!({"AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint})
    );
    for (name, function) in &functions {
        assert_eq!(function["Properties"]["Role"], get_att("ExecutionRole"), "{name}");
        assert!(function["Properties"].get("Policies").is_none(), "{name}: no SAM policy templates");
        let output = format!("{name}Name");
        assert_eq!(template["Outputs"][&output]["Value"], reference(name), "Outputs.{output}");
    }

    // One layer version per architecture, built by layer/Makefile.
    for (layer, arch) in [("ScopedSecretsLayerX86", "x86_64"), ("ScopedSecretsLayerArm64", "arm64")] {
        let resource = &resources[layer];
        assert_eq!(resource["Type"], "AWS::Serverless::LayerVersion");
        assert_eq!(resource["Properties"]["CompatibleArchitectures"], json!([arch]));
        assert_eq!(resource["Properties"]["ContentUri"], "layer/");
        assert_eq!(resource["Metadata"], json!({"BuildMethod": "makefile", "BuildArchitecture": arch}));
    }
    assert_eq!(template["Outputs"]["LayerArnX86"]["Value"], reference("ScopedSecretsLayerX86"));
    assert_eq!(template["Outputs"]["LayerArnArm64"]["Value"], reference("ScopedSecretsLayerArm64"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_example_has_its_own_roles_and_a_tenant_scoped_allowlist() -> anyhow::Result<()> {
    let template = template_json().await?;
    let resources = &template["Resources"];
    let function = &resources["TenantReaderFunction"]["Properties"];
    assert_eq!(function["TenancyConfig"], json!({"TenantIsolationMode": "PER_TENANT"}));
    assert_eq!(function["Role"], get_att("TenantExecutionRole"));
    let variables = &function["Environment"]["Variables"];
    assert_eq!(variables["SCOPED_SECRETS_ROLE_ARN"], get_att("TenantScopedRole"));
    assert_eq!(variables["SCOPED_SECRETS_SECRETS"], json!({"Fn::Sub": "db=${TenantSecretPrefix}/{tenant}/db"}));
    assert_eq!(template["Outputs"]["TenantReaderFunctionName"]["Value"], reference("TenantReaderFunction"));

    // Its execution role: its own log group and AssumeRole on its own scoped role.
    let mut allows: Vec<(String, Value)> = resources["TenantExecutionRole"]["Properties"]["Policies"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| allowed(&p["PolicyDocument"]))
        .collect();
    let mut revocation = Vec::new();
    for (name, policy) in resources_of_type(&template, "AWS::IAM::RolePolicy") {
        if policy["Properties"]["RoleName"] != reference("TenantExecutionRole") {
            continue;
        }
        match policy.get("Condition") {
            None => allows.extend(allowed(&policy["Properties"]["PolicyDocument"])),
            Some(condition) => {
                assert_eq!(condition, "UsesDenyRevocation", "{name}");
                revocation.extend(allowed(&policy["Properties"]["PolicyDocument"]));
            }
        }
    }
    allows.sort_by_key(|(action, _)| action.clone());
    assert_eq!(
        allows,
        [
            ("logs:CreateLogStream".to_owned(), json!([get_att("TenantReaderLogs")])),
            ("logs:PutLogEvents".to_owned(), json!([get_att("TenantReaderLogs")])),
            ("sts:AssumeRole".to_owned(), get_att("TenantScopedRole")),
        ]
    );
    assert!(
        revocation
            .iter()
            .all(|(action, resource)| action.starts_with("iam:") && *resource == get_att("TenantScopedRole"))
    );

    // Its scoped role: every tenant's secret under the prefix (the outer bound; each session
    // narrows to one tenant), the same in its boundary, trusting only its execution role.
    let scoped = &resources["TenantScopedRole"]["Properties"];
    let trust = scoped["AssumeRolePolicyDocument"]["Statement"].as_array().context("trust statements")?;
    assert_eq!(trust.len(), 1);
    assert_eq!(trust[0]["Principal"], json!({"AWS": get_att("TenantExecutionRole")}));
    let expected = vec![
        (
            "secretsmanager:GetSecretValue".to_owned(),
            json!({"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${TenantSecretPrefix}/*"}),
        ),
        ("secretsmanager:BatchGetSecretValue".to_owned(), json!("*")),
    ];
    let policies = scoped["Policies"].as_array().context("scoped role policies")?;
    assert_eq!(policies.len(), 1);
    assert_eq!(allowed(&policies[0]["PolicyDocument"]), expected);
    assert_eq!(scoped["PermissionsBoundary"], reference("TenantScopedRoleBoundary"));
    assert_eq!(allowed(&resources["TenantScopedRoleBoundary"]["Properties"]["PolicyDocument"]), expected);

    // The allowlist as the extension parses it: one tenant-scoped entry, within AWS's limits
    // for the longest tenant id.
    let role = scoped_secrets::domain::arn::RoleArn::parse("arn:aws:iam::123456789012:role/TenantScopedRole")
        .map_err(|e| anyhow::anyhow!(e))?;
    let list = scoped_secrets::config::allowlist::Allowlist::parse(
        "db=scoped-secrets-example/tenants/{tenant}/db",
        &role,
        "us-east-1",
    )?;
    assert!(list.has_tenant_entries());
    assert!(scoped_secrets::policy::check_fits(&list).is_ok());
    Ok(())
}

/// `sam publish` reads `AWS::ServerlessRepo::Application`: its SemanticVersion is the version the
/// binary reports (`scoped_secrets::version::VERSION`, the crate version), and each field has
/// the shape the Serverless Application Repository accepts, so publishing fails on nothing here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serverless_repo_metadata_names_the_crate_version_and_publishable_fields() -> anyhow::Result<()> {
    let template = template_json().await?;
    let application = &template["Metadata"]["AWS::ServerlessRepo::Application"];
    assert_eq!(
        application["SemanticVersion"],
        scoped_secrets::version::VERSION,
        "template.yaml vs extension/Cargo.toml"
    );
    let text = |field: &str| application[field].as_str().unwrap_or_else(|| panic!("{field} is missing"));
    assert_eq!(text("Name"), "scoped-secrets");
    assert!(text("Name").bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let author = text("Author");
    assert!(
        author.len() <= 127
            && author.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !author.starts_with('-')
            && !author.ends_with('-')
            && !author.contains("--"),
        "SAR's Author pattern: {author}"
    );
    assert!((1..=256).contains(&text("Description").len()), "SAR's Description limit");
    assert_eq!(text("SpdxLicenseId"), "Apache-2.0", "the workspace's license");
    for file in ["LicenseUrl", "ReadmeUrl"] {
        assert!(workspace_root().join(text(file)).is_file(), "{file}: {} is a file sam package uploads", text(file));
    }
    assert!(
        std::fs::read_to_string(workspace_root().join(text("LicenseUrl")))?.contains("Apache License\n"),
        "LicenseUrl holds the Apache License"
    );
    for url in ["HomePageUrl", "SourceCodeUrl"] {
        assert!(text(url).starts_with("https://"), "{url}");
    }
    let labels: Vec<&str> = application["Labels"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!((1..=10).contains(&labels.len()), "SAR takes up to 10 labels: {labels:?}");
    for label in labels {
        assert!(
            label.len() <= 127 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-_:/@".contains(&b)),
            "SAR's label pattern: {label}"
        );
    }
    Ok(())
}
