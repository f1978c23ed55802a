//! The registry against a real SQLite file: which revision serves, decisions,
//! revisions from before vouching, edited rows, protections.

use super::*;
use crate::audit::{Action, Actor};
use crate::names::SecretName;
use crate::vouch::{Vouch, Vouches};
use rusqlite::params;

fn ns(s: &str) -> Namespace {
    Namespace::new(s).unwrap()
}

fn open() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let r = Registry::open(&DataDir::at(dir.path()), IntegrityKey::generate()).unwrap();
    (dir, r)
}

const PLUGIN: &[u8] = b"\0asm\x01\x00\x00\x00plugin bytes";

const SOURCE: &str = "id: report\nnamespace: finance.reporting\ntasks:\n  - {id: t, plugin: p.wasm, secrets: [DB]}\n";

fn audit(d: &Deployed) -> NewRecord {
    NewRecord::ok(&Actor::Cli { user: "tester".into() }, Action::FlowDeploy, &d.namespace, None)
}

fn vouches(review: &[&str]) -> Vouches {
    Vouches {
        by: "dev (tok-1)".into(),
        person: "token tok-1".into(),
        secrets: vec![Vouch {
            secret: SecretName::new("DB").unwrap(),
            uses: vec!["task t (secrets)".into()],
            resolved_in: Some(ns("finance")),
            checked_in: ns("finance"),
            protected: !review.is_empty(),
        }],
        review: review.iter().map(|n| SecretName::new(n).unwrap()).collect(),
    }
}

/// Deploys [`SOURCE`] vouched for with `v`.
fn deploy(r: &Registry, v: &Vouches) -> Deployed {
    let plugins: BTreeMap<String, String> =
        [("t".to_owned(), r.put_plugin(PLUGIN, &ns("finance.reporting"), None).unwrap().sha256)].into();
    let flow = r.prepare("report.yaml", SOURCE, &plugins).unwrap();
    let serving = r.serving_row(&flow.namespace, "report").unwrap().map(|d| d.revision);
    let new = NewRevision {
        flow: &flow,
        file: "report.yaml",
        source: SOURCE,
        plugins: &plugins,
        by: &v.by,
        vouches: v,
        serving,
    };
    r.insert_revision(new, audit).unwrap().0
}

fn review(decision: Decision, vouches: Option<Vouches>) -> Review {
    Review {
        decision,
        by: "rev (tok-2)".into(),
        person: "token tok-2".into(),
        at: String::new(),
        comment: None,
        vouches,
    }
}

fn rec() -> NewRecord {
    NewRecord::ok(&Actor::Cli { user: "tester".into() }, Action::FlowApprove, &ns("finance.reporting"), None)
}

#[test]
fn a_deployed_flows_grants_are_served_only_where_they_were_vouched_for() {
    let (_d, r) = open();
    let d = deploy(&r, &vouches(&[]));
    assert_eq!(d.state, RevisionState::Active);
    let (_, flow) = r.current(&ns("finance.reporting"), "report").unwrap();
    let grant = flow.tasks[0].grants.check("DB").unwrap();
    assert_eq!(grant.vouched_at(), Some(&ns("finance")));
}

