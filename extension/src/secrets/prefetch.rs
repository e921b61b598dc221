//! The prefetch at INVOKE: every allowlisted item whose latest version is missing or stale,
//! fetched with the invocation's session while the function starts, in as few calls as AWS
//! allows: secrets with `BatchGetSecretValue` (20 a call), parameters with `GetParameters` (10
//! a call, decrypted), every call in parallel. The keys are locked first, so a request for one
//! of them waits for the prefetch instead of fetching it a second time. Failures are logged and
//! left for the requests themselves to report.
//!
//! `GetParameters` is authorised per parameter and fails whole when any one name is refused
//! (a role policy that misses one, a key the session may not decrypt with); the prefetch then
//! asks for that call's names one `GetParameter` each, so one refusal costs only its own item.
//! (MiniStack authorises `GetParameters` against `*`, so under it every such call is refused:
//! see docs/testing.md.)
//! See <https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_GetParameters.html>.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::cache::Key;
use super::parameter::{self, BATCH_LIMIT as PARAMETER_BATCH_LIMIT, ParameterValue};
use super::served::Item;
use super::upstream::classify;
use super::value::SecretValue;
use super::{BATCH_LIMIT, Secrets};
use crate::config::allowlist::{Allowlist, EntryIndex};
use crate::domain::code::Code;
use crate::domain::error::ReadError;
use crate::domain::item::{Kind, Wanted};
use crate::domain::parameter::ParameterVersion;
use crate::domain::version::Version;
use crate::invocation::scope::Scope;
use crate::session::Session;

/// The latest version of a parameter, decrypted or not.
fn latest(decrypt: bool) -> Wanted {
    Wanted::Parameter { version: ParameterVersion::Latest, decrypt }
}

