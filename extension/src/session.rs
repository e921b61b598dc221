//! Sessions: the short-lived, narrowly scoped credentials each invocation reads secrets with.
//!
//! A [`Session`] is one `AssumeRole` on the configured role with a session policy from
//! [`crate::policy`], bound to the invocation's end. Its credentials live only inside the SDK's
//! `Credentials` type, which holds them in `Zeroizing` strings, and inside the Secrets Manager
//! and Systems Manager clients built for this session alone (each only when the allowlist has
//! items of its kind); dropping the session drops them and wipes the credentials.
//! See <https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html>.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sdk_secretsmanager as secretsmanager;
use aws_sdk_ssm as ssm;
use aws_sdk_sts as sts;

use crate::config::Config;
use crate::domain::error::SessionError;
use crate::domain::item::Kind;
use crate::domain::session_name;
use crate::evidence::Evidence;
use crate::policy;
use crate::tenant::Tenancy;

/// Builds sessions: holds the STS client (execution-role credentials) and the templates for
/// per-session Secrets Manager and Systems Manager clients.
pub struct SessionFactory {
    sts: sts::Client,
    secrets_manager: secretsmanager::config::Builder,
    ssm: ssm::config::Builder,
    config: Arc<Config>,
    tenancy: Arc<Tenancy>,
    /// `None` until drawn: a SnapStart INIT draws nothing random before restore.
    environment_id: Mutex<Option<String>>,
    evidence: Arc<Evidence>,
}

impl fmt::Debug for SessionFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionFactory").field("environment_id", &self.environment_id()).finish()
    }
}

impl SessionFactory {
    /// A factory using `sdk` (the execution role's credentials, region, HTTP client).
    pub fn new(
        sdk: &aws_config::SdkConfig,
        config: Arc<Config>,
        tenancy: Arc<Tenancy>,
        environment_id: Option<String>,
        evidence: Arc<Evidence>,
    ) -> Self {
        let timeouts = aws_smithy_types::timeout::TimeoutConfig::builder()
            .operation_timeout(config.upstream_timeout)
            .connect_timeout(config.upstream_timeout.min(Duration::from_secs(2)))
            .build();
        // Endpoints are always set explicitly (None = the SDK's own resolution), so the
        // service-specific variables meant for the function (AWS_ENDPOINT_URL_SECRETS_MANAGER,
        // AWS_ENDPOINT_URL_SSM, pointing here) are never followed: the extension would call itself.
        let mut sts = sts::config::Builder::from(sdk).timeout_config(timeouts.clone());
        sts.set_endpoint_url(config.endpoints.sts.clone());
        let mut secrets_manager = secretsmanager::config::Builder::from(sdk).timeout_config(timeouts.clone());
        secrets_manager.set_endpoint_url(config.endpoints.secrets_manager.clone());
        let mut ssm = ssm::config::Builder::from(sdk).timeout_config(timeouts);
        ssm.set_endpoint_url(config.endpoints.ssm.clone());
        Self {
            sts: sts::Client::from_conf(sts.build()),
            secrets_manager,
            ssm,
            config,
            tenancy,
            environment_id: Mutex::new(environment_id),
            evidence,
        }
    }

    /// The random id of this execution environment, part of every session name; `None`
    /// before a SnapStart restore.
    pub fn environment_id(&self) -> Option<String> {
        self.environment_id.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Draws the environment id anew (after a SnapStart restore: every environment restored
    /// from one snapshot gets its own). Returns it.
    pub fn draw_environment_id(&self) -> String {
        let id = new_environment_id();
        *self.environment_id.lock().unwrap_or_else(PoisonError::into_inner) = Some(id.clone());
        id
    }

    /// Assumes the role for `label` (a request id, or `init`) with a policy valid until `end`.
    ///
    /// # Errors
    /// [`SessionError`] without any credential in it.
    pub async fn start(&self, label: &str, sequence: u32, end: SystemTime) -> Result<Session, SessionError> {
        // Drawn at INIT, or at restore; a session can only be asked for after either.
        let environment_id = self.environment_id().unwrap_or_else(|| self.draw_environment_id());
        let name = session_name::session_name(&environment_id, label, sequence);
        if !session_name::is_valid(&name) {
            return Err(SessionError::InvalidName);
        }
        let allowlist = self.tenancy.current().ok_or(SessionError::TenantUnknown)?;
        let session_policy = policy::session_policy(&allowlist, end);
        let duration = i32::try_from(self.config.session_duration.as_secs()).unwrap_or(900);
        let started = std::time::Instant::now();
        let result = self
            .sts
            .assume_role()
            .role_arn(self.config.role_arn.as_str())
            .role_session_name(&name)
            .duration_seconds(duration)
            .policy(session_policy)
            .send()
            .await;
        let mut output = result.map_err(|error| classify_sts_error(&error))?;
        self.evidence.session(started.elapsed());
        let Some(credentials) = output.credentials.take() else {
            return Err(SessionError::Upstream { kind: "answer without credentials".into() });
        };
        // `AROA…:session-name`: the role's unique id, for revocation statements.
        let role_id = output
            .assumed_role_user
            .as_ref()
            .and_then(|user| user.assumed_role_id.split(':').next())
            .map(str::to_owned);
        let sts::types::Credentials { access_key_id, secret_access_key, session_token, expiration, .. } = credentials;
        let expiry = SystemTime::try_from(expiration).ok();
        // Moved, not copied: `Credentials` keeps them in `Zeroizing` strings.
        let credentials =
            Credentials::new(access_key_id, secret_access_key, Some(session_token), expiry, "scoped-session");
        // No identity cache: clients built from one SdkConfig share its lazy cache, which would
        // keep every session's credentials alive (unwiped) after the session is dropped. A
        // session's credentials are static; there is nothing to cache. Each client only for a
        // kind the allowlist has.
        let secrets_manager = (allowlist.count(Kind::Secret) > 0).then(|| {
            secretsmanager::Client::from_conf(
                self.secrets_manager
                    .clone()
                    .credentials_provider(credentials.clone())
                    .identity_cache(secretsmanager::config::IdentityCache::no_cache())
                    .build(),
            )
        });
        let ssm = (allowlist.count(Kind::Parameter) > 0).then(|| {
            ssm::Client::from_conf(
                self.ssm
                    .clone()
                    .credentials_provider(credentials)
                    .identity_cache(ssm::config::IdentityCache::no_cache())
                    .build(),
            )
        });
        tracing::info!(
            target: "audit",
            event = "session_started",
            request_id = %label,
            session = %name,
            policy_end = %crate::domain::time::iso8601_ceil(end),
            assume_role_ms = started.elapsed().as_millis() as u64,
        );
        Ok(Session { name, end, secrets_manager, ssm, role_id, succeeded: std::sync::atomic::AtomicBool::new(false) })
    }
}

/// A random id for an execution environment: 8 characters of `[a-z2-7]` (40 bits), so
/// `ss-{env}-{uuid}` is 48 characters, inside STS's 64.
pub fn new_environment_id() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source: fall back to the clock, still unique enough per environment.
        let nanos = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        bytes = (nanos as u64).to_le_bytes();
    }
    bytes.iter().map(|b| char::from(ALPHABET[usize::from(b % 32)])).collect()
}

