//! Hands-off rotation by a task (`keyhole:task/rotation`): the one place
//! that decides when a task may stage, commit or discard a secret's next
//! value, and what happens to it when the task ends.
//!
//! The task never holds a value: it gets placeholders (`network::inject`)
//! for the current and the staged value, usable only toward the secret's
//! destinations. The staged value is stored (`store::stage`) before its
//! placeholder exists; a captured one is stored before the response that
//! carried it reaches the task, with the placeholder in its place.
//!
//! Invariants:
//! - only a secret in the task's `rotate:` grants, held by the local store
//!   and bound to destinations, is rotated; every step (and every refused
//!   step) is audited, and nothing is released unless its record is written;
//! - the host makes a staged value current only on the task's `commit`, and
//!   only after the service accepted it (a 2xx answer to a request that
//!   carried it, or the capture itself);
//! - the host erases a staged value only if no request carrying it got an
//!   answer other than a refusal (so the service cannot hold it); otherwise
//!   it stays staged for an operator (`host secret commit|discard --staged`).

use crate::access::SecretAccess;
use crate::audit::{Action, NewRecord, Outcome};
use crate::backend::{BackendError, BackendKind, Lookup, Pin, Version};
use crate::mask::MaskSet;
use crate::names::{Namespace, SecretName};
use crate::network::{AllowEntry, Destination};
use crate::policy::{Grant, Grants, Refusal};
use crate::secret::{Charset, SecretValue};
use crate::store::StoreError;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Shortest generated value a task may ask for.
pub const MIN_GENERATED: usize = 8;

/// Why a rotation step was refused; mirrors the WIT `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotateError {
    /// Not in the task's `rotate:` grants.
    #[error("denied")]
    Denied,
    /// In no namespace of the chain.
    #[error("not found")]
    NotFound,
    /// Not possible now; says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// The store or audit log failed; never holds a value.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Placeholders of a rotation in progress.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The next value's placeholder.
    pub next: String,
    /// The current value's, if it can be used.
    pub current: Option<String>,
}

/// What the service's answers say about a staged value, weakest first: a
/// later answer only ever raises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Delivery {
    /// No request carried it.
    NotSent,
    /// Every request that carried it was answered with a non-2xx status.
    Refused,
    /// A request that carried it got no answer (lost, timed out): the
    /// service may have applied it.
    Unknown,
    /// A 2xx answer (or the service handed it out).
    Accepted,
}

impl Delivery {
    fn describe(self) -> &'static str {
        match self {
            Delivery::NotSent => "no request has carried it yet",
            Delivery::Refused => "the service refused every request that carried it",
            Delivery::Unknown => "a request that carried it got no answer, so the service may hold it",
            Delivery::Accepted => "the service accepted it",
        }
    }
}

/// One secret's rotation in this task.
#[derive(Debug)]
struct Rotation {
    namespace: Namespace,
    destinations: Vec<AllowEntry>,
    next: String,
    /// The staged version, once stored.
    version: Option<u64>,
    /// The JSON pointer to capture, until captured.
    capture: Option<String>,
    delivery: Delivery,
    resolved: bool,
}

/// One task's rotations: its `rotate:` grants and what it has staged.
#[derive(Debug)]
pub struct Rotations {
    access: SecretAccess,
    grants: Grants,
    state: Mutex<BTreeMap<SecretName, Rotation>>,
}

