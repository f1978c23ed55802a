//! Running a flow: load and check every plugin before anything runs, then
//! run the tasks as `plan::Scheduler` hands them out (several at once on
//! one thread: a task's sandbox yields at each host call and epoch tick),
//! each with its own grants, limits, sandbox and retry policy; then
//! `errors:` and `finally:`. Carries masked outputs forward and records the
//! execution.
//!
//! Invariant: a pinned digest mismatch, a missing plugin or a plugin that
//! does not fit the world stops the flow before its first task starts; a
//! task's output reaches later tasks, the terminal and the execution record
//! only after masking.

use crate::access::TaskIdentity;
use crate::audit::now_rfc3339;
use crate::capability::wasi::ungrantable_imports;
use crate::exec::{ExecutionEnv, TaskFailure, TaskSpec, run_task};
use crate::executions::{Attempt, ExecutionRecord, Executions, TaskRecord, TaskStatus};
use crate::flow::{Diagnostic, Diagnostics, Flow, Phase, Scope, Severity, render, truthy};
use crate::mask::MaskSet;
use crate::names::ExecutionId;
use crate::plan::{Ended, Scheduler};
use crate::runtime::{LoadedFrom, Plugin, Runtime};
use futures_util::stream::{FuturesUnordered, StreamExt};
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

/// Runs `flow` with `plugins` from [`prepare`]: `tasks:` as their plan
/// allows (at most `max_parallel` at once, each retried by its policy),
/// then `errors:` if one failed, then `finally:` whatever happened.
/// Progress lines go to the execution's sink; the record is saved as each
/// task starts and ends.
pub async fn run_flow(
    runtime: &Runtime,
    env: &ExecutionEnv,
    flow: &Flow,
    plugins: &[Plugin],
    start: Start,
    records: &Executions,
) -> FlowReport {
    let Start { execution, inputs, trigger, claimed } = start;
    let mut run = Run {
        runtime,
        env,
        flow,
        plugins,
        records,
        claimed,
        execution: execution.clone(),
        record: ExecutionRecord {
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
        },
        scope: Scope {
            inputs,
            outputs: Map::new(),
            execution_id: execution.to_string(),
            flow_id: flow.id.to_string(),
            namespace: flow.namespace.as_str().to_owned(),
            trigger,
            error: Value::Null,
            item: Value::Null,
        },
        failure: None,
        allowed_failures: 0,
    };
    if !claimed {
        save(records, &run.record);
    }
    let timed_out = run.main().await;
    let cancelled = env.cancel.is_cancelled() && !timed_out;
    // `errors:` when a task failed or the flow timed out (not on a cancel);
    // `finally:` always. Neither is stopped by the cancel that stopped the
    // rest: each runs under its own time limits.
    let after = ExecutionEnv { cancel: crate::exec::Cancel::default(), ..env.clone() };
    if let Some((task, f)) = &run.failure {
        run.scope.error = serde_json::json!({ "task": task, "message": env.masks.mask(&f.to_string()) });
    }
    if run.failure.is_some() && !cancelled {
        run.sequence(&after, Phase::Errors).await;
    }
    run.sequence(&after, Phase::Finally).await;
    // However it ended: the credentials minted for it die with it.
    env.leases.revoke_all();
    let mut record = run.record;
    record.status = match &run.failure {
        _ if cancelled => "cancelled",
        None if run.allowed_failures > 0 => "warning",
        None => "succeeded",
        Some(_) => "failed",
    }
    .into();
    record.ended = Some(now_rfc3339());
    if !claimed {
        save(records, &record);
    }
    let failure =
        if cancelled && run.failure.is_none() { Some(("-".to_owned(), TaskFailure::Cancelled)) } else { run.failure };
    FlowReport { record, failure }
}

/// One execution in progress.
struct Run<'a> {
    runtime: &'a Runtime,
    env: &'a ExecutionEnv,
    flow: &'a Flow,
    plugins: &'a [Plugin],
    records: &'a Executions,
    claimed: bool,
    execution: ExecutionId,
    record: ExecutionRecord,
    scope: Scope,
    /// The first failure that was not allowed.
    failure: Option<(String, TaskFailure)>,
    /// Failures `allow_failure` let pass.
    allowed_failures: usize,
}

