//! `host serve` against what an attack on it found: a cancel that must
//! cancel, identities that stay distinct through re-runs and minted
//! tokens, tokens that end with their issuer. A real server on 127.0.0.1.

use crate::server::{Client, Server, token, wait_ended};
use crate::support::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A flow whose second task reads `APP_KEY` behind a gate that its
/// starter may not pass; `finally:` reports.
fn gated(env: &Env, extra: &str) {
    let probe = component(Plugin::Probe);
    let file = env.home().join("release.yaml");
    let text = format!(
        "id: release\nnamespace: prod\n{extra}tasks:\n  - {{id: build, plugin: '{p}', input: {{action: context}}}}\n  \
         - id: deploy\n    plugin: '{p}'\n    secrets: [APP_KEY]\n    approval: {{distinct_from_trigger: true}}\n    \
           input: {{action: get, names: [APP_KEY]}}\nfinally:\n  - {{id: report, plugin: '{p}', input: {{action: context}}}}\n",
        p = probe.display()
    );
    std::fs::write(&file, text).unwrap();
    env.run(&["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
}

fn start(c: &Client, tok: &str) -> String {
    let (s, v) = c.call("POST", "/api/v1/executions/prod/release", Some(tok), Some(&json!({})));
    assert!(s == 201 || s == 202, "{s} {v}");
    v["id"].as_str().unwrap().to_owned()
}

fn paused(c: &Client, tok: &str, id: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, rec) = c.call("GET", &format!("/api/v1/executions/{id}"), Some(tok), None);
        if rec["status"] == "paused" {
            return rec;
        }
        assert!(Instant::now() < end, "never paused: {rec}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn approve(c: &Client, tok: &str, id: &str) -> (u16, Value) {
    c.call("POST", &format!("/api/v1/executions/{id}/approve"), Some(tok), Some(&json!({"task": "deploy"})))
}

fn audit(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "list", "--json"];
    all.extend_from_slice(args);
    env.run(&all).json().as_array().unwrap().clone()
}

/// The command line of `tok`'s holder against `server`.
fn remote(env: &Env, server: &Server, tok: &str, args: &[&str]) -> Run {
    let mut cmd = env.host();
    cmd.env("KEYHOLE_ADDR", &server.base).env("KEYHOLE_TOKEN", tok).env("KEYHOLE_HOME", env.home().join("client"));
    env.run_with(cmd.args(args), b"")
}

#[test]
fn cancelling_a_paused_execution_ends_it_and_its_gated_task_never_runs() {
    let env = Env::new();
    env.set_secret("prod", "APP_KEY", "app-key-value-551");
    gated(&env, "");
    let runner = token(&env, "run", "runner", "prod", &[]);
    let approver = token(&env, "ann", "approver", "prod", &[]);
    let dev = token(&env, "dev", "developer", "prod", &[]);
    let server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    let id = start(&c, &runner);
    paused(&c, &runner, &id);
    let r = remote(&env, &server, &dev, &["executions", "cancel", &id]);
    r.expect_code(0);
    assert!(r.stderr.contains("cancelling"), "{r:#?}");
    let rec = wait_ended(&c, &runner, &id, Duration::from_secs(30));
    assert_eq!(rec["status"], "cancelled", "{rec}");
    assert_eq!(rec["tasks"][1]["status"], "skipped", "{rec}");
    assert!(rec["tasks"][1]["skipped"].as_str().unwrap().contains("cancelled while it waited"), "{rec}");
    assert_eq!(rec["tasks"][2]["status"], "succeeded", "finally: runs after a cancel: {rec}");
    // Too late to approve it: nothing runs, nothing is read.
    let (s, v) = approve(&c, &approver, &id);
    assert_eq!(s, 409, "{v}");
    assert!(audit(&env, &["--action", "secret.read"]).is_empty(), "the gated task read its secret");
    // The trail tells what happened: asked, then done.
    let cancels = audit(&env, &["--action", "execution.cancel"]);
    let outcomes: Vec<&str> = cancels.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["pending", "ok"], "{cancels:#?}");
    // A cancel that changes nothing is not a success anywhere.
    let r = remote(&env, &server, &dev, &["executions", "cancel", &id]);
    r.expect_code(2);
    assert!(r.stderr.contains("already ended (cancelled): nothing to cancel"), "{r:#?}");
    let (s, v) = c.call("POST", &format!("/api/v1/executions/{id}/cancel"), Some(&dev), None);
    assert_eq!(s, 409, "{v}");
    let failed = audit(&env, &["--action", "execution.cancel", "--outcome", "failed"]);
    assert_eq!(failed.len(), 2, "{failed:#?}");
}