impl Rotations {
    /// Rotations for the task of `access`, which may rotate `grants`.
    pub fn new(access: SecretAccess, grants: Grants) -> Self {
        Rotations { access, grants, state: Mutex::new(BTreeMap::new()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BTreeMap<SecretName, Rotation>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, action: Action, namespace: &Namespace, name: Option<&SecretName>) -> NewRecord {
        NewRecord::ok(&self.access.identity.actor(), action, namespace, name)
    }

    /// Writes `rec`; `Unavailable` if it cannot be (fail closed).
    fn audit(&self, rec: NewRecord) -> Result<(), RotateError> {
        self.access.audit.record(rec).map(|_| ()).map_err(|e| {
            tracing::error!("audit record could not be written; refusing the rotation step: {e}");
            RotateError::Unavailable("the audit log cannot be written, so nothing is staged or released".into())
        })
    }

    /// Audits a refused step and returns `err`.
    fn refuse(
        &self,
        namespace: &Namespace,
        name: Option<&SecretName>,
        outcome: Outcome,
        err: RotateError,
    ) -> RotateError {
        let why = match &err {
            RotateError::Refused(w) | RotateError::Unavailable(w) => w.clone(),
            e => e.to_string(),
        };
        let rec = self.record(Action::SecretStage, namespace, name).outcome(outcome).reason(why);
        match self.audit(rec) {
            Ok(()) => err,
            Err(e) => e,
        }
    }

    /// The grant for `requested`, or a refusal (audited).
    fn grant(&self, requested: &str) -> Result<Grant, RotateError> {
        let ns = &self.access.identity.namespace;
        self.grants.check(requested).map_err(|refusal| {
            let name = match &refusal {
                Refusal::NotGranted(n) => Some(n.clone()),
                Refusal::InvalidName(_) => None,
            };
            let why = RotateError::Refused(format!(
                "not granted for rotation: {}",
                self.access.masks.mask(&refusal.to_string())
            ));
            let _ = self.refuse(ns, name.as_ref(), Outcome::Denied, why);
            RotateError::Denied
        })
    }

    /// Checks that `grant`'s secret can be rotated here and returns where it
    /// is, its destinations and its current value's placeholder.
    fn begin(&self, grant: &Grant) -> Result<(Namespace, Vec<AllowEntry>, Option<String>), RotateError> {
        let name = grant.name();
        let a = &self.access;
        let own = &a.identity.namespace;
        if self.state().get(name).is_some_and(|r| !r.resolved) {
            let why = format!("a rotation of {name} is already in progress in this task: commit or discard it first");
            return Err(self.refuse(own, Some(name), Outcome::Denied, RotateError::Refused(why)));
        }
        let unavailable = |e: BackendError| {
            tracing::warn!(task = %a.identity.task, "rotation of {name}: {e}");
            RotateError::Unavailable(e.for_plugin(name))
        };
        let (namespace, current) = match a.secrets.lookup(own, grant, None) {
            Ok(Lookup::Found(found)) => (found.namespace, Some((found.value, found.destinations))),
            Ok(Lookup::Revoked { namespace, .. } | Lookup::Expired { namespace, .. }) => (namespace, None),
            Ok(Lookup::NotFound) => {
                let _ = self.refuse(own, Some(name), Outcome::NotFound, RotateError::NotFound);
                return Err(RotateError::NotFound);
            }
            Ok(Lookup::Dynamic { namespace, .. }) => {
                let why = format!("{name} is a dynamic secret, minted per execution: there is nothing to rotate");
                return Err(self.refuse(&namespace, Some(name), Outcome::Denied, RotateError::Refused(why)));
            }
            Ok(Lookup::Elsewhere { found, vouched }) => {
                let why = crate::access::elsewhere(name, &found, &vouched);
                return Err(self.refuse(own, Some(name), Outcome::Denied, RotateError::Refused(why)));
            }
            Err(e) => return Err(self.refuse(own, Some(name), Outcome::Unavailable, unavailable(e))),
        };
        let backend = a.secrets.backend_for(&namespace);
        if backend.kind() != BackendKind::Local {
            let why = format!(
                "{name} is served by {} in namespace {namespace}: keyhole stages versions only in its own store",
                backend.describe()
            );
            return Err(self.refuse(&namespace, Some(name), Outcome::Denied, RotateError::Refused(why)));
        }
        let destinations = match &current {
            Some((_, d)) => d.clone(),
            None => {
                let info = a.secrets.local().store().describe(&namespace, name).map_err(|e| unavailable(e.into()))?;
                let listed = info.map(|i| i.destinations).unwrap_or_default();
                listed.iter().filter_map(|d| d.parse().ok()).collect()
            }
        };
        if destinations.is_empty() {
            let why = format!(
                "{name} is not bound to destinations: bind it to the service first (`host secret bind {name} \
                 --namespace {namespace} --destination URL`), so that its new value can go nowhere else"
            );
            return Err(self.refuse(&namespace, Some(name), Outcome::Denied, RotateError::Refused(why)));
        }
        match a.secrets.local().store().staged(&namespace, name) {
            Ok(None) => {}
            Ok(Some(v)) => {
                let why = format!(
                    "version {} of {name} is already staged by a rotation that did not finish: an operator resolves \
                     it with `host secret commit|discard {name} --namespace {namespace} --staged`",
                    v.version
                );
                return Err(self.refuse(&namespace, Some(name), Outcome::Denied, RotateError::Refused(why)));
            }
            Err(e) => return Err(self.refuse(&namespace, Some(name), Outcome::Unavailable, unavailable(e.into()))),
        }
        let current = match current {
            None => None,
            Some((value, _)) => {
                // The current value, as a placeholder: a read, audited first.
                let mut rec = self
                    .record(Action::SecretRead, &namespace, Some(name))
                    .outcome(Outcome::Granted)
                    .reason(format!(
                        "found in namespace {namespace}: the current value, as a placeholder, for rotation"
                    ))
                    .detail_field("rotation", true);
                rec.value_hmac = a.audit.fingerprint(value.expose());
                self.audit(rec)?;
                MaskSet::add_to(&[&a.masks, &a.task_masks], &value);
                Some(a.bound.placeholder(name, value, destinations.clone()))
            }
        };
        Ok((namespace, destinations, current))
    }

    /// Host-generated: stages a new random value of `requested` and returns
    /// the placeholders.
    pub fn generate(&self, requested: &str, length: usize, charset: Charset) -> Result<Staged, RotateError> {
        let grant = self.grant(requested)?;
        let name = grant.name();
        if !(MIN_GENERATED..=crate::secret::MAX_GENERATED).contains(&length) {
            let why = format!(
                "a generated value has {MIN_GENERATED} to {} characters, not {length}",
                crate::secret::MAX_GENERATED
            );
            return Err(RotateError::Refused(why));
        }
        let (namespace, destinations, current) = self.begin(&grant)?;
        let value = SecretValue::generate(length, charset).map_err(RotateError::Refused)?;
        let version = self.stage(&namespace, name, &value)?;
        let a = &self.access;
        MaskSet::add_to(&[&a.masks, &a.task_masks], &value);
        let next = a.bound.reserve();
        a.bound.bind_staged(&next, name, value, destinations.clone());
        let rotation = Rotation {
            namespace,
            destinations,
            next: next.clone(),
            version: Some(version),
            capture: None,
            delivery: Delivery::NotSent,
            resolved: false,
        };
        self.state().insert(name.clone(), rotation);
        Ok(Staged { next, current })
    }

    /// Service-generated: arms a capture of the string at `pointer` in the
    /// first 2xx JSON answer from one of the secret's destinations.
    pub fn capture(&self, requested: &str, pointer: &str) -> Result<Staged, RotateError> {
        let grant = self.grant(requested)?;
        let name = grant.name();
        if !pointer.starts_with('/') || pointer.len() > 1024 {
            let why = format!(
                "{:?} is not a JSON pointer to a field (it starts with '/': /auth/client_token)",
                self.access.masks.mask(pointer)
            );
            return Err(RotateError::Refused(why));
        }
        let (namespace, destinations, current) = self.begin(&grant)?;
        let to: Vec<String> = destinations.iter().map(ToString::to_string).collect();
        // The pointer is the task's text: it could hold a value it read.
        let shown = crate::audit::bounded(&self.access.masks.mask(pointer));
        let rec = self
            .record(Action::SecretStage, &namespace, Some(name))
            .outcome(Outcome::Pending)
            .reason(format!("waiting to capture {shown} from an answer of {}", to.join(", ")))
            .detail_field("capture", shown.clone());
        self.audit(rec)?;
        let next = self.access.bound.reserve();
        let rotation = Rotation {
            namespace,
            destinations,
            next: next.clone(),
            version: None,
            capture: Some(pointer.to_owned()),
            delivery: Delivery::NotSent,
            resolved: false,
        };
        self.state().insert(name.clone(), rotation);
        Ok(Staged { next, current })
    }

    fn stage(&self, namespace: &Namespace, name: &SecretName, value: &SecretValue) -> Result<u64, RotateError> {
        let a = &self.access;
        a.secrets.stage(&a.identity.actor(), namespace, name, value, None).map_err(|e| {
            tracing::warn!(task = %a.identity.task, "rotation of {name}: could not stage: {e}");
            match e {
                BackendError::Store(StoreError::Staged { what, .. }) => RotateError::Refused(what),
                e => RotateError::Unavailable(e.for_plugin(name)),
            }
        })
    }

    /// The rotation of `requested` this task started, checked for `op`.
    fn started<'a>(
        &self,
        state: &'a mut BTreeMap<SecretName, Rotation>,
        requested: &str,
        op: &str,
    ) -> Result<(SecretName, &'a mut Rotation), RotateError> {
        let grant = self.grant(requested)?;
        let name = grant.name().clone();
        match state.get_mut(&name) {
            Some(r) if !r.resolved => Ok((name, r)),
            _ => Err(RotateError::Refused(format!(
                "nothing of {name} to {op}: this task has no rotation of it in progress (call generate or capture first)"
            ))),
        }
    }

    /// Makes the staged value current; returns its version.
    pub fn commit(&self, requested: &str) -> Result<u64, RotateError> {
        let mut state = self.state();
        let (name, r) = self.started(&mut state, requested, "commit")?;
        if r.delivery != Delivery::Accepted || r.version.is_none() {
            let what = match (&r.capture, r.version) {
                (Some(p), None) => format!("nothing was captured at {p} yet"),
                _ => r.delivery.describe().to_owned(),
            };
            let why = format!("the new value of {name} cannot become current: {what}");
            return Err(self.refuse(&r.namespace, Some(&name), Outcome::Denied, RotateError::Refused(why)));
        }
        let a = &self.access;
        let version = a.secrets.commit_staged(&a.identity.actor(), &r.namespace, &name).map_err(|e| {
            tracing::warn!(task = %a.identity.task, "rotation of {name}: could not commit: {e}");
            RotateError::Unavailable(e.for_plugin(&name))
        })?;
        r.resolved = true;
        // Later reads in this execution (the next task) get the new value.
        let mut pins = a.pins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pin) = pins.get_mut(&name) {
            *pin = Pin { namespace: r.namespace.clone(), version: Version::Number(version) };
        }
        Ok(version)
    }

