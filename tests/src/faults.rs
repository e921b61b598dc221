//! Upstream faults for the recording proxy ([`crate::aws_proxy`]): chosen requests (by service,
//! operation and count) are delayed, held, dropped, reset, throttled, failed with a 500, or
//! answered with a truncated copy of MiniStack's real answer.
//!
//! Every request still goes to MiniStack unless the fault replaces the answer; the replacing
//! answers are the error shapes AWS documents for each protocol, nothing else:
//! - STS and IAM (awsQuery): HTTP 400 (throttling) or 500, `text/xml`,
//!   `<ErrorResponse><Error><Type>Sender|Receiver</Type><Code>Throttling|InternalFailure</Code>…`
//!   (<https://docs.aws.amazon.com/STS/latest/APIReference/CommonErrors.html>);
//! - Secrets Manager (awsJson 1.1): HTTP 400 `{"__type":"ThrottlingException",…}` or 500
//!   `{"__type":"InternalServiceError",…}`
//!   (<https://docs.aws.amazon.com/secretsmanager/latest/apireference/CommonErrors.html>).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;

/// The AWS service a request is for, from its SigV4 credential scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `sts`: awsQuery, XML answers.
    Sts,
    /// `secretsmanager`: awsJson 1.1.
    SecretsManager,
    /// `iam`: awsQuery, XML answers.
    Iam,
}

impl Service {
    /// The service named in `Authorization: … Credential=KEY/DATE/REGION/SERVICE/aws4_request`.
    pub fn of(authorization: &str) -> Option<Service> {
        let scope = authorization.split("Credential=").nth(1)?;
        match scope.split('/').nth(3)? {
            "sts" => Some(Service::Sts),
            "secretsmanager" => Some(Service::SecretsManager),
            "iam" => Some(Service::Iam),
            _ => None,
        }
    }
}

/// What happens to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long, then forward it.
    Delay(Duration),
    /// Wait until [`Faults::release`], then forward it.
    Hold,
    /// Close the connection without an answer (FIN).
    Drop,
    /// Reset the connection without an answer (RST).
    Reset,
    /// Answer with the service's throttling error (HTTP 400).
    Throttle,
    /// Answer with the service's internal error (HTTP 500).
    ServerError,
    /// Forward it, then return the real answer cut in half (status and headers kept).
    Malformed,
}

impl Fault {
    /// Lower-case name, as exchanges record it.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Delay(_) => "delay",
            Fault::Hold => "hold",
            Fault::Drop => "drop",
            Fault::Reset => "reset",
            Fault::Throttle => "throttle",
            Fault::ServerError => "server_error",
            Fault::Malformed => "malformed",
        }
    }
}

#[derive(Debug)]
struct Rule {
    service: Service,
    operation: Option<String>,
    fault: Fault,
    remaining: Option<usize>,
}

/// The faults to inject, first matching rule wins; shared by every connection of the proxy.
#[derive(Debug)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    applied: Mutex<Vec<(Service, Option<String>, Fault)>>,
    released: tokio::sync::watch::Sender<bool>,
    held: AtomicUsize,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            rules: Mutex::default(),
            applied: Mutex::default(),
            released: tokio::sync::watch::Sender::new(false),
            held: AtomicUsize::new(0),
        }
    }
}

impl Faults {
    /// Applies `fault` to the next `times` requests (every one with `None`) for `service`
    /// and, if given, `operation` (`AssumeRole`, `GetSecretValue`, `PutRolePolicy`, …).
    pub fn inject(&self, service: Service, operation: Option<&str>, fault: Fault, times: Option<usize>) {
        if fault == Fault::Hold {
            self.released.send_replace(false);
        }
        self.lock().push(Rule { service, operation: operation.map(str::to_owned), fault, remaining: times });
    }

    /// Removes every rule and releases every held request.
    pub fn clear(&self) {
        self.lock().clear();
        self.release();
    }

