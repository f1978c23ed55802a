//! Validation of a parsed flow: ids, names, limits, grants, the task graph
//! (`depends_on`: unknown ids, cycles), retry, loops, gates, and every
//! expression against what its task may name. Every finding names the file
//! and the task; the first error does not hide the others.

use super::expr::{Context, check_expressions};
use super::*;

pub(super) fn check(doc: FlowDoc, file: &str, base: &Path) -> Result<(Flow, Diagnostics), Diagnostics> {
    let mut c = Checker { file, found: Vec::new() };
    let id = TaskId::new(&doc.id).map_err(|e| c.error("id", e.to_string())).ok();
    let namespace = Namespace::new(&doc.namespace).map_err(|e| c.error("namespace", e.to_string())).ok();
    let mut input_ids = HashSet::new();
    for i in &doc.inputs {
        if TaskId::new(&i.id).is_err() {
            c.error(format!("input {:?}", i.id), "input ids may contain only ASCII letters, digits, '_' and '-'");
        }
        if !input_ids.insert(i.id.clone()) {
            c.error(format!("input {}", i.id), "duplicate input id");
        }
        if let Some(d) = &i.default
            && !kind_matches(i.kind, d)
        {
            c.error(format!("input {}", i.id), format!("default {d} is not of type {:?}", i.kind));
        }
    }
    if doc.tasks.is_empty() {
        c.error("tasks", "a flow needs at least one task");
    }
    let (triggers, trigger_errors) = crate::trigger::check(&doc.triggers);
    for (at, message) in trigger_errors {
        c.error(at, message);
    }
    if !doc.triggers.is_empty() {
        for i in doc.inputs.iter().filter(|i| i.required && i.default.is_none()) {
            c.error(
                format!("input {}", i.id),
                "the flow has triggers, which start it without inputs: give this input a default",
            );
        }
    }
    let flow_retry = doc.retry.as_ref().map(Retry::check).transpose().map_err(|e| c.error("retry", e)).ok().flatten();
    let timeout =
        doc.timeout.as_deref().map(parse_duration).transpose().map_err(|e| c.error("timeout", e)).ok().flatten();
    if let Some(cc) = &doc.concurrency
        && !(1..=1000).contains(&cc.limit)
    {
        c.error("concurrency", format!("limit is 1 to 1000, not {}", cc.limit));
    }
    let max_parallel = doc.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL);
    if !(1..=64).contains(&max_parallel) {
        c.error("max_parallel", format!("is 1 to 64, not {max_parallel}"));
    }
    let phases = [
        (Phase::Main, "tasks", &doc.tasks),
        (Phase::Errors, "errors", &doc.errors),
        (Phase::Finally, "finally", &doc.finally),
    ];
    // Ids are unique across the three lists: outputs and records name them.
    let mut ids: Vec<&str> = Vec::new();
    for (_, _, list) in &phases {
        for t in list.iter() {
            if ids.contains(&t.id.as_str()) {
                c.error(format!("task {}", t.id), "duplicate task id: task ids must be unique in a flow");
            }
            ids.push(&t.id);
        }
    }
    let plan = main_plan(&mut c, &doc.tasks);
    let main_ids: Vec<String> = doc.tasks.iter().map(|t| t.id.clone()).collect();
    let mut tasks = Vec::new();
    for (phase, list_name, list) in phases {
        for (i, t) in list.iter().enumerate() {
            let where_ = format!("task {}", t.id);
            if phase != Phase::Main && t.depends_on.is_some() {
                c.error(&where_, format!("depends_on: `{list_name}:` tasks run in order; depends_on is for `tasks:`"));
            }
            // Whose outputs it may read: its upstream tasks; an `errors:` or
            // `finally:` task, any of `tasks:` that ran and those before it.
            let before: Vec<String> = match (phase, &plan) {
                (Phase::Main, Some(p)) => p.upstream(i).into_iter().map(|u| main_ids[u].clone()).collect(),
                (Phase::Main, None) => Vec::new(),
                (Phase::Errors, _) => main_ids.iter().chain(doc.errors[..i].iter().map(|t| &t.id)).cloned().collect(),
                (Phase::Finally, _) => main_ids
                    .iter()
                    .chain(doc.errors.iter().map(|t| &t.id))
                    .chain(doc.finally[..i].iter().map(|t| &t.id))
                    .cloned()
                    .collect(),
            };
            let ctx = Context {
                inputs: &input_ids,
                triggers: !doc.triggers.is_empty(),
                error: phase != Phase::Main,
                item: t.for_each.is_some(),
            };
            if let Some(task) = check_task(&mut c, t, phase, base, &triggers, &ctx, &before, flow_retry) {
                tasks.push(task);
            }
        }
    }
    let diags = Diagnostics(c.found);
    if diags.has_errors() {
        return Err(diags);
    }
    let (Some(id), Some(namespace)) = (id, namespace) else { unreachable!("errors were reported above") };
    let plan = plan.expect("errors were reported above");
    let flow = Flow {
        id,
        namespace,
        inputs: doc.inputs,
        tasks,
        plan,
        max_parallel,
        timeout,
        concurrency: doc.concurrency,
        triggers,
        on_interrupt: doc.on_interrupt,
        source: file.to_owned(),
    };
    Ok((flow, diags))
}

