//! The single seam through which a plugin's secret request passes:
//! [`get_secret`] checks the grant, resolves the secret in the namespace
//! chain, adds the value to the execution's mask set and only then returns
//! it. The plugin-facing import in `sandbox` is a thin call to this function.
//!
//! Invariant: no other code path hands a secret value to a plugin.

use crate::audit::{Action, Actor, AuditLog, NewRecord, Outcome};
use crate::backend::{Lookup, Pin, Pins, Router};
use crate::mask::MaskSet;
use crate::names::{ExecutionId, FlowId, Namespace, TaskId};
use crate::network::inject::BoundSecrets;
use crate::policy::{Grants, Refusal};
use crate::secret::SecretValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most audited `secrets.get` calls one task may make (granted, denied and
/// not-found alike); later calls are `unavailable`, and one summary record
/// says so. Bounds how much a hostile plugin can grow the audit log.
pub const MAX_AUDITED_REQUESTS: u64 = 10_000;

/// Who is asking: the running task's identity.
#[derive(Debug, Clone)]
pub struct TaskIdentity {
    /// Namespace its secrets are looked up in.
    pub namespace: Namespace,
    /// The flow it belongs to.
    pub flow: FlowId,
    /// The task id.
    pub task: TaskId,
    /// The execution.
    pub execution: ExecutionId,
    /// SHA-256 of the plugin's wasm bytes, lowercase hex.
    pub plugin_sha256: String,
}

/// Everything a task's `secrets.get` calls need.
#[derive(Debug, Clone)]
pub struct SecretAccess {
    /// The task.
    pub identity: Arc<TaskIdentity>,
    /// What it may read.
    pub grants: Grants,
    /// Where secrets live.
    pub secrets: Arc<Router>,
    /// The execution's mask set (what the operator sees is masked with it);
    /// every revealed value goes in here first.
    pub masks: Arc<MaskSet>,
    /// This task's own mask set: only what it read. What it hands to later
    /// tasks is masked with this, so how masking treats its output tells it
    /// nothing about secrets it was not granted.
    pub task_masks: Arc<MaskSet>,
    /// `secrets.get` calls so far (see [`MAX_AUDITED_REQUESTS`]).
    pub requests: Arc<AtomicU64>,
    /// Where every attempt is recorded before it is answered.
    pub audit: AuditLog,
    /// The version each secret was first read at in this execution.
    pub pins: Pins,
    /// The destination-bound secrets this task asked for, behind their
    /// placeholders (shared with its outbound HTTP).
    pub bound: Arc<BoundSecrets>,
    /// The credentials this execution minted from dynamic secrets.
    pub leases: Arc<crate::lease::ExecutionLeases>,
    /// When this task must have ended (seconds since the Unix epoch): a
    /// minted credential lives no longer than this plus a margin.
    pub deadline: i64,
}

/// How long a minted credential outlives its task's deadline.
pub const LEASE_MARGIN_SECS: i64 = 60;

impl TaskIdentity {
    /// This task as an audit actor.
    pub fn actor(&self) -> Actor {
        Actor::Task {
            flow: self.flow.as_str().to_owned(),
            task: self.task.as_str().to_owned(),
            execution: self.execution.clone(),
            plugin_sha256: self.plugin_sha256.clone(),
        }
    }
}

/// Why a request was not answered with a value; mirrors the WIT `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// Not granted to this task.
    #[error("denied")]
    Denied,
    /// In no namespace of the chain.
    #[error("not found")]
    NotFound,
    /// Revoked by an operator.
    #[error("revoked")]
    Revoked,
    /// Past its expiry.
    #[error("expired")]
    Expired,
    /// The host could not serve the request; never contains a value.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Decides one `secrets.get(requested)` call from a plugin.
///
/// Order matters: decide, then write the audit record durably, then add the
/// value to the mask set, then release it. If the record cannot be written
/// the answer is `Unavailable` and no value leaves (fail closed).
pub fn get_secret(access: &SecretAccess, requested: &str) -> Result<SecretValue, AccessError> {
    let id = &access.identity;
    let n = access.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if n > MAX_AUDITED_REQUESTS {
        if n == MAX_AUDITED_REQUESTS + 1 {
            let rec = NewRecord::ok(&id.actor(), Action::TaskReadCap, &id.namespace, None)
                .outcome(Outcome::Unavailable)
                .reason(format!(
                    "the task made {MAX_AUDITED_REQUESTS} audited secret requests; this and every later one is refused"
                ));
            let _ = access.audit.record(rec);
        }
        return Err(AccessError::Unavailable(format!(
            "this task has made {MAX_AUDITED_REQUESTS} secret requests, the most one task may make"
        )));
    }
    let mut record = NewRecord {
        actor: id.actor(),
        action: Action::SecretRead,
        outcome: Outcome::Denied,
        namespace: id.namespace.clone(),
        secret: None,
        version: None,
        reason: None,
        value_hmac: None,
        detail: None,
    };
    let grant = match access.grants.check(requested) {
        Ok(g) => g,
        Err(refusal) => {
            // The requested name is plugin-chosen text: a plugin could pass
            // a value it read earlier. Such a request is recorded masked.
            let masked = access.masks.mask(requested);
            if masked != requested {
                record.reason = Some(format!(
                    "not granted: the requested name {:?} contains a secret value",
                    crate::audit::bounded(&masked)
                ));
            } else {
                if let Refusal::NotGranted(n) = &refusal {
                    record.secret = Some(n.clone());
                }
                record.reason = Some(refusal.to_string());
            }
            tracing::info!(task = %id.task, execution = %id.execution, "secret request denied: {}", access.masks.mask(&refusal.to_string()));
            return audited(access, record, Err(AccessError::Denied));
        }
    };
    record.secret = Some(grant.name().clone());
    let lookup = {
        let mut pins = access.pins.lock().unwrap_or_else(|p| p.into_inner());
        let pin = pins.get(grant.name()).cloned();
        let lookup = access.secrets.lookup(&id.namespace, &grant, pin.as_ref());
        if let (None, Ok(Lookup::Found(found))) = (&pin, &lookup) {
            // Every later read in this execution gets this same version.
            pins.insert(
                grant.name().clone(),
                Pin { namespace: found.namespace.clone(), version: found.version.clone() },
            );
        }
        lookup
    };
    match lookup {
        Ok(Lookup::Found(found)) => {
            record.outcome = Outcome::Granted;
            record.reason = Some(format!("found in namespace {}", found.namespace));
            record = found.version.on(record).detail_field("found_in", found.namespace.as_str());
            record.value_hmac = access.audit.fingerprint(found.value.expose());
            if !found.destinations.is_empty() {
                // Bound: the task gets a placeholder; the value goes only
                // into requests to its destinations, put there by the host.
                let to: Vec<String> = found.destinations.iter().map(ToString::to_string).collect();
                record = record.detail_field("bound_to", to);
                audited(access, record, Ok(()))?;
                MaskSet::add_to(&[&access.masks, &access.task_masks], &found.value);
                let placeholder = access.bound.placeholder(grant.name(), found.value, found.destinations);
                tracing::debug!(task = %id.task, secret = %grant.name(), "bound secret: placeholder released");
                return Ok(SecretValue::new(placeholder));
            }
            audited(access, record, Ok(()))?;
            MaskSet::add_to(&[&access.masks, &access.task_masks], &found.value);
            tracing::debug!(task = %id.task, secret = %grant.name(), version = %found.version, "secret released");
            Ok(found.value)
        }
        Ok(Lookup::Dynamic { namespace, def }) => {
            // Checked before anything is minted: nothing to revoke if it fails.
            let bound: Result<Vec<crate::network::AllowEntry>, _> =
                def.destinations.iter().map(|d| d.parse::<crate::network::AllowEntry>()).collect();
            let Ok(bound) = bound else {
                record.outcome = Outcome::Unavailable;
                record.reason = Some("its destinations in the backend configuration do not parse".into());
                let why = format!("secret {} could not be read (the operator's log has the details)", grant.name());
                return audited(access, record, Err(AccessError::Unavailable(why)));
            };
            let until = access.deadline + LEASE_MARGIN_SECS;
            let minted = access.leases.get(&id.actor(), id.execution.as_str(), &namespace, grant.name(), &def, until);
            let (value, lease, new) = match minted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(task = %id.task, secret = %grant.name(), "dynamic secret {} could not be minted: {e}", grant.name());
                    record.outcome = Outcome::Unavailable;
                    record.reason = Some(access.masks.mask(&e.to_string()).into_owned());
                    let why = match &e {
                        crate::lease::MintError::Backend(b) => b.for_plugin(grant.name()),
                        crate::lease::MintError::Unrecorded(_) => {
                            format!("secret {} could not be minted (the operator's log has the details)", grant.name())
                        }
                    };
                    return audited(access, record, Err(AccessError::Unavailable(why)));
                }
            };
            record.outcome = Outcome::Granted;
            record.reason = Some(format!(
                "{} credential of dynamic secret in namespace {namespace}",
                if new { "a new" } else { "this execution's" }
            ));
            record = record
                .detail_field("found_in", namespace.as_str())
                .detail_field("lease_id", lease.lease_id.clone())
                .detail_field("dynamic", true);
            record.value_hmac = access.audit.fingerprint(value.expose());
            if !bound.is_empty() {
                record = record.detail_field("bound_to", def.destinations.clone());
            }
            audited(access, record, Ok(()))?;
            MaskSet::add_to(&[&access.masks, &access.task_masks], &value);
            // The credential's fields too: a task that parses the JSON and
            // prints only the password is masked as well.
            if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(value.expose()) {
                for v in fields.values().filter_map(serde_json::Value::as_str).filter(|v| v.len() >= 4) {
                    MaskSet::add_to(&[&access.masks, &access.task_masks], &SecretValue::new(v.to_owned()));
                }
            }
            if !bound.is_empty() {
                // Bound: the task gets a placeholder; the credential goes only
                // into requests to its destinations.
                return Ok(SecretValue::new(access.bound.placeholder(grant.name(), value, bound)));
            }
            Ok(value)
        }
        Ok(Lookup::NotFound) => {
            record.outcome = Outcome::NotFound;
            audited(access, record, Err(AccessError::NotFound))
        }
        Ok(Lookup::Elsewhere { found, vouched }) => {
            let why = elsewhere(grant.name(), &found, &vouched);
            record.reason = Some(why.clone());
            record = record.detail_field("found_in", found.as_str()).detail_field("vouched_in", vouched.as_str());
            tracing::warn!(task = %id.task, execution = %id.execution, "secret request refused: {why}");
            audited(access, record, Err(AccessError::Unavailable(why)))
        }
        Ok(Lookup::Revoked { namespace, version }) => {
            record = version.on(record);
            record.outcome = Outcome::Revoked;
            record.reason = Some(format!("revoked in namespace {namespace}"));
            audited(access, record, Err(AccessError::Revoked))
        }
        Ok(Lookup::Expired { namespace, version }) => {
            record = version.on(record);
            record.outcome = Outcome::Expired;
            record.reason = Some(format!("expired in namespace {namespace}"));
            audited(access, record, Err(AccessError::Expired))
        }
        Err(e) => {
            // The operator's log and the audit record get the details; the
            // plugin gets no path, address or internal detail.
            tracing::warn!(task = %id.task, secret = %grant.name(), "secret {} is unavailable: {e}", grant.name());
            record.outcome = if e.is_tampered() { Outcome::Tampered } else { Outcome::Unavailable };
            record.reason = Some(access.masks.mask(&e.to_string()).into_owned());
            audited(access, record, Err(AccessError::Unavailable(e.for_plugin(grant.name()))))
        }
    }
}

