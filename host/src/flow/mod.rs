//! Flows: the declarative YAML (or JSON) format and its validation (the
//! `{{ ... }}` expressions are `expr`; the order tasks run in is
//! `crate::plan`, built here from `depends_on`).
//!
//! A flow names, per task, the exact secrets the task may read
//! (`secrets: [NAME]`); reviewing the file tells what each plugin may touch.
//!
//! Invariant: a secret value never enters a task through its input: there is
//! no `secret()` expression, and task outputs are masked before they can be
//! referenced by later tasks.

mod expr;

use crate::limits::Limits;
pub use crate::limits::{parse_duration, parse_size};
use crate::names::{FlowId, Namespace, SecretName, TaskId};
use crate::network::{NetworkDoc, NetworkPolicy};
use crate::policy::Grants;
use crate::trigger::{Trigger, TriggerDoc, TriggerKind};
use expr::{Context, check_expressions};
pub use expr::{Scope, render, truthy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest flow file accepted.
pub const MAX_FLOW_BYTES: usize = 1 << 20;

/// A flow file as written.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "keyhole flow",
    description = "A keyhole flow: tasks (a DAG with depends_on, else in order), each with its own grants and limits"
)]
pub struct FlowDoc {
    /// Flow id: ASCII letters, digits, `_` and `-`.
    pub id: String,
    /// Dotted namespace the tasks' secrets are looked up in (then its parents). Default: the root.
    #[serde(default)]
    pub namespace: String,
    /// What the flow does.
    #[serde(default)]
    pub description: Option<String>,
    /// Inputs given with `host run FLOW --input ID=VALUE`.
    #[serde(default)]
    pub inputs: Vec<InputDecl>,
    /// Tasks: in file order, or as a DAG when any says `depends_on`; a failed task stops the flow
    /// (unless it has `allow_failure`).
    pub tasks: Vec<TaskDoc>,
    /// Tasks run, in order, when a task of `tasks` failed (or the flow timed out); they see
    /// `{{ error.task }}` and `{{ error.message }}`.
    #[serde(default)]
    pub errors: Vec<TaskDoc>,
    /// Tasks run, in order, at the end whatever happened: success, failure, cancel, timeout.
    #[serde(default)]
    pub finally: Vec<TaskDoc>,
    /// Most tasks of one execution running at once (default 4).
    #[serde(default)]
    pub max_parallel: Option<usize>,
    /// Retry policy of every task that has none of its own.
    #[serde(default)]
    pub retry: Option<RetryDoc>,
    /// Wall time of the whole execution (`1h`); then running tasks are stopped, `errors` and
    /// `finally` run, and the execution fails.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Most executions of this flow running at once, on a server, and what a new one does when
    /// that many are running or waiting.
    #[serde(default)]
    pub concurrency: Option<Concurrency>,
    /// What starts the flow on a server by itself: schedules and webhooks.
    #[serde(default)]
    pub triggers: Vec<TriggerDoc>,
    /// What a server does with an execution cut off by its crash or stop.
    #[serde(default)]
    pub on_interrupt: OnInterrupt,
}

/// What a server does with an execution of the flow that its crash or
/// shutdown cut off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnInterrupt {
    /// It stays `interrupted` (the default: a task may not be safe to run twice).
    #[default]
    Fail,
    /// A new execution of the same revision, inputs and trigger is queued.
    Requeue,
}

/// One declared input.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputDecl {
    /// Input id, referenced as `{{ inputs.ID }}`.
    pub id: String,
    /// Type the `--input` text is parsed as.
    #[serde(rename = "type", default)]
    pub kind: InputKind,
    /// Whether `--input ID=...` must be given (unless there is a default).
    #[serde(default)]
    pub required: bool,
    /// Value used when the input is not given.
    #[serde(default)]
    pub default: Option<Value>,
    /// What the input means.
    #[serde(default)]
    pub description: Option<String>,
}

