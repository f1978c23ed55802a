//! The router: which backend serves a namespace, the one walk of the
//! namespace chain, and the one place management actions are audited.

use super::config::{Backends, ConfigError};
use super::local::LocalBackend;
use super::{BackendError, BackendKind, Read, SecretBackend, Version};
use crate::audit::{Action, Actor, NewRecord, Outcome};
use crate::names::{Namespace, SecretName};
use crate::policy::Grant;
use crate::secret::SecretValue;
use crate::store::{SetOptions, fmt_time};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Which version an execution reads: the one it read first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The namespace it was found in.
    pub namespace: Namespace,
    /// The version.
    pub version: Version,
}

/// Per execution: secret name to the version first read.
pub type Pins = Arc<Mutex<HashMap<SecretName, Pin>>>;

/// A secret found by a lookup.
#[derive(Debug)]
pub struct Resolved {
    /// The namespace of the chain that held it.
    pub namespace: Namespace,
    /// The version returned.
    pub version: Version,
    /// The plaintext.
    pub value: SecretValue,
    /// Where it may be sent (empty: unbound): then it never reaches a
    /// plugin, which gets a placeholder the host fills in on the way out.
    pub destinations: Vec<crate::network::AllowEntry>,
}

/// The answer to a lookup along the namespace chain.
#[derive(Debug)]
pub enum Lookup {
    /// Found and decrypted.
    Found(Resolved),
    /// In no namespace of the chain.
    NotFound,
    /// Revoked, destroyed or deleted where it was found.
    Revoked {
        /// Where.
        namespace: Namespace,
        /// Which version.
        version: Version,
    },
    /// Past its expiry where it was found.
    Expired {
        /// Where.
        namespace: Namespace,
        /// Which version.
        version: Version,
    },
    /// A dynamic secret defined there: mint a credential with [`Router::mint`].
    Dynamic {
        /// Where.
        namespace: Namespace,
        /// How.
        def: super::DynamicDef,
    },
    /// The name now resolves somewhere other than where the deploy vouched
    /// for it (a closer secret was set since, or the vouched one is gone and
    /// a farther one would answer): a new decision nobody has made, so
    /// nothing is read.
    Elsewhere {
        /// Where it resolves now.
        found: Namespace,
        /// Where the revision was checked.
        vouched: Namespace,
    },
}

/// Namespaces to backends: the local store for every namespace no remote
/// backend is configured for.
#[derive(Debug, Clone)]
pub struct Router {
    local: Arc<LocalBackend>,
    remote: HashMap<Namespace, Arc<dyn SecretBackend>>,
    /// Where the configuration is saved when a backend's state changes,
    /// and reloaded from when another process changed it.
    config: Option<Arc<ConfigState>>,
}

#[derive(Debug)]
struct ConfigState {
    path: PathBuf,
    backends: Mutex<Backends>,
    /// The file's modification time and length when last read or written.
    seen: Mutex<Option<(std::time::SystemTime, u64)>>,
}

