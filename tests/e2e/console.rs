//! The web console: its sessions, headers and CSRF checks over HTTP, and
//! the pages in a real Chromium driven by Playwright (`console.py`).
//!
//! The browser test needs Debian's `chromium` and Playwright from PyPI
//! (scripts/test.sh installs both); without them it fails, unless
//! KEYHOLE_ALLOW_NO_BROWSER=1 is set, in which case it says loudly that it
//! was skipped.

use crate::plugins::{Plugin, component, workspace};
use crate::server::{Client, Server, token};
use crate::support::*;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

const PW: &str = "console-pw-secret-7731";
const OTHER: &str = "console-other-secret-4410";

/// A browser-like client: keeps the session cookie, sends the CSRF token
/// when told, returns status, headers and body.
struct Browser {
    agent: ureq::Agent,
    base: String,
    cookie: Option<String>,
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl Browser {
    fn new(server: &Server) -> Browser {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Browser { agent, base: server.base.clone(), cookie: None }
    }

    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Answer {
        let url = format!("{}{path}", self.base);
        let cookie = self.cookie.as_ref().map(|c| format!("keyhole_session={c}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(c) = &cookie {
            all.push(("Cookie", c));
        }
        let resp = if let Some(b) = body {
            let mut r = match method {
                "PUT" => self.agent.put(&url),
                _ => self.agent.post(&url),
            };
            for (k, v) in &all {
                r = r.header(*k, *v);
            }
            r.header("Content-Type", "application/json").send(&serde_json::to_vec(b).unwrap()[..])
        } else if method == "GET" || method == "DELETE" {
            let mut r = if method == "GET" { self.agent.get(&url) } else { self.agent.delete(&url) };
            for (k, v) in &all {
                r = r.header(*k, *v);
            }
            r.call()
        } else {
            let mut r = if method == "PUT" { self.agent.put(&url) } else { self.agent.post(&url) };
            for (k, v) in &all {
                r = r.header(*k, *v);
            }
            r.send(&b""[..])
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let headers =
            resp.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        Answer { status, headers, body }
    }

    /// Signs in with `token`: keeps the cookie, returns the CSRF token.
    fn sign_in(&mut self, token: &str) -> (Answer, String) {
        let a = self.send("POST", "/api/v1/session", &[("Authorization", &format!("Bearer {token}"))], None);
        assert_eq!(a.status, 201, "{}", a.body);
        let set = a.header("set-cookie").expect("no Set-Cookie").to_owned();
        let value = set.split(';').next().unwrap().strip_prefix("keyhole_session=").unwrap().to_owned();
        self.cookie = Some(value);
        let csrf = a.json()["csrf"].as_str().unwrap().to_owned();
        (a, csrf)
    }
}

fn audit_reasons(env: &Env, action: &str) -> Vec<String> {
    let r = env.run(&["audit", "list", "--action", action, "--json"]);
    r.expect_code(0);
    let list: Vec<Value> = serde_json::from_str(&r.stdout).unwrap();
    list.iter().map(|r| r["reason"].as_str().unwrap_or("").to_owned()).collect()
}

#[test]
fn every_response_carries_the_security_headers_and_the_console_is_served() {
    let env = Env::new();
    let server = Server::start(&env, 1, &[]);
    let b = Browser::new(&server);
    for path in ["/", "/console/app.js", "/console/app.css", "/api/v1/health", "/api/v1/nothing", "/nothing"] {
        let a = b.send("GET", path, &[], None);
        let csp = a.header("content-security-policy").unwrap_or_else(|| panic!("{path}: no CSP"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "{path}: {csp}");
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(a.header("referrer-policy"), Some("no-referrer"), "{path}");
        assert_eq!(a.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(a.header("cache-control"), Some("no-store"), "{path}");
    }
    let page = b.send("GET", "/", &[], None);
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    // No inline script or style, nothing from another origin.
    assert!(!page.body.contains("<script>") && !page.body.contains("style="), "{}", page.body);
    assert!(!page.body.contains("http://") && !page.body.contains("https://"), "{}", page.body);
    let script = b.send("GET", "/console/app.js", &[], None).body;
    assert!(!script.contains("innerHTML") && !script.contains("outerHTML") && !script.contains("eval("));
    assert_eq!(b.send("GET", "/nothing", &[], None).status, 404);
    let api_miss = b.send("GET", "/api/v1/nothing", &[], None);
    assert_eq!(api_miss.status, 404);
    assert!(api_miss.json()["error"].as_str().is_some_and(|e| e.contains("openapi")), "{}", api_miss.body);
}

#[test]
fn a_console_session_is_a_strict_cookie_with_csrf_that_ends_with_sign_out_revocation_or_idleness() {
    let env = Env::new();
    env.set_secret("finance", "PW", PW);
    let manager = token(&env, "mgr", "secret-manager", "finance", &[]);
    let runner = token(&env, "run", "runner", "finance", &[]);
    let doomed = token(&env, "doomed", "secret-manager", "finance", &[]);
    let server = Server::start(&env, 1, &["--session-idle", "2s"]);
    let mut b = Browser::new(&server);

    // A wrong token never becomes a session.
    let bad = b.send("POST", "/api/v1/session", &[("Authorization", &format!("Bearer kh_{}", "A".repeat(43)))], None);
    assert_eq!(bad.status, 401);
    assert!(bad.header("set-cookie").is_none());

    let (a, csrf) = b.sign_in(&manager);
    let set = a.header("set-cookie").unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP on loopback: {set}");
    assert!(!a.body.contains(&manager), "the answer repeats the token");
    assert!(audit_reasons(&env, "session.create").iter().any(|r| r.contains("mgr")));

    // Reads need only the cookie; changes need the CSRF token too.
    let me = b.send("GET", "/api/v1/session", &[], None);
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["csrf"], csrf);
    let rotate = json!({"generate": {"length": 24, "charset": "hex"}, "rotate": true});
    let no_csrf = b.send("PUT", "/api/v1/secrets/finance/PW", &[], Some(&rotate));
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    assert!(no_csrf.body.contains("CSRF"), "{}", no_csrf.body);
    let wrong = b.send("PUT", "/api/v1/secrets/finance/PW", &[("X-CSRF-Token", "not-it")], Some(&rotate));
    assert_eq!(wrong.status, 403);
    assert!(audit_reasons(&env, "auth.failed").iter().any(|r| r.contains("CSRF")), "CSRF refusals are audited");
    let ok = b.send("PUT", "/api/v1/secrets/finance/PW", &[("X-CSRF-Token", &csrf)], Some(&rotate));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["version"], "2");
    assert!(!ok.body.contains(PW));
    // The generated value is stored (a task would read 48 hex characters), never shown.
    let described = b.send("GET", "/api/v1/secrets/finance/PW", &[], None).json();
    assert_eq!(described["current_version"], 2, "{described}");
    let rotated = audit_reasons(&env, "secret.rotate");
    assert_eq!(rotated.len(), 1, "{rotated:?}");

    // The permissions the console asks for are authz's answer.
    let p = b.send("GET", "/api/v1/permissions?namespace=finance.sub", &[], None).json();
    assert_eq!(p["permissions"], json!(["secret:list", "secret:write", "secret:revoke"]), "{p}");
    let p = b.send("GET", "/api/v1/permissions?namespace=marketing", &[], None).json();
    assert_eq!(p["permissions"], json!([]), "{p}");

    // A runner's session is refused the same as its bearer token.
    let mut r = Browser::new(&server);
    let (_, rcsrf) = r.sign_in(&runner);
    let refused = r.send("PUT", "/api/v1/secrets/finance/PW", &[("X-CSRF-Token", &rcsrf)], Some(&rotate));
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("secret:write"), "{}", refused.body);

    // Sign out ends the session for good.
    let out = b.send("DELETE", "/api/v1/session", &[("X-CSRF-Token", &csrf)], None);
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(b.send("GET", "/api/v1/session", &[], None).status, 401);
    assert_eq!(audit_reasons(&env, "session.end").len(), 1);

    // Revoking the token ends its sessions at once.
    let mut d = Browser::new(&server);
    d.sign_in(&doomed);
    assert_eq!(d.send("GET", "/api/v1/secrets", &[], None).status, 200);
    env.run(&["token", "revoke", "doomed"]).expect_code(0);
    assert_eq!(d.send("GET", "/api/v1/secrets", &[], None).status, 401);

    // Idle for longer than --session-idle: gone.
    let (_, _) = r.sign_in(&runner);
    assert_eq!(r.send("GET", "/api/v1/session", &[], None).status, 200);
    std::thread::sleep(Duration::from_millis(2300));
    assert_eq!(r.send("GET", "/api/v1/session", &[], None).status, 401);
    assert!(audit_reasons(&env, "auth.failed").iter().any(|r| r.contains("console session expired")));
    // Stale cookies are not guesses: the address is not locked out.
    for _ in 0..15 {
        assert_eq!(r.send("GET", "/api/v1/session", &[], None).status, 401);
    }
    r.cookie = None;
    r.sign_in(&runner);
}

fn playwright_ready() -> bool {
    let chromium = std::path::Path::new("/usr/bin/chromium").exists();
    let pw = Command::new("python3").args(["-c", "import playwright.sync_api"]).status().is_ok_and(|s| s.success());
    if chromium && pw {
        return true;
    }
    if std::env::var_os("KEYHOLE_ALLOW_NO_BROWSER").is_some() {
        eprintln!(
            "\n*** SKIPPED: Chromium (/usr/bin/chromium: {chromium}) or Playwright (python3 -m playwright: {pw}) \
             is missing; the web console browser test did not run ***\n"
        );
        return false;
    }
    panic!(
        "the console test needs Debian's chromium and `pip install playwright` (scripts/test.sh installs both), \
         or KEYHOLE_ALLOW_NO_BROWSER=1 to skip loudly"
    );
}

/// Writes `text` as a flow file and deploys it.
fn deploy(env: &Env, name: &str, text: &str) {
    let file = env.home().join(name);
    std::fs::write(&file, text).unwrap();
    env.run(&["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
}

#[test]
fn the_console_in_a_real_browser_runs_reads_rotates_approves_and_audits_by_role() {
    if !playwright_ready() {
        return;
    }
    let env = Env::new();
    env.set_secret("finance", "PW", PW);
    env.set_secret("finance", "OTHER", OTHER);
    let p = component(Plugin::Probe);
    let p = p.display();
    deploy(
        &env,
        "report.yaml",
        &format!(
            "id: report\nnamespace: finance\ninputs:\n  - {{id: day, type: string, required: true, description: The day to report}}\n  \
             - {{id: count, type: number, default: 3}}\n  - {{id: loud, type: boolean, default: false}}\ntasks:\n  \
             - {{id: fetch, plugin: '{p}', depends_on: [], secrets: [PW], input: {{action: get, names: [PW], wait_ms: 2500}}}}\n  \
             - {{id: leak, plugin: '{p}', depends_on: [], secrets: [PW], input: {{action: leak, name: PW}}}}\n  \
             - id: render\n    plugin: '{p}'\n    depends_on: [fetch]\n    \
               input: {{action: print, text: 'day {{{{ inputs.day }}}} count {{{{ inputs.count }}}} <img src=x onerror=window.__pwned=1>'}}\n"
        ),
    );
    deploy(
        &env,
        "broken.yaml",
        &format!(
            "id: broken\nnamespace: finance\ntasks:\n  - {{id: leak, plugin: '{p}', secrets: [OTHER], input: {{action: leak, name: OTHER}}}}\n  \
             - {{id: crash, plugin: '{p}', secrets: [OTHER], input: {{action: panic, message: 'boom <script>window.__pwned=3</script>', get: OTHER}}}}\n"
        ),
    );
    deploy(
        &env,
        "release.yaml",
        &format!(
            "id: release\nnamespace: finance\ntasks:\n  - {{id: build, plugin: '{p}', input: {{action: context}}}}\n  \
             - id: deploy\n    plugin: '{p}'\n    secrets: [PW]\n    approval: {{distinct_from_trigger: true}}\n    \
               input: {{action: get, names: [PW]}}\n"
        ),
    );
    let runner = token(&env, "runner-rae", "runner", "finance", &[]);
    let manager = token(&env, "manager-max", "secret-manager", "finance", &[]);
    let approver = token(&env, "approver-ann", "approver", "finance", &[]);
    let auditor = token(&env, "auditor-aud", "auditor", "", &[]);
    let admin = token(&env, "admin-ada", "admin", "", &[]);
    let builder = token(&env, "reviewer-rob", "builder", "finance", &[]);
    let server = Server::start(&env, 3, &[]);
    let c = Client::new(&server);
    let (s, failed) = c.call("POST", "/api/v1/executions/finance/broken?wait=30", Some(&runner), Some(&json!({})));
    assert_eq!(s, 200, "{failed}");
    assert_eq!(failed["status"], "failed", "{failed}");
    // OTHER is protected: the operator's change to the task that holds it
    // waits for a second person, who reviews it in the browser.
    env.run(&["secret", "protect", "OTHER", "-n", "finance"]).expect_code(0);
    let file = env.home().join("broken.yaml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("action: leak, name: OTHER", "action: leak, name: OTHER, note: reviewed-change");
    std::fs::write(&file, text).unwrap();
    let r = env.run(&["flow", "deploy", file.to_str().unwrap()]);
    assert!(r.stderr.contains("revision 2 is pending review"), "{r:#?}");
    let (s, gated) = c.call("POST", "/api/v1/executions/finance/release", Some(&runner), Some(&json!({})));
    assert!(s == 201 || s == 202, "{gated}");
    let gated = gated["id"].as_str().unwrap().to_owned();
    let end = Instant::now() + Duration::from_secs(30);
    while c.call("GET", &format!("/api/v1/executions/{gated}"), Some(&runner), None).1["status"] != "paused" {
        assert!(Instant::now() < end, "the gated execution never paused");
        std::thread::sleep(Duration::from_millis(50));
    }
    let shots = std::env::var("KEYHOLE_SCREENSHOTS").ok();
    let out = Command::new("python3")
        .arg(workspace().join("tests/e2e/console.py"))
        .env("KH_BASE", &server.base)
        .env("KH_RUNNER", &runner)
        .env("KH_MANAGER", &manager)
        .env("KH_APPROVER", &approver)
        .env("KH_AUDITOR", &auditor)
        .env("KH_ADMIN", &admin)
        .env("KH_BUILDER", &builder)
        .env("KH_FAILED", failed["id"].as_str().unwrap())
        .env("KH_GATED", &gated)
        .env("KH_VALUES", format!("{PW},{OTHER}"))
        .env("KH_SHOTS", shots.unwrap_or_default())
        .output()
        .expect("cannot run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(out.status.success(), "the browser test failed:\n{stdout}\n{stderr}\nserver log:\n{}", server.log());
    // What the browser did is on the record, with each person as actor.
    let rotations = env.run(&["audit", "list", "--action", "secret.rotate", "--json"]).stdout;
    assert!(rotations.contains("manager-max"), "{rotations}");
    let approvals = env.run(&["audit", "list", "--action", "execution.approve", "--json"]).stdout;
    assert!(approvals.contains("approver-ann") && approvals.contains("ship it"), "{approvals}");
    let reviews = env.run(&["audit", "list", "--action", "flow.approve", "--json"]).stdout;
    assert!(reviews.contains("reviewer-rob") && reviews.contains("diff read"), "{reviews}");
    let r = env.run(&["flow", "list"]);
    assert!(r.stdout.contains("broken") && !r.stdout.contains("pending"), "{r:#?}");
    assert!(!server.log().contains(PW) && !server.log().contains(OTHER));
}