/// Input types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// Text, taken as given.
    #[default]
    String,
    /// A JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// Any JSON document.
    Json,
}

/// One task as written.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskDoc {
    /// Task id, unique in the flow, referenced as `{{ outputs.ID.FIELD }}`.
    pub id: String,
    /// Path of the plugin (.wasm), relative to the flow file.
    pub plugin: String,
    /// Optional pin: the plugin's SHA-256 (hex); a different binary is refused.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Secrets this task may read with `secrets::get`, and no others.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Secrets this task may rotate with `keyhole:task/rotation` (never implied by `secrets`).
    #[serde(default)]
    pub rotate: Vec<String>,
    /// Ids of the tasks this one waits for (`tasks:` only; `[]`: none). A flow where no task
    /// says `depends_on` runs in file order.
    #[serde(default)]
    pub depends_on: Option<Vec<String>>,
    /// Run again on failure.
    #[serde(default)]
    pub retry: Option<RetryDoc>,
    /// A failure of this task does not stop the flow: those after it go on, and the execution
    /// ends `warning`.
    #[serde(default)]
    pub allow_failure: bool,
    /// Run only when this expression is true (`"{{ inputs.full }}"`); else skipped.
    #[serde(default, rename = "if")]
    pub condition: Option<String>,
    /// Run once per value (`{{ item }}` in the input); the output is the list of outputs, in order.
    #[serde(default)]
    pub for_each: Option<ForEachDoc>,
    /// Resource limits.
    #[serde(default)]
    pub limits: LimitsDoc,
    /// Outbound HTTP: where this task may send requests (nowhere by default), and its limits.
    #[serde(default)]
    pub network: NetworkDoc,
    /// The task's JSON input; strings may hold `{{ ... }}` expressions.
    #[serde(default)]
    pub input: Value,
    /// What the task does.
    #[serde(default)]
    pub description: Option<String>,
}

pub use crate::executions::{Concurrency, OverLimit};

/// A loop as written: `{values: "{{ inputs.regions }}", concurrency: 4}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForEachDoc {
    /// A list, or an expression that renders to one.
    pub values: Value,
    /// Most iterations running at once (default 1).
    #[serde(default)]
    pub concurrency: Option<usize>,
}

/// A checked loop.
#[derive(Debug, Clone, PartialEq)]
pub struct ForEach {
    /// The list, or the expression that renders to it.
    pub values: Value,
    /// Most iterations at once.
    pub concurrency: usize,
}

/// Most iterations of one `for_each`.
pub const MAX_ITEMS: usize = 1000;

/// A retry policy as written: `{type: exponential, max_attempts: 5, interval: 1s, max_interval: 30s}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryDoc {
    /// `constant` (every wait is `interval`) or `exponential` (doubling from `interval`).
    #[serde(rename = "type", default)]
    pub kind: Backoff,
    /// Attempts in all, the first included (at least 1, at most 100).
    pub max_attempts: u32,
    /// Wait before the second attempt: `1s`, `500ms`.
    #[serde(default)]
    pub interval: Option<String>,
    /// Longest wait between attempts (exponential).
    #[serde(default)]
    pub max_interval: Option<String>,
    /// No new attempt starts later than this after the first one began.
    #[serde(default)]
    pub max_duration: Option<String>,
}

/// How the wait between attempts grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// The same wait each time.
    #[default]
    Constant,
    /// Twice the previous wait, up to `max_interval`.
    Exponential,
}

/// A checked retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// How the wait grows.
    pub backoff: Backoff,
    /// Attempts in all.
    pub max_attempts: u32,
    /// The first wait.
    pub interval: std::time::Duration,
    /// The longest wait.
    pub max_interval: Option<std::time::Duration>,
    /// No attempt starts later than this after the first.
    pub max_duration: Option<std::time::Duration>,
}

impl Retry {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> std::time::Duration {
        let d = match self.backoff {
            Backoff::Constant => self.interval,
            Backoff::Exponential => self.interval.saturating_mul(1u32 << (attempt - 1).min(20)),
        };
        self.max_interval.map_or(d, |m| d.min(m))
    }

