//! The encrypted store under attack: swapped rows, wrong keys, two processes.

use crate::support::*;
use serde_json::json;

#[test]
fn swapped_ciphertext_rows_fail_to_decrypt_and_nothing_changes() {
    let env = Env::new();
    env.set_secret("", "A", "value-of-a");
    env.set_secret("", "B", "value-of-b");
    {
        // An attacker with write access to the file swaps A's and B's encrypted rows.
        let conn = rusqlite::Connection::open(env.db()).unwrap();
        let row = |name: &str| -> (Vec<u8>, Vec<u8>, Vec<u8>) {
            conn.query_row(
                "SELECT wrapped_key, nonce, ciphertext FROM secret_versions WHERE secret_id = (SELECT id FROM secrets WHERE name = ?1)",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
        };
        let (a, b) = (row("A"), row("B"));
        for (name, (w, n, c)) in [("A", b), ("B", a)] {
            conn.execute(
                "UPDATE secret_versions SET wrapped_key = ?1, nonce = ?2, ciphertext = ?3 WHERE secret_id = (SELECT id FROM secrets WHERE name = ?4)",
                rusqlite::params![w, n, c, name],
            )
            .unwrap();
        }
    }
    let before = dump(&env.db());
    let r = env.probe("", &["A", "B"], json!({"action": "get", "names": ["A", "B"]}), &[]);
    r.expect_code(0);
    let out = r.json();
    for name in ["A", "B"] {
        let err = out[name]["error"].as_str().unwrap_or_default();
        assert!(err.starts_with("unavailable:"), "{name}: {out}");
        assert!(err.contains(&format!("secret {name} version 1")) && err.contains("altered or moved"), "{err}");
    }
    assert!(!r.all_output().contains("value-of-"), "no plaintext of either secret may leak");
    assert_eq!(dump(&env.db()), before, "a failed read must not change the store");
}

#[test]
fn a_wrong_master_key_is_refused_with_a_clear_error_and_changes_nothing() {
    let env = Env::new();
    env.set_secret("", "A", "value-of-a");
    let before = dump(&env.db());
    let key_file = std::fs::read_to_string(env.home().join("master.key")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(env.home().join("master.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key file must be private");
    }
    let other = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // 32 bytes, not the store's key
    for args in [vec!["secret", "list"], vec!["secret", "rm", "A"]] {
        let r = env.run_with(env.host().env("KEYHOLE_MASTER_KEY", other).args(&args), b"");
        r.expect_code(2);
        assert!(r.stderr.contains("is not the key this store was created with"), "{}", r.stderr);
        assert!(!r.stderr.contains(other) && !r.stderr.contains(key_file.trim()), "keys must never be printed");
    }
    let r = env.run_with(env.host().env("KEYHOLE_MASTER_KEY", other).args(["secret", "set", "A"]), b"new");
    r.expect_code(2);
    let r = env.run_with(env.host().env("KEYHOLE_MASTER_KEY", "not base64!").args(["secret", "list"]), b"");
    r.expect_code(2);
    assert!(r.stderr.contains("$KEYHOLE_MASTER_KEY is malformed"), "{}", r.stderr);
    assert_eq!(dump(&env.db()), before);
    // The right key from the environment works as well as the file.
    let r = env.run_with(env.host().env("KEYHOLE_MASTER_KEY", key_file.trim()).args(["secret", "list"]), b"");
    r.expect_code(0);
}

#[test]
fn a_missing_key_file_for_an_existing_store_is_not_silently_replaced() {
    let env = Env::new();
    env.set_secret("", "A", "value-of-a");
    std::fs::rename(env.home().join("master.key"), env.home().join("master.key.bak")).unwrap();
    let r = env.run(&["secret", "list"]);
    r.expect_code(2);
    assert!(r.stderr.contains("no master key"), "{}", r.stderr);
    assert!(!env.home().join("master.key").exists(), "a new key must not be created for an existing store");
}

#[test]
fn two_processes_writing_at_once_lose_nothing() {
    let env = Env::new();
    env.set_secret("", "INIT", "x");
    let mut children = Vec::new();
    for p in 0..2 {
        let home = env.home().to_owned();
        children.push(std::thread::spawn(move || {
            for i in 0..15 {
                let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_host"));
                c.env("KEYHOLE_HOME", &home).env_remove("KEYHOLE_MASTER_KEY");
                c.args(["secret", "set", &format!("P{p}_{i}")]).stdin(std::process::Stdio::piped());
                let mut child = c.spawn().unwrap();
                let feeder = crate::support::feed(&mut child, b"v");
                assert!(child.wait().unwrap().success());
                feeder.join().unwrap();
            }
        }));
    }
    for c in children {
        c.join().unwrap();
    }
    let list: serde_json::Value = serde_json::from_str(&env.run(&["secret", "list", "--json"]).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 31);
    // Every change has its audit record, and the chain is still linear.
    let r = env.run(&["audit", "verify"]);
    r.expect_code(0);
    assert!(r.stdout.contains("audit log intact: 31 records"), "{}", r.stdout);
}
