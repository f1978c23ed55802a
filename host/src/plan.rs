//! The scheduler of one execution's tasks: given who waits for whom, which
//! task may start now. It knows nothing of plugins, secrets or time; the
//! runner (`run`) asks it for work, reports each end, and does the rest.
//!
//! A [`Plan`] is the dependency graph, checked once when the flow is read
//! (unknown ids, cycles). A [`Scheduler`] walks it for one execution: a task
//! starts when every task it depends on has ended in a way that lets it go
//! on (succeeded, skipped by its condition, or failed with `allow_failure`),
//! at most `max_parallel` at once, lowest file position first among those
//! ready. A failure that is not allowed stops the walk: running tasks end,
//! nothing new starts.
//!
//! Invariant: each task is handed out at most once, and only after all its
//! dependencies ended (tested by a property over random graphs).

use std::collections::BTreeSet;

/// Who waits for whom: `deps[i]` are the tasks task `i` depends on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    deps: Vec<Vec<usize>>,
}

impl Plan {
    /// The plan of `deps`, or a cycle (task indices, in order, the first
    /// repeated at the end) if there is one.
    pub fn new(deps: Vec<Vec<usize>>) -> Result<Plan, Vec<usize>> {
        let n = deps.len();
        // 0: unvisited, 1: on the current path, 2: done.
        let mut mark = vec![0u8; n];
        let mut path = Vec::new();
        fn visit(i: usize, deps: &[Vec<usize>], mark: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
            match mark[i] {
                2 => return None,
                1 => {
                    let from = path.iter().position(|&p| p == i).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(i);
                    return Some(cycle);
                }
                _ => {}
            }
            mark[i] = 1;
            path.push(i);
            for &d in &deps[i] {
                if let Some(c) = visit(d, deps, mark, path) {
                    return Some(c);
                }
            }
            path.pop();
            mark[i] = 2;
            None
        }
        for i in 0..n {
            if let Some(mut cycle) = visit(i, &deps, &mut mark, &mut path) {
                // Written in the direction the flow reads: a runs before b.
                cycle.reverse();
                return Err(cycle);
            }
        }
        Ok(Plan { deps })
    }

    /// Each task after the one before it: a flow where no task says
    /// `depends_on` runs in file order.
    pub fn sequential(n: usize) -> Plan {
        Plan { deps: (0..n).map(|i| if i == 0 { vec![] } else { vec![i - 1] }).collect() }
    }

    /// How many tasks.
    pub fn len(&self) -> usize {
        self.deps.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    /// The tasks `i` depends on directly.
    pub fn deps(&self, i: usize) -> &[usize] {
        &self.deps[i]
    }

    /// Every task `i` depends on, directly or not: the tasks whose outputs
    /// it may read.
    pub fn upstream(&self, i: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<usize> = self.deps[i].clone();
        while let Some(d) = todo.pop() {
            if seen.insert(d) {
                todo.extend(&self.deps[d]);
            }
        }
        seen
    }
}

/// How a task ended, as far as the tasks after it care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It returned output.
    Succeeded,
    /// Its condition was false: not run, and those after it go on.
    Skipped,
    /// It failed, and `allow_failure` lets those after it go on.
    FailedAllowed,
    /// It failed: nothing new starts.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Ended(Ended),
}

/// One execution's walk over a [`Plan`].
#[derive(Debug)]
pub struct Scheduler<'p> {
    plan: &'p Plan,
    state: Vec<State>,
    running: usize,
    max_parallel: usize,
    stopped: bool,
}

impl<'p> Scheduler<'p> {
    /// A walk that runs at most `max_parallel` (at least 1) tasks at once.
    pub fn new(plan: &'p Plan, max_parallel: usize) -> Self {
        Scheduler {
            plan,
            state: vec![State::Waiting; plan.len()],
            running: 0,
            max_parallel: max_parallel.max(1),
            stopped: false,
        }
    }

    /// A task that may start now (marked running), if any.
    pub fn start_next(&mut self) -> Option<usize> {
        if self.stopped || self.running >= self.max_parallel {
            return None;
        }
        let ready = (0..self.state.len()).find(|&i| {
            self.state[i] == State::Waiting
                && self.plan.deps(i).iter().all(|&d| {
                    matches!(self.state[d], State::Ended(Ended::Succeeded | Ended::Skipped | Ended::FailedAllowed))
                })
        })?;
        self.state[ready] = State::Running;
        self.running += 1;
        Some(ready)
    }