/// What a task's attempts came to.
struct Ran {
    result: Result<(Value, Arc<MaskSet>), TaskFailure>,
    duration_ms: u64,
    attempts: Vec<Attempt>,
}

/// Whether to start a task: its input (or one per `for_each` value), or
/// why not.
enum Go {
    Run(Work),
    Skip(String),
    Fail(TaskFailure),
}

/// What a started task does.
enum Work {
    /// One run with this input.
    Once(Value),
    /// One run per input, at most `concurrency` at once.
    Each(Vec<Value>, usize),
}

impl<'a> Run<'a> {
    /// `tasks:` by the plan; returns whether the flow's timeout stopped them.
    async fn main(&mut self) -> bool {
        let (flow, runtime, env, plugins) = (self.flow, self.runtime, self.env, self.plugins);
        let execution = self.execution.clone();
        let mut sched = Scheduler::new(&flow.plan, flow.max_parallel);
        let mut running = FuturesUnordered::new();
        let deadline = flow.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut timed_out = false;
        loop {
            if self.env.cancel.is_cancelled() {
                sched.stop();
            }
            while let Some(i) = sched.start_next() {
                match self.go(i) {
                    Go::Run(input) => {
                        self.started(i);
                        running.push(work(runtime, env, flow, &plugins[i], &execution, i, input));
                    }
                    Go::Skip(why) => {
                        self.skip(i, why);
                        sched.finish(i, Ended::Skipped);
                    }
                    Go::Fail(f) => {
                        let ended = self.failed(i, f, 0, Vec::new());
                        sched.finish(i, ended);
                    }
                }
            }
            if running.is_empty() {
                break;
            }
            let done = tokio::select! {
                d = running.next() => d,
                () = sleep_until(deadline), if !timed_out => {
                    timed_out = true;
                    sched.stop();
                    self.env.cancel.cancel();
                    continue;
                }
            };
            let Some((i, mut ran)) = done else { break };
            if timed_out && matches!(ran.result, Err(TaskFailure::Cancelled)) {
                ran.result = Err(TaskFailure::FlowTimeout(flow.timeout.unwrap_or_default()));
            }
            let ended = self.ended(i, ran);
            sched.finish(i, ended);
        }
        let why = if timed_out {
            "the flow's timeout passed before it could start"
        } else if self.env.cancel.is_cancelled() {
            "the execution was cancelled"
        } else {
            "an earlier task failed"
        };
        for i in sched.never_started() {
            self.record.tasks[i].status = TaskStatus::Skipped;
            self.record.tasks[i].skipped = Some(why.into());
        }
        if timed_out && self.failure.is_none() {
            let f = TaskFailure::FlowTimeout(flow.timeout.unwrap_or_default());
            self.failure = Some(("-".into(), f));
        }
        timed_out
    }

    /// The tasks of `errors:` or `finally:`, one after another, under `env`;
    /// a failure stops the rest of the list.
    async fn sequence(&mut self, env: &ExecutionEnv, phase: Phase) {
        let flow = self.flow;
        let mut stopped = false;
        for i in (0..flow.tasks.len()).filter(|&i| flow.tasks[i].phase == phase) {
            if stopped {
                self.skip(i, "an earlier task of the same list failed".into());
                continue;
            }
            match self.go(i) {
                Go::Run(input) => {
                    self.started(i);
                    let (_, ran) = work(self.runtime, env, flow, &self.plugins[i], &self.execution, i, input).await;
                    stopped = self.ended(i, ran) == Ended::Failed;
                }
                Go::Skip(why) => self.skip(i, why),
                Go::Fail(f) => stopped = self.failed(i, f, 0, Vec::new()) == Ended::Failed,
            }
        }
    }

