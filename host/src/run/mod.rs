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

mod task;

use crate::audit::now_rfc3339;
use crate::capability::wasi::ungrantable_imports;
use crate::exec::{ExecutionEnv, TaskFailure};
use crate::executions::{
    Attempt, Decision, ExecutionRecord, ExecutionStatus, Executions, Gate, TaskRecord, TaskStatus,
};
use crate::flow::{Approval, Diagnostic, Diagnostics, Flow, Phase, Scope, Severity, render, truthy};
use crate::mask::MaskSet;
use crate::names::ExecutionId;
use crate::plan::{Ended, Scheduler};
use crate::runtime::{LoadedFrom, Plugin, Runtime};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{Map, Value};
use task::{Ran, Work, sleep_until, wait_gate, work};

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
        record: new_record(flow, &execution),
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
        _ if cancelled => ExecutionStatus::Cancelled,
        None if run.allowed_failures > 0 => ExecutionStatus::Warning,
        None => ExecutionStatus::Succeeded,
        Some(_) => ExecutionStatus::Failed,
    };
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

/// What ends in the running set: a task's work, or a gate's wait.
enum Event {
    Ran(usize, Ran),
    Decided(usize, Option<Decision>),
}

/// A task's work or a gate's wait, as the running set holds it.
type Pending<'f> = std::pin::Pin<Box<dyn std::future::Future<Output = Event> + 'f>>;

/// Whether to start a task: its input (or one per `for_each` value), or
/// why not.
enum Go {
    Run(Work),
    Skip(String),
    Fail(TaskFailure),
}

