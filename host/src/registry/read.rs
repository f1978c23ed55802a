//! Reading revisions: each row verified (its MAC and its decision's), its
//! state derived, and which revision serves a flow.

use super::review::ReviewRow;
use super::{Decision, Deployed, Registry, RegistryError, Review, RevisionState, flow_mac_fields, mac_refs};
use crate::crypto::MacDomain;
use crate::db::sql_err;
use crate::flow::{self, Flow};
use crate::names::Namespace;
use crate::store::fmt_time;
use rusqlite::params;

const ROW_COLUMNS: &str = "f.namespace, f.id, f.revision, f.file, f.source, f.plugins, f.deployed_at, f.deployed_by, \
     f.removed, f.mac, f.vouches, r.decision, r.decided_by, r.person, r.decided_at, r.comment, r.vouches, r.mac";

const ROW_FROM: &str =
    "flows f LEFT JOIN flow_reviews r ON r.namespace = f.namespace AND r.id = f.id AND r.revision = f.revision";

impl Registry {
    /// Calls `each` with every revision `filter` selects, verified, in
    /// `order`, until it returns false.
    fn each(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
        order: &str,
        each: impl FnMut(Deployed) -> Result<bool, RegistryError>,
    ) -> Result<(), RegistryError> {
        self.each_unless(filter, args, order, |_, _| false, each)
    }

