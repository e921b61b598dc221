//! Unit tests of the GET protocol: routing, the envelope, the query and the status map.

use super::*;

#[test]
fn queries_parse_or_are_refused_with_a_stable_code() {
    let ok = [
        ("secretId=app%2Fdb", "app/db", Version::Current),
        ("secretId=app/db&versionStage=AWSCURRENT", "app/db", Version::Current),
        ("secretId=app/db&versionStage=AWSPREVIOUS", "app/db", Version::Stage("AWSPREVIOUS".into())),
        ("versionId=a1b2-c3&secretId=db", "db", Version::Id("a1b2-c3".into())),
        ("secretId=a+b", "a b", Version::Current),
    ];
    for (query, id, version) in ok {
        let expected = SecretQuery { secret_id: id.into(), version, refresh: false, json_key: None };
        assert_eq!(SecretQuery::parse(query, None), Ok(expected), "{query}");
    }
    let long = format!("secretId={}", "a".repeat(MAX_SECRET_ID_BYTES + 1));
    let refused = [
        ("", "missing_secret_id"),
        ("secretId=", "missing_secret_id"),
        ("secretid=x", "unknown_parameter"),
        ("secretId=x&other=1", "unknown_parameter"),
        ("secretId=x&secretId=y", "duplicate_parameter"),
        ("secretId=x&versionStage=A&versionId=b", "conflicting_version"),
        ("secretId=x&versionStage=A&versionStage=B", "duplicate_parameter"),
        ("secretId=x&versionStage=", "invalid_version_stage"),
        ("secretId=x&versionStage=a%2Fb", "invalid_version_stage"),
        ("secretId=x&versionId=a*b", "invalid_version_id"),
        ("secretId=%FF%FE", "invalid_query"),
        ("secretId=a%0Ab", "invalid_secret_id"),
        (long.as_str(), "invalid_secret_id"),
        ("secretId=x&jsonKey=", "invalid_json_key"),
        ("secretId=x&jsonKey=a%0Ab", "invalid_json_key"),
        ("secretId=x&jsonKey=a&jsonKey=b", "duplicate_parameter"),
    ];
    for (query, code) in refused {
        let error = SecretQuery::parse(query, None).expect_err(query);
        assert_eq!((status_of(error.code), error.code.as_str()), (StatusCode::BAD_REQUEST, code), "{query}");
    }
}

#[test]
fn a_query_with_nothing_to_decode_parses_as_form_urlencoded_parses_it() {
    // The fast split (no `%`, no `+`) against the same query with one byte escaped, which
    // goes through form_urlencoded: the same answer, or the same refusal.
    let queries = [
        "secretId=app/db",
        "&&secretId=app/db&",
        "secretId=a=b",
        "secretId",
        "secretId=",
        "=x&secretId=db",
        "secretId=db&refreshNow=true&jsonKey=k",
        "secretId=db&versionStage=AWSPENDING",
        "secretId=db&secretId=db",
        "secretId=db&unknown",
        "secretId=\u{FFFD}",
    ];
    for query in queries {
        let escaped = query.replacen('d', "%64", 1);
        assert_ne!(escaped, query, "{query}: nothing to escape");
        assert_eq!(SecretQuery::parse(query, None), SecretQuery::parse(&escaped, None), "{query}");
    }
}

#[test]
fn refresh_and_the_agent_path_parse_like_the_query_form() {
    let refreshed = SecretQuery::parse("secretId=db&refreshNow=true", None).expect("valid");
    assert!(refreshed.refresh);
    assert!(!SecretQuery::parse("secretId=db&refreshNow=0", None).expect("valid").refresh);
    let bad = SecretQuery::parse("secretId=db&refreshNow=yes", None).expect_err("invalid");
    assert_eq!(bad.code, Code::InvalidRefreshNow);
    let path = SecretQuery::parse("versionStage=AWSPREVIOUS", Some(percent_decode_lossy("app%2Fdb"))).expect("valid");
    assert_eq!((path.secret_id.as_str(), path.version), ("app/db", Version::Stage("AWSPREVIOUS".into())));
    let keyed = SecretQuery::parse("jsonKey=pass%20word", Some("app/db".into())).expect("the path form takes jsonKey");
    assert_eq!(keyed.json_key.as_deref(), Some("pass word"));
    let twice = SecretQuery::parse("secretId=other", Some("app/db".into())).expect_err("secretId with a path id");

    assert_eq!(twice.code, Code::UnknownParameter);
    assert_eq!(SecretQuery::parse("", Some(String::new())).expect_err("empty").code, Code::MissingSecretId);
}

