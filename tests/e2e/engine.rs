//! The flow engine: a DAG run several tasks at once, retries, failure
//! handling (`allow_failure`, `errors:`, `finally:`), conditions and the
//! flow's timeout, against the real runtime with the probe plugin. Time is
//! judged from the execution record (when each task started and how long
//! it ran), never from a wall-clock bound.

use crate::network::Server as Echo;
use crate::support::*;
use serde_json::{Value, json};
use std::path::PathBuf;

fn flow_file(env: &Env, name: &str, yaml: &str) -> PathBuf {
    let text = yaml.replace("{probe}", component(Plugin::Probe).to_str().unwrap());
    let p = env.home().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn run(env: &Env, flow: &PathBuf) -> Run {
    env.run_with(env.host().arg("run").arg(flow).arg("--json"), b"")
}

/// Milliseconds since the Unix epoch of an RFC 3339 time in a record.
fn ms(t: &Value) -> i64 {
    let s = t.as_str().unwrap_or_else(|| panic!("not a time: {t}"));
    let t = humantime::parse_rfc3339(s).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn task<'a>(rec: &'a Value, id: &str) -> &'a Value {
    rec["tasks"].as_array().unwrap().iter().find(|t| t["id"] == id).unwrap_or_else(|| panic!("no task {id}: {rec}"))
}

#[test]
fn independent_tasks_run_at_once_and_a_joining_task_waits_for_both() {
    let env = Env::new();
    let flow = flow_file(
        &env,
        "dag.yaml",
        "id: dag\ntasks:\n  \
         - {id: a, plugin: '{probe}', input: {action: sleep, secs: 1}}\n  \
         - {id: b, plugin: '{probe}', input: {action: sleep, secs: 1}}\n  \
         - {id: join, plugin: '{probe}', depends_on: [a, b], input: {action: digest, text: '{{ outputs.a.slept }}+{{ outputs.b.slept }}'}}\n",
    );
    let r = run(&env, &flow);
    r.expect_code(0);
    let rec = r.json();
    let (a, b, join) = (task(&rec, "a"), task(&rec, "b"), task(&rec, "join"));
    let end = |t: &Value| ms(&t["started"]) + t["duration_ms"].as_i64().unwrap();
    // b started while a was still running (and the other way round).
    assert!(ms(&b["started"]) < end(a) && ms(&a["started"]) < end(b), "not run at once: {rec:#}");
    // join started after both ended.
    assert!(ms(&join["started"]) >= end(a).max(end(b)) - 5, "join did not wait: {rec:#}");
    assert_eq!(join["status"], "succeeded");
    // `executions show` draws it: a and b side by side, join after them.
    let shown = env.run(&["executions", "show", rec["id"].as_str().unwrap()]).expect_code(0).stdout.clone();
    let bar = |id: &str| {
        let line = shown.lines().find(|l| l.split_whitespace().nth(1) == Some(id)).unwrap_or_else(|| panic!("{shown}"));
        line.split_whitespace().find(|w| w.contains('#')).unwrap().to_owned()
    };
    let (ba, bb, bj) = (bar("a"), bar("b"), bar("join"));
    assert!(ba.find('#') == bb.find('#') && bj.find('#') > ba.rfind('#').map(|x| x - 1), "{shown}");
    // The audit trail has every start, each of the first attempt.
    let starts = env.run(&["audit", "list", "--action", "task.start", "--json"]).json();
    assert_eq!(starts.as_array().unwrap().len(), 3);
    // With max_parallel: 1 the same graph runs one task at a time.
    let text = std::fs::read_to_string(&flow).unwrap().replace("id: dag\n", "id: dag\nmax_parallel: 1\n");
    std::fs::write(&flow, text).unwrap();
    let rec = run(&env, &flow).expect_code(0).json();
    let (a, b) = (task(&rec, "a"), task(&rec, "b"));
    assert!(ms(&b["started"]) >= end(a) - 5, "max_parallel 1 ran two at once: {rec:#}");
}

