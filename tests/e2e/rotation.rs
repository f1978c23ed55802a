//! Hands-off rotation against a real service: OpenBao, which has both kinds
//! of API. A `userpass` user's password is set by the caller
//! (host-generated: `POST /v1/auth/userpass/users/NAME/password`), and a
//! token is made by the service (service-generated: `POST
//! /v1/auth/token/create`, captured from `auth.client_token`). No task ever
//! holds the old or the new value; the test logs in with what it knows.

use crate::network::Server as Echo;
use crate::plugins::{Plugin, component, workspace};
use crate::support::*;
use crate::vault::{Bao, TOKEN, agent, bao};
use serde_json::{Value, json};
use std::io::BufRead;
use std::process::Stdio;

const OLD: &str = "old-svc-password-5d1c";

/// userpass on, user `svc` with password [`OLD`]; in keyhole's namespace
/// `ops`: the admin token and the service password, both bound to OpenBao.
fn setup(env: &Env, bao: &Bao) {
    let post = |path: &str, body: Value| {
        let r = agent().post(format!("{}{path}", bao.addr)).header("X-Vault-Token", TOKEN).send_json(body).unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    };
    post("/v1/sys/auth/userpass", json!({"type": "userpass"}));
    post("/v1/auth/userpass/users/svc", json!({"password": OLD, "token_policies": "default"}));
    for (name, value) in [("VAULT_ADMIN_TOKEN", TOKEN), ("SERVICE_PASSWORD", OLD)] {
        env.run_with(
            env.host().args(["secret", "set", name, "-n", "ops", "--destination", &bao.addr]),
            value.as_bytes(),
        )
        .expect_code(0);
    }
}

/// Whether `password` logs `svc` in.
fn logs_in(bao: &Bao, password: &str) -> bool {
    let r = agent()
        .post(format!("{}/v1/auth/userpass/login/svc", bao.addr))
        .send_json(json!({ "password": password }))
        .unwrap();
    r.status().as_u16() == 200
}

/// `host exec probe` in `ops` with the rotate action `input`.
fn rotate(env: &Env, input: Value, grants: &[&str], rotate: &[&str], allow: &str) -> Run {
    env.run_with(&mut probe_cmd(env, input, grants, rotate, allow), b"")
}

fn probe_cmd(env: &Env, input: Value, grants: &[&str], rotate: &[&str], allow: &str) -> std::process::Command {
    let mut cmd = env.host();
    cmd.arg("exec").arg(component(Plugin::Probe)).args(["-n", "ops", "--allow-outbound", allow]);
    cmd.args(["--input", &input.to_string()]);
    for g in grants {
        cmd.args(["--grant", g]);
    }
    for r in rotate {
        cmd.args(["--rotate", r]);
    }
    cmd
}

/// The request that sets svc's password to the staged value.
fn set_password(bao: &Bao) -> Value {
    json!({
        "method": "POST",
        "url": format!("{}/v1/auth/userpass/users/svc/password", bao.addr),
        "headers": { "x-vault-token": "{secret}" },
        "body": "{\"password\":\"{next}\"}",
    })
}

/// Whether a task logs svc in with SERVICE_PASSWORD (it holds a
/// placeholder): whether keyhole's current value is OpenBao's.
fn login_with_stored(env: &Env, bao: &Bao) -> bool {
    let input = json!({
        "read": ["SERVICE_PASSWORD"],
        "request": {
            "url": format!("{}/v1/auth/userpass/login/svc", bao.addr),
            "body": "{\"password\":\"{SERVICE_PASSWORD}\"}",
        },
    });
    let mut cmd = env.host();
    cmd.arg("exec").arg(component(Plugin::RotateHttp)).args(["-n", "ops", "--grant", "SERVICE_PASSWORD"]);
    cmd.args(["--allow-outbound", &bao.addr, "--input", &input.to_string()]);
    let r = env.run_with(&mut cmd, b"");
    assert!(r.code == 0 || r.stderr.contains("the service answered 400"), "{r:#?}");
    r.code == 0
}

fn describe(env: &Env, name: &str) -> Value {
    env.run(&["secret", "describe", name, "-n", "ops", "--json"]).expect_code(0).json()
}