    fn check(doc: &RetryDoc) -> Result<Retry, String> {
        if !(1..=100).contains(&doc.max_attempts) {
            return Err(format!("max_attempts is 1 to 100, not {}", doc.max_attempts));
        }
        let d = |v: &Option<String>, what: &str| {
            v.as_deref().map(parse_duration).transpose().map_err(|e| format!("{what}: {e}"))
        };
        Ok(Retry {
            backoff: doc.kind,
            max_attempts: doc.max_attempts,
            interval: d(&doc.interval, "interval")?.unwrap_or(std::time::Duration::from_secs(1)),
            max_interval: d(&doc.max_interval, "max_interval")?,
            max_duration: d(&doc.max_duration, "max_duration")?,
        })
    }
}

/// Which part of the flow a task belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `tasks:`
    Main,
    /// `errors:`
    Errors,
    /// `finally:`
    Finally,
}

/// Default of `max_parallel`.
pub const DEFAULT_MAX_PARALLEL: usize = 4;

/// Limits as written: `memory: 64MiB`, `timeout: 30s`, `output: 1MiB`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsDoc {
    /// Memory of the task (all its linear memories and tables together), with a unit: `64MiB`, `1GiB`.
    #[serde(default)]
    pub memory: Option<String>,
    /// Wall time: `30s`, `2m`, `500ms`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Plugin stdout + stderr + log bytes shown, with a unit: `1MiB`.
    #[serde(default)]
    pub output: Option<String>,
}

/// A validated flow, ready to run.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Flow id.
    pub id: FlowId,
    /// Namespace.
    pub namespace: Namespace,
    /// Declared inputs.
    pub inputs: Vec<InputDecl>,
    /// Every task: those of `tasks:` first (indices `0..plan.len()`), then
    /// `errors:`, then `finally:` (see [`FlowTask::phase`]).
    pub tasks: Vec<FlowTask>,
    /// Who waits for whom among `tasks:`.
    pub plan: crate::plan::Plan,
    /// Most tasks running at once.
    pub max_parallel: usize,
    /// Wall time of the whole execution.
    pub timeout: Option<std::time::Duration>,
    /// Executions of it at once (on a server).
    pub concurrency: Option<Concurrency>,
    /// Schedules and webhooks.
    pub triggers: Vec<Trigger>,
    /// What a server does with an execution its crash or stop cut off.
    pub on_interrupt: OnInterrupt,
    /// Where it came from.
    pub source: String,
}

/// A validated task.
#[derive(Debug, Clone)]
pub struct FlowTask {
    /// Task id.
    pub id: TaskId,
    /// Resolved plugin path.
    pub plugin: PathBuf,
    /// Pinned digest, lowercase hex.
    pub sha256: Option<String>,
    /// Grants.
    pub grants: Grants,
    /// What it may rotate.
    pub rotate: Grants,
    /// `tasks:`, `errors:` or `finally:`.
    pub phase: Phase,
    /// Retry policy (its own, else the flow's).
    pub retry: Option<Retry>,
    /// A failure does not stop the flow.
    pub allow_failure: bool,
    /// Run only when this renders true.
    pub condition: Option<String>,
    /// Run once per value.
    pub for_each: Option<ForEach>,
    /// Limits.
    pub limits: Limits,
    /// Outbound HTTP.
    pub network: NetworkPolicy,
    /// Input template.
    pub input: Value,
    /// Take `input` as it is, without expanding `{{ ... }}` (`host exec`).
    pub literal_input: bool,
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The flow cannot run.
    Error,
    /// The flow runs, but probably not as meant.
    Warning,
    /// For information: what a plugin is and what it will be refused.
    Note,
}

/// One validation finding: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// `FILE:LINE:COLUMN`, or `FILE: task ID`.
    pub location: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        write!(f, "{sev}: {}: {}", self.location, self.message)
    }
}