    /// Renders task `i`'s condition and input.
    fn go(&self, i: usize) -> Go {
        let task = &self.flow.tasks[i];
        if let Some(cond) = &task.condition {
            match render(&Value::String(cond.clone()), &self.scope) {
                Ok(v) if !truthy(&v) => return Go::Skip(format!("its condition {cond} is false")),
                Ok(_) => {}
                Err(e) => return Go::Fail(TaskFailure::Instantiate(format!("cannot evaluate its condition: {e}"))),
            }
        }
        if task.literal_input {
            return Go::Run(Work::Once(task.input.clone()));
        }
        let Some(each) = &task.for_each else {
            return match render(&task.input, &self.scope) {
                Ok(input) => Go::Run(Work::Once(input)),
                Err(e) => Go::Fail(TaskFailure::Instantiate(format!("cannot build the task's input: {e}"))),
            };
        };
        let items = match render(&each.values, &self.scope) {
            Ok(Value::Array(items)) if items.len() <= crate::flow::MAX_ITEMS => items,
            Ok(Value::Array(items)) => {
                let why = format!("for_each.values has {} values, more than {}", items.len(), crate::flow::MAX_ITEMS);
                return Go::Fail(TaskFailure::Instantiate(why));
            }
            Ok(other) => {
                let what = mask_value(&self.env.masks, &other);
                return Go::Fail(TaskFailure::Instantiate(format!("for_each.values is not a list: {what}")));
            }
            Err(e) => return Go::Fail(TaskFailure::Instantiate(format!("cannot evaluate for_each.values: {e}"))),
        };
        let mut scope = self.scope.clone();
        let mut inputs = Vec::with_capacity(items.len());
        for (n, item) in items.into_iter().enumerate() {
            scope.item = item;
            match render(&task.input, &scope) {
                Ok(input) => inputs.push(input),
                Err(e) => {
                    let why = format!("cannot build the input of item {n}: {e}");
                    return Go::Fail(TaskFailure::Instantiate(why));
                }
            }
        }
        Go::Run(Work::Each(inputs, each.concurrency))
    }

    fn started(&mut self, i: usize) {
        let t = &mut self.record.tasks[i];
        t.status = TaskStatus::Running;
        t.started = Some(now_rfc3339());
        save(self.records, &self.record);
    }

    fn skip(&mut self, i: usize, why: String) {
        let t = &mut self.record.tasks[i];
        t.status = TaskStatus::Skipped;
        progress(self.env, self.flow, &format!("task {} skipped: {why}", t.id));
        t.skipped = Some(why);
        self.save_progress();
    }

    /// Records what task `i`'s attempts came to; returns how it ended.
    fn ended(&mut self, i: usize, ran: Ran) -> Ended {
        let task = &self.flow.tasks[i];
        match ran.result {
            Ok((output, task_masks)) => {
                // What the operator and the record see is masked with every
                // value revealed so far; what later tasks see only with the
                // values this task read, so that masking cannot tell a task
                // whether it guessed a secret it was not granted.
                let t = &mut self.record.tasks[i];
                t.status = TaskStatus::Succeeded;
                t.duration_ms = ran.duration_ms;
                t.attempts = ran.attempts;
                t.output = Some(mask_value(&self.env.masks, &output));
                self.scope.outputs.insert(task.id.to_string(), mask_value(&task_masks, &output));
                progress(self.env, self.flow, &format!("task {} succeeded in {} ms", task.id, ran.duration_ms));
                self.save_progress();
                Ended::Succeeded
            }
            Err(f) => self.failed(i, f, ran.duration_ms, ran.attempts),
        }
    }

    fn failed(&mut self, i: usize, f: TaskFailure, duration_ms: u64, attempts: Vec<Attempt>) -> Ended {
        let task = &self.flow.tasks[i];
        let t = &mut self.record.tasks[i];
        t.status = TaskStatus::Failed;
        t.duration_ms = duration_ms;
        t.attempts = attempts;
        t.error = Some(f.to_string());
        let allowed = task.allow_failure && !matches!(f, TaskFailure::Cancelled | TaskFailure::FlowTimeout(_));
        let note = if allowed { " (allow_failure: the flow goes on)" } else { "" };
        progress(self.env, self.flow, &format!("task {} failed: {f}{note}", task.id));
        let ended = if allowed {
            self.allowed_failures += 1;
            Ended::FailedAllowed
        } else {
            if self.failure.is_none() {
                self.failure = Some((task.id.to_string(), f));
            }
            Ended::Failed
        };
        self.save_progress();
        ended
    }

