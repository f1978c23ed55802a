//! Running one task: a fresh store per run, limits applied, the outcome
//! classified (output, task error, trap, timeout, memory limit) and every
//! text that leaves masked.
//!
//! Invariant: nothing a plugin does (trap, panic, stack overflow, infinite
//! loop, long sleep, memory exhaustion) affects the host beyond the failure
//! of that one task.

use crate::access::{SecretAccess, TaskIdentity};
use crate::audit::{Action, AuditLog, NewRecord, Outcome};
use crate::backend::{Pins, Router};
use crate::capability::TaskState;
use crate::capability::wasi::Stdio;
use crate::executions::FailureKind;
pub use crate::limits::Limits;
use crate::mask::MaskSet;
use crate::network::NetworkPolicy;
use crate::output::{Captured, Sink, TaskOutput};
use crate::policy::Grants;
use crate::rotate::Rotations;
use crate::runtime::{Entry, POOLING_MAX_MEMORY, Plugin, Runtime};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::{Store, Trap, UpdateDeadline};

/// One task to run.
#[derive(Debug)]
pub struct TaskSpec<'a> {
    /// The loaded plugin.
    pub plugin: &'a Plugin,
    /// Who runs.
    pub identity: Arc<TaskIdentity>,
    /// What it may read.
    pub grants: Grants,
    /// What it may rotate (`keyhole:task/rotation`).
    pub rotate: Grants,
    /// 1 for the first attempt, then 2, 3, ... when retried.
    pub attempt: u32,
    /// The JSON input document.
    pub input: &'a serde_json::Value,
    /// Limits.
    pub limits: Limits,
    /// Outbound HTTP.
    pub network: NetworkPolicy,
}

/// Shared by all tasks of one execution.
#[derive(Clone)]
pub struct ExecutionEnv {
    /// Where secrets live: the backends, by namespace.
    pub secrets: Arc<Router>,
    /// Where plugin output goes.
    pub sink: Sink,
    /// Values revealed so far in this execution.
    pub masks: Arc<MaskSet>,
    /// The audit trail.
    pub audit: AuditLog,
    /// Versions pinned by this execution's first reads.
    pub pins: Pins,
    /// Set to stop the execution: the running task is interrupted.
    pub cancel: Cancel,
    /// Credentials minted for it from dynamic secrets, revoked at its end.
    pub leases: Arc<crate::lease::ExecutionLeases>,
    /// The memory every running task together may have: a task reserves
    /// its limit here before it is instantiated.
    pub memory: MemoryBudget,
    /// Whether the execution does nothing but wait at approval gates (its
    /// worker takes other work meanwhile).
    pub waiting: Waiting,
}

/// Set while an execution has nothing pending but approval gates; whoever
/// runs it is told when that changes.
#[derive(Debug, Clone, Default)]
pub struct Waiting {
    only_gates: Arc<std::sync::atomic::AtomicBool>,
    changed: Option<Arc<tokio::sync::Notify>>,
}

impl Waiting {
    /// A flag whose changes wake `changed`'s waiter.
    pub fn new(changed: Arc<tokio::sync::Notify>) -> Self {
        Waiting { only_gates: Default::default(), changed: Some(changed) }
    }

    /// Says whether only gates are pending now.
    pub fn set(&self, only_gates: bool) {
        let was = self.only_gates.swap(only_gates, std::sync::atomic::Ordering::SeqCst);
        if was != only_gates
            && let Some(n) = &self.changed
        {
            n.notify_one();
        }
    }

