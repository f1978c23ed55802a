//! One task of a running flow, as the runner starts it: its attempts under
//! its retry policy, once or once per `for_each` value; and the wait at an
//! approval gate. Each runs in the sandbox through `exec::run_task`, under
//! the same grants and the execution's pinned secret versions every time.

use super::{mask_value, progress};
use crate::access::TaskIdentity;
use crate::audit::now_rfc3339;
use crate::exec::{ExecutionEnv, TaskFailure, TaskSpec, run_task};
use crate::executions::{Attempt, Decision, Executions};
use crate::flow::Flow;
use crate::mask::MaskSet;
use crate::names::ExecutionId;
use crate::runtime::{Plugin, Runtime};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use std::sync::Arc;

/// What a task's attempts came to.
pub(super) struct Ran {
    pub(super) result: Result<(Value, Arc<MaskSet>), TaskFailure>,
    pub(super) duration_ms: u64,
    pub(super) attempts: Vec<Attempt>,
}

/// What a started task does.
pub(super) enum Work {
    /// One run with this input.
    Once(Value),
    /// One run per input, at most `concurrency` at once.
    Each(Vec<Value>, usize),
}

/// How often a waiting gate reads its decision when nothing woke it (a
/// decision taken by another process).
const GATE_LOOK: std::time::Duration = std::time::Duration::from_millis(500);

/// Waits for the decision at a gate: `None` after `timeout`, or at once
/// when the execution is cancelled.
pub(super) async fn wait_gate(
    records: &Executions,
    execution: &str,
    task: &str,
    timeout: std::time::Duration,
    cancel: &crate::exec::Cancel,
) -> Option<Decision> {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        // Listening before reading: a decision taken meanwhile still wakes us.
        let decided = crate::executions::decisions().notified();
        let mut decided = std::pin::pin!(decided);
        decided.as_mut().enable();
        // A cancel wins over a decision taken in the same instant.
        if cancel.is_cancelled() {
            return None;
        }
        match records.decision(execution, task) {
            Ok(Some(d)) => return Some(d),
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot read the approval of task {task}: {e}"),
        }
        if tokio::time::Instant::now() >= end || cancel.is_cancelled() {
            return None;
        }
        // A decision here wakes it at once; one from another process is
        // read at the next look.
        tokio::select! {
            () = decided => {}
            () = tokio::time::sleep(GATE_LOOK) => {}
            () = cancel.cancelled() => {}
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs task `i`: once, or once per `for_each` value (outputs in order,
/// the first failure stopping those not started).
pub(super) async fn work(
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
        let retries = task.retry.filter(|r| r.max_attempts > 1);
        if retries.is_some() {
            let error = out.result.as_ref().err().map(ToString::to_string);
            tried.push(Attempt { attempt, started, duration_ms: out.duration.as_millis() as u64, error });
        }
        // The task's duration is all its attempts and the waits between them.
        let done = |result, attempts| (i, Ran { result, duration_ms: first.elapsed().as_millis() as u64, attempts });
        let failure = match out.result {
            Ok(o) => return done(Ok((o, out.task_masks)), tried),
            Err(f) => f,
        };
        let Some(r) = retries else { return done(Err(failure), tried) };
        let delay = r.delay(attempt);
        if matches!(failure, TaskFailure::Cancelled | TaskFailure::Audit(_)) || env.cancel.is_cancelled() {
            return done(Err(failure), tried);
        }
        let exhausted = if attempt >= r.max_attempts {
            Some("")
        } else if r.max_duration.is_some_and(|m| first.elapsed() + delay > m) {
            Some(" (retry.max_duration)")
        } else {
            None
        };
        if let Some(why) = exhausted {
            progress(env, flow, &format!("task {} gives up after {attempt} attempts{why}", task.id));
            return done(Err(failure), tried);
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
            () = env.cancel.cancelled() => return done(Err(TaskFailure::Cancelled), tried),
        }
        attempt += 1;
    }
}