#[test]
fn a_requeued_execution_keeps_its_starter_for_distinct_from_trigger() {
    let env = Env::new();
    env.set_secret("prod", "APP_KEY", "app-key-value-552");
    gated(&env, "on_interrupt: requeue\n");
    crate::server::releaser_role(&env);
    let rel = token(&env, "rel", "releaser", "prod", &[]);
    let mut server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    let first = start(&c, &rel);
    paused(&c, &rel, &first);
    server.kill9();
    let server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    let (_, list) = c.call("GET", "/api/v1/executions", Some(&rel), None);
    let again = list.as_array().unwrap().iter().find(|e| e["trigger"] == format!("requeue:{first}")).cloned();
    let again = again.unwrap_or_else(|| panic!("not re-queued: {list}"));
    let again = again["id"].as_str().unwrap().to_owned();
    let rec = paused(&c, &rel, &again);
    assert!(rec["created_by"].as_str().unwrap().starts_with("rel (tok-"), "the re-run is still its starter's: {rec}");
    let (s, v) = approve(&c, &rel, &again);
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("distinct_from_trigger"), "{v}");
}

#[test]
fn a_token_counts_as_whoever_issued_its_chain_and_ends_with_its_issuer() {
    let env = Env::new();
    env.set_secret("prod", "APP_KEY", "app-key-value-553");
    gated(&env, "");
    let admin_a = token(&env, "admin-a", "admin", "", &[]);
    let server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    // admin-a mints an approver token for itself: still admin-a.
    let r = remote(
        &env,
        &server,
        &admin_a,
        &["token", "create", "--name", "a-approver", "--role", "approver", "-n", "prod"],
    );
    r.expect_code(0);
    let minted = r.stdout.trim().to_owned();
    let id = start(&c, &admin_a);
    paused(&c, &admin_a, &id);
    let (s, v) = approve(&c, &minted, &id);
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("distinct_from_trigger"), "{v}");
    // Someone else may.
    let ann = token(&env, "ann", "approver", "prod", &[]);
    assert_eq!(approve(&c, &ann, &id).0, 200);
    assert_eq!(wait_ended(&c, &ann, &id, Duration::from_secs(30))["status"], "succeeded");

    // A child lives no longer than its issuer, and every API token expires.
    let short = token(&env, "short", "admin", "", &["--ttl", "3s"]);
    let r = remote(&env, &server, &short, &["token", "create", "--name", "kid", "--role", "runner", "-n", "prod"]);
    let r2 = remote(&env, &server, &short, &["token", "lookup-self", "--json"]);
    r.expect_code(0);
    let kid = r.stdout.trim().to_owned();
    let parent_expires = r2.json()[0]["expires"].as_str().unwrap().to_owned();
    let (_, me) = c.call("GET", "/api/v1/tokens/self", Some(&kid), None);
    assert_eq!(me["expires"].as_str(), Some(parent_expires.as_str()), "{me}");
    std::thread::sleep(Duration::from_millis(3200));
    assert_eq!(c.call("GET", "/api/v1/tokens/self", Some(&kid), None).0, 401, "the child outlived its issuer");
    let (s, v) = c.call(
        "POST",
        "/api/v1/tokens",
        Some(&admin_a),
        Some(&json!({"name": "forever", "role": "runner", "namespace": "prod", "ttl": "100000d"})),
    );
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("longer than this server allows (90d"), "{v}");
    let r = env.run(&["token", "create", "--name", "forever", "--role", "runner", "--ttl", "100000d"]);
    r.expect_code(2);
    assert!(r.stderr.contains("at most 3650 days"), "{r:#?}");
    // Revoking an issuer ends what it issued; the operator's own tokens stay.
    let lead = token(&env, "lead", "admin", "", &[]);
    let r = remote(&env, &server, &lead, &["token", "create", "--name", "lead-bot", "--role", "runner", "-n", "prod"]);
    let bot = r.stdout.trim().to_owned();
    assert_eq!(c.call("GET", "/api/v1/tokens/self", Some(&bot), None).0, 200);
    env.run(&["token", "revoke", "lead"]).expect_code(0);
    assert_eq!(c.call("GET", "/api/v1/tokens/self", Some(&bot), None).0, 401);
    assert_eq!(c.call("GET", "/api/v1/tokens/self", Some(&admin_a), None).0, 200);
    let r = env.run(&["token", "list"]);
    assert!(r.stdout.lines().any(|l| l.contains("lead-bot") && l.contains("ended")), "{r:#?}");
    let failed = audit(&env, &["--action", "auth.failed"]);
    assert!(
        failed.iter().any(|r| r["reason"].as_str().unwrap().contains("the token that issued it was revoked")),
        "{failed:#?}"
    );
}

