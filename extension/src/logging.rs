//! Logging: JSON lines on stdout through `tracing`, never a secret.
//!
//! The level comes from `SCOPED_SECRETS_LOG_LEVEL`, else `AWS_LAMBDA_LOG_LEVEL` (set by Lambda's
//! advanced logging controls), else `RUST_LOG`, else `info`. Audit lines (target `audit`) are
//! always written. Third-party crates (the AWS SDK, hyper, rustls) are capped at `info` whatever
//! the level: their wire logs are where credentials and bodies would appear.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{Env, var};

/// Installs the JSON subscriber. Returns a sentence when the level variable is invalid (the
/// caller reports it with `init/error`; logging then runs at `info`).
pub fn init(env: &Env) -> Result<(), String> {
    let (level, problem) = match level_from(env) {
        Ok(level) => (level, None),
        Err(problem) => (LevelFilter::INFO, Some(problem)),
    };
    let filter = Targets::new()
        .with_default(level.min(LevelFilter::INFO))
        .with_target("scoped_secrets", level)
        .with_target("audit", LevelFilter::INFO.max(level));
    let format = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::stdout);
    // Fails only if a subscriber is already installed (tests): keep that one.
    let _ = tracing_subscriber::registry().with(format.with_filter(filter)).try_init();
    problem.map_or(Ok(()), Err)
}

fn level_from(env: &Env) -> Result<LevelFilter, String> {
    let sources = [(var::LOG_LEVEL, true), ("AWS_LAMBDA_LOG_LEVEL", true), ("RUST_LOG", false)];
    for (name, strict) in sources {
        let Some(raw) = env.get(name) else { continue };
        return match parse_level(raw) {
            Some(level) => Ok(level),
            // RUST_LOG may hold a directive list meant for other tools: ignore what we cannot read.
            None if !strict => continue,
            None => Err(format!(
                "{name} must be one of off, error, warn, info, debug, trace (got {:?}).",
                raw.chars().take(32).collect::<String>()
            )),
        };
    }
    Ok(LevelFilter::INFO)
}

fn parse_level(raw: &str) -> Option<LevelFilter> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::OFF),
        "fatal" | "error" => Some(LevelFilter::ERROR),
        "warn" | "warning" => Some(LevelFilter::WARN),
        "info" => Some(LevelFilter::INFO),
        "debug" => Some(LevelFilter::DEBUG),
        "trace" => Some(LevelFilter::TRACE),
        _ => None,
    }
}

use tracing_subscriber::Layer as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_comes_from_the_first_variable_set() {
        let cases = [
            (vec![], Ok(LevelFilter::INFO)),
            (vec![("RUST_LOG", "debug")], Ok(LevelFilter::DEBUG)),
            (vec![("RUST_LOG", "hyper=trace,info")], Ok(LevelFilter::INFO)),
            (vec![("AWS_LAMBDA_LOG_LEVEL", "WARN"), ("RUST_LOG", "trace")], Ok(LevelFilter::WARN)),
            (vec![(var::LOG_LEVEL, "trace"), ("AWS_LAMBDA_LOG_LEVEL", "ERROR")], Ok(LevelFilter::TRACE)),
        ];
        for (pairs, expected) in cases {
            assert_eq!(level_from(&Env::from_pairs(pairs.clone())), expected, "{pairs:?}");
        }
        let error = level_from(&Env::from_pairs([(var::LOG_LEVEL, "loud")])).expect_err("invalid");
        assert!(error.starts_with(var::LOG_LEVEL) && error.ends_with('.'), "{error}");
    }
}