impl Secrets {
    /// Fetches every allowlisted item whose latest version is missing or stale.
    pub async fn prefetch(&self, scope: &Arc<Scope>) {
        let deadline = tokio::time::Instant::now() + self.invocations.wait_timeout();
        let allowlist = match self.tenancy.allowlist(deadline).await {
            Ok(allowlist) => allowlist,
            Err(error) => {
                tracing::warn!(event = "prefetch_failed", request_id = %scope.label(), cause = %error);
                return;
            }
        };
        let mut keys = Vec::with_capacity(allowlist.len() * 2);
        for (entry, item) in allowlist.iter() {
            match item.kind() {
                Kind::Secret => keys.push(Key { entry, wanted: Wanted::Secret(Version::Current) }),
                // Both forms of a parameter: a String stored decrypted serves either.
                Kind::Parameter => keys.extend([true, false].map(|decrypt| Key { entry, wanted: latest(decrypt) })),
            }
        }
        keys.retain(|key| self.cache.fresh_served(key).is_none());
        if keys.is_empty() {
            return;
        }
        // The session first, with no key locked: a request for one of these items meanwhile
        // waits for the same session, not behind the prefetch's wait for it.
        let session = match scope.session().await {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(event = "prefetch_failed", request_id = %scope.label(), cause = %error);
                return;
            }
        };
        // Held until the batches are stored: a request for one of these waits for them instead
        // of fetching it a second time.
        let locked = self.cache.lock_missing(keys).await;
        let wanted = |keep: fn(&Wanted) -> bool| -> Vec<(EntryIndex, String)> {
            locked
                .iter()
                .filter(|(key, _)| keep(&key.wanted))
                .filter_map(|(key, _)| Some((key.entry, allowlist.entry(key.entry)?.upstream_id().to_owned())))
                .collect()
        };
        let secrets = wanted(|w| matches!(w, Wanted::Secret(_)));
        let parameters = wanted(|w| *w == latest(true));
        if secrets.is_empty() && parameters.is_empty() {
            scope.release(&session).await;
            return;
        }
        tokio::join!(
            self.prefetch_secrets(scope, &session, &allowlist, &secrets),
            self.prefetch_parameters(scope, &session, &allowlist, &parameters),
        );
        scope.release(&session).await;
        drop(locked);
    }

    async fn prefetch_secrets(
        &self,
        scope: &Arc<Scope>,
        session: &Session,
        allowlist: &Allowlist,
        wanted: &[(EntryIndex, String)],
    ) {
        let Some(client) = session.client().filter(|_| !wanted.is_empty()) else { return };
        let calls = wanted.chunks(BATCH_LIMIT).map(|chunk| {
            let ids: Vec<String> = chunk.iter().map(|(_, id)| id.clone()).collect();
            self.counters.upstream_calls.fetch_add(1, Relaxed);
            client.batch_get_secret_value().set_secret_id_list(Some(ids)).send()
        });
        for result in futures_util::future::join_all(calls).await {
            let output = match result {
                Ok(output) => output,
                Err(error) => {
                    tracing::warn!(event = "prefetch_failed", request_id = %scope.label(), cause = %classify(&error));
                    continue;
                }
            };
            session.mark_succeeded();
            for error in output.errors.unwrap_or_default() {
                tracing::warn!(
                    event = "prefetch_error",
                    request_id = %scope.label(),
                    secret_id = error.secret_id.as_deref().unwrap_or(""),
                    code = error.error_code.as_deref().unwrap_or(""),
                );
            }
            for item in output.secret_values.unwrap_or_default() {
                let value = SecretValue::from_parts(
                    item.arn,
                    item.name,
                    item.version_id,
                    item.secret_string,
                    item.secret_binary,
                    item.version_stages,
                    item.created_date,
                );
                let entry = wanted
                    .iter()
                    .find(|(_, id)| *id == value.arn() || *id == value.name())
                    .map(|(entry, _)| *entry)
                    .or_else(|| allowlist.find(value.arn()));
                if let Some(entry) = entry {
                    self.counters.fetched.fetch_add(1, Relaxed);
                    let key = Key { entry, wanted: Wanted::Secret(Version::Current) };
                    self.cache.store(scope, key, Item::Secret(Arc::new(value)));
                }
            }
        }
    }

    async fn prefetch_parameters(
        &self,
        scope: &Arc<Scope>,
        session: &Session,
        allowlist: &Allowlist,
        wanted: &[(EntryIndex, String)],
    ) {
        let Some(client) = session.ssm().filter(|_| !wanted.is_empty()) else { return };
        let calls = wanted.chunks(PARAMETER_BATCH_LIMIT).map(|chunk| async move {
            let names: Vec<String> = chunk.iter().map(|(_, name)| name.clone()).collect();
            self.counters.upstream_calls.fetch_add(1, Relaxed);
            (chunk, client.get_parameters().set_names(Some(names)).with_decryption(true).send().await)
        });
        for (chunk, result) in futures_util::future::join_all(calls).await {
            let output = match result.map_err(|e| classify(&e)) {
                Ok(output) => output,
                Err(ReadError::AccessDenied { code }) => {
                    // One refused name fails the whole call: ask for each on its own.
                    tracing::info!(event = "prefetch_batch_refused", request_id = %scope.label(), code = %code);
                    self.prefetch_one_by_one(scope, session, chunk).await;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(event = "prefetch_failed", request_id = %scope.label(), cause = %error);
                    continue;
                }
            };
            session.mark_succeeded();
            for name in output.invalid_parameters.unwrap_or_default() {
                tracing::warn!(event = "prefetch_error", request_id = %scope.label(), parameter = %name, code = Code::ParameterNotFound.as_str());
            }
            for item in output.parameters.unwrap_or_default() {
                let value = ParameterValue::from_sdk(item);
                let entry = chunk
                    .iter()
                    .find(|(_, id)| crate::domain::parameter::same_name(id, value.name()))
                    .map(|(entry, _)| *entry)
                    .or_else(|| allowlist.find_parameter(value.name()));
                if let Some(entry) = entry {
                    self.store_parameter(scope, entry, value);
                }
            }
        }
    }

    /// The names of a refused `GetParameters`, one `GetParameter` each, in parallel.
    async fn prefetch_one_by_one(&self, scope: &Arc<Scope>, session: &Session, chunk: &[(EntryIndex, String)]) {
        let calls = chunk.iter().map(|(entry, name)| async move {
            self.counters.upstream_calls.fetch_add(1, Relaxed);
            (*entry, name, parameter::get(session, name, &ParameterVersion::Latest, true).await)
        });
        for (entry, name, result) in futures_util::future::join_all(calls).await {
            match result {
                Ok(value) => {
                    session.mark_succeeded();
                    self.store_parameter(scope, entry, value);
                }
                Err(error) => {
                    tracing::warn!(event = "prefetch_error", request_id = %scope.label(), parameter = %name, code = error.code().as_str());
                }
            }
        }
    }

    fn store_parameter(&self, scope: &Arc<Scope>, entry: EntryIndex, value: ParameterValue) {
        self.counters.fetched.fetch_add(1, Relaxed);
        self.cache.store(scope, Key { entry, wanted: latest(true) }, Item::Parameter(Arc::new(value)));
    }
}
