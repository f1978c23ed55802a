//! Running a flow: load and check every plugin before anything runs, then
//! run the tasks in order, each with its own grants, limits and sandbox,
//! carrying masked outputs forward and recording the execution.
//!
//! Invariant: a pinned digest mismatch, a missing plugin or a plugin that
//! does not fit the world stops the flow before its first task starts; a
//! task's output reaches later tasks, the terminal and the execution record
//! only after masking.

use crate::access::TaskIdentity;
use crate::audit::now_rfc3339;
use crate::capability::wasi::ungrantable_imports;
use crate::exec::{ExecutionEnv, TaskFailure, TaskSpec, run_task};
use crate::executions::{ExecutionRecord, Executions, TaskRecord, TaskStatus};
use crate::flow::{Diagnostic, Diagnostics, Flow, Scope, Severity, render};
use crate::mask::MaskSet;
use crate::names::ExecutionId;
use crate::runtime::{LoadedFrom, Plugin, Runtime};
use serde_json::{Map, Value};
use std::sync::Arc;

/// Loads every task's plugin and checks pins and imports.
/// Errors stop the flow; warnings (imports no flow grants) are returned
/// alongside the plugins: `validate` shows them, `run` and `exec` only
/// with `-v`.
pub fn prepare(runtime: &Runtime, flow: &Flow) -> Result<(Vec<Plugin>, Diagnostics), Diagnostics> {
    let mut found = Vec::new();
    let mut plugins = Vec::new();
    for t in &flow.tasks {
        let location = format!("{}: task {}", flow.source, t.id);
        let mut error = |message: String| {
            found.push(Diagnostic { severity: Severity::Error, location: location.clone(), message });
        };
        let loaded = match &t.sha256 {
            Some(pin) => runtime.load_pinned(&t.plugin, pin),
            None => runtime.load(&t.plugin),
        };
        let plugin = match loaded {
            Ok(p) => p,
            Err(e) => {
                error(e.to_string());
                continue;
            }
        };
        let how = match plugin.loaded_from {
            LoadedFrom::Cache => "loaded from the compiled cache",
            LoadedFrom::Compiled => "compiled",
            LoadedFrom::Memory => "already loaded",
        };
        tracing::info!("plugin {} {how} (sha256 {})", plugin.origin, plugin.sha256);
        if let Some(pin) = &t.sha256
            && *pin != plugin.sha256
        {
            error(format!(
                "plugin {} has sha256 {}, but the flow pins {pin}: refusing to run a different binary",
                t.plugin.display(),
                plugin.sha256
            ));
            continue;
        }
        found.push(Diagnostic {
            severity: Severity::Note,
            location: location.clone(),
            message: format!(
                "plugin {} is a {}",
                t.plugin.display(),
                crate::inspect::describe(plugin.shape, &plugin.imports)
            ),
        });
        // One finding per capability, however many of its interfaces the
        // plugin imports (every Rust std plugin imports all of wasi:sockets).
        let mut by_what: Vec<(&str, Vec<&str>)> = Vec::new();
        for (import, what) in ungrantable_imports(&plugin.imports) {
            match by_what.iter_mut().find(|(w, _)| *w == what) {
                Some((_, list)) => list.push(import),
                None => by_what.push((what, vec![import])),
            }
        }
        for (what, imports) in by_what {
            found.push(Diagnostic {
                severity: Severity::Note,
                location: location.clone(),
                message: format!(
                    "the plugin imports {} ({what}), which flows never grant: those calls will be refused",
                    imports.join(", ")
                ),
            });
        }
        plugins.push(plugin);
    }
    let diags = Diagnostics(found);
    if diags.has_errors() { Err(diags) } else { Ok((plugins, diags)) }
}

/// How a flow run ended.
#[derive(Debug)]
pub struct FlowReport {
    /// The record as saved.
    pub record: ExecutionRecord,
    /// The failure of the task that stopped the flow, if any.
    pub failure: Option<(String, TaskFailure)>,
}

/// What an execution starts with.
#[derive(Debug, Clone)]
pub struct Start {
    /// Its id.
    pub execution: ExecutionId,
    /// Bound input values.
    pub inputs: Map<String, Value>,
    /// What started it (`{{ trigger }}`), from [`crate::trigger::context`].
    pub trigger: Value,
    /// Its record already exists as `running` (a server worker claimed
    /// it), and the caller saves the final one (with the log): only the
    /// progress in between is saved here.
    pub claimed: bool,
}

impl Start {
    /// A new execution started at the command line.
    pub fn cli(inputs: Map<String, Value>) -> Self {
        Start {
            execution: ExecutionId::generate(),
            inputs,
            trigger: crate::trigger::context("cli", None, Map::new()),
            claimed: false,
        }
    }
}