    /// [`Registry::each`], passing over (unread, unverified) the rows whose
    /// namespace and id `skip` names.
    fn each_unless(
        &self,
        filter: &str,
        args: impl rusqlite::Params,
        order: &str,
        skip: impl Fn(&str, &str) -> bool,
        mut each: impl FnMut(Deployed) -> Result<bool, RegistryError>,
    ) -> Result<(), RegistryError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM {ROW_FROM} WHERE {filter} ORDER BY {order}"))
            .map_err(self.err("list flows"))?;
        let mut rows = stmt.query(args).map_err(self.err("list flows"))?;
        while let Some(r) = rows.next().map_err(self.err("read flows"))? {
            let key = |i| r.get_ref(i).ok().and_then(|v| v.as_str().ok()).unwrap_or_default();
            if skip(key(0), key(1)) {
                continue;
            }
            if !each(self.verified(r)?)? {
                break;
            }
        }
        Ok(())
    }

    /// One row, its MACs checked and its vouches parsed.
    fn verified(&self, r: &rusqlite::Row<'_>) -> Result<Deployed, RegistryError> {
        let e = |err| RegistryError::Db(sql_err(&self.path, "read flows")(err));
        let ns: String = r.get(0).map_err(e)?;
        let id: String = r.get(1).map_err(e)?;
        let revision = r.get::<_, i64>(2).map_err(e)? as u64;
        let namespace = Namespace::new(&ns).unwrap_or_default();
        let tampered = || RegistryError::Tampered { namespace: namespace.clone(), id: id.clone(), revision };
        let plugins: String = r.get(5).map_err(e)?;
        let at: i64 = r.get(6).map_err(e)?;
        let mac: Vec<u8> = r.get(9).map_err(e)?;
        let vouches_text: Option<String> = r.get(10).map_err(e)?;
        let mut d = Deployed {
            namespace: namespace.clone(),
            id: id.clone(),
            revision,
            file: r.get(3).map_err(e)?,
            source: r.get(4).map_err(e)?,
            plugins: serde_json::from_str(&plugins).map_err(|_| tampered())?,
            deployed_at: fmt_time(at),
            deployed_by: r.get(7).map_err(e)?,
            removed: r.get(8).map_err(e)?,
            vouches: None,
            review: None,
            state: RevisionState::Active,
        };
        let fields = flow_mac_fields(&d, at, vouches_text.as_deref());
        if Namespace::new(&ns).is_err() || !self.integrity.verify(MacDomain::FlowRow, &mac_refs(&fields), &mac) {
            return Err(tampered());
        }
        d.vouches = vouches_text.map(|t| serde_json::from_str(&t)).transpose().map_err(|_| tampered())?;
        let decision: Option<String> = r.get(11).map_err(e)?;
        if let Some(decision) = decision {
            let row = ReviewRow {
                decision,
                by: r.get(12).map_err(e)?,
                person: r.get(13).map_err(e)?,
                at: r.get(14).map_err(e)?,
                comment: r.get(15).map_err(e)?,
                vouches: r.get(16).map_err(e)?,
                mac: r.get(17).map_err(e)?,
            };
            let fields = row.fields(&namespace, &id, revision);
            if !self.integrity.verify(MacDomain::ReviewRow, &mac_refs(&fields), &row.mac) {
                return Err(tampered());
            }
            let decision = match row.decision.as_str() {
                "approved" => Decision::Approved,
                "rejected" => Decision::Rejected,
                _ => return Err(tampered()),
            };
            let vouches = row.vouches.map(|t| serde_json::from_str(&t)).transpose().map_err(|_| tampered())?;
            d.review = Some(Review {
                decision,
                by: row.by,
                person: row.person,
                at: fmt_time(row.at),
                comment: row.comment,
                vouches,
            });
        }
        d.state = d.derive_state();
        Ok(d)
    }

    /// Every revision of one flow, oldest first.
    pub fn revisions(&self, namespace: &Namespace, id: &str) -> Result<Vec<Deployed>, RegistryError> {
        let mut all = Vec::new();
        self.each("f.namespace = ?1 AND f.id = ?2", params![namespace.as_str(), id], "f.revision", |d| {
            all.push(d);
            Ok(true)
        })?;
        if all.is_empty() {
            return Err(RegistryError::NotFound { namespace: namespace.clone(), id: id.to_owned() });
        }
        Ok(all)
    }

    /// The revision that serves a flow now (a removal included), if any;
    /// and the newest revision, if it is pending.
    fn serving_and_pending(
        &self,
        namespace: &Namespace,
        id: &str,
    ) -> Result<(Option<Deployed>, Option<Deployed>), RegistryError> {
        let (mut serving, mut pending) = (None, None);
        self.each("f.namespace = ?1 AND f.id = ?2", params![namespace.as_str(), id], "f.revision DESC", |d| {
            if d.state.serves() {
                serving = Some(d);
                return Ok(false);
            }
            if d.state == RevisionState::Pending && pending.is_none() {
                pending = Some(d);
            }
            Ok(true)
        })?;
        Ok((serving, pending))
    }

    /// The revision that serves a flow now, a removal included.
    pub fn serving_row(&self, namespace: &Namespace, id: &str) -> Result<Option<Deployed>, RegistryError> {
        Ok(self.serving_and_pending(namespace, id)?.0)
    }

    /// The revision serving a flow (not removed) and the flow as it runs,
    /// if there is one.
    pub fn serving(&self, namespace: &Namespace, id: &str) -> Result<Option<(Deployed, Flow)>, RegistryError> {
        match self.serving_row(namespace, id)? {
            Some(d) if !d.removed => {
                let flow = self.parsed(&d)?;
                Ok(Some((d, flow)))
            }
            _ => Ok(None),
        }
    }

    /// Revision `d` as it runs.
    pub fn parsed(&self, d: &Deployed) -> Result<Flow, RegistryError> {
        let key = crate::crypto::sha256(format!("{}\0{}", d.file, d.source).as_bytes());
        let known = self.parsed.borrow().get(&key).cloned();
        let flow = match known {
            Some(f) => f,
            None => {
                let (flow, _) = flow::parse(&d.source, &d.file, &self.blobs).map_err(RegistryError::Invalid)?;
                let mut cache = self.parsed.borrow_mut();
                if cache.len() >= super::PARSED_FLOWS {
                    cache.clear();
                }
                cache.insert(key, flow.clone());
                flow
            }
        };
        Ok(self.pinned(flow, d))
    }

    /// A value that changes whenever a revision is deployed or removed, or
    /// a review is decided, by any process (rows are only ever added to
    /// both tables): whoever keeps the list of flows re-reads it only then.
    pub fn generation(&self) -> Result<(i64, i64), RegistryError> {
        self.conn
            .prepare_cached(
                "SELECT (SELECT coalesce(max(rowid), 0) FROM flows), (SELECT coalesce(max(rowid), 0) FROM flow_reviews)",
            )
            .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(self.err("read the flows' generation"))
    }

    /// The revision serving a flow, and the flow as it runs: what a new
    /// execution runs. A flow whose only revisions wait for review is
    /// [`RegistryError::Pending`].
    pub fn current(&self, namespace: &Namespace, id: &str) -> Result<(Deployed, Flow), RegistryError> {
        match self.serving_and_pending(namespace, id)? {
            (Some(d), _) if !d.removed => {
                let flow = self.parsed(&d)?;
                Ok((d, flow))
            }
            (None, Some(p)) => {
                Err(RegistryError::Pending { namespace: namespace.clone(), id: id.to_owned(), revision: p.revision })
            }
            _ => Err(RegistryError::NotFound { namespace: namespace.clone(), id: id.to_owned() }),
        }
    }

    /// What `flow show` shows: the revision serving the flow, or (when none
    /// serves yet) the newest one pending review; the flow as it runs; and
    /// the revisions newer than it that wait for review.
    pub fn shown(&self, namespace: &Namespace, id: &str) -> Result<(Deployed, Flow, Vec<u64>), RegistryError> {
        let mut pending = Vec::new();
        let mut serving = None;
        self.each("f.namespace = ?1 AND f.id = ?2", params![namespace.as_str(), id], "f.revision DESC", |d| {
            if d.state.serves() {
                serving = Some(d);
                return Ok(false);
            }
            if d.state == RevisionState::Pending {
                pending.push(d);
            }
            Ok(true)
        })?;
        let shown = match serving {
            Some(d) if !d.removed => d,
            _ if !pending.is_empty() => pending.remove(0),
            _ => return Err(RegistryError::NotFound { namespace: namespace.clone(), id: id.to_owned() }),
        };
        let flow = self.parsed(&shown)?;
        let mut newer: Vec<u64> = pending.iter().map(|d| d.revision).filter(|&r| r > shown.revision).collect();
        newer.sort_unstable();
        Ok((shown, flow, newer))
    }

    /// One revision as listed.
    pub fn get(&self, namespace: &Namespace, id: &str, revision: u64) -> Result<Deployed, RegistryError> {
        let mut found = None;
        let args = params![namespace.as_str(), id, revision as i64];
        self.each("f.namespace = ?1 AND f.id = ?2 AND f.revision = ?3", args, "f.revision", |d| {
            found = Some(d);
            Ok(false)
        })?;
        found.ok_or_else(|| {
            RegistryError::Conflict(format!(
                "flow {id} in namespace {namespace} has no revision {revision}: see `host flow revisions {id} -n {}`",
                namespace.as_str()
            ))
        })
    }

    /// Revision `revision` of a flow, as it runs (what an execution queued
    /// for it runs, even after a newer deploy). One that waits for review,
    /// or was rejected, never runs.
    pub fn revision(&self, namespace: &Namespace, id: &str, revision: u64) -> Result<Flow, RegistryError> {
        let d = self.get(namespace, id, revision)?;
        match d.state {
            RevisionState::Removed => Err(RegistryError::NotFound { namespace: namespace.clone(), id: id.to_owned() }),
            RevisionState::Pending | RevisionState::Rejected => Err(RegistryError::Conflict(format!(
                "flow {id} revision {revision} in namespace {namespace} is {}: it never runs",
                d.state
            ))),
            RevisionState::Active | RevisionState::Unchecked => self.parsed(&d),
        }
    }

    /// Per flow: the revision serving it (unless removed), and each newer
    /// revision still pending review; by namespace, id and revision.
    pub fn list(&self) -> Result<Vec<Deployed>, RegistryError> {
        let mut out: Vec<Deployed> = Vec::new();
        // The flow whose serving revision was seen: its older ones are not read.
        let done: std::cell::RefCell<Option<(String, String)>> = Default::default();
        let seen = |ns: &str, id: &str| done.borrow().as_ref().is_some_and(|(n, i)| n == ns && i == id);
        self.each_unless("1", [], "f.namespace, f.id, f.revision DESC", seen, |d| {
            if d.state.serves() {
                *done.borrow_mut() = Some((d.namespace.as_str().to_owned(), d.id.clone()));
                if !d.removed {
                    out.push(d);
                }
            } else if d.state == RevisionState::Pending {
                out.push(d);
            }
            Ok(true)
        })?;
        out.sort_by(|a, b| (&a.namespace, &a.id, a.revision).cmp(&(&b.namespace, &b.id, b.revision)));
        Ok(out)
    }

    /// The revisions serving flows (not removed): what schedules fire.
    pub fn serving_all(&self) -> Result<Vec<Deployed>, RegistryError> {
        Ok(self.list()?.into_iter().filter(|d| d.state.serves()).collect())
    }
}