    /// Erases the staged value, unless the service may hold it.
    pub fn discard(&self, requested: &str) -> Result<(), RotateError> {
        let mut state = self.state();
        let (name, r) = self.started(&mut state, requested, "discard")?;
        if r.version.is_none() {
            r.resolved = true;
            let rec = self
                .record(Action::SecretDiscard, &r.namespace, Some(&name))
                .reason("the capture was called off before anything was captured");
            return self.audit(rec);
        }
        if r.delivery > Delivery::Refused {
            let why = format!(
                "the new value of {name} is not erased: {}; it stays staged for an operator \
                 (`host secret commit|discard {name} --namespace {} --staged`)",
                r.delivery.describe(),
                r.namespace
            );
            return Err(self.refuse(&r.namespace, Some(&name), Outcome::Denied, RotateError::Refused(why)));
        }
        self.erase(&name, r)
    }

    fn erase(&self, name: &SecretName, r: &mut Rotation) -> Result<(), RotateError> {
        let a = &self.access;
        a.secrets.discard_staged(&a.identity.actor(), &r.namespace, name).map_err(|e| {
            tracing::warn!(task = %a.identity.task, "rotation of {name}: could not discard: {e}");
            RotateError::Unavailable(e.for_plugin(name))
        })?;
        r.resolved = true;
        Ok(())
    }

