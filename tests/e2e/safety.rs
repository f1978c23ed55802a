//! Attacks on the landed host, each pinned by the test an attacker (or an
//! unlucky operator) would write: a key lost to a crash or a concurrent
//! command, edited rows, a cut or rolled-back audit log, a plugin that tries
//! to exhaust the host, files left readable, a swapped compiled-cache entry.

use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const KEY_ENV: &str = "KEYHOLE_MASTER_KEY";

fn random_key() -> String {
    use base64::Engine as _;
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).unwrap();
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn read_key(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// Every key file in the data directory, by file name.
fn key_files(env: &Env) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(env.home())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.starts_with("master.key").then(|| (name.clone(), read_key(&env.home().join(&name)).unwrap()))
        })
        .collect();
    out.sort();
    out
}

fn host_with(env: &Env, key: Option<&str>) -> std::process::Command {
    let mut c = env.host();
    if let Some(k) = key {
        c.env(KEY_ENV, k);
    }
    c
}

/// Reads `names` through a plugin with `key` in the environment (or none):
/// each must decrypt to `value-of-NAME`.
fn all_readable(env: &Env, key: Option<&str>, names: &[&str]) {
    let mut cmd = host_with(env, key);
    cmd.arg("exec")
        .arg(component(Plugin::Probe))
        .args(["--input", &json!({"action": "get", "names": names}).to_string()]);
    for n in names {
        cmd.args(["--grant", n]);
    }
    let r = env.run_with(&mut cmd, b"");
    let out = r.expect_code(0).json();
    for n in names {
        assert_eq!(out[*n]["sha256"], sha256(&format!("value-of-{n}")), "{n}: {out}");
    }
}

/// A store keyed from the environment holding `A`, rotated once: the old
/// key, and the new one waiting in `master.key.next`.
fn env_keyed_and_rotated(env: &Env) -> (String, String) {
    let old = random_key();
    env.run_with(host_with(env, Some(&old)).args(["secret", "set", "A"]), b"value-of-A").expect_code(0);
    env.run_with(host_with(env, Some(&old)).args(["key", "rotate"]), b"").expect_code(0);
    let next = read_key(&env.home().join("master.key.next")).expect("the new key waits in master.key.next");
    (old, next)
}

#[test]
fn a_rotated_environment_key_survives_unsetting_the_variable() {
    // Reproduced on 0.1: the second `secret list` found no key at all.
    let env = Env::new();
    let (k, next) = env_keyed_and_rotated(&env);
    // The old key in the environment is refused with directions to the new one.
    let r = env.run_with(host_with(&env, Some(&k)).args(["secret", "list"]), b"");
    r.expect_code(2);
    assert!(r.stderr.contains("master.key.next") && r.stderr.contains("set $KEYHOLE_MASTER_KEY"), "{}", r.stderr);
    env.run(&["secret", "list"]).expect_code(0);
    env.run(&["secret", "list"]).expect_code(0);
    all_readable(&env, None, &["A"]);
    all_readable(&env, Some(&next), &["A"]);
    assert_eq!(read_key(&env.home().join("master.key")).as_deref(), Some(next.as_str()));
}

/// An operator who adopted the rotated key in the environment leaves
/// `master.key.next` (a copy of it) behind; the next rotation keeps that
/// copy as a retired key instead of failing on it or overwriting it.
#[test]
fn a_rotated_environment_key_adopted_then_rotated_again_keeps_every_key() {
    let env = Env::new();
    let (first, adopted) = env_keyed_and_rotated(&env);
    all_readable(&env, Some(&adopted), &["A"]);
    let r = env.run_with(host_with(&env, Some(&adopted)).args(["key", "rotate"]), b"");
    r.expect_code(0);
    let files = key_files(&env);
    let third = read_key(&env.home().join("master.key.next")).expect("the newest key waits in master.key.next");
    assert!(third != adopted && third != first, "{files:?}");
    let kept: Vec<&String> = files.iter().filter(|(_, k)| *k == adopted).map(|(n, _)| n).collect();
    assert!(kept.len() == 1 && kept[0].ends_with(".old"), "the adopted copy is kept as a retired key: {files:?}");
    all_readable(&env, Some(&third), &["A"]);
    let r = env.run_with(host_with(&env, Some(&adopted)).args(["secret", "list"]), b"");
    assert_eq!(r.code, 2, "the retired key must not open the store: {r:#?}");
}

