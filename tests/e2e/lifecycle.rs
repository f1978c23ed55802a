//! The secret lifecycle: versions, rotation, revocation, expiry, destruction,
//! master-key rotation and backups, with crash tests.

use crate::support::*;
use serde_json::{Value, json};

fn json_of(r: &Run) -> Value {
    r.expect_code(0);
    r.json()
}

fn get(env: &Env, name: &str) -> Value {
    env.probe("", &[name], json!({"action": "get", "names": [name]}), &[]).expect_code(0).json()[name].clone()
}

#[test]
fn versions_describe_and_generated_rotation_never_show_values() {
    let env = Env::new();
    env.set_secret("app", "DB_PASSWORD", "first-password");
    let r = env.run(&["secret", "rotate", "DB_PASSWORD", "-n", "app", "--generate", "32"]);
    r.expect_code(0);
    let r = env.run(&[
        "secret",
        "rotate",
        "DB_PASSWORD",
        "-n",
        "app",
        "--generate",
        "16",
        "--charset",
        "hex",
        "--expires-in",
        "90d",
    ]);
    r.expect_code(0);
    let versions = json_of(&env.run(&["secret", "versions", "DB_PASSWORD", "-n", "app", "--json"]));
    let nums: Vec<u64> = versions.as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
    assert_eq!(nums, [3, 2, 1]);
    assert_eq!(versions[0]["current"], true);
    assert!(versions[0]["expires_at"].is_i64() && versions[1]["expires_at"].is_null());
    let d = json_of(&env.run(&["secret", "describe", "DB_PASSWORD", "-n", "app", "--json"]));
    assert_eq!(d["current_version"], 3);
    assert!(d["expires"].as_str().unwrap().ends_with('Z'));
    assert_eq!(d["state"].as_str().unwrap().split(' ').next(), Some("expires"));
    assert!(d["last_read"].is_null());
    // The generated value is 32 hex characters (16 bytes) and nobody saw it.
    let out =
        env.probe("app", &["DB_PASSWORD"], json!({"action": "leak", "name": "DB_PASSWORD"}), &[]).expect_code(0).json();
    assert_eq!(out["value"], "***");
    let read = env
        .probe("app", &["DB_PASSWORD"], json!({"action": "get", "names": ["DB_PASSWORD"]}), &[])
        .expect_code(0)
        .json();
    assert_ne!(read["DB_PASSWORD"]["sha256"], sha256("first-password"));
    let d = json_of(&env.run(&["secret", "describe", "DB_PASSWORD", "-n", "app", "--json"]));
    assert!(d["last_read"]["time"].as_str().is_some_and(|t| t.ends_with('Z')), "describe shows the last read: {d}");
    assert!(d["last_read"]["execution"].as_str().is_some(), "and which execution read it: {d}");
    let text = env.run(&["secret", "describe", "DB_PASSWORD", "-n", "app"]);
    assert!(text.stdout.contains("current_version") && !text.stdout.contains("first-password"), "{}", text.stdout);
    assert!(text.stdout.lines().any(|l| l.starts_with("last_read") && l.contains(" by execution ")), "{}", text.stdout);
    // Rotating a secret that does not exist is refused.
    let r = env.run_with(env.host().args(["secret", "rotate", "NOPE"]), b"x");
    r.expect_code(2);
    assert!(r.stderr.contains("use `host secret set`"), "{}", r.stderr);
    // Every change is audited.
    let audit = json_of(&env.run(&["audit", "list", "--action", "secret.rotate", "--json"]));
    assert_eq!(audit.as_array().unwrap().len(), 2);
}

