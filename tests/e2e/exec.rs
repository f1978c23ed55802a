//! `host exec` and `host secret`: grants, lookups, namespaces, exit codes.

use crate::support::*;
use serde_json::json;

#[test]
fn granted_secret_is_returned_and_others_are_denied_or_missing() {
    let env = Env::new();
    env.set_secret("", "DB_PASSWORD", "correct horse battery staple");
    env.set_secret("", "OTHER", "not for this task");
    let r = env.probe(
        "",
        &["DB_PASSWORD", "MISSING"],
        json!({"action": "get", "names": ["DB_PASSWORD", "OTHER", "MISSING"]}),
        &[],
    );
    r.expect_code(0);
    let out = r.json();
    assert_eq!(out["DB_PASSWORD"]["sha256"], sha256("correct horse battery staple"));
    assert_eq!(out["OTHER"]["error"], "denied");
    assert_eq!(out["MISSING"]["error"], "not-found");
}

#[test]
fn nearer_namespace_wins_and_lookups_fall_back_to_parents() {
    let env = Env::new();
    env.set_secret("", "TOKEN", "root-token");
    env.set_secret("finance", "TOKEN", "finance-token");
    env.set_secret("finance", "ONLY_FINANCE", "f-only");
    env.set_secret("", "ONLY_ROOT", "r-only");
    let input = json!({"action": "get", "names": ["TOKEN", "ONLY_FINANCE", "ONLY_ROOT"]});
    let grants = ["TOKEN", "ONLY_FINANCE", "ONLY_ROOT"];

    let out = env.probe("finance.reporting", &grants, input.clone(), &[]).expect_code(0).json();
    assert_eq!(out["TOKEN"]["sha256"], sha256("finance-token"));
    assert_eq!(out["ONLY_FINANCE"]["sha256"], sha256("f-only"));
    assert_eq!(out["ONLY_ROOT"]["sha256"], sha256("r-only"));

    let out = env.probe("ops", &grants, input, &[]).expect_code(0).json();
    assert_eq!(out["TOKEN"]["sha256"], sha256("root-token"));
    assert_eq!(out["ONLY_FINANCE"]["error"], "not-found", "a sibling namespace must not be visible");
}