fn audit(env: &Env, action: &str) -> Vec<Value> {
    let r = env.run(&["audit", "list", "--action", action, "--json"]);
    r.expect_code(0);
    r.json().as_array().unwrap().clone()
}

#[test]
fn the_example_flow_rotates_a_password_at_openbao_and_the_next_task_logs_in_with_it() {
    let Some((_guard, bao)) = bao() else { return };
    let env = Env::new();
    setup(&env, &bao);
    assert!(logs_in(&bao, OLD));
    // The example flow as shipped, pointed at this test's OpenBao.
    let shipped = std::fs::read_to_string(workspace().join("plugins/flows/rotate-service-password.yaml")).unwrap();
    let text = shipped.replace("http://127.0.0.1:8200", &bao.addr).replace(
        "../../target/plugins/wasm32-wasip2/release/rotate_http.wasm",
        component(Plugin::RotateHttp).to_str().unwrap(),
    );
    let flow = env.home().join("rotate.yaml");
    std::fs::write(&flow, text).unwrap();
    let r = env.run_with(env.host().arg("run").arg(&flow).arg("--json"), b"");
    r.expect_code(0);
    let rec = r.json();
    assert_eq!(rec["tasks"][0]["output"], json!({"status": 204, "version": 2}), "{rec}");
    assert_eq!(rec["tasks"][1]["output"]["status"], 200, "the next task logs in with the new value: {rec}");
    assert!(!logs_in(&bao, OLD), "the old password still logs in");
    let d = describe(&env, "SERVICE_PASSWORD");
    assert_eq!((d["current_version"].as_u64(), d["staged"].is_null()), (Some(2), true), "{d}");
    assert!(!r.all_output().contains(OLD) && !r.all_output().contains(TOKEN), "{r:#?}");
    // Staged and committed by the task, each audited with its version.
    let stage = audit(&env, "secret.stage");
    assert!(
        stage.iter().any(|s| s["outcome"] == "ok" && s["version"] == 2 && s["actor"].to_string().contains("rotate"))
    );
    let commit = audit(&env, "secret.commit");
    assert_eq!(commit.len(), 1, "{commit:?}");
    assert_eq!(commit[0]["version"], 2);
    env.run(&["audit", "verify"]).expect_code(0);
}

