//! Evidence: per-secret read counts and denies by code for the reports, and
//! CloudWatch Embedded Metric Format documents on stdout (Lambda turns them into metrics).
//!
//! At most one EMF document per invocation, written when the invocation ends (off the request
//! path); one dimension, the function name. Counts and timings only: never an id of a value.
//! See <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::domain::api::Api;
use crate::domain::code::Code;

use serde_json::{Map, Value, json};

/// Latency samples kept per metric and document; more are dropped (the counts stay exact).
const MAX_SAMPLES: usize = 100;

/// What happened since the last document.
#[derive(Debug, Default, Clone, PartialEq)]
struct Window {
    cache_hits: u64,
    cache_misses: u64,
    sessions_started: u64,
    assume_role_ms: Vec<f64>,
    fetch_ms: Vec<f64>,
    wait_ms: Vec<f64>,
    denies: BTreeMap<Code, u64>,
}

/// Counters for the reports and the metrics.
#[derive(Debug)]
pub struct Evidence {
    reads: Vec<[AtomicU64; Api::ALL.len()]>,
    denies: Mutex<BTreeMap<Code, u64>>,
    window: Mutex<Window>,
}

impl Evidence {
    /// Counters for an allowlist of `entries` secrets.
    pub fn new(entries: usize) -> Self {
        Self {
            reads: (0..entries).map(|_| Default::default()).collect(),
            denies: Mutex::default(),
            window: Mutex::default(),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A secret served through `api`.
    pub fn read(&self, entry: usize, api: Api) {
        if let Some(counters) = self.reads.get(entry) {
            counters[api.index()].fetch_add(1, Relaxed);
        }
    }

    /// Reads served per allowlist entry, by face of the API ([`Api::index`]).
    pub fn reads(&self) -> Vec<[u64; Api::ALL.len()]> {
        self.reads.iter().map(|counters| counters.each_ref().map(|c| c.load(Relaxed))).collect()
    }

    /// Reads served over the environment's life.
    pub fn served(&self) -> u64 {
        self.reads().iter().flatten().sum()
    }

    /// A local request refused with `code`.
    pub fn deny(&self, code: Code) {
        *self.denies.lock().unwrap_or_else(PoisonError::into_inner).entry(code).or_default() += 1;
        *self.window().denies.entry(code).or_default() += 1;
    }

    /// Denies by code over the environment's life.
    pub fn denies(&self) -> BTreeMap<Code, u64> {
        self.denies.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Requests refused over the environment's life.
    pub fn denied(&self) -> u64 {
        self.denies().values().sum()
    }

    /// A cache lookup.
    pub fn cache(&self, hit: bool) {
        let mut window = self.window();
        if hit { window.cache_hits += 1 } else { window.cache_misses += 1 }
    }

    /// A session started, after `latency`.
    pub fn session(&self, latency: Duration) {
        let mut window = self.window();
        window.sessions_started += 1;
        push(&mut window.assume_role_ms, latency);
    }

    /// A Secrets Manager call, after `latency`.
    pub fn fetch(&self, latency: Duration) {
        push(&mut self.window().fetch_ms, latency);
    }

    /// A request waited `latency` for its invocation or session.
    pub fn waited(&self, latency: Duration) {
        push(&mut self.window().wait_ms, latency);
    }

    /// The EMF document for what happened since the last one (`None` if nothing did), with
    /// `extra` count metrics (e.g. sessions live at SHUTDOWN).
    pub fn take_document(&self, namespace: &str, function_name: &str, extra: &[(&str, u64)]) -> Option<String> {
        let window = std::mem::take(&mut *self.window());
        if window == Window::default() && extra.is_empty() {
            return None;
        }
        Some(emf(namespace, function_name, &window, extra, SystemTime::now()))
    }
}

fn push(samples: &mut Vec<f64>, latency: Duration) {
    if samples.len() < MAX_SAMPLES {
        samples.push((latency.as_secs_f64() * 1e6).round() / 1e3);
    }
}

fn emf(namespace: &str, function_name: &str, window: &Window, extra: &[(&str, u64)], now: SystemTime) -> String {
    let mut root = Map::new();
    let mut declared = Vec::new();
    let mut count = |name: String, value: u64, root: &mut Map<String, Value>| {
        declared.push(json!({ "Name": name, "Unit": "Count" }));
        root.insert(name, json!(value));
    };
    count("CacheHits".into(), window.cache_hits, &mut root);
    count("CacheMisses".into(), window.cache_misses, &mut root);
    count("SessionsStarted".into(), window.sessions_started, &mut root);
    count("Denies".into(), window.denies.values().sum(), &mut root);
    for (code, n) in &window.denies {
        count(format!("Denied.{}", code.as_str()), *n, &mut root);
    }
    for (name, n) in extra {
        count((*name).to_owned(), *n, &mut root);
    }
    for (name, samples) in [
        ("AssumeRoleLatency", &window.assume_role_ms),
        ("FetchLatency", &window.fetch_ms),
        ("RequestWait", &window.wait_ms),
    ] {
        if !samples.is_empty() {
            declared.push(json!({ "Name": name, "Unit": "Milliseconds" }));
            root.insert(name.into(), json!(samples));
        }
    }
    let timestamp = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    root.insert("FunctionName".into(), json!(function_name));
    // Which build wrote it: properties, not dimensions (no metric is split by version).
    root.extend(crate::version::emf_properties().map(|(name, value)| (name.to_owned(), json!(value))));
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp,
            "CloudWatchMetrics": [{ "Namespace": namespace, "Dimensions": [["FunctionName"]], "Metrics": declared }],
        }),
    );
    Value::Object(root).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_declares_every_metric_it_carries_and_nothing_else() {
        let evidence = Evidence::new(2);
        assert_eq!(evidence.take_document("NS", "f", &[]), None, "nothing happened: no document");
        evidence.cache(true);
        evidence.cache(false);
        evidence.session(Duration::from_micros(2_500));
        evidence.deny(Code::SecretNotAllowed);
        let document: Value =
            serde_json::from_str(&evidence.take_document("NS", "f", &[]).expect("document")).expect("json");
        let metrics = &document["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(metrics["Namespace"], "NS");
        assert_eq!(metrics["Dimensions"], json!([["FunctionName"]]));
        assert_eq!(document["FunctionName"], "f");
        assert_eq!(document["ScopedSecretsVersion"], crate::version::VERSION, "which build, as a property");
        for metric in metrics["Metrics"].as_array().expect("metrics") {
            let name = metric["Name"].as_str().expect("name");
            assert!(!document[name].is_null(), "{name} declared but absent");
        }
        assert_eq!((document["CacheHits"].as_u64(), document["CacheMisses"].as_u64()), (Some(1), Some(1)));
        assert_eq!(document["AssumeRoleLatency"], json!([2.5]));
        assert_eq!(document["Denied.secret_not_allowed"], 1);
        assert!(document.get("FetchLatency").is_none(), "no samples: not declared");
        assert!(document["_aws"]["Timestamp"].as_u64().is_some());
        assert_eq!(evidence.take_document("NS", "f", &[]), None, "the window was reset");
        assert_eq!(evidence.denies().get(&Code::SecretNotAllowed), Some(&1), "life-long counts stay");
    }
}