    /// Lets every held request (and every later one matching a `Hold`) go on to MiniStack.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Every fault applied so far (service, operation, fault), in order; kept across
    /// [`Faults::clear`], counted when the request arrives (whatever became of it after).
    pub fn applied(&self) -> Vec<(Service, Option<String>, Fault)> {
        self.applied.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// How many requests are being held right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// The fault for this request, counting it against its rule.
    pub(crate) fn take(&self, service: Option<Service>, operation: Option<&str>) -> Option<Fault> {
        let service = service?;
        let mut rules = self.lock();
        let rule = rules.iter_mut().find(|rule| {
            rule.service == service
                && rule.operation.as_deref().is_none_or(|wanted| Some(wanted) == operation)
                && rule.remaining != Some(0)
        })?;
        if let Some(remaining) = rule.remaining.as_mut() {
            *remaining -= 1;
        }
        let fault = rule.fault;
        drop(rules);
        self.applied.lock().unwrap_or_else(PoisonError::into_inner).push((
            service,
            operation.map(str::to_owned),
            fault,
        ));
        Some(fault)
    }

    /// Waits until [`Faults::release`] (at once if already released).
    pub(crate) async fn wait_release(&self) {
        let mut released = self.released.subscribe();
        self.held.fetch_add(1, Ordering::SeqCst);
        let _ = released.wait_for(|released| *released).await;
        self.held.fetch_sub(1, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The answer that replaces the upstream's for a throttling or internal-error fault: status,
/// content type, body, in the service's documented shape.
pub(crate) fn error_answer(service: Service, fault: Fault) -> (u16, &'static str, Bytes) {
    let throttle = fault == Fault::Throttle;
    match service {
        Service::SecretsManager => {
            let (status, code, message) = if throttle {
                (400, "ThrottlingException", "Rate exceeded")
            } else {
                (500, "InternalServiceError", "An error occurred on the server side.")
            };
            let body = serde_json::json!({ "__type": code, "message": message }).to_string();
            (status, "application/x-amz-json-1.1", Bytes::from(body))
        }
        Service::Sts | Service::Iam => {
            let (status, kind, code, message) = if throttle {
                (400, "Sender", "Throttling", "Rate exceeded")
            } else {
                (500, "Receiver", "InternalFailure", "The request processing has failed because of an unknown error.")
            };
            let namespace = match service {
                Service::Iam => "https://iam.amazonaws.com/doc/2010-05-08/",
                _ => "https://sts.amazonaws.com/doc/2011-06-15/",
            };
            let body = format!(
                "<ErrorResponse xmlns=\"{namespace}\"><Error><Type>{kind}</Type>\
                 <Code>{code}</Code><Message>{message}</Message></Error>\
                 <RequestId>00000000-0000-4000-8000-000000000000</RequestId></ErrorResponse>"
            );
            (status, "text/xml", Bytes::from(body))
        }
    }
}

/// Sets `SO_LINGER` to zero on `fd`, so closing it sends RST instead of FIN.
#[allow(unsafe_code)]
pub(crate) fn reset_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a live stack value; an fd that
    // is no longer a socket only makes the call fail.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_by_service_operation_and_count() {
        let faults = Faults::default();
        faults.inject(Service::Sts, Some("AssumeRole"), Fault::Throttle, Some(2));
        faults.inject(Service::SecretsManager, None, Fault::ServerError, None);
        assert_eq!(faults.take(Some(Service::Sts), Some("GetCallerIdentity")), None);
        assert_eq!(faults.take(Some(Service::Sts), Some("AssumeRole")), Some(Fault::Throttle));
        assert_eq!(faults.take(Some(Service::Sts), Some("AssumeRole")), Some(Fault::Throttle));
        assert_eq!(faults.take(Some(Service::Sts), Some("AssumeRole")), None, "counted out");
        assert_eq!(faults.take(Some(Service::SecretsManager), Some("GetSecretValue")), Some(Fault::ServerError));
        assert_eq!(faults.take(Some(Service::SecretsManager), Some("GetSecretValue")), Some(Fault::ServerError));
        assert_eq!(faults.take(None, None), None);
        faults.clear();
        assert_eq!(faults.take(Some(Service::SecretsManager), Some("GetSecretValue")), None);
    }

    #[test]
    fn the_service_comes_from_the_credential_scope() {
        let header = |service: &str| {
            format!("AWS4-HMAC-SHA256 Credential=ASIA/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host")
        };
        assert_eq!(Service::of(&header("sts")), Some(Service::Sts));
        assert_eq!(Service::of(&header("secretsmanager")), Some(Service::SecretsManager));
        assert_eq!(Service::of(&header("iam")), Some(Service::Iam));
        assert_eq!(Service::of(&header("s3")), None);
        assert_eq!(Service::of("Bearer x"), None);
    }

    #[test]
    fn error_answers_have_each_protocols_shape() {
        let (status, content_type, body) = error_answer(Service::Sts, Fault::Throttle);
        assert_eq!((status, content_type), (400, "text/xml"));
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("<Type>Sender</Type><Code>Throttling</Code>"), "{text}");
        let (status, _, body) = error_answer(Service::SecretsManager, Fault::Throttle);
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!((status, json["__type"].as_str()), (400, Some("ThrottlingException")));
        let (status, _, body) = error_answer(Service::SecretsManager, Fault::ServerError);
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!((status, json["__type"].as_str()), (500, Some("InternalServiceError")));
        let (status, _, body) = error_answer(Service::Iam, Fault::ServerError);
        assert_eq!(status, 500);
        assert!(String::from_utf8_lossy(&body).contains("<Code>InternalFailure</Code>"));
    }
}
