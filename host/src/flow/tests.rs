//! The flow format's unit tests: parsing, validation, expressions.
use super::*;
use serde_json::json;

fn flow(text: &str) -> Result<(Flow, Diagnostics), Diagnostics> {
    parse(text, "f.yaml", Path::new("/flows"))
}

fn errors(text: &str) -> String {
    flow(text).unwrap_err().to_string()
}

const OK: &str = "
id: nightly
namespace: finance.reporting
inputs:
  - id: day
    required: true
tasks:
  - id: sign
    plugin: ../plugins/sign.wasm
    secrets: [KEY]
    limits: { memory: 32MiB, timeout: 5s }
    input:
      payload: 'report for {{ inputs.day }}'
  - id: notify
    plugin: notify.wasm
    input:
      signature: '{{ outputs.sign.signature }}'
      whole: '{{ outputs.sign }}'
      exec: '{{ execution.id }} {{ flow.id }} {{ flow.namespace }}'
";

#[test]
fn a_good_flow_parses() {
    let (f, d) = flow(OK).unwrap();
    assert!(d.0.is_empty());
    assert_eq!(f.tasks.len(), 2);
    assert_eq!(f.tasks[0].plugin, Path::new("/flows/../plugins/sign.wasm"));
    assert_eq!(f.tasks[0].limits.memory, 32 << 20);
    assert_eq!(f.tasks[0].limits.timeout, std::time::Duration::from_secs(5));
    assert!(f.tasks[1].grants.is_empty());
}

#[test]
fn unknown_fields_and_wrong_types_name_line_and_column() {
    let e = errors("id: x\ntasks:\n  - id: a\n    plugn: a.wasm\n");
    assert!(e.starts_with("error: f.yaml:4:5: tasks[0]: unknown field `plugn`"), "{e}");
    let e = errors("id: x\ntasks:\n  - id: a\n    plugin: a.wasm\n    secrets: KEY\n");
    assert!(e.contains("f.yaml:5:14") && e.contains("invalid type"), "{e}");
}

#[test]
fn semantic_errors_name_the_task() {
    let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm}\n  - {id: a, plugin: b.wasm}\n");
    assert!(e.contains("task a: duplicate task id"), "{e}");
    let e = errors(
        "id: x\ntasks:\n  - {id: a, plugin: a.wasm, input: {v: '{{ outputs.b.x }}'}}\n  - {id: b, plugin: b.wasm}\n",
    );
    assert!(e.contains("f.yaml: task a: input.v: `outputs.b` refers to a task that does not run before"), "{e}");
    let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, input: {v: '{{ inputs.nope }}'}}\n");
    assert!(e.contains("`inputs.nope` is not a declared input"), "{e}");
    let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, limits: {memory: '64'}}\n");
    assert!(e.contains("task a: limits") && e.contains("needs a unit"), "{e}");
}

#[test]
fn secret_expressions_are_rejected_with_guidance() {
    let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, input: {k: \"{{ secret('DB') }}\"}}\n");
    assert!(
        e.contains("secrets: [NAME]") && e.contains("secrets::get(\\\"NAME\\\")")
            || e.contains("secrets::get(\"NAME\")"),
        "{e}"
    );
}

#[test]
fn rendering_keeps_types_and_interpolates() {
    let scope = Scope {
        inputs: json!({"day": "2026-11-27", "n": 3}).as_object().unwrap().clone(),
        outputs: json!({"sign": {"signature": "sha256=ab", "list": [1, {"x": true}]}}).as_object().unwrap().clone(),
        execution_id: "e1".into(),
        flow_id: "f".into(),
        namespace: "ns".into(),
        trigger: json!({"type": "webhook", "id": "gh", "body": {"ref": "main"}, "headers": {"X-GitHub-Event": "push"}}),
        error: json!({"task": "sign", "message": "boom"}),
        item: Value::Null,
    };
    let t = json!({
        "a": "{{ inputs.n }}",
        "b": "n={{ inputs.n }} day={{inputs.day}}",
        "c": "{{ outputs.sign.list[1].x }}",
        "d": ["{{ execution.id }}", "{{ flow.id }}/{{ flow.namespace }}"],
        "e": 5,
        "t": "{{ trigger.headers.X-GitHub-Event }} on {{ trigger.body.ref }}",
        "err": "{{ error.task }}: {{ error.message }}"
    });
    assert_eq!(
        render(&t, &scope).unwrap(),
        json!({"a": 3, "b": "n=3 day=2026-11-27", "c": true, "d": ["e1", "f/ns"], "e": 5, "t": "push on main",
                   "err": "sign: boom"})
    );
    let e = render(&json!("{{ outputs.sign.nope }}"), &scope).unwrap_err();
    assert_eq!(e, "the output of task `sign` has no field `nope`");
}