/// `master.key` that cannot be read (here a directory in its place) is an
/// error naming it, not taken for a missing key.
#[test]
fn a_crafted_master_key_path_that_cannot_be_read_is_named_not_taken_as_missing() {
    let env = Env::new();
    env.set_secret("", "A", "value-of-A");
    let key = env.home().join("master.key");
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    std::fs::create_dir(&key).unwrap();
    let r = env.run(&["secret", "list"]);
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(r.stderr.contains(&format!("cannot read master key file {}", key.display())), "{r:#?}");
    assert!(!r.stderr.contains("no master key"), "{r:#?}");
    std::fs::remove_dir(&key).unwrap();
    std::fs::write(&key, saved).unwrap();
    all_readable(&env, None, &["A"]);
}

#[test]
fn key_rotation_crash_matrix_never_loses_the_key() {
    let names = ["A", "B", "C"];
    for from_env in [false, true] {
        for point in ["key-rotate-before-commit", "key-rotate-after-commit", "key-rotate-between-renames"] {
            if from_env && point == "key-rotate-between-renames" {
                continue; // a key from the environment is never renamed
            }
            let case = format!("{} key, killed at {point}", if from_env { "env" } else { "file" });
            let env = Env::new();
            let env_key = from_env.then(random_key);
            for n in names {
                let mut c = host_with(&env, env_key.as_deref());
                env.run_with(c.args(["secret", "set", n]), format!("value-of-{n}").as_bytes()).expect_code(0);
            }
            let old = env_key.clone().unwrap_or_else(|| read_key(&env.home().join("master.key")).unwrap());

            let mut cmd = host_with(&env, env_key.as_deref());
            cmd.env("KEYHOLE_FAILPOINT", point).args(["key", "rotate"]);
            let (mut child, _err) = start_until(&mut cmd, &format!("failpoint {point} reached"));
            // While the rotation holds the key lock, other processes wait for
            // it, then give up clearly, touching nothing.
            for args in [&["secret", "list"][..], &["key", "rotate"][..]] {
                let mut c = host_with(&env, env_key.as_deref());
                let r = env.run_with(c.env("KEYHOLE_BUSY_TIMEOUT_MS", "300").args(args), b"");
                r.expect_code(4);
                assert!(r.stderr.contains("a master-key rotation is in progress"), "{case}: {}", r.stderr);
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();

            // The store opens with exactly one key, and every value decrypts.
            let committed = point != "key-rotate-before-commit";
            let files = key_files(&env);
            let next = files.iter().find(|(n, _)| n == "master.key.next").map(|(_, k)| k.clone());
            if from_env {
                if committed {
                    let next = next.unwrap_or_else(|| panic!("{case}: the new key must wait in master.key.next"));
                    let r = env.run_with(host_with(&env, Some(&old)).args(["secret", "list"]), b"");
                    assert_eq!(r.code, 2, "{case}: the retired key must not open the store");
                    all_readable(&env, Some(&next), &names);
                } else {
                    all_readable(&env, Some(&old), &names);
                }
            } else {
                all_readable(&env, None, &names);
                let now = read_key(&env.home().join("master.key")).unwrap();
                assert_eq!(now == old, !committed, "{case}: master.key holds the store's key");
                if committed {
                    let r = env.run_with(host_with(&env, Some(&old)).args(["secret", "list"]), b"");
                    assert_eq!(r.code, 2, "{case}: the retired key must not open the store");
                }
            }
            // No key was deleted: the old one is still on disk (or in the
            // environment), and so is every key the rotation wrote.
            let after: Vec<String> = key_files(&env).into_iter().map(|(_, k)| k).collect();
            assert!(from_env || after.contains(&old), "{case}: the old key file is kept: {:?}", key_files(&env));
            for (name, k) in &files {
                assert!(after.contains(k), "{case}: {name} disappeared: {:?}", key_files(&env));
            }
            env.run_with(host_with(&env, None).args(["audit", "list"]), b"").expect_code(0);
        }
    }
}

#[test]
fn concurrent_rotations_queue_on_the_lock_and_keep_every_retired_key() {
    let env = Env::new();
    for n in ["A", "B"] {
        env.set_secret("", n, &format!("value-of-{n}"));
    }
    let first = read_key(&env.home().join("master.key")).unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            env.host()
                .args(["key", "rotate"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    all_readable(&env, None, &["A", "B"]);
    let files = key_files(&env);
    let old: Vec<&(String, String)> = files.iter().filter(|(n, _)| n.ends_with(".old")).collect();
    assert_eq!(old.len(), 3, "each rotation retired one key: {files:?}");
    assert!(old.iter().any(|(_, k)| *k == first), "{files:?}");
    env.run(&["audit", "verify"]).expect_code(0);
}

fn tamper(env: &Env, sql: &str) {
    rusqlite::Connection::open(env.db()).unwrap().execute_batch(sql).unwrap();
}

fn records(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "list", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&env.run(&all).expect_code(0).stdout).unwrap()
}

#[test]
fn edited_rows_are_refused_as_tampered_and_recorded() {
    type Setup = fn(&Env);
    // (case, setup, the attacker's edit, whether it edits the `secrets` row)
    let cases: [(&str, Setup, &str, bool); 4] = [
        (
            "un-revoke",
            |env| {
                env.set_secret("", "K", "value-of-K");
                env.run(&["secret", "revoke", "K"]).expect_code(0);
            },
            "UPDATE secrets SET revoked_at = NULL",
            true,
        ),
        (
            "un-expire",
            |env| {
                env.run_with(env.host().args(["secret", "set", "K", "--expires-in", "1d"]), b"value-of-K")
                    .expect_code(0);
            },
            "UPDATE secret_versions SET expires_at = NULL",
            false,
        ),
        (
            "roll back to a rotated-away version",
            |env| {
                env.set_secret("", "K", "old-value-of-K");
                env.set_secret("", "K", "value-of-K");
            },
            "UPDATE secrets SET current_version = 1",
            true,
        ),
        (
            "keep every version",
            |env| env.set_secret("", "K", "value-of-K"),
            "UPDATE secrets SET keep_versions = 1000",
            true,
        ),
    ];
    for (case, setup, sql, secret_row) in cases {
        let env = Env::new();
        setup(&env);
        tamper(&env, sql);
        let r = env.probe("", &["K"], json!({"action": "get", "names": ["K"]}), &[]);
        let err = r.expect_code(0).json()["K"]["error"].as_str().unwrap_or_default().to_owned();
        assert!(err.starts_with("unavailable: secret K") && err.contains("integrity check"), "{case}: {err}");
        assert!(!r.all_output().contains("value-of-K"), "{case}");
        // The plugin is told what, the operator's log where.
        assert!(!err.contains(env.home().to_str().unwrap()), "{case}: {err}");
        assert!(r.stderr.contains(env.db().to_str().unwrap()), "{case}: {}", r.stderr);
        assert_eq!(records(&env, &["--outcome", "tampered", "--action", "secret.read"]).len(), 1, "{case}");
        let list = env.run(&["secret", "list"]);
        list.expect_code(5);
        assert!(list.stdout.contains("TAMPERED"), "{case}: {}", list.stdout);
        assert!(!records(&env, &["--action", "integrity.check"]).is_empty(), "{case}");
        // Setting a new version on top of an edited secret is refused too; `rm` clears it.
        if secret_row {
            env.run_with(env.host().args(["secret", "set", "K"]), b"new").expect_code(5);
            // So is binding it: the new destinations would be signed over the edit.
            let r = env.run(&["secret", "bind", "K", "--destination", "http://127.0.0.1:9"]);
            r.expect_code(5);
            assert!(r.stderr.contains("integrity check"), "{case}: {r:#?}");
        }
        env.run(&["secret", "rm", "K"]).expect_code(0);
        env.set_secret("", "K", "fresh");
        env.run(&["secret", "list"]).expect_code(0);
    }
}

#[test]
fn an_edited_backend_configuration_is_refused() {
    let env = Env::new();
    // Only an address check: no packet is sent anywhere.
    env.run(&["backend", "add-vault", "ops", "--address", "http://127.0.0.1:1"]).expect_code(0);
    let path = env.home().join("backends.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("http://127.0.0.1:1", "https://attacker.invalid")).unwrap();
    let r = env.run(&["backend", "list"]);
    r.expect_code(5);
    assert!(r.stderr.contains("failed its integrity check"), "{}", r.stderr);
    env.probe("ops", &["K"], json!({"action": "get", "names": ["K"]}), &[]).expect_code(5);
    // Plain http to another host is refused up front; loopback and https are fine.
    std::fs::remove_file(&path).unwrap();
    let r = env.run(&["backend", "add-vault", "x", "--address", "http://vault.example.com:8200"]);
    r.expect_code(2);
    assert!(r.stderr.contains("use https://"), "{}", r.stderr);
    env.run(&["backend", "add-vault", "x", "--address", "https://vault.example.com:8200"]).expect_code(0);
}

fn populated() -> Env {
    let env = Env::new();
    for i in 0..6 {
        env.set_secret("", &format!("S{i}"), "v");
    }
    env
}

#[test]
fn deleting_the_newest_audit_records_is_caught() {
    // Reproduced on 0.1: `audit verify` stayed green.
    let env = populated();
    tamper(&env, "DELETE FROM audit WHERE seq >= 5");
    let r = env.run(&["audit", "verify"]);
    r.expect_code(1);
    assert!(r.stderr.contains("newest records were deleted"), "{}", r.stderr);
    // Moving the head back to what is left does not help: it carries a MAC.
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    let last: String = conn.query_row("SELECT hash FROM audit WHERE seq = 4", [], |r| r.get(0)).unwrap();
    let forged = format!("4 {last} {}", "0".repeat(64));
    conn.execute("UPDATE audit_head SET value = ?1 WHERE id = 1", [forged.into_bytes()]).unwrap();
    let r = env.run(&["audit", "verify"]);
    r.expect_code(1);
    assert!(r.stderr.contains("broken at record 4") && r.stderr.contains("head fails its MAC"), "{}", r.stderr);
    // Nor does deleting the head.
    conn.execute("DELETE FROM audit_head", []).unwrap();
    let r = env.run(&["audit", "verify"]);
    r.expect_code(1);
    assert!(r.stderr.contains("broken at record 5") && r.stderr.contains("head is missing"), "{}", r.stderr);
}

#[test]
fn an_edited_keyed_boundary_is_caught() {
    // The boundary says where the keyed chain starts; an attacker who moves
    // it could pass records off as older, unkeyed ones.
    let env = populated();
    let db = rusqlite::Connection::open(env.db()).unwrap();
    let text: Vec<u8> =
        db.query_row("SELECT value FROM meta WHERE key = 'audit_keyed_from'", [], |r| r.get(0)).unwrap();
    let text = String::from_utf8(text).unwrap();
    let parts: Vec<&str> = text.split(' ').collect();
    assert_eq!(parts.len(), 5, "{text}");
    // Well formed, five fields, every one parseable: only the MAC is wrong.
    let forged = format!("{} {} {} {} {}", parts[0], parts[1], parts[2], parts[3], "00".repeat(32));
    db.execute("UPDATE meta SET value = ?1 WHERE key = 'audit_keyed_from'", [forged.into_bytes()]).unwrap();
    drop(db);
    let r = env.run(&["audit", "verify"]);
    r.expect_code(1);
    assert!(r.stderr.contains("keyed boundary fails its MAC"), "{}", r.stderr);
}

#[test]
fn reading_the_trail_of_a_store_that_does_not_exist_creates_nothing() {
    let env = Env::new();
    let r = env.run(&["audit", "list"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr.contains("no keyhole store at") && r.stderr.contains("nothing has been recorded yet"),
        "{}",
        r.stderr
    );
    assert!(!env.db().exists(), "audit list created the store");
}

#[test]
fn a_signed_checkpoint_kept_elsewhere_catches_a_rolled_back_log() {
    let env = populated();
    let outside = tempfile::tempdir().unwrap();
    let ck = outside.path().join("audit.checkpoint");
    // A copy of the whole data directory as it is now: what an attacker
    // could restore later.
    let snapshot = tempfile::tempdir().unwrap();
    copy_db(env.home(), snapshot.path());
    for i in 6..9 {
        env.set_secret("", &format!("S{i}"), "v");
    }
    let r = env.run_with(env.host().args(["audit", "checkpoint", "-o"]).arg(&ck), b"");
    r.expect_code(0);
    let note = std::fs::read_to_string(&ck).unwrap();
    assert!(
        note.starts_with("keyhole.audit/") && note.contains("\n9\n") && note.contains("\n\n\u{2014} keyhole.audit/"),
        "{note}"
    );
    let r = env.run_with(env.host().args(["audit", "verify", "--against"]).arg(&ck), b"");
    r.expect_code(0);
    assert!(r.stdout.contains("contains checkpoint") && r.stdout.contains("verified with audit key"), "{}", r.stdout);
    // A signed note's signature starts with the 4-byte id of the key that
    // made it (C2SP signed-note): the id `audit verify` names.
    let key_id = r.stdout.split("verified with audit key ").nth(1).unwrap().split_whitespace().next().unwrap();
    let sig = note.trim_end().rsplit(' ').next().unwrap();
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD.decode(sig).unwrap();
    assert_eq!((sig.len(), hex::encode(&sig[..4])), (36, key_id.to_owned()), "{note}");

    // Roll the whole database back: on its own it is a consistent log...
    copy_db(snapshot.path(), env.home());
    env.run(&["audit", "verify"]).expect_code(0);
    // ...but not one that contains what was signed.
    let r = env.run_with(env.host().args(["audit", "verify", "--against"]).arg(&ck), b"");
    r.expect_code(1);
    assert!(r.stderr.contains("the log was cut") && r.stderr.contains("record 9"), "{}", r.stderr);
    // Let the restored host write past the signed record: the log is as
    // long as the checkpoint says again, and still intact on its own, but
    // its record 9 is not the one that was signed.
    for i in 20..24 {
        env.set_secret("", &format!("S{i}"), "v");
    }
    env.run(&["audit", "verify"]).expect_code(0);
    let r = env.run_with(env.host().args(["audit", "verify", "--against"]).arg(&ck), b"");
    r.expect_code(1);
    assert!(r.stderr.contains("the log was rewritten: record 9 differs"), "{}", r.stderr);
    // And the checkpoint file never goes back.
    env.run_with(env.host().args(["audit", "checkpoint", "-o"]).arg(&ck), b"").expect_code(1);
    assert_eq!(std::fs::read_to_string(&ck).unwrap(), note);
    // An edited checkpoint is refused.
    let edited = outside.path().join("edited");
    std::fs::write(&edited, note.replace("\n9\n", "\n3\n")).unwrap();
    let r = env.run_with(env.host().args(["audit", "verify", "--against"]).arg(&edited), b"");
    r.expect_code(1);
    assert!(r.stderr.contains("signature does not verify"), "{}", r.stderr);
}

fn copy_db(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let f = from.join(format!("keyhole.db{suffix}"));
        let t = to.join(format!("keyhole.db{suffix}"));
        if f.exists() {
            std::fs::copy(&f, &t).unwrap();
        } else {
            let _ = std::fs::remove_file(&t);
        }
    }
}

#[test]
fn a_forged_prune_checkpoint_is_caught() {
    let env = populated();
    // Hide records 1-3 behind a checkpoint no prune made.
    tamper(
        &env,
        "INSERT INTO audit_checkpoint (seq, hash, time) SELECT seq, hash, time FROM audit WHERE seq = 3;
         DELETE FROM audit WHERE seq <= 3;",
    );
    let r = env.run(&["audit", "verify"]);
    r.expect_code(1);
    assert!(r.stderr.contains("matches no audit.prune record"), "{}", r.stderr);
}

#[test]
fn the_actor_is_the_os_user_not_an_environment_variable() {
    let env = Env::new();
    env.run_with(env.host().env("USER", "mallory").env("LOGNAME", "mallory").args(["secret", "set", "K"]), b"v1")
        .expect_code(0);
    let set = records(&env, &["--action", "secret.set"]);
    let actor = set[0]["actor"].as_str().unwrap();
    assert!(!actor.contains("mallory") && actor.contains("uid "), "{actor}");
}

#[test]
fn a_plugin_cannot_grow_the_audit_log_with_huge_names() {
    // Reproduced on 0.1: four 5 MB names holding a read secret grew the
    // database by 129 MB.
    let env = Env::new();
    let secret = "bounded-secret-value-0123";
    env.set_secret("", "K", secret);
    let big = format!("{}{secret}", "x".repeat(1 << 20));
    let input = env.home().join("input.json");
    std::fs::write(&input, json!({"action": "get", "names": ["K", big, big, big, big]}).to_string()).unwrap();
    let mut cmd = env.host();
    cmd.arg("exec").arg(component(Plugin::Probe)).args(["--grant", "K", "--input-file"]).arg(&input);
    env.run_with(&mut cmd, b"").expect_code(0);
    let log = env.run(&["audit", "export"]).expect_code(0).stdout.len();
    assert!(log < 16 << 10, "the audit log holds {log} bytes");
    let denied = records(&env, &["--outcome", "denied"]);
    assert_eq!(denied.len(), 4);
    for r in &denied {
        let reason = r["reason"].as_str().unwrap();
        assert!(reason.len() < 400 && reason.contains("more bytes cut"), "{reason}");
        assert!(!reason.contains(secret));
    }
}

#[test]
fn a_task_gets_at_most_ten_thousand_audited_requests() {
    let env = Env::new();
    let names: Vec<String> = (0..10_003).map(|i| format!("N{i}")).collect();
    let input = env.home().join("input.json");
    std::fs::write(&input, json!({"action": "get", "names": names}).to_string()).unwrap();
    let mut cmd = env.host();
    cmd.arg("exec").arg(component(Plugin::Probe)).arg("--input-file").arg(&input);
    let out = env.run_with(&mut cmd, b"").expect_code(0).json();
    assert_eq!(out["N9999"]["error"], "denied");
    assert!(
        out["N10000"]["error"].as_str().unwrap().starts_with("unavailable: this task has made 10000"),
        "{}",
        out["N10000"]
    );
    assert_eq!(records(&env, &["--action", "secret.read"]).len(), 10_000);
    assert_eq!(records(&env, &["--action", "task.read-cap"]).len(), 1);
}

/// A component whose `run` returns `{}`, that also instantiates `modules`
/// core modules with a memory of `pages` 64 KiB pages each.
fn many_memories(dir: &Path, modules: usize, pages: u32) -> PathBuf {
    let mut wat = String::from("(component\n");
    wat.push_str(&format!("  (core module $m (memory {pages}))\n"));
    for i in 0..modules {
        wat.push_str(&format!("  (core instance $i{i} (instantiate $m))\n"));
    }
    wat.push_str(
        r#"  (core module $main
    (memory (export "memory") 1)
    (data (i32.const 16) "\00\00\00\00\20\00\00\00\02\00\00\00")
    (data (i32.const 32) "{}")
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
    (func (export "run") (param i32 i32) (result i32) (i32.const 16)))
  (core instance $main (instantiate $main))
  (func (export "run") (param "input" string) (result (result string (error string)))
    (canon lift (core func $main "run") (memory (core memory $main "memory")) (realloc (core func $main "realloc"))))
)"#,
    );
    let path = dir.join(format!("memories-{modules}x{pages}.wasm"));
    std::fs::write(&path, wat::parse_str(&wat).unwrap()).unwrap();
    path
}

#[test]
fn the_memory_limit_counts_every_memory_of_the_task() {
    let env = Env::new();
    // 20 memories of 1 MiB: each is under 8 MiB, together they are not.
    let plugin = many_memories(env.home(), 20, 16);
    let r = env.run_with(env.host().arg("exec").arg(&plugin).args(["--memory", "8"]), b"");
    r.expect_code(3);
    assert!(r.stderr.contains("memory limit"), "{}", r.stderr);
    let r = env.run_with(env.host().arg("exec").arg(&plugin).args(["--memory", "64"]), b"");
    assert_eq!(r.expect_code(0).json(), json!({}));
    // And the number of memories is capped whatever their size.
    let plugin = many_memories(env.home(), 150, 1);
    let r = env.run_with(env.host().arg("exec").arg(&plugin), b"");
    r.expect_code(3);
    assert!(r.stderr.contains("memor"), "{}", r.stderr);
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            assert_private(&p);
        } else {
            assert_eq!(mode(&p), 0o600, "{} is mode {:o}", p.display(), mode(&p));
        }
    }
}