#[test]
fn a_service_generated_token_is_captured_and_the_task_holds_only_its_placeholder() {
    let Some((_guard, bao)) = bao() else { return };
    let env = Env::new();
    setup(&env, &bao);
    env.run_with(env.host().args(["secret", "set", "API_TOKEN", "-n", "ops", "--destination", &bao.addr]), b"unused-x")
        .expect_code(0);
    let input = json!({
        "action": "rotate", "name": "API_TOKEN", "capture": "/auth/client_token", "secret": "VAULT_ADMIN_TOKEN",
        "requests": [{
            "method": "POST",
            "url": format!("{}/v1/auth/token/create", bao.addr),
            "headers": { "x-vault-token": "{secret}" },
            "body": "{\"ttl\":\"1h\",\"policies\":[\"default\"]}",
        }],
        "then": ["commit"],
    });
    let r = rotate(&env, input, &["VAULT_ADMIN_TOKEN"], &["API_TOKEN"], &bao.addr);
    r.expect_code(0);
    let out = r.json();
    let next = out["next"].as_str().unwrap();
    assert!(next.starts_with("khp_"), "{out}");
    let body: Value = serde_json::from_str(out["responses"][0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["auth"]["client_token"], next, "the task reads the placeholder where the token was: {body}");
    assert_eq!(out["steps"][0]["commit"]["ok"], 2, "{out}");
    // The captured token is the one keyhole now holds: a task using it
    // (a placeholder again) is let in by OpenBao.
    let lookup = json!({"action": "http", "secret": "API_TOKEN", "requests": [{
        "url": format!("{}/v1/auth/token/lookup-self", bao.addr), "headers": {"x-vault-token": "{secret}"},
    }]});
    let mut cmd = env.host();
    cmd.arg("exec").arg(component(Plugin::Probe)).args(["-n", "ops", "--grant", "API_TOKEN"]);
    cmd.args(["--allow-outbound", &bao.addr, "--input", &lookup.to_string()]);
    let used = env.run_with(&mut cmd, b"");
    used.expect_code(0);
    assert_eq!(used.json()[0]["status"], 200, "{used:#?}");
    let looked: Value = serde_json::from_str(used.json()[0]["body"].as_str().unwrap()).unwrap();
    let accessor = looked["data"]["accessor"].as_str().unwrap();
    assert!(!looked.to_string().contains("\"id\":\"s.") && !looked.to_string().contains("\"id\":\"hvs."), "{looked}");
    // The token is real at OpenBao, and no output ever showed it.
    let mut who = agent()
        .post(format!("{}/v1/auth/token/lookup-accessor", bao.addr))
        .header("X-Vault-Token", TOKEN)
        .send_json(json!({ "accessor": accessor }))
        .unwrap();
    let info: Value = who.body_mut().read_json().unwrap();
    assert_eq!(info["data"]["policies"], json!(["default"]), "{info}");
    assert!(!r.all_output().contains(TOKEN) && !used.all_output().contains(TOKEN));
}

#[test]
fn a_failed_or_unfinished_rotation_never_makes_a_value_current_nor_loses_one_the_service_took() {
    let Some((_guard, bao)) = bao() else { return };
    let env = Env::new();
    setup(&env, &bao);
    let staged = |env: &Env| describe(env, "SERVICE_PASSWORD")["staged"]["version"].as_u64();
    let generate = |then: &[&str], requests: Vec<Value>| {
        json!({"action": "rotate", "name": "SERVICE_PASSWORD", "length": 24, "secret": "VAULT_ADMIN_TOKEN",
               "requests": requests, "then": then})
    };

    // Deny by default: a read grant is not a rotate grant.
    let r = rotate(&env, generate(&["commit"], vec![]), &["SERVICE_PASSWORD", "VAULT_ADMIN_TOKEN"], &[], &bao.addr);
    assert_eq!(r.json()["error"], "denied", "{r:#?}");
    // Only a bound secret is rotated: its new value could go anywhere else.
    env.run_with(env.host().args(["secret", "set", "LOOSE", "-n", "ops"]), b"loose-value").expect_code(0);
    let loose = json!({"action": "rotate", "name": "LOOSE", "length": 24});
    let r = rotate(&env, loose, &[], &["LOOSE"], &bao.addr);
    let e = r.json()["error"].as_str().unwrap().to_owned();
    assert!(e.contains("not bound to destinations") && e.contains("host secret bind LOOSE"), "{e}");

    // Committed before the service took it: refused; at the end the host
    // erases what never left.
    let r = rotate(&env, generate(&["commit"], vec![]), &["VAULT_ADMIN_TOKEN"], &["SERVICE_PASSWORD"], &bao.addr);
    r.expect_code(0);
    let e = r.json()["steps"][0]["commit"]["error"].as_str().unwrap().to_owned();
    assert!(e.contains("no request has carried it yet"), "{e}");
    assert_eq!(staged(&env), None, "the unsent value was erased when the task ended");

    // The placeholder of the new value toward another destination: refused,
    // nothing sent there.
    let echo = Echo::start();
    let exfil = json!({"method": "POST", "url": echo.url("/echo"), "body": "{next}"});
    let mut cmd = probe_cmd(&env, generate(&[], vec![exfil]), &["VAULT_ADMIN_TOKEN"], &["SERVICE_PASSWORD"], &bao.addr);
    cmd.args(["--allow-outbound", &echo.origin()]);
    let r = env.run_with(&mut cmd, b"");
    assert_eq!(r.json()["responses"][0]["error"], "Denied", "{r:#?}");
    assert!(echo.received().is_empty(), "the staged value left toward an unbound destination");
    assert_eq!(staged(&env), None);

    // The service answers 500: the task's discard is honoured.
    env.run_with(
        env.host().args([
            "secret",
            "bind",
            "SERVICE_PASSWORD",
            "-n",
            "ops",
            "--destination",
            &bao.addr,
            "--destination",
            &echo.origin(),
        ]),
        b"",
    )
    .expect_code(0);
    let fail = json!({"method": "POST", "url": echo.url("/fail"), "body": "{\"password\":\"{next}\"}"});
    let mut cmd = probe_cmd(
        &env,
        generate(&["commit", "discard"], vec![fail]),
        &["VAULT_ADMIN_TOKEN"],
        &["SERVICE_PASSWORD"],
        &bao.addr,
    );
    cmd.args(["--allow-outbound", &echo.origin()]);
    let r = env.run_with(&mut cmd, b"");
    r.expect_code(0);
    let out = r.json();
    assert_eq!(out["responses"][0]["status"], 500, "{out}");
    assert!(out["steps"][0]["commit"]["error"].as_str().unwrap().contains("refused every request"), "{out}");
    assert_eq!(out["steps"][1], json!({"discard": {"ok": null}}), "{out}");
    assert_eq!(staged(&env), None);
    assert!(logs_in(&bao, OLD));

    // The answer is lost (the request timed out): the service may hold the
    // value, so neither the task's discard nor the task's end erases it.
    let slow = json!({"method": "POST", "url": echo.url("/slow"), "body": "{\"password\":\"{next}\"}"});
    let mut cmd =
        probe_cmd(&env, generate(&["discard"], vec![slow]), &["VAULT_ADMIN_TOKEN"], &["SERVICE_PASSWORD"], &bao.addr);
    cmd.args(["--allow-outbound", &echo.origin(), "--request-timeout", "1s"]);
    let r = env.run_with(&mut cmd, b"");
    r.expect_code(0);
    let e = r.json()["steps"][0]["discard"]["error"].as_str().unwrap().to_owned();
    assert!(e.contains("got no answer") && e.contains("stays staged for an operator"), "{e}");
    assert!(r.stderr.contains("stays staged"), "{r:#?}");
    assert_eq!(staged(&env), Some(2));
    env.run(&["secret", "discard", "SERVICE_PASSWORD", "-n", "ops", "--staged"]).expect_code(0);
    assert_eq!(staged(&env), None);

    // A hostile task makes the service echo a value it chose, hoping to
    // have it captured as the new credential (which it would then know).
    let chosen = json!({"method": "POST", "url": echo.url("/echo"), "body": "chosen-credential-123"});
    let input = json!({"action": "rotate", "name": "SERVICE_PASSWORD", "capture": "/body", "requests": [chosen],
                       "then": ["commit"]});
    let mut cmd = probe_cmd(&env, input, &[], &["SERVICE_PASSWORD"], &bao.addr);
    cmd.args(["--allow-outbound", &echo.origin()]);
    let r = env.run_with(&mut cmd, b"");
    r.expect_code(0);
    let out = r.json();
    assert!(out["responses"][0]["error"].as_str().unwrap().contains("repeats text the task sent"), "{out}");
    assert!(out["steps"][0]["commit"]["error"].as_str().unwrap().contains("nothing was captured"), "{out}");
    assert_eq!(staged(&env), None);

    // A capture names a JSON pointer: one without its leading '/' or longer
    // than 1024 characters is refused before anything is staged; one of
    // exactly 1024 is armed (and called off here).
    for pointer in ["auth/client_token".to_owned(), format!("/{}", "a".repeat(1024))] {
        let input = json!({"action": "rotate", "name": "SERVICE_PASSWORD", "capture": pointer});
        let r = env.run_with(&mut probe_cmd(&env, input, &[], &["SERVICE_PASSWORD"], &bao.addr), b"");
        r.expect_code(0);
        let e = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(e.starts_with("refused: ") && e.contains("is not a JSON pointer"), "{}: {r:#?}", pointer.len());
    }
    let input = json!({"action": "rotate", "name": "SERVICE_PASSWORD", "capture": format!("/{}", "a".repeat(1023)),
                       "then": ["discard"]});
    let r = env.run_with(&mut probe_cmd(&env, input, &[], &["SERVICE_PASSWORD"], &bao.addr), b"");
    r.expect_code(0);
    assert_eq!((&r.json()["error"], &r.json()["steps"][0]["discard"]), (&Value::Null, &json!({"ok": null})), "{r:#?}");
    assert_eq!(staged(&env), None);

    // A capture takes only an answer from the secret's own destinations:
    // the same field in another service's answer is handed on untouched.
    let other = Echo::start();
    let input = json!({"action": "rotate", "name": "SERVICE_PASSWORD", "capture": "/method",
                       "requests": [{"url": other.url("/echo")}], "then": ["commit"]});
    let mut cmd = probe_cmd(&env, input, &[], &["SERVICE_PASSWORD"], &bao.addr);
    cmd.args(["--allow-outbound", &other.origin()]);
    let r = env.run_with(&mut cmd, b"");
    r.expect_code(0);
    let out = r.json();
    let body: Value = serde_json::from_str(out["responses"][0]["body"].as_str().unwrap_or("null")).unwrap();
    assert_eq!(body["method"], "GET", "{out}");
    assert!(out["steps"][0]["commit"]["error"].as_str().unwrap_or("").contains("nothing was captured"), "{out}");
    assert_eq!(staged(&env), None);

    // The task traps after OpenBao took the new password: it stays staged
    // (the service holds it), the operator is told, and commits it.
    let r = rotate(
        &env,
        generate(&["trap"], vec![set_password(&bao)]),
        &["VAULT_ADMIN_TOKEN"],
        &["SERVICE_PASSWORD"],
        &bao.addr,
    );
    assert_ne!(r.code, 0, "the task trapped: {r:#?}");
    assert!(
        r.stderr.contains("stays staged") && r.stderr.contains("host secret commit|discard SERVICE_PASSWORD"),
        "{r:#?}"
    );
    assert_eq!(staged(&env), Some(2));
    assert!(!logs_in(&bao, OLD), "OpenBao has the new password");
    assert!(!login_with_stored(&env, &bao), "keyhole still hands out the old one until the commit");
    // A second rotation waits for the first to be resolved.
    let r = rotate(&env, generate(&[], vec![]), &["VAULT_ADMIN_TOKEN"], &["SERVICE_PASSWORD"], &bao.addr);
    assert!(r.json()["error"].as_str().unwrap().contains("version 2 of SERVICE_PASSWORD is already staged"), "{r:#?}");
    env.run(&["secret", "commit", "SERVICE_PASSWORD", "-n", "ops", "--staged"]).expect_code(0);
    assert!(login_with_stored(&env, &bao), "the committed value is the one OpenBao took");

    // kill -9 between the service's success and the commit: the staged
    // value survives for the operator.
    let mut child = probe_cmd(
        &env,
        generate(&["wait", "commit"], vec![set_password(&bao)]),
        &["VAULT_ADMIN_TOKEN"],
        &["SERVICE_PASSWORD"],
        &bao.addr,
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().contains("waiting")), "the task never reached its wait");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(staged(&env), Some(3), "the staged value was lost with the host");
    assert!(!login_with_stored(&env, &bao), "OpenBao has the new one; keyhole's current is the old one");
    env.run(&["secret", "commit", "SERVICE_PASSWORD", "-n", "ops", "--staged"]).expect_code(0);
    assert!(login_with_stored(&env, &bao));
    env.run(&["audit", "verify"]).expect_code(0);
}

