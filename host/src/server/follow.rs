//! `GET /api/v1/executions/{id}/follow`: one execution's progress as
//! server-sent events, from wherever it is (queued, running, ended) to its
//! end. Each event's `data` is one JSON object:
//!
//! - `status`: the execution record, each time it changes (it starts, a
//!   task ends);
//! - `log`: `{"text": ...}`, whole lines of its log as they are written;
//! - `end`: the final record, after the last `log`; the stream closes;
//! - `closed`: `{"error": ...}`: the stream stops before the end (the
//!   server is stopping, the token was revoked); follow again later.
//!
//! Invariant: every log byte sent has passed the execution's masks twice:
//! when the task wrote it, and again, with every value read since, when it
//! is sent. The token is checked again every few seconds, so revoking it
//! ends the streams it opened. A follower of a running execution wakes on
//! its log's writes and its end, not on a timer.

use super::AppState;
use super::extract::{Caller, blocking};
use super::worker::Running;
use crate::executions::ExecutionRecord;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a follower looks for news while the execution is not yet
/// running here (queued, or on its way to a worker).
const TICK: Duration = Duration::from_millis(150);
/// While it runs, a follower wakes at each write to its log and at its
/// end; and at least this often, for what no write announces (a task
/// starting, a sign-out, the server stopping).
const QUIET: Duration = Duration::from_secs(1);
/// How often the token is checked again.
const TOKEN_EVERY: Duration = Duration::from_secs(1);
/// A line longer than this is sent in pieces.
const MAX_LINE: usize = 16 << 10;

/// The handler.
pub(super) async fn follow(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let follower = Follower {
        app,
        id,
        token: caller.info.id,
        session: caller.session.map(|s| s.key),
        live: None,
        sent: 0,
        pending: Vec::new(),
        last: None,
        token_checked: None,
        out: VecDeque::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(follower, |mut f| async move {
        loop {
            if let Some(event) = f.out.pop_front() {
                return Some((Ok(event), f));
            }
            if f.done {
                return None;
            }
            // Listening before looking: a write during the look still wakes us.
            let changes = f.live.as_ref().map(|l| l.log.changes());
            let changed = changes.as_deref().map(tokio::sync::Notify::notified);
            let mut changed = std::pin::pin!(changed);
            if let Some(n) = changed.as_mut().as_pin_mut() {
                n.enable();
            }
            f.step().await;
            if f.out.is_empty() && !f.done {
                match changed.as_pin_mut() {
                    Some(n) => {
                        let _ = tokio::time::timeout(QUIET, n).await;
                    }
                    None => tokio::time::sleep(TICK).await,
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

struct Follower {
    app: AppState,
    id: String,
    /// The caller's token id, checked again now and then.
    token: String,
    /// The console session it came through, if any: checked at every
    /// look (signing out closes the stream at once).
    session: Option<String>,
    /// The running execution's log and masks, once seen.
    live: Option<Running>,
    /// How many bytes of `live.log` were taken.
    sent: usize,
    /// Taken but not yet sent: the start of a line.
    pending: Vec<u8>,
    /// The record last sent.
    last: Option<serde_json::Value>,
    /// When the token was last checked.
    token_checked: Option<std::time::Instant>,
    out: VecDeque<Event>,
    done: bool,
}

impl Follower {
    /// Looks once: new log lines, a changed record, the end.
    async fn step(&mut self) {
        if self.app.stopping.load(Ordering::SeqCst) {
            return self.close("the server is stopping: follow again once it is back");
        }
        if self.session.as_deref().is_some_and(|key| !self.app.sessions.is_open(key)) {
            return self.close("the console session ended (signed out or idle): sign in again");
        }
        let (id, token) = (self.id.clone(), self.token.clone());
        let check_token = self.token_checked.is_none_or(|t| t.elapsed() >= TOKEN_EVERY);
        if check_token {
            self.token_checked = Some(std::time::Instant::now());
        }
        let read = blocking(&self.app, move |app| {
            let rec = app.records().get(&id)?;
            let valid = !check_token || app.tokens().get(&token).is_ok_and(|t| t.state == "active");
            Ok((rec, valid))
        })
        .await;
        let (rec, valid) = match read {
            Ok(x) => x,
            Err(_) => return self.close("the execution can no longer be read"),
        };
        if !valid {
            return self.close("the token was revoked or has expired");
        }
        // Read after the record: an execution leaves `running` only once its
        // record and log are stored, so ended-and-gone means nothing more.
        let running = self.app.running.lock().unwrap_or_else(|p| p.into_inner()).get(&self.id).cloned();
        if self.live.is_none() {
            self.live = running.clone();
        }
        let ended = rec.status.ended() && running.is_none();
        let value = serde_json::to_value(&rec).unwrap_or_default();
        // The record first (a stream opens with where the execution is), then
        // what was written since; at the end, the last lines before `end`.
        if !ended && self.last.as_ref() != Some(&value) {
            self.out.push_back(record_event("status", &rec));
        }
        self.take_log(ended);
        if ended && self.live.is_none() {
            // Ended before this stream saw it run: the stored log.
            let id = self.id.clone();
            if let Ok(text) = blocking(&self.app, move |app| Ok(app.records().log(&id)?)).await
                && !text.is_empty()
            {
                self.out.push_back(log_event(&text));
            }
        }
        if ended {
            self.out.push_back(record_event("end", &rec));
            self.done = true;
        }
        self.last = Some(value);
    }

    /// Queues the whole lines written since the last look (everything, at
    /// the end), masked with every value the execution has read so far.
    fn take_log(&mut self, all: bool) {
        let Some(live) = &self.live else { return };
        let new = live.log.since(self.sent);
        self.sent += new.len();
        self.pending.extend_from_slice(&new);
        let cut = if all || self.pending.len() > MAX_LINE {
            self.pending.len()
        } else {
            self.pending.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
        };
        if cut == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.drain(..cut).collect();
        let text = String::from_utf8_lossy(&chunk);
        self.out.push_back(log_event(&live.masks.mask(&text)));
    }

    fn close(&mut self, why: &str) {
        self.out.push_back(Event::default().event("closed").data(json!({ "error": why }).to_string()));
        self.done = true;
    }
}

fn log_event(text: &str) -> Event {
    Event::default().event("log").data(json!({ "text": text }).to_string())
}

fn record_event(kind: &str, rec: &ExecutionRecord) -> Event {
    Event::default().event(kind).data(serde_json::to_string(rec).unwrap_or_default())
}