#[test]
fn a_dag_is_checked_for_unknown_ids_cycles_and_upstream_outputs() {
    let t = |id: &str, extra: &str| format!("  - {{id: {id}, plugin: a.wasm{extra}}}\n");
    let e = errors(&format!("id: x\ntasks:\n{}{}", t("a", ", depends_on: [nope]"), t("b", "")));
    assert!(e.contains("task a: depends_on: no task `nope` in `tasks:`"), "{e}");
    let e = errors(&format!(
        "id: x\ntasks:\n{}{}{}",
        t("a", ", depends_on: [c]"),
        t("b", ", depends_on: [a]"),
        t("c", ", depends_on: [b]")
    ));
    assert!(e.contains("these tasks wait for each other") && e.contains("->"), "{e}");
    // b and c both follow a, but c may not read b's output: they may run at once.
    let e = errors(&format!(
        "id: x\ntasks:\n{}{}{}",
        t("a", ""),
        t("b", ", depends_on: [a]"),
        t("c", ", depends_on: [a], input: {v: '{{ outputs.b.x }}'}")
    ));
    assert!(e.contains("task c: input.v: `outputs.b` refers to a task that does not run before this one"), "{e}");
    let (f, _) = flow(&format!(
        "id: x\nmax_parallel: 2\ntasks:\n{}{}{}",
        t("a", ""),
        t("b", ", depends_on: [a]"),
        t("c", ", depends_on: [b], input: {v: '{{ outputs.a.x }}'}")
    ))
    .unwrap();
    assert_eq!((f.max_parallel, f.plan.deps(2)), (2, &[1][..]));
    // `error` only where there is one; errors/finally run in order.
    let e = errors(&format!("id: x\ntasks:\n{}", t("a", ", input: {m: '{{ error.message }}'}")));
    assert!(e.contains("`error` is the failure an `errors:` or `finally:` task handles"), "{e}");
    let (f, _) = flow(&format!(
        "id: x\ntasks:\n{}errors:\n{}finally:\n{}",
        t("a", ""),
        t("tell", ", input: {m: '{{ error.task }}: {{ error.message }}'}"),
        t("clean", ", if: '{{ outputs.a.ok }}'")
    ))
    .unwrap();
    let phases: Vec<Phase> = f.tasks.iter().map(|t| t.phase).collect();
    assert_eq!(phases, [Phase::Main, Phase::Errors, Phase::Finally]);
    let e = errors(&format!("id: x\ntasks:\n{}finally:\n{}", t("a", ""), t("a", "")));
    assert!(e.contains("duplicate task id"), "{e}");
    let e = errors(&format!("id: x\ntasks:\n{}finally:\n{}", t("a", ""), t("b", ", depends_on: [a]")));
    assert!(e.contains("`finally:` tasks run in order"), "{e}");
}

#[test]
fn retry_policies_are_checked_and_back_off() {
    let (f, _) = flow(
            "id: x\nretry: {max_attempts: 2}\ntasks:\n  - {id: a, plugin: a.wasm}\n  - {id: b, plugin: a.wasm, retry: {type: exponential, max_attempts: 5, interval: 100ms, max_interval: 300ms}}\n",
        )
        .unwrap();
    assert_eq!(f.tasks[0].retry.unwrap().max_attempts, 2, "the flow's default");
    let r = f.tasks[1].retry.unwrap();
    let waits: Vec<u128> = (1..=4).map(|a| r.delay(a).as_millis()).collect();
    assert_eq!(waits, [100, 200, 300, 300]);
    let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, retry: {max_attempts: 0}}\n");
    assert!(e.contains("task a: retry: max_attempts is 1 to 100"), "{e}");
    let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, if: 'yes'}\n");
    assert!(e.contains("is not an expression"), "{e}");
    assert!(truthy(&json!("true")) && !truthy(&json!("false")) && !truthy(&json!(0)) && truthy(&json!([1])));
}