/// `API_KEY` in `ops` of the data directory `home` (the default one when
/// `None`), bound to `echo`.
fn bound_key(env: &Env, home: Option<&std::path::Path>, echo: &Echo) {
    let mut set = env.host();
    if let Some(h) = home {
        set.env("KEYHOLE_HOME", h);
    }
    set.args(["secret", "set", "API_KEY", "-n", "ops", "--destination", &echo.origin()]);
    env.run_with(&mut set, b"first-api-key-0001").expect_code(0);
}

/// A task rotates one value of a secret at a time: a second rotation waits
/// until the first is discarded, and a committed one is over (a second
/// commit or discard finds nothing; the task's end reports nothing).
#[test]
fn a_task_rotates_one_value_at_a_time_and_a_committed_rotation_is_over() {
    let env = Env::new();
    let echo = Echo::start();
    bound_key(&env, None, &echo);
    let run = |then: &[&str], requests: Vec<Value>| {
        let input = json!({"action": "rotate", "name": "API_KEY", "length": 24, "requests": requests, "then": then});
        let r = env.run_with(&mut probe_cmd(&env, input, &[], &["API_KEY"], &echo.origin()), b"");
        r.expect_code(0);
        r
    };
    let staged = || describe(&env, "API_KEY")["staged"]["version"].as_u64();

    let send = json!({"method": "POST", "url": echo.url("/echo"), "body": "{next}"});
    let r = run(&["commit", "commit", "discard"], vec![send]);
    let out = r.json();
    assert_eq!(out["responses"][0]["status"], 200, "{out}");
    assert_eq!(out["steps"][0], json!({"commit": {"ok": 2}}), "{out}");
    for (i, step) in [(1, "commit"), (2, "discard")] {
        let e = out["steps"][i][step]["error"].as_str().unwrap_or_default();
        assert!(e.starts_with(&format!("refused: nothing of API_KEY to {step}")), "{out}");
    }
    assert!(!r.stderr.contains("stays staged"), "a committed rotation was reported as unresolved: {r:#?}");
    let pending = audit(&env, "secret.stage").into_iter().filter(|x| x["outcome"] == "pending").count();
    assert_eq!(pending, 0, "{:#?}", audit(&env, "secret.stage"));
    assert_eq!((describe(&env, "API_KEY")["current_version"].as_u64(), staged()), (Some(2), None));

    let r = run(&["again", "discard", "again", "discard"], vec![]);
    let out = r.json();
    let e = out["steps"][0]["again"]["error"].as_str().unwrap_or_default();
    assert!(e.starts_with("refused: a rotation of API_KEY is already in progress in this task"), "{out}");
    assert_eq!(out["steps"][1], json!({"discard": {"ok": null}}), "{out}");
    assert!(out["steps"][2]["again"]["ok"].as_str().is_some_and(|p| p != out["next"]), "{out}");
    assert_eq!(out["steps"][3], json!({"discard": {"ok": null}}), "{out}");
    assert!(!r.stderr.contains("could not be discarded"), "{r:#?}");
    assert_eq!((describe(&env, "API_KEY")["current_version"].as_u64(), staged()), (Some(2), None));
    env.run(&["audit", "verify"]).expect_code(0);
}