    /// Task `i`, handed out by [`Scheduler::start_next`], ended as `how`.
    pub fn finish(&mut self, i: usize, how: Ended) {
        assert_eq!(self.state[i], State::Running, "task {i} ended without having started");
        self.state[i] = State::Ended(how);
        self.running -= 1;
        if how == Ended::Failed {
            self.stopped = true;
        }
    }

    /// Starts nothing more (a cancel, the flow's timeout).
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// How many tasks are running.
    pub fn running(&self) -> usize {
        self.running
    }

    /// The tasks that never started, in file order (once the walk is over:
    /// skipped because something before them failed or the run stopped).
    pub fn never_started(&self) -> Vec<usize> {
        (0..self.state.len()).filter(|&i| self.state[i] == State::Waiting).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_cycle_is_named_in_reading_order() {
        // 0 waits for 2, 1 for 0, 2 for 1.
        let cycle = Plan::new(vec![vec![2], vec![0], vec![1]]).unwrap_err();
        assert_eq!(cycle.len(), 4);
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(Plan::new(vec![vec![0]]).unwrap_err(), vec![0, 0], "a task waiting for itself");
    }

    #[test]
    fn independent_tasks_start_together_up_to_the_limit() {
        let plan = Plan::new(vec![vec![], vec![], vec![], vec![0, 1, 2]]).unwrap();
        let mut s = Scheduler::new(&plan, 2);
        assert_eq!((s.start_next(), s.start_next(), s.start_next()), (Some(0), Some(1), None));
        s.finish(1, Ended::Succeeded);
        assert_eq!(s.start_next(), Some(2));
        assert_eq!(s.start_next(), None, "3 waits for 0 and 2");
        s.finish(0, Ended::Skipped);
        s.finish(2, Ended::FailedAllowed);
        assert_eq!(s.start_next(), Some(3));
    }

    #[test]
    fn a_failure_stops_what_has_not_started() {
        let plan = Plan::sequential(3);
        let mut s = Scheduler::new(&plan, 4);
        assert_eq!(s.start_next(), Some(0));
        s.finish(0, Ended::Failed);
        assert_eq!(s.start_next(), None);
        assert_eq!(s.never_started(), vec![1, 2]);
        assert_eq!(plan.upstream(2), BTreeSet::from([0, 1]));
    }

    /// A random DAG: each task depends on some of the tasks before it.
    fn dag() -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1usize..14).prop_flat_map(|n| {
            (0..n)
                .map(|i| {
                    proptest::collection::btree_set(0..i.max(1), 0..=i.min(3))
                        .prop_map(move |s| if i == 0 { vec![] } else { s.into_iter().collect() })
                })
                .collect::<Vec<_>>()
        })
    }

    proptest! {
        #[test]
        fn every_task_runs_once_after_its_dependencies_in_a_topological_order(
            deps in dag(), max_parallel in 1usize..5, picks in proptest::collection::vec(any::<prop::sample::Index>(), 64)
        ) {
            let n = deps.len();
            let plan = Plan::new(deps.clone()).unwrap();
            let mut s = Scheduler::new(&plan, max_parallel);
            let (mut running, mut order, mut ended) = (Vec::new(), Vec::new(), vec![false; n]);
            let mut picks = picks.into_iter().cycle();
            loop {
                while let Some(i) = s.start_next() {
                    prop_assert!(deps[i].iter().all(|&d| ended[d]), "task {} started before its dependencies", i);
                    prop_assert!(!order.contains(&i), "task {} started twice", i);
                    order.push(i);
                    running.push(i);
                    prop_assert!(running.len() <= max_parallel);
                }
                if running.is_empty() {
                    break;
                }
                // Whichever running task ends first: any order is possible.
                let i = running.swap_remove(picks.next().unwrap().index(running.len()));
                ended[i] = true;
                s.finish(i, Ended::Succeeded);
            }
            prop_assert_eq!(order.len(), n, "every task ran");
            let at = |t: usize| order.iter().position(|&x| x == t).unwrap();
            for (i, ds) in deps.iter().enumerate() {
                for &d in ds {
                    prop_assert!(at(d) < at(i));
                }
            }
        }
    }
}
