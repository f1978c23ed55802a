//! The audit trail: every attempt recorded before release, fail closed,
//! tamper-evident, queryable.

use crate::support::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::Stdio;

fn records(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "list", "--json"];
    all.extend_from_slice(args);
    let r = env.run(&all);
    r.expect_code(0);
    serde_json::from_str::<Vec<Value>>(&r.stdout).unwrap()
}

#[test]
fn every_attempt_and_management_action_is_recorded_without_values() {
    let env = Env::new();
    env.set_secret("finance", "DB_PASSWORD", "audit-me-not-0123");
    let r = env.probe(
        "finance.reporting",
        &["DB_PASSWORD", "MISSING"],
        json!({"action": "get", "names": ["DB_PASSWORD", "NOT_GRANTED", "MISSING"]}),
        &["-v"],
    );
    r.expect_code(0);
    let execution = r.stderr.split("execution ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().to_owned();

    let reads = records(&env, &["--action", "secret.read"]);
    let outcomes: Vec<(&str, &str)> =
        reads.iter().map(|r| (r["secret"].as_str().unwrap(), r["outcome"].as_str().unwrap())).collect();
    assert_eq!(outcomes, [("DB_PASSWORD", "granted"), ("NOT_GRANTED", "denied"), ("MISSING", "not-found")]);
    let granted = &reads[0];
    assert_eq!(granted["actor_kind"], "task");
    assert_eq!(granted["flow"], "probe");
    assert_eq!(granted["task"], "probe");
    assert_eq!(granted["execution"], execution.as_str());
    assert_eq!(granted["namespace"], "finance.reporting");
    assert_eq!(granted["version"], 1);
    assert_eq!(granted["plugin_sha256"].as_str().unwrap().len(), 64);
    assert!(granted["time"].as_str().unwrap().ends_with('Z'));

    let set = records(&env, &["--action", "secret.set"]);
    assert_eq!(set.len(), 1);
    assert_eq!(set[0]["actor_kind"], "cli");
    env.run(&["secret", "rm", "DB_PASSWORD", "-n", "finance"]).expect_code(0);
    assert_eq!(records(&env, &["--action", "secret.rm"]).len(), 1);

    // Filters combine; export is one JSON document per line.
    assert_eq!(records(&env, &["--execution", &execution, "--outcome", "denied"]).len(), 1);
    assert_eq!(records(&env, &["--secret", "MISSING", "--since", "1h"]).len(), 1);
    assert_eq!(records(&env, &["--until", "2000-01-01"]).len(), 0);
    assert_eq!(records(&env, &["--limit", "2"]).len(), 2);
    let export = env.run(&["audit", "export", "--format", "jsonl"]);
    let lines: Vec<Value> = export.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), records(&env, &[]).len());
    let table = env.run(&["audit", "list"]);
    assert!(table.stdout.contains("secret.read") && table.stdout.contains("not-found"), "{}", table.stdout);

    // No value in any record, searched in the raw database files.
    for file in ["keyhole.db", "keyhole.db-wal"] {
        let bytes = std::fs::read(env.home().join(file)).unwrap_or_default();
        assert!(!bytes.windows(17).any(|w| w == b"audit-me-not-0123"), "value found in {file}");
    }
}

fn tamper(env: &Env, sql: &str) {
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.execute_batch(sql).unwrap();
}

fn verify(env: &Env) -> Run {
    env.run(&["audit", "verify"])
}

fn populated() -> Env {
    let env = Env::new();
    for i in 0..6 {
        env.set_secret("", &format!("S{i}"), "v");
    }
    let r = verify(&env);
    r.expect_code(0);
    assert!(r.stdout.contains("audit log intact: 6 records"), "{}", r.stdout);
    env
}

#[test]
fn verify_catches_an_edited_record() {
    let env = populated();
    tamper(&env, "UPDATE audit SET actor = 'someone-else' WHERE seq = 3");
    let r = verify(&env);
    r.expect_code(1);
    assert!(r.stderr.contains("broken at record 3") && r.stderr.contains("altered"), "{}", r.stderr);
}

#[test]
fn verify_catches_a_deleted_record() {
    let env = populated();
    tamper(&env, "DELETE FROM audit WHERE seq = 4");
    let r = verify(&env);
    r.expect_code(1);
    assert!(r.stderr.contains("broken at record 4") && r.stderr.contains("missing"), "{}", r.stderr);
}