/// Why a deployed revision's grant of `name` is not served: it resolves in
/// `found` now, not in `vouched`, where its deploy was checked. The plugin,
/// the audit record and the operator all get this text (namespaces only).
pub fn elsewhere(name: &crate::names::SecretName, found: &Namespace, vouched: &Namespace) -> String {
    format!(
        "secret {name} now resolves in namespace {found}, but this flow revision was checked for it in namespace \
         {vouched}: deploy the flow again so that someone holding secret:use in {found} vouches for it"
    )
}

/// Writes `record`; returns `answer` only once it is durable.
fn audited<T>(access: &SecretAccess, record: NewRecord, answer: Result<T, AccessError>) -> Result<T, AccessError> {
    match access.audit.record(record) {
        Ok(_) => answer,
        Err(e) => {
            tracing::error!("audit record could not be written; refusing the request: {e}");
            Err(AccessError::Unavailable("the audit log cannot be written, so nothing is released".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::backend::memory::MemoryBackend;
    use crate::backend::{Backends, Version};
    use crate::crypto::MasterKey;
    use crate::names::SecretName;
    use crate::store::{SecretStore, SetOptions};

    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        fake: Arc<MemoryBackend>,
        access: SecretAccess,
    }

    /// A task in namespace `team.a` granted `K` and `GONE`, whose namespace
    /// `team` is served by an in-memory backend.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SecretStore::open_with_key(&path, MasterKey::generate()).unwrap();
        let audit = AuditLog::open(&path, store.integrity().clone(), None).unwrap();
        let fake = Arc::new(MemoryBackend::new());
        let team = Namespace::new("team").unwrap();
        let router = Router::new(LocalBackend::new(store), Backends::none(), None).unwrap().serve(team, fake.clone());
        let task = TaskId::new("t").unwrap();
        let router = Arc::new(router);
        let leases = Arc::new(crate::lease::ExecutionLeases::new(router.clone(), audit.clone(), Actor::Server));
        let access = SecretAccess {
            identity: Arc::new(TaskIdentity {
                namespace: Namespace::new("team.a").unwrap(),
                flow: task.clone(),
                task,
                execution: ExecutionId::generate(),
                plugin_sha256: "0".repeat(64),
            }),
            grants: Grants::new(["K", "GONE"].map(|n| SecretName::new(n).unwrap())),
            secrets: router,
            masks: Arc::new(MaskSet::new()),
            task_masks: Arc::new(MaskSet::new()),
            requests: Default::default(),
            audit,
            pins: Default::default(),
            bound: Default::default(),
            leases,
            deadline: crate::store::now() + 30,
        };
        Fixture { _dir: dir, path, fake, access }
    }

    fn put(f: &Fixture, name: &str, value: &str) {
        let me = Actor::Cli { user: "tester".into() };
        let (ns, name) = (Namespace::new("team").unwrap(), SecretName::new(name).unwrap());
        f.access.secrets.set(&me, &ns, &name, &SecretValue::new(value.into()), &SetOptions::default()).unwrap();
    }

    fn reads(f: &Fixture) -> Vec<crate::audit::Record> {
        let filter = crate::audit::Filter { action: Some("secret.read".into()), ..Default::default() };
        crate::audit::list(&crate::audit::open(&f.path, false).unwrap(), &f.path, &filter).unwrap()
    }

    #[test]
    fn a_granted_read_is_audited_masked_and_pinned() {
        let f = fixture();
        put(&f, "K", "first-value");
        assert_eq!(get_secret(&f.access, "K").unwrap().expose(), "first-value");
        assert_eq!(f.access.masks.mask("x first-value y"), "x *** y");
        assert_eq!(f.access.task_masks.mask("first-value"), "***");
        put(&f, "K", "second-value");
        assert_eq!(get_secret(&f.access, "K").unwrap().expose(), "first-value", "the execution keeps its version");
        let pins = f.access.pins.lock().unwrap();
        assert_eq!(pins[&SecretName::new("K").unwrap()].version, Version::Number(1));
        drop(pins);
        let r = reads(&f);
        assert_eq!((r[0].outcome.as_str(), r[0].version), ("granted", Some(1)));
        assert_eq!(r[0].reason.as_deref(), Some("found in namespace team"));
        assert!(r[0].detail.as_deref().unwrap().contains(r#""found_in":"team""#));
    }

    #[test]
    fn denied_not_found_and_revoked_are_answered_and_audited() {
        let f = fixture();
        assert_eq!(get_secret(&f.access, "NOT_GRANTED").unwrap_err(), AccessError::Denied);
        assert_eq!(get_secret(&f.access, "K").unwrap_err(), AccessError::NotFound);
        put(&f, "GONE", "v");
        let me = Actor::Cli { user: "tester".into() };
        f.access.secrets.revoke(&me, &Namespace::new("team").unwrap(), &SecretName::new("GONE").unwrap()).unwrap();
        assert_eq!(get_secret(&f.access, "GONE").unwrap_err(), AccessError::Revoked);
        let outcomes: Vec<String> = reads(&f).into_iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes, ["denied", "not-found", "revoked"]);
    }

    #[test]
    fn an_unreachable_backend_is_unavailable_without_its_address() {
        let f = fixture();
        put(&f, "K", "v");
        f.fake.set_down(true);
        let AccessError::Unavailable(why) = get_secret(&f.access, "K").unwrap_err() else { panic!() };
        assert!(why.contains("could not be reached") && !why.contains("fake.internal"), "{why}");
        let r = reads(&f);
        assert_eq!(r[0].outcome, "unavailable");
        assert!(r[0].reason.as_deref().unwrap().contains("fake.internal"), "the operator's record has the detail");
    }
}