/// One invocation's credentials and the clients that use them. Dropping it wipes them.
pub struct Session {
    name: String,
    end: SystemTime,
    secrets_manager: Option<secretsmanager::Client>,
    ssm: Option<ssm::Client>,
    role_id: Option<String>,
    succeeded: std::sync::atomic::AtomicBool,
}

impl Session {
    /// The `RoleSessionName`, as CloudTrail shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When AWS stops honouring the credentials (the policy's `aws:CurrentTime` bound).
    pub fn end(&self) -> SystemTime {
        self.end
    }

    /// Records that AWS accepted these credentials at least once.
    pub fn mark_succeeded(&self) {
        self.succeeded.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether AWS accepted these credentials before: a later refusal then means they were
    /// revoked, not that the role never allowed the read.
    pub fn has_succeeded(&self) -> bool {
        self.succeeded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The scoped role's unique id (`AROA…`), as STS reported it.
    pub fn role_id(&self) -> Option<&str> {
        self.role_id.as_deref()
    }

    /// The Secrets Manager client signing with this session's credentials (`None` when the
    /// allowlist has no secret).
    pub fn client(&self) -> Option<&secretsmanager::Client> {
        self.secrets_manager.as_ref()
    }

    /// The Systems Manager client signing with this session's credentials (`None` when the
    /// allowlist has no parameter).
    pub fn ssm(&self) -> Option<&ssm::Client> {
        self.ssm.as_ref()
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("name", &self.name).finish_non_exhaustive()
    }
}

fn classify_sts_error(
    error: &sts::error::SdkError<sts::operation::assume_role::AssumeRoleError, sts::config::http::HttpResponse>,
) -> SessionError {
    use sts::error::{ProvideErrorMetadata, SdkError};
    match error {
        SdkError::TimeoutError(_) => SessionError::Timeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => SessionError::Timeout,
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown");
            let mut code = code.to_owned();
            code.retain(|c| c.is_ascii_alphanumeric() || c == '.');
            match code.as_str() {
                "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => SessionError::Throttled,
                _ if service.raw().status().is_client_error() => SessionError::Refused { code },
                // A 5xx after every retry, or a 200 that does not parse: STS failed, it did
                // not refuse.
                _ => SessionError::Upstream { kind: code },
            }
        }
        SdkError::DispatchFailure(_) => SessionError::Upstream { kind: "connection failed".into() },
        _ => SessionError::Upstream { kind: "unexpected answer".into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn environment_ids_are_short_random_and_sts_safe() {
        let (a, b) = (new_environment_id(), new_environment_id());
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
        let name = session_name::session_name(&a, &"f".repeat(36), 0);
        assert!(session_name::is_valid(&name));
        assert_eq!(name.len(), 48, "ss-{{env}}-{{uuid}} leaves room for a renewal suffix");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_scoped_allowlist_asks_sts_for_nothing_before_its_tenant_is_known() {
        let (factory, _, evidence) = testing::factory(testing::config("tenants/{tenant}/db", &[])).await;
        let refused = factory.start("r1", 0, SystemTime::now() + Duration::from_secs(60)).await;
        assert!(matches!(refused, Err(SessionError::TenantUnknown)), "{refused:?}");
        assert!(evidence.take_document("NS", "f", &[]).is_none(), "no AssumeRole was timed: none was made");
    }

    #[tokio::test(start_paused = true)]
    async fn a_restore_draws_a_new_environment_id() {
        let (factory, _, _) = testing::factory(testing::config("app/db", &[])).await;
        assert_eq!(factory.environment_id().as_deref(), Some("testenv1"));
        let drawn = factory.draw_environment_id();
        assert_ne!(drawn, "testenv1");
        assert_eq!(factory.environment_id(), Some(drawn));
    }
}
