//! The threads that run queued executions: each takes the oldest queued one
//! (one SQL statement, so no two take the same), loads the deployed revision
//! it was queued for, and runs it with an environment of its own (masks,
//! pins, log, cancel handle) over the shared store, audit log and engine.
//!
//! Invariant: an execution's log is masked with that execution's values
//! before it is stored; a worker takes nothing new once the server stops.

use super::App;
use crate::audit::now_rfc3339;
use crate::exec::{Cancel, ExecutionEnv};
use crate::executions::{ExecutionRecord, ExecutionStatus, Executions, Queued, TaskStatus};
use crate::mask::MaskSet;
use crate::run::{Start, prepare, run_flow};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Starts worker `i` over its own connection to the execution records
/// (opened by the caller, so that a server whose workers cannot reach them
/// does not start).
///
/// A worker runs one execution at a time, except that an execution waiting
/// only at approval gates gives it back: the worker then takes the next
/// queued one, and drives both (a decided gate resumes on this same worker).
pub fn spawn(app: Arc<App>, i: usize, records: Executions) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("keyhole-worker-{i}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a worker runtime");
            rt.block_on(work(&app, &records));
        })
        .expect("cannot start a worker thread")
}

/// The worker's loop: take queued executions while every one it runs
/// waits only at gates (or it runs none), until the server stops and what
/// it runs has ended.
async fn work(app: &Arc<App>, records: &Executions) {
    let changed = Arc::new(tokio::sync::Notify::new());
    let mut queue = app.queue_changes();
    let mut mine: HashMap<String, crate::exec::Waiting> = HashMap::new();
    let mut runs = FuturesUnordered::new();
    loop {
        let stopping = app.stopping.load(Ordering::SeqCst);
        if stopping && runs.is_empty() {
            return;
        }
        let busy = mine.values().filter(|w| !w.get()).count();
        if busy == 0 && !stopping {
            match records.claim(&now_rfc3339()) {
                Ok(Some(q)) => {
                    let waiting = crate::exec::Waiting::new(changed.clone());
                    mine.insert(q.record.id.to_string(), waiting.clone());
                    runs.push(run(app, records, q, waiting));
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!("cannot take a queued execution: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        // Something ends, an execution starts or stops waiting only at
        // gates, work is queued, or a slow look again.
        tokio::select! {
            Some(id) = runs.next(), if !runs.is_empty() => { mine.remove(&id); }
            () = changed.notified() => {}
            _ = queue.changed(), if busy == 0 => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// What a running execution shares with the rest of the server: the handle
/// that cancels it, and its log and masks for those following it.
#[derive(Debug, Clone)]
pub struct Running {
    /// Cancels the execution.
    pub cancel: Cancel,
    /// Its log so far (each task's bytes already masked when written).
    pub log: LogBuffer,
    /// The values it has read, to mask again whatever is sent.
    pub masks: Arc<MaskSet>,
}

/// A `Write` that collects an execution's log in memory, and tells those
/// following it when there is more (or when the execution ended).
#[derive(Debug, Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>, Arc<tokio::sync::Notify>);

impl LogBuffer {
    /// The bytes written after the first `offset`.
    pub fn since(&self, offset: usize) -> Vec<u8> {
        let b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        b.get(offset..).map(<[u8]>::to_vec).unwrap_or_default()
    }

    /// Notified at each write and at the execution's end.
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.1.clone()
    }
}

/// What a log buffer holds at most, plus the write that crossed it (kept
/// whole, so that a masked line is never cut).
const LOG_CAP: usize = 4 << 20;

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A runaway plugin cannot fill the server's memory through its log.
        if b.len() < LOG_CAP {
            b.extend_from_slice(buf);
        }
        drop(b);
        self.1.notify_waiters();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs one claimed execution to its stored end; its id.
async fn run(app: &Arc<App>, records: &Executions, q: Queued, waiting: crate::exec::Waiting) -> String {
    let mut rec = q.record;
    let id = rec.id.to_string();
    let cancel = Cancel::default();
    let log = LogBuffer::default();
    let masks = Arc::new(MaskSet::new());
    let running = Running { cancel: cancel.clone(), log: log.clone(), masks: masks.clone() };
    app.running.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), running);
    // A cancel that came between the claim and now.
    if records.cancel_requested(&id).unwrap_or(false) {
        cancel.cancel();
    }
    let outcome =
        start(app, records, &rec, (q.inputs, q.trigger), &log, (masks.clone(), cancel.clone(), waiting)).await;
    match outcome {
        // How it went; what it is (flow, revision, trigger, creator) stays as queued.
        Ok(ended) => {
            rec.status = ended.status;
            rec.started = ended.started;
            rec.ended = ended.ended;
            rec.tasks = ended.tasks;
        }
        Err(NotStarted { message, tasks }) => {
            // Refused before any task ran: the flow is gone, edited, or a
            // plugin fails its pin or does not load. A task that is the
            // reason carries it as its error; the others say why they did not run.
            for t in &mut rec.tasks {
                match tasks.iter().find(|(id, _)| *id == t.id) {
                    Some((_, why)) => {
                        t.status = TaskStatus::Failed;
                        t.error = Some(why.clone());
                        t.failure = Some(crate::executions::FailureKind::Plugin);
                    }
                    None => {
                        t.status = TaskStatus::Skipped;
                        t.skipped = Some(format!("the flow could not start: {message}"));
                    }
                }
            }
            rec.status = ExecutionStatus::Failed;
            rec.ended = Some(now_rfc3339());
            let _ = std::io::Write::write_all(&mut log.clone(), format!("[{}] {message}\n", rec.flow).as_bytes());
        }
    }
    if app.interrupting.load(Ordering::SeqCst) && rec.status == ExecutionStatus::Cancelled {
        rec.status = ExecutionStatus::Interrupted;
        if let Err(e) = app.interrupted(&rec, "was cut off by the server's shutdown timeout") {
            tracing::error!("cannot audit the interruption of {id}: {e}");
        }
    }
    // The final record and the masked log in one commit.
    let text = String::from_utf8_lossy(&log.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    if let Err(e) = records.finish(&rec, &masks.mask(&text)) {
        tracing::error!("cannot save execution {id}: {e}");
    }
    app.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    log.1.notify_waiters();
    app.ended(&id);
    id
}

/// Why an execution could not start, in words that name no server path:
/// the whole reason, and each task it concerns with its own.
struct NotStarted {
    message: String,
    tasks: Vec<(String, String)>,
}

impl From<String> for NotStarted {
    fn from(message: String) -> Self {
        NotStarted { message, tasks: Vec::new() }
    }
}

/// `d`'s findings with every stored plugin's path replaced by its digest
/// and the data directory by a name: what an API caller may read.
fn not_started(app: &App, flow: &crate::flow::Flow, d: &crate::flow::Diagnostics) -> NotStarted {
    let scrub = |text: &str| {
        let mut text = text.to_owned();
        for t in &flow.tasks {
            if let Some(sha) = &t.sha256 {
                text = text.replace(&t.plugin.display().to_string(), &format!("sha256 {sha}"));
            }
        }
        text.replace(&app.dir.root().display().to_string(), "DATA_DIR")
    };
    let mut tasks = Vec::new();
    for f in &d.0 {
        if let Some((_, id)) = f.location.rsplit_once(": task ") {
            tasks.push((id.to_owned(), scrub(&f.message)));
        }
    }
    NotStarted { message: scrub(&d.to_string()), tasks }
}

/// Loads the revision `rec` was queued for and runs it: its final record,
/// or why it could not start.
async fn start(
    app: &Arc<App>,
    records: &Executions,
    rec: &ExecutionRecord,
    (inputs, trigger): (serde_json::Map<String, serde_json::Value>, serde_json::Value),
    log: &LogBuffer,
    (masks, cancel, waiting): (Arc<MaskSet>, Cancel, crate::exec::Waiting),
) -> Result<ExecutionRecord, NotStarted> {
    let hide = |e: &dyn std::fmt::Display| e.to_string().replace(&app.dir.root().display().to_string(), "DATA_DIR");
    let revision = rec.revision.ok_or_else(|| "the execution names no deployed revision".to_owned())?;
    let flow = app.registry().revision(&rec.namespace, rec.flow.as_str(), revision).map_err(|e| hide(&e))?;
    let (plugins, _notes) = prepare(&app.runtime, &flow).map_err(|d| not_started(app, &flow, &d))?;
    let env = ExecutionEnv {
        secrets: app.secrets().clone(),
        sink: Arc::new(Mutex::new(log.clone())),
        masks,
        audit: app.audit().clone(),
        pins: Default::default(),
        cancel,
        leases: Arc::new(crate::lease::ExecutionLeases::new(
            app.secrets().clone(),
            app.audit().clone(),
            crate::audit::Actor::Server,
        )),
        memory: app.memory.clone(),
        waiting,
    };
    let begin = Start { execution: rec.id.clone(), inputs, trigger, claimed: true };
    let report = run_flow(&app.runtime, &env, &flow, &plugins, begin, records).await;
    tracing::info!("execution {} of {} ended {}", report.record.id, rec.flow, report.record.status);
    Ok(report.record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// A follower asks for what came after what it has; a runaway plugin's
    /// log stops growing at the cap, and each write it does keep is whole.
    #[test]
    fn a_log_buffer_hands_out_what_is_new_and_stops_at_its_cap() {
        let mut log = LogBuffer::default();
        assert_eq!(log.write(b"one\n").unwrap(), 4);
        log.write_all(b"two\n").unwrap();
        assert_eq!(
            (log.since(0), log.since(4), log.since(8), log.since(99)),
            (b"one\ntwo\n".to_vec(), b"two\n".to_vec(), vec![], vec![])
        );
        log.write_all(&vec![b'x'; LOG_CAP - 10]).unwrap();
        log.write_all(b"crossing it").unwrap();
        assert_eq!(log.since(0).len(), LOG_CAP - 2 + 11, "the write that crossed the cap is kept whole");
        // Past the cap a write is taken (the plugin is not failed) and dropped.
        assert_eq!(log.write(b"more").unwrap(), 4);
        assert_eq!(log.since(0).len(), LOG_CAP + 9);
        let mut exact = LogBuffer::default();
        exact.write_all(&vec![b'x'; LOG_CAP]).unwrap();
        exact.write_all(b"y").unwrap();
        assert_eq!(exact.since(0).len(), LOG_CAP, "at exactly the cap, nothing more");
    }
}
