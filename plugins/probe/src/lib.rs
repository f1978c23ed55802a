//! Test plugin: does whatever its input asks, including hostile things (read
//! files, env vars, sockets; loop forever; exhaust memory or stack; flood
//! stdout), so the end-to-end tests can show what the sandbox allows.

use keyhole_guest::{TaskError, context, log, secrets, task};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum Action {
    /// Reads each secret; reports its SHA-256 or the error case. With
    /// `wait_ms`, first prints `waiting` to stderr and sleeps that long.
    Get {
        names: Vec<String>,
        #[serde(default)]
        wait_ms: u64,
    },
    /// Reads `name`, prints `waiting` to stderr, sleeps `wait_ms`, reads it
    /// again; reports both reads (SHA-256 or error case).
    GetTwice { name: String, wait_ms: u64 },
    /// Reads a secret and returns it verbatim (for masking tests).
    Leak { name: String },
    /// Lists environment variables and arguments.
    Env,
    /// Tries to read a file and list a directory.
    ReadFile { path: String },
    /// Tries to open a TCP connection.
    Connect { addr: String },
    /// Sends each request in turn with `keyhole_guest::http`; reports each
    /// response (status, headers and their SHA-256, body) or error. With `secret`, that
    /// secret is read first and `{secret}` in the URL, headers and body
    /// is replaced by what `secrets::get` returned. With `wait_ms`, first
    /// prints `waiting` to stderr and sleeps that long.
    Http {
        requests: Vec<HttpRequest>,
        #[serde(default)]
        secret: Option<String>,
        #[serde(default)]
        wait_ms: u64,
    },
    /// Starts `n` GET requests to `url` at once (raw wasi:http), then
    /// waits for all; reports each status or error code.
    HttpBurst { url: String, n: usize },
    /// Spins forever.
    Loop,
    /// Sleeps for `secs` seconds.
    Sleep { secs: u64 },
    /// Allocates and touches `mib` MiB.
    Alloc { mib: usize },
    /// Recurses without bound.
    StackOverflow,
    /// Panics with `message` (after reading secret `get`, if given).
    Panic {
        message: String,
        #[serde(default)]
        get: Option<String>,
    },
    /// Writes `bytes` bytes to stdout.
    Flood { bytes: usize },
    /// Reads secret `get` (if given), then writes `text` to stdout and
    /// stderr, logs it and returns it.
    Print {
        text: String,
        #[serde(default)]
        get: Option<String>,
    },
    /// Reads secret `get` (and every secret in `also`), then writes each
    /// part to stdout as its own write.
    WriteParts {
        parts: Vec<String>,
        get: String,
        #[serde(default)]
        also: Vec<String>,
    },
    /// Reads secret `name` and returns it as a JSON number.
    LeakNumber { name: String },
    /// Returns the SHA-256 of `text`: what this task received, unmasked.
    Digest { text: String },
    /// Returns the execution context.
    Context,
    /// Rotates secret `name`: `generate` (with `length`) or `capture` (a
    /// JSON pointer), then sends `requests` (`{next}`, `{current}` and, with
    /// `secret`, `{secret}` filled in), then takes each step of `then` in
    /// order: `commit`, `discard`, `again` (generates a new value once
    /// more), `trap`, `wait` (prints `waiting`, sleeps a minute). Reports
    /// the placeholders, answers and step results.
    Rotate {
        name: String,
        #[serde(default)]
        length: Option<u32>,
        #[serde(default)]
        capture: Option<String>,
        #[serde(default)]
        secret: Option<String>,
        #[serde(default)]
        requests: Vec<HttpRequest>,
        #[serde(default)]
        then: Vec<String>,
    },
    /// GETs `url` (a counter that answers how many times it was asked)
    /// and fails while the answer is at most `fail_until`: a task that
    /// fails that many times, then succeeds.
    Flaky { url: String, fail_until: u64 },
    /// Fails with `message` (after reading secret `get`, if given).
    Fail {
        message: String,
        #[serde(default)]
        get: Option<String>,
    },
}