#[test]
fn a_rotation_mid_execution_is_not_seen_by_that_execution_but_by_the_next() {
    let env = Env::new();
    env.set_secret("", "K", "version-one");
    let input = json!({"action": "get_twice", "name": "K", "wait_ms": 1500}).to_string();
    let mut cmd = env.host();
    cmd.arg("exec").arg(component(Plugin::Probe)).args(["--grant", "K", "--input", &input]);
    let (child, _err) = start_until(&mut cmd, "[probe] waiting");
    env.run_with(env.host().args(["secret", "rotate", "K"]), b"version-two").expect_code(0);
    let out: Value = serde_json::from_slice(&child.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(out["first"]["sha256"], sha256("version-one"));
    assert_eq!(out["second"]["sha256"], sha256("version-one"), "the execution keeps the version it read first");
    assert_eq!(get(&env, "K")["sha256"], sha256("version-two"), "a new execution sees the new version");
}

#[test]
fn a_revocation_is_seen_by_a_running_execution() {
    let env = Env::new();
    env.set_secret("", "K", "soon-revoked");
    let input = json!({"action": "get_twice", "name": "K", "wait_ms": 1500}).to_string();
    let mut cmd = env.host();
    cmd.arg("exec").arg(component(Plugin::Probe)).args(["--grant", "K", "--input", &input]);
    let (child, _err) = start_until(&mut cmd, "[probe] waiting");
    env.run(&["secret", "revoke", "K"]).expect_code(0);
    let out: Value = serde_json::from_slice(&child.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(out["first"]["sha256"], sha256("soon-revoked"));
    assert_eq!(out["second"]["error"], "revoked");
    assert_eq!(get(&env, "K")["error"], "revoked");
    let list = env.run(&["secret", "list"]);
    assert!(list.stdout.contains("revoked"), "{}", list.stdout);
    // A new version is a new credential.
    env.set_secret("", "K", "replacement");
    assert_eq!(get(&env, "K")["sha256"], sha256("replacement"));
}

#[test]
fn expired_secrets_are_refused_and_listed_as_expiring() {
    let env = Env::new();
    env.run_with(env.host().args(["secret", "set", "SHORT", "--expires-in", "1s"]), b"short-lived").expect_code(0);
    env.run_with(env.host().args(["secret", "set", "LONG", "--expires-in", "365d"]), b"long-lived").expect_code(0);
    env.set_secret("", "FOREVER", "no-expiry");
    let soon = json_of(&env.run(&["secret", "list", "--expiring", "14d", "--json"]));
    let names: Vec<&str> = soon.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["SHORT"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(get(&env, "SHORT")["error"], "expired");
    assert_eq!(get(&env, "LONG")["sha256"], sha256("long-lived"));
    let reads = json_of(&env.run(&["audit", "list", "--outcome", "expired", "--json"]));
    assert_eq!(reads.as_array().unwrap().len(), 1);
}

#[test]
fn destroy_erases_every_version_and_leaves_a_tombstone() {
    let env = Env::new();
    env.set_secret("", "GONE", "destroy-me-0001");
    env.set_secret("", "GONE", "destroy-me-0002");
    env.run(&["secret", "destroy", "GONE"]).expect_code(0);
    assert_eq!(get(&env, "GONE")["error"], "revoked");
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    let n: i64 = conn.query_row("SELECT count(*) FROM secret_versions", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0, "no ciphertext or data key may remain");
    let d = json_of(&env.run(&["secret", "describe", "GONE", "--json"]));
    assert_eq!(d["state"], "destroyed");
    assert_eq!(
        json_of(&env.run(&["audit", "list", "--action", "secret.destroy", "--json"])).as_array().unwrap().len(),
        1
    );
}

fn key_file(env: &Env) -> String {
    std::fs::read_to_string(env.home().join("master.key")).unwrap().trim().to_owned()
}

fn all_readable(env: &Env, names: &[&str]) {
    let input = json!({"action": "get", "names": names});
    let out = env.probe("", names, input, &[]).expect_code(0).json();
    for n in names {
        assert_eq!(out[*n]["sha256"], sha256(&format!("value-of-{n}")), "{n}: {out}");
    }
}

#[test]
fn master_key_rotation_rewraps_and_the_old_key_stops_working() {
    let env = Env::new();
    let names = ["A", "B", "C"];
    for n in names {
        env.set_secret("", n, &format!("value-of-{n}"));
    }
    let old = key_file(&env);
    let r = env.run(&["key", "rotate"]);
    r.expect_code(0);
    assert!(r.stderr.contains("3 data keys re-wrapped"), "{}", r.stderr);
    assert_ne!(key_file(&env), old);
    assert!(!env.home().join("master.key.next").exists());
    all_readable(&env, &names);
    let r = env.run_with(env.host().env("KEYHOLE_MASTER_KEY", &old).args(["secret", "list"]), b"");
    r.expect_code(2);
    assert!(r.stderr.contains("is not the key this store was created with"), "{}", r.stderr);
    assert_eq!(json_of(&env.run(&["audit", "list", "--action", "key.rotate", "--json"])).as_array().unwrap().len(), 1);
}

#[test]
fn kill_9_during_key_rotation_leaves_a_store_readable_with_exactly_one_key() {
    for point in ["key-rotate-before-commit", "key-rotate-after-commit"] {
        let env = Env::new();
        let names = ["A", "B", "C", "D"];
        for n in names {
            env.set_secret("", n, &format!("value-of-{n}"));
        }
        let old = key_file(&env);
        let mut cmd = env.host();
        cmd.env("KEYHOLE_FAILPOINT", point).args(["key", "rotate"]);
        let (mut child, _err) = start_until(&mut cmd, &format!("failpoint {point} reached"));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Whatever the moment, the next command opens the store and every value decrypts.
        all_readable(&env, &names);
        let now = key_file(&env);
        assert!(!env.home().join("master.key.next").exists(), "{point}: the interrupted rotation is resolved");
        if point == "key-rotate-before-commit" {
            assert_eq!(now, old, "nothing committed: the old key stays");
        } else {
            assert_ne!(now, old, "committed: the new key is installed");
        }
        // Exactly one key works.
        let other = if now == old { "the new key" } else { "the old key" };
        let stale = if now == old { None } else { Some(old.clone()) };
        if let Some(stale) = stale {
            let r = env.run_with(env.host().env("KEYHOLE_MASTER_KEY", &stale).args(["secret", "list"]), b"");
            assert_eq!(r.code, 2, "{point}: {other} must not open the store");
        }
        env.run(&["audit", "verify"]).expect_code(0);
    }
}

fn passphrase_file(env: &Env, text: &str) -> std::path::PathBuf {
    let p = env.home().join(format!("pass-{}", text.len()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn export_and_import_round_trip_and_refuse_wrong_or_tampered_bundles() {
    let src = Env::new();
    for n in ["A", "B"] {
        src.set_secret("team", n, &format!("value-of-{n}"));
    }
    let pass = passphrase_file(&src, "correct horse battery staple");
    let bundle = src.home().join("backup.json");
    src.run_with(src.host().args(["secret", "export", "-o"]).arg(&bundle).arg("--passphrase-file").arg(&pass), b"")
        .expect_code(0);
    let text = std::fs::read_to_string(&bundle).unwrap();
    assert!(!text.contains("value-of-A"), "the bundle is encrypted");

    let dst = Env::new();
    dst.set_secret("", "EXISTING", "untouched");
    let before = dump(&dst.db());
    let wrong = passphrase_file(&dst, "not the right passphrase");
    let r = dst.run_with(dst.host().args(["secret", "import"]).arg(&bundle).arg("--passphrase-file").arg(&wrong), b"");
    r.expect_code(2);
    assert!(r.stderr.contains("wrong passphrase or key, or the file was altered"), "{}", r.stderr);
    let tampered = dst.home().join("tampered.json");
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let ct = v["ciphertext"].as_str().unwrap().to_owned();
    let flipped = format!("{}{}", if ct.starts_with('A') { "B" } else { "A" }, &ct[1..]);
    v["ciphertext"] = Value::String(flipped);
    std::fs::write(&tampered, v.to_string()).unwrap();
    let right = passphrase_file(&dst, "correct horse battery staple");
    let r =
        dst.run_with(dst.host().args(["secret", "import"]).arg(&tampered).arg("--passphrase-file").arg(&right), b"");
    r.expect_code(2);
    assert_eq!(dump(&dst.db()), before, "a refused bundle changes nothing");

    // Killed mid-import: nothing is half-imported.
    let mut cmd = dst.host();
    cmd.env("KEYHOLE_FAILPOINT", "import-before-commit")
        .args(["secret", "import"])
        .arg(&bundle)
        .arg("--passphrase-file")
        .arg(&right);
    let (mut child, _err) = start_until(&mut cmd, "failpoint import-before-commit reached");
    child.kill().unwrap();
    child.wait().unwrap();
    let list = json_of(&dst.run(&["secret", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "only EXISTING: {list}");
    dst.run(&["audit", "verify"]).expect_code(0);

    let r = dst.run_with(dst.host().args(["secret", "import"]).arg(&bundle).arg("--passphrase-file").arg(&right), b"");
    r.expect_code(0);
    assert!(r.stderr.contains("imported 2 secret(s)"), "{}", r.stderr);
    let out =
        dst.probe("team.x", &["A", "B"], json!({"action": "get", "names": ["A", "B"]}), &[]).expect_code(0).json();
    assert_eq!(out["A"]["sha256"], sha256("value-of-A"));
    assert_eq!(out["B"]["sha256"], sha256("value-of-B"));
}

/// A staged version (a rotation in progress) is stored but never read until
/// it is committed, and gone for good once discarded; one at a time; a
/// `set` waits for it; an edited staged row is never made current.
#[test]
fn a_staged_version_is_read_only_after_commit_and_erased_by_discard() {
    let env = Env::new();
    env.set_secret("", "SVC_PW", "old-password-1");
    let read = || get(&env, "SVC_PW")["sha256"].clone();
    let with_stdin = |args: &[&str], input: &[u8]| env.run_with(env.host().args(args), input);
    let r = with_stdin(&["secret", "rotate", "SVC_PW", "--staged"], b"staged-password-2\n");
    r.expect_code(0);
    assert!(r.stderr.contains("staged SVC_PW: version 2 in namespace (root)"), "{r:#?}");
    assert_eq!(read(), sha256("old-password-1"), "a staged version is not read");
    // A backup leaves a staged version out: restored, it would be current.
    let bundle = env.home().join("b.khb");
    let mut export = env.host();
    export.env("KEYHOLE_EXPORT_PASSPHRASE", "bundle-pass-9").args(["secret", "export", "--output"]).arg(&bundle);
    env.run_with(&mut export, b"").expect_code(0);
    let restored = Env::new();
    let mut import = restored.host();
    import.env("KEYHOLE_EXPORT_PASSPHRASE", "bundle-pass-9").args(["secret", "import"]).arg(&bundle);
    restored.run_with(&mut import, b"").expect_code(0);
    assert_eq!(
        get(&restored, "SVC_PW")["sha256"],
        sha256("old-password-1"),
        "the restore made a staged version current"
    );
    let r = env.run(&["secret", "describe", "SVC_PW", "--json"]);
    assert_eq!(r.json()["staged"]["version"], 2, "{r:#?}");
    assert_eq!(r.json()["current_version"], 1, "{r:#?}");
    let r = env.run(&["secret", "versions", "SVC_PW"]);
    assert!(r.stdout.contains("(staged") && !r.stdout.contains("staged-password-2"), "{r:#?}");
    // One at a time, and a set waits for it.
    let r = with_stdin(&["secret", "rotate", "SVC_PW", "--staged"], b"another\n");
    r.expect_code(2);
    assert!(r.stderr.contains("version 2 is already staged"), "{r:#?}");
    let r = with_stdin(&["secret", "set", "SVC_PW"], b"direct\n");
    r.expect_code(2);
    assert!(r.stderr.contains("version 2 is staged by a rotation"), "{r:#?}");
    // Commit: now it is read.
    let r = env.run(&["secret", "commit", "SVC_PW", "--staged"]);
    r.expect_code(0);
    assert!(r.stderr.contains("version 2 is current"), "{r:#?}");
    assert_eq!(read(), sha256("staged-password-2"));
    env.run(&["secret", "commit", "SVC_PW", "--staged"]).expect_code(2);
    // Discard: erased, the current one stays.
    with_stdin(&["secret", "rotate", "SVC_PW", "--staged"], b"never-used-3\n").expect_code(0);
    let r = env.run(&["secret", "discard", "SVC_PW", "--staged"]);
    r.expect_code(0);
    assert!(r.stderr.contains("staged version 3 in namespace (root) is erased"), "{r:#?}");
    assert_eq!(read(), sha256("staged-password-2"));
    assert!(env.run(&["secret", "describe", "SVC_PW", "--json"]).json()["staged"].is_null());
    // An edited staged row is never made current.
    with_stdin(&["secret", "rotate", "SVC_PW", "--staged"], b"fourth-4\n").expect_code(0);
    let db = rusqlite::Connection::open(env.db()).unwrap();
    let edited = db
        .execute(
            "UPDATE secret_versions SET expires_at = 1 WHERE version > (SELECT current_version FROM secrets WHERE name = 'SVC_PW')",
            [],
        )
        .unwrap();
    assert_eq!(edited, 1, "the staged row was edited");
    drop(db);
    let r = env.run(&["secret", "commit", "SVC_PW", "--staged"]);
    r.expect_code(5);
    assert!(r.stderr.contains("staged version"), "{r:#?}");
    assert_eq!(read(), sha256("staged-password-2"), "the edited version did not become current");
    env.run(&["secret", "discard", "SVC_PW", "--staged"]).expect_code(0);
    let r = env.run(&["audit", "list", "--secret", "SVC_PW", "--json"]);
    let actions: Vec<String> =
        r.json().as_array().unwrap().iter().map(|x| x["action"].as_str().unwrap().to_owned()).collect();
    for a in ["secret.stage", "secret.commit", "secret.discard"] {
        assert!(actions.contains(&a.to_owned()), "{a} missing from {actions:?}");
    }
    for v in ["staged-password-2", "never-used-3", "fourth-4"] {
        assert!(!r.stdout.contains(v));
    }
}

/// A binding is set, replaced and cleared; a cleared secret reaches a task
/// as its value again. Removing a secret that does not exist changes
/// nothing and is recorded as what it found.
#[test]
fn a_binding_is_set_replaced_and_cleared_and_removing_nothing_is_recorded() {
    let env = Env::new();
    env.set_secret("", "K", "value-of-K");
    let destinations = || env.run(&["secret", "describe", "K", "--json"]).expect_code(0).json()["destinations"].clone();
    let read = || env.probe("", &["K"], json!({"action": "get", "names": ["K"]}), &[]).expect_code(0).json();
    assert_eq!(destinations(), json!([]));
    let plain = read()["K"]["sha256"].clone();
    assert!(plain.is_string(), "{plain}");

    env.run(&["secret", "bind", "K", "--destination", "http://127.0.0.1:9"]).expect_code(0);
    assert_eq!(destinations(), json!(["http://127.0.0.1:9"]));
    assert_ne!(read()["K"]["sha256"], plain, "a bound secret reaches the task as a placeholder");
    let both = ["secret", "bind", "K", "--destination", "http://127.0.0.1:8", "--destination", "https://localhost"];
    env.run(&both).expect_code(0);
    assert_eq!(destinations(), json!(["http://127.0.0.1:8", "https://localhost:443"]));

    env.run(&["secret", "bind", "K", "--clear"]).expect_code(0);
    assert_eq!(destinations(), json!([]));
    assert_eq!(read()["K"]["sha256"], plain, "cleared: the value itself again");
    env.run(&["secret", "list"]).expect_code(0);

    let r = env.run(&["secret", "rm", "NOPE"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no secret NOPE"), "{r:#?}");
    let rm = env.run(&["audit", "list", "--action", "secret.rm", "--json"]).expect_code(0).json();
    let seen: Vec<(&str, &str)> = rm
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["secret"].as_str().unwrap(), x["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [("NOPE", "not-found")], "{rm}");
    env.run(&["audit", "verify"]).expect_code(0);
}
