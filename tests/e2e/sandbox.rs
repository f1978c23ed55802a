//! The sandbox: no ambient authority, limits that hold, failures that stay
//! inside the task.

use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn no_env_vars_no_args_no_files() {
    let env = Env::new();
    let r = env.run_with(
        env.host()
            .env("HOST_SIDE_SECRET", "should-not-be-visible")
            .arg("exec")
            .arg(component(Plugin::Probe))
            .args(["--input", r#"{"action":"env"}"#]),
        b"",
    );
    let out = r.expect_code(0).json();
    assert_eq!(out["vars"], json!([]), "the plugin must see no environment variables");
    assert_eq!(out["args"], json!([]), "the plugin must see no arguments");

    for path in ["/etc/passwd", "/", ".", env.home().to_str().unwrap()] {
        let out = env.probe("", &[], json!({"action": "read_file", "path": path}), &[]).expect_code(0).json();
        assert_ne!(out["read"], "ok", "{path} must not be readable: {out}");
        assert_ne!(out["list"], "ok", "{path} must not be listable: {out}");
    }
}

#[test]
fn no_network_even_to_a_listening_local_port() {
    let env = Env::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let out = env.probe("", &[], json!({"action": "connect", "addr": addr}), &[]).expect_code(0).json();
    let err = out["connect"].as_str().unwrap();
    assert_ne!(err, "ok");
    assert!(err.to_lowercase().contains("denied") || err.to_lowercase().contains("permission"), "{err}");
    assert!(listener.accept().is_err(), "the listener must not have received a connection");
}

fn assert_stopped_near(r: &Run, started: Instant, timeout: Duration) {
    r.expect_code(3);
    let took = started.elapsed();
    assert!(took >= timeout, "stopped before its time limit: {took:?}");
    assert!(took < timeout + Duration::from_secs(10), "not stopped near its time limit: {took:?}");
    assert!(r.stderr.contains("exceeded its time limit"), "{}", r.stderr);
}

#[test]
fn an_infinite_loop_is_stopped_at_the_timeout() {
    let env = Env::new();
    let started = Instant::now();
    let r = env.probe("", &[], json!({"action": "loop"}), &["--timeout", "1"]);
    assert_stopped_near(&r, started, Duration::from_secs(1));
}

#[test]
fn a_long_sleep_is_stopped_at_the_timeout() {
    let env = Env::new();
    let started = Instant::now();
    let r = env.probe("", &[], json!({"action": "sleep", "secs": 3600}), &["--timeout", "1"]);
    assert_stopped_near(&r, started, Duration::from_secs(1));
}

#[test]
fn a_2_gib_allocation_fails_at_the_memory_limit() {
    let env = Env::new();
    let r = env.probe("", &[], json!({"action": "alloc", "mib": 2048}), &[]);
    r.expect_code(3);
    assert!(r.stderr.contains("exceeded its memory limit"), "{}", r.stderr);
    assert!(r.stderr.contains("the limit is 67108864 bytes"), "{}", r.stderr);
    // Within the limit it works, and a higher --memory lets more through.
    env.probe("", &[], json!({"action": "alloc", "mib": 16}), &[]).expect_code(0);
    env.probe("", &[], json!({"action": "alloc", "mib": 100}), &["--memory", "256"]).expect_code(0);
}

#[test]
fn stack_overflow_and_panic_are_clean_errors() {
    let env = Env::new();
    let r = env.probe("", &[], json!({"action": "stack_overflow"}), &[]);
    r.expect_code(3);
    assert!(r.stderr.contains("plugin trapped: stack overflow"), "{}", r.stderr);

    let r = env.probe("", &[], json!({"action": "panic", "message": "invariant broken"}), &[]);
    r.expect_code(3);
    assert!(r.stderr.contains("[probe] ") && r.stderr.contains("invariant broken"), "{}", r.stderr);
    assert!(r.stderr.contains("the plugin panicked or aborted"), "{}", r.stderr);
}

#[test]
fn huge_stdout_is_bounded() {
    let env = Env::new();
    let r = env.probe("", &[], json!({"action": "flood", "bytes": 64 << 20}), &["--max-output", "100000"]);
    r.expect_code(0);
    assert!(r.stderr.len() < 200_000, "stderr was {} bytes", r.stderr.len());
    assert!(r.stderr.contains("output limit of 100000 bytes reached"), "{}", &r.stderr[r.stderr.len() - 300..]);
    assert_eq!(r.json()["wrote"], 64 << 20);
}

#[test]
fn a_wasip1_core_module_runs_like_a_component() {
    let env = Env::new();
    env.set_secret("", "K", "core-module-secret");
    let plugin = core_module(Plugin::Probe);
    let bytes = std::fs::read(&plugin).unwrap();
    assert!(wasmparser::Parser::is_core_wasm(&bytes), "the wasip1 build must be a core module");
    let input = json!({"action": "get", "names": ["K", "NOPE"]}).to_string();
    let r = env.run_with(env.host().arg("exec").arg(&plugin).args(["--grant", "K", "--input", &input]), b"");
    let out = r.expect_code(0).json();
    assert_eq!(out["K"]["sha256"], sha256("core-module-secret"));
    assert_eq!(out["NOPE"]["error"], "denied");
    let r = env.run_with(env.host().arg("exec").arg(&plugin).args(["--input", r#"{"action":"env"}"#]), b"");
    assert_eq!(r.expect_code(0).json()["vars"], json!([]));
}

#[test]
fn a_second_exec_loads_from_the_compiled_cache() {
    let env = Env::new();
    let plugin = component(Plugin::Hello);
    env.set_secret("", "API_TOKEN", "t");
    let run = || {
        env.run_with(
            env.host().arg("-v").arg("exec").arg(&plugin).args(["-g", "API_TOKEN", "--input", r#"{"name":"ops"}"#]),
            b"",
        )
    };
    let first = run();
    assert_eq!(first.expect_code(0).json()["message"], "hello, ops");
    assert!(first.stderr.contains("hello.wasm compiled"), "{}", first.stderr);
    // Compiled artifacts are `.cwasm` files (each with its `.mac`, beside the cache key).
    let artifacts = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(env.home().join("cache"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect()
    };
    assert_eq!(artifacts().len(), 1, "one compiled artifact is cached");
    let second = run();
    assert_eq!(second.expect_code(0).json()["message"], "hello, ops");
    assert!(second.stderr.contains("hello.wasm loaded from the compiled cache"), "{}", second.stderr);

    // A corrupted cache entry is ignored and replaced, not fatal.
    let entry = artifacts().remove(0);
    std::fs::write(&entry, b"garbage").unwrap();
    let third = run();
    assert_eq!(third.expect_code(0).json()["message"], "hello, ops");
    assert!(third.stderr.contains("hello.wasm compiled"), "{}", third.stderr);
}
