//! Configuration: every default, range and rejection, table-driven.

use super::*;

fn base() -> Vec<(&'static str, &'static str)> {
    vec![
        (var::ROLE_ARN, "arn:aws:iam::123456789012:role/app-secrets"),
        (var::SECRETS, "db=app/db,app/api"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
        ("AWS_SESSION_TOKEN", "token-value"),
    ]
}

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Result<Config, ConfigError> {
    let mut pairs: Vec<(&str, &str)> = base();
    for (k, v) in extra {
        pairs.retain(|(name, _)| name != k);
        pairs.push((k, v));
    }
    Config::from_env(&Env::from_pairs(pairs))
}

#[test]
fn defaults_apply_when_only_the_required_variables_are_set() {
    let config = with(&[]).expect("base configuration is valid");
    assert_eq!(config.port, 2773);
    assert_eq!(config.cache_ttl, Duration::from_secs(300));
    assert!(config.prefetch);
    assert_eq!(config.session_duration, Duration::from_secs(900));
    assert_eq!(config.deadline_margin, Duration::from_millis(2_000));
    assert_eq!(config.request_wait_timeout, Duration::from_millis(5_000));
    assert_eq!(config.initialization_type, InitializationType::OnDemand);
    assert_eq!(config.end_of_invocation, EndOfInvocation::Auto);
    assert_eq!(config.runtime_proxy_port, Some(DEFAULT_RUNTIME_PROXY_PORT));
    assert_eq!(config.credential_window, Some(Duration::from_secs(60)));
    assert_eq!(config.revocation, RevocationMode::Wipe);
    assert_eq!(config.revocation_policy_budget, 4_096);
    assert_eq!(config.metrics_namespace.as_deref(), Some("ScopedSecrets"));
    assert_eq!(config.endpoints, AwsEndpoints::default());
    assert_eq!(config.allowlist.len(), 2);
}

#[test]
fn either_list_may_be_empty_but_not_both() {
    let only_parameters = with(&[(var::SECRETS, ""), (var::PARAMETERS, "config=/app/config")]).expect("valid");
    assert_eq!(only_parameters.allowlist.find_parameter("config"), Some(0));
    let both = with(&[(var::PARAMETERS, "/app/config")]).expect("valid");
    assert_eq!((both.allowlist.len(), both.allowlist.find_parameter("/app/config")), (3, Some(2)));
    let neither = with(&[(var::SECRETS, "")]).expect_err("nothing to serve");
    assert!(neither.to_string().contains(var::PARAMETERS), "{neither}");
    // The SSM endpoint follows AWS_ENDPOINT_URL only: AWS_ENDPOINT_URL_SSM points the function here.
    let endpoints =
        with(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"), ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:2773")])
            .expect("valid")
            .endpoints;
    assert_eq!(endpoints.ssm.as_deref(), Some("http://127.0.0.1:4566"));
}