/// Validation findings (at least one error when returned as `Err`).
#[derive(Debug, Clone)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl Diagnostics {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }
}

/// The JSON Schema of the flow format (for editors).
pub fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(FlowDoc)).expect("schemas serialise")
}

/// Reads, parses and checks a flow file. Plugins are not loaded here (see
/// [`plugin_path`] and the runner); everything knowable from the text is.
pub fn load(path: &Path) -> Result<(Flow, Diagnostics), Diagnostics> {
    let file = path.display().to_string();
    let err = |location: String, message: String| {
        Diagnostics(vec![Diagnostic { severity: Severity::Error, location, message }])
    };
    let bytes = crate::data_dir::read_bounded(path, MAX_FLOW_BYTES)
        .map_err(|e| err(file.clone(), format!("cannot read the flow file: {e}")))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let upto = &bytes[..e.valid_up_to()];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = upto.len() - upto.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
        err(format!("{file}:{line}:{col}"), "the flow file is not valid UTF-8".into())
    })?;
    parse(text, &file, path.parent().unwrap_or(Path::new(".")))
}

/// Parses and checks flow text; `file` names it in messages and plugin paths
/// are resolved against `base`.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<(Flow, Diagnostics), Diagnostics> {
    if let Some((line, col)) = too_deep(text) {
        return Err(Diagnostics(vec![Diagnostic {
            severity: Severity::Error,
            location: format!("{file}:{line}:{col}"),
            message: format!("brackets are nested deeper than {MAX_NESTING} levels"),
        }]));
    }
    let doc: FlowDoc = serde_yaml_ng::from_str(text).map_err(|e| {
        let location = match e.location() {
            Some(l) => format!("{file}:{}:{}", l.line(), l.column()),
            None => file.to_owned(),
        };
        // The message repeats the location; keep only the first.
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
        Diagnostics(vec![Diagnostic { severity: Severity::Error, location, message: msg }])
    })?;
    check(doc, file, base)
}

/// Deepest `[`/`{` nesting accepted. The YAML parser's own recursion limit
/// applies only after it has read the whole event stream, which takes
/// quadratic time for pathological nesting; this linear pre-scan stops
/// such files first.
pub const MAX_NESTING: usize = 64;

/// Line and column where flow-style nesting first exceeds [`MAX_NESTING`],
/// outside quoted strings and comments.
fn too_deep(text: &str) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    for (ln, line) in text.lines().enumerate() {
        let mut quote: Option<char> = None;
        for (col, ch) in line.chars().enumerate() {
            match (quote, ch) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(ch),
                (None, '#') => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Some((ln + 1, col + 1));
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    None
}

struct Checker<'a> {
    file: &'a str,
    found: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, where_: impl fmt::Display, message: impl Into<String>) {
        self.found.push(Diagnostic {
            severity: Severity::Error,
            location: format!("{}: {where_}", self.file),
            message: message.into(),
        });
    }
}

fn check(doc: FlowDoc, file: &str, base: &Path) -> Result<(Flow, Diagnostics), Diagnostics> {
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
    let (id, limits, network, retry) = (tid?, limits?, network?, retry?);
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
        limits,
        network,
        input: t.input.clone(),
        literal_input: false,
    })
}

fn kind_matches(kind: InputKind, v: &Value) -> bool {
    match kind {
        InputKind::String => v.is_string(),
        InputKind::Number => v.is_number(),
        InputKind::Boolean => v.is_boolean(),
        InputKind::Json => true,
    }
}

fn limits(l: &LimitsDoc) -> Result<Limits, String> {
    let d = Limits::default();
    Ok(Limits {
        memory: l.memory.as_deref().map(parse_size).transpose()?.unwrap_or(d.memory),
        timeout: l.timeout.as_deref().map(parse_duration).transpose()?.unwrap_or(d.timeout),
        output: l.output.as_deref().map(parse_size).transpose()?.unwrap_or(d.output),
    })
}