#[test]
fn a_pending_revision_never_serves_and_a_decision_is_final() {
    let (_d, r) = open();
    let at = ns("finance.reporting");
    let pending = deploy(&r, &vouches(&["DB"]));
    assert_eq!(pending.state, RevisionState::Pending);
    let e = r.current(&at, "report").unwrap_err();
    assert!(e.to_string().contains("revision 1 is pending review"), "{e}");
    assert!(r.revision(&at, "report", 1).is_err(), "a queued execution of it would not run either");
    let listed = r.list().unwrap();
    assert_eq!((listed.len(), listed[0].state), (1, RevisionState::Pending));
    assert!(r.serving_all().unwrap().is_empty(), "no schedule fires for it");
    let d = r.decide(&at, "report", 1, &review(Decision::Approved, None), rec()).unwrap();
    assert_eq!((d.state, d.review.unwrap().by.as_str()), (RevisionState::Active, "rev (tok-2)"));
    assert_eq!(r.current(&at, "report").unwrap().0.revision, 1);
    // A second pending one: rejected, it never serves; revision 1 goes on.
    deploy(&r, &vouches(&["DB"]));
    assert_eq!(r.current(&at, "report").unwrap().0.revision, 1);
    assert_eq!(r.shown(&at, "report").unwrap().2, vec![2], "flow show names the one waiting");
    r.decide(&at, "report", 2, &review(Decision::Rejected, None), rec()).unwrap();
    assert_eq!(r.current(&at, "report").unwrap().0.revision, 1);
    let e = r.decide(&at, "report", 2, &review(Decision::Approved, None), rec()).unwrap_err();
    assert!(e.to_string().contains("is rejected"), "{e}");
    // A newer active revision supersedes an older pending one.
    deploy(&r, &vouches(&["DB"]));
    deploy(&r, &vouches(&[]));
    let e = r.decide(&at, "report", 3, &review(Decision::Approved, None), rec()).unwrap_err();
    assert!(e.to_string().contains("superseded: revision 4 serves"), "{e}");
}

/// The generation the scheduler watches moves at each deploy, removal
/// and decided review, and at nothing else it reads (a plugin upload, a
/// protection, a read); the parse cache gives back the same flow.
#[test]
fn the_generation_moves_when_what_serves_may_have_changed() {
    let (_d, r) = open();
    let at = ns("finance.reporting");
    let g0 = r.generation().unwrap();
    let pending = deploy(&r, &vouches(&["DB"]));
    let g1 = r.generation().unwrap();
    assert_ne!(g0, g1, "a deploy");
    r.put_plugin(b"\0asm\x0d\0\x01\0", &at, None).unwrap();
    r.set_protection(&at, None, true, "tester", &rec()).unwrap();
    let _ = r.list().unwrap();
    assert_eq!(r.generation().unwrap(), g1, "nothing that serves changed");
    r.decide(&at, "report", pending.revision, &review(Decision::Approved, None), rec()).unwrap();
    let g2 = r.generation().unwrap();
    assert_ne!(g1, g2, "a decided review");
    let first = r.current(&at, "report").unwrap().1;
    let again = r.current(&at, "report").unwrap().1;
    assert_eq!(format!("{first:?}"), format!("{again:?}"), "a cached parse is the same flow");
    r.remove(&at, "report", "tester", |_| audit(&pending)).unwrap();
    assert_ne!(r.generation().unwrap(), g2, "a removal");
}

/// Writes a `flows` row as keyhole 0.7 did: no vouches, the MAC over
/// the fields it knew.
fn legacy_row(r: &Registry) {
    let sha = r.put_plugin(PLUGIN, &ns("finance.reporting"), None).unwrap().sha256;
    let d = Deployed {
        namespace: ns("finance.reporting"),
        id: "report".into(),
        revision: 1,
        file: "report.yaml".into(),
        source: SOURCE.into(),
        plugins: [("t".to_owned(), sha)].into(),
        deployed_at: String::new(),
        deployed_by: "old-dev (tok-0)".into(),
        removed: false,
        vouches: None,
        review: None,
        state: RevisionState::Active,
    };
    let mac = r.integrity.mac(MacDomain::FlowRow, &mac_refs(&flow_mac_fields(&d, 1000, None)));
    r.conn
        .execute(
            "INSERT INTO flows (namespace, id, revision, file, source, plugins, deployed_at, deployed_by, removed, mac) \
             VALUES ('finance.reporting', 'report', 1, 'report.yaml', ?1, ?2, 1000, 'old-dev (tok-0)', 0, ?3)",
            params![SOURCE, serde_json::to_string(&d.plugins).unwrap(), mac.to_vec()],
        )
        .unwrap();
}