/// The order of `tasks:`: file order when no task says `depends_on`, else
/// the graph it draws (unknown ids and cycles are errors).
fn main_plan(c: &mut Checker<'_>, tasks: &[TaskDoc]) -> Option<crate::plan::Plan> {
    if tasks.iter().all(|t| t.depends_on.is_none()) {
        return Some(crate::plan::Plan::sequential(tasks.len()));
    }
    let index = |id: &str| tasks.iter().position(|t| t.id == id);
    let mut deps = Vec::new();
    let mut ok = true;
    for t in tasks {
        let mut mine = Vec::new();
        for d in t.depends_on.iter().flatten() {
            match index(d) {
                Some(j) => mine.push(j),
                None => {
                    ok = false;
                    c.error(format!("task {}", t.id), format!("depends_on: no task `{d}` in `tasks:`"));
                }
            }
        }
        deps.push(mine);
    }
    if !ok {
        return None;
    }
    match crate::plan::Plan::new(deps) {
        Ok(p) => Some(p),
        Err(cycle) => {
            let names: Vec<&str> = cycle.iter().map(|&i| tasks[i].id.as_str()).collect();
            c.error(
                format!("task {}", names[0]),
                format!("depends_on: these tasks wait for each other, so none can start: {}", names.join(" -> ")),
            );
            None
        }
    }
}

