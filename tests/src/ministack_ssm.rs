//! What MiniStack 1.5.33 enforces for Parameter Store and KMS, measured with the emulator's own
//! answers to a scoped session (docs/testing.md, "MiniStack and Parameter Store", is written
//! from these). Each test states one fact the extension relies on, or one gap it must cover.

#![allow(clippy::expect_used)] // Tests may panic with a reason.

use std::time::{Duration, SystemTime};

use crate::ministack::{MiniStack, StaticCredentials, World, read_parameter_as, read_parameters_as};

fn arn(name: &str) -> String {
    format!("arn:aws:ssm:us-east-1:123456789012:parameter/{}", name.trim_start_matches('/'))
}

async fn session(stack: &MiniStack, world: &World, statements: serde_json::Value) -> StaticCredentials {
    let policy = serde_json::json!({ "Version": "2012-10-17", "Statement": statements });
    let sts = aws_sdk_sts::Client::new(&world.exec_credentials.sdk_config(&stack.endpoint()));
    let out = sts
        .assume_role()
        .role_arn(&world.scoped_role_arn)
        .role_session_name("ss-env-ssm")
        .duration_seconds(900)
        .policy(policy.to_string())
        .send()
        .await
        .expect("exec-role may assume scoped-role");
    let c = out.credentials().expect("credentials");
    StaticCredentials {
        access_key_id: c.access_key_id().to_owned(),
        secret_access_key: c.secret_access_key().to_owned(),
        session_token: Some(c.session_token().to_owned()),
    }
}

fn read(resources: &[String]) -> serde_json::Value {
    serde_json::json!([{ "Effect": "Allow", "Action": ["ssm:GetParameter", "ssm:GetParameters"], "Resource": resources }])
}

async fn stack() -> (MiniStack, World) {
    let stack = MiniStack::start().await.expect("MiniStack starts");
    let world = stack.world("app/", &[("app/db", "db-secret")]).await.expect("world");
    stack.put_parameter("/app/db", "db-v1", "String", None, false).await.expect("v1");
    stack.put_parameter("/app/db", "db-v2", "String", None, true).await.expect("v2");
    stack.label_parameter("/app/db", 1, "old").await.expect("label");
    stack.put_parameter("/app/db2", "db2", "String", None, false).await.expect("db2");
    stack.put_parameter("/app/list", "a,b", "StringList", None, false).await.expect("list");
    (stack, world)
}

#[tokio::test]
async fn a_session_policy_narrows_get_parameter_to_exact_arns_and_selectors_need_arn_colon_star() {
    let (stack, world) = stack().await;
    let ep = stack.endpoint();
    let exact = session(&stack, &world, read(&[arn("/app/db")])).await;
    assert_eq!(read_parameter_as(&ep, &exact, "/app/db").await.as_deref(), Ok("db-v2"));
    assert_eq!(read_parameter_as(&ep, &exact, "/app/list").await, Err("AccessDeniedException".into()));
    assert_eq!(read_parameter_as(&ep, &exact, "/app/db2").await, Err("AccessDeniedException".into()));
    // The emulator authorises `NAME:SELECTOR` as the resource `…:parameter/NAME:SELECTOR`.
    assert_eq!(read_parameter_as(&ep, &exact, "/app/db:1").await, Err("AccessDeniedException".into()));
    // A missing parameter under its exact ARN is authorised (the ARN matches), then not found.
    let missing = session(&stack, &world, read(&[arn("/app/missing")])).await;
    assert_eq!(read_parameter_as(&ep, &missing, "/app/missing").await, Err("ParameterNotFound".into()));
    let with_selectors = session(&stack, &world, read(&[arn("/app/db"), format!("{}:*", arn("/app/db"))])).await;
    assert_eq!(read_parameter_as(&ep, &with_selectors, "/app/db:1").await.as_deref(), Ok("db-v1"));
    assert_eq!(read_parameter_as(&ep, &with_selectors, "/app/db:old").await.as_deref(), Ok("db-v1"));
    assert_eq!(read_parameter_as(&ep, &with_selectors, "/app/db:9").await, Err("ParameterVersionNotFound".into()));
    assert_eq!(read_parameter_as(&ep, &with_selectors, "/app/db2").await, Err("AccessDeniedException".into()));
    assert_eq!(read_parameter_as(&ep, &with_selectors, "/app/db2:1").await, Err("AccessDeniedException".into()));
    // By ARN, the emulator builds the resource `…:parameter/arn:aws:ssm:…`: refused (AWS takes
    // it), so the extension sends an own-account parameter's name.
    assert_eq!(read_parameter_as(&ep, &exact, &arn("/app/db")).await, Err("AccessDeniedException".into()));
}

#[tokio::test]
async fn get_parameters_is_authorised_against_star_so_exact_arns_refuse_it() {
    let (stack, world) = stack().await;
    let ep = stack.endpoint();
    let exact = session(&stack, &world, read(&[arn("/app/db"), arn("/app/list")])).await;
    assert_eq!(read_parameters_as(&ep, &exact, &["/app/db"]).await, Err("AccessDeniedException".into()));
    // The admin sees AWS's shape: found values, and missing names (or versions) as invalid.
    let admin = MiniStack::admin_credentials();
    let (values, invalid) =
        read_parameters_as(&ep, &admin, &["/app/db", "/app/missing", "/app/db:9"]).await.expect("admin");
    assert_eq!((values, invalid), (vec!["db-v2".to_owned()], vec!["/app/missing".to_owned(), "/app/db:9".to_owned()]));
}

#[tokio::test]
async fn a_current_time_bound_ends_parameter_reads() {
    let (stack, world) = stack().await;
    let until = SystemTime::now() + Duration::from_secs(3);
    let until = scoped_secrets::domain::time::iso8601_ceil(until);
    let statements = serde_json::json!([{
        "Effect": "Allow", "Action": "ssm:GetParameter", "Resource": arn("/app/db"),
        "Condition": { "DateLessThan": { "aws:CurrentTime": until } },
    }]);
    let timed = session(&stack, &world, statements).await;
    assert_eq!(read_parameter_as(&stack.endpoint(), &timed, "/app/db").await.as_deref(), Ok("db-v2"));
    tokio::time::sleep(Duration::from_millis(4_200)).await;
    assert_eq!(read_parameter_as(&stack.endpoint(), &timed, "/app/db").await, Err("AccessDeniedException".into()));
}

#[tokio::test]
async fn secure_strings_are_decrypted_without_asking_kms_and_references_are_not_served() {
    let (stack, world) = stack().await;
    let ep = stack.endpoint();
    // The emulator takes any key id (it checks none).
    let key_id = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";
    stack.put_parameter("/app/cmk", "cmk-value", "SecureString", Some(key_id), false).await.expect("cmk");
    // A session with no kms:Decrypt at all reads the customer-key SecureString decrypted:
    // Parameter Store in MiniStack never asks KMS (so a KMS grant's effect cannot be shown).
    let no_kms = session(&stack, &world, read(&[arn("/app/cmk")])).await;
    assert_eq!(read_parameter_as(&ep, &no_kms, "/app/cmk").await.as_deref(), Ok("cmk-value"));
    // The reserved Secrets Manager path is not served at all, even to the admin: the extension
    // reads references through Secrets Manager itself.
    let admin = MiniStack::admin_credentials();
    assert_eq!(
        read_parameter_as(&ep, &admin, "/aws/reference/secretsmanager/app/db").await,
        Err("ParameterNotFound".into())
    );
}
