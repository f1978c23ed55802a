//! Plugin authors: `host plugin new` → `host plugin build` → `host exec`
//! in Rust, Python and JavaScript; standard WASI programs (a `main`) and
//! `wasi:config/store` as tasks; `plugin inspect` and `plugin compile`.
//!
//! The Python and JavaScript tests need componentize-py (PyPI) and
//! componentize-js (npm), which scripts/test.sh installs. Without them they
//! fail, unless KEYHOLE_ALLOW_NO_COMPONENTIZE=1 is set, in which case they
//! say loudly that they were skipped.

use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

const VALUE: &str = "greeting-token-7f3a";

fn audit(env: &Env, action: &str) -> Vec<Value> {
    let r = env.run(&["audit", "list", "--json", "--action", action]);
    r.expect_code(0);
    serde_json::from_str(&r.stdout).unwrap()
}

/// `host plugin new NAME --lang LANG` in a fresh directory under the env.
fn new_project(env: &Env, name: &str, lang: &str) -> PathBuf {
    let dir = env.home().join("projects").join(name);
    let r = env.run(&["plugin", "new", name, "--lang", lang, "--dir", dir.to_str().unwrap()]);
    r.expect_code(0);
    assert!(r.stdout.contains("host plugin build"), "new says what to do next: {}", r.stdout);
    dir
}

/// `host plugin build` in `dir`; the last line of stdout is the component.
fn build(env: &Env, dir: &Path, path_prefix: Option<&Path>) -> PathBuf {
    let mut cmd = env.host();
    cmd.args(["plugin", "build"]).current_dir(dir);
    // Rust: reuse the test plugins' target directory (its wasm dependencies are built).
    cmd.env("CARGO_TARGET_DIR", workspace().join("target/plugins")).env("CARGO_NET_OFFLINE", "true");
    if let Some(p) = path_prefix {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", p.display()));
    }
    let r = env.run_with(&mut cmd, b"");
    r.expect_code(0);
    let last = r.stdout.lines().last().expect("build prints the component's path");
    let wasm = PathBuf::from(last);
    assert!(wasm.is_absolute() && wasm.is_file(), "the last line is the built component: {r:#?}");
    wasm
}