    /// Whether only gates are pending.
    pub fn get(&self) -> bool {
        self.only_gates.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Memory shared by every task running in this process (`host serve
/// --max-memory`): a task reserves its whole `limits.memory` before it
/// starts, waits while the budget is spent (at most its own time limit),
/// and one that could never fit fails at once. Unlimited by default (one
/// process, one flow: `host run`, `host exec`).
#[derive(Debug, Clone, Default)]
pub struct MemoryBudget(Option<Arc<(tokio::sync::Semaphore, usize)>>);

/// The budget's unit: reservations are whole MiB.
const MIB: usize = 1 << 20;

impl MemoryBudget {
    /// A budget of `bytes` for every running task together.
    pub fn new(bytes: usize) -> Self {
        let permits = (bytes / MIB).clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        MemoryBudget(Some(Arc::new((tokio::sync::Semaphore::new(permits), permits * MIB))))
    }

    /// Reserves `bytes` for one task until the returned guard drops:
    /// waits up to `wait` (or a cancel) for running tasks to give some back.
    pub async fn reserve(
        &self,
        bytes: usize,
        wait: Duration,
        cancel: &Cancel,
    ) -> Result<Option<tokio::sync::SemaphorePermit<'_>>, TaskFailure> {
        let Some(inner) = &self.0 else { return Ok(None) };
        let (sem, total) = (&inner.0, inner.1);
        let need = bytes.div_ceil(MIB).max(1);
        let show = |b: usize| crate::limits::show_size(b);
        if need * MIB > total {
            return Err(TaskFailure::NoMemory(format!(
                "its memory limit of {} is more than every running task may have together on this server ({}, its --max-memory)",
                show(bytes),
                show(total)
            )));
        }
        let take = sem.acquire_many(need as u32);
        tokio::select! {
            got = tokio::time::timeout(wait, take) => match got {
                Ok(Ok(permit)) => Ok(Some(permit)),
                _ => Err(TaskFailure::NoMemory(format!(
                    "the running tasks held the server's memory budget ({}) for its whole time limit, so it never started",
                    show(total)
                ))),
            },
            () = cancel.cancelled() => Err(TaskFailure::Cancelled),
        }
    }
}

/// A request to stop an execution, shared by whoever may ask (the server's
/// cancel route, a shutdown) and the task running: the epoch callback
/// interrupts a busy plugin, and a plugin blocked in a host call is dropped.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<CancelInner>);

#[derive(Debug, Default)]
struct CancelInner {
    set: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Cancel {
    /// Asks the execution to stop.
    pub fn cancel(&self) {
        self.0.set.store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Whether it was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.set.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Completes once it is asked to stop.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

impl std::fmt::Debug for ExecutionEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutionEnv").field("secrets", &self.secrets).finish_non_exhaustive()
    }
}

/// Why a task did not produce output. Every text here is already masked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskFailure {
    /// `run` returned `err(message)`.
    #[error("task failed: {0}")]
    Returned(String),
    /// `run` returned text that is not JSON.
    #[error("task returned output that is not a JSON document: {0}")]
    BadOutput(String),
    /// The plugin trapped (including a Rust panic or abort).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// Ran past its time limit.
    #[error("plugin exceeded its time limit of {0:?} and was stopped")]
    Timeout(Duration),
    /// Tried to grow a memory past the limit.
    #[error(
        "plugin exceeded its memory limit: it asked for {requested} bytes of linear memory, the limit is {limit} bytes (raise it with --memory or `limits.memory`)"
    )]
    Memory {
        /// The refused size.
        requested: usize,
        /// The limit.
        limit: usize,
    },
    /// A WASI command exited with a failure status.
    #[error("the program exited with status {0} (WASI 0.2 reports only success or failure; its stderr above says why)")]
    Exit(i32),
    /// A WASI command wrote more to stdout than its output limit.
    #[error(
        "the program wrote more than {0} bytes to stdout, its output limit (raise it with --max-output or `limits.output`)"
    )]
    OutputTooLarge(usize),
    /// The execution was cancelled while the task ran.
    #[error("cancelled while running")]
    Cancelled,
    /// Its approval gate was rejected, timed out, or the execution was
    /// cancelled while it waited.
    #[error("not approved: {0}")]
    Rejected(String),
    /// The flow's own `timeout` passed while the task ran.
    #[error("stopped: the flow's timeout of {0:?} passed (raise `timeout:` at the top of the flow)")]
    FlowTimeout(Duration),
    /// The task's start could not be audited, so it did not run.
    #[error("task not started: the audit log cannot be written: {0}")]
    Audit(String),
    /// Instantiation failed for a reason other than the above.
    #[error("plugin could not be instantiated: {0}")]
    Instantiate(String),
    /// The server's memory budget could not hold the task's limit.
    #[error("task not started: {0}")]
    NoMemory(String),
}

impl TaskFailure {
    /// Whether the plugin itself reported the failure (as opposed to being
    /// stopped by the host).
    pub fn is_task_error(&self) -> bool {
        self.kind() == FailureKind::Task
    }

    /// What kind of failure it is, as the execution record keeps it.
    pub fn kind(&self) -> FailureKind {
        match self {
            TaskFailure::Returned(_) | TaskFailure::BadOutput(_) | TaskFailure::Exit(_) => FailureKind::Task,
            TaskFailure::Trap(_)
            | TaskFailure::Timeout(_)
            | TaskFailure::Memory { .. }
            | TaskFailure::OutputTooLarge(_)
            | TaskFailure::Instantiate(_) => FailureKind::Plugin,
            TaskFailure::Cancelled | TaskFailure::Rejected(_) | TaskFailure::FlowTimeout(_) => FailureKind::Stopped,
            TaskFailure::Audit(_) | TaskFailure::NoMemory(_) => FailureKind::Host,
        }
    }
}

