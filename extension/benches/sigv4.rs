//! `cargo bench -p scoped-secrets --bench sigv4`: what verifying one SDK request's SigV4
//! signature costs (re-signing with aws-sigv4 and a constant-time compare). Prints the median
//! and spread over repeated batches; not part of the test suite.

#![allow(clippy::print_stdout, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
use http::HeaderMap;
use scoped_secrets::sigv4::{FunctionCredentials, Signed, verify};

fn main() {
    let token = "IQoJb3JpZ2luX2VjE".repeat(40); // a session token of realistic length
    let now = SystemTime::now();
    let body = br#"{"SecretId":"app/db"}"#;
    let identity =
        aws_credential_types::Credentials::new("ASIAEXAMPLE", "secret-key", Some(token.clone()), None, "bench").into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::Headers;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("secretsmanager")
        .time(now)
        .settings(settings)
        .build()
        .expect("params");
    let headers = [
        ("host", "127.0.0.1:2773"),
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", "secretsmanager.GetSecretValue"),
    ];
    let request =
        SignableRequest::new("POST", "http://127.0.0.1:2773/", headers.iter().copied(), SignableBody::Bytes(body))
            .expect("request");
    let (instructions, _) = sign(request, &params.into()).expect("signed").into_parts();
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(name, value.parse().expect("value"));
    }
    for (name, value) in instructions.headers() {
        map.insert(http::HeaderName::from_bytes(name.as_bytes()).expect("name"), value.parse().expect("value"));
    }
    let credentials = FunctionCredentials::new("ASIAEXAMPLE", "secret-key", Some(&token));
    let signed = Signed { method: "POST", path_and_query: "/", headers: &map, body };
    assert!(verify(signed, &credentials, "us-east-1", "secretsmanager", now).is_ok());

    let per_batch = 2_000;
    let mut samples: Vec<Duration> = (0..31)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..per_batch {
                std::hint::black_box(verify(signed, &credentials, "us-east-1", "secretsmanager", now)).expect("valid");
            }
            started.elapsed() / per_batch
        })
        .collect();
    samples.sort();
    println!(
        "sigv4 verify: median {:.2} µs, p10 {:.2} µs, p90 {:.2} µs ({} batches of {per_batch})",
        samples[15].as_secs_f64() * 1e6,
        samples[3].as_secs_f64() * 1e6,
        samples[27].as_secs_f64() * 1e6,
        samples.len()
    );
}