/// The task runs with the grant and is denied (and audited) without it.
fn runs_with_grant_and_is_denied_without(env: &Env, wasm: &Path, task: &str) {
    env.set_secret("", "GREETING_TOKEN", VALUE);
    let ok = env.run(&["exec", wasm.to_str().unwrap(), "--grant", "GREETING_TOKEN", "--input", r#"{"name":"ada"}"#]);
    ok.expect_code(0);
    assert_eq!(ok.json()["greeting"], "hello, ada", "{ok:#?}");
    assert_eq!(ok.json()["token_length"], VALUE.len(), "{ok:#?}");
    assert!(ok.stderr.contains(&format!("[{task}] INFO greeting ada")), "the SDK's log reaches the operator: {ok:#?}");
    assert!(!ok.all_output().contains(VALUE));

    let denied = env.run(&["exec", wasm.to_str().unwrap(), "--input", r#"{"name":"ada"}"#]);
    denied.expect_code(1);
    assert!(denied.stderr.contains("GREETING_TOKEN") || denied.stderr.contains("not granted"), "{denied:#?}");
    let reads = audit(env, "secret.read");
    assert!(reads.iter().any(|r| r["outcome"] == "granted" && r["task"] == task), "{reads:#?}");
    assert!(reads.iter().any(|r| r["outcome"] == "denied" && r["task"] == task), "{reads:#?}");
}

fn tool_missing(what: &str, install: &str) -> bool {
    if std::env::var_os("KEYHOLE_ALLOW_NO_COMPONENTIZE").is_some() {
        eprintln!("\n*** SKIPPED: {what} is not installed; this plugin-author test did not run ***\n");
        return true;
    }
    panic!(
        "{what} is not installed: `{install}` (scripts/test.sh does), or set KEYHOLE_ALLOW_NO_COMPONENTIZE=1 to skip loudly"
    );
}

/// Where scripts/test.sh installs componentize-js (npm install --prefix),
/// or `None` when it is missing and skipping is allowed.
fn js_tools() -> Option<PathBuf> {
    let tools = workspace().join("target/js-tools/node_modules/.bin");
    if !tools.join("componentize-js").is_file()
        && tool_missing(
            "componentize-js",
            "npm install --prefix target/js-tools @bytecodealliance/componentize-js@0.23.0",
        )
    {
        return None;
    }
    Some(tools)
}

fn on_path(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The Python SDK's `rotation` reaches the host: a generated value is
/// staged behind a placeholder, a commit before the service took it is
/// refused (a `RotationError` of kind `refused`), and the host erases the
/// unsent value when the task ends.
#[test]
fn a_python_plugin_rotates_through_the_sdk() {
    if !on_path("componentize-py") && tool_missing("componentize-py", "pip install componentize-py==0.25.1") {
        return;
    }
    let env = Env::new();
    let dir = new_project(&env, "pyrotate", "python");
    std::fs::write(
        dir.join("app.py"),
        "from keyhole import task, rotation, RotationError\n\
         \n\
         @task\n\
         def run(input):\n\
         \x20   staged = rotation.generate('SVC_PASSWORD', 24, 'hex')\n\
         \x20   try:\n\
         \x20       rotation.commit('SVC_PASSWORD')\n\
         \x20       refused = None\n\
         \x20   except RotationError as e:\n\
         \x20       refused = [e.kind, e.detail]\n\
         \x20   try:\n\
         \x20       rotation.generate('OTHER', 24)\n\
         \x20   except RotationError as e:\n\
         \x20       other = e.kind\n\
         \x20   return {'next': staged.next[:4], 'current': staged.current[:4], 'refused': refused, 'other': other}\n",
    )
    .unwrap();
    let wasm = build(&env, &dir, None);
    env.run_with(
        env.host().args(["secret", "set", "SVC_PASSWORD", "--destination", "https://svc.example.com"]),
        b"old-pw-1",
    )
    .expect_code(0);
    let r = env.run(&["exec", wasm.to_str().unwrap(), "--rotate", "SVC_PASSWORD"]);
    r.expect_code(0);
    let out = r.json();
    assert_eq!(
        (out["next"].as_str(), out["current"].as_str(), out["other"].as_str()),
        (Some("khp_"), Some("khp_"), Some("denied")),
        "{out}"
    );
    assert_eq!(out["refused"][0], "refused", "{out}");
    assert!(out["refused"][1].as_str().unwrap().contains("no request has carried it yet"), "{out}");
    let d = env.run(&["secret", "describe", "SVC_PASSWORD", "--json"]).expect_code(0).json();
    assert_eq!((d["current_version"].as_u64(), d["staged"].is_null()), (Some(1), true), "erased at the end: {d}");
    let stages = audit(&env, "secret.stage");
    assert!(stages.iter().any(|s| s["outcome"] == "ok" && s["task"] == "pyrotate"), "{stages:#?}");
    assert_eq!(audit(&env, "secret.discard").len(), 1);
}

/// The JavaScript SDK's `rotation` with `fetch()`: the new value goes to
/// the service (a loopback server) only as the host substitutes it, and the
/// commit makes that very value current.
#[test]
fn a_javascript_plugin_rotates_a_password_with_fetch() {
    let Some(tools) = js_tools() else { return };
    let env = Env::new();
    let server = crate::network::Server::start();
    let dir = new_project(&env, "jsrotate", "js");
    std::fs::write(
        dir.join("app.js"),
        "import { rotation, task } from './keyhole/index.js';\n\
         export const run = task(async (input) => {\n\
           const staged = rotation.generate('SVC_PASSWORD', 20);\n\
           const r = await fetch(input.url, { method: 'POST', body: JSON.stringify({ password: staged.next }) });\n\
           const echoed = await r.text();\n\
           const version = r.ok ? rotation.commit('SVC_PASSWORD') : rotation.discard('SVC_PASSWORD');\n\
           return { status: r.status, version, held: staged.next.slice(0, 4), echoed };\n\
         });\n",
    )
    .unwrap();
    let wasm = build(&env, &dir, Some(&tools));
    let origin = server.origin();
    env.run_with(env.host().args(["secret", "set", "SVC_PASSWORD", "--destination", &origin]), b"old-pw-1")
        .expect_code(0);
    let mut cmd = env.host();
    cmd.env("KEYHOLE_COMPILER", "winch").arg("exec").arg(&wasm).args(["--rotate", "SVC_PASSWORD"]);
    cmd.args(["--allow-outbound", &origin, "--input", &json!({ "url": server.url("/echo") }).to_string()]);
    let r = env.run_with(&mut cmd, b"");
    r.expect_code(0);
    let out = r.json();
    assert_eq!(
        (out["status"].as_u64(), out["version"].as_u64(), out["held"].as_str()),
        (Some(200), Some(2), Some("khp_")),
        "{out}"
    );
    let got = server.received();
    let sent: Value = serde_json::from_slice(&got[0].body).unwrap();
    let password = sent["password"].as_str().unwrap().to_owned();
    assert!(password.len() == 20 && password.chars().all(|c| c.is_ascii_alphanumeric()), "{password}");
    assert!(!out["echoed"].as_str().unwrap().contains(&password), "the echo reached the task unscrubbed: {out}");
    assert!(!r.all_output().contains(&password));
    // What keyhole now holds is what the service got: a bound read sends it.
    let mut cmd = env.host();
    let input = json!({"action": "http", "secret": "SVC_PASSWORD", "requests": [{"url": server.url("/x"), "headers": {"x-pw": "{secret}"}}]});
    cmd.arg("exec").arg(component(Plugin::Probe)).args(["--grant", "SVC_PASSWORD", "--allow-outbound", &origin]);
    cmd.args(["--input", &input.to_string()]);
    env.run_with(&mut cmd, b"").expect_code(0);
    assert_eq!(server.received()[1].header("x-pw"), Some(password.as_str()));
}

#[test]
fn rust_plugin_from_new_to_exec() {
    let env = Env::new();
    let dir = new_project(&env, "greeter", "rust");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("keyhole-guest = { path = "), "the SDK this host was built from: {manifest}");
    assert!(!manifest.contains("serde"), "one dependency: {manifest}");
    // Its own test runs natively, against the SDK's fake host.
    let t = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--release", "--quiet"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", workspace().join("target"))
        .env("CARGO_NET_OFFLINE", "true")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&t.stdout);
    assert!(t.status.success() && out.contains("2 passed"), "{out}{}", String::from_utf8_lossy(&t.stderr));

    let wasm = build(&env, &dir, None);
    assert!(wasm.ends_with("wasm32-wasip2/release/greeter.wasm"), "{}", wasm.display());
    runs_with_grant_and_is_denied_without(&env, &wasm, "greeter");
}

#[test]
fn python_plugin_from_new_to_exec() {
    if !on_path("componentize-py") && tool_missing("componentize-py", "pip install componentize-py==0.25.1") {
        return;
    }
    let env = Env::new();
    let dir = new_project(&env, "pygreet", "python");
    let t = Command::new("python3").args(["-m", "unittest"]).current_dir(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&t.stderr);
    assert!(t.status.success() && err.contains("Ran 2 tests"), "the template's own tests pass natively: {err}");
    let wasm = build(&env, &dir, None);
    assert_eq!(wasm, dir.canonicalize().unwrap().join("dist/pygreet.wasm"));
    runs_with_grant_and_is_denied_without(&env, &wasm, "pygreet");
}

#[test]
fn javascript_plugin_from_new_to_exec() {
    let Some(tools) = js_tools() else { return };
    let env = Env::new();
    let dir = new_project(&env, "jsgreet", "js");
    let t =
        Command::new("node").args(["--import", "./keyhole/testing.js", "--test"]).current_dir(&dir).output().unwrap();
    let out = String::from_utf8_lossy(&t.stdout);
    assert!(t.status.success() && out.contains("# pass 2"), "the template's own tests pass natively: {out}");
    let wasm = build(&env, &dir, Some(&tools));
    assert_eq!(wasm, dir.canonicalize().unwrap().join("dist/jsgreet.wasm"));
    // Built with fetch() (it imports wasi:http): linked, and refused at call time.
    let inspect = env.run(&["plugin", "inspect", wasm.to_str().unwrap()]);
    assert!(inspect.stdout.contains("wasi:http/outgoing-handler"), "{}", inspect.stdout);
    runs_with_grant_and_is_denied_without(&env, &wasm, "jsgreet");
}

/// The JavaScript SDK's task may be async, and `fetch()` goes out through
/// keyhole's outbound HTTP: to allowed destinations only, with a bound
/// token the plugin holds only a placeholder of.
#[test]
fn a_javascript_plugin_fetches_through_the_allow_list_with_a_bound_token() {
    let Some(tools) = js_tools() else { return };
    let env = Env::new();
    let server = crate::network::Server::start();
    let dir = new_project(&env, "fetcher", "js");
    std::fs::write(
        dir.join("app.js"),
        "import { secrets, task } from './keyhole/index.js';\n\
         export const run = task(async (input) => {\n\
           const token = secrets.get('API_TOKEN');\n\
           const r = await fetch(input.url, { headers: { authorization: `Bearer ${token}` } });\n\
           return { status: r.status, held: token.slice(0, 4) };\n\
         });\n",
    )
    .unwrap();
    let wasm = build(&env, &dir, Some(&tools));
    let token = "ghp_js-bound-token-3b9e";
    let r = env
        .run_with(env.host().args(["secret", "set", "API_TOKEN", "--destination", &server.origin()]), token.as_bytes());
    r.expect_code(0);
    let exec = |url: &str, allow: Option<&str>| {
        let mut cmd = env.host();
        // Winch: this test is about the network path, not the compiler.
        cmd.env("KEYHOLE_COMPILER", "winch").arg("exec").arg(&wasm);
        cmd.args(["--grant", "API_TOKEN", "--input", &json!({ "url": url }).to_string()]);
        if let Some(a) = allow {
            cmd.args(["--allow-outbound", a]);
        }
        env.run_with(&mut cmd, b"")
    };
    let ok = exec(&server.url("/hello"), Some(&server.origin()));
    ok.expect_code(0);
    assert_eq!(ok.json(), json!({ "status": 200, "held": "khp_" }), "the plugin holds a placeholder: {ok:#?}");
    let got = server.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("authorization"), Some(format!("Bearer {token}").as_str()), "injected by the host");

    let refused = exec(&server.url("/hello"), None);
    refused.expect_code(1);
    assert!(refused.stderr.contains("may not use the network"), "{refused:#?}");
    assert_eq!(server.received().len(), 1, "nothing left without an allow-list");
    assert!(!refused.all_output().contains(token) && !ok.all_output().contains(token));
}

#[test]
fn a_missing_toolchain_says_what_to_install() {
    let env = Env::new();
    let dir = new_project(&env, "nojs", "js");
    let mut cmd = env.host();
    cmd.args(["plugin", "build"]).current_dir(&dir).env("PATH", "/nonexistent");
    let r = env.run_with(&mut cmd, b"");
    r.expect_code(2);
    assert!(r.stderr.contains("componentize-js is not installed"), "{}", r.stderr);
    assert!(r.stderr.contains("npm install --save-dev @bytecodealliance/componentize-js"), "{}", r.stderr);

    let empty = env.home().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let r = env.run_with(env.host().args(["plugin", "build"]).current_dir(&empty), b"");
    r.expect_code(2);
    assert!(r.stderr.contains("not a plugin project") && r.stderr.contains("host plugin new"), "{}", r.stderr);

    let r = env.run(&["plugin", "new", "Bad_Name"]);
    r.expect_code(2);
    assert!(r.stderr.contains("not a project name"), "{}", r.stderr);
    let r = env.run(&["plugin", "new", "nojs", "--dir", dir.to_str().unwrap()]);
    r.expect_code(2);
    assert!(r.stderr.contains("already exists and is not empty"), "{}", r.stderr);
}

fn config_command(env: &Env, wasm: &Path, grants: &[&str], input: Value) -> Run {
    let mut cmd = env.host();
    cmd.arg("exec").arg(wasm).args(["--input", &input.to_string()]);
    for g in grants {
        cmd.args(["--grant", g]);
    }
    env.run_with(&mut cmd, b"")
}

#[test]
fn a_wasi_program_with_main_reads_wasi_config_under_grants_audit_and_masking() {
    let env = Env::new();
    env.set_secret("", "DB_URL", "postgres://db-secret-91c2");
    env.set_secret("", "OTHER", "other-secret-5d1e");
    for wasm in [component(Plugin::ConfigCommand), core_module(Plugin::ConfigCommand)] {
        for version in ["rc1", "draft"] {
            let input = json!({"version": version, "get": ["DB_URL", "OTHER"], "all": true, "stderr": "DB_URL"});
            let r = config_command(&env, &wasm, &["DB_URL"], input);
            r.expect_code(0);
            // stdout is the output; the value read is masked in it and on stderr.
            assert_eq!(
                r.json(),
                json!({"values": {"DB_URL": "***", "OTHER": null}, "all": [["DB_URL", "***"]]}),
                "{version}: {r:#?}"
            );
            assert!(r.stderr.contains("config DB_URL is Ok(Some(\"***\"))"), "stderr to the operator: {r:#?}");
            assert!(!r.all_output().contains("db-secret-91c2") && !r.all_output().contains("other-secret"));
        }
    }
    // A hostile program puts a value it read into a key: the request is
    // denied, and neither the answer nor the audit record shows the value.
    let smuggle = json!({"get": ["DB_URL", "postgres://db-secret-91c2"]});
    let r = config_command(&env, &component(Plugin::ConfigCommand), &["DB_URL"], smuggle);
    r.expect_code(0);
    assert_eq!(r.json(), json!({"values": {"DB_URL": "***", "***": null}}), "{r:#?}");
    let reads = audit(&env, "secret.read");
    assert!(
        reads.iter().any(|r| r["outcome"] == "denied" && r["reason"].as_str().unwrap_or("").contains("contains a secret value")),
        "{reads:#?}"
    );
    let granted = reads.iter().filter(|r| r["outcome"] == "granted" && r["secret"] == "DB_URL").count();
    // Per run: `stderr`, `get` and `get-all` each read it once; 4 runs,
    // then one `get` in the smuggling run.
    assert_eq!(granted, 13, "{reads:#?}");
    let denied = reads.iter().filter(|r| r["outcome"] == "denied" && r["secret"] == "OTHER").count();
    assert_eq!(denied, 4, "a key not granted is none, audited as denied: {reads:#?}");
    assert!(!serde_json::to_string(&reads).unwrap().contains("db-secret-91c2"));
    let r = env.run(&["audit", "verify"]);
    r.expect_code(0);
    // Revoked: `get` is an error that says so (not a silent none), and
    // `get-all` leaves it out.
    env.run(&["secret", "revoke", "DB_URL"]).expect_code(0);
    let r =
        config_command(&env, &component(Plugin::ConfigCommand), &["DB_URL"], json!({"get": ["DB_URL"], "all": true}));
    r.expect_code(0);
    assert_eq!(
        r.json(),
        json!({"values": {"DB_URL": {"error": "secret \"DB_URL\" was revoked"}}, "all": []}),
        "{r:#?}"
    );
}

#[test]
fn a_wasi_programs_stdout_exit_status_and_output_limit() {
    let env = Env::new();
    let wasm = component(Plugin::ConfigCommand);
    // Not JSON: the output is the text, as a string.
    let r = config_command(&env, &wasm, &[], json!({"text": "plain words"}));
    r.expect_code(0);
    assert_eq!(r.json(), json!("plain words"));
    // A failure status fails the task (exit code 1: the task's own error).
    let r = config_command(&env, &wasm, &[], json!({"exit": 3}));
    r.expect_code(1);
    assert!(r.stderr.contains("the program exited with status 1"), "{r:#?}");
    // More stdout than the output limit.
    let big = "x".repeat(5000);
    let mut cmd = env.host();
    cmd.arg("exec").arg(&wasm).args(["--max-output", "1000", "--input", &json!({"text": big}).to_string()]);
    let r = env.run_with(&mut cmd, b"");
    // A limit, like time and memory: exit code 3.
    r.expect_code(3);
    assert!(r.stderr.contains("wrote more than 1000 bytes to stdout, its output limit"), "{r:#?}");
}

#[test]
fn inspect_tells_kind_shape_digest_version_and_imports() {
    let env = Env::new();
    let hello = component(Plugin::Hello);
    let r = env.run(&["plugin", "inspect", hello.to_str().unwrap()]);
    r.expect_code(0);
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&hello).unwrap()));
    for want in [
        "kind     component",
        "keyhole task (exports run",
        "keyhole:task@0.2.0 (this host serves it)",
        &digest,
        "secrets       granted per secret",
        "wasi:cli/environment@0.2.6: empty: no environment variables",
    ] {
        assert!(r.stdout.contains(want), "missing {want:?} in:\n{}", r.stdout);
    }
    let probe = env.run(&["plugin", "inspect", component(Plugin::Probe).to_str().unwrap()]);
    assert!(probe.stdout.contains("sockets       linked, every call refused"), "{}", probe.stdout);
    assert!(probe.stdout.contains("http          only destinations the flow allows"), "{}", probe.stdout);
    let command = env.run(&["plugin", "inspect", "--json", core_module(Plugin::ConfigCommand).to_str().unwrap()]);
    command.expect_code(0);
    let j = command.json();
    assert_eq!(j["kind"], "core-module");
    assert_eq!(j["shape"], "command");
    assert!(j["imports"].as_array().unwrap().iter().any(|i| i["capability"] == "config"), "{j:#}");
    let text = env.run(&["plugin", "inspect", component(Plugin::ConfigCommand).to_str().unwrap()]);
    assert!(
        text.stdout.contains("WASI command (main: input JSON on stdin") && text.stdout.contains("wasi:config/store")
    );

    let junk = env.home().join("junk.wasm");
    std::fs::write(&junk, b"#!/bin/sh\n").unwrap();
    let r = env.run(&["plugin", "inspect", junk.to_str().unwrap()]);
    r.expect_code(2);
    assert!(r.stderr.contains("magic bytes"), "{}", r.stderr);
}

