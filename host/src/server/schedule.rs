//! The scheduler: one thread that, about once a second, queues the
//! firings of every deployed flow's schedule triggers that came due. It
//! reads the list of flows again only when the registry's generation moves
//! (or after a minute), not at every pass.
//!
//! Invariants: each firing is queued at most once (its idempotency key is
//! the schedule and the firing time, and the last firing is saved only
//! after it is queued, so a crash in between re-queues nothing); firings
//! missed while the server was down are queued or skipped as the trigger's
//! `recover` says, and a skip is audited; a schedule first seen starts from
//! now, never from the past.

use super::App;
use super::queue::Origin;
use crate::audit::Actor;
use crate::flow::Flow;
use crate::names::Namespace;
use crate::service::triggers;
use crate::trigger::{Schedule, TriggerKind, context};
use jiff::Timestamp;
use serde_json::{Map, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Starts the scheduler; `up_since` is when this server started (firings
/// before it were missed).
pub fn spawn(app: Arc<App>, up_since: Timestamp) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("keyhole-scheduler".into())
        .spawn(move || {
            let mut flows = FlowCache::default();
            while !app.stopping.load(Ordering::SeqCst) {
                if let Err(e) = pass(&app, &mut flows, Timestamp::now(), up_since) {
                    tracing::error!("scheduler: {e}");
                }
                // Wake at the next second boundary.
                nap(to_next_second(Timestamp::now().subsec_nanosecond().unsigned_abs().into()), &app.stopping);
            }
        })
        .expect("cannot start the scheduler thread")
}

/// From `subsec` nanoseconds into a second to the start of the next one.
fn to_next_second(subsec: u64) -> Duration {
    Duration::from_nanos(1_000_000_000 - subsec.min(999_999_999))
}

/// Sleeps for `total`, looking every 100 ms whether the server is stopping
/// (then it returns at once).
fn nap(total: Duration, stopping: &AtomicBool) {
    let mut left = total;
    while !left.is_zero() && !stopping.load(Ordering::SeqCst) {
        let step = left.min(Duration::from_millis(100));
        std::thread::sleep(step);
        left -= step;
    }
}

/// The flows the scheduler serves, read again only when the registry's
/// generation moves (a deploy, a removal or a review, by any process) or
/// after [`RELIST`]: a pass reads two numbers, not every flow and its MAC.
#[derive(Default)]
struct FlowCache {
    /// Parsed flows by namespace and id, kept while their revision is current.
    flows: HashMap<(Namespace, String), (u64, Arc<Flow>, Timestamp)>,
    /// What the list was read at, and the list (a flow's serving revision
    /// or, when none serves, its newest pending one).
    listed: Option<((i64, i64), std::time::Instant, Vec<crate::registry::Deployed>)>,
}

/// How long a list of flows is trusted without a look at every row.
const RELIST: Duration = Duration::from_secs(60);

/// One pass: every schedule of every deployed flow, up to `now`. A flow
/// whose only revisions wait for review has nothing to run: its schedules'
/// firings are audited as refused, naming the pending revision.
fn pass(app: &App, cache: &mut FlowCache, now: Timestamp, up_since: Timestamp) -> Result<(), String> {
    let generation = app.registry().generation().map_err(|e| e.to_string())?;
    let fresh = |l: &((i64, i64), std::time::Instant, _)| l.0 == generation && l.1.elapsed() < RELIST;
    let deployed = match cache.listed.take() {
        Some(l) if fresh(&l) => l.2,
        _ => serving(app)?,
    };
    cache.listed = Some((generation, std::time::Instant::now(), deployed.clone()));
    cache.flows.retain(|(ns, id), _| deployed.iter().any(|d| &d.namespace == ns && &d.id == id));
    for d in deployed {
        let key = (d.namespace.clone(), d.id.clone());
        let (flow, deployed_at) = match cache.flows.get(&key) {
            Some((rev, f, at)) if *rev == d.revision => (f.clone(), *at),
            _ => {
                let Ok(f) = app.registry().parsed(&d) else { continue };
                let f = Arc::new(f);
                let at = d.deployed_at.parse().unwrap_or(now);
                cache.flows.insert(key, (d.revision, f.clone(), at));
                (f, at)
            }
        };
        let pending = (!d.state.serves()).then_some(d.revision);
        for t in &flow.triggers {
            if let TriggerKind::Schedule(s) = &t.kind {
                // Firings from before this revision was deployed are not its own.
                let since = Since { up: up_since, deployed: deployed_at };
                fire(app, &flow, t.id.as_str(), s, now, since, pending)?;
            }
        }
    }
    Ok(())
}

/// Each deployed flow's serving revision or, when none serves, its newest
/// pending one.
fn serving(app: &App) -> Result<Vec<crate::registry::Deployed>, String> {
    let listed = app.registry().list().map_err(|e| e.to_string())?;
    let mut deployed: Vec<crate::registry::Deployed> = Vec::new();
    for d in listed {
        // Listed by flow, oldest first: the serving revision, then any
        // pending ones; a serving one wins, else the newest pending one.
        match deployed.last_mut() {
            Some(prev) if prev.namespace == d.namespace && prev.id == d.id => {
                if !prev.state.serves() {
                    *prev = d;
                }
            }
            _ => deployed.push(d),
        }
    }
    Ok(deployed)
}

/// When the server started, and when the flow's current revision was deployed.
#[derive(Debug, Clone, Copy)]
struct Since {
    up: Timestamp,
    deployed: Timestamp,
}

/// Queues the firings of schedule `id` that came due; for a revision still
/// `pending` review, records each as refused instead.
fn fire(
    app: &App,
    flow: &Flow,
    id: &str,
    s: &Schedule,
    now: Timestamp,
    since: Since,
    pending: Option<u64>,
) -> Result<(), String> {
    let ns = &flow.namespace;
    let err = |e: &dyn std::fmt::Display| format!("flow {} schedule {id}: {e}", flow.id);
    let last = app.records().schedule_last(ns.as_str(), flow.id.as_str(), id).map_err(|e| err(&e))?;
    let Some(last) = last.and_then(|l| Timestamp::from_second(l).ok()) else {
        // First seen: start from now.
        return app
            .records()
            .set_schedule_last(ns.as_str(), flow.id.as_str(), id, now.as_second())
            .map_err(|e| err(&e));
    };
    let due = s.due(last.max(since.deployed), now, since.up);
    let name = format!("schedule:{id}");
    let actor = Actor::Trigger { flow: flow.id.to_string(), trigger: name.clone() };
    if due.skipped > 0 {
        let (schedule, recover) = (format!("{:?} ({})", s.pattern, s.timezone), json!(s.recover));
        let recover = recover.as_str().unwrap_or_default();
        triggers::schedule_skipped(&app.state, &actor, ns, due.skipped, &schedule, recover).map_err(|e| err(&e))?;
    }
    for at in &due.fire {
        let date = at.to_zoned(s.time_zone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string();
        if let Some(revision) = pending {
            triggers::schedule_held(&app.state, &actor, ns, &date, flow.id.as_str(), revision).map_err(|e| err(&e))?;
            continue;
        }
        let mut extra = Map::new();
        extra.insert("date".into(), json!(date));
        extra.insert("missed".into(), json!(*at < since.up));
        let origin = Origin {
            actor: actor.clone(),
            by: format!("schedule {id}"),
            trigger: name.clone(),
            context: context("schedule", Some(id), extra),
            idempotency_key: Some(format!("{name}@{}/{}:{}", ns.as_str(), flow.id, at.as_second())),
            person: None,
        };
        crate::service::executions::queue(&app.state, &origin, ns, flow.id.as_str(), &Map::new())
            .map_err(|e| err(&e))?;
    }
    if let Some(l) = due.last {
        app.records().set_schedule_last(ns.as_str(), flow.id.as_str(), id, l.as_second()).map_err(|e| err(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_scheduler_wakes_at_the_next_whole_second() {
        assert_eq!(to_next_second(0), Duration::from_secs(1));
        assert_eq!(to_next_second(250_000_000), Duration::from_millis(750));
        assert_eq!(to_next_second(999_999_999), Duration::from_nanos(1));
    }

    /// A nap lasts its whole length unless the server stops: an idle
    /// scheduler sleeps (it does not spin a core) and a stop is not kept
    /// waiting.
    #[test]
    fn a_nap_sleeps_its_length_and_ends_at_a_stop() {
        let started = Instant::now();
        nap(Duration::from_millis(250), &AtomicBool::new(false));
        assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
        let started = Instant::now();
        nap(Duration::from_secs(30), &AtomicBool::new(true));
        assert!(started.elapsed() < Duration::from_secs(10), "a stopping server waited {:?}", started.elapsed());
    }
}