/// The result of one task.
#[derive(Debug)]
pub struct TaskOutcome {
    /// The output document, or why there is none.
    pub result: Result<serde_json::Value, TaskFailure>,
    /// Wall-clock time of instantiation plus `run`.
    pub duration: Duration,
    /// The values this task read: what it hands to later tasks is masked
    /// with these (and only these).
    pub task_masks: Arc<MaskSet>,
}

/// Runs one task to completion, whatever the plugin does.
pub async fn run_task(runtime: &Runtime, env: &ExecutionEnv, spec: TaskSpec<'_>) -> TaskOutcome {
    let started = Instant::now();
    let grants: Vec<&str> = spec.grants.iter().map(|g| g.as_str()).collect();
    let rotate: Vec<&str> = spec.rotate.iter().map(|g| g.as_str()).collect();
    let mut detail = serde_json::json!({ "grants": grants, "attempt": spec.attempt });
    if !rotate.is_empty() {
        detail["rotate"] = serde_json::json!(rotate);
    }
    let start = NewRecord {
        actor: spec.identity.actor(),
        action: Action::TaskStart,
        outcome: Outcome::Ok,
        namespace: spec.identity.namespace.clone(),
        secret: None,
        version: None,
        reason: Some(format!("grants: {}", serde_json::to_string(&grants).expect("names encode"))),
        value_hmac: None,
        detail: Some(detail),
    };
    let task_masks = Arc::new(MaskSet::new());
    // Committed with the task's first read, or by the flush at the end.
    if let Err(e) = env.audit.record_later(start) {
        return TaskOutcome { result: Err(TaskFailure::Audit(e.to_string())), duration: started.elapsed(), task_masks };
    }
    let memory = if runtime.pooling { spec.limits.memory.min(POOLING_MAX_MEMORY) } else { spec.limits.memory };
    let _reserved = match env.memory.reserve(memory, spec.limits.timeout, &env.cancel).await {
        Ok(r) => r,
        Err(failure) => return TaskOutcome { result: Err(failure), duration: started.elapsed(), task_masks },
    };
    let output = TaskOutput::new(spec.identity.task.as_str(), env.sink.clone(), env.masks.clone(), spec.limits.output);
    let access = SecretAccess {
        identity: spec.identity.clone(),
        grants: spec.grants,
        secrets: env.secrets.clone(),
        masks: env.masks.clone(),
        task_masks: task_masks.clone(),
        requests: Default::default(),
        audit: env.audit.clone(),
        pins: env.pins.clone(),
        bound: Default::default(),
        leases: env.leases.clone(),
        deadline: crate::store::now() + spec.limits.timeout.as_secs().min(i64::MAX as u64 / 2) as i64,
    };
    let deadline = started + spec.limits.timeout;
    let input = spec.input.to_string();
    // A command's stdout becomes its output; a task's is shown.
    let captured = matches!(spec.plugin.entry, Entry::Command(_)).then(|| Captured::new(spec.limits.output));
    let stdio = match &captured {
        None => Stdio::Task,
        Some(stdout) => Stdio::Command { stdin: input.clone().into_bytes(), stdout: stdout.clone() },
    };
    let rotations = Arc::new(Rotations::new(access.clone(), spec.rotate));
    let state = TaskState::new(access, rotations.clone(), output.clone(), stdio, spec.network, deadline, memory);
    let mut store = Store::new(runtime.engine(), state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    let cancel = env.cancel.clone();
    store.epoch_deadline_callback(move |_| {
        let stop = Instant::now() >= deadline || cancel.is_cancelled();
        Ok(if stop { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
    });

    let call = async {
        match &spec.plugin.entry {
            Entry::Task(pre) => {
                let task = pre.instantiate_async(&mut store).await.map_err(|e| (e, true))?;
                let returned = task.call_run(&mut store, &input).await.map_err(|e| (e, false))?;
                Ok(returned.map(Returned::Json))
            }
            Entry::Command(pre) => {
                let command = pre.instantiate_async(&mut store).await.map_err(|e| (e, true))?;
                let status = match command.wasi_cli_run().call_run(&mut store).await {
                    Ok(Ok(())) => 0,
                    Ok(Err(())) => 1,
                    Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                        Some(exit) => exit.0,
                        None => return Err((e, false)),
                    },
                };
                Ok(Ok(Returned::Stdout(status)))
            }
        }
    };
    // The epoch callback stops busy plugins; this timer stops plugins blocked
    // in a host call (a long sleep). The grace lets the trap win when both fire.
    // `None`: timed out or cancelled.
    let raw = tokio::select! {
        r = tokio::time::timeout(spec.limits.timeout + Duration::from_millis(50), call) => r.ok(),
        () = env.cancel.cancelled() => None,
    };
    // However the task ended: a staged value the service cannot hold is
    // erased, one it may hold is left for an operator.
    rotations.finish();
    output.finish();
    if let Err(e) = env.audit.flush() {
        tracing::error!("the audit log could not be flushed after task {}: {e}", spec.identity.task);
    }
    let duration = started.elapsed();
    let masks = &env.masks;
    let result = match raw {
        // A program that wrote past the limit usually dies of it (a panic on
        // a closed stdout): the limit is the cause to report.
        _ if captured.as_ref().is_some_and(Captured::overflowed) => {
            Err(TaskFailure::OutputTooLarge(spec.limits.output))
        }
        None | Some(Err(_)) if env.cancel.is_cancelled() => Err(TaskFailure::Cancelled),
        None => Err(TaskFailure::Timeout(spec.limits.timeout)),
        Some(Ok(Ok(Returned::Json(text)))) => serde_json::from_str(&text).map_err(|e| bad_output(masks, &text, &e)),
        Some(Ok(Ok(Returned::Stdout(status)))) => {
            command_output(status, captured.as_ref().expect("a command's stdout is captured"), masks)
        }
        Some(Ok(Err(message))) => Err(TaskFailure::Returned(masks.mask(&message).into_owned())),
        Some(Err((error, instantiating))) => {
            Err(classify(&error, instantiating, store.data().limiter.denied, memory, spec.limits.timeout, masks))
        }
    };
    TaskOutcome { result, duration, task_masks }
}

/// What a plugin handed back when it finished.
enum Returned {
    /// A task's `run` result text.
    Json(String),
    /// A command's exit status; its output is in the captured stdout.
    Stdout(i32),
}

/// A command's output: its stdout as a JSON document if it parses as one,
/// else as a string (without one trailing newline).
fn command_output(status: i32, captured: &Captured, masks: &MaskSet) -> Result<serde_json::Value, TaskFailure> {
    if status != 0 {
        return Err(TaskFailure::Exit(status));
    }
    let bytes = captured.take();
    let text = String::from_utf8(bytes).map_err(|e| {
        let shown = masks.mask(&String::from_utf8_lossy(e.as_bytes())).chars().take(200).collect::<String>();
        TaskFailure::BadOutput(format!("the program's stdout is not UTF-8 text: {shown:?}"))
    })?;
    Ok(serde_json::from_str(&text).unwrap_or_else(|_| {
        let line = text.strip_suffix('\n').unwrap_or(&text);
        serde_json::Value::String(line.strip_suffix('\r').unwrap_or(line).to_owned())
    }))
}

/// The failure of a task whose output is not JSON: the parse error and an
/// excerpt, masked first and cut after (a cut could split a secret in two).
fn bad_output(masks: &MaskSet, text: &str, e: &serde_json::Error) -> TaskFailure {
    let masked = masks.mask(text);
    let shown: String = masked.chars().take(200).collect();
    TaskFailure::BadOutput(format!("{} in {shown:?}", masks.mask(&e.to_string())))
}

fn classify(
    error: &wasmtime::Error,
    instantiating: bool,
    memory_denied: Option<usize>,
    memory_limit: usize,
    timeout: Duration,
    masks: &MaskSet,
) -> TaskFailure {
    if let Some(requested) = memory_denied {
        return TaskFailure::Memory { requested, limit: memory_limit };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => TaskFailure::Timeout(timeout),
        Some(Trap::StackOverflow) => TaskFailure::Trap("stack overflow (unbounded recursion?)".into()),
        Some(Trap::UnreachableCodeReached) => TaskFailure::Trap(
            "wasm `unreachable` executed: the plugin panicked or aborted (its stderr above says why)".into(),
        ),
        Some(Trap::MemoryOutOfBounds) => TaskFailure::Trap(
            "out-of-bounds memory access: a bug in the plugin, or its stack in linear memory overflowed".into(),
        ),
        Some(trap) => TaskFailure::Trap(masks.mask(&trap.to_string()).into_owned()),
        None if instantiating => TaskFailure::Instantiate(masks.mask(&format!("{error:#}")).into_owned()),
        None => TaskFailure::Trap(masks.mask(&format!("{error:#}")).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretValue;

    #[test]
    fn a_secret_across_the_excerpt_cut_does_not_leak_its_start() {
        let masks = MaskSet::new();
        let secret = "0123456789abcdefghij-secret";
        masks.add(&SecretValue::new(secret.into()));
        // Not JSON; the secret straddles character 200.
        let text = format!("{}{secret} tail", "x".repeat(190));
        let e = serde_json::from_str::<serde_json::Value>(&text).unwrap_err();
        let shown = bad_output(&masks, &text, &e).to_string();
        assert!(!shown.contains("0123456789") && shown.contains("***"), "{shown}");
    }
}
