//! Configuration parsing (`Config::from_env`, the allowlist included) on arbitrary values.
//!
//! Input: lines of one selector byte (which variable) and a value, laid over a valid base
//! configuration, so every variable's parser is reached with arbitrary text. Checked besides
//! "never panics": an error names a variable and never quotes the session token; an accepted
//! configuration is inside every documented range, and each allowlisted secret is found by its
//! own id.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use scoped_secrets::config::allowlist::{Allowlist, Entry, EntryIndex};
use scoped_secrets::config::{Config, Env, var};
use scoped_secrets::domain::item::Kind;

const TOKEN: &str = "IQoJb3JpZ2luX2VjEFuzzSessionToken0123456789";

const VARIABLES: &[&str] = &[
    var::ROLE_ARN,
    var::SECRETS,
    var::PORT,
    var::CACHE_TTL,
    var::PREFETCH,
    var::SESSION_DURATION,
    var::DEADLINE_MARGIN_MS,
    var::REQUEST_WAIT_TIMEOUT_MS,
    var::UPSTREAM_TIMEOUT_MS,
    var::MAX_CONNECTIONS,
    var::INIT_BUDGET_MS,
    var::REVOCATION,
    var::REVOCATION_POLICY_BUDGET,
    var::LOG_LEVEL,
    var::END_OF_INVOCATION,
    var::CREDENTIAL_WINDOW,
    var::METRICS_NAMESPACE,
    var::UPSTREAM_KEEP_ALIVE,
    "AWS_REGION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_IAM",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    var::PARAMETERS,
    "AWS_ENDPOINT_URL_SSM",
];

fuzz_target!(|data: &[u8]| {
    let mut pairs: Vec<(String, String)> = [
        (var::ROLE_ARN, "arn:aws:iam::123456789012:role/app-secrets"),
        (var::SECRETS, "db=app/db,app/api"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
        ("AWS_SESSION_TOKEN", TOKEN),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for line in data.split(|b| *b == b'\n') {
        let Some((selector, value)) = line.split_first() else { continue };
        let name = VARIABLES[usize::from(*selector) % VARIABLES.len()];
        let value = String::from_utf8_lossy(value).into_owned();
        pairs.retain(|(k, _)| k != name);
        pairs.push((name.to_owned(), value));
    }
    let quotes_token = pairs.iter().any(|(k, v)| k != "AWS_SESSION_TOKEN" && v.contains(TOKEN));
    match Config::from_env(&Env::from_pairs(pairs)) {
        Err(error) => {
            let sentence = error.to_string();
            assert!(sentence.starts_with(error.variable), "{sentence}");
            assert!(quotes_token || !sentence.contains(TOKEN), "an error quoted the session token");
        }
        Ok(config) => {
            assert!(config.port >= 1);
            assert!(config.cache_ttl <= Duration::from_secs(86_400));
            assert!((Duration::from_secs(900)..=Duration::from_secs(3_600)).contains(&config.session_duration));
            assert!(config.upstream_timeout >= Duration::from_millis(100));
            assert!((1..=4_096).contains(&config.max_connections));
            assert!(!config.allowlist.is_empty());
            // Every entry answers to its own id within its kind: fixed entries as configured,
            // `{tenant}` entries once resolved (until then no request can name them), possibly
            // to an equal entry.
            for (index, entry) in config.allowlist.iter() {
                let found = find(&config.allowlist, entry);
                assert!(found == Some(index) || (found.is_none() && entry.id().contains("{tenant}")));
            }
            // `None`: the tenant id would make one name answer to two entries of a kind.
            if let Some(resolved) = config.allowlist.for_tenant("t0") {
                for (_, entry) in resolved.iter() {
                    let found = find(&resolved, entry).and_then(|i| resolved.entry(i));
                    assert_eq!(found.map(|e| e.resource()), Some(entry.resource()), "{:?}", entry.id());
                    assert_eq!(found.map(Entry::kind), Some(entry.kind()));
                }
            }
            assert!(config.local_token.matches(TOKEN.as_bytes()));
        }
    }
});

/// The entry `allowlist` finds for `entry`'s own id, among the entries of its kind.
fn find(allowlist: &Allowlist, entry: &Entry) -> Option<EntryIndex> {
    match entry.kind() {
        Kind::Secret => allowlist.find(entry.id()),
        Kind::Parameter => allowlist.find_parameter(entry.id()),
    }
}