/// Turns `--input ID=TEXT` pairs into typed input values, applying defaults
/// and checking required inputs.
pub fn bind_inputs(flow: &Flow, given: &[(String, String)]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (k, text) in given {
        let decl = declared(flow, k)?;
        let v = match decl.kind {
            InputKind::String => Value::String(text.clone()),
            InputKind::Number => serde_json::from_str::<serde_json::Number>(text)
                .map(Value::Number)
                .map_err(|_| format!("input `{k}` must be a number, got {text:?}"))?,
            InputKind::Boolean => match text.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(format!("input `{k}` must be true or false, got {text:?}")),
            },
            InputKind::Json => serde_json::from_str(text).map_err(|e| format!("input `{k}` must be JSON: {e}"))?,
        };
        out.insert(k.clone(), v);
    }
    with_defaults(flow, out, |id| format!("pass --input {id}=VALUE"))
}

/// Checks a JSON object of inputs (an API request's body) against the
/// flow's declarations, applying defaults and checking required inputs.
pub fn bind_json_inputs(flow: &Flow, given: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    for (k, v) in given {
        let decl = declared(flow, k)?;
        if !kind_matches(decl.kind, v) {
            let kind = serde_json::to_value(decl.kind).ok().and_then(|k| k.as_str().map(str::to_owned));
            return Err(format!("input `{k}` must be of type {}", kind.unwrap_or_default()));
        }
    }
    with_defaults(flow, given.clone(), |id| format!("give it in the request body: {{\"{id}\": ...}}"))
}

fn declared<'a>(flow: &'a Flow, k: &str) -> Result<&'a InputDecl, String> {
    flow.inputs.iter().find(|d| d.id == k).ok_or_else(|| {
        let known: Vec<_> = flow.inputs.iter().map(|d| d.id.as_str()).collect();
        let shown: String = k.chars().take(64).collect();
        format!(
            "flow {} has no input `{shown}` (declared: {})",
            flow.id,
            if known.is_empty() { "none".into() } else { known.join(", ") }
        )
    })
}