/// A plugin built against `keyhole:task@0.1.0` (before `rotation` came)
/// runs unchanged: its secret read, log line and context are served, and
/// masked, as ever.
#[test]
fn a_plugin_built_against_keyhole_task_0_1_0_runs_unchanged() {
    let env = Env::new();
    let legacy = component(Plugin::LegacyV010);
    let r = env.run(&["plugin", "inspect", legacy.to_str().unwrap()]);
    assert!(r.stdout.contains("keyhole:task@0.1.0 (this host serves it)"), "{}", r.stdout);
    assert!(!r.stdout.contains("rotation"), "{}", r.stdout);
    env.run_with(env.host().args(["secret", "set", "OLD_API_KEY"]), VALUE.as_bytes()).expect_code(0);
    let mut cmd = env.host();
    cmd.arg("exec").arg(&legacy).args(["--grant", "OLD_API_KEY", "--input", "\"OLD_API_KEY\""]);
    let r = env.run_with(&mut cmd, b"");
    r.expect_code(0);
    assert_eq!(r.json(), json!({"value": "***", "task": "legacy_v010", "wit": "0.1.0"}), "{r:#?}");
    assert!(r.stderr.contains("0.1.0 read ***") && !r.all_output().contains(VALUE), "{r:#?}");
    assert_eq!(audit(&env, "secret.read")[0]["outcome"], "granted");
    // And denied without the grant, as ever.
    let mut cmd = env.host();
    cmd.arg("exec").arg(&legacy).args(["--input", "\"OLD_API_KEY\""]);
    let r = env.run_with(&mut cmd, b"");
    assert!(r.code != 0 && r.stderr.contains("Denied"), "{r:#?}");
}