/// A real full disk (a 4 MiB tmpfs holding the data directory): a rotation
/// step whose record cannot be written does nothing. Neither the current
/// value's placeholder nor an armed capture reaches the task, and nothing
/// is staged. Needs root (CI runs as root); elsewhere it says so loudly.
#[test]
fn no_rotation_step_happens_when_its_record_cannot_be_written() {
    let env = Env::new();
    let echo = Echo::start();
    let mnt = env.home().join("small");
    let test = "no_rotation_step_happens_when_its_record_cannot_be_written";
    let Some(disk) = SmallDisk::mount(&mnt, test) else { return };
    let home = mnt.join("home");
    bound_key(&env, Some(&home), &echo);
    let rotate = |input: Value| {
        let mut cmd = probe_cmd(&env, input, &[], &["API_KEY"], &echo.origin());
        cmd.env("KEYHOLE_HOME", &home);
        let r = env.run_with(&mut cmd, b"");
        r.expect_code(0);
        r.json()
    };
    // Another process keeps the database open, so that the host can still
    // open it (its shared-memory index exists); then fill the disk.
    let reader = rusqlite::Connection::open(home.join("keyhole.db")).unwrap();
    reader.query_row("SELECT count(*) FROM audit", [], |r| r.get::<_, i64>(0)).unwrap();
    disk.fill();
    for input in [
        json!({"action": "rotate", "name": "API_KEY", "capture": "/token", "then": ["discard"]}),
        json!({"action": "rotate", "name": "API_KEY", "length": 24, "then": ["discard"]}),
    ] {
        let out = rotate(input);
        let e = out["error"].as_str().unwrap_or_default();
        assert!(
            e.starts_with("unavailable: the audit log cannot be written, so nothing is staged or released"),
            "{out}"
        );
        assert_eq!(out["next"], Value::Null, "{out}");
    }
    disk.free();
    drop(reader);
    let home_run = |args: &[&str]| env.run_with(env.host().env("KEYHOLE_HOME", &home).args(args), b"");
    home_run(&["audit", "verify"]).expect_code(0);
    let doc = home_run(&["secret", "describe", "API_KEY", "-n", "ops", "--json"]).json();
    assert_eq!((&doc["current_version"], &doc["staged"]), (&json!(1), &Value::Null), "{doc}");
}