#[test]
fn signing_out_of_the_console_closes_its_follow_streams() {
    use std::io::{BufRead, BufReader};
    let env = Env::new();
    let probe = component(Plugin::Probe);
    let file = env.home().join("slow.yaml");
    std::fs::write(
        &file,
        format!(
            "id: slow\nnamespace: prod\ntasks:\n  - {{id: t, plugin: '{}', input: {{action: get, names: [], wait_ms: 20000}}, limits: {{timeout: 60s}}}}\n",
            probe.display()
        ),
    )
    .unwrap();
    env.run(&["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
    let dev = token(&env, "dev", "developer", "prod", &[]);
    let server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    let (_, v) = c.call("POST", "/api/v1/executions/prod/slow", Some(&dev), Some(&json!({})));
    let id = v["id"].as_str().unwrap().to_owned();
    // Sign in as the console does: a cookie and a CSRF token.
    let mut resp = ureq::post(&format!("{}/api/v1/session", server.base))
        .header("Authorization", &format!("Bearer {dev}"))
        .send_empty()
        .unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let csrf = serde_json::from_str::<Value>(&resp.body_mut().read_to_string().unwrap()).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    let stream =
        ureq::get(&format!("{}/api/v1/executions/{id}/follow", server.base)).header("Cookie", &cookie).call().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream.into_body().into_reader()).lines().map_while(Result::ok) {
            if let Some(e) = line.strip_prefix("event: ")
                && tx.send((e.to_owned(), Instant::now())).is_err()
            {
                return;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first.0, "status", "the stream opens with the record");
    let out = ureq::delete(&format!("{}/api/v1/session", server.base))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .call()
        .unwrap();
    assert_eq!(out.status().as_u16(), 200);
    let signed_out = Instant::now();
    // The stream says it closed, soon, and sends nothing after.
    let mut seen = Vec::new();
    while let Ok((event, at)) = rx.recv_timeout(Duration::from_secs(5)) {
        seen.push((event, at));
    }
    let closed = seen.iter().position(|(e, _)| e == "closed").unwrap_or_else(|| panic!("no `closed` event: {seen:?}"));
    assert!(seen[closed].1.duration_since(signed_out) < Duration::from_secs(2), "{seen:?}");
    assert_eq!(closed, seen.len() - 1, "events after `closed`: {seen:?}");
    c.call("POST", &format!("/api/v1/executions/{id}/cancel"), Some(&dev), None);
}

#[test]
fn the_api_answers_honestly_about_bad_requests_and_shows_no_server_path() {
    let env = Env::new();
    env.set_secret("prod", "APP_KEY", "app-key-value-554");
    let admin = token(&env, "admin", "admin", "", &[]);
    let outsider = token(&env, "outsider", "admin", "marketing", &[]);
    let server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    // A JSON body over the limit is a 413, as the README says.
    // (A client of its own: the server closes a connection whose body it did not read.)
    let huge = json!({"name": "x".repeat(2 << 20), "role": "runner"});
    let (s, v) = Client::new(&server).call("POST", "/api/v1/tokens", Some(&admin), Some(&huge));
    assert_eq!(s, 413, "{v}");
    // A time that does not parse is a 400 naming the field, never "no filter".
    for field in ["since", "until"] {
        let (s, v) = c.call("GET", &format!("/api/v1/audit?{field}=x"), Some(&admin), None);
        assert_eq!(s, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains(&format!("query `{field}`")), "{v}");
    }
    // Trailing junk after the JSON document is refused; nothing is stored.
    let url = format!("{}/api/v1/secrets/prod/APP_KEY", server.base);
    let resp = ureq::put(&url)
        .config()
        .http_status_as_error(false)
        .build()
        .header("Authorization", &format!("Bearer {admin}"))
        .header("Content-Type", "application/json")
        .send(&br#"{"value": "junk-trailed-value", "rotate": true} junk"#[..])
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let r = env.run(&["secret", "versions", "APP_KEY", "-n", "prod", "--json"]);
    assert_eq!(r.json().as_array().unwrap().len(), 1, "a version was stored: {r:#?}");
    // Another namespace's execution is as missing as one that never was.
    let probe = component(Plugin::Probe);
    let file = env.home().join("ctx.yaml");
    std::fs::write(
        &file,
        format!(
            "id: ctx\nnamespace: prod\ntasks:\n  - {{id: t, plugin: '{}', input: {{action: context}}}}\n",
            probe.display()
        ),
    )
    .unwrap();
    env.run(&["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
    let (_, v) = c.call("POST", "/api/v1/executions/prod/ctx?wait=30", Some(&admin), Some(&json!({})));
    let id = v["id"].as_str().unwrap().to_owned();
    let missing = "01a25290-0000-7000-8000-000000000000";
    let (s1, v1) = c.call("GET", &format!("/api/v1/executions/{id}"), Some(&outsider), None);
    let (s2, v2) = c.call("GET", &format!("/api/v1/executions/{missing}"), Some(&outsider), None);
    assert_eq!((s1, s2), (404, 404), "{v1} {v2}");
    assert_eq!(v1["error"].as_str().unwrap().replace(&id, "ID"), v2["error"].as_str().unwrap().replace(missing, "ID"));
    // A plugin that does not load: the task's error says why, by digest,
    // and no answer or log line shows the server's data directory.
    let bytes = b"\0asm\x0d\x00\x01\x00this is not a component".to_vec();
    let sha = hex::encode(keyhole::crypto::sha256(&bytes));
    let put = ureq::put(&format!("{}/api/v1/plugins/{sha}?namespace=prod", server.base))
        .header("Authorization", &format!("Bearer {admin}"))
        .send(&bytes[..])
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    let source = "id: broken\nnamespace: prod\ntasks:\n  - {id: t, plugin: x.wasm, input: {}}\n";
    let (s, v) = c.call(
        "POST",
        "/api/v1/flows",
        Some(&admin),
        Some(&json!({"file": "b.yaml", "source": source, "plugins": {"t": sha}})),
    );
    assert_eq!(s, 201, "{v}");
    let (_, v) = c.call("POST", "/api/v1/executions/prod/broken?wait=30", Some(&admin), Some(&json!({})));
    let rec = &v["execution"];
    assert_eq!(rec["status"], "failed", "{v}");
    let error = rec["tasks"][0]["error"].as_str().unwrap_or_else(|| panic!("no error on the task: {v}"));
    assert!(error.contains(&format!("sha256 {sha}")), "{error}");
    let home = env.home().display().to_string();
    let (_, log) = c.call("GET", &format!("/api/v1/executions/{}/log", v["id"].as_str().unwrap()), Some(&admin), None);
    for seen in c.seen.lock().unwrap().iter() {
        assert!(!seen.contains(&home), "an answer shows the server's data directory: {seen}");
    }
    assert!(log.to_string().contains("sha256"), "{log}");
}

#[test]
fn every_refused_webhook_key_takes_as_long_whatever_was_wrong() {
    let env = Env::new();
    env.set_secret("prod", "HOOK_KEY", "hook-key-value-555");
    let probe = component(Plugin::Probe);
    let file = env.home().join("hook.yaml");
    std::fs::write(
        &file,
        format!(
            "id: hook\nnamespace: prod\ntriggers:\n  - {{id: in, webhook: {{key_secret: HOOK_KEY}}}}\ntasks:\n  - {{id: t, plugin: '{}', input: {{action: context}}}}\n",
            probe.display()
        ),
    )
    .unwrap();
    env.run(&["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
    let server = Server::start(&env, 1, &["--max-auth-failures", "1000"]);
    let c = Client::new(&server);
    for path in ["/api/v1/webhooks/prod/hook/wrong-key", "/api/v1/webhooks/prod/nothing/wrong-key"] {
        let began = Instant::now();
        let (s, v) = c.post_raw(path, &[], b"{}");
        assert_eq!((s, &v), (404, &json!({"error": "no such webhook"})));
        assert!(began.elapsed() >= keyhole::server::webhook::REFUSAL_FLOOR, "{path} answered early");
    }
}

/// `PUT /api/v1/plugins/{sha256}?namespace=NS` with raw bytes.
fn upload(server: &Server, tok: &str, bytes: &[u8], ns: Option<&str>) -> (u16, String) {
    let sha = hex::encode(keyhole::crypto::sha256(bytes));
    let query = ns.map(|n| format!("?namespace={n}")).unwrap_or_default();
    let mut resp = ureq::put(&format!("{}/api/v1/plugins/{sha}{query}", server.base))
        .config()
        .http_status_as_error(false)
        .build()
        .header("Authorization", &format!("Bearer {tok}"))
        .send(bytes)
        .unwrap();
    (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap())
}

#[test]
fn plugin_uploads_must_be_wasm_count_against_their_namespace_and_unused_ones_are_collected() {
    let env = Env::new();
    let dev = token(&env, "dev", "developer", "prod", &[]);
    let server = Server::start(&env, 1, &["--max-plugin-bytes", "1MiB"]);
    let blobs = env.home().join("plugins");
    let stored = || std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    // Not WebAssembly: refused, nothing written.
    let (s, v) = upload(&server, &dev, &vec![b'x'; 4096], Some("prod"));
    assert_eq!(s, 400, "{v}");
    assert!(v.contains("not a WebAssembly module or component"), "{v}");
    assert_eq!(stored(), 0);
    // Whose it is: the namespace is named, and needs flow:deploy there.
    let wasm = |fill: u8, len: usize| {
        let mut b = b"\0asm\x01\x00\x00\x00".to_vec();
        b.resize(len, fill);
        b
    };
    assert_eq!(upload(&server, &dev, &wasm(1, 64), None).0, 400);
    assert_eq!(upload(&server, &dev, &wasm(1, 64), Some("marketing")).0, 403);
    // The namespace's quota: a second 700 KiB plugin would pass 1 MiB.
    let (s, v) = upload(&server, &dev, &wasm(1, 700 << 10), Some("prod"));
    assert_eq!(s, 201, "{v}");
    assert_eq!(upload(&server, &dev, &wasm(1, 700 << 10), Some("prod")).0, 200, "the same bytes again cost nothing");
    let (s, v) = upload(&server, &dev, &wasm(2, 700 << 10), Some("prod"));
    assert_eq!(s, 413, "{v}");
    assert!(v.contains("would pass its quota of 1048576") && v.contains("host plugin gc"), "{v}");
    // A deployed plugin stays; one no revision references is collected.
    let probe = component(Plugin::Probe);
    let file = env.home().join("ctx.yaml");
    std::fs::write(
        &file,
        format!("id: ctx\nnamespace: ops\ntasks:\n  - {{id: t, plugin: '{}', input: {{}}}}\n", probe.display()),
    )
    .unwrap();
    env.run(&["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
    assert_eq!(stored(), 2);
    let r = env.run(&["plugin", "gc", "--older-than", "0s"]);
    r.expect_code(0);
    assert!(r.stderr.contains("removed 1 plugin(s)"), "{r:#?}");
    assert_eq!(stored(), 1, "the deployed plugin stays");
    let gc = env.run(&["audit", "list", "--action", "plugin.gc", "--json"]).json();
    assert_eq!(gc.as_array().unwrap().len(), 1, "{gc}");
    // The quota it held is free again.
    assert_eq!(upload(&server, &dev, &wasm(2, 700 << 10), Some("prod")).0, 201);
}

/// `host serve` started by a shell that first lowers its soft limit on
/// open files to `soft`: the running child (killed when dropped) and its
/// `host:port`.
struct Lowered(std::process::Child);

impl Drop for Lowered {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_with_soft_limit(env: &Env, soft: u32, extra: &str) -> (Lowered, String) {
    use std::io::{BufRead, BufReader};
    let host = env!("CARGO_BIN_EXE_host");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -Sn {soft} && exec '{host}' serve --listen 127.0.0.1:0 --workers 1 {extra}"))
        .env("KEYHOLE_HOME", env.home())
        .env_remove("KEYHOLE_MASTER_KEY")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "host serve ended before listening");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || while err.read_line(&mut String::new()).unwrap_or(0) > 0 {});
    (Lowered(child), addr)
}

/// Opens a connection that sends part of a request and waits.
fn slow_client(addr: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n").unwrap();
    s
}

/// Whether the server closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64];
    !matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
}

#[test]
fn slow_and_silent_clients_are_cut_off_and_the_server_stays_answerable() {
    let env = Env::new();
    let dev = token(&env, "dev", "developer", "prod", &[]);
    // 256 descriptors before the server raises its limit: 400 slow clients
    // would have starved it.
    let (_server, addr) = serve_with_soft_limit(&env, 256, "--header-timeout 2s");
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
    let mut slow: Vec<std::net::TcpStream> = (0..400).map(|_| slow_client(&addr)).collect();
    slow.extend((0..20).map(|_| std::net::TcpStream::connect(&addr).unwrap()));
    // Meanwhile: health and an authenticated call are answered.
    let health = agent.get(&format!("http://{addr}/api/v1/health")).call().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let me = agent
        .get(&format!("http://{addr}/api/v1/tokens/self"))
        .header("Authorization", &format!("Bearer {dev}"))
        .call();
    assert_eq!(me.unwrap().status().as_u16(), 200);
    // Past the header-read timeout, each slow and each silent one is closed.
    let began = Instant::now();
    for s in slow.iter_mut().skip(380) {
        assert!(closed_within(s, Duration::from_secs(6)), "a slow or silent client was kept");
    }
    assert!(began.elapsed() < Duration::from_secs(8), "{:?}", began.elapsed());
}

#[test]
fn past_the_connection_cap_a_connection_is_closed_at_once() {
    use std::io::{Read, Write};
    let env = Env::new();
    let (_server, addr) = serve_with_soft_limit(&env, 1024, "--max-connections 5 --header-timeout 2s");
    let _held: Vec<std::net::TcpStream> = (0..5).map(|_| slow_client(&addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    let _ = extra.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    extra.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut b = Vec::new();
    let read = extra.read_to_end(&mut b);
    assert!(read.is_ok_and(|n| n == 0) || b.is_empty(), "answered past the cap: {:?}", String::from_utf8_lossy(&b));
    // Once the held ones time out, the server answers again.
    std::thread::sleep(Duration::from_millis(2500));
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
    assert_eq!(agent.get(&format!("http://{addr}/api/v1/health")).call().unwrap().status().as_u16(), 200);
}

#[test]
fn memory_is_bounded_per_task_at_validation_and_for_all_tasks_together_on_a_server() {
    let env = Env::new();
    let probe = component(Plugin::Probe);
    let flow = |id: &str, memory: &str, action: &str| {
        let file = env.home().join(format!("{id}.yaml"));
        std::fs::write(
            &file,
            format!("id: {id}\nnamespace: prod\ntasks:\n  - {{id: t, plugin: '{}', limits: {{memory: {memory}}}, input: {action}}}\n", probe.display()),
        )
        .unwrap();
        file
    };
    // Over the per-task ceiling: refused before anything runs or is stored.
    let huge = flow("huge", "100GiB", "{action: context}");
    for cmd in ["validate", "run"] {
        let r = env.run(&[cmd, huge.to_str().unwrap()]);
        r.expect_code(2);
        assert!(r.all_output().contains("memory 100GiB is over the per-task ceiling of 1GiB"), "{cmd}: {r:#?}");
    }
    env.run(&["flow", "deploy", huge.to_str().unwrap()]).expect_code(2);
    // On a server, every running task together has --max-memory.
    let big = flow("big", "512MiB", "{action: context}");
    let nap = flow("nap", "200MiB", "{action: sleep, secs: 2}");
    for f in [&big, &nap] {
        env.run(&["flow", "deploy", f.to_str().unwrap()]).expect_code(0);
    }
    let admin = token(&env, "admin", "admin", "", &[]);
    let server = Server::start(&env, 2, &["--max-memory", "300MiB"]);
    let c = Client::new(&server);
    let (_, v) = c.call("POST", "/api/v1/executions/prod/big?wait=30", Some(&admin), Some(&json!({})));
    assert_eq!(v["execution"]["status"], "failed", "{v}");
    let error = v["execution"]["tasks"][0]["error"].as_str().unwrap();
    assert!(
        error.contains(
            "its memory limit of 512MiB is more than every running task may have together on this server (300MiB"
        ),
        "{error}"
    );
    // Two 200 MiB tasks do not fit at once: the second waits for the first.
    let ids: Vec<String> = (0..2)
        .map(|_| {
            c.call("POST", "/api/v1/executions/prod/nap", Some(&admin), Some(&json!({}))).1["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let recs: Vec<Value> = ids.iter().map(|id| wait_ended(&c, &admin, id, Duration::from_secs(30))).collect();
    assert!(recs.iter().all(|r| r["status"] == "succeeded"), "{recs:?}");
    let at = |t: &Value| humantime::parse_rfc3339_weak(t.as_str().unwrap()).unwrap();
    let first = recs.iter().map(|r| at(&r["started"])).min().unwrap();
    let last = recs.iter().map(|r| at(&r["ended"])).max().unwrap();
    assert!(last.duration_since(first).unwrap() >= Duration::from_secs(4), "they ran at once: {recs:?}");
}

/// Deploys a one-task flow `id` in `ns` whose task sleeps `secs`.
fn sleeper(env: &Env, ns: &str, id: &str, secs: u64) {
    let file = env.home().join(format!("{id}-{ns}.yaml"));
    let probe = component(Plugin::Probe);
    std::fs::write(
        &file,
        format!(
            "id: {id}\nnamespace: {ns}\ntasks:\n  - {{id: t, plugin: '{}', input: {{action: sleep, secs: {secs}}}}}\n",
            probe.display()
        ),
    )
    .unwrap();
    env.run(&["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
}

fn queue(c: &Client, tok: &str, ns: &str, flow: &str) -> (u16, Value) {
    c.call("POST", &format!("/api/v1/executions/{ns}/{flow}"), Some(tok), Some(&json!({})))
}

#[test]
fn namespaces_take_turns_have_quotas_and_a_paused_execution_gives_its_worker_back() {
    let env = Env::new();
    env.set_secret("prod", "APP_KEY", "app-key-value-556");
    gated(&env, "");
    sleeper(&env, "team.a", "job", 1);
    sleeper(&env, "team.b", "job", 1);
    sleeper(&env, "team.q", "job", 1);
    // team.q may queue 2 and run none: its queue stays as it is.
    env.run(&["namespace", "limits", "team.q", "--max-queued", "2", "--max-running", "0"]).expect_code(0);
    let r = env.run(&["namespace", "list"]);
    assert!(r.stdout.lines().any(|l| l.starts_with("team.q") && l.contains('2') && l.contains('0')), "{r:#?}");
    let admin = token(&env, "admin", "admin", "", &[]);
    let approver = token(&env, "ann", "approver", "prod", &[]);
    let server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    // One worker. A paused execution gives it back: others still run.
    let gated_id = start(&c, &admin);
    paused(&c, &admin, &gated_id);
    // A namespace at its queue quota: the next is refused (429) and audited.
    for _ in 0..2 {
        assert_eq!(queue(&c, &admin, "team.q", "job").0, 202);
    }
    let (s, v) = queue(&c, &admin, "team.q", "job");
    assert_eq!(s, 429, "{v}");
    assert!(v["error"].as_str().unwrap().contains("namespace team.q has 2 execution(s) queued"), "{v}");
    let refused = audit(&env, &["--action", "execution.create", "--outcome", "denied"]);
    assert_eq!(refused.len(), 1, "{refused:#?}");
    // team.b floods the queue.
    let b: Vec<String> =
        (0..6).map(|_| queue(&c, &admin, "team.b", "job").1["id"].as_str().unwrap().to_owned()).collect();
    // team.a's one execution, queued after all of team.b's, does not wait for them all.
    let (_, a) = queue(&c, &admin, "team.a", "job");
    let a = wait_ended(&c, &admin, a["id"].as_str().unwrap(), Duration::from_secs(60));
    let ended_before_a = b
        .iter()
        .map(|id| wait_ended(&c, &admin, id, Duration::from_secs(60)))
        .filter(|r| r["ended"].as_str() < a["ended"].as_str())
        .count();
    assert!(ended_before_a <= 2, "team.a waited for {ended_before_a} of team.b's executions");
    // The paused one is still waiting; decided, it finishes on a worker.
    assert_eq!(c.call("GET", &format!("/api/v1/executions/{gated_id}"), Some(&admin), None).1["status"], "paused");
    assert_eq!(approve(&c, &approver, &gated_id).0, 200);
    assert_eq!(wait_ended(&c, &admin, &gated_id, Duration::from_secs(30))["status"], "succeeded");
}

#[test]
fn a_namespaces_running_quota_keeps_its_executions_from_running_at_once() {
    let env = Env::new();
    sleeper(&env, "team.c.x", "job", 2);
    env.run(&["namespace", "limits", "team.c", "--max-running", "1"]).expect_code(0);
    let admin = token(&env, "admin", "admin", "", &[]);
    let server = Server::start(&env, 2, &[]);
    let c = Client::new(&server);
    let ids: Vec<String> =
        (0..2).map(|_| queue(&c, &admin, "team.c.x", "job").1["id"].as_str().unwrap().to_owned()).collect();
    let recs: Vec<Value> = ids.iter().map(|id| wait_ended(&c, &admin, id, Duration::from_secs(30))).collect();
    let at = |t: &Value| humantime::parse_rfc3339_weak(t.as_str().unwrap()).unwrap();
    let (first, second) = (&recs[0], &recs[1]);
    assert!(at(&second["started"]) >= at(&first["ended"]) || at(&first["started"]) >= at(&second["ended"]), "{recs:?}");
}

#[test]
fn a_500_answer_names_what_failed_never_the_servers_files() {
    let env = Env::new();
    let admin = token(&env, "admin", "admin", "", &[]);
    let server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    // The store fails under the server (a table gone): the answer says so,
    // without the data directory's path.
    let (s, v) = c.call("GET", "/api/v1/executions", Some(&admin), None);
    assert_eq!(s, 200, "{v}");
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.execute_batch("DROP TABLE executions").unwrap();
    let (s, v) = c.call("GET", "/api/v1/executions", Some(&admin), None);
    assert_eq!(s, 500, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("DATA_DIR/keyhole.db") && !error.contains(&env.home().display().to_string()), "{error}");
    assert!(server.logged(&env.home().display().to_string()), "the operator's log keeps the path");
}