#[test]
fn validate_names_each_plugins_shape() {
    let env = Env::new();
    let flow = env.home().join("shapes.yaml");
    std::fs::write(
        &flow,
        format!(
            "id: shapes\ntasks:\n  - {{id: a, plugin: {}}}\n  - {{id: b, plugin: {}}}\n",
            component(Plugin::Hello).display(),
            component(Plugin::ConfigCommand).display()
        ),
    )
    .unwrap();
    let r = env.run(&["validate", flow.to_str().unwrap()]);
    r.expect_code(0);
    assert!(r.stdout.contains("task a: plugin") && r.stdout.contains("is a keyhole task"), "{}", r.stdout);
    assert!(r.stdout.contains("is a WASI command") && r.stdout.contains("wasi:config/store"), "{}", r.stdout);
}

#[test]
fn compile_fills_the_cache_so_the_first_run_loads_from_it() {
    let env = Env::new();
    let hello = component(Plugin::Hello);
    let r = env.run(&["plugin", "compile", hello.to_str().unwrap()]);
    r.expect_code(0);
    assert!(r.stdout.contains("compiled into the cache"), "{}", r.stdout);
    let r = env.run(&["plugin", "compile", hello.to_str().unwrap()]);
    assert!(r.stdout.contains("already in the cache"), "{}", r.stdout);
    env.set_secret("", "API_TOKEN", "x");
    let r = env.run(&["exec", hello.to_str().unwrap(), "--grant", "API_TOKEN", "--input", r#"{"name":"a"}"#, "-v"]);
    r.expect_code(0);
    assert!(r.stderr.contains("loaded from the compiled cache"), "{}", r.stderr);
}

#[test]
fn winch_compiles_its_own_cache_entries_and_keeps_the_sandbox() {
    let env = Env::new();
    let hello = component(Plugin::Hello);
    let r = env.run(&["plugin", "compile", hello.to_str().unwrap()]);
    assert!(r.stdout.contains("compiled into the cache"), "{}", r.stdout);
    // Cranelift's machine code is never loaded for Winch: its own entry.
    let r = env.run(&["--compiler", "winch", "plugin", "compile", hello.to_str().unwrap()]);
    assert!(r.stdout.contains("compiled into the cache"), "{}", r.stdout);
    let r = env.run(&["--compiler", "winch", "plugin", "compile", hello.to_str().unwrap()]);
    assert!(r.stdout.contains("already in the cache"), "{}", r.stdout);
    // The same limits hold for Winch code, chosen through the environment.
    let probe = component(Plugin::Probe);
    let mut cmd = env.host();
    cmd.env("KEYHOLE_COMPILER", "winch").arg("exec").arg(&probe).args([
        "--timeout",
        "1",
        "--input",
        r#"{"action":"loop"}"#,
    ]);
    let r = env.run_with(&mut cmd, b"");
    r.expect_code(3);
    assert!(r.stderr.contains("exceeded its time limit of 1s"), "{}", r.stderr);
    let r = env.run(&["--compiler", "fast", "plugin", "compile", hello.to_str().unwrap()]);
    r.expect_code(2);
    assert!(r.stderr.contains("use cranelift or winch"), "{}", r.stderr);
}