/// One task checked; `None` if it has errors (reported).
#[allow(clippy::too_many_arguments)]
fn check_task(
    c: &mut Checker<'_>,
    t: &TaskDoc,
    phase: Phase,
    base: &Path,
    triggers: &[Trigger],
    ctx: &Context<'_>,
    before: &[String],
    flow_retry: Option<Retry>,
) -> Option<FlowTask> {
    let where_ = format!("task {}", t.id);
    let tid = TaskId::new(&t.id).map_err(|e| c.error(&where_, e.to_string())).ok();
    let names = |list: &[String], what: &str, c: &mut Checker<'_>| {
        let mut out = Vec::new();
        for s in list {
            match SecretName::new(s) {
                Ok(n) => out.push(n),
                Err(e) => c.error(&where_, format!("{what}: {e}")),
            }
        }
        out
    };
    let grants = names(&t.secrets, "secrets", c);
    let rotate = names(&t.rotate, "rotate", c);
    let limits = limits(&t.limits).map_err(|e| c.error(format!("{where_}: limits"), e)).ok();
    let network = t.network.policy(base).map_err(|e| c.error(format!("{where_}: network"), e)).ok();
    let retry = match &t.retry {
        Some(r) => Retry::check(r).map(Some).map_err(|e| c.error(format!("{where_}: retry"), e)).ok(),
        None => Some(flow_retry),
    };
    let sha256 = t.sha256.as_ref().map(|s| s.trim().to_ascii_lowercase());
    if let Some(s) = &sha256
        && (s.len() != 64 || !s.chars().all(|ch| ch.is_ascii_hexdigit()))
    {
        c.error(&where_, format!("sha256 {s:?} is not 64 hex digits"));
    }
    for tr in triggers {
        if let TriggerKind::Webhook(w) = &tr.kind
            && (grants.contains(w.secret()) || rotate.contains(w.secret()))
        {
            c.error(
                &where_,
                format!(
                    "secrets: {} authenticates webhook trigger {}; a task may not read it (use another secret)",
                    w.secret(),
                    tr.id
                ),
            );
        }
    }
    check_expressions(c, &where_, "input", &t.input, ctx, before);
    if let Some(cond) = &t.condition {
        if !cond.contains("{{") {
            c.error(&where_, format!("if: {cond:?} is not an expression: write it as \"{{{{ inputs.X }}}}\""));
        }
        check_expressions(c, &where_, "if", &Value::String(cond.clone()), ctx, before);
    }
    let for_each = t.for_each.as_ref().and_then(|f| {
        let loop_ctx = Context { item: false, ..*ctx };
        check_expressions(c, &where_, "for_each.values", &f.values, &loop_ctx, before);
        let concurrency = f.concurrency.unwrap_or(1);
        if !(1..=64).contains(&concurrency) {
            c.error(&where_, format!("for_each.concurrency is 1 to 64, not {concurrency}"));
            return None;
        }
        if !(f.values.is_array() || f.values.as_str().is_some_and(|s| s.contains("{{"))) {
            c.error(&where_, "for_each.values is a list, or an expression such as \"{{ inputs.regions }}\"");
            return None;
        }
        Some(ForEach { values: f.values.clone(), concurrency })
    });
    if t.for_each.is_some() && for_each.is_none() {
        return None;
    }
    let approval = match &t.approval {
        None => Some(None),
        Some(_) if phase != Phase::Main => {
            c.error(&where_, "approval: gates are for `tasks:`; `errors:` and `finally:` run unattended");
            None
        }
        Some(a) => {
            let permission = a.permission.as_deref().unwrap_or("execution:approve").parse::<crate::authz::Permission>();
            let timeout = a.timeout.as_deref().map(parse_duration).transpose();
            match (permission, timeout) {
                (Ok(permission), Ok(timeout)) => Some(Some(Approval {
                    permission,
                    timeout: timeout.unwrap_or(std::time::Duration::from_secs(24 * 3600)),
                    distinct_from_trigger: a.distinct_from_trigger,
                })),
                (Err(e), _) | (_, Err(e)) => {
                    c.error(format!("{where_}: approval"), e);
                    None
                }
            }
        }
    };
    let (id, limits, network, retry, approval) = (tid?, limits?, network?, retry?, approval?);
    Some(FlowTask {
        id,
        plugin: base.join(&t.plugin),
        sha256,
        grants: Grants::new(grants),
        rotate: Grants::new(rotate),
        phase,
        retry,
        allow_failure: t.allow_failure,
        condition: t.condition.clone(),
        for_each,
        approval,
        limits,
        network,
        input: t.input.clone(),
        literal_input: false,
    })
}

pub(super) fn kind_matches(kind: InputKind, v: &Value) -> bool {
    match kind {
        InputKind::String => v.is_string(),
        InputKind::Number => v.is_number(),
        InputKind::Boolean => v.is_boolean(),
        InputKind::Json => true,
    }
}

fn limits(l: &LimitsDoc) -> Result<Limits, String> {
    let d = Limits::default();
    let memory = l.memory.as_deref().map(parse_size).transpose()?.unwrap_or(d.memory);
    if memory > crate::limits::MAX_TASK_MEMORY {
        return Err(format!(
            "memory {} is over the per-task ceiling of {}: a task that needs more must be split",
            l.memory.as_deref().unwrap_or_default(),
            crate::limits::show_size(crate::limits::MAX_TASK_MEMORY)
        ));
    }
    Ok(Limits {
        memory,
        timeout: l.timeout.as_deref().map(parse_duration).transpose()?.unwrap_or(d.timeout),
        output: l.output.as_deref().map(parse_size).transpose()?.unwrap_or(d.output),
    })
}