    fn save_progress(&self) {
        if !self.claimed || self.record.tasks.len() > 1 {
            save(self.records, &self.record);
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs task `i`: once, or once per `for_each` value (outputs in order,
/// the first failure stopping those not started).
async fn work(
    runtime: &Runtime,
    env: &ExecutionEnv,
    flow: &Flow,
    plugin: &Plugin,
    execution: &ExecutionId,
    i: usize,
    work: Work,
) -> (usize, Ran) {
    let (inputs, concurrency) = match work {
        Work::Once(input) => return attempts(runtime, env, flow, plugin, execution, i, input).await,
        Work::Each(inputs, concurrency) => (inputs, concurrency),
    };
    let started = std::time::Instant::now();
    let total = inputs.len();
    let mut outputs: Vec<Option<Value>> = vec![None; total];
    let mut pending = inputs.into_iter().enumerate();
    let mut running = FuturesUnordered::new();
    let mut failed: Option<(usize, TaskFailure)> = None;
    loop {
        while failed.is_none() && running.len() < concurrency {
            let Some((n, input)) = pending.next() else { break };
            running.push(async move { (n, attempts(runtime, env, flow, plugin, execution, i, input).await.1) });
        }
        let Some((n, ran)) = running.next().await else { break };
        match ran.result {
            // Masked with what that iteration read: the list is handed on
            // as it is.
            Ok((output, masks)) => outputs[n] = Some(mask_value(&masks, &output)),
            Err(f) => {
                if failed.as_ref().is_none_or(|(m, _)| n < *m) {
                    failed = Some((n, f));
                }
            }
        }
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    let result = match failed {
        Some((n, f)) => Err(match f {
            TaskFailure::Returned(m) => TaskFailure::Returned(format!("item {n} of {total}: {m}")),
            other => other,
        }),
        None => {
            Ok((Value::Array(outputs.into_iter().map(Option::unwrap_or_default).collect()), Arc::new(MaskSet::new())))
        }
    };
    (i, Ran { result, duration_ms, attempts: Vec::new() })
}

/// Runs task `i` with `input` until an attempt succeeds or its retry policy
/// gives up. Every attempt runs under the same grants and reads the same
/// pinned secret versions (the execution's pins).
async fn attempts(
    runtime: &Runtime,
    env: &ExecutionEnv,
    flow: &Flow,
    plugin: &Plugin,
    execution: &ExecutionId,
    i: usize,
    input: Value,
) -> (usize, Ran) {
    let task = &flow.tasks[i];
    let first = std::time::Instant::now();
    let mut tried = Vec::new();
    let mut attempt = 1;
    loop {
        let started = now_rfc3339();
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
            attempt,
            input: &input,
            limits: task.limits,
            network: task.network.clone(),
        };
        let out = run_task(runtime, env, spec).await;
        let duration_ms = out.duration.as_millis() as u64;
        let error = out.result.as_ref().err().map(ToString::to_string);
        let retries = task.retry.filter(|r| r.max_attempts > 1);
        if retries.is_some() {
            tried.push(Attempt { attempt, started, duration_ms, error });
        }
        let failure = match out.result {
            Ok(o) => return (i, Ran { result: Ok((o, out.task_masks)), duration_ms, attempts: tried }),
            Err(f) => f,
        };
        let give_up =
            |why: String| (i, Ran { result: Err(failure.clone()), duration_ms, attempts: tried.clone() }, why);
        let Some(r) = retries else { return (i, Ran { result: Err(failure), duration_ms, attempts: tried }) };
        let delay = r.delay(attempt);
        let stop = if matches!(failure, TaskFailure::Cancelled | TaskFailure::Audit(_)) || env.cancel.is_cancelled() {
            Some(String::new())
        } else if attempt >= r.max_attempts {
            Some(format!(" after {attempt} attempts"))
        } else if r.max_duration.is_some_and(|m| first.elapsed() + delay > m) {
            Some(format!(" after {attempt} attempts (retry.max_duration)"))
        } else {
            None
        };
        if let Some(why) = stop {
            let (i, ran, _) = give_up(why.clone());
            if !why.is_empty() {
                progress(env, flow, &format!("task {} gives up{why}", task.id));
            }
            return (i, ran);
        }
        progress(
            env,
            flow,
            &format!(
                "task {} failed (attempt {attempt} of {}): {failure}; retrying in {delay:?}",
                task.id, r.max_attempts
            ),
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = env.cancel.cancelled() => {
                return (i, Ran { result: Err(TaskFailure::Cancelled), duration_ms, attempts: tried });
            }
        }
        attempt += 1;
    }
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
            started: None,
            attempts: Vec::new(),
            skipped: None,
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
