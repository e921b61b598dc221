//! The local GET API's routing (`scoped_secrets::local_api::get::route`) on arbitrary requests.
//!
//! Input: a method line, a request-target line, then `name:value` header lines, as hyper
//! would hand them over once it parsed the head (parts hyper would reject are skipped the same
//! way: the `http` crate's own validation). Checked besides "never panics": a request is
//! routed to a read (of a secret or a parameter) only if it carries the token exactly once,
//! uses GET, names a loopback host and no proxy, and its secret id or parameter name is
//! non-empty, bounded and free of control characters.

#![no_main]

use bytes::Bytes;
use http_body_util::Empty;
use libfuzzer_sys::fuzz_target;
use scoped_secrets::config::{Config, Env};
use scoped_secrets::domain::parameter::MAX_NAME_CHARS;
use scoped_secrets::local_api::get::{MAX_SECRET_ID_BYTES, Route, TOKEN_HEADER, route, status_of};

const TOKEN: &str = "IQoJb3JpZ2luX2VjEFuzzSessionToken0123456789";

fn config() -> Config {
    let env = Env::from_pairs([
        ("SCOPED_SECRETS_ROLE_ARN", "arn:aws:iam::123456789012:role/app-secrets"),
        ("SCOPED_SECRETS_SECRETS", "db=app/db,app/api"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
        ("AWS_SESSION_TOKEN", TOKEN),
    ]);
    match Config::from_env(&env) {
        Ok(config) => config,
        Err(error) => panic!("the fuzz target's own configuration is invalid: {error}"),
    }
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static CONFIG: Config = config();
    }
    let mut lines = data.split(|b| *b == b'\n');
    let method = lines.next().unwrap_or_default();
    let target = lines.next().unwrap_or_default();
    let Ok(method) = http::Method::from_bytes(method) else { return };
    let Ok(uri) = http::Uri::try_from(target) else { return };
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in scoped_secrets::fuzzing::header_lines(lines) {
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(Empty::<Bytes>::new()) else { return };
    let routed_to_a_read = |request: &http::Request<Empty<Bytes>>| {
        assert_eq!(request.method(), http::Method::GET);
        let tokens: Vec<_> = request.headers().get_all(TOKEN_HEADER).iter().collect();
        assert!(tokens.len() == 1 && tokens[0] == TOKEN, "routed to a read without the token");
        assert!(!request.headers().contains_key("x-forwarded-for"));
        assert!(!request.headers().contains_key(http::header::FORWARDED));
        assert!(request.uri().authority().is_none() && request.uri().scheme().is_none());
    };
    CONFIG.with(|config| match route(&request, &config.local_token) {
        Ok(Route::Ping) => assert_eq!(request.uri().path(), "/ping"),
        Ok(Route::Read { query, .. }) => {
            routed_to_a_read(&request);
            assert!(!query.secret_id.is_empty() && query.secret_id.len() <= MAX_SECRET_ID_BYTES);
            assert!(!query.secret_id.chars().any(char::is_control));
        }
        Ok(Route::Parameter { query }) => {
            routed_to_a_read(&request);
            assert_eq!(request.uri().path(), "/systemsmanager/parameters/get");
            assert!(!query.name.is_empty() && query.name.len() <= MAX_NAME_CHARS);
            assert!(!query.name.chars().any(char::is_control));
        }
        Err((refusal, _api)) => {
            let status = status_of(refusal.code);
            assert!(status.is_client_error(), "a routing refusal is a 4xx: {status}");
            assert!(!refusal.message.contains(TOKEN));
        }
    });
});