#[cfg(unix)]
#[test]
fn every_file_in_the_data_directory_is_private() {
    // Reproduced on 0.1: `host validate` made the directory 0755 and the
    // database and cache entries 0644.
    let env = Env::new();
    let home = env.home().join("fresh");
    let flow = env.home().join("flow.yaml");
    std::fs::write(&flow, format!("id: f\ntasks:\n  - id: t\n    plugin: {}\n", component(Plugin::Probe).display()))
        .unwrap();
    let run = |args: &[&str]| {
        let mut c = env.host();
        c.env("KEYHOLE_HOME", &home).args(args);
        env.run_with(&mut c, b"value")
    };
    run(&["validate", flow.to_str().unwrap()]).expect_code(0);
    assert_private(&home);
    run(&["secret", "set", "K"]).expect_code(0);
    run(&[
        "exec",
        component(Plugin::Probe).to_str().unwrap(),
        "--grant",
        "K",
        "--input",
        r#"{"action":"get","names":["K"]}"#,
    ])
    .expect_code(0);
    run(&["backend", "add-vault", "ops", "--address", "http://127.0.0.1:1"]).expect_code(0);
    assert_private(&home);
    // A directory others can read gets a warning, as ssh gives for a loose key.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = run(&["secret", "list"]);
    assert!(
        r.stderr.contains("accessible by other users (mode 0755)") && r.stderr.contains("chmod 700"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_compiled_cache_entry_copied_over_another_plugin_is_never_run() {
    // Reproduced on 0.1: copying probe's entry over hello's made
    // `host exec hello.wasm` run probe.
    let env = Env::new();
    env.set_secret("", "API_TOKEN", "token-for-hello");
    let hello = component(Plugin::Hello);
    let probe = component(Plugin::Probe);
    let exec = |p: &Path, extra: &[&str]| {
        let mut c = env.host();
        c.arg("exec").arg(p).args(extra);
        env.run_with(&mut c, b"")
    };
    let hello_args = ["--grant", "API_TOKEN", "--input", r#"{"name":"ops"}"#];
    let expected = exec(&hello, &hello_args).expect_code(0).json();
    exec(&probe, &["--input", r#"{"action":"context"}"#]).expect_code(0);
    let cache = env.home().join("cache");
    let entry = |wasm: &Path| {
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(wasm).unwrap()));
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains(&sha) && p.extension().is_some_and(|e| e == "cwasm"))
            .unwrap()
    };
    let (h, p) = (entry(&hello), entry(&probe));
    std::fs::copy(&p, &h).unwrap();
    std::fs::copy(p.with_extension("cwasm.mac"), h.with_extension("cwasm.mac")).unwrap();
    let r = exec(&hello, &hello_args);
    assert_eq!(r.expect_code(0).json(), expected, "hello must still run hello");
    assert!(r.stderr.contains("failed its authentication"), "{}", r.stderr);
}

#[test]
fn a_crafted_bundle_cannot_make_argon2_run_with_huge_parameters() {
    let env = Env::new();
    let pass = env.home().join("pass");
    std::fs::write(&pass, "correct horse battery staple").unwrap();
    let bundle = env.home().join("bundle.json");
    let doc = json!({
        "header": {"format": "keyhole-export-v1", "kdf": {"alg": "argon2id", "salt": "AAAAAAAAAAAAAAAAAAAAAA==", "m_kib": 512 * 1024, "t": 3, "p": 1}, "nonce": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
        "ciphertext": "AAAA",
    });
    std::fs::write(&bundle, doc.to_string()).unwrap();
    let started = std::time::Instant::now();
    let r = env.run_with(env.host().args(["secret", "import"]).arg(&bundle).arg("--passphrase-file").arg(&pass), b"");
    r.expect_code(2);
    assert!(r.stderr.contains("key-derivation cost"), "{}", r.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Record `seq`'s hash as keyhole 0.1 computed it: the plain SHA-256 of
/// its canonical encoding, over the row as stored (its `prev_hash` too).
/// Anyone can compute it: there is no key in it.
fn hash_0_1(conn: &rusqlite::Connection, seq: i64) -> String {
    #[derive(serde::Serialize)]
    struct Canonical {
        seq: i64,
        time: String,
        action: String,
        outcome: String,
        actor_kind: String,
        actor: String,
        flow: Option<String>,
        task: Option<String>,
        execution: Option<String>,
        plugin_sha256: Option<String>,
        namespace: String,
        secret: Option<String>,
        version: Option<i64>,
        reason: Option<String>,
        value_hmac: Option<String>,
        prev_hash: String,
    }
    let c = conn
        .query_row(
            "SELECT seq, time, action, outcome, actor_kind, actor, flow, task, execution, plugin_sha256, namespace, secret, version, reason, value_hmac, prev_hash FROM audit WHERE seq = ?1",
            [seq],
            |r| {
                Ok(Canonical {
                    seq: r.get(0)?,
                    time: r.get(1)?,
                    action: r.get(2)?,
                    outcome: r.get(3)?,
                    actor_kind: r.get(4)?,
                    actor: r.get(5)?,
                    flow: r.get(6)?,
                    task: r.get(7)?,
                    execution: r.get(8)?,
                    plugin_sha256: r.get(9)?,
                    namespace: r.get(10)?,
                    secret: r.get(11)?,
                    version: r.get(12)?,
                    reason: r.get(13)?,
                    value_hmac: r.get(14)?,
                    prev_hash: r.get(15)?,
                })
            },
        )
        .unwrap();
    sha256(&serde_json::to_string(&c).unwrap())
}

/// Turns a store into what keyhole 0.1 wrote: no MAC columns, no integrity
/// key, no audit head, and an audit log chained with plain SHA-256 over 0.1's
/// canonical encoding.
fn downgrade_to_0_1(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "ALTER TABLE secrets DROP COLUMN mac;
         ALTER TABLE secrets DROP COLUMN destinations;
         ALTER TABLE secret_versions DROP COLUMN mac;
         ALTER TABLE audit DROP COLUMN detail;
         DROP TABLE audit_head;
         DROP INDEX IF EXISTS executions_queue;
         DROP INDEX IF EXISTS executions_idempotency;
         ALTER TABLE executions DROP COLUMN inputs;
         ALTER TABLE executions DROP COLUMN revision;
         ALTER TABLE executions DROP COLUMN trigger;
         ALTER TABLE executions DROP COLUMN created_by;
         ALTER TABLE executions DROP COLUMN idempotency_key;
         ALTER TABLE executions DROP COLUMN cancel_requested;
         ALTER TABLE executions DROP COLUMN log;
         ALTER TABLE executions DROP COLUMN trigger_data;
         ALTER TABLE executions DROP COLUMN concurrency_limit;
         DROP TABLE IF EXISTS namespace_turns;
         ALTER TABLE executions DROP COLUMN person;
         ALTER TABLE executions DROP COLUMN owner;
         DROP TABLE IF EXISTS flow_reviews;
         DROP TABLE IF EXISTS protections;
         DROP TABLE IF EXISTS plugin_uploads;
         DROP TABLE IF EXISTS namespace_limits;
         DROP TABLE IF EXISTS approvals;
         DROP TABLE IF EXISTS schedule_state;
         DROP TABLE IF EXISTS leases;
         DROP TABLE IF EXISTS tokens;
         DROP TABLE IF EXISTS roles;
         DROP TABLE IF EXISTS flows;
         DELETE FROM meta WHERE key IN ('integrity_key', 'store_id', 'audit_keyed_from');",
    )
    .unwrap();
    let seqs: Vec<i64> = conn
        .prepare("SELECT seq FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut prev = "0".repeat(64);
    for seq in seqs {
        conn.execute("UPDATE audit SET prev_hash = ?1 WHERE seq = ?2", rusqlite::params![prev, seq]).unwrap();
        prev = hash_0_1(&conn, seq);
        conn.execute("UPDATE audit SET hash = ?1 WHERE seq = ?2", rusqlite::params![prev, seq]).unwrap();
    }
    conn.pragma_update(None, "user_version", 1).unwrap();
}

#[test]
fn a_store_written_by_keyhole_0_1_is_upgraded_in_place() {
    let env = Env::new();
    for n in ["A", "B"] {
        env.set_secret("", n, &format!("value-of-{n}"));
    }
    env.set_secret("", "GONE", "value-of-GONE");
    env.run(&["secret", "revoke", "GONE"]).expect_code(0);
    all_readable(&env, None, &["A", "B"]);
    // Only an address check: no packet is sent anywhere.
    env.run(&["backend", "add-vault", "ops", "--address", "http://127.0.0.1:1"]).expect_code(0);
    downgrade_to_0_1(&env.db());
    // 0.1 signed no backend configuration.
    let backends = env.home().join("backends.json");
    let unsigned = |address: &str| {
        let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&backends).unwrap()).unwrap();
        doc.as_object_mut().unwrap().remove("mac");
        let text = doc.to_string().replace("http://127.0.0.1:1", address);
        std::fs::write(&backends, text).unwrap();
    };
    unsigned("http://127.0.0.1:1");

    // The first command authenticates what is there, once, and keys the log
    // and the backend configuration.
    let list = env.run(&["secret", "list", "--json"]).expect_code(0).json();
    assert_eq!(list.as_array().unwrap().len(), 3);
    let r = env.run(&["backend", "list"]);
    r.expect_code(0);
    assert!(r.stdout.contains("http://127.0.0.1:1"), "{r:#?}");
    // Once signed, an edit that drops the signature is not adopted again.
    unsigned("https://attacker.invalid");
    for args in [&["secret", "list"][..], &["backend", "list"][..]] {
        let r = env.run(args);
        r.expect_code(5);
        assert!(r.stderr.contains("failed its integrity check"), "{args:?}: {r:#?}");
    }
    std::fs::remove_file(&backends).unwrap();
    all_readable(&env, None, &["A", "B"]);
    let gone = env.probe("", &["GONE"], json!({"action": "get", "names": ["GONE"]}), &[]).expect_code(0).json();
    assert_eq!(gone["GONE"]["error"], "revoked");
    assert_eq!(records(&env, &["--action", "integrity.init"]).len(), 1);
    let r = env.run(&["audit", "verify"]);
    r.expect_code(0);
    assert!(r.stdout.contains("predate the keyed chain: plain SHA-256"), "{}", r.stdout);
    // From now on an edit is caught, in the rows and in the 0.1 part of the log.
    tamper(&env, "UPDATE secrets SET revoked_at = NULL WHERE name = 'GONE'");
    env.run(&["secret", "list"]).expect_code(5);
    tamper(&env, "UPDATE audit SET actor = 'someone-else' WHERE seq = 2");
    let r = env.run(&["audit", "verify"]);
    r.expect_code(1);
    assert!(r.stderr.contains("broken at record 2"), "{}", r.stderr);
    // An attacker who knows the 0.1 format recomputes the edited record's
    // hash (there is no key in it): the next record's link gives it away.
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.execute("UPDATE audit SET hash = ?1 WHERE seq = 2", [hash_0_1(&conn, 2)]).unwrap();
    let r = env.run(&["audit", "verify"]);
    r.expect_code(1);
    assert!(r.stderr.contains("broken at record 3") && r.stderr.contains("prev_hash"), "{}", r.stderr);
}
