//! `host serve` end to end: a real server on 127.0.0.1, real tokens, flows
//! deployed with plugins built from `plugins/`, executions run by workers;
//! the authorization matrix generated from the server's own route table.

use crate::plugins::workspace;
use crate::support::*;
use keyhole::authz::{self, BUILTIN_ROLES};
use keyhole::server::api::{ROUTES, Route, Scope};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `host serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(env: &Env, workers: usize, extra: &[&str]) -> Server {
        Self::start_with(env, workers, extra, &[])
    }

    /// [`Server::start`] with environment variables (a backend's token).
    pub fn start_with(env: &Env, workers: usize, extra: &[&str], vars: &[(&str, &str)]) -> Server {
        let mut cmd = env.host();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--workers", &workers.to_string()]).args(extra);
        cmd.envs(vars.iter().copied());
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start host serve");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let base = loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                let status = child.wait();
                panic!("host serve ended ({status:?}) before listening:\n{seen}");
            }
            seen.push_str(&line);
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        let log = Arc::new(Mutex::new(seen));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Server { child, base, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the server's log says `needle` within a few seconds: the log
    /// is read on a thread of its own, so a line can trail the answer.
    pub fn logged(&self, needle: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while !self.log().contains(needle) {
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// SIGKILL: the crash case.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (waiting up to `within`).
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let end = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < end, "host serve did not stop within {within:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that keeps every answer, so a test can scan them all.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    pub seen: Mutex<Vec<String>>,
}

impl Client {
    pub fn new(server: &Server) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Client { agent, base: server.base.clone(), seen: Mutex::new(Vec::new()) }
    }

    /// `method path` with `token` and a JSON `body`; the status and body.
    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let resp = match method {
            "GET" | "DELETE" => {
                let mut r = if method == "GET" { self.agent.get(&url) } else { self.agent.delete(&url) };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = match method {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                let bytes = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
                r.header("Content-Type", "application/json").send(&bytes[..])
            }
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        self.seen.lock().unwrap().push(format!("{method} {path} -> {status}: {text}"));
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// `POST path` with raw `body` bytes and `headers`, no token (a
    /// webhook's sender); the status and body.
    pub fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
        let mut r = self.agent.post(&format!("{}{path}", self.base));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let mut resp = r.send(body).unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        // Only the answer: the path may hold a webhook's key, which the
        // sender knows.
        self.seen.lock().unwrap().push(format!("POST (raw) -> {status}: {text}"));
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Asserts that no answer so far contains `value`.
    pub fn assert_never_returned(&self, value: &str) {
        for answer in self.seen.lock().unwrap().iter() {
            assert!(!answer.contains(value), "an API answer carries a secret value: {answer}");
        }
    }
}

/// `host token create`: the token.
pub fn token(env: &Env, name: &str, role: &str, namespace: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--name", name, "--role", role, "--namespace", namespace];
    args.extend_from_slice(extra);
    let r = env.run(&args);
    r.expect_code(0);
    r.stdout.trim().to_owned()
}

/// Writes a one-task flow of the probe plugin into the data directory and
/// deploys it; `input` is the probe's action.
pub fn deploy_probe(env: &Env, namespace: &str, id: &str, grants: &[&str], input: Value, extra: &str) {
    let plugin = component(Plugin::Probe);
    let file = env.home().join(format!("{id}-{namespace}.yaml"));
    let text = format!(
        "id: {id}\nnamespace: {namespace}\ntasks:\n  - id: t\n    plugin: {}\n    secrets: {}\n    input: {}\n{extra}",
        plugin.display(),
        serde_json::to_string(grants).unwrap(),
        input
    );
    std::fs::write(&file, text).unwrap();
    env.run(&["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
}

/// A custom role `releaser` that starts executions and approves gates.
pub fn releaser_role(env: &Env) {
    let allow = ["execution:create", "execution:read", "execution:approve"];
    let mut args = vec!["role", "create", "releaser"];
    for a in &allow {
        args.extend(["--allow", a]);
    }
    env.run(&args).expect_code(0);
}

/// Polls an execution until it ends.
pub fn wait_ended(c: &Client, token: &str, id: &str, within: Duration) -> Value {
    let end = Instant::now() + within;
    loop {
        let (s, rec) = c.call("GET", &format!("/api/v1/executions/{id}"), Some(token), None);
        assert_eq!(s, 200, "{rec}");
        if ["succeeded", "warning", "failed", "cancelled", "interrupted"].contains(&rec["status"].as_str().unwrap()) {
            return rec;
        }
        assert!(Instant::now() < end, "execution {id} did not end: {rec}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ns_seg(ns: &str) -> &str {
    if ns.is_empty() { "-" } else { ns }
}

/// The request the matrix sends for `route` against namespace `ns`.
fn request(route: &Route, ns: &str, execution: &str, n: usize, wasm: &[u8]) -> (String, Option<Value>) {
    let path = route
        .path
        .replace("{ns}", ns_seg(ns))
        .replace("{name}", "S")
        .replace("{flow}", "f")
        .replace("{id}", execution)
        .replace("{token}", "no-such-token")
        .replace("{revision}", "1")
        .replace("{sha256}", &format!("{}?namespace={}", hex::encode(keyhole::crypto::sha256(wasm)), ns_seg(ns)));
    let body = match (route.method, route.path) {
        ("POST", "/api/v1/tokens") => Some(json!({"name": format!("made-{n}"), "role": "runner", "namespace": ns})),
        ("POST", "/api/v1/flows") => Some(json!({
            "file": "f.yaml",
            "source": format!("id: g{n}\nnamespace: {ns}\ntasks:\n  - id: t\n    plugin: x.wasm\n    input: {{}}\n"),
            "plugins": {"t": hex::encode(keyhole::crypto::sha256(wasm))},
        })),
        ("PUT", "/api/v1/secrets/{ns}/{name}") => Some(json!({"value": format!("matrix-value-{n}"), "rotate": true})),
        ("PUT", "/api/v1/secrets/{ns}/{name}/destinations") => {
            Some(json!({"destinations": ["https://api.example.com"]}))
        }
        (_, _) => Some(json!({})),
    };
    (path, body)
}

/// Every route x every built-in role bound at `finance` x a namespace
/// inside (`finance.x`) and outside (`marketing`) the binding: generated
/// from the route table; plus no token, a revoked and an expired one.
#[test]
fn the_authorization_matrix_of_every_route_role_and_scope() {
    let env = Env::new();
    env.set_secret("finance.x", "S", "finance-secret-value-1");
    env.set_secret("marketing", "S", "marketing-secret-value-2");
    for ns in ["finance.x", "marketing"] {
        deploy_probe(&env, ns, "f", &["S"], json!({"action": "leak", "name": "S"}), "");
    }
    let admin = token(&env, "root-admin", "admin", "", &[]);
    let mut tokens = Vec::new();
    for role in BUILTIN_ROLES {
        tokens.push((role, token(&env, role, role, "finance", &[])));
    }
    let revoked = token(&env, "gone", "admin", "", &[]);
    env.run(&["token", "revoke", "gone"]).expect_code(0);
    let expired = token(&env, "old", "admin", "", &["--ttl", "1s"]);
    // Every bad-token probe below comes from 127.0.0.1: lift the guessing limit.
    let server = Server::start(&env, 2, &["--max-auth-failures", "100000"]);
    let c = Client::new(&server);
    let mut executions = std::collections::HashMap::new();
    for ns in ["finance.x", "marketing"] {
        let (s, v) = c.call("POST", &format!("/api/v1/executions/{ns}/f?wait=30"), Some(&admin), Some(&json!({})));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["execution"]["tasks"][0]["output"], json!({"value": "***"}), "the value is masked: {v}");
        executions.insert(ns, v["id"].as_str().unwrap().to_owned());
    }
    std::thread::sleep(Duration::from_millis(1100)); // `old` expires
    let wasm = std::fs::read(component(Plugin::Probe)).unwrap();
    let mut n = 0;
    let mut checked = 0;
    for route in ROUTES {
        for ns in ["finance.x", "marketing"] {
            n += 1;
            let (path, body) = request(route, ns, &executions[ns], n, &wasm);
            if route.scope == Scope::Public {
                let (s, v) = c.call(route.method, &path, None, body.as_ref());
                if route.path.starts_with("/api/v1/webhooks/") {
                    // No token needed, and a wrong key finds nothing.
                    assert_eq!((s, &v), (404, &json!({"error": "no such webhook"})), "{path}");
                } else {
                    assert_eq!(s, 200, "{} {path}: {v}", route.method);
                }
                continue;
            }
            for bad in [None, Some(revoked.as_str()), Some(expired.as_str()), Some("kh_forged")] {
                let (s, v) = c.call(route.method, &path, bad, body.as_ref());
                assert_eq!(s, 401, "{} {path} with {:?}: {v}", route.method, bad.map(|_| "a bad token"));
                assert_eq!(v, json!({"error": "unauthorized"}), "a 401 says nothing more");
            }
            for (role, tok) in &tokens {
                n += 1;
                let (path, body) = request(route, ns, &executions[ns], n, &wasm);
                let (s, v) = c.call(route.method, &path, Some(tok), body.as_ref());
                let holds = route.permission.is_none_or(|p| authz::builtin(role).unwrap().allow.contains(&p));
                let inside = ns == "finance.x";
                let allowed = match route.scope {
                    Scope::Public | Scope::Authenticated => true,
                    Scope::Anywhere => holds,
                    Scope::PathNamespace | Scope::Execution | Scope::Body => holds && inside,
                    // Every token here is bound at `finance`, not the root.
                    Scope::Root => false,
                };
                let what = format!("{role} {} {path}", route.method);
                if allowed {
                    assert!(s != 401 && s != 403, "{what}: expected to be allowed, got {s} {v}");
                } else if route.scope == Scope::Execution && !inside && holds {
                    // Another namespace's execution: as if it did not exist
                    // (these roles may not read executions there).
                    assert_eq!(s, 404, "{what}: expected 404, got {v}");
                    assert!(v["error"].as_str().unwrap().starts_with("no execution "), "{what}: {v}");
                } else {
                    assert_eq!(s, 403, "{what}: expected 403, got {v}");
                    let p = route.permission.unwrap().as_str();
                    assert!(
                        v["error"].as_str().unwrap().contains(&format!("permission {p} is required")),
                        "{what}: {v}"
                    );
                }
                checked += 1;
            }
        }
    }
    let authenticated = ROUTES.iter().filter(|r| r.scope != Scope::Public).count();
    assert_eq!(checked, authenticated * 2 * BUILTIN_ROLES.len(), "every authenticated route was checked");
    // Lists keep only what the caller may see.
    let runner = &tokens.iter().find(|(r, _)| *r == "runner").unwrap().1;
    let (_, flows) = c.call("GET", "/api/v1/flows", Some(runner), None);
    let seen: Vec<&str> = flows.as_array().unwrap().iter().map(|f| f["namespace"].as_str().unwrap()).collect();
    assert!(seen.iter().all(|ns| ns.starts_with("finance")), "{flows}");
    let auditor = &tokens.iter().find(|(r, _)| *r == "auditor").unwrap().1;
    let (_, audit) = c.call("GET", "/api/v1/audit", Some(auditor), None);
    assert!(audit.as_array().unwrap().iter().all(|r| r["namespace"].as_str().unwrap().starts_with("finance")));
    // A limit counts what the caller may see, not what it was refused.
    let (_, newest) = c.call("GET", "/api/v1/audit?limit=20", Some(&admin), None);
    let foreign =
        newest.as_array().unwrap().iter().filter(|r| !r["namespace"].as_str().unwrap().starts_with("finance"));
    assert!(foreign.count() > 0, "the newest 20 records are not all finance's, so the next check means something");
    let (_, page) = c.call("GET", "/api/v1/audit?limit=20", Some(auditor), None);
    let page = page.as_array().unwrap();
    assert_eq!(page.len(), 20, "an auditor scoped to finance gets 20 of its own records");
    assert!(page.iter().all(|r| r["namespace"].as_str().unwrap().starts_with("finance")));
    assert!(page.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()), "oldest first, no repeats");
    // No answer, to anyone, carried a value.
    for v in ["finance-secret-value-1", "marketing-secret-value-2"] {
        c.assert_never_returned(v);
    }
    for i in 0..=n {
        c.assert_never_returned(&format!("matrix-value-{i}\""));
    }
    // Refusals are on the record, with the principal as actor.
    let r = env.run(&["audit", "list", "--actor", "runner", "--action", "api.denied"]);
    r.expect_code(0);
    assert!(r.stdout.contains("permission flow:deploy is required"), "{}", r.stdout);
    let r = env.run(&["audit", "list", "--action", "auth.failed", "--json"]);
    assert!(r.stdout.contains("revoked token") && r.stdout.contains("expired token"), "{}", r.stdout);
    assert!(!r.stdout.contains(&revoked) && !r.stdout.contains(&expired), "a token reached the audit trail");
}

#[test]
fn a_team_deploys_and_runs_flows_by_api_and_the_cli_in_remote_mode() {
    let env = Env::new();
    env.set_secret("finance", "API_TOKEN", "hello-secret-7");
    let admin = token(&env, "admin", "admin", "", &[]);
    let dev = token(&env, "dev", "developer", "marketing", &[]);
    let server = Server::start(&env, 2, &[]);
    let remote = |tok: &str, args: &[&str]| {
        let mut cmd = env.host();
        cmd.env("KEYHOLE_ADDR", &server.base).env("KEYHOLE_TOKEN", tok).args(args);
        // The client needs no data directory: point it at an empty one.
        cmd.env("KEYHOLE_HOME", env.home().join("client-side"));
        env.run_with(&mut cmd, b"")
    };
    let flow = env.home().join("greet.yaml");
    let text = format!(
        "id: greet\nnamespace: finance.reporting\ninputs:\n  - id: who\n    type: string\n    required: true\ntasks:\n  - id: hello\n    plugin: {}\n    secrets: [API_TOKEN]\n    network:\n      allow: [\"https://api.example.com\"]\n    input: {{ name: \"{{{{ inputs.who }}}}\" }}\n",
        component(Plugin::Hello).display()
    );
    std::fs::write(&flow, &text).unwrap();
    // A developer of marketing cannot deploy into finance.
    let r = remote(&dev, &["flow", "deploy", flow.to_str().unwrap()]);
    r.expect_code(2);
    assert!(r.stderr.contains("permission flow:deploy is required in namespace finance.reporting"), "{r:#?}");
    // Rotating changes a secret: a flow that may rotate needs secret:use
    // (a task holds it) and secret:write (it changes it) where it lives.
    let rotating = env.home().join("rotating.yaml");
    let hello = component(Plugin::Hello);
    std::fs::write(
        &rotating,
        format!(
            "id: rot\nnamespace: marketing\ntasks:\n  - {{id: r, plugin: {}, rotate: [API_TOKEN]}}\n",
            hello.display()
        ),
    )
    .unwrap();
    let r = remote(&dev, &["flow", "deploy", rotating.to_str().unwrap()]);
    r.expect_code(2);
    assert!(r.stderr.contains("permission secret:use is required in namespace marketing"), "{r:#?}");
    assert!(r.stderr.contains("the flow makes a task rotate secret API_TOKEN (task r (rotate))"), "{r:#?}");
    remote(&admin, &["flow", "deploy", flow.to_str().unwrap()]).expect_code(0);
    // What runs is what was deployed: the file on disk changing changes nothing.
    std::fs::write(&flow, text.replace("hello.wasm", "probe.wasm")).unwrap();
    let r = remote(&admin, &["run", "greet", "-n", "finance.reporting", "-i", "who=ada", "--json"]);
    r.expect_code(0);
    let rec = r.json();
    assert_eq!(rec["tasks"][0]["output"]["message"], "hello, ada", "{r:#?}");
    assert_eq!(rec["trigger"], "api");
    assert_eq!(rec["revision"], 1);
    let r = remote(&admin, &["run", "greet", "-n", "finance.reporting"]);
    r.expect_code(2);
    assert!(r.stderr.contains("needs input `who`"), "{r:#?}");
    let r = remote(&admin, &["executions", "list"]);
    r.expect_code(0);
    assert!(r.stdout.contains("greet") && r.stdout.contains("succeeded"), "{r:#?}");
    // Remote and local show an execution alike, as a table, as JSON, one by one.
    let id = rec["id"].as_str().unwrap();
    for args in [
        &["executions", "list"][..],
        &["executions", "list", "--json"],
        &["executions", "show", id],
        &["executions", "show", id, "--json"],
    ] {
        let (here, there) = (env.run(args), remote(&admin, args));
        assert_eq!((here.code, &here.stdout), (0, &there.stdout), "{args:?}");
    }
    assert!(
        r.stdout.contains("TRIGGER") && r.stdout.contains("TASKS") && r.stdout.contains("hello:succeeded"),
        "{r:#?}"
    );
    let r = remote(&admin, &["flow", "list"]);
    assert!(r.stdout.contains("finance.reporting") && r.stdout.contains("admin (tok-"), "{r:#?}");
    // What each task may touch, as the console shows it.
    let (_, shown) = Client::new(&server).call("GET", "/api/v1/flows/finance.reporting/greet", Some(&admin), None);
    let task = &shown["tasks"][0];
    assert_eq!(
        (&task["secrets"], &task["network"]),
        (&json!(["API_TOKEN"]), &json!(["https://api.example.com:443"])),
        "{shown}"
    );
    // What the execution did at the trust boundary, from the audit trail.
    let (code, access) =
        Client::new(&server).call("GET", &format!("/api/v1/executions/{id}/access"), Some(&admin), None);
    assert_eq!(code, 200, "{access}");
    assert_eq!(access["execution"], id, "{access}");
    let read = &access["secrets"][0];
    assert_eq!(
        (&read["action"], &read["secret"], &read["outcome"], &read["task"], &read["version"]),
        (&json!("secret.read"), &json!("API_TOKEN"), &json!("granted"), &json!("hello"), &json!(1)),
        "{access}"
    );
    assert_eq!(access["requests"], json!([]), "the hello plugin sends nothing: {access}");
    // The same deploy again is a new revision.
    std::fs::write(&flow, &text).unwrap();
    remote(&admin, &["flow", "deploy", flow.to_str().unwrap()]).expect_code(0);
    let r = remote(&admin, &["flow", "revisions", "greet", "-n", "finance.reporting", "--json"]);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    // Tokens through the API: a developer may not issue one; the admin
    // issues one for a bot, which looks itself up and is then revoked.
    let r = remote(&dev, &["token", "create", "--name", "bot", "--role", "runner", "-n", "finance"]);
    r.expect_code(2);
    assert!(r.stderr.contains("permission token:manage is required"), "{r:#?}");
    let r = remote(&admin, &["token", "create", "--name", "bot", "--role", "runner", "-n", "finance", "--ttl", "1h"]);
    r.expect_code(0);
    let bot = r.stdout.trim().to_owned();
    assert!(bot.starts_with("kh_") && r.stderr.contains("shown this once"), "{r:#?}");
    let r = remote(&bot, &["token", "lookup-self", "--json"]);
    r.expect_code(0);
    let me = r.json();
    assert_eq!((me[0]["name"].as_str(), me[0]["state"].as_str()), (Some("bot"), Some("active")), "{me}");
    assert!(me[0]["expires"].is_string() && !r.stdout.contains(&bot), "{me}");
    let r = remote(&admin, &["token", "list"]);
    assert!(r.stdout.contains("runner in finance") && !r.stdout.contains("kh_"), "{r:#?}");
    remote(&admin, &["token", "revoke", "bot"]).expect_code(0);
    remote(&bot, &["token", "lookup-self"]).expect_code(2);
    let r = env.run(&["token", "lookup-self"]);
    r.expect_code(2);
    assert!(r.stderr.contains("set KEYHOLE_ADDR"), "{r:#?}");
    // A secret manager rotates through the API without reading anything
    // back; an auditor reads who did it.
    let sm = token(&env, "rotator", "secret-manager", "finance", &[]);
    let auditor = token(&env, "eve", "auditor", "finance", &[]);
    let mut cmd = env.host();
    cmd.env("KEYHOLE_ADDR", &server.base).env("KEYHOLE_TOKEN", &sm).env("KEYHOLE_HOME", env.home().join("client-side"));
    cmd.args(["secret", "rotate", "API_TOKEN", "-n", "finance", "--expires-in", "30d"]);
    let r = env.run_with(&mut cmd, b"rotated-secret-8\n");
    r.expect_code(0);
    assert!(r.stderr.contains("rotated API_TOKEN: version 2 in namespace finance"), "{r:#?}");
    let r = remote(&sm, &["secret", "list", "--json"]);
    r.expect_code(0);
    let list = r.json();
    assert_eq!((list[0]["name"].as_str(), list[0]["version"].as_u64()), (Some("API_TOKEN"), Some(2)), "{list}");
    let r = remote(&sm, &["secret", "describe", "API_TOKEN", "-n", "finance"]);
    r.expect_code(0);
    assert!(!r.stdout.contains("rotated-secret-8") && !r.stdout.contains("hello-secret-7"), "{r:#?}");
    let r = remote(&sm, &["secret", "destroy", "API_TOKEN", "-n", "finance"]);
    r.expect_code(2);
    assert!(r.stderr.contains("permission secret:destroy is required in namespace finance"), "{r:#?}");
    let r = remote(&auditor, &["audit", "list", "--actor", "rotator", "--json"]);
    r.expect_code(0);
    let actions: Vec<String> =
        r.json().as_array().unwrap().iter().map(|x| x["action"].as_str().unwrap().to_owned()).collect();
    assert!(actions.contains(&"secret.rotate".to_owned()) && actions.contains(&"api.denied".to_owned()), "{actions:?}");
    // Versions and destination bindings through the API, as locally.
    let r = remote(&sm, &["secret", "versions", "API_TOKEN", "-n", "finance"]);
    r.expect_code(0);
    assert!(r.stdout.contains("(current)") && r.stdout.lines().count() == 3, "{r:#?}");
    let r = remote(&sm, &["secret", "bind", "API_TOKEN", "-n", "finance", "--destination", "https://api.example.com"]);
    r.expect_code(0);
    assert!(r.stderr.contains("is bound to https://api.example.com"), "{r:#?}");
    let r = remote(&sm, &["secret", "describe", "API_TOKEN", "-n", "finance"]);
    assert!(r.stdout.contains("https://api.example.com"), "{r:#?}");
    let mut cmd = env.host();
    cmd.env("KEYHOLE_ADDR", &server.base).env("KEYHOLE_TOKEN", &sm).env("KEYHOLE_HOME", env.home().join("client-side"));
    cmd.args(["secret", "set", "HOOK_KEY", "-n", "finance", "--destination", "https://hooks.example.com"]);
    env.run_with(&mut cmd, b"bound-from-birth-9\n").expect_code(0);
    let r = env.run(&["secret", "describe", "HOOK_KEY", "-n", "finance", "--json"]);
    assert_eq!(r.json()["destinations"], json!(["https://hooks.example.com:443"]), "{r:#?}");
    let r = remote(&sm, &["secret", "bind", "API_TOKEN", "-n", "finance", "--destination", "ftp://x"]);
    r.expect_code(2);
    // A staged rotation through the API: stored unread, then committed.
    let mut cmd = env.host();
    cmd.env("KEYHOLE_ADDR", &server.base).env("KEYHOLE_TOKEN", &sm).env("KEYHOLE_HOME", env.home().join("client-side"));
    cmd.args(["secret", "rotate", "API_TOKEN", "-n", "finance", "--staged"]);
    let r = env.run_with(&mut cmd, b"staged-secret-10\n");
    r.expect_code(0);
    assert!(r.stderr.contains("staged API_TOKEN: version 3 in namespace finance"), "{r:#?}");
    let r = remote(&sm, &["secret", "describe", "API_TOKEN", "-n", "finance", "--json"]);
    assert!(r.json()["staged"]["version"] == 3 && !r.stdout.contains("staged-secret-10"), "{r:#?}");
    remote(&sm, &["secret", "commit", "API_TOKEN", "-n", "finance", "--staged"]).expect_code(0);
    let r = remote(&sm, &["secret", "discard", "API_TOKEN", "-n", "finance", "--staged"]);
    r.expect_code(2);
    assert!(r.stderr.contains("no version is staged"), "{r:#?}");
    let mut cmd = env.host();
    cmd.env("KEYHOLE_ADDR", &server.base).env("KEYHOLE_TOKEN", &sm).env("KEYHOLE_HOME", env.home().join("client-side"));
    cmd.args(["secret", "set", "SOON", "-n", "finance", "--expires-in", "1d"]);
    env.run_with(&mut cmd, b"short-lived-11\n").expect_code(0);
    // The remote CLI shows what the local one shows: one description, one
    // listing, one renderer (text and JSON), `--expiring` included.
    for args in [
        &["secret", "describe", "API_TOKEN", "-n", "finance"][..],
        &["secret", "describe", "API_TOKEN", "-n", "finance", "--json"],
        &["secret", "list", "-n", "finance"],
        &["secret", "list", "-n", "finance", "--json"],
        &["secret", "list", "-n", "finance", "--expiring", "7d"],
    ] {
        let (here, there) = (env.run(args), remote(&sm, args));
        here.expect_code(0);
        there.expect_code(0);
        assert_eq!(here.stdout, there.stdout, "{args:?}");
    }
    let r = remote(&sm, &["secret", "list", "-n", "finance", "--expiring", "7d"]);
    assert!(r.stdout.contains("SOON") && !r.stdout.contains("API_TOKEN"), "only what expires: {r:#?}");
    // Revoke, then destroy, through the API: each lands in the store, and
    // the remote CLI says what was done, as the local one does.
    let r = remote(&admin, &["secret", "revoke", "HOOK_KEY", "-n", "finance"]);
    r.expect_code(0);
    let said = r.stderr.trim().strip_prefix("revoked HOOK_KEY in namespace finance: ").unwrap_or_default();
    assert!(!said.is_empty(), "{r:#?}");
    let r = env.run(&["secret", "describe", "HOOK_KEY", "-n", "finance", "--json"]);
    assert_eq!(r.json()["state"], "revoked", "{r:#?}");
    let r = remote(&admin, &["secret", "destroy", "HOOK_KEY", "-n", "finance"]);
    r.expect_code(0);
    assert!(
        r.stderr.trim().strip_prefix("destroyed HOOK_KEY in namespace finance: ").is_some_and(|d| !d.is_empty()),
        "{r:#?}"
    );
    let r = env.run(&["secret", "describe", "HOOK_KEY", "-n", "finance", "--json"]);
    assert_eq!(r.json()["state"], "destroyed", "{r:#?}");
    // The whole chain is verified by a principal with audit:read at the
    // root; one scoped to a namespace may not (the answer covers them all).
    let r = remote(&auditor, &["audit", "verify"]);
    r.expect_code(2);
    assert!(r.stderr.contains("permission audit:read is required in namespace"), "{r:#?}");
    let r = remote(&admin, &["audit", "verify"]);
    r.expect_code(0);
    assert!(r.stdout.starts_with("audit log intact: "), "{r:#?}");
    // A bad token is a usage error that says which variable to fix.
    let r = remote("kh_nope", &["flow", "list"]);
    r.expect_code(2);
    assert!(r.stderr.contains("KEYHOLE_TOKEN"), "{r:#?}");
    // Idempotency: a retried request gets the same execution.
    let c = Client::new(&server);
    let send = |key: &str| {
        let url = format!("{}/api/v1/executions/finance.reporting/greet", server.base);
        let mut resp = ureq::post(&url)
            .header("Authorization", &format!("Bearer {admin}"))
            .header("Idempotency-Key", key)
            .send_json(json!({"who": "x"}))
            .unwrap();
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        v["id"].as_str().unwrap().to_owned()
    };
    let (a, b, other) = (send("k1"), send("k1"), send("k2"));
    assert_eq!(a, b);
    assert_ne!(a, other);
    // One execution, one record of its creation: the retry adds none.
    let r = env.run(&["audit", "list", "--action", "execution.create", "--json"]);
    let created: Vec<Value> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["detail"].as_str().is_some_and(|d| d.contains(&a)))
        .cloned()
        .collect();
    assert_eq!(created.len(), 1, "{created:#?}");
    wait_ended(&c, &admin, &a, Duration::from_secs(30));
    // A key past 128 characters is refused, not silently ignored.
    let (auth, long) = (format!("Bearer {admin}"), "k".repeat(129));
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json"), ("Idempotency-Key", &long)];
    let (s, v) = c.post_raw("/api/v1/executions/finance.reporting/greet", &headers, br#"{"who": "x"}"#);
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("1 to 128 visible ASCII"), "{v}");
    // A malformed body is a 400 naming the field.
    let (s, v) = c.call("POST", "/api/v1/executions/finance.reporting/greet", Some(&admin), Some(&json!({"who": 3})));
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("input `who` must be of type string"), "{v}");
    let (s, v) =
        c.call("POST", "/api/v1/tokens", Some(&admin), Some(&json!({"name": "x", "role": "runner", "namespace": 5})));
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("field `namespace`"), "{v}");
    c.assert_never_returned("hello-secret-7");
    // The OpenAPI document lists every route with its permission.
    let (_, doc) = c.call("GET", "/api/v1/openapi.json", None, None);
    for r in ROUTES {
        let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
        assert_eq!(op["x-keyhole-permission"], r.permission.map_or(Value::Null, |p| json!(p.as_str())), "{}", r.path);
    }
}

#[test]
fn cancel_stops_a_running_task_and_dequeues_a_queued_one() {
    let env = Env::new();
    // `finally:` runs after a cancel too.
    let finally = format!(
        "    limits: {{ timeout: 60s }}\nfinally:\n  - {{id: clean, plugin: '{}', input: {{action: context}}}}\n",
        component(Plugin::Probe).display()
    );
    deploy_probe(&env, "ops", "spin", &[], json!({"action": "loop"}), &finally);
    let admin = token(&env, "admin", "admin", "", &[]);
    let server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    let (_, first) = c.call("POST", "/api/v1/executions/ops/spin", Some(&admin), Some(&json!({})));
    let (_, second) = c.call("POST", "/api/v1/executions/ops/spin", Some(&admin), Some(&json!({})));
    let (first, second) = (first["id"].as_str().unwrap(), second["id"].as_str().unwrap());
    let end = Instant::now() + Duration::from_secs(30);
    // The record is saved as each task starts: wait until the task spins.
    while c.call("GET", &format!("/api/v1/executions/{first}"), Some(&admin), None).1["tasks"][0]["status"] != "running"
    {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (s, v) = c.call("POST", &format!("/api/v1/executions/{second}/cancel"), Some(&admin), None);
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")), "{v}");
    let started = Instant::now();
    let (_, v) = c.call("POST", &format!("/api/v1/executions/{first}/cancel"), Some(&admin), None);
    assert_eq!(v["status"], "cancelling");
    let rec = wait_ended(&c, &admin, first, Duration::from_secs(20));
    assert_eq!(rec["status"], "cancelled", "{rec}");
    assert_eq!(rec["tasks"][0]["error"], "cancelled while running", "{rec}");
    assert_eq!(
        (rec["tasks"][1]["id"].as_str(), rec["tasks"][1]["status"].as_str()),
        (Some("clean"), Some("succeeded")),
        "{rec}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "the spinning task was not interrupted");
    let rec = wait_ended(&c, &admin, second, Duration::from_secs(5));
    assert_eq!(rec["tasks"][0]["status"], "pending", "a cancelled queued execution never ran: {rec}");
    // Each cancel: `pending` before it is asked, `ok` once it was.
    let r = env.run(&["audit", "list", "--action", "execution.cancel", "--actor", "admin", "--json"]);
    let outcomes: Vec<String> =
        r.json().as_array().unwrap().iter().map(|x| x["outcome"].as_str().unwrap().to_owned()).collect();
    assert_eq!(outcomes, ["pending", "ok", "pending", "ok"], "{}", r.stdout);
}

/// Starts an execution of `ops/again` and waits until its task runs.
fn start_running(c: &Client, admin: &str) -> String {
    let (_, v) = c.call("POST", "/api/v1/executions/ops/again", Some(admin), Some(&json!({})));
    let id = v["id"].as_str().unwrap().to_owned();
    while c.call("GET", &format!("/api/v1/executions/{id}"), Some(admin), None).1["tasks"][0]["status"] != "running" {
        std::thread::sleep(Duration::from_millis(20));
    }
    id
}

/// Kills the server, applies `edit` (SQL with `?1` for `cut`) to the store,
/// and starts it again: `cut` is found interrupted.
fn crash_and_restart(env: &Env, server: &mut Server, edit: Option<&str>, admin: &str, cut: &str) -> Server {
    server.kill9();
    if let Some(sql) = edit {
        rusqlite::Connection::open(env.db()).unwrap().execute(sql, [cut]).unwrap();
    }
    let server = Server::start(env, 2, &[]);
    assert_eq!(wait_ended(&Client::new(&server), admin, cut, Duration::from_secs(5))["status"], "interrupted");
    server
}

/// The details of each `execution.interrupt` record naming `cut`.
fn interruptions(env: &Env, cut: &str) -> Vec<Value> {
    let r = env.run(&["audit", "list", "--action", "execution.interrupt", "--json"]);
    let all = r.json().as_array().unwrap().clone();
    all.iter()
        .filter_map(|x| x["detail"].as_str().filter(|d| d.contains(cut)))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[test]
fn kill_9_loses_no_accepted_execution_and_sigterm_drains() {
    let env = Env::new();
    deploy_probe(&env, "ops", "nap", &[], json!({"action": "sleep", "secs": 2}), "");
    let admin = token(&env, "admin", "admin", "", &[]);
    let mut server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let (s, v) = c.call("POST", "/api/v1/executions/ops/nap", Some(&admin), Some(&json!({})));
            assert_eq!(s, 202, "{v}");
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let end = Instant::now() + Duration::from_secs(30);
    while c.call("GET", &format!("/api/v1/executions/{}", ids[0]), Some(&admin), None).1["tasks"][0]["status"]
        != "running"
    {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill9();
    let mut server = Server::start(&env, 2, &[]);
    assert!(server.log().contains("1 execution(s) cut off"), "{}", server.log());
    let c = Client::new(&server);
    let first = wait_ended(&c, &admin, &ids[0], Duration::from_secs(5));
    assert_eq!(first["status"], "interrupted", "{first}");
    assert_eq!(first["tasks"][0]["status"], "failed", "the task that was cut off says so: {first}");
    assert!(first["tasks"][0]["error"].as_str().unwrap().contains("interrupted"), "{first}");
    for id in &ids[1..] {
        assert_eq!(wait_ended(&c, &admin, id, Duration::from_secs(30))["status"], "succeeded");
    }
    let r = env.run(&["audit", "list", "--action", "execution.interrupt", "--json"]);
    assert!(r.stdout.contains(&ids[0]) && r.stdout.contains(r#"\"requeued\":false"#), "{}", r.stdout);
    // A flow that says `on_interrupt: requeue` gets a new execution of the
    // same revision and inputs; the trail says which.
    deploy_probe(&env, "ops", "again", &[], json!({"action": "sleep", "secs": 2}), "on_interrupt: requeue\n");
    let cut = start_running(&c, &admin);
    let mut server = crash_and_restart(&env, &mut server, None, &admin, &cut);
    let c = Client::new(&server);
    let detail = interruptions(&env, &cut).remove(0);
    assert_eq!(detail["requeued"], true, "{detail}");
    let again = detail["requeued_as"].as_str().unwrap();
    let rec = wait_ended(&c, &admin, again, Duration::from_secs(30));
    assert_eq!(
        (rec["status"].as_str(), rec["trigger"].as_str()),
        (Some("succeeded"), Some(&*format!("requeue:{cut}")))
    );
    // A crash after the interruption was audited and re-queued but before
    // it was marked: the next start audits it again, names the same
    // re-run, and queues no second one.
    let set_running = "UPDATE executions SET status = 'running' WHERE id = ?1";
    let mut server = crash_and_restart(&env, &mut server, Some(set_running), &admin, &cut);
    let c = Client::new(&server);
    let named: Vec<String> = interruptions(&env, &cut).iter().map(|d| d["requeued_as"].to_string()).collect();
    assert_eq!(named, vec![format!("\"{again}\""); 2]);
    let r = env.run(&["executions", "list", "--json", "--limit", "100"]);
    let reruns = r.json().as_array().unwrap().iter().filter(|x| x["trigger"] == format!("requeue:{cut}")).count();
    assert_eq!(reruns, 1, "{r:#?}");
    // Cut off again, and its stored inputs edited meanwhile: it is not
    // re-queued with none (it would run as something it was not); the
    // trail says why.
    let cut = start_running(&c, &admin);
    let edit_inputs = "UPDATE executions SET inputs = 'not json' WHERE id = ?1";
    let mut server = crash_and_restart(&env, &mut server, Some(edit_inputs), &admin, &cut);
    let c = Client::new(&server);
    let detail = interruptions(&env, &cut).remove(0);
    assert_eq!(detail["requeued"], false, "{detail}");
    assert!(detail["not_requeued"].as_str().unwrap().contains("inputs"), "{detail}");
    let r = env.run(&["executions", "list", "--json", "--limit", "100"]);
    assert!(!r.stdout.contains(&format!("requeue:{cut}")), "{r:#?}");
    // SIGTERM: the running execution finishes, then the server exits 0.
    let (_, v) = c.call("POST", "/api/v1/executions/ops/nap", Some(&admin), Some(&json!({})));
    let id = v["id"].as_str().unwrap().to_owned();
    while c.call("GET", &format!("/api/v1/executions/{id}"), Some(&admin), None).1["status"] != "running" {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.terminate(Duration::from_secs(20)).success(), "{}", server.log());
    let r = env.run(&["executions", "show", &id, "--json"]);
    assert_eq!(r.json()["status"], "succeeded", "{r:#?}");
    // ...unless it outlasts --shutdown-timeout: then it is interrupted.
    // `finally:` runs after a cancel too.
    let finally = format!(
        "    limits: {{ timeout: 60s }}\nfinally:\n  - {{id: clean, plugin: '{}', input: {{action: context}}}}\n",
        component(Plugin::Probe).display()
    );
    deploy_probe(&env, "ops", "spin", &[], json!({"action": "loop"}), &format!("{finally}on_interrupt: requeue\n"));
    let mut server = Server::start(&env, 1, &["--shutdown-timeout", "300ms"]);
    let c = Client::new(&server);
    let (_, v) = c.call("POST", "/api/v1/executions/ops/spin", Some(&admin), Some(&json!({})));
    let id = v["id"].as_str().unwrap().to_owned();
    while c.call("GET", &format!("/api/v1/executions/{id}"), Some(&admin), None).1["status"] != "running" {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.terminate(Duration::from_secs(20)).success());
    assert_eq!(env.run(&["executions", "show", &id, "--json"]).json()["status"], "interrupted");
    // It says `on_interrupt: requeue`: the same revision is queued again
    // for the next start, and the trail names the new execution.
    let r = env.run(&["audit", "list", "--action", "execution.interrupt", "--json"]);
    let rec =
        r.json().as_array().unwrap().iter().find(|x| x["detail"].as_str().unwrap().contains(&id)).cloned().unwrap();
    let detail: Value = serde_json::from_str(rec["detail"].as_str().unwrap()).unwrap();
    let again = detail["requeued_as"].as_str().unwrap_or_else(|| panic!("not re-queued: {rec}\n{}", server.log()));
    let queued = env.run(&["executions", "show", again, "--json"]).json();
    assert_eq!((queued["status"].as_str(), queued["revision"].as_u64()), (Some("queued"), Some(1)), "{queued}");
}

/// Sixteen clients at once, each running executions that read a secret:
/// every one ends succeeded under its own id, each read is audited and the
/// chain verifies. Then a burst queued without waiting and a kill -9 in
/// the middle of it: every execution the server accepted is still there
/// after the restart, and each ends.
#[test]
fn concurrent_clients_and_a_killed_burst_lose_nothing() {
    let env = Env::new();
    env.set_secret("ops", "PW", "burst-secret-77");
    deploy_probe(&env, "ops", "read", &["PW"], json!({"action": "get", "names": ["PW"]}), "");
    let admin = token(&env, "admin", "admin", "", &[]);
    let mut server = Server::start(&env, 2, &[]);
    let ids: Vec<String> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    let c = Client::new(&server);
                    (0..5)
                        .map(|_| {
                            let (st, v) =
                                c.call("POST", "/api/v1/executions/ops/read?wait=60", Some(&admin), Some(&json!({})));
                            assert_eq!((st, v["status"].as_str()), (200, Some("succeeded")), "{v}");
                            c.assert_never_returned("burst-secret-77");
                            v["id"].as_str().unwrap().to_owned()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 80);
    // A burst queued without waiting, cut by kill -9 while it runs.
    let c = Client::new(&server);
    let accepted: Vec<String> = (0..40)
        .map(|_| {
            let (st, v) = c.call("POST", "/api/v1/executions/ops/read", Some(&admin), Some(&json!({})));
            assert_eq!(st, 202, "{v}");
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    server.kill9();
    let server = Server::start(&env, 2, &[]);
    let c = Client::new(&server);
    let mut ran = 0;
    for id in &accepted {
        let rec = wait_ended(&c, &admin, id, Duration::from_secs(60));
        assert!(["succeeded", "interrupted"].contains(&rec["status"].as_str().unwrap()), "{rec}");
        ran += usize::from(rec["status"] == "succeeded");
    }
    assert!(ran >= accepted.len() - 2, "at most the two running when killed are cut off: {ran}");
    drop(server);
    let r = env.run(&["audit", "list", "--action", "secret.read", "--json"]);
    let reads = r.json().as_array().unwrap().len();
    assert!(reads >= 80 + ran, "every read is on the record: {reads}");
    assert!(!r.stdout.contains("burst-secret-77"));
    env.run(&["audit", "verify"]).expect_code(0);
}

/// A deployed plugin is loaded once per server and kept under its pin: an
/// edit to the stored file afterwards runs nothing new, and a server that
/// starts after the edit refuses the flow.
#[test]
fn a_stored_plugin_edited_after_deploy_never_runs() {
    let env = Env::new();
    deploy_probe(&env, "ops", "ping", &[], json!({"action": "print", "text": "pong"}), "");
    let admin = token(&env, "admin", "admin", "", &[]);
    let mut server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    let run = |c: &Client| {
        let (s, v) = c.call("POST", "/api/v1/executions/ops/ping?wait=30", Some(&admin), Some(&json!({})));
        assert_eq!(s, 200, "{v}");
        v["execution"].clone()
    };
    assert_eq!(run(&c)["status"], "succeeded");
    let stored = std::fs::read_dir(env.home().join("plugins")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&stored).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&stored, &bytes).unwrap();
    let rec = run(&c);
    assert_eq!(rec["status"], "succeeded", "the verified copy ran: {rec}");
    server.terminate(Duration::from_secs(20));
    let server = Server::start(&env, 1, &[]);
    let rec = run(&Client::new(&server));
    assert_eq!(rec["status"], "failed", "{rec}");
    let log = Client::new(&server)
        .call("GET", &format!("/api/v1/executions/{}/log", rec["id"].as_str().unwrap()), Some(&admin), None)
        .1;
    assert!(log.as_str().unwrap().contains("refusing to run a different binary"), "{log}");
}

/// Opens `GET /api/v1/executions/{id}/follow` and hands each server-sent
/// event (name, JSON data, the raw bytes of the event) to the channel as it
/// arrives; the channel closes with the stream.
fn follow(server: &Server, token: &str, id: &str) -> std::sync::mpsc::Receiver<(String, Value, String)> {
    let url = format!("{}/api/v1/executions/{id}/follow", server.base);
    let resp = ureq::get(&url).header("Authorization", &format!("Bearer {token}")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let reader = BufReader::new(resp.into_body().into_reader());
        let (mut name, mut data, mut raw) = (String::new(), String::new(), String::new());
        for line in reader.lines().map_while(Result::ok) {
            raw.push_str(&line);
            raw.push('\n');
            if line.is_empty() {
                if !name.is_empty()
                    && tx.send((name.clone(), serde_json::from_str(&data).unwrap(), raw.clone())).is_err()
                {
                    return;
                }
                (name, data, raw) = (String::new(), String::new(), String::new());
            } else if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_owned();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
    });
    rx
}

/// Following an execution: its status as it changes and its log lines as
/// tasks write them, masked, while it runs; the stored log for one that
/// ended; the remote CLI prints the same and exits as `run` would; a
/// revoked token's stream closes; SIGTERM closes every stream.
#[test]
fn follow_streams_status_and_masked_log_lines_while_the_execution_runs() {
    let env = Env::new();
    env.set_secret("ops", "PW", "follow-secret-91");
    let sleep = format!(
        "  - id: nap\n    plugin: {}\n    input: {{\"action\": \"sleep\", \"secs\": 3}}\n",
        component(Plugin::Probe).display()
    );
    let print = json!({"action": "print", "get": "PW", "text": "before follow-secret-91 after"});
    deploy_probe(&env, "ops", "talk", &["PW"], print, &sleep);
    let admin = token(&env, "admin", "admin", "", &[]);
    let bot = token(&env, "bot", "runner", "ops", &[]);
    let outsider = token(&env, "other", "runner", "finance", &[]);
    let mut server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    let (_, v) = c.call("POST", "/api/v1/executions/ops/talk", Some(&admin), Some(&json!({})));
    let id = v["id"].as_str().unwrap().to_owned();
    // When the printed line arrives, the execution (its 3 s nap) still runs.
    let mut events: Vec<(String, Value, String)> = Vec::new();
    let mut status_at_line = None;
    for e in follow(&server, &bot, &id) {
        let printed = e.0 == "log" && e.1["text"].as_str().unwrap().contains("before *** after");
        if printed && status_at_line.is_none() {
            let (_, rec) = c.call("GET", &format!("/api/v1/executions/{id}"), Some(&admin), None);
            status_at_line = Some(rec["status"].clone());
        }
        events.push(e);
    }
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    let raw: String = events.iter().map(|e| e.2.as_str()).collect();
    assert!(!raw.contains("follow-secret-91"), "a value crossed the stream:\n{raw}");
    assert_eq!((names.first(), names.last()), (Some(&"status"), Some(&"end")), "{raw}");
    assert_eq!(events.last().unwrap().1["status"], "succeeded", "{raw}");
    assert_eq!(status_at_line, Some(json!("running")), "the log line was not sent while the execution ran:\n{raw}");
    // Following an ended execution: its stored log, then the end.
    let again: Vec<_> = follow(&server, &bot, &id).iter().collect();
    let text: String = again.iter().filter(|e| e.0 == "log").map(|e| e.1["text"].as_str().unwrap()).collect();
    assert!(text.contains("before *** after") && !text.contains("follow-secret-91"), "{again:?}");
    assert_eq!(again.last().unwrap().0, "end");
    // Outside the token's namespace: refused before any event, as if it
    // did not exist (the outsider may not read executions there).
    let (s, v) = c.call("GET", &format!("/api/v1/executions/{id}/follow"), Some(&outsider), None);
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (404, format!("no execution {id}: see `host executions list`").as_str())
    );
    // The remote CLI: the log on stderr, the outcome on stdout, run's exit code.
    let mut cmd = env.host();
    cmd.env("KEYHOLE_ADDR", &server.base).env("KEYHOLE_TOKEN", &bot).env("KEYHOLE_HOME", env.home().join("client"));
    cmd.args(["executions", "follow", &id]);
    let r = env.run_with(&mut cmd, b"");
    r.expect_code(0);
    assert!(r.stderr.contains("before *** after") && r.stdout.contains("succeeded"), "{r:#?}");
    assert!(!r.stderr.contains("follow-secret-91") && !r.stdout.contains("follow-secret-91"), "{r:#?}");
    // A revoked token's stream closes; so does every stream at SIGTERM.
    let (_, v) = c.call("POST", "/api/v1/executions/ops/talk", Some(&admin), Some(&json!({})));
    let second = v["id"].as_str().unwrap().to_owned();
    let by_bot = follow(&server, &bot, &second);
    let by_admin = follow(&server, &admin, &second);
    assert_eq!(by_bot.recv().unwrap().0, "status");
    let (s, _) = c.call("DELETE", "/api/v1/tokens/bot", Some(&admin), None);
    assert_eq!(s, 200);
    let closed = by_bot.iter().last().unwrap();
    assert_eq!(closed.0, "closed", "{closed:?}");
    assert!(closed.1["error"].as_str().unwrap().contains("revoked"), "{closed:?}");
    let (_, v) = c.call("POST", "/api/v1/executions/ops/talk", Some(&admin), Some(&json!({})));
    let queued = v["id"].as_str().unwrap().to_owned();
    let waiting = follow(&server, &admin, &queued);
    assert_eq!(waiting.recv().unwrap().1["status"], "queued");
    assert!(server.terminate(Duration::from_secs(20)).success(), "{}", server.log());
    let last = waiting.iter().last().unwrap();
    assert!(last.0 == "closed" && last.1["error"].as_str().unwrap().contains("stopping"), "{last:?}");
    assert!(matches!(by_admin.iter().last().unwrap().0.as_str(), "closed" | "end"));
}

/// Webhooks: a key in the URL, or a GitHub-style signature of the body; the
/// body and chosen headers reach the task as `{{ trigger.* }}`; a wrong
/// key, flow or signature is refused, audited and counted as a guess; no
/// answer, audit record or log line carries the key or the signing secret.
#[test]
fn webhooks_start_a_flow_with_a_key_or_a_signature_and_refuse_the_rest() {
    let env = Env::new();
    let key = "hook-key-value-7f3a91c2";
    let signing = "gh-signing-secret-55e0d1";
    env.set_secret("ops", "HOOK_KEY", key);
    env.set_secret("ops", "GH_SECRET", signing);
    env.set_secret("ops", "S", "task-secret-value-31");
    deploy_probe(
        &env,
        "ops",
        "hooked",
        &["S"],
        json!({"action": "get", "names": ["{{ trigger.body.secret }}", "{{ trigger.headers.X-Event }}"]}),
        "triggers:\n  - {id: hook, webhook: {key_secret: HOOK_KEY, headers: [X-Event], max_body: 1KiB}}\n  \
         - {id: gh, webhook: {signature: {header: X-Hub-Signature-256, secret: GH_SECRET}, headers: [X-Event]}}\n",
    );
    let admin = token(&env, "admin", "admin", "", &[]);
    let mut server = Server::start(&env, 2, &["--max-auth-failures", "4"]);
    let c = Client::new(&server);
    let json_body = br#"{"secret": "S"}"#;
    let ct = ("Content-Type", "application/json");
    // The key: 202, and the task sees the body and the chosen header.
    let (s, v) = c.post_raw(&format!("/api/v1/webhooks/ops/hooked/{key}"), &[ct, ("X-Event", "push")], json_body);
    assert_eq!(s, 202, "{v}");
    let rec = wait_ended(&c, &admin, v["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert_eq!((rec["trigger"].as_str(), rec["created_by"].as_str()), (Some("webhook:hook"), Some("webhook hook")));
    let out = &rec["tasks"][0]["output"];
    assert_eq!(out["S"]["sha256"], hex::encode(keyhole::crypto::sha256(b"task-secret-value-31")), "{out}");
    assert_eq!(out["push"]["error"], "denied", "the header reached the task: {out}");
    // A retried delivery with the same Idempotency-Key starts nothing new.
    let retry = [ct, ("Idempotency-Key", "delivery-1")];
    let (_, a) = c.post_raw(&format!("/api/v1/webhooks/ops/hooked/{key}"), &retry, json_body);
    let (_, b) = c.post_raw(&format!("/api/v1/webhooks/ops/hooked/{key}"), &retry, json_body);
    assert_eq!(
        (a["id"].clone(), a["created"].clone(), b["created"].clone()),
        (b["id"].clone(), json!(true), json!(false))
    );
    // That delivery had no X-Event: the listed header renders empty.
    let rec = wait_ended(&c, &admin, a["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert!(rec["tasks"][0]["output"].get("").is_some(), "{rec}");
    // Past the trigger's max_body: 413; exactly at it: accepted.
    let (s, v) = c.post_raw(&format!("/api/v1/webhooks/ops/hooked/{key}"), &[ct], &[b'x'; 1025]);
    assert_eq!(s, 413, "{v}");
    let padded = format!("{{\"secret\": \"S\", \"pad\": \"{}\"}}", "x".repeat(1024 - 26));
    assert_eq!(padded.len(), 1024);
    let (s, v) = c.post_raw(&format!("/api/v1/webhooks/ops/hooked/{key}"), &[ct], padded.as_bytes());
    assert_eq!(s, 202, "{v}");
    // An Idempotency-Key longer than 128 characters is not one: each
    // delivery starts its own execution.
    let long = "k".repeat(129);
    let retry = [ct, ("Idempotency-Key", long.as_str())];
    let (_, a) = c.post_raw(&format!("/api/v1/webhooks/ops/hooked/{key}"), &retry, json_body);
    let (_, b) = c.post_raw(&format!("/api/v1/webhooks/ops/hooked/{key}"), &retry, json_body);
    assert_eq!((a["created"].clone(), b["created"].clone()), (json!(true), json!(true)), "{a} {b}");
    assert_ne!(a["id"], b["id"]);
    // GitHub's style: the signature of the raw body under GH_SECRET.
    let sig = format!("sha256={}", hex::encode(keyhole::crypto::hmac_sha256(signing.as_bytes(), json_body)));
    let (s, v) = c.post_raw(
        "/api/v1/webhooks/ops/hooked/gh",
        &[ct, ("X-Hub-Signature-256", &sig), ("X-Event", "ping")],
        json_body,
    );
    assert_eq!(s, 202, "{v}");
    let rec = wait_ended(&c, &admin, v["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!((rec["status"].as_str(), rec["trigger"].as_str()), (Some("succeeded"), Some("webhook:gh")), "{rec}");
    // Refusals: a body that is not the one signed (401), a wrong key and an
    // unknown flow (the same 404), each audited.
    let (s, _) = c.post_raw("/api/v1/webhooks/ops/hooked/gh", &[ct, ("X-Hub-Signature-256", &sig)], b"{}");
    assert_eq!(s, 401);
    let (s, wrong) = c.post_raw("/api/v1/webhooks/ops/hooked/hook-key-value-7f3a91c3", &[ct], json_body);
    let (s2, unknown) = c.post_raw(&format!("/api/v1/webhooks/ops/nosuch/{key}"), &[ct], json_body);
    assert_eq!((s, s2), (404, 404));
    assert_eq!(wrong, unknown, "a wrong key and a missing flow look alike");
    // Four refusals from this address: the next request is refused unread,
    // even with the right key.
    let _ = c.post_raw("/api/v1/webhooks/ops/hooked/guess", &[ct], json_body);
    let (s, _) = c.post_raw(&format!("/api/v1/webhooks/ops/hooked/{key}"), &[ct], json_body);
    assert_eq!(s, 429);
    let r = env.run(&["audit", "list", "--action", "trigger.webhook", "--json"]);
    r.expect_code(0);
    let records: Vec<Value> = r.json().as_array().unwrap().clone();
    let denied = records.iter().filter(|r| r["outcome"] == "denied").count();
    assert_eq!(denied, 4, "{records:?}");
    assert!(r.stdout.contains("the signature does not match the body"), "{}", r.stdout);
    assert!(
        records
            .iter()
            .any(|r| r["outcome"] == "ok" && r["secret"] == "HOOK_KEY" && r["actor"] == "hooked webhook:hook"),
        "the record names the trigger and the secret it checked: {records:?}"
    );
    server.terminate(Duration::from_secs(20));
    let log = server.log();
    let trail = env.run(&["audit", "list", "--json"]).stdout;
    for value in [key, signing, "task-secret-value-31", "hook-key-value-7f3a91c3"] {
        c.assert_never_returned(value);
        assert!(!trail.contains(value), "the audit trail holds {value}");
        assert!(!log.contains(value), "the server log holds {value}");
    }
}

/// Schedules: a per-second cron fires while the server runs; after a
/// kill -9 and a few seconds down, `recover: all` queues the missed
/// firings (the task sees `{{ trigger.missed }}`) and `recover: none`
/// skips them, saying so in the audit trail.
#[test]
fn schedules_fire_on_time_and_recover_missed_firings_as_the_flow_says() {
    let env = Env::new();
    deploy_probe(
        &env,
        "ops",
        "ticker",
        &[],
        json!({"action": "get", "names": ["{{ trigger.id }}-{{ trigger.missed }}"]}),
        "triggers:\n  - {id: catchup, schedule: {cron: '* * * * * *', recover: all}}\n  \
         - {id: skip, schedule: {cron: '* * * * * *', timezone: Europe/Paris}}\n",
    );
    let admin = token(&env, "admin", "admin", "", &[]);
    let outputs = |c: &Client| -> Vec<String> {
        let (_, list) = c.call("GET", "/api/v1/executions?flow=ticker&limit=1000", Some(&admin), None);
        list.as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["tasks"][0]["output"].as_object().and_then(|o| o.keys().next().cloned()))
            .collect()
    };
    let mut server = Server::start(&env, 2, &[]);
    let c = Client::new(&server);
    let end = Instant::now() + Duration::from_secs(20);
    while !(outputs(&c).contains(&"catchup-false".to_owned()) && outputs(&c).contains(&"skip-false".to_owned())) {
        assert!(Instant::now() < end, "no on-time firing of both schedules: {:?}\n{}", outputs(&c), server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    server.kill9();
    std::thread::sleep(Duration::from_secs(3));
    let server = Server::start(&env, 2, &[]);
    let c = Client::new(&server);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = outputs(&c);
        let missed = seen.iter().filter(|o| *o == "catchup-true").count();
        if missed >= 2 {
            assert!(!seen.contains(&"skip-true".to_owned()), "recover: none queued a missed firing: {seen:?}");
            break;
        }
        assert!(Instant::now() < end, "the missed firings were not recovered: {seen:?}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = env.run(&["audit", "list", "--action", "trigger.schedule", "--json"]);
    let skips = r.json();
    let skip = skips.as_array().unwrap().iter().find(|r| r["actor"] == "ticker schedule:skip").expect("a skip record");
    assert!(skip["reason"].as_str().unwrap().contains("missed while the server was down (recover: none)"), "{skip}");
    let detail: Value = serde_json::from_str(skip["detail"].as_str().unwrap()).unwrap();
    assert!(detail["skipped"].as_u64().unwrap() >= 2, "{skip}");
    // A new revision without the schedules: the running server follows it
    // and queues nothing more (after a firing already under way).
    deploy_probe(&env, "ops", "ticker", &[], json!({"action": "context"}), "");
    std::thread::sleep(Duration::from_millis(1500));
    let count =
        || c.call("GET", "/api/v1/executions?flow=ticker&limit=1000", Some(&admin), None).1.as_array().unwrap().len();
    let before = count();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(count(), before, "the old revision's schedules still fire\n{}", server.log());
}

#[test]
fn the_server_refuses_a_second_instance_plain_http_off_loopback_and_guessing() {
    let env = Env::new();
    let admin = token(&env, "admin", "admin", "", &[]);
    let server = Server::start(&env, 1, &[]);
    let r = env.run(&["serve", "--listen", "127.0.0.1:0"]);
    r.expect_code(2);
    assert!(r.stderr.contains("another `host serve` holds"), "{r:#?}");
    // Refused on the address itself, before anything is bound or sent.
    let e = keyhole::server::check_listen(&"0.0.0.0:8420".parse().unwrap(), false).unwrap_err();
    assert!(e.to_string().contains("without TLS"), "{e}");
    assert!(keyhole::server::check_listen(&"10.1.2.3:8420".parse().unwrap(), true).is_ok());
    assert!(keyhole::server::check_listen(&"[::1]:8420".parse().unwrap(), false).is_ok());
    // Oversized headers are refused before authentication; a normal request
    // with the same token still works.
    let c = Client::new(&server);
    let url = format!("{}/api/v1/tokens/self", server.base);
    let big = "x".repeat(40 << 10);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp =
        agent.get(&url).header("Authorization", &format!("Bearer {admin}")).header("X-Pad", &big).call().unwrap();
    assert_eq!(resp.status().as_u16(), 431);
    assert!(resp.body_mut().read_to_string().unwrap().contains("over the limit of 32768"));
    assert_eq!(c.call("GET", "/api/v1/tokens/self", Some(&admin), None).0, 200);
    // Guessing tokens: after a few failures the address is turned away, even with a good token.
    for i in 0..10 {
        let (s, _) = c.call("GET", "/api/v1/tokens/self", Some(&format!("kh_guess{i}")), None);
        assert_eq!(s, 401);
    }
    let (s, _) = c.call("GET", "/api/v1/tokens/self", Some(&admin), None);
    assert_eq!(s, 429);
    // An edited token row authenticates no one (checked on a fresh token).
    drop(server);
    let other = token(&env, "widened", "runner", "marketing", &[]);
    let db = rusqlite::Connection::open(env.db()).unwrap();
    db.execute("UPDATE tokens SET bindings = '[{\"role\":\"admin\",\"namespace\":\"\"}]' WHERE name = 'widened'", [])
        .unwrap();
    let server = Server::start(&env, 1, &[]);
    let c = Client::new(&server);
    let (s, _) = c.call("GET", "/api/v1/tokens/self", Some(&other), None);
    assert_eq!(s, 401);
    let r = env.run(&["token", "list"]);
    assert!(r.stdout.lines().any(|l| l.contains("widened") && l.contains("tampered")), "{}", r.stdout);
}

#[test]
fn tls_serves_the_api_and_the_remote_cli_trusts_a_private_ca() {
    let env = Env::new();
    if !private_ca(env.home()) {
        return;
    }
    let admin = token(&env, "admin", "admin", "", &[]);
    let cert = env.home().join("srv.pem");
    let key = env.home().join("srv.key");
    let server = Server::start(&env, 1, &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    assert!(server.base.starts_with("https://127.0.0.1:"), "{}", server.base);
    let mut cmd = env.host();
    cmd.env("KEYHOLE_ADDR", &server.base)
        .env("KEYHOLE_TOKEN", &admin)
        .env("KEYHOLE_CA_FILE", env.home().join("ca.pem"))
        .args(["executions", "list"]);
    env.run_with(&mut cmd, b"").expect_code(0);
    let mut cmd = env.host();
    cmd.env("KEYHOLE_ADDR", &server.base).env("KEYHOLE_TOKEN", &admin).args(["executions", "list"]);
    let r = env.run_with(&mut cmd, b"");
    r.expect_code(4);
    assert!(r.stderr.contains("cannot reach the server"), "an unknown CA is refused: {r:#?}");
}

#[test]
fn the_readme_documents_every_route_with_its_permission() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    for r in ROUTES {
        let row = format!("| `{} {}` | ", r.method, r.path);
        let line = readme.lines().find(|l| l.starts_with(&row));
        let line = line.unwrap_or_else(|| panic!("README.md has no row for {} {}", r.method, r.path));
        match r.permission {
            Some(p) => {
                assert!(line.contains(&format!("`{}`", p.as_str())), "README row names the wrong permission: {line}")
            }
            None => assert!(r.scope == Scope::Public || r.scope == Scope::Authenticated, "{line}"),
        }
    }
}

/// A flow's `concurrency` under 20 simultaneous starts from 4 clients and 3
/// workers: `queue` never runs two at once and runs every one, oldest
/// first; `cancel` and `fail` run exactly `limit` and end the rest at once.
#[test]
fn a_flows_concurrency_limit_is_exact_under_simultaneous_starts() {
    let env = Env::new();
    let nap = |secs: u64| json!({"action": "sleep", "secs": secs});
    deploy_probe(&env, "ops", "serial", &[], nap(0), "concurrency: {limit: 1, behavior: queue}\n");
    deploy_probe(&env, "ops", "single", &[], nap(3), "concurrency: {limit: 1, behavior: cancel}\n");
    deploy_probe(&env, "ops", "pair", &[], nap(3), "concurrency: {limit: 2, behavior: fail}\n");
    let admin = token(&env, "admin", "admin", "", &[]);
    let server = Server::start(&env, 3, &[]);
    let burst = |flow: &str| -> Vec<String> {
        std::thread::scope(|s| {
            let clients: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let c = Client::new(&server);
                        (0..5)
                            .map(|_| {
                                let (st, v) = c.call(
                                    "POST",
                                    &format!("/api/v1/executions/ops/{flow}"),
                                    Some(&admin),
                                    Some(&json!({})),
                                );
                                assert!(st == 201 || st == 200 || st == 202, "{st} {v}");
                                v["id"].as_str().unwrap().to_owned()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            clients.into_iter().flat_map(|h| h.join().unwrap()).collect()
        })
    };
    let c = Client::new(&server);
    let ended = |ids: &[String]| -> Vec<Value> {
        ids.iter().map(|id| wait_ended(&c, &admin, id, Duration::from_secs(120))).collect()
    };

    let recs = ended(&burst("serial"));
    assert!(recs.iter().all(|r| r["status"] == "succeeded"), "every queued one ran");
    // Never two at once: the intervals [started, ended] do not overlap.
    let mut spans: Vec<(String, String)> =
        recs.iter().map(|r| (r["started"].as_str().unwrap().into(), r["ended"].as_str().unwrap().into())).collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "two executions ran at once: {w:?}");
    }

    for (flow, limit, over) in [("single", 1, "cancelled"), ("pair", 2, "failed")] {
        let recs = ended(&burst(flow));
        let ran = recs.iter().filter(|r| r["status"] == "succeeded").count();
        let refused = recs.iter().filter(|r| r["status"] == over).count();
        assert_eq!((ran, refused), (limit, 20 - limit), "{flow}: {recs:#?}");
        let why =
            recs.iter().find(|r| r["status"] == over).unwrap()["tasks"][0]["skipped"].as_str().unwrap().to_owned();
        assert!(why.contains(&format!("its concurrency limit is {limit}")), "{why}");
    }
}

/// An approval gate: the execution pauses before the gated task (none of
/// its secrets read), a decider needs `execution:approve` and, with
/// `distinct_from_trigger`, must not be who started it; a rejection skips
/// the task and runs `finally:`; no decision in time is a rejection.
#[test]
fn an_approval_gate_pauses_the_execution_until_another_principal_decides() {
    let env = Env::new();
    env.set_secret("prod", "DEPLOY_KEY", "deploy-key-secret-31");
    let probe = component(Plugin::Probe);
    let file = env.home().join("release.yaml");
    let flow = |timeout: &str| {
        format!(
            "id: release\nnamespace: prod\ntasks:\n  - id: build\n    plugin: '{p}'\n    input: {{action: context}}\n  \
             - id: deploy\n    plugin: '{p}'\n    secrets: [DEPLOY_KEY]\n    \
               approval: {{distinct_from_trigger: true, timeout: {timeout}}}\n    \
               input: {{action: get, names: [DEPLOY_KEY]}}\nfinally:\n  \
             - {{id: clean, plugin: '{p}', input: {{action: context}}}}\n",
            p = probe.display()
        )
    };
    std::fs::write(&file, flow("1h")).unwrap();
    env.run(&["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
    releaser_role(&env);
    let releaser = token(&env, "rel", "releaser", "prod", &[]);
    let runner = token(&env, "run", "runner", "prod", &[]);
    let approver = token(&env, "ann", "approver", "prod", &[]);
    let admin = token(&env, "admin", "admin", "", &[]);
    let server = Server::start(&env, 2, &[]);
    let c = Client::new(&server);
    let start = |tok: &str| {
        let (s, v) = c.call("POST", "/api/v1/executions/prod/release", Some(tok), Some(&json!({})));
        assert!(s == 201 || s == 202, "{s} {v}");
        v["id"].as_str().unwrap().to_owned()
    };
    let paused = |id: &str| {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, rec) = c.call("GET", &format!("/api/v1/executions/{id}"), Some(&admin), None);
            if rec["status"] == "paused" {
                return rec;
            }
            assert!(Instant::now() < end, "never paused: {rec}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let decide = |tok: &str, id: &str, verb: &str| {
        c.call(
            "POST",
            &format!("/api/v1/executions/{id}/{verb}"),
            Some(tok),
            Some(&json!({"task": "deploy", "comment": "ok by me"})),
        )
    };
    let reads = || env.run(&["audit", "list", "--action", "secret.read", "--json"]).json().as_array().unwrap().len();

    let id = start(&releaser);
    let rec = paused(&id);
    assert_eq!(
        (rec["tasks"][0]["status"].as_str(), rec["tasks"][1]["status"].as_str()),
        (Some("succeeded"), Some("waiting"))
    );
    assert_eq!(reads(), 0, "the gated task's secret was read before approval");
    // Without the permission; then the one who started it.
    assert_eq!(decide(&runner, &id, "approve").0, 403);
    let (s, v) = decide(&releaser, &id, "approve");
    assert_eq!(s, 403, "{v}");
    assert!(v.to_string().contains("distinct_from_trigger"), "{v}");
    let (s, v) = decide(&approver, &id, "approve");
    assert_eq!(s, 200, "{v}");
    let rec = wait_ended(&c, &admin, &id, Duration::from_secs(30));
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert!(rec["tasks"][1]["approval"].as_str().unwrap().starts_with("approved by ann (tok-"), "{rec}");
    assert_eq!(reads(), 1);
    assert_eq!(decide(&approver, &id, "approve").0, 409, "decided once");
    // The decision precedes the read in the audit trail, with who decided.
    let r = env.run(&["audit", "list", "--json"]).json();
    let seq = |action: &str| r.as_array().unwrap().iter().position(|x| x["action"] == action).unwrap();
    assert!(seq("execution.approve") < seq("secret.read"), "{r:#}");
    let denied =
        r.as_array().unwrap().iter().filter(|x| x["action"] == "execution.approve" && x["outcome"] == "denied").count();
    assert_eq!(denied, 1, "the starter's refused approval is audited");

    // Rejected: the task does not run, `finally:` does.
    let id = start(&runner);
    paused(&id);
    let (s, _) = decide(&approver, &id, "reject");
    assert_eq!(s, 200);
    let rec = wait_ended(&c, &admin, &id, Duration::from_secs(30));
    assert_eq!(rec["status"], "failed", "{rec}");
    assert_eq!(rec["tasks"][1]["status"], "skipped");
    assert!(rec["tasks"][1]["skipped"].as_str().unwrap().contains("rejected by ann"), "{rec}");
    assert_eq!(rec["tasks"][2]["status"], "succeeded", "finally ran: {rec}");
    assert_eq!(reads(), 1, "a rejected task reads nothing");

    // Nobody decides in time: rejected.
    std::fs::write(&file, flow("1s")).unwrap();
    env.run_with(
        env.host()
            .args(["flow", "deploy", file.to_str().unwrap()])
            .env("KEYHOLE_ADDR", &server.base)
            .env("KEYHOLE_TOKEN", &admin),
        b"",
    )
    .expect_code(0);
    let id = start(&runner);
    let rec = wait_ended(&c, &admin, &id, Duration::from_secs(30));
    assert!(rec["tasks"][1]["skipped"].as_str().unwrap().contains("no decision within"), "{rec}");
    assert_eq!(decide(&approver, &id, "approve").0, 409, "too late");
}

#[test]
fn a_start_that_waits_answers_when_the_execution_ends_or_when_the_wait_runs_out() {
    let env = Env::new();
    deploy_probe(&env, "ops", "nap", &[], json!({"action": "sleep", "secs": 1}), "");
    let admin = token(&env, "admin", "admin", "", &[]);
    let server = Server::start(&env, 2, &[]);
    let c = Client::new(&server);
    // The wait runs out first: 202, the record as it stands.
    let started = Instant::now();
    let (s, v) = c.call("POST", "/api/v1/executions/ops/nap?wait=0.3", Some(&admin), Some(&json!({})));
    let took = started.elapsed();
    assert_eq!(s, 202, "{v}");
    assert!(["queued", "running"].contains(&v["status"].as_str().unwrap()), "{v}");
    assert!(took >= Duration::from_millis(300), "answered after {took:?}");
    // It ends first: 200 and the final record (a missed end would answer
    // 202 with the record as it stood at the deadline).
    let (s, v) = c.call("POST", "/api/v1/executions/ops/nap?wait=30", Some(&admin), Some(&json!({})));
    assert_eq!((s, v["status"].as_str()), (200, Some("succeeded")), "{v}");
    assert_eq!(v["execution"]["tasks"][0]["status"], "succeeded", "{v}");
}
