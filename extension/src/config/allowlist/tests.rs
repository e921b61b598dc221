//! The allowlist: resources, matching and rejections of both kinds, table-driven.

use super::*;
use crate::domain::item::Kind;

fn role() -> RoleArn {
    RoleArn::parse("arn:aws:iam::123456789012:role/app-secrets").expect("valid role")
}

fn parse(list: &str) -> Result<Allowlist, AllowlistError> {
    Allowlist::parse(list, &role(), "eu-west-1")
}

#[test]
fn names_become_suffix_patterns_in_the_roles_account_and_arns_stay_exact() {
    let list = parse(
        "db=app/db, arn:aws:secretsmanager:us-east-1:210987654321:secret:shared/key-AbC123,\
         arn:aws:secretsmanager:us-east-1:210987654321:secret:partial",
    )
    .expect("valid");
    let resources: Vec<&str> = list.iter().map(|(_, e)| e.resource()).collect();
    assert_eq!(
        resources,
        [
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-??????",
            "arn:aws:secretsmanager:us-east-1:210987654321:secret:shared/key-AbC123",
            "arn:aws:secretsmanager:us-east-1:210987654321:secret:partial-??????",
        ]
    );
    assert_eq!(list.entry(0).and_then(Entry::alias), Some("db"));
}

#[test]
fn requests_match_by_alias_name_or_covered_arn_and_nothing_else() {
    let list =
        parse("db=app/db,arn:aws:secretsmanager:us-east-1:210987654321:secret:shared/key-AbC123").expect("valid");
    let cases = [
        ("db", Some(0)),
        ("app/db", Some(0)),
        ("arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-Xy12Z9", Some(0)),
        ("arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-Xy12Z", None),
        ("arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-Xy12Z9/x", None),
        ("arn:aws:secretsmanager:eu-west-1:999999999999:secret:app/db-Xy12Z9", None),
        ("shared/key", Some(1)),
        ("arn:aws:secretsmanager:us-east-1:210987654321:secret:shared/key-AbC123", Some(1)),
        ("arn:aws:secretsmanager:us-east-1:210987654321:secret:shared/key-ZZZZZZ", None),
        ("app/db2", None),
        ("app/*", None),
        ("", None),
        ("DB", None),
    ];
    for (requested, expected) in cases {
        assert_eq!(list.find(requested), expected, "{requested}");
    }
    // A suffix the pattern covers still has to be the secret's own (checked against AWS's
    // answer); the configured complete ARN and names need no check.
    let by_name = list.entry(0).expect("entry");
    assert!(by_name.is_named_by_arn("arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-Xy12Z9"));
    assert!(!by_name.is_named_by_arn("app/db") && !by_name.is_named_by_arn("db"));
    let by_arn = list.entry(1).expect("entry");
    assert!(!by_arn.is_named_by_arn("arn:aws:secretsmanager:us-east-1:210987654321:secret:shared/key-AbC123"));
}

#[test]
fn tenant_entries_answer_nothing_until_resolved_and_then_only_their_tenant() {
    let list = parse("db=tenants/{tenant}/db,app/shared").expect("valid");
    assert!(list.has_tenant_entries());
    for unresolved in ["db", "tenants/{tenant}/db", "tenants/blue/db"] {
        assert_eq!(list.find(unresolved), None, "{unresolved}");
    }
    let blue = list.for_tenant("blue").expect("unambiguous");
    assert!(!blue.has_tenant_entries());
    assert_eq!(
        blue.entry(0).map(Entry::resource),
        Some("arn:aws:secretsmanager:eu-west-1:123456789012:secret:tenants/blue/db-??????")
    );
    assert_eq!(blue.find("db"), Some(0));
    assert_eq!(blue.find("tenants/blue/db"), Some(0));
    assert_eq!(blue.find("arn:aws:secretsmanager:eu-west-1:123456789012:secret:tenants/blue/db-AbC123"), Some(0));
    assert_eq!(blue.find("tenants/red/db"), None);
    assert_eq!(blue.find("app/shared"), Some(1));
    assert!(!parse("app/db").expect("valid").has_tenant_entries());
    for refused in
        ["tenants/{tenant*}/db", "tenants/{other}/db", "tenants/{tenant", &format!("{}{{tenant}}", "n".repeat(449))]
    {
        assert!(parse(refused).is_err(), "{refused}");
    }
    assert!(parse(&format!("{}{{tenant}}", "n".repeat(448))).is_ok());
    // A tenant id that is another entry's alias or name would make one name mean two secrets.
    let aliased = parse("db=app/db,{tenant},tenants/{tenant}").expect("valid");
    for ambiguous in ["db", "app/db"] {
        assert!(aliased.for_tenant(ambiguous).is_none(), "{ambiguous}");
    }
    assert!(aliased.for_tenant("blue").is_some());
    // A secret and a parameter of one name are not ambiguous: each protocol names its kind.
    let both = lists("{tenant}", "{tenant}").expect("valid");
    assert!(both.for_tenant("config").is_some());
}