#[test]
fn routing_needs_only_the_request_and_reads_need_the_token_once() {
    let env = crate::config::Env::from_pairs([
        ("SCOPED_SECRETS_ROLE_ARN", "arn:aws:iam::123456789012:role/app-secrets"),
        ("SCOPED_SECRETS_SECRETS", "app/db"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
        ("AWS_SESSION_TOKEN", "token-value"),
    ]);
    let config = crate::config::Config::from_env(&env).expect("valid configuration");
    let request = |uri: &str, tokens: &[&str]| {
        let mut builder = Request::get(uri).header(header::HOST, "localhost:2773");
        for token in tokens {
            builder = builder.header(TOKEN_HEADER, *token);
        }
        builder.body(http_body_util::Empty::<Bytes>::new()).expect("request")
    };
    let routed = |uri: &str, tokens: &[&str]| route(&request(uri, tokens), &config.local_token);
    assert_eq!(routed("/ping", &[]), Ok(Route::Ping));
    let code =
        |uri: &str, tokens: &[&str]| routed(uri, tokens).err().map(|(refusal, api)| (refusal.code.as_str(), api));
    assert_eq!(code("/secretsmanager/get?secretId=app/db", &[]), Some(("missing_token", Api::Get)));
    assert_eq!(code("/v1/app%2Fdb", &["token-value", "token-value"]), Some(("invalid_token", Api::AgentPath)));
    assert_eq!(code("/secretsmanager/get?secretId=", &["token-value"]), Some(("missing_secret_id", Api::Get)));
    assert_eq!(code("/elsewhere", &["token-value"]), Some(("not_found", Api::Get)));
    let Ok(Route::Read { api, query }) = routed("/v1/app%2Fdb?versionStage=AWSPREVIOUS", &["token-value"]) else {
        panic!("a well-formed read routes");
    };
    assert_eq!((api, query.secret_id.as_str()), (Api::AgentPath, "app/db"));
    assert_eq!(query.version, Version::Stage("AWSPREVIOUS".into()));
}

#[test]
fn the_envelope_refuses_what_no_local_caller_needs() {
    let request = |method: Method, uri: &str, headers: &[(&str, &str)]| {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(http_body_util::Empty::<Bytes>::new()).expect("request")
    };
    let path = "/secretsmanager/get?secretId=x";
    let cases = [
        (request(Method::POST, path, &[]), Some("method_not_allowed")),
        (request(Method::DELETE, path, &[]), Some("method_not_allowed")),
        (request(Method::GET, path, &[("x-forwarded-for", "10.0.0.1")]), Some("forwarded_request")),
        (request(Method::GET, path, &[("forwarded", "for=1.2.3.4")]), Some("forwarded_request")),
        (request(Method::GET, path, &[("content-length", "5")]), Some("body_not_allowed")),
        (request(Method::GET, path, &[("transfer-encoding", "chunked")]), Some("body_not_allowed")),
        (request(Method::GET, "http://evil.example/secretsmanager/get", &[]), Some("absolute_target")),
        (request(Method::GET, path, &[("host", "evil.example")]), Some("invalid_host")),
        (request(Method::GET, path, &[("host", "evil.example:2773")]), Some("invalid_host")),
        (request(Method::GET, path, &[("host", "localhost"), ("host", "evil.example")]), Some("invalid_host")),
        (request(Method::GET, path, &[("host", "localhost"), ("host", "localhost")]), Some("invalid_host")),
        (request(Method::GET, path, &[("host", "")]), Some("invalid_host")),
        (request(Method::GET, path, &[("host", "localhost:2773")]), None),
        (request(Method::GET, path, &[("host", "127.0.0.1:2773")]), None),
        (request(Method::GET, path, &[("host", "LocalHost:2773")]), None),
        (request(Method::GET, path, &[]), Some("invalid_host")),
    ];
    let mut old = request(Method::GET, path, &[]);
    *old.version_mut() = http::Version::HTTP_10;
    let cases = cases.into_iter().chain([(old, None)]);
    let mut foreign_bytes = request(Method::GET, path, &[]);
    // (An HTTP/1.1 request without Host is refused; HTTP/1.0 may leave it out.)
    foreign_bytes.headers_mut().insert(header::HOST, HeaderValue::from_bytes(b"localhost\xff").expect("obs-text"));
    let cases = cases.into_iter().chain([(foreign_bytes, Some("invalid_host"))]);
    for (request, expected) in cases {
        let description = format!("{} {} {:?}", request.method(), request.uri(), request.headers());
        let headers = Headers::scan(request.headers(), TOKEN_HEADER);
        assert_eq!(check_envelope(&request, &headers).err().map(|r| r.code.as_str()), expected, "{description}");
    }
}

#[test]
fn every_code_has_an_error_status_and_a_503_says_when_to_retry() {
    for &code in Code::ALL {
        let status = status_of(code);
        assert!(status.is_client_error() || status.is_server_error(), "{code:?}");
        let response = error_response(Refusal::of(code));
        assert_eq!(response.headers().contains_key(header::RETRY_AFTER), status == StatusCode::SERVICE_UNAVAILABLE);
    }
}