#[test]
fn a_revision_deployed_before_vouching_keeps_running_unchecked_until_approved() {
    let (_d, r) = open();
    legacy_row(&r);
    let at = ns("finance.reporting");
    let (d, flow) = r.current(&at, "report").unwrap();
    assert_eq!(d.state, RevisionState::Unchecked, "nothing silently narrows what runs");
    assert_eq!(flow.tasks[0].grants.check("DB").unwrap().vouched_at(), None, "nor widens it");
    assert_eq!(r.list().unwrap()[0].state, RevisionState::Unchecked);
    let d = r.decide(&at, "report", 1, &review(Decision::Approved, Some(vouches(&[]))), rec()).unwrap();
    assert_eq!(d.state, RevisionState::Active);
    let (_, flow) = r.current(&at, "report").unwrap();
    assert_eq!(flow.tasks[0].grants.check("DB").unwrap().vouched_at(), Some(&ns("finance")));
}

#[test]
fn an_edited_vouch_or_decision_is_refused_not_run() {
    let at = ns("finance.reporting");
    let edits = [
        // Widen where a grant may resolve.
        "UPDATE flows SET vouches = replace(vouches, '\"checked_in\":\"finance\"', '\"checked_in\":\"\"')",
        // Make a checked revision look unchecked (no vouch, no pin).
        "UPDATE flows SET vouches = NULL",
        // Clear the review it waits for.
        "UPDATE flows SET vouches = replace(vouches, '\"review\":[\"DB\"]', '\"review\":[]')",
    ];
    for edit in edits {
        let (_d, r) = open();
        deploy(&r, &vouches(&["DB"]));
        r.conn.execute(edit, []).unwrap();
        assert!(matches!(r.current(&at, "report"), Err(RegistryError::Tampered { .. })), "{edit}");
    }
    // A decision no one with the key wrote, or one turned around.
    let (_d, r) = open();
    deploy(&r, &vouches(&["DB"]));
    r.conn
        .execute(
            "INSERT INTO flow_reviews (namespace, id, revision, decision, decided_by, person, decided_at, mac) \
             VALUES ('finance.reporting', 'report', 1, 'approved', 'x', 'x', 1, x'00')",
            [],
        )
        .unwrap();
    assert!(matches!(r.current(&at, "report"), Err(RegistryError::Tampered { .. })));
    let (_d, r) = open();
    deploy(&r, &vouches(&["DB"]));
    r.decide(&at, "report", 1, &review(Decision::Rejected, None), rec()).unwrap();
    r.conn.execute("UPDATE flow_reviews SET decision = 'approved'", []).unwrap();
    assert!(matches!(r.current(&at, "report"), Err(RegistryError::Tampered { .. })));
}

#[test]
fn protections_cover_a_secret_or_a_namespace_subtree_and_are_authenticated() {
    let (_d, r) = open();
    let db = SecretName::new("DB").unwrap();
    let by = "tester";
    assert!(r.set_protection(&ns("finance"), Some(&db), true, by, &rec()).unwrap());
    assert!(!r.set_protection(&ns("finance"), Some(&db), true, by, &rec()).unwrap(), "twice changes nothing");
    assert!(r.is_protected(&ns("finance"), &db).unwrap());
    assert!(!r.is_protected(&ns("finance.eu"), &db).unwrap(), "a secret's protection is its own");
    assert!(!r.is_protected(&ns("finance"), &SecretName::new("OTHER").unwrap()).unwrap());
    assert!(r.set_protection(&ns("ops"), None, true, by, &rec()).unwrap());
    for (at, covered) in [("ops", true), ("ops.db.eu", true), ("opsx", false), ("", false)] {
        assert_eq!(r.is_protected(&ns(at), &db).unwrap(), covered, "{at:?}");
    }
    assert_eq!(r.protections().unwrap().len(), 2);
    assert!(r.set_protection(&ns("ops"), None, false, by, &rec()).unwrap());
    assert!(!r.is_protected(&ns("ops.db"), &db).unwrap());
    r.conn.execute("UPDATE protections SET namespace = 'finance.eu'", []).unwrap();
    let e = r.is_protected(&ns("finance.eu"), &db).unwrap_err();
    assert!(matches!(e, RegistryError::ProtectionTampered { .. }), "{e}");
}