#[test]
fn a_task_that_fails_twice_succeeds_on_its_third_attempt() {
    let env = Env::new();
    let echo = Echo::start();
    let flaky = |name: &str, attempts: u32| {
        flow_file(
            &env,
            name,
            &format!(
                "id: flaky\ntasks:\n  - id: call\n    plugin: '{{probe}}'\n    network: {{allow: ['{o}']}}\n    \
                 retry: {{type: constant, max_attempts: {attempts}, interval: 100ms}}\n    \
                 input: {{action: flaky, url: '{u}', fail_until: 2}}\n",
                o = echo.origin(),
                u = echo.url(&format!("/count/{name}")),
            ),
        )
    };
    let r = run(&env, &flaky("three.yaml", 3));
    r.expect_code(0);
    let rec = r.json();
    let call = task(&rec, "call");
    assert_eq!(call["output"]["succeeded_at"], 3, "{rec:#}");
    let attempts = call["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{rec:#}");
    assert!(attempts[0]["error"].as_str().unwrap().contains("attempt 1 failed"), "{rec:#}");
    assert!(attempts[2]["error"].is_null());
    assert!(r.stderr.contains("task call failed (attempt 1 of 3)") && r.stderr.contains("retrying in 100ms"), "{r:#?}");
    let starts = env.run(&["audit", "list", "--action", "task.start", "--json"]).json();
    let numbers: Vec<i64> = starts
        .as_array()
        .unwrap()
        .iter()
        .map(|s| serde_json::from_str::<Value>(s["detail"].as_str().unwrap()).unwrap()["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3], "each attempt audited");
    let shown = env.run(&["executions", "show", rec["id"].as_str().unwrap()]).expect_code(0).stdout.clone();
    assert!(shown.contains("(3 attempts)"), "{shown}");
    // Two attempts are not enough: the flow fails, saying so.
    let r = run(&env, &flaky("two.yaml", 2));
    r.expect_code(1);
    assert!(r.stderr.contains("task call gives up after 2 attempts"), "{r:#?}");
    assert_eq!(task(&r.json(), "call")["attempts"].as_array().unwrap().len(), 2);
}

#[test]
fn allow_failure_goes_on_and_errors_and_finally_handle_a_failure() {
    let env = Env::new();
    env.set_secret("", "TOKEN", "tok-engine-9a7c");
    // A failure that is allowed: the next task runs, the execution is a warning.
    let flow = flow_file(
        &env,
        "warn.yaml",
        "id: warn\ntasks:\n  \
         - {id: shaky, plugin: '{probe}', allow_failure: true, input: {action: fail, message: nope}}\n  \
         - {id: after, plugin: '{probe}', input: {action: context}}\n",
    );
    let r = run(&env, &flow);
    r.expect_code(0);
    let rec = r.json();
    assert_eq!(rec["status"], "warning", "{rec:#}");
    assert_eq!(
        (task(&rec, "shaky")["status"].as_str(), task(&rec, "after")["status"].as_str()),
        (Some("failed"), Some("succeeded"))
    );

    // A failure that is not: what was waiting is skipped, `errors:` get the
    // failure (masked), `finally:` runs, and a false condition skips.
    let flow = flow_file(
        &env,
        "handle.yaml",
        "id: handle\ninputs:\n  - {id: cleanup, type: boolean, default: true}\ntasks:\n  \
         - {id: boom, plugin: '{probe}', secrets: [TOKEN], input: {action: fail, message: 'bad tok-engine-9a7c', get: TOKEN}}\n  \
         - {id: never, plugin: '{probe}', input: {action: context}}\n\
         errors:\n  \
         - {id: tell, plugin: '{probe}', input: {action: digest, text: '{{ error.task }}: {{ error.message }}'}}\n\
         finally:\n  \
         - {id: clean, plugin: '{probe}', if: '{{ inputs.cleanup }}', input: {action: context}}\n  \
         - {id: optional, plugin: '{probe}', if: '{{ outputs.never.task }}', input: {action: context}}\n",
    );
    let r = run(&env, &flow);
    r.expect_code(1);
    let rec = r.json();
    assert_eq!(rec["status"], "failed");
    assert_eq!(task(&rec, "never")["status"], "skipped");
    assert_eq!(task(&rec, "never")["skipped"], "an earlier task failed");
    let told = "boom: task failed: bad ***";
    assert_eq!(task(&rec, "tell")["output"]["sha256"], sha256(told), "the handler saw the masked message: {rec:#}");
    assert_eq!(task(&rec, "clean")["status"], "succeeded");
    // `never` did not run, so its output is missing: the condition cannot be evaluated.
    assert_eq!(task(&rec, "optional")["status"], "failed", "{rec:#}");
    assert!(!r.all_output().contains("tok-engine-9a7c"));
    // No failure: no `errors:`; a false condition skips `clean`.
    let ok = flow_file(
        &env,
        "fine.yaml",
        "id: fine\ninputs:\n  - {id: cleanup, type: boolean, default: false}\ntasks:\n  \
         - {id: a, plugin: '{probe}', input: {action: context}}\n\
         errors:\n  - {id: tell, plugin: '{probe}', input: {action: context}}\n\
         finally:\n  - {id: clean, plugin: '{probe}', if: '{{ inputs.cleanup }}', input: {action: context}}\n",
    );
    let rec = run(&env, &ok).expect_code(0).json();
    assert_eq!(
        (task(&rec, "tell")["status"].as_str(), task(&rec, "clean")["status"].as_str()),
        (Some("pending"), Some("skipped"))
    );
    assert!(task(&rec, "clean")["skipped"].as_str().unwrap().contains("is false"), "{rec:#}");
}

#[test]
fn finally_runs_after_a_trap_a_task_timeout_and_the_flows_timeout() {
    let env = Env::new();
    let with_finally = |name: &str, head: &str, main: &str| {
        flow_file(
            &env,
            name,
            &format!(
                "id: fin\n{head}tasks:\n  - {{id: main, plugin: '{{probe}}', {main}}}\n\
                 errors:\n  - {{id: tell, plugin: '{{probe}}', input: {{action: digest, text: '{{{{ error.message }}}}'}}}}\n\
                 finally:\n  - {{id: clean, plugin: '{{probe}}', input: {{action: context}}}}\n"
            ),
        )
    };
    for (name, head, main, said) in [
        ("trap.yaml", "", "input: {action: panic, message: boom}", "plugin trapped"),
        ("slow.yaml", "", "limits: {timeout: 1s}, input: {action: sleep, secs: 30}", "time limit"),
        ("flow.yaml", "timeout: 1s\n", "input: {action: sleep, secs: 30}", "the flow's timeout of 1s passed"),
    ] {
        let r = run(&env, &with_finally(name, head, main));
        assert_ne!(r.code, 0, "{name}: {r:#?}");
        let rec = r.json();
        assert_eq!(rec["status"], "failed", "{name}: {rec:#}");
        assert!(task(&rec, "main")["error"].as_str().unwrap().contains(said), "{name}: {rec:#}");
        assert_eq!(task(&rec, "tell")["status"], "succeeded", "{name}: {rec:#}");
        assert_eq!(task(&rec, "clean")["status"], "succeeded", "{name}: {rec:#}");
    }
}

#[test]
fn parallel_tasks_output_is_masked_however_it_interleaves() {
    let env = Env::new();
    env.set_secret("", "K1", "first-secret-4411");
    env.set_secret("", "K2", "second-secret-8822");
    let parts = |k: &str, v: &str| {
        let (a, b) = v.split_at(7);
        json!({"action": "write_parts", "get": k, "parts": [format!("x {a}"), format!("{b} y\n"), format!("{v}\n")]})
            .to_string()
    };
    let flow = flow_file(
        &env,
        "mask.yaml",
        &format!(
            "id: mask\ntasks:\n  - {{id: one, plugin: '{{probe}}', secrets: [K1], depends_on: [], input: {}}}\n  \
             - {{id: two, plugin: '{{probe}}', secrets: [K2], depends_on: [], input: {}}}\n",
            parts("K1", "first-secret-4411"),
            parts("K2", "second-secret-8822")
        ),
    );
    let r = run(&env, &flow);
    r.expect_code(0);
    let out = r.all_output();
    assert!(!out.contains("first-secret-4411") && !out.contains("second-secret-8822"), "{out}");
    assert!(out.contains("[one] x ***") || out.contains("x *** y"), "{out}");
}

#[test]
fn for_each_runs_a_task_per_value_at_most_concurrency_at_once_with_outputs_in_order() {
    let env = Env::new();
    let flow = flow_file(
        &env,
        "each.yaml",
        "id: each\ninputs:\n  - {id: regions, type: json, default: [eu, us, ap, sa]}\ntasks:\n  \
         - id: extract\n    plugin: '{probe}'\n    for_each: {values: '{{ inputs.regions }}', concurrency: 2}\n    \
           input: {action: digest, text: 'region {{ item }}'}\n  \
         - id: report\n    plugin: '{probe}'\n    input: {action: digest, text: '{{ outputs.extract[3].sha256 }}'}\n",
    );
    let r = run(&env, &flow);
    r.expect_code(0);
    let rec = r.json();
    let out = task(&rec, "extract")["output"].as_array().unwrap().clone();
    let want: Vec<Value> =
        ["eu", "us", "ap", "sa"].iter().map(|x| json!({"sha256": sha256(&format!("region {x}"))})).collect();
    assert_eq!(out, want, "one output per value, in the order of the values");
    assert_eq!(task(&rec, "report")["output"]["sha256"], sha256(&sha256("region sa")));
    // Four runs of the task, each audited.
    let starts = env.run(&["audit", "list", "--action", "task.start", "--json"]).json();
    assert_eq!(starts.as_array().unwrap().iter().filter(|s| s["task"] == "extract").count(), 4);
    // `item` only where there is a loop; a value that is not a list fails the task.
    let bad = flow_file(
        &env,
        "bad.yaml",
        "id: bad\ntasks:\n  - {id: a, plugin: '{probe}', input: {action: digest, text: '{{ item }}'}}\n",
    );
    let r = env.run_with(env.host().arg("validate").arg(&bad), b"");
    assert!(r.stdout.contains("`item` is the value of a `for_each` iteration"), "{r:#?}");
    let scalar = flow_file(
        &env,
        "scalar.yaml",
        "id: scalar\ninputs:\n  - {id: n, type: number, default: 3}\ntasks:\n  \
         - {id: a, plugin: '{probe}', for_each: {values: '{{ inputs.n }}'}, input: {action: context}}\n",
    );
    let r = run(&env, &scalar);
    assert_ne!(r.code, 0);
    assert!(task(&r.json(), "a")["error"].as_str().unwrap().contains("for_each.values is not a list: 3"), "{r:#?}");
}

/// An approval gate on the command line: `host run` pauses; another
/// terminal's `host executions approve` lets it go on. With
/// `distinct_from_trigger`, the operator who started it may not decide.
#[test]
fn host_run_waits_at_a_gate_until_host_executions_approve() {
    let env = Env::new();
    env.set_secret("", "KEY", "gate-key-5521");
    let gated = |name: &str, distinct: bool| {
        flow_file(
            &env,
            name,
            &format!(
                "id: gated\ntasks:\n  - {{id: go, plugin: '{{probe}}', secrets: [KEY], \
                 approval: {{distinct_from_trigger: {distinct}, timeout: 30s}}, input: {{action: get, names: [KEY]}}}}\n"
            ),
        )
    };
    let paused_id = || {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let r = env.run(&["executions", "list", "--json"]);
            if let Some(e) = r.json().as_array().and_then(|a| a.iter().find(|e| e["status"] == "paused").cloned()) {
                return e["id"].as_str().unwrap().to_owned();
            }
            assert!(std::time::Instant::now() < end, "never paused");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let child = env
        .host()
        .arg("run")
        .arg(gated("gate.yaml", false))
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let id = paused_id();
    assert!(env.run(&["audit", "list", "--action", "secret.read", "--json"]).json().as_array().unwrap().is_empty());
    let r = env.run(&["executions", "approve", &id, "--task", "nope"]);
    r.expect_code(2);
    assert!(r.stderr.contains("waiting: go"), "{r:#?}");
    env.run(&["executions", "approve", &id, "--task", "go", "--comment", "fine"]).expect_code(0);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    assert!(rec["tasks"][0]["approval"].as_str().unwrap().starts_with("approved by"), "{rec:#}");
    // The operator who started it may not decide a distinct gate.
    let mut child = env
        .host()
        .arg("run")
        .arg(gated("distinct.yaml", true))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let id = paused_id();
    let r = env.run(&["executions", "approve", &id, "--task", "go"]);
    r.expect_code(2);
    assert!(r.stderr.contains("distinct_from_trigger"), "{r:#?}");
    env.run(&["executions", "reject", &id, "--task", "go", "--comment", "no"]).expect_code(2);
    child.kill().unwrap();
    child.wait().unwrap();
    let denied = env.run(&["audit", "list", "--action", "execution.approve", "--json"]).json();
    assert!(denied.as_array().unwrap().iter().any(|r| r["outcome"] == "denied"), "{denied:#}");
}

/// `concurrency:` holds for `host run FLOW.yaml` across processes on one
/// data directory, as on a server: over the limit a run is cancelled,
/// fails, or waits for a place; a run whose process was killed holds none.
#[test]
fn a_flows_concurrency_holds_across_command_line_runs_on_one_data_directory() {
    let env = Env::new();
    let nap = |behavior: &str, secs: u64| {
        let yaml = format!(
            "id: nap\nconcurrency: {{limit: 1, behavior: {behavior}}}\ntasks:\n  - id: nap\n    plugin: '{{probe}}'\n    \
             input: {{action: sleep, secs: {secs}}}\n"
        );
        flow_file(&env, &format!("nap-{behavior}-{secs}.yaml"), &yaml)
    };
    let spawn = |flow: &PathBuf| {
        let mut c = env.host();
        c.arg("run").arg(flow).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    // The id of the one running execution of `nap`, once a process runs it.
    let running = || {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            // Until the first run made the data directory, there is nothing to list.
            let r = env.run(&["executions", "list", "--json"]);
            let list = if r.code == 0 { r.json() } else { json!([]) };
            let found = list.as_array().unwrap().iter().find(|r| r["status"] == "running").cloned();
            if let Some(r) = found {
                return r["id"].as_str().unwrap().to_owned();
            }
            assert!(std::time::Instant::now() < end, "no run started: {list} {r:#?}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let mut first = spawn(&nap("queue", 3));
    let first_id = running();
    let r = run(&env, &nap("cancel", 0));
    r.expect_code(4);
    assert!(r.stderr.contains("was cancelled: not run: 1 execution(s) of the flow were running"), "{r:#?}");
    assert_eq!(r.json()["status"], "cancelled");
    let r = run(&env, &nap("fail", 0));
    r.expect_code(1);
    assert!(r.stderr.contains("its concurrency limit is 1 (behavior: fail)"), "{r:#?}");
    // `queue`: it waits for the first to end, then runs.
    let r = run(&env, &nap("queue", 0));
    r.expect_code(0);
    assert!(r.stderr.contains("waiting: 1 execution(s) of the flow hold all 1 place(s)"), "{r:#?}");
    assert!(first.wait().unwrap().success());
    let before = env.run(&["executions", "show", &first_id, "--json"]).json();
    assert!(ms(&task(&r.json(), "nap")["started"]) >= ms(&before["ended"]), "it ran after the first ended");
    // A run killed mid-way holds no place: the next admission records it interrupted.
    let mut killed = spawn(&nap("queue", 60));
    let killed_id = running();
    killed.kill().unwrap();
    killed.wait().unwrap();
    run(&env, &nap("cancel", 0)).expect_code(0);
    assert_eq!(env.run(&["executions", "show", &killed_id, "--json"]).json()["status"], "interrupted");
}