#[test]
fn each_rejection_names_its_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[(var::ROLE_ARN, "")], var::ROLE_ARN),
        (&[(var::ROLE_ARN, "not-an-arn")], var::ROLE_ARN),
        (&[(var::ROLE_ARN, "arn:aws:iam::12345:role/x")], var::ROLE_ARN),
        (&[(var::ROLE_ARN, "arn:aws:iam::123456789012:user/x")], var::ROLE_ARN),
        (&[(var::ROLE_ARN, "arn:aws:s3::123456789012:role/x")], var::ROLE_ARN),
        (&[(var::ROLE_ARN, "arn:evil:iam::123456789012:role/x")], var::ROLE_ARN),
        (&[(var::ROLE_ARN, "arn:aws:iam::123456789012:role/")], var::ROLE_ARN),
        (&[(var::ROLE_ARN, "arn:aws:iam::123456789012:role/a*b")], var::ROLE_ARN),
        (&[(var::SECRETS, "")], var::SECRETS),
        (&[(var::SECRETS, ""), (var::PARAMETERS, " , ")], var::SECRETS),
        (&[(var::PARAMETERS, "/app/*")], var::PARAMETERS),
        (&[(var::PARAMETERS, "app/db")], var::PARAMETERS),
        (&[(var::SECRETS, "app/*")], var::SECRETS),
        (&[(var::PORT, "0")], var::PORT),
        (&[(var::PORT, "65536")], var::PORT),
        (&[(var::PORT, "http")], var::PORT),
        (&[(var::PORT, "-1")], var::PORT),
        (&[(var::CACHE_TTL, "86401")], var::CACHE_TTL),
        (&[(var::CACHE_TTL, "1.5")], var::CACHE_TTL),
        (&[(var::PREFETCH, "maybe")], var::PREFETCH),
        (&[(var::SESSION_DURATION, "899")], var::SESSION_DURATION),
        (&[(var::SESSION_DURATION, "3601")], var::SESSION_DURATION),
        (&[(var::DEADLINE_MARGIN_MS, "60001")], var::DEADLINE_MARGIN_MS),
        (&[(var::REQUEST_WAIT_TIMEOUT_MS, "0")], var::REQUEST_WAIT_TIMEOUT_MS),
        (&[(var::UPSTREAM_TIMEOUT_MS, "99")], var::UPSTREAM_TIMEOUT_MS),
        (&[(var::MAX_CONNECTIONS, "0")], var::MAX_CONNECTIONS),
        (&[(var::INIT_BUDGET_MS, "999")], var::INIT_BUDGET_MS),
        (&[(var::END_OF_INVOCATION, "never")], var::END_OF_INVOCATION),
        (&[(var::RUNTIME_PROXY_PORT, "9001x")], var::RUNTIME_PROXY_PORT),
        (&[(var::RUNTIME_PROXY_PORT, "1023")], var::RUNTIME_PROXY_PORT),
        (&[(var::RUNTIME_PROXY_PORT, "65536")], var::RUNTIME_PROXY_PORT),
        (&[(var::RUNTIME_PROXY_PORT, "2773")], var::RUNTIME_PROXY_PORT),
        (&[(var::PORT, "2774")], var::RUNTIME_PROXY_PORT),
        (&[(var::CREDENTIAL_WINDOW, "3601")], var::CREDENTIAL_WINDOW),
        (&[(var::REVOCATION, "revoke")], var::REVOCATION),
        (&[(var::REVOCATION_POLICY_BUDGET, "511")], var::REVOCATION_POLICY_BUDGET),
        (&[(var::REVOCATION_POLICY_BUDGET, "10241")], var::REVOCATION_POLICY_BUDGET),
        (&[(var::METRICS_NAMESPACE, "bad namespace")], var::METRICS_NAMESPACE),
        (&[(var::UPSTREAM_KEEP_ALIVE, "sometimes")], var::UPSTREAM_KEEP_ALIVE),
        (&[(var::KMS_KEYS, "alias/orders")], var::KMS_KEYS),
        (&[(var::KMS_KEYS, "arn:aws:kms:us-east-1:123456789012:alias/orders")], var::KMS_KEYS),
        (
            &[(var::KMS_KEYS, "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab")],
            var::KMS_KEYS,
        ),
        (
            &[(var::KMS_KEYS, "arn:aws-cn:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab")],
            var::KMS_KEYS,
        ),
        (&[(var::KMS_KEYS, "arn:aws:kms:us-east-1:123456789012:key/*")], var::KMS_KEYS),
        (&[(var::KMS_KEYS, "1234abcd-12ab-34cd-56ef-1234567890a?")], var::KMS_KEYS),
        (&[("AWS_REGION", "")], "AWS_REGION"),
        (&[("AWS_REGION", "us east")], "AWS_REGION"),
        (&[("AWS_LAMBDA_RUNTIME_API", "")], "AWS_LAMBDA_RUNTIME_API"),
        (&[("AWS_SESSION_TOKEN", "")], "AWS_SESSION_TOKEN"),
        (&[("AWS_ENDPOINT_URL", "127.0.0.1:4566")], "AWS_ENDPOINT_URL"),
        (&[("AWS_ENDPOINT_URL", "http://127.0.0.1:2773")], "AWS_ENDPOINT_URL"),
        (&[("AWS_ENDPOINT_URL_STS", "http://localhost:2773/")], "AWS_ENDPOINT_URL_STS"),
    ];
    for (extra, variable) in cases {
        let error = with(extra).expect_err(&format!("{extra:?} must be rejected"));
        assert_eq!(error.variable, *variable, "{extra:?}");
        let sentence = error.to_string();
        assert!(sentence.starts_with(variable) && sentence.ends_with('.'), "{sentence}");
    }
}

#[test]
fn kms_keys_are_key_arns_or_ids_in_the_role_account_and_region() {
    let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
    let other = "arn:aws:kms:us-east-1:210987654321:key/mrk-0123456789abcdef0123456789abcdef";
    let raw = format!("{id}, {other},{id}");
    let config = with(&[(var::KMS_KEYS, raw.as_str())]).expect("valid");
    let grant = config.allowlist.kms().expect("a grant");
    assert_eq!(grant.keys, [format!("arn:aws:kms:us-east-1:123456789012:key/{id}"), other.to_owned()]);
    assert_eq!(grant.via("secretsmanager"), "secretsmanager.us-east-1.amazonaws.com");
    assert_eq!(grant.via("ssm"), "ssm.us-east-1.amazonaws.com");
    assert!(with(&[]).expect("valid").allowlist.kms().is_none(), "no keys: no grant");
    let six: Vec<String> = (0..6).map(|i| format!("1234abcd-12ab-34cd-56ef-12345678900{i}")).collect();
    let six = six.join(",");
    let error = with(&[(var::KMS_KEYS, six.as_str())]).expect_err("too many");
    assert_eq!(error.variable, var::KMS_KEYS);
}