#[test]
fn malformed_lists_are_rejected_with_their_position() {
    let cases = [
        ("", AllowlistError::Empty),
        (" , ", AllowlistError::Empty),
        ("app/*", AllowlistError::Invalid { position: 1, why: "" }),
        ("ok,app db", AllowlistError::Invalid { position: 2, why: "" }),
        ("bad alias!=app/db", AllowlistError::Invalid { position: 1, why: "" }),
        ("arn:aws:s3:::bucket", AllowlistError::Invalid { position: 1, why: "" }),
        ("arn:aws:secretsmanager:us-east-1:1234:secret:x", AllowlistError::Invalid { position: 1, why: "" }),
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:", AllowlistError::Invalid { position: 1, why: "" }),
        ("app/db,app/db", AllowlistError::Duplicate { position: 2 }),
        ("db=app/db,db=app/api", AllowlistError::Duplicate { position: 2 }),
        ("x=app/db,x", AllowlistError::Duplicate { position: 2 }),
    ];
    for (list, expected) in cases {
        let error = parse(list).expect_err(list);
        match (&error, &expected) {
            (AllowlistError::Invalid { position: a, .. }, AllowlistError::Invalid { position: b, .. }) => {
                assert_eq!(a, b, "{list}");
            }
            _ => assert_eq!(error, expected, "{list}"),
        }
    }
    let too_many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("s{i}")).collect();
    assert_eq!(parse(&too_many.join(",")), Err(AllowlistError::TooMany { count: MAX_ENTRIES + 1, max: MAX_ENTRIES }));
}

fn lists(secrets: &str, parameters: &str) -> Result<Allowlist, (Kind, AllowlistError)> {
    Allowlist::parse_lists(secrets, parameters, &role(), "eu-west-1")
}

#[test]
fn parameters_become_their_exact_arns_after_the_secrets() {
    let list = lists(
        "app/db",
        "config=/app/config, Flat, arn:aws:ssm:eu-west-1:123456789012:parameter/app/arn,\
         arn:aws:ssm:eu-west-1:210987654321:parameter/shared/key",
    )
    .expect("valid");
    assert_eq!((list.len(), list.count(Kind::Secret), list.count(Kind::Parameter)), (5, 1, 4));
    let rows: Vec<(Kind, &str, &str, &str)> =
        list.iter().map(|(_, e)| (e.kind(), e.id(), e.upstream_id(), e.resource())).collect();
    assert_eq!(
        rows[1..],
        [
            (Kind::Parameter, "/app/config", "/app/config", "arn:aws:ssm:eu-west-1:123456789012:parameter/app/config"),
            (Kind::Parameter, "Flat", "Flat", "arn:aws:ssm:eu-west-1:123456789012:parameter/Flat"),
            (
                Kind::Parameter,
                "arn:aws:ssm:eu-west-1:123456789012:parameter/app/arn",
                "/app/arn",
                "arn:aws:ssm:eu-west-1:123456789012:parameter/app/arn"
            ),
            (
                Kind::Parameter,
                "arn:aws:ssm:eu-west-1:210987654321:parameter/shared/key",
                "arn:aws:ssm:eu-west-1:210987654321:parameter/shared/key",
                "arn:aws:ssm:eu-west-1:210987654321:parameter/shared/key"
            ),
        ]
    );
    assert_eq!(list.entry(1).and_then(Entry::alias), Some("config"));
}

#[test]
fn parameter_requests_match_within_their_kind_by_alias_name_or_arn() {
    let list = lists("db=app/db", "db=/app/db,Flat").expect("an alias may name one item of each kind");
    let cases = [
        ("db", Some(1)),
        ("/app/db", Some(1)),
        ("app/db", Some(1)),
        ("arn:aws:ssm:eu-west-1:123456789012:parameter/app/db", Some(1)),
        ("arn:aws:ssm:eu-west-1:123456789012:parameter/app/db2", None),
        ("arn:aws:ssm:eu-west-1:999999999999:parameter/app/db", None),
        ("/app/db2", None),
        ("/app", None),
        ("/app/*", None),
        ("Flat", Some(2)),
        ("/Flat", Some(2)),
        ("arn:aws:ssm:eu-west-1:123456789012:parameter/Flat", Some(2)),
        ("flat", None),
        ("", None),
    ];
    for (requested, expected) in cases {
        assert_eq!(list.find_parameter(requested), expected, "{requested}");
    }
    assert_eq!(list.find("db"), Some(0), "secrets are matched among secrets");
    assert_eq!(list.find("/app/db"), None);
    assert_eq!(list.find_parameter("arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-AbC123"), None);
}

#[test]
fn malformed_parameter_lists_name_their_list_and_position() {
    let cases = [
        ("app/db", 1),
        ("/ok,/app/*", 2),
        ("/a,/a", 2),
        ("/a,a", 2),
        ("x=/a,x=/b", 2),
        ("bad alias!=/a", 1),
        ("/aws/reference/secretsmanager/app/db", 1),
        ("/ssm/x", 1),
        ("arn:aws:ssm:us-east-1:123456789012:parameter/app/db", 1),
        ("arn:aws:ssm:eu-west-1:123456789012:parameter/app/db:3", 1),
        ("arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db", 1),
        ("arn:aws:ssm:eu-west-1:1234:parameter/app/db", 1),
    ];
    for (parameters, position) in cases {
        match lists("", parameters) {
            Err((
                Kind::Parameter,
                AllowlistError::Invalid { position: at, .. } | AllowlistError::Duplicate { position: at },
            )) => {
                assert_eq!(at, position, "{parameters}");
            }
            other => panic!("{parameters}: {other:?}"),
        }
    }
    assert!(matches!(lists("app/*", "/ok"), Err((Kind::Secret, AllowlistError::Invalid { position: 1, .. }))));
    assert_eq!(lists("", "").map(|l| l.len()).ok(), Some(0), "the caller refuses two empty lists");
    let tenant = lists("", "/tenants/{tenant}/config").expect("valid").for_tenant("blue").expect("unambiguous");
    assert_eq!(
        tenant.entry(0).map(Entry::resource),
        Some("arn:aws:ssm:eu-west-1:123456789012:parameter/tenants/blue/config")
    );
    assert_eq!(tenant.find_parameter("/tenants/blue/config"), Some(0));
}