/// Runs `flow` with `plugins` from [`prepare`]. Progress lines go to the
/// execution's sink; the record is saved at the start and at the end.
pub async fn run_flow(
    runtime: &Runtime,
    env: &ExecutionEnv,
    flow: &Flow,
    plugins: &[Plugin],
    start: Start,
    records: &Executions,
) -> FlowReport {
    let Start { execution, inputs, trigger, claimed } = start;
    let mut record = ExecutionRecord {
        id: execution.to_string(),
        flow: flow.id.to_string(),
        namespace: flow.namespace.as_str().to_owned(),
        source: flow.source.clone(),
        status: "running".into(),
        started: now_rfc3339(),
        ended: None,
        tasks: pending_tasks(flow),
        trigger: None,
        revision: None,
        created_by: None,
    };
    if !claimed {
        save(records, &record);
    }
    let mut scope = Scope {
        inputs,
        outputs: Map::new(),
        execution_id: execution.to_string(),
        flow_id: flow.id.to_string(),
        namespace: flow.namespace.as_str().to_owned(),
        trigger,
    };
    let mut failure = None;
    for (i, (task, plugin)) in flow.tasks.iter().zip(plugins).enumerate() {
        if failure.is_some() {
            record.tasks[i].status = TaskStatus::Skipped;
            continue;
        }
        if env.cancel.is_cancelled() {
            record.tasks[i].status = TaskStatus::Skipped;
            failure = Some((task.id.to_string(), TaskFailure::Cancelled));
            continue;
        }
        let rendered = if task.literal_input { Ok(task.input.clone()) } else { render(&task.input, &scope) };
        let outcome = match rendered {
            Err(e) => Err(TaskFailure::Instantiate(format!("cannot build the task's input: {e}"))),
            Ok(input) => {
                record.tasks[i].status = TaskStatus::Running;
                save(records, &record);
                let spec = TaskSpec {
                    plugin,
                    identity: Arc::new(TaskIdentity {
                        namespace: flow.namespace.clone(),
                        flow: flow.id.clone(),
                        task: task.id.clone(),
                        execution: execution.clone(),
                        plugin_sha256: plugin.sha256.clone(),
                    }),
                    grants: task.grants.clone(),
                    rotate: task.rotate.clone(),
                    input: &input,
                    limits: task.limits,
                    network: task.network.clone(),
                };
                let out = run_task(runtime, env, spec).await;
                record.tasks[i].duration_ms = out.duration.as_millis() as u64;
                out.result.map(|o| (o, out.task_masks))
            }
        };
        let t = &mut record.tasks[i];
        match outcome {
            Ok((output, task_masks)) => {
                // What the operator and the record see is masked with every
                // value revealed so far; what later tasks see only with the
                // values this task read, so that masking cannot tell a task
                // whether it guessed a secret it was not granted.
                t.status = TaskStatus::Succeeded;
                t.output = Some(mask_value(&env.masks, &output));
                scope.outputs.insert(task.id.to_string(), mask_value(&task_masks, &output));
                progress(env, flow, &format!("task {} succeeded in {} ms", task.id, t.duration_ms));
            }
            Err(f) => {
                t.status = TaskStatus::Failed;
                t.error = Some(f.to_string());
                progress(env, flow, &format!("task {} failed: {f}", task.id));
                failure = Some((task.id.to_string(), f));
            }
        }
    }
    // However it ended: the credentials minted for it die with it.
    env.leases.revoke_all();
    record.status = match &failure {
        None => "succeeded",
        Some((_, TaskFailure::Cancelled)) => "cancelled",
        Some(_) => "failed",
    }
    .into();
    record.ended = Some(now_rfc3339());
    if !claimed {
        save(records, &record);
    }
    FlowReport { record, failure }
}

/// One pending record per task of `flow`: what an execution looks like
/// before anything ran.
pub fn pending_tasks(flow: &Flow) -> Vec<TaskRecord> {
    flow.tasks
        .iter()
        .map(|t| TaskRecord {
            id: t.id.to_string(),
            status: TaskStatus::Pending,
            duration_ms: 0,
            output: None,
            error: None,
        })
        .collect()
}

/// Masks every string in a JSON value (keys included), and every number or
/// boolean whose text is (or contains) a secret, which becomes the string
/// `***`.
pub fn mask_value(masks: &MaskSet, v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(masks.mask(s).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(|x| mask_value(masks, x)).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, x)| (masks.mask(k).into_owned(), mask_value(masks, x))).collect())
        }
        Value::Number(_) | Value::Bool(_) => {
            let text = v.to_string();
            match masks.mask(&text) {
                std::borrow::Cow::Borrowed(_) => v.clone(),
                std::borrow::Cow::Owned(masked) => Value::String(masked),
            }
        }
        Value::Null => Value::Null,
    }
}

fn progress(env: &ExecutionEnv, flow: &Flow, line: &str) {
    let text = format!("[{}] {}", flow.id, env.masks.mask(line));
    let mut sink = env.sink.lock().unwrap_or_else(|p| p.into_inner());
    // A task's failure quotes plugin text: it stays on this line.
    let _ = sink.write_all(crate::output::one_line(&text).as_bytes());
    let _ = sink.write_all(b"\n");
}

fn save(records: &Executions, record: &ExecutionRecord) {
    if let Err(e) = records.save(record) {
        tracing::error!("cannot save execution record {}: {e}", record.id);
    }
}