#[test]
fn verify_catches_an_inserted_record() {
    let env = populated();
    // Make room after record 2 and insert a forged record whose own hash is right.
    tamper(
        &env,
        "UPDATE audit SET seq = seq + 100 WHERE seq >= 3;
         UPDATE audit SET seq = seq - 99 WHERE seq >= 103;
         INSERT INTO audit (seq, time, action, outcome, actor_kind, actor, namespace, prev_hash, hash)
           SELECT 3, time, 'secret.set', 'ok', 'cli', 'forger', '', hash, hash FROM audit WHERE seq = 2;",
    );
    let r = verify(&env);
    r.expect_code(1);
    assert!(r.stderr.contains("broken at record 3"), "{}", r.stderr);
}

#[test]
fn prune_keeps_the_chain_verifiable() {
    let env = populated();
    // An auditor's signed checkpoint, kept elsewhere, from before the prune.
    let outside = tempfile::tempdir().unwrap();
    let ck = outside.path().join("audit.checkpoint");
    env.run_with(env.host().args(["audit", "checkpoint", "-o"]).arg(&ck), b"").expect_code(0);
    env.set_secret("", "MID", "v");
    let r = env.run(&["audit", "prune", "--before", "1d"]);
    r.expect_code(0);
    env.run(&["audit", "prune", "--before", "2999-01-01"]).expect_code(0);
    env.set_secret("", "AFTER", "v");
    let r = verify(&env);
    r.expect_code(0);
    assert!(r.stdout.contains("audit log intact: 2 records (seq 8..9)"), "{}", r.stdout);
    // Pruned past the checkpoint's record: nothing left to compare it with,
    // and a prune is no rewrite.
    let r = env.run_with(env.host().args(["audit", "verify", "--against"]).arg(&ck), b"");
    r.expect_code(0);
    assert!(r.stdout.contains("contains checkpoint"), "{}", r.stdout);
    assert_eq!(records(&env, &["--action", "audit.prune"]).len(), 1);
}

#[test]
fn reads_fail_closed_when_the_audit_log_cannot_be_written() {
    let env = Env::new();
    env.set_secret("", "K", "fail-closed-value");
    let input = json!({"action": "get", "names": ["K"], "wait_ms": 1500}).to_string();
    let mut child = env
        .host()
        .env("KEYHOLE_BUSY_TIMEOUT_MS", "200")
        .arg("exec")
        .arg(component(Plugin::Probe))
        .args(["--grant", "K", "--input", &input])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the task runs, another process takes the write lock and holds it.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("[probe] waiting") {
        line.clear();
    }
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let out = child.wait_with_output().unwrap();
    conn.execute_batch("ROLLBACK").unwrap();
    assert_eq!(out.status.code(), Some(0));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = result["K"]["error"].as_str().unwrap_or_default();
    assert!(err.starts_with("unavailable: the audit log cannot be written, so nothing is released"), "{result}");
    assert!(result["K"].get("sha256").is_none(), "the value must not be released: {result}");
    // Nothing was recorded as granted.
    assert!(records(&env, &["--outcome", "granted"]).is_empty());
}

#[test]
fn usage_shows_reads_and_unused_grants_and_fingerprints_trace_a_leak() {
    let env = Env::new();
    env.run(&["audit", "enable-fingerprints"]).expect_code(0);
    env.set_secret("", "USED", "leaked-value-xyz");
    env.set_secret("", "UNUSED", "never-read");
    env.probe("", &["USED", "UNUSED"], json!({"action": "get", "names": ["USED"]}), &[]).expect_code(0);
    let r = env.run(&["audit", "usage", "--json"]);
    let usage: Vec<Value> = serde_json::from_str(&r.expect_code(0).stdout).unwrap();
    let find = |s: &str| usage.iter().find(|u| u["secret"] == s).unwrap().clone();
    assert_eq!(find("USED")["reads"], 1);
    assert_eq!(find("UNUSED")["reads"], 0);
    assert!(env.run(&["audit", "usage"]).stdout.contains("never (grant unused)"));

    let r = env.run_with(env.host().args(["audit", "hash-value"]), b"leaked-value-xyz\n");
    r.expect_code(0);
    assert!(
        r.stdout.contains("released by record") && r.stdout.contains("probe/probe read USED version 1"),
        "{}",
        r.stdout
    );
    let r = env.run_with(env.host().args(["audit", "hash-value"]), b"some other value");
    assert!(r.stdout.contains("no recorded read released this value"), "{}", r.stdout);
    assert!(!std::fs::read(env.db()).unwrap().windows(16).any(|w| w == b"leaked-value-xyz"));
}

