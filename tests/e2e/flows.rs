//! Flows: least privilege per task, outputs carried forward, validation that
//! names where, execution records.

use crate::support::*;
use serde_json::Value;
use std::path::PathBuf;

/// Writes a flow file into the test's data directory; `{probe}` etc. are
/// replaced by the built plugins' paths.
fn flow_file(env: &Env, name: &str, yaml: &str) -> PathBuf {
    let text = yaml
        .replace("{probe}", component(Plugin::Probe).to_str().unwrap())
        .replace("{sign}", component(Plugin::HmacSign).to_str().unwrap())
        .replace("{notify}", component(Plugin::WebhookRequest).to_str().unwrap());
    let p = env.home().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn run(env: &Env, flow: &PathBuf, extra: &[&str]) -> Run {
    env.run_with(env.host().arg("run").arg(flow).arg("--json").args(extra), b"")
}

#[test]
fn each_task_reads_only_its_own_grants() {
    let env = Env::new();
    env.set_secret("", "A", "value-a");
    env.set_secret("", "B", "value-b");
    let flow = flow_file(
        &env,
        "grants.yaml",
        "id: grants\ntasks:\n  - id: first\n    plugin: {probe}\n    secrets: [A]\n    input: {action: get, names: [A, B]}\n  \
         - id: second\n    plugin: {probe}\n    secrets: [B]\n    input: {action: get, names: [A, B]}\n",
    );
    let rec = run(&env, &flow, &[]).expect_code(0).json();
    let first = &rec["tasks"][0]["output"];
    let second = &rec["tasks"][1]["output"];
    assert_eq!(first["A"]["sha256"], sha256("value-a"));
    assert_eq!(first["B"]["error"], "denied");
    assert_eq!(second["A"]["error"], "denied");
    assert_eq!(second["B"]["sha256"], sha256("value-b"));
}

#[test]
fn a_pinned_digest_mismatch_is_refused_before_anything_runs() {
    let env = Env::new();
    let flow = flow_file(
        &env,
        "pinned.yaml",
        &format!(
            "id: pinned\ntasks:\n  - id: first\n    plugin: {{probe}}\n    input: {{action: print, text: first-ran}}\n  \
             - id: second\n    plugin: {{probe}}\n    sha256: {}\n",
            "ab".repeat(32)
        ),
    );
    let r = run(&env, &flow, &[]);
    r.expect_code(2);
    assert!(r.stderr.contains("task second") && r.stderr.contains("but the flow pins abab"), "{}", r.stderr);
    assert!(!r.stderr.contains("first-ran"), "no task may run: {}", r.stderr);
    // The right pin runs.
    let digest = sha256_file(&component(Plugin::Probe));
    let good = flow_file(
        &env,
        "good.yaml",
        &format!(
            "id: good\ntasks:\n  - id: t\n    plugin: {{probe}}\n    sha256: {digest}\n    input: {{action: context}}\n"
        ),
    );
    run(&env, &good, &[]).expect_code(0);
}

fn sha256_file(p: &PathBuf) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn a_failing_task_stops_the_flow_and_the_record_says_so() {
    let env = Env::new();
    let flow = flow_file(
        &env,
        "fail.yaml",
        "id: failing\ntasks:\n  - id: ok\n    plugin: {probe}\n    input: {action: context}\n  \
         - id: broken\n    plugin: {probe}\n    input: {action: fail, message: upstream is down}\n  \
         - id: never\n    plugin: {probe}\n    input: {action: print, text: never-ran}\n",
    );
    let r = run(&env, &flow, &[]);
    r.expect_code(1);
    assert!(r.stderr.contains("flow failing failed at task broken: task failed: upstream is down"), "{}", r.stderr);
    assert!(!r.stderr.contains("never-ran"));
    let rec = r.json();
    let statuses: Vec<&str> = rec["tasks"].as_array().unwrap().iter().map(|t| t["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["succeeded", "failed", "skipped"]);
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["tasks"][1]["error"], "task failed: upstream is down");
    let shown = env.run(&["executions", "show", rec["id"].as_str().unwrap()]);
    assert!(shown.stdout.contains("failed") && shown.stdout.contains("upstream is down"), "{}", shown.stdout);

    // A trap is exit code 3.
    let trap = flow_file(
        &env,
        "trap.yaml",
        "id: trap\ntasks:\n  - id: boom\n    plugin: {probe}\n    input: {action: panic, message: bad}\n",
    );
    run(&env, &trap, &[]).expect_code(3);
}

/// A hostile plugin's error text reaches the operator's terminal in `host
/// run`'s progress lines, its summary, the final error line and `executions
/// show`. Everywhere it is shown escaped: it can neither rewrite what is on
/// the screen (ESC, CR) nor add a line that looks like the host's own.
#[test]
fn a_plugins_error_text_cannot_drive_the_terminal_or_forge_a_line() {
    let env = Env::new();
    let flow = flow_file(
        &env,
        "esc.yaml",
        "id: esc\ntasks:\n  - id: t\n    plugin: {probe}\n    \
         input: {action: fail, message: \"bad\\e[2K\\rall good\\n[esc] task t succeeded\\n  succeeded  t\"}\n",
    );
    let r = env.run(&["run", flow.to_str().unwrap()]);
    r.expect_code(1);
    let id = r.stdout.split_whitespace().nth(1).expect("the summary names the execution").to_owned();
    let shown = env.run(&["executions", "show", &id]);
    shown.expect_code(0);
    for (what, out) in [("run stdout", &r.stdout), ("run stderr", &r.stderr), ("executions show", &shown.stdout)] {
        assert!(!out.contains('\x1b') && !out.contains('\r'), "{what}: {out:?}");
        assert!(out.contains("bad^[[2K^Mall good^J[esc] task t succeeded^J  succeeded  t"), "{what}: {out}");
        let forged = out.lines().filter(|l| l.starts_with("[esc] task t succeeded") || l.starts_with("  succeeded"));
        assert_eq!(forged.count(), 0, "{what}: {out}");
    }
}

#[test]
fn validation_names_file_line_and_column_or_the_task() {
    let env = Env::new();
    let check = |name: &str, yaml: &str, expect: &[&str]| {
        let f = flow_file(&env, name, yaml);
        let r = env.run_with(env.host().arg("validate").arg(&f), b"");
        r.expect_code(2);
        for e in expect {
            assert!(r.stdout.contains(e), "{name}: expected {e:?} in {}", r.stdout);
        }
        // `run` refuses the same file with the same findings, each on a
        // line of its own as `validate` shows it.
        let shown: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("error: ")).collect();
        let r = run(&env, &f, &[]);
        r.expect_code(2);
        assert!(r.stderr.contains(expect[0]), "{name}: {}", r.stderr);
        for line in shown {
            assert!(r.stderr.lines().any(|l| l == line), "{name}: {line:?} not a line of {}", r.stderr);
        }
        assert!(!r.stderr.contains("error: error:") && !r.stderr.contains("^J"), "{name}: {}", r.stderr);
    };
    check(
        "unknown.yaml",
        "id: x\ntasks:\n  - id: a\n    plugin: {probe}\n    secrets: [A]\n    limts: {}\n",
        &["unknown.yaml:6:5: tasks[0]: unknown field `limts`"],
    );
    check(
        "type.yaml",
        "id: x\ntasks:\n  - id: a\n    plugin: {probe}\n    secrets: 7\n",
        &["type.yaml:5:14", "invalid type"],
    );
    check(
        "dup.yaml",
        "id: x\ntasks:\n  - {id: a, plugin: {probe}}\n  - {id: a, plugin: {probe}}\n",
        &["dup.yaml: task a: duplicate task id"],
    );
    check(
        "ref.yaml",
        "id: x\ntasks:\n  - {id: a, plugin: {probe}, input: {x: '{{ outputs.b.y }}'}}\n  - {id: b, plugin: {probe}}\n",
        &["ref.yaml: task a: input.x: `outputs.b` refers to a task that does not run before this one"],
    );
    check(
        "missing.yaml",
        "id: x\ntasks:\n  - {id: a, plugin: nope.wasm}\n  - {id: b, plugin: gone.wasm}\n",
        &["missing.yaml: task a: cannot read plugin", "missing.yaml: task b: cannot read plugin"],
    );
    check(
        "secret.yaml",
        "id: x\ntasks:\n  - {id: a, plugin: {probe}, input: {k: \"{{ secret('DB_PASSWORD') }}\"}}\n",
        &["secret.yaml: task a: input.k", "secrets: [NAME]", "keyhole_guest::secrets::get"],
    );
}

#[test]
fn validation_warns_about_missing_secrets_and_network_imports() {
    let env = Env::new();
    env.set_secret("team", "PRESENT", "x");
    let f = flow_file(
        &env,
        "warn.yaml",
        "id: w\nnamespace: team.a\ntasks:\n  - {id: a, plugin: {probe}, secrets: [PRESENT, ABSENT]}\n",
    );
    let r = env.run_with(env.host().arg("validate").arg(&f), b"");
    r.expect_code(0);
    assert!(
        r.stdout.contains("warning: ") && r.stdout.contains("secret ABSENT is granted but exists in no namespace"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("secret PRESENT"), "{}", r.stdout);
    assert!(
        r.stdout.contains("note: ") && r.stdout.contains("imports wasi:sockets/"),
        "the probe opens sockets: {}",
        r.stdout
    );
    assert!(r.stdout.contains("is a keyhole task (exports run"), "validate names the plugin's shape: {}", r.stdout);
    assert!(r.stdout.contains("is valid (1 warning(s))"), "notes are not warnings: {}", r.stdout);
    let json: Vec<Value> =
        serde_json::from_str(&env.run_with(env.host().args(["validate", "--json"]).arg(&f), b"").stdout).unwrap();
    assert!(json.iter().all(|d| d["severity"] == "warning" || d["severity"] == "note"), "{json:?}");
    assert_eq!(json.iter().filter(|d| d["severity"] == "warning").count(), 1, "{json:?}");
}

#[test]
fn hostile_flow_files_get_errors_not_crashes_or_hangs() {
    let env = Env::new();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "deep.yaml",
            format!(
                "id: x\ntasks:\n  - id: a\n    plugin: a.wasm\n    input: {}{}\n",
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
            .into_bytes(),
            "deep.yaml:5:76: brackets are nested deeper than 64 levels",
        ),
        ("huge.yaml", vec![b'#'; 2 << 20], "the limit is"),
        ("utf8.yaml", b"id: x\ntasks:\n  - id: \xff\xfe\n".to_vec(), "utf8.yaml:3:9: the flow file is not valid UTF-8"),
        (
            "bomb.yaml",
            {
                let mut s = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
                for (i, c) in "bcdefghijk".chars().enumerate() {
                    let prev = (b'a' + i as u8) as char;
                    s.push_str(&format!("{c}: &{c} [{}]\n", vec![format!("*{prev}"); 10].join(",")));
                }
                s.push_str("id: x\ntasks: []\n");
                s.into_bytes()
            },
            "error:",
        ),
    ];
    for (name, bytes, expect) in cases {
        let p = env.home().join(name);
        std::fs::write(&p, bytes).unwrap();
        let started = std::time::Instant::now();
        let r = env.run_with(env.host().arg("validate").arg(&p), b"");
        r.expect_code(2);
        assert!(r.all_output().contains(expect), "{name}: {}", r.all_output());
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{name} took {:?}", started.elapsed());
    }
    // A device has no end: it is refused at the limit, not read until the
    // host runs out of memory.
    #[cfg(target_os = "linux")]
    for command in ["validate", "run"] {
        let r = env.run_with(env.host().args([command, "/dev/zero"]), b"");
        r.expect_code(2);
        let expect =
            "/dev/zero: cannot read the flow file: it is larger than keyhole reads: the limit is 1048576 bytes";
        assert!(r.all_output().contains(expect), "{command}: {}", r.all_output());
    }
}

#[test]
fn the_schema_is_json_schema_for_the_format() {
    let env = Env::new();
    let r = env.run(&["flow", "schema"]);
    let schema = r.expect_code(0).json();
    assert_eq!(schema["title"], "keyhole flow");
    assert_eq!(schema["additionalProperties"], false);
    assert!(schema["properties"]["tasks"].is_object());
    let required: Vec<&str> = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(required.contains(&"id") && required.contains(&"tasks"), "{required:?}");
}

#[test]
fn a_leaked_secret_is_masked_in_outputs_passed_on_and_in_the_record() {
    let env = Env::new();
    env.set_secret("", "PW", "flow-secret-value-1234");
    let flow = flow_file(
        &env,
        "leak.yaml",
        "id: leak\ntasks:\n  - {id: leaker, plugin: {probe}, secrets: [PW], input: {action: leak, name: PW}}\n  \
         - {id: reader, plugin: {probe}, input: {action: print, text: 'got {{ outputs.leaker.value }}'}}\n",
    );
    let r = run(&env, &flow, &[]);
    r.expect_code(0);
    let rec = r.json();
    assert_eq!(rec["tasks"][0]["output"]["value"], "***");
    assert_eq!(rec["tasks"][1]["output"]["echo"], "got ***", "the next task must receive the masked text");
    assert!(!r.all_output().contains("flow-secret-value-1234"));
    let shown = env.run(&["executions", "show", rec["id"].as_str().unwrap(), "--json"]);
    assert!(!shown.stdout.contains("flow-secret-value-1234"));
    for file in ["keyhole.db", "keyhole.db-wal"] {
        let bytes = std::fs::read(env.home().join(file)).unwrap_or_default();
        assert!(!bytes.windows(22).any(|w| w == b"flow-secret-value-1234"), "value stored in {file}");
    }
}