fn with_defaults(
    flow: &Flow,
    mut out: Map<String, Value>,
    how: impl Fn(&str) -> String,
) -> Result<Map<String, Value>, String> {
    for d in &flow.inputs {
        if !out.contains_key(&d.id) {
            match &d.default {
                Some(v) => {
                    out.insert(d.id.clone(), v.clone());
                }
                None if d.required => return Err(format!("flow {} needs input `{}`: {}", flow.id, d.id, how(&d.id))),
                None => {}
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flow(text: &str) -> Result<(Flow, Diagnostics), Diagnostics> {
        parse(text, "f.yaml", Path::new("/flows"))
    }

    fn errors(text: &str) -> String {
        flow(text).unwrap_err().to_string()
    }

    const OK: &str = "
id: nightly
namespace: finance.reporting
inputs:
  - id: day
    required: true
tasks:
  - id: sign
    plugin: ../plugins/sign.wasm
    secrets: [KEY]
    limits: { memory: 32MiB, timeout: 5s }
    input:
      payload: 'report for {{ inputs.day }}'
  - id: notify
    plugin: notify.wasm
    input:
      signature: '{{ outputs.sign.signature }}'
      whole: '{{ outputs.sign }}'
      exec: '{{ execution.id }} {{ flow.id }} {{ flow.namespace }}'
";

    #[test]
    fn a_good_flow_parses() {
        let (f, d) = flow(OK).unwrap();
        assert!(d.0.is_empty());
        assert_eq!(f.tasks.len(), 2);
        assert_eq!(f.tasks[0].plugin, Path::new("/flows/../plugins/sign.wasm"));
        assert_eq!(f.tasks[0].limits.memory, 32 << 20);
        assert_eq!(f.tasks[0].limits.timeout, std::time::Duration::from_secs(5));
        assert!(f.tasks[1].grants.is_empty());
    }

    #[test]
    fn unknown_fields_and_wrong_types_name_line_and_column() {
        let e = errors("id: x\ntasks:\n  - id: a\n    plugn: a.wasm\n");
        assert!(e.starts_with("error: f.yaml:4:5: tasks[0]: unknown field `plugn`"), "{e}");
        let e = errors("id: x\ntasks:\n  - id: a\n    plugin: a.wasm\n    secrets: KEY\n");
        assert!(e.contains("f.yaml:5:14") && e.contains("invalid type"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_task() {
        let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm}\n  - {id: a, plugin: b.wasm}\n");
        assert!(e.contains("task a: duplicate task id"), "{e}");
        let e = errors(
            "id: x\ntasks:\n  - {id: a, plugin: a.wasm, input: {v: '{{ outputs.b.x }}'}}\n  - {id: b, plugin: b.wasm}\n",
        );
        assert!(e.contains("f.yaml: task a: input.v: `outputs.b` refers to a task that does not run before"), "{e}");
        let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, input: {v: '{{ inputs.nope }}'}}\n");
        assert!(e.contains("`inputs.nope` is not a declared input"), "{e}");
        let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, limits: {memory: '64'}}\n");
        assert!(e.contains("task a: limits") && e.contains("needs a unit"), "{e}");
    }

    #[test]
    fn secret_expressions_are_rejected_with_guidance() {
        let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, input: {k: \"{{ secret('DB') }}\"}}\n");
        assert!(
            e.contains("secrets: [NAME]") && e.contains("secrets::get(\\\"NAME\\\")")
                || e.contains("secrets::get(\"NAME\")"),
            "{e}"
        );
    }

    #[test]
    fn rendering_keeps_types_and_interpolates() {
        let scope = Scope {
            inputs: json!({"day": "2026-11-27", "n": 3}).as_object().unwrap().clone(),
            outputs: json!({"sign": {"signature": "sha256=ab", "list": [1, {"x": true}]}}).as_object().unwrap().clone(),
            execution_id: "e1".into(),
            flow_id: "f".into(),
            namespace: "ns".into(),
            trigger: json!({"type": "webhook", "id": "gh", "body": {"ref": "main"}, "headers": {"X-GitHub-Event": "push"}}),
            error: json!({"task": "sign", "message": "boom"}),
            item: Value::Null,
        };
        let t = json!({
            "a": "{{ inputs.n }}",
            "b": "n={{ inputs.n }} day={{inputs.day}}",
            "c": "{{ outputs.sign.list[1].x }}",
            "d": ["{{ execution.id }}", "{{ flow.id }}/{{ flow.namespace }}"],
            "e": 5,
            "t": "{{ trigger.headers.X-GitHub-Event }} on {{ trigger.body.ref }}",
            "err": "{{ error.task }}: {{ error.message }}"
        });
        assert_eq!(
            render(&t, &scope).unwrap(),
            json!({"a": 3, "b": "n=3 day=2026-11-27", "c": true, "d": ["e1", "f/ns"], "e": 5, "t": "push on main",
                   "err": "sign: boom"})
        );
        let e = render(&json!("{{ outputs.sign.nope }}"), &scope).unwrap_err();
        assert_eq!(e, "the output of task `sign` has no field `nope`");
    }

    #[test]
    fn a_dag_is_checked_for_unknown_ids_cycles_and_upstream_outputs() {
        let t = |id: &str, extra: &str| format!("  - {{id: {id}, plugin: a.wasm{extra}}}\n");
        let e = errors(&format!("id: x\ntasks:\n{}{}", t("a", ", depends_on: [nope]"), t("b", "")));
        assert!(e.contains("task a: depends_on: no task `nope` in `tasks:`"), "{e}");
        let e = errors(&format!(
            "id: x\ntasks:\n{}{}{}",
            t("a", ", depends_on: [c]"),
            t("b", ", depends_on: [a]"),
            t("c", ", depends_on: [b]")
        ));
        assert!(e.contains("these tasks wait for each other") && e.contains("->"), "{e}");
        // b and c both follow a, but c may not read b's output: they may run at once.
        let e = errors(&format!(
            "id: x\ntasks:\n{}{}{}",
            t("a", ""),
            t("b", ", depends_on: [a]"),
            t("c", ", depends_on: [a], input: {v: '{{ outputs.b.x }}'}")
        ));
        assert!(e.contains("task c: input.v: `outputs.b` refers to a task that does not run before this one"), "{e}");
        let (f, _) = flow(&format!(
            "id: x\nmax_parallel: 2\ntasks:\n{}{}{}",
            t("a", ""),
            t("b", ", depends_on: [a]"),
            t("c", ", depends_on: [b], input: {v: '{{ outputs.a.x }}'}")
        ))
        .unwrap();
        assert_eq!((f.max_parallel, f.plan.deps(2)), (2, &[1][..]));
        // `error` only where there is one; errors/finally run in order.
        let e = errors(&format!("id: x\ntasks:\n{}", t("a", ", input: {m: '{{ error.message }}'}")));
        assert!(e.contains("`error` is the failure an `errors:` or `finally:` task handles"), "{e}");
        let (f, _) = flow(&format!(
            "id: x\ntasks:\n{}errors:\n{}finally:\n{}",
            t("a", ""),
            t("tell", ", input: {m: '{{ error.task }}: {{ error.message }}'}"),
            t("clean", ", if: '{{ outputs.a.ok }}'")
        ))
        .unwrap();
        let phases: Vec<Phase> = f.tasks.iter().map(|t| t.phase).collect();
        assert_eq!(phases, [Phase::Main, Phase::Errors, Phase::Finally]);
        let e = errors(&format!("id: x\ntasks:\n{}finally:\n{}", t("a", ""), t("a", "")));
        assert!(e.contains("duplicate task id"), "{e}");
        let e = errors(&format!("id: x\ntasks:\n{}finally:\n{}", t("a", ""), t("b", ", depends_on: [a]")));
        assert!(e.contains("`finally:` tasks run in order"), "{e}");
    }

    #[test]
    fn retry_policies_are_checked_and_back_off() {
        let (f, _) = flow(
            "id: x\nretry: {max_attempts: 2}\ntasks:\n  - {id: a, plugin: a.wasm}\n  - {id: b, plugin: a.wasm, retry: {type: exponential, max_attempts: 5, interval: 100ms, max_interval: 300ms}}\n",
        )
        .unwrap();
        assert_eq!(f.tasks[0].retry.unwrap().max_attempts, 2, "the flow's default");
        let r = f.tasks[1].retry.unwrap();
        let waits: Vec<u128> = (1..=4).map(|a| r.delay(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 300, 300]);
        let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, retry: {max_attempts: 0}}\n");
        assert!(e.contains("task a: retry: max_attempts is 1 to 100"), "{e}");
        let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, if: 'yes'}\n");
        assert!(e.contains("is not an expression"), "{e}");
        assert!(truthy(&json!("true")) && !truthy(&json!("false")) && !truthy(&json!(0)) && truthy(&json!([1])));
    }

    #[test]
    fn rotate_grants_are_their_own_list() {
        let (f, _) =
            flow("id: x\ntasks:\n  - {id: a, plugin: a.wasm, secrets: [ADMIN], rotate: [SVC_PASSWORD]}\n").unwrap();
        let names = |g: &Grants| g.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            (names(&f.tasks[0].grants), names(&f.tasks[0].rotate)),
            (vec!["ADMIN".into()], vec!["SVC_PASSWORD".into()])
        );
        let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, rotate: [\"../x\"]}\n");
        assert!(e.contains("task a: rotate:"), "{e}");
        let base = "id: x\ntriggers:\n  - {id: hook, webhook: {key_secret: HOOK_KEY}}\n";
        let e = errors(&format!("{base}tasks:\n  - {{id: a, plugin: a.wasm, rotate: [HOOK_KEY]}}\n"));
        assert!(e.contains("HOOK_KEY authenticates webhook trigger hook"), "{e}");
    }

    #[test]
    fn triggers_are_checked_with_the_flow() {
        let base = "id: x\ntriggers:\n  - {id: hook, webhook: {key_secret: HOOK_KEY, headers: [X-Event]}}\n  - {id: nightly, schedule: {cron: '0 2 * * *', timezone: Europe/Paris, recover: last}}\n";
        let (f, _) =
            flow(&format!("{base}tasks:\n  - {{id: a, plugin: a.wasm, input: {{b: '{{{{ trigger.body }}}}'}}}}\n"))
                .unwrap();
        assert_eq!(f.triggers.len(), 2);
        // The webhook's key never reaches a task of the flow.
        let e = errors(&format!("{base}tasks:\n  - {{id: a, plugin: a.wasm, secrets: [HOOK_KEY]}}\n"));
        assert!(e.contains("task a: secrets: HOOK_KEY authenticates webhook trigger hook"), "{e}");
        // A trigger gives no inputs: a required one needs a default.
        let e =
            errors(&format!("{base}inputs:\n  - {{id: day, required: true}}\ntasks:\n  - {{id: a, plugin: a.wasm}}\n"));
        assert!(e.contains("input day: the flow has triggers"), "{e}");
        // `trigger` means nothing in a flow without triggers.
        let e = errors("id: x\ntasks:\n  - {id: a, plugin: a.wasm, input: {b: '{{ trigger.body }}'}}\n");
        assert!(e.contains("declares no `triggers:`"), "{e}");
        let e = errors(
            "id: x\ntriggers:\n  - {id: t, schedule: {cron: '0 2 * * *', recover: sometimes}}\ntasks:\n  - {id: a, plugin: a.wasm}\n",
        );
        assert!(e.starts_with("error: f.yaml:3:") && e.contains("unknown variant `sometimes`"), "{e}");
    }

    #[test]
    fn hostile_yaml_is_an_error_not_a_hang() {
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
                    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
                    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]\nid: x\ntasks: []\n";
        assert!(flow(bomb).is_err());
        let deep = format!(
            "id: x\ntasks:\n  - id: a\n    plugin: a.wasm\n    input: {}{}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let e = errors(&deep);
        assert!(e.contains("f.yaml:5:76: brackets are nested deeper than 64 levels"), "{e}");
    }

    #[test]
    fn inputs_are_typed_and_required() {
        let (f, _) = flow("id: x\ninputs:\n  - {id: n, type: number, required: true}\n  - {id: b, type: boolean, default: false}\ntasks:\n  - {id: a, plugin: a.wasm}\n").unwrap();
        let v = bind_inputs(&f, &[("n".into(), "42".into())]).unwrap();
        assert_eq!(Value::Object(v), json!({"n": 42, "b": false}));
        assert!(bind_inputs(&f, &[]).unwrap_err().contains("needs input `n`"));
        assert!(bind_inputs(&f, &[("n".into(), "x".into())]).unwrap_err().contains("must be a number"));
        assert!(bind_inputs(&f, &[("zz".into(), "1".into())]).unwrap_err().contains("has no input `zz`"));
    }

    #[test]
    fn sizes_need_units() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1gib").unwrap(), 1 << 30);
        assert_eq!(parse_size("10kB").unwrap(), 10_000);
        assert!(parse_size("64").is_err());
        assert!(parse_size("64 parsecs").is_err());
    }

    #[test]
    fn the_schema_describes_tasks() {
        let s = schema().to_string();
        assert!(s.contains("\"tasks\"") && s.contains("\"secrets\"") && s.contains("additionalProperties"), "{s}");
        for field in
            ["depends_on", "retry", "allow_failure", "\"if\"", "errors", "finally", "max_parallel", "timeout", "rotate"]
        {
            assert!(s.contains(field), "the schema lacks {field}");
        }
    }
}