/// A real full disk: a 4 MiB tmpfs holding the data directory, filled up.
/// Needs root (CI runs as root); elsewhere it says so loudly and stops.
#[test]
fn reads_fail_closed_when_the_disk_is_full() {
    let env = Env::new();
    let mnt = env.home().join("small");
    let Some(disk) = SmallDisk::mount(&mnt, "reads_fail_closed_when_the_disk_is_full") else { return };
    let home = mnt.join("home");
    let host = |args: &[&str], stdin: &[u8]| {
        let mut c = env.host();
        c.env("KEYHOLE_HOME", &home).args(args);
        env.run_with(&mut c, stdin)
    };
    host(&["secret", "set", "K"], b"disk-full-value").expect_code(0);
    // Another process keeps the database open, so its shared-memory index
    // exists and the host can still open and read the store.
    let reader = rusqlite::Connection::open(home.join("keyhole.db")).unwrap();
    reader.query_row("SELECT count(*) FROM secrets", [], |r| r.get::<_, i64>(0)).unwrap();
    disk.fill();
    let plugin = component(Plugin::Probe);
    let input = json!({"action": "get", "names": ["K"]}).to_string();
    let r = host(&["exec", plugin.to_str().unwrap(), "--grant", "K", "--input", &input], b"");
    r.expect_code(0);
    let out = r.json();
    let err = out["K"]["error"].as_str().unwrap_or_default();
    assert!(err.starts_with("unavailable: the audit log cannot be written"), "{out}");
    assert!(out["K"].get("sha256").is_none());
    // Space back: the store is intact and the chain verifies.
    disk.free();
    drop(reader);
    let v = host(&["audit", "verify"], b"");
    v.expect_code(0);
    host(&["exec", plugin.to_str().unwrap(), "--grant", "K", "--input", &input], b"").expect_code(0);
}

#[test]
fn a_value_used_as_a_secret_name_is_masked_in_the_audit_record() {
    // A plugin that read a value may ask for it as a "name", trying to write
    // it into the audit log.
    let env = Env::new();
    env.set_secret("", "TOKEN", "tok_live_1234567890");
    let r = env.probe("", &["TOKEN"], json!({"action": "get", "names": ["TOKEN", "tok_live_1234567890"]}), &[]);
    r.expect_code(0);
    let denied = records(&env, &["--outcome", "denied"]);
    assert_eq!(denied.len(), 1);
    assert!(denied[0]["secret"].is_null());
    assert!(denied[0]["reason"].as_str().unwrap().contains("\"***\" contains a secret value"), "{}", denied[0]);
    for file in ["keyhole.db", "keyhole.db-wal"] {
        let bytes = std::fs::read(env.home().join(file)).unwrap_or_default();
        assert!(!bytes.windows(19).any(|w| w == b"tok_live_1234567890"), "value found in {file}");
    }
}

/// A backend change whose record cannot be written is not made: the
/// configuration file stays as it was (it was written first, then audited,
/// before the change went through the service layer).
#[test]
fn a_backend_change_that_cannot_be_recorded_is_not_made() {
    let env = Env::new();
    env.set_secret("", "K", "v");
    // Only an address check: no packet is sent anywhere.
    env.run(&["backend", "add-vault", "ops", "--address", "http://127.0.0.1:1"]).expect_code(0);
    let path = env.home().join("backends.json");
    let before = std::fs::read_to_string(&path).unwrap();
    // Another process holds the write lock, so no record can be written.
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let added = env.run_with(
        env.host().env("KEYHOLE_BUSY_TIMEOUT_MS", "200").args([
            "backend",
            "add-vault",
            "ci",
            "--address",
            "http://127.0.0.1:2",
        ]),
        b"",
    );
    let removed = env.run_with(env.host().env("KEYHOLE_BUSY_TIMEOUT_MS", "200").args(["backend", "rm", "ops"]), b"");
    conn.execute_batch("ROLLBACK").unwrap();
    for r in [&added, &removed] {
        r.expect_code(4);
        assert!(r.stderr.contains("audit log cannot be written"), "{}", r.stderr);
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before, "the configuration changed without its record");
    let listed = env.run(&["backend", "list"]);
    assert!(listed.stdout.contains("ops") && !listed.stdout.contains("127.0.0.1:2"), "{}", listed.stdout);
}