#[test]
fn accepted_values_parse_to_their_typed_form() {
    let config = with(&[
        (var::PORT, "8080"),
        (var::CACHE_TTL, "0"),
        (var::PREFETCH, "off"),
        (var::SESSION_DURATION, "3600"),
        (var::DEADLINE_MARGIN_MS, "0"),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "provisioned-concurrency"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
        (var::END_OF_INVOCATION, "next-invoke"),
        (var::CREDENTIAL_WINDOW, "0"),
        (var::REVOCATION, "deny"),
        (var::METRICS_NAMESPACE, "off"),
        (var::RUNTIME_PROXY_PORT, " 9100 "),
    ])
    .expect("valid");
    assert_eq!(config.runtime_proxy_port, Some(9100));
    let off = with(&[(var::RUNTIME_PROXY_PORT, "off"), (var::END_OF_INVOCATION, "runtime-done")]).expect("valid");
    assert_eq!((off.runtime_proxy_port, off.end_of_invocation), (None, EndOfInvocation::RuntimeDone));
    assert_eq!(with(&[(var::END_OF_INVOCATION, "auto")]).expect("valid").end_of_invocation, EndOfInvocation::Auto);
    assert_eq!(config.credential_window, None);
    assert_eq!(config.revocation, RevocationMode::Deny);
    assert_eq!(config.metrics_namespace, None);
    assert_eq!(config.end_of_invocation, EndOfInvocation::NextInvoke);
    assert_eq!(config.port, 8080);
    assert_eq!(config.cache_ttl, Duration::ZERO);
    assert!(!config.prefetch);
    assert_eq!(config.session_duration, Duration::from_secs(3600));
    assert_eq!(config.initialization_type, InitializationType::ProvisionedConcurrency);
    assert_eq!(config.endpoints.sts.as_deref(), Some("http://127.0.0.1:4566"));
    assert_eq!(config.endpoints.secrets_manager.as_deref(), Some("http://127.0.0.1:4566"));
}

#[test]
fn each_initialization_type_parses_and_an_unknown_one_runs_on_demand() {
    let cases = [
        ("on-demand", InitializationType::OnDemand, None),
        ("provisioned-concurrency", InitializationType::ProvisionedConcurrency, None),
        ("snap-start", InitializationType::SnapStart, None),
        ("lambda-managed-instances", InitializationType::ManagedInstances, None),
        ("warp-speed", InitializationType::OnDemand, Some("warp-speed")),
        ("odd\nvalue with spaces", InitializationType::OnDemand, Some("oddvaluewithspaces")),
    ];
    for (value, expected, unknown) in cases {
        let config = with(&[("AWS_LAMBDA_INITIALIZATION_TYPE", value)]).expect(value);
        assert_eq!(config.initialization_type, expected, "{value}");
        assert_eq!(config.unrecognised_initialization_type.as_deref(), unknown, "{value}");
    }
}

#[test]
fn without_a_session_token_the_container_token_protects_the_local_api() {
    let mut pairs = base();
    pairs.retain(|(name, _)| *name != "AWS_SESSION_TOKEN");
    pairs.push(("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-token"));
    pairs.push(("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1:9001/credentials"));
    pairs.push(("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start"));
    let config = Config::from_env(&Env::from_pairs(pairs.clone())).expect("valid");
    assert!(config.local_token.matches(b"container-token"));
    assert!(matches!(config.function_credentials, FunctionCredentialSource::Container));
    // With both, the session token wins, as in AWS's own extension.
    pairs.push(("AWS_SESSION_TOKEN", "session-token"));
    let config = Config::from_env(&Env::from_pairs(pairs)).expect("valid");
    assert!(config.local_token.matches(b"session-token"));
    assert!(!config.local_token.matches(b"container-token"));
}

#[test]
fn the_function_facing_secrets_manager_endpoint_is_never_followed() {
    let config = with(&[
        ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:2773"),
        ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:4567"),
    ])
    .expect("valid");
    assert_eq!(config.endpoints.secrets_manager, None);
    assert_eq!(config.endpoints.sts.as_deref(), Some("http://127.0.0.1:4567"));
}

#[test]
fn the_token_is_compared_exactly_and_never_printed() {
    let config = with(&[]).expect("valid");
    assert!(config.local_token.matches(b"token-value"));
    for wrong in [&b"token-valuE"[..], b"token-valu", b"token-value ", b""] {
        assert!(!config.local_token.matches(wrong));
    }
    // A token of AWS's length, differing in any one byte (every position of every word).
    let long: &'static str = String::leak((0..1_027).map(|i| char::from(b'A' + (i % 26) as u8)).collect::<String>());
    let config = with(&[("AWS_SESSION_TOKEN", long)]).expect("valid");
    assert!(config.local_token.matches(long.as_bytes()));
    for position in 0..long.len() {
        let mut wrong = long.as_bytes().to_vec();
        wrong[position] ^= 0x20;
        assert!(!config.local_token.matches(&wrong), "a difference at byte {position}");
    }
    let config = with(&[]).expect("valid");
    assert!(config.local_token.appears_in("app/token-value/x"));
    assert!(!config.local_token.appears_in("app/token-valu"));
    let printed = format!("{config:?} {:?}", Env::from_pairs(base()));
    assert!(!printed.contains("token-value"), "{printed}");
}