impl<'a> Run<'a> {
    /// `tasks:` by the plan; returns whether the flow's timeout stopped them.
    async fn main(&mut self) -> bool {
        let (flow, env, records) = (self.flow, self.env, self.records);
        let mut sched = Scheduler::new(&flow.plan, flow.max_parallel);
        let mut running: FuturesUnordered<Pending<'a>> = FuturesUnordered::new();
        let deadline = flow.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut timed_out = false;
        let mut waiting = 0usize;
        loop {
            if env.cancel.is_cancelled() {
                sched.stop();
            }
            while let Some(i) = sched.start_next() {
                if let Some(gate) = flow.tasks[i].approval {
                    // Nothing of the task runs, and none of its secrets is
                    // read, before a decision.
                    self.pause(i, &gate);
                    waiting += 1;
                    let (execution, task) = (self.execution.to_string(), flow.tasks[i].id.to_string());
                    running.push(Box::pin(async move {
                        Event::Decided(i, wait_gate(records, &execution, &task, gate.timeout, &env.cancel).await)
                    }));
                    continue;
                }
                match self.launch(i) {
                    Ok(work) => running.push(work),
                    Err(ended) => sched.finish(i, ended),
                }
            }
            if running.is_empty() {
                break;
            }
            // Nothing but gates pending: the worker may take other work meanwhile.
            env.waiting.set(waiting > 0 && running.len() == waiting);
            let event = tokio::select! {
                d = running.next() => d,
                () = sleep_until(deadline), if !timed_out => {
                    timed_out = true;
                    sched.stop();
                    env.cancel.cancel();
                    continue;
                }
            };
            match event {
                None => break,
                Some(Event::Ran(i, mut ran)) => {
                    if timed_out && matches!(ran.result, Err(TaskFailure::Cancelled)) {
                        ran.result = Err(TaskFailure::FlowTimeout(flow.timeout.unwrap_or_default()));
                    }
                    let ended = self.ended(i, ran);
                    sched.finish(i, ended);
                }
                Some(Event::Decided(i, decision)) => {
                    waiting -= 1;
                    if waiting == 0 {
                        self.record.status = ExecutionStatus::Running;
                    }
                    match decision {
                        Some(d) if d.approved && !env.cancel.is_cancelled() => {
                            let note = d.comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default();
                            self.record.tasks[i].approval = Some(format!("approved by {}{note}", d.by));
                            progress(env, flow, &format!("task {} approved by {}", flow.tasks[i].id, d.by));
                            match self.launch(i) {
                                Ok(work) => running.push(work),
                                Err(ended) => sched.finish(i, ended),
                            }
                        }
                        other => {
                            let ended = self.refused(i, other, timed_out);
                            sched.finish(i, ended);
                        }
                    }
                }
            }
        }
        env.waiting.set(false);
        let why = if timed_out {
            "the flow's timeout passed before it could start"
        } else if env.cancel.is_cancelled() {
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

    /// Starts task `i` (its condition and input first): its work, or how it
    /// ended without running.
    fn launch(&mut self, i: usize) -> Result<Pending<'a>, Ended> {
        let (runtime, env, flow, plugins) = (self.runtime, self.env, self.flow, self.plugins);
        match self.go(i) {
            Go::Run(input) => {
                self.started(i);
                let execution = self.execution.clone();
                Ok(Box::pin(async move {
                    let (i, ran) = work(runtime, env, flow, &plugins[i], &execution, i, input).await;
                    Event::Ran(i, ran)
                }))
            }
            Go::Skip(why) => {
                self.skip(i, why);
                Err(Ended::Skipped)
            }
            Go::Fail(f) => Err(self.failed(i, f, 0, Vec::new())),
        }
    }

    /// Task `i` waits at its gate: the execution is `paused`.
    fn pause(&mut self, i: usize, gate: &Approval) {
        let task = &self.flow.tasks[i];
        let g = Gate {
            execution: self.execution.to_string(),
            task: task.id.to_string(),
            permission: gate.permission.as_str().to_owned(),
            distinct_from_trigger: gate.distinct_from_trigger,
            requested: now_rfc3339(),
        };
        if let Err(e) = self.records.open_gate(&g) {
            tracing::error!("cannot record the approval gate of task {}: {e}", task.id);
        }
        self.record.tasks[i].status = TaskStatus::Waiting;
        self.record.status = ExecutionStatus::Paused;
        progress(
            self.env,
            self.flow,
            &format!(
                "task {t} waits for approval ({p} in namespace {ns}): host executions approve {e} --task {t} (or reject)",
                t = task.id,
                p = gate.permission,
                ns = self.flow.namespace,
                e = self.execution
            ),
        );
        save(self.records, &self.record);
    }

    /// Task `i`'s gate did not approve it: rejected, timed out, or the run
    /// was cancelled (or timed out) meanwhile.
    fn refused(&mut self, i: usize, decision: Option<Decision>, timed_out: bool) -> Ended {
        let task = &self.flow.tasks[i];
        let why = match &decision {
            _ if !timed_out && self.env.cancel.is_cancelled() => {
                "the execution was cancelled while it waited for approval".into()
            }
            Some(d) => {
                format!("rejected by {}{}", d.by, d.comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default())
            }
            None if timed_out => "the flow's timeout passed while it waited for approval".into(),
            None if self.env.cancel.is_cancelled() => "the execution was cancelled while it waited for approval".into(),
            None => {
                // Nobody decided in time: rejected, and recorded so, so that
                // no decision can arrive later.
                let wait = task.approval.map(|a| a.timeout).unwrap_or_default();
                let d = Decision {
                    approved: false,
                    by: "nobody".into(),
                    comment: Some(format!("no decision within {wait:?}")),
                };
                let _ = self.records.decide(self.execution.as_str(), task.id.as_str(), &d, &now_rfc3339());
                let actor = crate::audit::Actor::Task {
                    flow: self.flow.id.to_string(),
                    task: task.id.to_string(),
                    execution: self.execution.clone(),
                    plugin_sha256: self.plugins[i].sha256.clone(),
                };
                let rec = crate::audit::NewRecord::ok(
                    &actor,
                    crate::audit::Action::ExecutionReject,
                    &self.flow.namespace,
                    None,
                )
                .reason(format!("task {} of execution {}: no decision within {wait:?}", task.id, self.execution))
                .detail_field("execution", self.execution.to_string())
                .detail_field("task", task.id.to_string());
                if let Err(e) = self.env.audit.record(rec) {
                    tracing::error!("cannot audit the timed-out approval of task {}: {e}", task.id);
                }
                format!("no decision within {wait:?}")
            }
        };
        let t = &mut self.record.tasks[i];
        t.status = TaskStatus::Skipped;
        t.skipped = Some(why.clone());
        if decision.is_some() {
            t.approval = Some(why.clone());
        }
        progress(self.env, self.flow, &format!("task {} not run: {why}", task.id));
        if (decision.is_some() || !(timed_out || self.env.cancel.is_cancelled())) && self.failure.is_none() {
            self.failure = Some((task.id.to_string(), TaskFailure::Rejected(why)));
        }
        self.save_progress();
        Ended::Failed
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
        t.failure = Some(f.kind());
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

    /// Saves the record after a task ended. A server worker's claimed
    /// one-task execution skips it: its final record follows at once (one
    /// commit fewer on the hottest path).
    fn save_progress(&self) {
        if !self.claimed || self.record.tasks.len() > 1 {
            save(self.records, &self.record);
        }
    }
}

/// One pending record per task of `flow`: what an execution looks like
/// before anything ran.
/// The record of execution `execution` of `flow` as it starts: running,
/// every task pending.
pub fn new_record(flow: &Flow, execution: &ExecutionId) -> ExecutionRecord {
    ExecutionRecord {
        id: execution.clone(),
        flow: flow.id.clone(),
        namespace: flow.namespace.clone(),
        source: flow.source.clone(),
        status: ExecutionStatus::Running,
        started: now_rfc3339(),
        ended: None,
        tasks: pending_tasks(flow),
        trigger: None,
        revision: None,
        created_by: None,
        person: None,
    }
}

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
            approval: None,
            failure: None,
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
