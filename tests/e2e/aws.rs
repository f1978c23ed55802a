//! A namespace served by AWS Secrets Manager, tested against a real local
//! server: `moto_server` on 127.0.0.1 (`pip install "moto[server]"`;
//! scripts/test.sh installs it). Without it these tests fail, unless
//! KEYHOLE_ALLOW_NO_MOTO=1 is set, in which case they say loudly that they
//! were skipped.

use crate::support::*;
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Any key pair works with moto; the secret key must never show up in
/// keyhole's output.
const KEY_ID: &str = "AKIAKEYHOLETEST00001";
const SECRET_KEY: &str = "moto-test-secret-key-never-printed-7f3a";

struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto() -> Option<Moto> {
    start(None)
}

/// A server that checks signatures: the first `free` requests are not
/// authenticated (they create an IAM user and its key), every later one is.
fn start(free: Option<u32>) -> Option<Moto> {
    if Command::new("moto_server").arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        if std::env::var_os("KEYHOLE_ALLOW_NO_MOTO").is_some() {
            eprintln!("\n*** SKIPPED: moto_server is not installed; AWS Secrets Manager tests did not run ***\n");
            return None;
        }
        panic!(
            "moto_server is not installed: `pip install \"moto[server]\"` (scripts/test.sh does), or set \
             KEYHOLE_ALLOW_NO_MOTO=1 to skip loudly"
        );
    }
    for _attempt in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new("moto_server");
        if let Some(n) = free {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start moto_server");
        let mut m = Moto { child, url: format!("http://127.0.0.1:{port}") };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if matches!(m.child.try_wait(), Ok(Some(_))) {
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(m);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("moto_server did not start after 3 attempts");
}

impl Moto {
    /// Writes a version the way another AWS client would (not through
    /// keyhole); returns its version id.
    fn put(&self, id: &str, value: &str) -> String {
        let script = format!(
            "import boto3,sys\nc=boto3.client('secretsmanager',region_name='us-east-1',endpoint_url='{}',\
             aws_access_key_id='x',aws_secret_access_key='y')\n\
             try:\n  r=c.put_secret_value(SecretId='{id}',SecretString=sys.argv[1])\n\
             except c.exceptions.ResourceNotFoundException:\n  r=c.create_secret(Name='{id}',SecretString=sys.argv[1])\n\
             print(r['VersionId'])",
            self.url
        );
        let out = Command::new("python3").args(["-c", &script, value]).output().unwrap();
        assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// On a server from `start(Some(3))`: an IAM user allowed everything;
/// returns its access key id and secret key.
fn iam_user(moto: &Moto) -> (String, String) {
    let script = format!(
        "import boto3,json\nkw=dict(region_name='us-east-1',endpoint_url='{}',aws_access_key_id='x',aws_secret_access_key='y')\n\
         iam=boto3.client('iam',**kw)\niam.create_user(UserName='k')\nk=iam.create_access_key(UserName='k')['AccessKey']\n\
         iam.put_user_policy(UserName='k',PolicyName='all',PolicyDocument=json.dumps({{'Version':'2012-10-17',\
         'Statement':[{{'Effect':'Allow','Action':'*','Resource':'*'}}]}}))\nprint(k['AccessKeyId'],k['SecretAccessKey'])",
        moto.url
    );
    let out = Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (id, secret) = text.trim().split_once(' ').unwrap();
    (id.to_owned(), secret.to_owned())
}

/// A HOME for the `host` process, outside its data directory.
fn user_home(env: &Env) -> std::path::PathBuf {
    let p = env.home().join("user");
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// `host` with the test's AWS credentials and nothing else of the caller's.
fn host(env: &Env) -> Command {
    let mut cmd = env.host();
    cmd.env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("HOME", user_home(env));
    cmd
}

fn add_aws(env: &Env, ns: &str, url: &str, extra: &[&str]) {
    let mut cmd = host(env);
    cmd.args(["backend", "add-aws", ns, "--region", "us-east-1", "--endpoint-url", url]).args(extra);
    env.run_with(&mut cmd, b"").expect_code(0);
}

fn probe(env: &Env, ns: &str, grants: &[&str], input: Value) -> Run {
    let mut cmd = host(env);
    cmd.arg("exec").arg(component(Plugin::Probe)).args(["-n", ns, "--input", &input.to_string()]);
    for g in grants {
        cmd.args(["--grant", g]);
    }
    env.run_with(&mut cmd, b"")
}

fn secret(env: &Env, args: &[&str], stdin: &[u8]) -> Run {
    let mut cmd = host(env);
    cmd.arg("secret").args(args);
    env.run_with(&mut cmd, stdin)
}

fn audit(env: &Env, args: &[&str]) -> Vec<Value> {
    serde_json::from_str(&env.run(&[&["audit", "list", "--json"], args].concat()).stdout).unwrap()
}

#[test]
fn an_aws_namespace_follows_grants_the_namespace_chain_and_rotation() {
    let Some(moto) = moto() else { return };
    let env = Env::new();
    add_aws(&env, "cloud", &moto.url, &[]);
    let listed = env.run(&["backend", "list"]);
    listed.expect_code(0);
    assert!(listed.stdout.contains("aws") && listed.stdout.contains("keyhole/cloud/"), "{}", listed.stdout);
    moto.put("keyhole/cloud/API_KEY", "aws-v1");
    env.set_secret("", "ROOT_ONLY", "local-root");

    let input = json!({"action": "get", "names": ["API_KEY", "ROOT_ONLY", "NOT_GRANTED", "MISSING"]});
    let r = probe(&env, "cloud.app", &["API_KEY", "ROOT_ONLY", "MISSING"], input.clone());
    r.expect_code(0);
    let out = r.json();
    assert_eq!(out["API_KEY"]["sha256"], sha256("aws-v1"));
    assert_eq!(out["ROOT_ONLY"]["sha256"], sha256("local-root"), "lookups fall back from AWS to the local root");
    assert_eq!(out["NOT_GRANTED"]["error"], "denied");
    assert_eq!(out["MISSING"]["error"], "not-found");
    assert!(!r.all_output().contains(SECRET_KEY) && !r.all_output().contains("aws-v1"));

    // `host validate` cannot ask AWS (no credentials, no network): a grant
    // that may live there is not reported as missing.
    let flow = env.home().join("cloud.yaml");
    let probe_path = component(Plugin::Probe);
    std::fs::write(
        &flow,
        format!(
            "id: c\nnamespace: cloud.app\ntasks:\n  - {{id: a, plugin: {}, secrets: [API_KEY]}}\n",
            probe_path.display()
        ),
    )
    .unwrap();
    let v = env.run_with(host(&env).arg("validate").arg(&flow), b"");
    v.expect_code(0);
    assert!(!v.stdout.contains("API_KEY"), "{}", v.stdout);

    let reads = audit(&env, &["--secret", "API_KEY", "--outcome", "granted"]);
    assert_eq!(reads[0]["reason"], "found in namespace cloud");
    assert!(reads[0]["detail"].as_str().unwrap().contains("version_id"), "{:?}", reads[0]);

    // A rotation through keyhole is PutSecretValue: the next run reads it.
    secret(&env, &["rotate", "API_KEY", "-n", "cloud"], b"aws-v2\n").expect_code(0);
    let out = probe(&env, "cloud", &["API_KEY"], json!({"action": "get", "names": ["API_KEY"]})).expect_code(0).json();
    assert_eq!(out["API_KEY"]["sha256"], sha256("aws-v2"));
    let versions = secret(&env, &["versions", "API_KEY", "-n", "cloud", "--json"], b"").expect_code(0).json();
    assert_eq!(versions.as_array().unwrap().len(), 2, "{versions}");
    let list = secret(&env, &["list", "--json"], b"").expect_code(0).json();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ROOT_ONLY", "API_KEY"], "{list}");
    // Set through keyhole creates the secret under the prefix.
    secret(&env, &["set", "NEW_ONE", "-n", "cloud"], b"created\n").expect_code(0);
    let out = probe(&env, "cloud", &["NEW_ONE"], json!({"action": "get", "names": ["NEW_ONE"]})).expect_code(0).json();
    assert_eq!(out["NEW_ONE"]["sha256"], sha256("created"));
    let sets = audit(&env, &["--action", "secret.set", "--namespace", "cloud"]);
    let outcomes: Vec<&str> = sets.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["pending", "ok"]);
    // Destroy through keyhole deletes it at AWS, for good.
    secret(&env, &["destroy", "NEW_ONE", "-n", "cloud"], b"").expect_code(0);
    let out = probe(&env, "cloud", &["NEW_ONE"], json!({"action": "get", "names": ["NEW_ONE"]})).expect_code(0).json();
    assert!(out["NEW_ONE"]["error"].is_string(), "{out}");
    assert!(!env.run(&["audit", "list", "--json"]).stdout.contains(SECRET_KEY));
}

#[test]
fn an_execution_keeps_the_aws_version_it_read_and_revocation_reaches_it() {
    let Some(moto) = moto() else { return };
    let env = Env::new();
    add_aws(&env, "cloud", &moto.url, &[]);
    moto.put("keyhole/cloud/PINNED", "pinned-v1");
    let input = json!({"action": "get_twice", "name": "PINNED", "wait_ms": 1500}).to_string();
    let mut cmd = host(&env);
    cmd.arg("exec").arg(component(Plugin::Probe)).args(["-n", "cloud", "--grant", "PINNED", "--input", &input]);
    let (child, _err) = start_until(&mut cmd, "[probe] waiting");
    moto.put("keyhole/cloud/PINNED", "pinned-v2");
    let out: Value = serde_json::from_slice(&child.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(out["first"]["sha256"], sha256("pinned-v1"));
    assert_eq!(out["second"]["sha256"], sha256("pinned-v1"), "the execution keeps the version id it read");

    // Revoked by another process while an execution runs: its next read,
    // pinned or not, is refused.
    let (child, _err) = start_until(&mut cmd, "[probe] waiting");
    secret(&env, &["revoke", "PINNED", "-n", "cloud"], b"").expect_code(0);
    let out: Value = serde_json::from_slice(&child.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(out["first"]["sha256"], sha256("pinned-v2"));
    assert_eq!(out["second"]["error"], "revoked");
    let recs = audit(&env, &["--action", "secret.revoke"]);
    let outcomes: Vec<&str> = recs.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["pending", "ok"]);

    // The revocation lives in the authenticated configuration: editing it
    // out is caught, not obeyed.
    let path = env.home().join("backends.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("PINNED"), "{text}");
    std::fs::write(&path, text.replace("\"PINNED\"", "\"OTHER\"")).unwrap();
    let r = probe(&env, "cloud", &["PINNED"], json!({"action": "get", "names": ["PINNED"]}));
    assert_eq!(r.code, 5, "{}", r.stderr);
    std::fs::write(&path, text).unwrap();
    let out = probe(&env, "cloud", &["PINNED"], json!({"action": "get", "names": ["PINNED"]})).expect_code(0).json();
    assert_eq!(out["PINNED"]["error"], "revoked");
    // A new version lifts it.
    secret(&env, &["rotate", "PINNED", "-n", "cloud"], b"pinned-v3\n").expect_code(0);
    let out = probe(&env, "cloud", &["PINNED"], json!({"action": "get", "names": ["PINNED"]})).expect_code(0).json();
    assert_eq!(out["PINNED"]["sha256"], sha256("pinned-v3"));
}

#[test]
fn a_read_only_aws_namespace_refuses_every_write() {
    let Some(moto) = moto() else { return };
    let env = Env::new();
    add_aws(&env, "ro", &moto.url, &["--read-only", "--prefix", "shared/"]);
    moto.put("shared/K", "kept");
    for args in [
        &["set", "K", "-n", "ro"][..],
        &["rotate", "K", "-n", "ro"],
        &["revoke", "K", "-n", "ro"],
        &["destroy", "K", "-n", "ro"],
        &["rm", "K", "-n", "ro"],
    ] {
        let r = secret(&env, args, b"new-value\n");
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("read-only") || r.stderr.contains("does not destroy"), "{args:?}: {}", r.stderr);
    }
    let out = probe(&env, "ro", &["K"], json!({"action": "get", "names": ["K"]})).expect_code(0).json();
    assert_eq!(out["K"]["sha256"], sha256("kept"), "nothing was written");
}

#[test]
fn unreachable_endpoints_and_missing_credentials_give_clear_errors_without_credentials() {
    let Some(moto) = moto() else { return };
    let env = Env::new();
    add_aws(&env, "down", "http://127.0.0.1:1", &[]);
    let r = probe(&env, "down", &["K"], json!({"action": "get", "names": ["K"]}));
    let out = r.expect_code(0).json();
    let err = out["K"]["error"].as_str().unwrap();
    assert!(err.contains("could not be reached") && !err.contains("127.0.0.1:1"), "{err}");
    assert!(
        r.stderr.contains("AWS Secrets Manager http://127.0.0.1:1") && r.stderr.contains("unreachable"),
        "{}",
        r.stderr
    );
    assert!(!r.all_output().contains(SECRET_KEY));

    add_aws(&env, "cloud", &moto.url, &[]);
    moto.put("keyhole/cloud/K", "v");
    // No credentials anywhere: no env keys, a HOME without ~/.aws.
    let mut cmd = env.host();
    cmd.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY").env("HOME", user_home(&env));
    cmd.arg("exec").arg(component(Plugin::Probe)).args(["-n", "cloud", "--grant", "K", "--input"]);
    cmd.arg(json!({"action": "get", "names": ["K"]}).to_string());
    let r = env.run_with(&mut cmd, b"");
    let err = r.expect_code(0).json()["K"]["error"].as_str().unwrap().to_owned();
    assert!(err.contains("no credentials") && !err.contains(&moto.url), "{err}");
    assert!(r.stderr.contains("AWS_ACCESS_KEY_ID"), "the operator is told where credentials come from: {}", r.stderr);

    // A shared credentials file with a profile that is not there.
    std::fs::create_dir_all(user_home(&env).join(".aws")).unwrap();
    std::fs::write(
        user_home(&env).join(".aws/credentials"),
        format!("[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET_KEY}\n"),
    )
    .unwrap();
    let mut cmd = env.host();
    cmd.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY").env("HOME", user_home(&env));
    cmd.env("AWS_PROFILE", "nope").args(["secret", "set", "K2", "-n", "cloud"]);
    let r = env.run_with(&mut cmd, b"value\n");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("[nope]") && !r.all_output().contains(SECRET_KEY), "{}", r.stderr);
    // The default profile of that file works.
    let mut cmd = env.host();
    cmd.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY").env_remove("AWS_PROFILE");
    cmd.env("HOME", user_home(&env)).args(["secret", "set", "K2", "-n", "cloud"]);
    env.run_with(&mut cmd, b"from-profile\n").expect_code(0);
    assert!(!env.run(&["audit", "list", "--json"]).stdout.contains(SECRET_KEY));
}

#[test]
fn requests_are_signed_so_that_a_verifying_server_accepts_them_and_a_wrong_key_is_refused() {
    let Some(moto) = start(Some(3)) else { return };
    let (id, key) = iam_user(&moto);
    let env = Env::new();
    add_aws(&env, "cloud", &moto.url, &[]);
    let with_key = |secret_key: &str, args: &[&str], stdin: &[u8]| {
        let mut cmd = env.host();
        cmd.env("AWS_ACCESS_KEY_ID", &id).env("AWS_SECRET_ACCESS_KEY", secret_key).env("HOME", user_home(&env));
        env.run_with(cmd.args(args), stdin)
    };
    // The server checks the signature of every request from here on.
    with_key(&key, &["secret", "set", "SIGNED", "-n", "cloud"], b"signed-value\n").expect_code(0);
    let input = json!({"action": "get", "names": ["SIGNED"]}).to_string();
    let probe = component(Plugin::Probe);
    let exec = ["exec", probe.to_str().unwrap(), "-n", "cloud", "--grant", "SIGNED", "--input", &input];
    let out = with_key(&key, &exec, b"").expect_code(0).json();
    assert_eq!(out["SIGNED"]["sha256"], sha256("signed-value"));

    let wrong = "wrong-secret-key-0123456789abcdefghijklmn";
    let r = with_key(wrong, &exec, b"");
    let err = r.expect_code(0).json()["SIGNED"]["error"].as_str().unwrap().to_owned();
    assert!(err.contains("HTTP 403") && !err.contains(&moto.url), "{err}");
    assert!(r.stderr.contains("SignatureDoesNotMatch"), "the operator sees why: {}", r.stderr);
    assert!(!r.all_output().contains(wrong) && !r.all_output().contains(&key));
}