fn stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Router {
    /// Serves every namespace from `local`, except those `backends` names;
    /// a backend whose state changes is saved back to `config_path`.
    pub fn new(local: LocalBackend, backends: Backends, config_path: Option<PathBuf>) -> Result<Self, BackendError> {
        let mut router = Router { local: Arc::new(local), remote: HashMap::new(), config: None };
        for cfg in backends.list() {
            let ns = Namespace::new(cfg.namespace())
                .map_err(|e| BackendError::Config { backend: cfg.kind().into(), why: e.to_string() })?;
            router.remote.insert(ns, super::open(cfg));
        }
        router.config = config_path.map(|path| {
            let seen = Mutex::new(stamp(&path));
            Arc::new(ConfigState { path, backends: Mutex::new(backends), seen })
        });
        Ok(router)
    }

    /// Reloads the configuration if another process changed it (a
    /// revocation kept there must reach running executions at once).
    pub fn refresh(&self) -> Result<(), BackendError> {
        let Some(state) = &self.config else { return Ok(()) };
        let now = stamp(&state.path);
        let mut seen = state.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == now {
            return Ok(());
        }
        let key = self.local.store().integrity().clone();
        let loaded = Backends::load(&state.path, &key)
            .map_err(|e| BackendError::Config { backend: "the backend configuration".into(), why: e.to_string() })?;
        for cfg in loaded.list() {
            if let Some(b) = Namespace::new(cfg.namespace()).ok().and_then(|ns| self.remote.get(&ns)) {
                b.reconfigure(cfg);
            }
        }
        *state.backends.lock().unwrap_or_else(|p| p.into_inner()) = loaded;
        *seen = now;
        Ok(())
    }

    /// Saves `backend`'s configuration if its state changed.
    fn save_config(&self, backend: &dyn SecretBackend) -> Result<(), ConfigError> {
        let (Some(cfg), Some(state)) = (backend.config(), &self.config) else { return Ok(()) };
        let mut backends = state.backends.lock().unwrap_or_else(|p| p.into_inner());
        if backends.for_namespace(&Namespace::new(cfg.namespace()).unwrap_or_default()) == Some(&cfg) {
            return Ok(());
        }
        backends.upsert(cfg);
        let key = self.local.store().integrity().clone();
        backends.save(&state.path, &key)?;
        *state.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamp(&state.path);
        Ok(())
    }

    /// Serves exactly `namespace` from `backend` (an embedder's own, or a
    /// test's).
    pub fn serve(mut self, namespace: Namespace, backend: Arc<dyn SecretBackend>) -> Self {
        self.remote.insert(namespace, backend);
        self
    }

    /// The local backend: the store, and where audit records are written.
    pub fn local(&self) -> &LocalBackend {
        &self.local
    }

    /// The backend serving exactly `namespace`.
    pub fn backend_for(&self, namespace: &Namespace) -> &dyn SecretBackend {
        match self.remote.get(namespace) {
            Some(b) => b.as_ref(),
            None => self.local.as_ref(),
        }
    }

    /// The remote backends, by namespace.
    pub fn remote(&self) -> impl Iterator<Item = (&Namespace, &dyn SecretBackend)> {
        self.remote.iter().map(|(ns, b)| (ns, b.as_ref()))
    }

    /// Where `name` resolves for `namespace`: the nearest namespace of its
    /// chain that holds it in any state, from metadata alone (no value is
    /// read); `None` when no namespace does.
    pub fn locate(&self, namespace: &Namespace, name: &SecretName) -> Result<Option<Namespace>, BackendError> {
        for ns in namespace.chain() {
            if self.holds(&ns, name)? {
                return Ok(Some(ns));
            }
        }
        Ok(None)
    }

    fn holds(&self, ns: &Namespace, name: &SecretName) -> Result<bool, BackendError> {
        let backend = self.backend_for(ns);
        if backend.keeps_config_state() {
            self.refresh()?;
        }
        backend.holds(ns, name)
    }

    /// Finds the granted secret: in `namespace` or its nearest ancestor
    /// that holds it, or straight at the `pin`ned namespace and version.
    /// The first namespace that has the name decides (found, revoked or
    /// expired); a namespace without it passes on to its parent. A grant
    /// vouched for at a namespace is served from there only: if the name
    /// resolves anywhere else, the answer is [`Lookup::Elsewhere`] and no
    /// value is read.
    pub fn lookup(&self, namespace: &Namespace, grant: &Grant, pin: Option<&Pin>) -> Result<Lookup, BackendError> {
        let chain = match (pin, grant.vouched_at()) {
            (Some(p), _) => vec![p.namespace.clone()],
            (None, Some(vouched)) => {
                // Nothing nearer may hold it; then the vouched namespace is
                // read (the common case, a secret of the flow's own
                // namespace, costs no extra query); if it is not there, a
                // farther one that is would be a new decision too.
                let chain = namespace.chain();
                let at = chain.iter().position(|n| n == vouched).unwrap_or(chain.len());
                let elsewhere =
                    |found: &Namespace| Lookup::Elsewhere { found: found.clone(), vouched: vouched.clone() };
                for nearer in &chain[..at] {
                    if self.holds(nearer, grant.name())? {
                        return Ok(elsewhere(nearer));
                    }
                }
                if at < chain.len() {
                    match self.lookup_in(&chain[at..=at], grant, None)? {
                        Lookup::NotFound => {}
                        answer => return Ok(answer),
                    }
                }
                for farther in chain.iter().skip(at + 1) {
                    if self.holds(farther, grant.name())? {
                        return Ok(elsewhere(farther));
                    }
                }
                return Ok(Lookup::NotFound);
            }
            (None, None) => namespace.chain(),
        };
        self.lookup_in(&chain, grant, pin)
    }

    /// The first namespace of `chain` that has the name decides.
    fn lookup_in(&self, chain: &[Namespace], grant: &Grant, pin: Option<&Pin>) -> Result<Lookup, BackendError> {
        let version = pin.map(|p| &p.version);
        for ns in chain {
            let ns = ns.clone();
            let backend = self.backend_for(&ns);
            if backend.keeps_config_state() {
                self.refresh()?;
            }
            let found = match backend.read(&ns, grant, version)? {
                Read::Absent => continue,
                Read::Found(value, version, destinations) => {
                    Lookup::Found(Resolved { namespace: ns, version, value, destinations })
                }
                Read::Revoked(version) => Lookup::Revoked { namespace: ns, version },
                Read::Expired(version) => Lookup::Expired { namespace: ns, version },
                Read::Dynamic(def) => Lookup::Dynamic { namespace: ns, def },
            };
            return Ok(found);
        }
        Ok(Lookup::NotFound)
    }

    /// Mints a credential of the dynamic secret `def` of `namespace`.
    pub fn mint(
        &self,
        namespace: &Namespace,
        def: &super::DynamicDef,
        ttl: std::time::Duration,
    ) -> Result<super::Minted, BackendError> {
        self.backend_for(namespace).mint(namespace, def, ttl)
    }

    /// Extends a credential minted in `namespace` to live `ttl` from now
    /// (as far as its definition allows); returns its new expiry.
    pub fn renew_minted(
        &self,
        namespace: &Namespace,
        token: &crate::secret::SecretValue,
        lease_id: &str,
        ttl: std::time::Duration,
    ) -> Result<i64, BackendError> {
        self.backend_for(namespace).renew_minted(namespace, token, lease_id, ttl)
    }

    /// Revokes a credential minted in `namespace` (its lease, then the
    /// token that holds it).
    pub fn revoke_minted(&self, namespace: &Namespace, lease_id: &str, accessor: &str) -> Result<(), BackendError> {
        self.backend_for(namespace).revoke_minted(namespace, lease_id, accessor)
    }

    /// Appends one audit record on its own (a check, a configuration
    /// change).
    pub fn record(&self, rec: &NewRecord) -> Result<(), BackendError> {
        self.local.store().record(rec)?;
        Ok(())
    }

    /// Records a failed integrity check, if `err` is one.
    pub fn record_tamper(&self, err: &BackendError, actor: &Actor) {
        if let BackendError::Store(e) = err {
            self.local.store().record_tamper(e, actor);
        }
    }

    /// Stores a new version of `name` in `namespace`'s backend (`set`, or
    /// `rotate` when `opts.rotate`).
    pub fn set(
        &self,
        actor: &Actor,
        namespace: &Namespace,
        name: &SecretName,
        value: &SecretValue,
        opts: &SetOptions,
    ) -> Result<Version, BackendError> {
        let backend = self.backend_for(namespace);
        let s = backend.supports();
        let refused = if !s.write {
            Some("is read-only: keyhole does not write to it")
        } else if opts.expires_at.is_some() && !s.expiry {
            Some("keeps no expiry: --expires-in applies to the local store")
        } else if opts.keep.is_some() && !s.keep {
            Some("keeps its own versions: --keep applies to the local store")
        } else if opts.destinations.as_ref().is_some_and(|d| !d.is_empty()) && backend.kind() != BackendKind::Local {
            Some("cannot bind secrets to destinations: --destination applies to the local store")
        } else {
            None
        };
        if let Some(what) = refused {
            return Err(self.unsupported(namespace, backend, what));
        }
        let action = if opts.rotate { Action::SecretRotate } else { Action::SecretSet };
        let mut rec = NewRecord::ok(actor, action, namespace, Some(name));
        if let Some(x) = opts.expires_at {
            rec = rec.reason(format!("expires at {}", fmt_time(x)));
        }
        let what = format!("store a new version in {}", backend.describe());
        self.change(backend, rec, what, |rec| backend.write(namespace, name, value, opts, rec), |v, rec| v.on(rec))
    }

    /// Revokes `name` in `namespace`'s backend; returns what was done.
    pub fn revoke(&self, actor: &Actor, namespace: &Namespace, name: &SecretName) -> Result<String, BackendError> {
        let backend = self.backend_for(namespace);
        if !backend.supports().write {
            return Err(self.unsupported(namespace, backend, "is read-only: revoke the secret in the backend itself"));
        }
        let rec = NewRecord::ok(actor, Action::SecretRevoke, namespace, Some(name));
        let what = format!("revoke every version in {}", backend.describe());
        self.change(backend, rec, what, |rec| backend.revoke(namespace, name, rec), |_, rec| rec)
    }

    /// Binds `name` in `namespace` to `destinations` (empty: unbinds it):
    /// from then on tasks get a placeholder for it, and the host puts the
    /// value only into requests to those destinations. Local store only.
    pub fn bind(
        &self,
        actor: &Actor,
        namespace: &Namespace,
        name: &SecretName,
        destinations: &[crate::network::AllowEntry],
    ) -> Result<(), BackendError> {
        let backend = self.backend_for(namespace);
        if backend.kind() != BackendKind::Local {
            return Err(self.unsupported(namespace, backend, "cannot bind secrets to destinations (local store only)"));
        }
        let list: Vec<String> = destinations.iter().map(ToString::to_string).collect();
        let rec = NewRecord::ok(actor, Action::SecretBind, namespace, Some(name)).detail_field("destinations", list);
        let what = format!("bind the secret in {}", backend.describe());
        self.change(
            backend,
            rec,
            what,
            |rec| Ok(self.local.store().bind(namespace, name, destinations, rec)?),
            |_, rec| rec,
        )
    }

    /// Stages `value` as the next version of `name` (not current: tasks
    /// keep reading the current one until [`Router::commit_staged`]).
    /// Local store only.
    pub fn stage(
        &self,
        actor: &Actor,
        namespace: &Namespace,
        name: &SecretName,
        value: &SecretValue,
        expires_at: Option<i64>,
    ) -> Result<u64, BackendError> {
        let backend = self.local_only(namespace, "stages no versions (local store only)")?;
        let rec = NewRecord::ok(actor, Action::SecretStage, namespace, Some(name));
        let what = format!("stage a version in {}", backend.describe());
        self.change(
            backend,
            rec,
            what,
            |rec| Ok(self.local.store().stage(namespace, name, value, expires_at, rec)?),
            |v, rec| rec.version(*v),
        )
    }

    /// Makes the staged version of `name` current.
    pub fn commit_staged(&self, actor: &Actor, namespace: &Namespace, name: &SecretName) -> Result<u64, BackendError> {
        let backend = self.local_only(namespace, "stages no versions (local store only)")?;
        let rec = NewRecord::ok(actor, Action::SecretCommit, namespace, Some(name));
        let what = format!("commit the staged version in {}", backend.describe());
        self.change(
            backend,
            rec,
            what,
            |rec| Ok(self.local.store().commit_staged(namespace, name, rec)?),
            |v, rec| rec.version(*v),
        )
    }

    /// Erases the staged version of `name`.
    pub fn discard_staged(&self, actor: &Actor, namespace: &Namespace, name: &SecretName) -> Result<u64, BackendError> {
        let backend = self.local_only(namespace, "stages no versions (local store only)")?;
        let rec = NewRecord::ok(actor, Action::SecretDiscard, namespace, Some(name));
        let what = format!("discard the staged version in {}", backend.describe());
        self.change(
            backend,
            rec,
            what,
            |rec| Ok(self.local.store().discard_staged(namespace, name, rec)?),
            |v, rec| rec.version(*v),
        )
    }

    /// `namespace`'s backend if it is the local store, else why not.
    fn local_only(&self, namespace: &Namespace, what: &str) -> Result<&dyn SecretBackend, BackendError> {
        let backend = self.backend_for(namespace);
        if backend.kind() != BackendKind::Local {
            return Err(self.unsupported(namespace, backend, what));
        }
        Ok(backend)
    }

    /// Erases `name` in `namespace`'s backend for good.
    pub fn destroy(&self, actor: &Actor, namespace: &Namespace, name: &SecretName) -> Result<String, BackendError> {
        let backend = self.backend_for(namespace);
        let s = backend.supports();
        if !s.write || !s.destroy {
            return Err(self.unsupported(namespace, backend, "does not destroy secrets through keyhole"));
        }
        let rec = NewRecord::ok(actor, Action::SecretDestroy, namespace, Some(name));
        let what = format!("destroy every version in {}", backend.describe());
        self.change(backend, rec, what, |rec| backend.destroy(namespace, name, rec), |_, rec| rec)
    }

    /// Deletes `name` from `namespace`'s backend; whether it existed.
    pub fn remove(&self, actor: &Actor, namespace: &Namespace, name: &SecretName) -> Result<bool, BackendError> {
        let backend = self.backend_for(namespace);
        if !backend.supports().write {
            return Err(self.unsupported(namespace, backend, "is read-only: keyhole does not delete from it"));
        }
        let rec = NewRecord::ok(actor, Action::SecretRemove, namespace, Some(name));
        let what = format!("delete the secret from {}", backend.describe());
        self.change(backend, rec, what, |rec| backend.remove(namespace, name, rec), |_, rec| rec)
    }

    fn unsupported(&self, namespace: &Namespace, backend: &dyn SecretBackend, what: &str) -> BackendError {
        BackendError::Unsupported { namespace: namespace.clone(), backend: backend.describe(), what: what.to_owned() }
    }

    /// Runs one management change with its audit records. A backend that
    /// commits the record with the change gets it; for any other, the
    /// change is recorded `pending` first (no record, no change), then `ok`
    /// (completed by `done` with what the change returned) or `failed`.
    fn change<T>(
        &self,
        backend: &dyn SecretBackend,
        rec: NewRecord,
        what: String,
        apply: impl FnOnce(&NewRecord) -> Result<T, BackendError>,
        done: impl FnOnce(&T, NewRecord) -> NewRecord,
    ) -> Result<T, BackendError> {
        let rec = rec.detail_field("backend", backend.kind().as_str());
        let actor = rec.actor.clone();
        if backend.supports().audit_in_transaction {
            return apply(&rec).inspect_err(|e| self.record_tamper(e, &actor));
        }
        debug_assert!(backend.kind() != BackendKind::Local);
        self.record(&rec.clone().outcome(Outcome::Pending).reason(format!("about to: {what}")))?;
        match apply(&rec).and_then(|v| {
            self.save_config(backend)
                .map_err(|e| BackendError::Config { backend: backend.describe(), why: e.to_string() })?;
            Ok(v)
        }) {
            Ok(v) => {
                let ok = done(&v, rec).reason(what);
                self.record(&ok)?;
                Ok(v)
            }
            Err(e) => {
                self.record(&rec.outcome(Outcome::Failed).reason(format!("{what}: {e}")))?;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{self, Filter, Record};
    use crate::backend::memory::MemoryBackend;
    use crate::crypto::MasterKey;
    use crate::policy::Grants;
    use crate::store::SecretStore;

    fn ns(s: &str) -> Namespace {
        Namespace::new(s).unwrap()
    }
    fn name(s: &str) -> SecretName {
        SecretName::new(s).unwrap()
    }
    fn grant(s: &str) -> Grant {
        Grants::new([name(s)]).check(s).unwrap()
    }
    fn me() -> Actor {
        Actor::Cli { user: "tester".into() }
    }
    fn val(s: &str) -> SecretValue {
        SecretValue::new(s.into())
    }

    /// A router over a real store in a temporary file, with `ops` served by
    /// an in-memory backend.
    fn router() -> (tempfile::TempDir, Router, Arc<MemoryBackend>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::open_with_key(&dir.path().join("s.db"), MasterKey::generate()).unwrap();
        let fake = Arc::new(MemoryBackend::new());
        let router =
            Router::new(LocalBackend::new(store), Backends::none(), None).unwrap().serve(ns("ops"), fake.clone());
        (dir, router, fake)
    }

    fn records(dir: &tempfile::TempDir) -> Vec<Record> {
        let path = dir.path().join("s.db");
        audit::list(&audit::open(&path, false).unwrap(), &path, &Filter::default()).unwrap()
    }

    fn found(l: Lookup) -> (String, Version, String) {
        match l {
            Lookup::Found(r) => (r.namespace.as_str().to_owned(), r.version, r.value.expose().to_owned()),
            other => panic!("expected a value, got {other:?}"),
        }
    }

    #[test]
    fn the_chain_is_walked_across_backends_and_the_nearest_namespace_wins() {
        let (_d, r, _fake) = router();
        r.set(&me(), &ns(""), &name("K"), &val("root"), &SetOptions::default()).unwrap();
        r.set(&me(), &ns("ops"), &name("K"), &val("ops"), &SetOptions::default()).unwrap();
        r.set(&me(), &ns("ops"), &name("ONLY_OPS"), &val("o"), &SetOptions::default()).unwrap();
        let at = |n: &str, k: &str| r.lookup(&ns(n), &grant(k), None).unwrap();
        assert_eq!(found(at("ops.db", "K")), ("ops".into(), Version::Number(1), "ops".into()));
        assert_eq!(found(at("finance", "K")), ("".into(), Version::Number(1), "root".into()));
        assert!(matches!(at("finance", "ONLY_OPS"), Lookup::NotFound));
        // Revoked in the nearer namespace: the chain stops there.
        r.revoke(&me(), &ns("ops"), &name("K")).unwrap();
        assert!(matches!(at("ops", "K"), Lookup::Revoked { .. }));
    }

    #[test]
    fn a_pin_goes_straight_to_its_namespace_and_version() {
        let (_d, r, _fake) = router();
        r.set(&me(), &ns("ops"), &name("K"), &val("v1"), &SetOptions::default()).unwrap();
        r.set(&me(), &ns("ops"), &name("K"), &val("v2"), &SetOptions::default()).unwrap();
        r.set(&me(), &ns("ops.db"), &name("K"), &val("nearer"), &SetOptions::default()).unwrap();
        let pin = Pin { namespace: ns("ops"), version: Version::Number(1) };
        assert_eq!(found(r.lookup(&ns("ops.db"), &grant("K"), Some(&pin)).unwrap()).2, "v1");
    }

    #[test]
    fn a_vouched_grant_is_served_only_where_it_was_vouched_for() {
        let (_d, r, _fake) = router();
        r.set(&me(), &ns("finance"), &name("DB"), &val("parent"), &SetOptions::default()).unwrap();
        let vouched = |at: &str| {
            let located: std::collections::BTreeMap<SecretName, Namespace> = [(name("DB"), ns(at))].into();
            Grants::new([name("DB")]).located(&located).check("DB").unwrap()
        };
        let at = |g: &Grant| r.lookup(&ns("finance.reporting"), g, None).unwrap();
        assert_eq!(found(at(&vouched("finance"))).2, "parent");
        assert_eq!(r.locate(&ns("finance.reporting"), &name("DB")).unwrap(), Some(ns("finance")));
        // Vouched where it did not resolve yet (the flow's own namespace):
        // the parent's secret is a decision nobody made.
        let elsewhere = |l: Lookup| match l {
            Lookup::Elsewhere { found, vouched } => (found.as_str().to_owned(), vouched.as_str().to_owned()),
            other => panic!("expected Elsewhere, got {other:?}"),
        };
        assert_eq!(elsewhere(at(&vouched("finance.reporting"))), ("finance".into(), "finance.reporting".into()));
        // A nearer secret set after the deploy is not served either.
        r.set(&me(), &ns("finance.reporting"), &name("DB"), &val("nearer"), &SetOptions::default()).unwrap();
        assert_eq!(elsewhere(at(&vouched("finance"))), ("finance.reporting".into(), "finance".into()));
        assert_eq!(found(at(&vouched("finance.reporting"))).2, "nearer");
        // A revoked nearer one stops the chain: still elsewhere, never the parent's value.
        r.revoke(&me(), &ns("finance.reporting"), &name("DB")).unwrap();
        assert_eq!(elsewhere(at(&vouched("finance"))).0, "finance.reporting");
        assert!(matches!(at(&vouched("finance.reporting")), Lookup::Revoked { .. }));
        // Gone everywhere: not found, whatever was vouched.
        assert!(r.remove(&me(), &ns("finance.reporting"), &name("DB")).unwrap());
        assert!(r.remove(&me(), &ns("finance"), &name("DB")).unwrap());
        assert!(matches!(at(&vouched("finance")), Lookup::NotFound));
        assert_eq!(r.locate(&ns("finance.reporting"), &name("DB")).unwrap(), None);
        // Across backends: a remote namespace nearer than the vouched one.
        r.set(&me(), &ns(""), &name("K"), &val("root"), &SetOptions::default()).unwrap();
        r.set(&me(), &ns("ops"), &name("K"), &val("remote"), &SetOptions::default()).unwrap();
        let located: std::collections::BTreeMap<SecretName, Namespace> = [(name("K"), ns(""))].into();
        let g = Grants::new([name("K")]).located(&located).check("K").unwrap();
        assert_eq!(elsewhere(r.lookup(&ns("ops.db"), &g, None).unwrap()), ("ops".into(), "".into()));
    }

    #[test]
    fn every_backend_audits_management_actions_with_the_same_shape() {
        let (d, r, fake) = router();
        for n in ["", "ops"] {
            r.set(&me(), &ns(n), &name("K"), &val("v"), &SetOptions::default()).unwrap();
            r.revoke(&me(), &ns(n), &name("K")).unwrap();
            assert!(r.remove(&me(), &ns(n), &name("K")).unwrap());
        }
        fake.set_down(true);
        let e = r.set(&me(), &ns("ops"), &name("K"), &val("v"), &SetOptions::default()).unwrap_err();
        assert!(matches!(e, BackendError::Unreachable { .. }), "{e}");
        let recs = records(&d);
        let shape = |ns: &str| -> Vec<(String, String, String, String)> {
            recs.iter()
                .filter(|r| r.namespace == ns && r.outcome != "pending")
                .map(|r| (r.action.clone(), r.actor.clone(), r.outcome.clone(), r.secret.clone().unwrap_or_default()))
                .collect()
        };
        // Same actions, actor, outcomes and secret, whichever backend; a
        // new version is recorded with its number.
        assert_eq!(shape("")[..3], shape("ops")[..3], "{recs:#?}");
        let set_versions: Vec<_> =
            recs.iter().filter(|r| r.action == "secret.set" && r.outcome == "ok").map(|r| r.version).collect();
        assert_eq!(set_versions, [Some(1), Some(1)]);
        let backends: Vec<_> = recs.iter().map(|r| r.detail.clone().unwrap_or_default()).collect();
        assert!(backends.iter().take(3).all(|d| d.contains(r#""backend":"local""#)), "{backends:?}");
        assert!(backends.iter().skip(3).all(|d| d.contains(r#""backend":"memory""#)), "{backends:?}");
        // The remote change: pending before, ok after; the failed one says so.
        let ops: Vec<&str> = recs.iter().filter(|r| r.namespace == "ops").map(|r| r.outcome.as_str()).collect();
        assert_eq!(ops, ["pending", "ok", "pending", "ok", "pending", "ok", "pending", "failed"]);
        let failed = recs.last().unwrap();
        assert!(failed.reason.as_deref().unwrap().contains("unreachable"), "{failed:?}");
    }

    #[test]
    fn an_option_a_backend_lacks_is_refused_before_anything_changes() {
        let (d, r, _fake) = router();
        let before = records(&d).len();
        let opts = SetOptions { keep: Some(2), ..Default::default() };
        let e = r.set(&me(), &ns("ops"), &name("K"), &val("v"), &opts).unwrap_err();
        assert!(e.to_string().contains("--keep applies to the local store"), "{e}");
        assert_eq!(records(&d).len(), before);
    }
}