    /// Whether any rotation waits for a capture (else answers pass as they are).
    pub fn capturing(&self) -> bool {
        self.state().values().any(|r| r.capture.is_some() && !r.resolved)
    }

    /// Learns from the answer to a request that carried the staged values
    /// of `names`: its status, or `None` if no answer came.
    pub fn delivered(&self, names: &[SecretName], status: Option<u16>) {
        let seen = match status {
            Some(s) if (200..300).contains(&s) => Delivery::Accepted,
            Some(_) => Delivery::Refused,
            None => Delivery::Unknown,
        };
        let mut state = self.state();
        for name in names {
            if let Some(r) = state.get_mut(name) {
                r.delivery = r.delivery.max(seen);
            }
        }
    }

    /// Captures from the answer of `dest` (status, JSON body): for each armed
    /// capture of a secret bound to `dest`, stores the string at its pointer
    /// as the staged value and puts the placeholder in its place. Returns the
    /// body to hand on and the captured values (to scrub the rest of the
    /// answer), or why the answer may not reach the task. A string that
    /// repeats text the task `written` into the request is not captured:
    /// the task would know the credential it chose.
    pub fn capture_from(
        &self,
        dest: &Destination,
        status: u16,
        body: &[u8],
        written: &[Vec<u8>],
    ) -> Result<Option<(Vec<u8>, MaskSet)>, String> {
        if !(200..300).contains(&status) {
            return Ok(None);
        }
        let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(body) else { return Ok(None) };
        let captured = MaskSet::new();
        let mut any = false;
        let mut state = self.state();
        let a = &self.access;
        for (name, r) in state.iter_mut() {
            let Some(pointer) = r.capture.clone() else { continue };
            if r.resolved || !r.destinations.iter().any(|d| d.matches(dest)) {
                continue;
            }
            let Some(slot) = doc.pointer_mut(&pointer) else { continue };
            let Some(text) = slot.as_str().filter(|t| !t.is_empty()) else { continue };
            if written.iter().any(|w| memchr::memmem::find(w, text.as_bytes()).is_some()) {
                let pointer = a.masks.mask(&pointer);
                tracing::warn!(
                    task = %a.identity.task,
                    "rotation of {name}: the answer's {pointer} repeats what the task sent; not captured"
                );
                return Err(format!(
                    "the answer's {pointer} repeats text the task sent, so it is not a credential the service made: \
                     not captured"
                ));
            }
            let value = SecretValue::new(text.to_owned());
            // Stored (and audited) before the answer goes on; if it cannot
            // be, the task gets no answer at all rather than the value.
            let version = self.stage(&r.namespace, name, &value).map_err(|e| {
                let pointer = a.masks.mask(&pointer);
                tracing::error!(
                    task = %a.identity.task,
                    "rotation of {name}: the service handed out a new credential at {pointer}, but it could not be \
                     staged ({e}); the answer was withheld from the task"
                );
                format!("the new credential of {name} could not be stored, so the answer is withheld: {e}")
            })?;
            MaskSet::add_to(&[&a.masks, &a.task_masks, &captured], &value);
            *slot = serde_json::Value::String(r.next.clone());
            a.bound.bind_staged(&r.next, name, value, r.destinations.clone());
            r.version = Some(version);
            r.capture = None;
            r.delivery = Delivery::Accepted;
            any = true;
        }
        if !any {
            return Ok(None);
        }
        let text = serde_json::to_vec(&doc).expect("a JSON value serializes");
        let mut out = Vec::with_capacity(text.len());
        captured.matcher().mask_all(&text, &mut out);
        Ok(Some((out, captured)))
    }

    /// At the end of the task, however it ended: erases each staged value
    /// the service cannot hold; leaves (and audits, and tells the operator)
    /// each one it may hold.
    pub fn finish(&self) {
        let mut state = self.state();
        for (name, r) in state.iter_mut() {
            if r.resolved || r.version.is_none() {
                continue;
            }
            if r.delivery <= Delivery::Refused {
                if let Err(e) = self.erase(name, r) {
                    tracing::error!("the staged value of {name} could not be discarded at the end of the task: {e}");
                }
                continue;
            }
            let hint = format!(
                "the task ended without committing the new value of {name} and {}: it stays staged; resolve it with \
                 `host secret commit|discard {name} --namespace {} --staged`",
                r.delivery.describe(),
                r.namespace
            );
            tracing::warn!(task = %self.access.identity.task, "{hint}");
            let rec = self.record(Action::SecretStage, &r.namespace, Some(name)).outcome(Outcome::Pending).reason(hint);
            if let Err(e) = self.audit(rec) {
                tracing::error!("{e}");
            }
            r.resolved = true;
        }
    }
}
