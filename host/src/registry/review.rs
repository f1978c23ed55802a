//! A second person's decision on a revision, and removals: rows added in
//! one transaction with their audit record.

use super::{Deployed, Registry, RegistryError, RevisionState, mac_refs};
use crate::audit::NewRecord;
use crate::crypto::MacDomain;
use crate::names::Namespace;
use crate::store::now;
use crate::vouch::Vouches;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A second person's decision on a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Review {
    /// Approved or rejected.
    pub decision: Decision,
    /// Who: `name (tok-…)` or an OS user.
    pub by: String,
    /// The same, for second-person rules.
    pub person: String,
    /// When (RFC 3339).
    pub at: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// For a revision deployed before vouching: what the approver vouched for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vouches: Option<Vouches>,
}

/// What a reviewer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// It runs.
    Approved,
    /// It never runs.
    Rejected,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
        }
    }
}

/// The raw columns of a review row, as MAC'd.
pub(super) struct ReviewRow {
    pub(super) decision: String,
    pub(super) by: String,
    pub(super) person: String,
    pub(super) at: i64,
    pub(super) comment: Option<String>,
    pub(super) vouches: Option<String>,
    pub(super) mac: Vec<u8>,
}

impl ReviewRow {
    pub(super) fn fields(&self, namespace: &Namespace, id: &str, revision: u64) -> Vec<Vec<u8>> {
        let opt = |o: &Option<String>| o.as_deref().map_or(b"-".to_vec(), |s| format!("+{s}").into_bytes());
        vec![
            namespace.as_str().as_bytes().to_vec(),
            id.as_bytes().to_vec(),
            revision.to_be_bytes().to_vec(),
            self.decision.as_bytes().to_vec(),
            self.by.as_bytes().to_vec(),
            self.person.as_bytes().to_vec(),
            self.at.to_be_bytes().to_vec(),
            opt(&self.comment),
            opt(&self.vouches),
        ]
    }
}

impl Registry {
    /// Removes a flow: a tombstone revision, committed with `audit`. Its
    /// executions stay; revisions pending review stay pending, and never
    /// serve while the removal is newer.
    pub fn remove(
        &self,
        namespace: &Namespace,
        id: &str,
        by: &str,
        audit: impl FnOnce(&Deployed) -> NewRecord,
    ) -> Result<Deployed, RegistryError> {
        let tx = self.begin()?;
        let (cur, _) = self.current(namespace, id)?;
        let d = Deployed {
            revision: self.latest_revision(namespace, id)? + 1,
            source: String::new(),
            plugins: BTreeMap::new(),
            file: cur.file,
            deployed_by: by.to_owned(),
            removed: true,
            vouches: None,
            review: None,
            ..cur
        };
        let d = self.insert(&tx, d, audit)?;
        tx.commit().map_err(self.err("commit a flow removal"))?;
        Ok(d)
    }

    /// Records a decision on `revision`, committed with `audit`. Only a
    /// revision pending review (or one deployed before vouching, with the
    /// approver's `vouches`) can be decided, once, and only while no newer
    /// revision serves the flow.
    pub fn decide(
        &self,
        namespace: &Namespace,
        id: &str,
        revision: u64,
        review: &Review,
        audit: NewRecord,
    ) -> Result<Deployed, RegistryError> {
        let tx = self.begin()?;
        let d = self.get(namespace, id, revision)?;
        let what = format!("flow {id} revision {revision} in namespace {namespace}");
        match d.state {
            RevisionState::Pending | RevisionState::Unchecked => {}
            state => {
                return Err(RegistryError::Conflict(format!(
                    "{what} is {state}: only a revision pending review (or unchecked) is decided"
                )));
            }
        }
        if let Some(newer) = self.serving_row(namespace, id)?.filter(|s| s.revision > revision) {
            return Err(RegistryError::Conflict(format!(
                "{what} is superseded: revision {} serves the flow now",
                newer.revision
            )));
        }
        let row = ReviewRow {
            decision: review.decision.as_str().to_owned(),
            by: review.by.clone(),
            person: review.person.clone(),
            at: now(),
            comment: review.comment.clone(),
            vouches: review.vouches.as_ref().map(|v| serde_json::to_string(v).expect("vouches encode")),
            mac: Vec::new(),
        };
        let mac = self.integrity.mac(MacDomain::ReviewRow, &mac_refs(&row.fields(namespace, id, revision)));
        tx.execute(
            "INSERT INTO flow_reviews (namespace, id, revision, decision, decided_by, person, decided_at, comment, vouches, mac) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![namespace.as_str(), id, revision as i64, row.decision, row.by, row.person, row.at, row.comment, row.vouches, mac.to_vec()],
        )
        .map_err(self.err("store a review"))?;
        crate::audit::append(&tx, &self.integrity, &audit).map_err(self.err("write the audit record"))?;
        tx.commit().map_err(self.err("commit a review"))?;
        self.get(namespace, id, revision)
    }
}
