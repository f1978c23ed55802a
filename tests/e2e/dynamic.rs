//! Just-in-time credentials against real servers: OpenBao's database
//! secrets engine over a throwaway PostgreSQL cluster (Debian's
//! `postgresql`, started here as the `postgres` user, passwords checked
//! with scram-sha-256 on 127.0.0.1). A task hands its credential to a
//! loopback server its flow allows, so the test learns it the way an
//! attacker would, then logs in with it during and after the execution.

use crate::network::Server as Echo;
use crate::support::*;
use crate::vault::{Bao, TOKEN, agent, bao};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A PostgreSQL cluster in a temporary directory, stopped when dropped.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .status();
    }
}

fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    c
}

fn postgres() -> Option<Postgres> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin")).find(|b| b.join("initdb").exists()));
    let Some(bin) = bin else {
        if std::env::var_os("KEYHOLE_ALLOW_NO_POSTGRES").is_some() {
            eprintln!("\n*** SKIPPED: PostgreSQL is not installed; dynamic-credential tests did not run ***\n");
            return None;
        }
        panic!(
            "PostgreSQL is not installed: `apt-get install postgresql` (scripts/test.sh does), or set KEYHOLE_ALLOW_NO_POSTGRES=1 to skip loudly"
        );
    };
    let dir = tempfile::Builder::new().prefix("keyhole-pg").tempdir_in("/tmp").unwrap();
    let data = dir.path().join("data");
    let sock = dir.path().join("sock");
    std::fs::create_dir(&sock).unwrap();
    assert!(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap().success());
    let ok = as_postgres(&bin.join("initdb"))
        .args(["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust"])
        .status()
        .unwrap();
    assert!(ok.success(), "initdb failed");
    // Local socket for setup; every TCP login needs a real password.
    std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", sock.display());
    let log = dir.path().join("pg.log");
    let ok = as_postgres(&bin.join("pg_ctl"))
        .args(["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &opts, "-w", "start"])
        .status()
        .unwrap();
    assert!(ok.success(), "pg_ctl start failed: {}", std::fs::read_to_string(&log).unwrap_or_default());
    let pg = Postgres { bin, data, port, _dir: dir };
    let ok = as_postgres(&pg.bin.join("psql"))
        .args(["-h", sock.to_str().unwrap(), "-p", &port.to_string(), "-U", "postgres", "-c"])
        .arg("ALTER USER postgres PASSWORD 'pg-admin-pass'")
        .status()
        .unwrap();
    assert!(ok.success());
    Some(pg)
}

impl Postgres {
    /// Whether `user`/`password` can log in over TCP.
    fn login(&self, user: &str, password: &str) -> bool {
        Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", user, "-d", "postgres", "-c", "SELECT 1"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

fn bao_post(bao: &Bao, path: &str, body: Value) {
    let mut r = agent().post(format!("{}/v1/{path}", bao.addr)).header("X-Vault-Token", TOKEN).send_json(body).unwrap();
    let status = r.status().as_u16();
    assert!((200..300).contains(&status), "{path}: {status} {}", r.body_mut().read_to_string().unwrap_or_default());
}

/// OpenBao's database engine minting PostgreSQL roles for `readonly`.
fn database_engine(bao: &Bao, pg: &Postgres) {
    bao_post(bao, "sys/mounts/database", json!({"type": "database"}));
    bao_post(
        bao,
        "database/config/pg",
        json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable", pg.port),
            "allowed_roles": "readonly",
            "username": "postgres",
            "password": "pg-admin-pass",
        }),
    );
    bao_post(
        bao,
        "database/roles/readonly",
        json!({
            "db_name": "pg",
            "creation_statements": "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT CONNECT ON DATABASE postgres TO \"{{name}}\";",
            "default_ttl": "1h",
            "max_ttl": "24h",
        }),
    );
}

/// The credentials the echo server has received, in order.
fn leaked(echo: &Echo) -> Vec<(String, String)> {
    echo.received()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .map(|v| (v["username"].as_str().unwrap().to_owned(), v["password"].as_str().unwrap().to_owned()))
        .collect()
}

fn flow(env: &Env, echo: &Echo, secret: &str, nap: &str, extra_task: &str) -> PathBuf {
    let probe = component(Plugin::Probe);
    let send = json!({"action": "http", "secret": secret,
                      "requests": [{"method": "POST", "url": echo.url("/echo"), "body": "{secret}"}]});
    let text = format!(
        "id: jit\nnamespace: ops\ntasks:\n  - id: send\n    plugin: {p}\n    secrets: [{secret}]\n    network:\n      allow: [\"{o}\"]\n    input: {send}\n  - id: again\n    plugin: {p}\n    secrets: [{secret}]\n    network:\n      allow: [\"{o}\"]\n    input: {send}\n  - id: nap\n    plugin: {p}\n{nap}{extra_task}",
        p = probe.display(),
        o = echo.origin(),
    );
    let file = env.home().join("jit.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// The `nap` task's input (and limits): sleeps `secs`.
fn nap(secs: u64, limits: &str) -> String {
    format!("    input: {{\"action\": \"sleep\", \"secs\": {secs}}}\n{limits}")
}

/// PostgreSQL and OpenBao's database engine over it (None: skipped loudly).
fn servers() -> Option<(Postgres, std::sync::MutexGuard<'static, ()>, Bao)> {
    let pg = postgres()?;
    let (one, bao) = bao()?;
    database_engine(&bao, &pg);
    Some((pg, one, bao))
}

/// `host secret dynamic add NAME -n ops --vault-path database/creds/readonly EXTRA`, which must succeed.
fn add_dynamic(env: &Env, name: &str, extra: &[&str]) -> Run {
    let mut add = env.host();
    add.env("VAULT_TOKEN", TOKEN)
        .args(["secret", "dynamic", "add", name, "-n", "ops", "--vault-path", "database/creds/readonly"])
        .args(extra);
    let r = env.run_with(&mut add, b"");
    r.expect_code(0);
    r
}

/// Namespace `ops` of `env` served by `bao`.
fn with_vault(env: &Env, bao: &Bao) {
    env.run(&["backend", "add-vault", "ops", "--address", &bao.addr, "--mount", "secret", "--prefix", "keyhole/"])
        .expect_code(0);
}

/// Waits until the echo server has `n` credentials.
fn wait_leaked(echo: &Echo, n: usize) -> Vec<(String, String)> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let got = leaked(echo);
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < end, "the task did not send its credential");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_task_gets_a_credential_minted_for_its_execution_and_it_dies_with_it() {
    let Some((pg, _one, bao)) = servers() else { return };
    let env = Env::new();
    with_vault(&env, &bao);
    let with_token = |args: &[&str]| {
        let mut c = env.host();
        c.env("VAULT_TOKEN", TOKEN).args(args);
        c
    };
    let r = add_dynamic(&env, "WAREHOUSE_RO", &["--ttl", "10m"]);
    assert!(r.stderr.contains("WAREHOUSE_RO in namespace ops is dynamic"), "{r:#?}");
    let r = env.run(&["secret", "dynamic", "list"]);
    assert!(r.stdout.contains("WAREHOUSE_RO") && r.stdout.contains("database/creds/readonly"), "{r:#?}");
    let r = env.run(&["secret", "list"]);
    let line = r.stdout.lines().find(|l| l.contains("WAREHOUSE_RO")).unwrap_or_default();
    assert!(line.contains("dynamic: minted per execution from database/creds/readonly"), "{r:#?}");

    // One run: both tasks get the same credential; it logs in while the
    // execution runs and not after it ended.
    let echo = Echo::start();
    let file = flow(&env, &echo, "WAREHOUSE_RO", &nap(3, ""), "");
    let mut run = with_token(&["run", file.to_str().unwrap()]);
    let child = run.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let creds = wait_leaked(&echo, 2);
    assert_eq!(creds[0], creds[1], "the second read got the execution's credential, not a second one");
    let (user, password) = creds[0].clone();
    assert!(pg.login(&user, &password), "the credential does not log in during the execution");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains(&password) && !stderr.contains(&password),
        "the credential was shown:\n{stdout}\n{stderr}"
    );
    assert!(
        !pg.login(&user, &password),
        "the credential still logs in after the execution ended: {:#?}",
        env.run(&["audit", "list", "--action", "secret.lease"])
    );
    let r = env.run(&["lease", "list", "--all", "--json"]);
    let leases = r.json();
    assert_eq!(leases.as_array().unwrap().len(), 1, "{leases}");
    assert!(leases[0]["revoked"].is_string(), "{leases}");
    let r = env.run(&["audit", "list", "--action", "secret.lease", "--json"]);
    let ops: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            serde_json::from_str::<Value>(x["detail"].as_str().unwrap()).unwrap()["op"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ops, ["mint", "revoke"], "{r:#?}");
    assert!(!r.stdout.contains(&password));

    // A task that traps after reading: revoked all the same.
    let echo = Echo::start();
    let trap = format!(
        "  - id: boom\n    plugin: {}\n    input: {{\"action\": \"panic\", \"message\": \"boom\"}}\n",
        component(Plugin::Probe).display()
    );
    let file = flow(&env, &echo, "WAREHOUSE_RO", &nap(0, ""), &trap);
    let r = env.run_with(&mut with_token(&["run", file.to_str().unwrap()]), b"");
    assert_ne!(r.code, 0);
    let (user, password) = leaked(&echo)[0].clone();
    assert!(!pg.login(&user, &password), "a trapped execution's credential still logs in");

    // A task that outlives its timeout: revoked all the same.
    let echo = Echo::start();
    let file = flow(&env, &echo, "WAREHOUSE_RO", &nap(30, "    limits: { timeout: 1s }\n"), "");
    let lease_ids = || -> Vec<Value> {
        let all = env.run(&["lease", "list", "--all", "--json"]).json();
        all.as_array().unwrap().iter().map(|l| l["lease_id"].clone()).collect()
    };
    let before = lease_ids();
    let r = env.run_with(&mut with_token(&["run", file.to_str().unwrap()]), b"");
    assert_ne!(r.code, 0);
    let ended = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (user, password) = leaked(&echo)[0].clone();
    assert!(!pg.login(&user, &password), "a timed-out execution's credential still logs in");
    // Left alone it would have lived a minute past the deadline of the
    // task that minted it (`send`: the default 30 s), so it cannot die
    // mid-request, and no longer (not the secret's 10 m). The execution
    // ended about a second after the mint.
    let leases = env.run(&["lease", "list", "--all", "--json"]).json();
    let this = leases.as_array().unwrap().iter().find(|l| !before.contains(&l["lease_id"])).unwrap();
    let left = this["expires_at"].as_i64().unwrap() - ended;
    assert!((80..=90).contains(&left), "expires {left} s after the execution ended: {leases}");

    // Bound to a destination: the plugin holds only a placeholder; the
    // host puts the credential into the request to the echo server.
    let echo = Echo::start();
    add_dynamic(&env, "WAREHOUSE_BOUND", &["--destination", &echo.origin()]);
    let file = flow(&env, &echo, "WAREHOUSE_BOUND", &nap(0, ""), "");
    let r = env.run_with(&mut with_token(&["run", file.to_str().unwrap(), "--json"]), b"");
    r.expect_code(0);
    let (user, password) = leaked(&echo)[0].clone();
    assert!(!r.stdout.contains(&password) && !r.stdout.contains(&user), "{r:#?}");
    let r = env.run(&["secret", "describe", "WAREHOUSE_BOUND", "-n", "ops", "--json"]);
    r.expect_code(0);
    let doc = r.json();
    assert_eq!((doc["dynamic"].as_bool(), doc["outstanding"].as_u64()), (Some(true), Some(0)), "{doc}");
    assert_eq!(doc["destinations"][0].as_str().map(|d| d.starts_with("http://127.0.0.1:")), Some(true), "{doc}");
    // The trail says where each credential may go, and only for a bound one.
    let reads = env.run(&["audit", "list", "--action", "secret.read", "--json"]).json();
    let bound_to = |name: &str| -> Vec<Value> {
        reads
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["secret"] == name)
            .map(|r| serde_json::from_str::<Value>(r["detail"].as_str().unwrap()).unwrap()["bound_to"].clone())
            .collect()
    };
    assert_eq!(bound_to("WAREHOUSE_BOUND"), vec![json!([echo.origin()]); 2], "{reads}");
    assert!(bound_to("WAREHOUSE_RO").iter().all(Value::is_null), "{reads}");

    // A service that answers with one field of the credential: that field
    // is masked on its own, not only the whole JSON document.
    let echo = Echo::start();
    let fields = json!({"action": "http", "secret": "WAREHOUSE_RO",
                        "requests": [{"method": "POST", "url": echo.url("/fields"), "body": "{secret}"}]});
    let file = env.home().join("fields.yaml");
    std::fs::write(
        &file,
        format!(
            "id: fields\nnamespace: ops\ntasks:\n  - id: send\n    plugin: {}\n    secrets: [WAREHOUSE_RO]\n    network:\n      allow: [\"{}\"]\n    input: {fields}\n",
            component(Plugin::Probe).display(),
            echo.origin()
        ),
    )
    .unwrap();
    let r = env.run_with(&mut with_token(&["run", file.to_str().unwrap(), "--json"]), b"");
    r.expect_code(0);
    let (user, password) = leaked(&echo)[0].clone();
    assert!(r.stdout.contains("***"), "{r:#?}");
    assert!(!r.stdout.contains(&password) && !r.stdout.contains(&user), "a field was shown: {r:#?}");

    // kill -9 of the host mid-execution: the lease stays outstanding until
    // `lease sweep` (or the next start) revokes it.
    let echo = Echo::start();
    let file = flow(&env, &echo, "WAREHOUSE_RO", &nap(30, ""), "");
    let mut child =
        with_token(&["run", file.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let (user, password) = wait_leaked(&echo, 2)[0].clone();
    // A sweep while the run is going leaves its credential alone.
    let r = env.run_with(&mut with_token(&["lease", "sweep"]), b"");
    r.expect_code(0);
    assert!(r.stderr.contains("revoked 0 credential(s); 1 belong to runs still going"), "{r:#?}");
    assert!(pg.login(&user, &password), "a sweep revoked the credential of a running execution");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(pg.login(&user, &password), "nothing revoked it yet: the host died");
    let r = env.run(&["lease", "list"]);
    assert!(r.stdout.contains("outstanding"), "{r:#?}");
    // OpenBao refuses the revocation (a token it does not know): the sweep
    // says so, fails, and leaves the lease for the next one.
    let mut wrong = env.host();
    wrong.env("VAULT_TOKEN", "not-a-token").args(["lease", "sweep"]);
    let r = env.run_with(&mut wrong, b"");
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(r.stderr.contains("revoked 0 credential(s)"), "{r:#?}");
    assert!(r.stderr.contains("1 credential(s) could not be revoked"), "{r:#?}");
    assert!(pg.login(&user, &password), "a refused revocation cannot have revoked it");
    assert!(env.run(&["lease", "list"]).stdout.contains("outstanding"), "the failed sweep marked it revoked");
    let r = env.run_with(&mut with_token(&["lease", "sweep"]), b"");
    r.expect_code(0);
    assert!(r.stderr.contains("revoked 1 credential(s)"), "{r:#?}");
    assert!(!pg.login(&user, &password), "the swept credential still logs in");
    assert!(env.run(&["lease", "list"]).stdout.lines().count() <= 1, "nothing outstanding");
}

/// The same through `host serve`: a worker's execution gets its own
/// credential and revokes it when it ends; a server killed mid-run leaves
/// the lease, and the next start of the server revokes it.
#[test]
fn a_server_execution_revokes_its_credential_and_a_restart_sweeps_a_killed_ones() {
    use crate::server::{Client, Server, token, wait_ended};
    let Some((pg, _one, bao)) = servers() else { return };
    let env = Env::new();
    with_vault(&env, &bao);
    add_dynamic(&env, "WAREHOUSE_RO", &[]);
    let echo = Echo::start();
    let file = flow(&env, &echo, "WAREHOUSE_RO", &nap(20, ""), "");
    env.run(&["flow", "deploy", file.to_str().unwrap()]).expect_code(0);
    let admin = token(&env, "admin", "admin", "", &[]);
    let vars = [("VAULT_TOKEN", TOKEN)];
    let mut server = Server::start_with(&env, 1, &[], &vars);
    // A dynamic secret is a secret like any other: deploying a flow that
    // mints one needs secret:use where it is defined (found through the
    // Vault backend's definitions, not its KV store).
    let dev = token(&env, "dev", "developer", "ops", &[]);
    let mut deploy = env.host();
    deploy.env("KEYHOLE_ADDR", &server.base).env("KEYHOLE_TOKEN", &dev).env("KEYHOLE_HOME", env.home().join("client"));
    let r = env.run_with(deploy.args(["flow", "deploy", file.to_str().unwrap()]), b"");
    r.expect_code(2);
    assert!(r.stderr.contains("permission secret:use is required in namespace ops"), "{r:#?}");
    assert!(r.stderr.contains("secret WAREHOUSE_RO") && r.stderr.contains("which resolves in namespace ops"), "{r:#?}");
    let c = Client::new(&server);
    let (s, v) = c.call("POST", "/api/v1/executions/ops/jit", Some(&admin), Some(&json!({})));
    assert_eq!(s, 202, "{v}");
    let first = v["id"].as_str().unwrap().to_owned();
    let (user, password) = wait_leaked(&echo, 2)[0].clone();
    assert!(pg.login(&user, &password), "the worker's credential does not log in during the execution");
    // Cancelled mid-run: revoked at its end.
    c.call("POST", &format!("/api/v1/executions/{first}/cancel"), Some(&admin), None);
    assert_eq!(wait_ended(&c, &admin, &first, Duration::from_secs(30))["status"], "cancelled");
    assert!(!pg.login(&user, &password), "a cancelled execution's credential still logs in");
    // Killed mid-run: the next start of the server sweeps it.
    let (_, v) = c.call("POST", "/api/v1/executions/ops/jit", Some(&admin), Some(&json!({})));
    let second = v["id"].as_str().unwrap().to_owned();
    let (user, password) = wait_leaked(&echo, 4)[2].clone();
    server.kill9();
    assert!(pg.login(&user, &password), "nothing revoked it yet: the server died");
    let server = Server::start_with(&env, 1, &[], &vars);
    assert!(server.log().contains("revoked 1 credential(s) a stopped run left behind"), "{}", server.log());
    assert!(!pg.login(&user, &password), "the restart did not revoke the killed execution's credential");
    let c = Client::new(&server);
    assert_eq!(wait_ended(&c, &admin, &second, Duration::from_secs(10))["status"], "interrupted");
}

/// A later task of the same execution with a longer time limit than the
/// first: the credential the first read minted is renewed to cover it (the
/// same credential, not a second one), audited as `op: renew`.
#[test]
fn a_later_task_renews_the_executions_credential_instead_of_minting_another() {
    let Some((pg, _one, bao)) = servers() else { return };
    let env = Env::new();
    with_vault(&env, &bao);
    add_dynamic(&env, "WAREHOUSE_RO", &["--ttl", "1h"]);
    let echo = Echo::start();
    let probe = component(Plugin::Probe);
    let send = json!({"action": "http", "secret": "WAREHOUSE_RO",
                      "requests": [{"method": "POST", "url": echo.url("/echo"), "body": "{secret}"}]});
    let task = |id: &str, timeout: &str| {
        format!(
            "  - id: {id}\n    plugin: {}\n    secrets: [WAREHOUSE_RO]\n    network:\n      allow: [\"{}\"]\n    limits: {{ timeout: {timeout} }}\n    input: {send}\n",
            probe.display(),
            echo.origin()
        )
    };
    let file = env.home().join("renew.yaml");
    std::fs::write(&file, format!("id: renew\nnamespace: ops\ntasks:\n{}{}", task("short", "5s"), task("long", "10m")))
        .unwrap();
    let mut run = env.host();
    run.env("VAULT_TOKEN", TOKEN).arg("run").arg(&file);
    env.run_with(&mut run, b"").expect_code(0);
    let creds = leaked(&echo);
    assert_eq!(creds.len(), 2);
    assert_eq!(creds[0], creds[1], "the later task got the execution's credential, renewed");
    let r = env.run(&["audit", "list", "--action", "secret.lease", "--json"]);
    let details: Vec<Value> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| serde_json::from_str::<Value>(x["detail"].as_str().unwrap()).unwrap())
        .collect();
    let ops: Vec<&str> = details.iter().map(|d| d["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["mint", "renew", "revoke"], "{r:#?}");
    // Minted for the short task (5 s + a minute), renewed for the long one (10 min + a minute).
    let (minted, renewed) = (details[0]["expires_at"].as_i64().unwrap(), details[1]["expires_at"].as_i64().unwrap());
    // The renewal asks for the long task's deadline plus the margin, no
    // more (the definition would allow an hour): 600 - 5 s later than the
    // first expiry, plus the few seconds between the two tasks' starts.
    assert!((590..=610).contains(&(renewed - minted)), "renewed to cover the long task: {minted} -> {renewed}");
    // The lease record says so too: `lease list` shows the renewed expiry.
    let leases = env.run(&["lease", "list", "--all", "--json"]).json();
    assert_eq!(
        leases.as_array().map(|l| l.iter().map(|l| l["expires_at"].as_i64()).collect::<Vec<_>>()),
        Some(vec![Some(renewed)]),
        "{leases}"
    );
    assert!(!r.stdout.contains(&creds[0].1));
    assert!(!pg.login(&creds[0].0, &creds[0].1), "revoked at the end all the same");
}