#[test]
fn rotate_grants_are_their_own_list() {
    let (f, _) =
        flow("id: x\ntasks:\n  - {id: a, plugin: a.wasm, secrets: [ADMIN], rotate: [SVC_PASSWORD]}\n").unwrap();
    let names = |g: &Grants| g.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        (names(&f.tasks[0].grants), names(&f.tasks[0].rotate)),
        (vec!["ADMIN".into()], vec!["SVC_PASSWORD".into()])
    );
    let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, rotate: [\"../x\"]}\n");
    assert!(e.contains("task a: rotate:"), "{e}");
    let base = "id: x\ntriggers:\n  - {id: hook, webhook: {key_secret: HOOK_KEY}}\n";
    let e = errors(&format!("{base}tasks:\n  - {{id: a, plugin: a.wasm, rotate: [HOOK_KEY]}}\n"));
    assert!(e.contains("HOOK_KEY authenticates webhook trigger hook"), "{e}");
}

#[test]
fn triggers_are_checked_with_the_flow() {
    let base = "id: x\ntriggers:\n  - {id: hook, webhook: {key_secret: HOOK_KEY, headers: [X-Event]}}\n  - {id: nightly, schedule: {cron: '0 2 * * *', timezone: Europe/Paris, recover: last}}\n";
    let (f, _) =
        flow(&format!("{base}tasks:\n  - {{id: a, plugin: a.wasm, input: {{b: '{{{{ trigger.body }}}}'}}}}\n"))
            .unwrap();
    assert_eq!(f.triggers.len(), 2);
    // The webhook's key never reaches a task of the flow.
    let e = errors(&format!("{base}tasks:\n  - {{id: a, plugin: a.wasm, secrets: [HOOK_KEY]}}\n"));
    assert!(e.contains("task a: secrets: HOOK_KEY authenticates webhook trigger hook"), "{e}");
    // A trigger gives no inputs: a required one needs a default.
    let e = errors(&format!("{base}inputs:\n  - {{id: day, required: true}}\ntasks:\n  - {{id: a, plugin: a.wasm}}\n"));
    assert!(e.contains("input day: the flow has triggers"), "{e}");
    // `trigger` means nothing in a flow without triggers.
    let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, input: {b: '{{ trigger.body }}'}}\n");
    assert!(e.contains("declares no `triggers:`"), "{e}");
    let e = errors(
        "id: x\ntriggers:\n  - {id: t, schedule: {cron: '0 2 * * *', recover: sometimes}}\ntasks:\n  - {id: a, plugin: a.wasm}\n",
    );
    assert!(e.starts_with("error: f.yaml:3:") && e.contains("unknown variant `sometimes`"), "{e}");
}

#[test]
fn hostile_yaml_is_an_error_not_a_hang() {
    let bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
                    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
                    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]\nid: x\ntasks: []\n";
    assert!(flow(bomb).is_err());
    let deep = format!(
        "id: x\ntasks:\n  - id: a\n    plugin: a.wasm\n    input: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let e = errors(&deep);
    assert!(e.contains("f.yaml:5:76: brackets are nested deeper than 64 levels"), "{e}");
}

#[test]
fn inputs_are_typed_and_required() {
    let (f, _) = flow("id: x\ninputs:\n  - {id: n, type: number, required: true}\n  - {id: b, type: boolean, default: false}\ntasks:\n  - {id: a, plugin: a.wasm}\n").unwrap();
    let v = bind_inputs(&f, &[("n".into(), "42".into())]).unwrap();
    assert_eq!(Value::Object(v), json!({"n": 42, "b": false}));
    assert!(bind_inputs(&f, &[]).unwrap_err().contains("needs input `n`"));
    assert!(bind_inputs(&f, &[("n".into(), "x".into())]).unwrap_err().contains("must be a number"));
    assert!(bind_inputs(&f, &[("zz".into(), "1".into())]).unwrap_err().contains("has no input `zz`"));
}

#[test]
fn sizes_need_units() {
    assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
    assert_eq!(parse_size("1gib").unwrap(), 1 << 30);
    assert_eq!(parse_size("10kB").unwrap(), 10_000);
    assert!(parse_size("64").is_err());
    assert!(parse_size("64 parsecs").is_err());
}

#[test]
fn the_schema_describes_tasks() {
    let s = schema().to_string();
    assert!(s.contains("\"tasks\"") && s.contains("\"secrets\"") && s.contains("additionalProperties"), "{s}");
    for field in
        ["depends_on", "retry", "allow_failure", "\"if\"", "errors", "finally", "max_parallel", "timeout", "rotate"]
    {
        assert!(s.contains(field), "the schema lacks {field}");
    }
}
