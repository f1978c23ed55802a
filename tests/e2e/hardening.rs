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
    env.run(&[
        "role",
        "create",
        "releaser",
        "--allow",
        "execution:create",
        "--allow",
        "execution:read",
        "--allow",
        "execution:approve",
    ])
    .expect_code(0);
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