#[test]
fn hmac_sign_example_signs_with_the_granted_key() {
    let env = Env::new();
    env.set_secret("finance", "WEBHOOK_SIGNING_KEY", "demo-signing-key");
    let plugin = component(Plugin::HmacSign);
    let r = env.run_with(
        env.host().arg("exec").arg(&plugin).args([
            "-n",
            "finance.reporting",
            "-g",
            "WEBHOOK_SIGNING_KEY",
            "--input",
            r#"{"payload":"hello"}"#,
        ]),
        b"",
    );
    r.expect_code(0);
    // HMAC-SHA256("demo-signing-key", "hello"), computed independently.
    use hmac_check::expected;
    assert_eq!(r.json()["signature"], format!("sha256={}", expected("demo-signing-key", "hello")));
    assert!(r.stderr.contains("[hmac_sign] INFO signed 5 bytes"), "{}", r.stderr);

    let denied = env.run_with(env.host().arg("exec").arg(&plugin).args(["--input", r#"{"payload":"x"}"#]), b"");
    denied.expect_code(1);
    assert!(denied.stderr.contains("secret not granted to this task"), "{}", denied.stderr);
}

mod hmac_check {
    use sha2::{Digest, Sha256};
    /// RFC 2104 HMAC over SHA-256, written out so the test does not trust the plugin's crate.
    pub fn expected(key: &str, msg: &str) -> String {
        let mut k = [0u8; 64];
        k[..key.len()].copy_from_slice(key.as_bytes());
        let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
        let inner = Sha256::new().chain_update(pad(0x36)).chain_update(msg).finalize();
        hex::encode(Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize())
    }
}

#[test]
fn context_reports_namespace_task_and_a_fresh_execution_id() {
    let env = Env::new();
    let a = env.probe("a.b", &[], json!({"action": "context"}), &[]).expect_code(0).json();
    let b = env.probe("a.b", &[], json!({"action": "context"}), &[]).expect_code(0).json();
    assert_eq!(a["namespace"], "a.b");
    assert_eq!(a["task"], "probe");
    assert_eq!(a["flow"], "probe");
    assert_ne!(a["execution_id"], b["execution_id"]);
}

#[test]
fn exit_codes_distinguish_task_error_usage_and_plugin_failure() {
    let env = Env::new();
    let r = env.probe("", &[], json!({"action": "fail", "message": "upstream said no"}), &[]);
    r.expect_code(1);
    assert!(r.stderr.contains("task failed: upstream said no"), "{}", r.stderr);
    assert!(r.stdout.is_empty());

    let r = env.run_with(env.host().arg("exec").arg(component(Plugin::Probe)).args(["--input", "{not json"]), b"");
    r.expect_code(2);
    assert!(r.stderr.contains("the input from --input is not a JSON document"), "{}", r.stderr);

    // An input with no end (a device, a producer that never stops) is
    // refused at the limit instead of filling memory.
    #[cfg(target_os = "linux")]
    {
        let r =
            env.run_with(env.host().arg("exec").arg(component(Plugin::Probe)).args(["--input-file", "/dev/zero"]), b"");
        r.expect_code(2);
        let expect = "cannot read input file /dev/zero: it is larger than keyhole reads: the limit is 16777216 bytes";
        assert!(r.stderr.contains(expect), "{}", r.stderr);
    }
    let endless = vec![b' '; (16 << 20) + 1];
    let r = env.run_with(env.host().arg("exec").arg(component(Plugin::Probe)).args(["--input-file", "-"]), &endless);
    r.expect_code(2);
    assert!(r.stderr.contains("cannot read the input from stdin: it is larger than keyhole reads"), "{}", r.stderr);

    let r = env.run(&["exec", "/nonexistent/plugin.wasm"]);
    r.expect_code(2);
    assert!(
        r.stderr
            .starts_with("error: /nonexistent/plugin.wasm: task plugin: cannot read plugin /nonexistent/plugin.wasm"),
        "{}",
        r.stderr
    );

    let junk = env.home().join("junk.wasm");
    std::fs::write(&junk, b"definitely not wasm").unwrap();
    let r = env.run_with(env.host().arg("exec").arg(&junk), b"");
    r.expect_code(2);
    assert!(r.stderr.contains("is not a valid WebAssembly component or module"), "{}", r.stderr);

    let r = env.run(&["exec", "x.wasm", "--grant", "bad name"]);
    r.expect_code(2);

    let r = env.probe("", &[], json!({"action": "panic", "message": "boom"}), &[]);
    r.expect_code(3);
}

#[test]
fn secret_cli_never_prints_values() {
    let env = Env::new();
    env.set_secret("team.a", "API_KEY", "sk_live_value_never_shown");
    let r = env.run(&["secret", "list"]);
    r.expect_code(0);
    assert!(r.stdout.contains("team.a") && r.stdout.contains("API_KEY"), "{}", r.stdout);
    let json: serde_json::Value = serde_json::from_str(&env.run(&["secret", "list", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["name"], "API_KEY");
    assert_eq!(json[0]["version"], 1);
    env.set_secret("team.a", "API_KEY", "second");
    let json: serde_json::Value = serde_json::from_str(&env.run(&["secret", "list", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["version"], 2);
    for r in [env.run(&["secret", "list"]), env.run(&["secret", "list", "--json"])] {
        assert!(!r.all_output().contains("sk_live_value_never_shown"));
    }
    // The database holds no plaintext.
    let raw = std::fs::read(env.db()).unwrap();
    let wal = std::fs::read(env.home().join("keyhole.db-wal")).unwrap_or_default();
    for bytes in [raw, wal] {
        assert!(!bytes.windows(6).any(|w| w == b"second"), "plaintext found in the database files");
    }
    env.run(&["secret", "rm", "API_KEY", "-n", "team.a"]).expect_code(0);
    let r = env.run(&["secret", "rm", "API_KEY", "-n", "team.a"]);
    r.expect_code(2);
    assert!(r.stderr.contains("no secret API_KEY in namespace team.a"), "{}", r.stderr);
}

#[test]
fn secret_set_refuses_empty_values_and_reads_files() {
    let env = Env::new();
    let r = env.run_with(env.host().args(["secret", "set", "EMPTY"]), b"\n");
    r.expect_code(2);
    assert!(r.stderr.contains("the secret value is empty"), "{}", r.stderr);
    let f = env.home().join("value.txt");
    std::fs::write(&f, "from-a-file\n").unwrap();
    env.run_with(env.host().args(["secret", "set", "FROM_FILE", "--from-file"]).arg(&f), b"").expect_code(0);
    let out =
        env.probe("", &["FROM_FILE"], json!({"action": "get", "names": ["FROM_FILE"]}), &[]).expect_code(0).json();
    assert_eq!(out["FROM_FILE"]["sha256"], sha256("from-a-file"));

    // Large values pass (100 KiB on stdin, read in many pieces); one past
    // the limit, or a source with no end, is refused without storing.
    let large = "v".repeat(100 << 10);
    env.run_with(env.host().args(["secret", "set", "LARGE"]), large.as_bytes()).expect_code(0);
    let out = env.probe("", &["LARGE"], json!({"action": "get", "names": ["LARGE"]}), &[]).expect_code(0).json();
    assert_eq!(out["LARGE"]["sha256"], sha256(&large));
    let too_large = vec![b'v'; (1 << 20) + 1];
    let r = env.run_with(env.host().args(["secret", "set", "HUGE"]), &too_large);
    r.expect_code(2);
    assert!(r.stderr.contains("the secret value is larger than 1048576 bytes"), "{}", r.stderr);
    #[cfg(target_os = "linux")]
    {
        let r = env.run_with(env.host().args(["secret", "set", "ZEROS", "--from-file", "/dev/zero"]), b"");
        r.expect_code(2);
        assert!(
            r.stderr.contains("cannot read secret value from /dev/zero: the secret value is larger"),
            "{}",
            r.stderr
        );
    }
    let listed = env.run(&["secret", "list"]);
    assert!(!listed.stdout.contains("HUGE") && !listed.stdout.contains("ZEROS"), "{}", listed.stdout);
}

#[test]
fn imports_no_flow_grants_are_said_once_with_v_and_not_on_every_run() {
    let env = Env::new();
    let plugin = component(Plugin::Probe);
    let input = r#"{"action":"digest","text":"x"}"#;
    let quiet = env.run_with(env.host().arg("exec").arg(&plugin).args(["--input", input]), b"");
    quiet.expect_code(0);
    assert!(!quiet.stderr.contains("wasi:sockets"), "no noise on a plain run: {}", quiet.stderr);
    let verbose = env.run_with(env.host().arg("-v").arg("exec").arg(&plugin).args(["--input", input]), b"");
    verbose.expect_code(0);
    let lines: Vec<&str> = verbose.stderr.lines().filter(|l| l.contains("wasi:sockets")).collect();
    assert_eq!(lines.len(), 1, "one line for the whole capability: {lines:?}");
    assert!(lines[0].contains("wasi:sockets/tcp") && lines[0].contains("will be refused"), "{lines:?}");
}