fn probe(action: Action) -> Result<Value, TaskError> {
    Ok(match action {
        Action::Get { names, wait_ms } => {
            if wait_ms > 0 {
                eprintln!("waiting");
                std::thread::sleep(std::time::Duration::from_millis(wait_ms));
            }
            let mut out = serde_json::Map::new();
            for name in names {
                let v = match secrets::get(&name) {
                    Ok(value) => json!({ "sha256": hex::encode(Sha256::digest(value.as_bytes())) }),
                    Err(e) => json!({ "error": error_case(&e) }),
                };
                out.insert(name, v);
            }
            Value::Object(out)
        }
        Action::GetTwice { name, wait_ms } => {
            let read = |n: &str| match secrets::get(n) {
                Ok(value) => json!({ "sha256": hex::encode(Sha256::digest(value.as_bytes())) }),
                Err(e) => json!({ "error": error_case(&e) }),
            };
            let first = read(&name);
            eprintln!("waiting");
            std::thread::sleep(std::time::Duration::from_millis(wait_ms));
            json!({ "first": first, "second": read(&name) })
        }
        Action::Leak { name } => json!({ "value": secrets::get(&name)? }),
        Action::Env => json!({
            "vars": std::env::vars().collect::<Vec<_>>(),
            "args": std::env::args().collect::<Vec<_>>(),
        }),
        Action::ReadFile { path } => json!({
            "read": std::fs::read_to_string(&path).map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
            "list": std::fs::read_dir(&path).map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
            "cwd": std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_else(|e| e.to_string()),
        }),
        Action::Connect { addr } => json!({
            "connect": std::net::TcpStream::connect(&addr).map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
        }),
        Action::Http { requests, secret, wait_ms } => {
            if wait_ms > 0 {
                eprintln!("waiting");
                std::thread::sleep(std::time::Duration::from_millis(wait_ms));
            }
            let value = match &secret {
                Some(name) => secrets::get(name)?.to_string(),
                None => String::new(),
            };
            let fill = |s: &str| s.replace("{secret}", &value);
            let results: Vec<Value> = requests
                .iter()
                .map(|r| {
                    let mut req = keyhole_guest::http::request(&r.method, &fill(&r.url)).body(fill(&r.body));
                    for (k, v) in &r.headers {
                        req = req.header(k, &fill(v));
                    }
                    match req.send() {
                        Ok(resp) => json!({
                            "status": resp.status,
                            "headers": resp.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
                            // What this task received, past the output's masking.
                            "header_sha256": resp.headers.iter()
                                .map(|(k, v)| json!([k, hex::encode(Sha256::digest(v.as_bytes()))]))
                                .collect::<Vec<_>>(),
                            "body": resp.text(),
                        }),
                        Err(e) => json!({ "error": format!("{e:?}") }),
                    }
                })
                .collect();
            json!(results)
        }
        Action::HttpBurst { url, n } => {
            use wasi::http::types::{Fields, OutgoingRequest, Scheme};
            let (authority, path) = url.trim_start_matches("http://").split_once('/').unwrap_or((&url, ""));
            let pending: Vec<_> = (0..n)
                .map(|_| {
                    let req = OutgoingRequest::new(Fields::new());
                    req.set_scheme(Some(&Scheme::Http)).unwrap();
                    req.set_authority(Some(authority)).unwrap();
                    req.set_path_with_query(Some(&format!("/{path}"))).unwrap();
                    wasi::http::outgoing_handler::handle(req, None)
                })
                .collect();
            let results: Vec<Value> = pending
                .into_iter()
                .map(|p| match p {
                    Err(code) => json!({ "error": format!("{code:?}") }),
                    Ok(f) => {
                        f.subscribe().block();
                        match f.get() {
                            Some(Ok(Ok(r))) => json!({ "status": r.status() }),
                            Some(Ok(Err(code))) => json!({ "error": format!("{code:?}") }),
                            _ => json!({ "error": "lost" }),
                        }
                    }
                })
                .collect();
            json!(results)
        }
        Action::Loop => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Action::Sleep { secs } => {
            std::thread::sleep(std::time::Duration::from_secs(secs));
            json!({ "slept": secs })
        }
        Action::Alloc { mib } => {
            // One MiB at a time, as a growing program would.
            let mut chunks = Vec::new();
            for _ in 0..mib {
                chunks.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
            json!({ "allocated_mib": chunks.len() })
        }
        Action::StackOverflow => json!({ "depth": recurse(std::hint::black_box(1)) }),
        Action::Panic { message, get } => {
            read(get)?;
            panic!("{message}")
        }
        Action::Flood { bytes } => {
            let line = [b'x'; 1023];
            let mut out = std::io::stdout().lock();
            let mut left = bytes;
            while left > 0 {
                let n = left.min(1024);
                out.write_all(&line[..n - 1]).map_err(|e| TaskError::new(e.to_string()))?;
                out.write_all(b"\n").map_err(|e| TaskError::new(e.to_string()))?;
                left -= n;
            }
            json!({ "wrote": bytes })
        }
        Action::Print { text, get } => {
            read(get)?;
            println!("{text}");
            eprintln!("{text}");
            log::info(&text);
            json!({ "echo": text })
        }
        Action::WriteParts { parts, get, also } => {
            read(Some(get))?;
            for name in also {
                read(Some(name))?;
            }
            let mut out = std::io::stdout();
            for part in &parts {
                out.write_all(part.as_bytes()).map_err(|e| TaskError::new(e.to_string()))?;
                out.flush().map_err(|e| TaskError::new(e.to_string()))?;
            }
            json!({ "parts": parts.len() })
        }
        Action::LeakNumber { name } => {
            let value = secrets::get(&name)?;
            let n: u64 = value.parse().map_err(|_| TaskError::new("not a number"))?;
            json!({ "pin": n })
        }
        Action::Digest { text } => json!({ "sha256": hex::encode(Sha256::digest(text.as_bytes())) }),
        Action::Context => {
            let c = context::current();
            json!({ "namespace": c.namespace, "flow": c.flow, "task": c.task, "execution_id": c.execution_id })
        }
        Action::Fail { message, get } => {
            read(get)?;
            return Err(TaskError::new(message));
        }
        Action::Flaky { url, fail_until } => {
            let r = keyhole_guest::http::get(&url).send().map_err(|e| TaskError::new(format!("{e:?}")))?;
            let n: u64 = r.text().trim().parse().map_err(|_| TaskError::new("the counter answered no number"))?;
            if n <= fail_until {
                return Err(TaskError::new(format!("attempt {n} failed, as asked")));
            }
            json!({ "succeeded_at": n })
        }
        Action::Rotate { name, length, capture, secret, requests, then } => {
            use keyhole_guest::rotation;
            let staged = match (length, capture) {
                (Some(n), None) => rotation::generate(&name, n, rotation::Charset::Alnum),
                (None, Some(p)) => rotation::capture(&name, &p),
                _ => return Err(TaskError::new("give length or capture")),
            };
            let staged = match staged {
                Ok(s) => s,
                Err(e) => return Ok(json!({ "error": rotation_case(&e) })),
            };
            let value = match &secret {
                Some(n) => secrets::get(n)?,
                None => String::new(),
            };
            let current = staged.current.clone().unwrap_or_default();
            let fill =
                |s: &str| s.replace("{next}", &staged.next).replace("{current}", &current).replace("{secret}", &value);
            let responses: Vec<Value> = requests
                .iter()
                .map(|r| {
                    let mut req = keyhole_guest::http::request(&r.method, &fill(&r.url)).body(fill(&r.body));
                    for (k, v) in &r.headers {
                        req = req.header(k, &fill(v));
                    }
                    match req.send() {
                        Ok(resp) => json!({ "status": resp.status, "body": resp.text() }),
                        Err(e) => json!({ "error": format!("{e:?}") }),
                    }
                })
                .collect();
            let mut steps = Vec::new();
            for step in &then {
                let result = match step.as_str() {
                    "commit" => rotation::commit(&name).map(|v| json!(v)),
                    "discard" => rotation::discard(&name).map(|()| json!(null)),
                    "again" => {
                        rotation::generate(&name, length.unwrap_or(24), rotation::Charset::Alnum).map(|s| json!(s.next))
                    }
                    "trap" => panic!("trapping after the requests, as asked"),
                    "wait" => {
                        eprintln!("waiting");
                        std::thread::sleep(std::time::Duration::from_secs(60));
                        Ok(json!(null))
                    }
                    other => return Err(TaskError::new(format!("unknown step {other}"))),
                };
                steps.push(match result {
                    Ok(v) => json!({ step.as_str(): { "ok": v } }),
                    Err(e) => json!({ step.as_str(): { "error": rotation_case(&e) } }),
                });
            }
            json!({
                "next": staged.next,
                "current": staged.current,
                "responses": responses,
                "steps": steps,
            })
        }
    })
}

fn read(name: Option<String>) -> Result<(), TaskError> {
    if let Some(name) = name {
        secrets::get(&name)?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct HttpRequest {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

fn get() -> String {
    "GET".into()
}

fn rotation_case(e: &keyhole_guest::rotation::Error) -> String {
    use keyhole_guest::rotation::Error;
    match e {
        Error::Denied => "denied".into(),
        Error::NotFound => "not-found".into(),
        Error::Refused(why) => format!("refused: {why}"),
        Error::Unavailable(why) => format!("unavailable: {why}"),
    }
}

fn error_case(e: &secrets::Error) -> String {
    match e {
        secrets::Error::Denied => "denied".into(),
        secrets::Error::NotFound => "not-found".into(),
        secrets::Error::Revoked => "revoked".into(),
        secrets::Error::Expired => "expired".into(),
        secrets::Error::Unavailable(why) => format!("unavailable: {why}"),
    }
}

#[inline(never)]
fn recurse(n: u64) -> u64 {
    if n == u64::MAX {
        return 0;
    }
    std::hint::black_box(recurse(std::hint::black_box(n + 1))) + 1
}

task!(probe);
