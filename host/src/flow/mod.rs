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

mod check;
mod expr;

use crate::limits::Limits;
pub use crate::limits::{parse_duration, parse_size};
use crate::names::{FlowId, Namespace, SecretName, TaskId};
use crate::network::{NetworkDoc, NetworkPolicy};
use crate::policy::Grants;
use crate::trigger::{Trigger, TriggerDoc, TriggerKind};
use check::{check, kind_matches};
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
    /// Wait, before this task runs (and reads any secret), for a person to approve it.
    #[serde(default)]
    pub approval: Option<ApprovalDoc>,
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

/// An approval gate as written: `{permission: execution:approve, timeout: 24h, distinct_from_trigger: true}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDoc {
    /// What a decider needs in the flow's namespace (default `execution:approve`).
    #[serde(default)]
    pub permission: Option<String>,
    /// How long to wait for a decision (default 24h); then the task is rejected.
    #[serde(default)]
    pub timeout: Option<String>,
    /// The one who started the execution may not decide.
    #[serde(default)]
    pub distinct_from_trigger: bool,
}

/// A checked approval gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Approval {
    /// What a decider needs.
    pub permission: crate::authz::Permission,
    /// How long to wait.
    pub timeout: std::time::Duration,
    /// The one who started it may not decide.
    pub distinct_from_trigger: bool,
}

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
    /// Wait for a decision before running.
    pub approval: Option<Approval>,
    /// Limits.
    pub limits: Limits,
    /// Outbound HTTP.
    pub network: NetworkPolicy,
    /// Input template.
    pub input: Value,
    /// Take `input` as it is, without expanding `{{ ... }}` (`host exec`).
    pub literal_input: bool,
}

/// How a flow names a secret: each makes a task (or the host, for a
/// webhook) use it, so each needs `secret:use` where it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UseKind {
    /// `secrets:` of a task: read with `secrets.get` or `wasi:config`
    /// (a dynamic secret too: a credential is minted for the task).
    Read,
    /// `rotate:` of a task.
    Rotate,
    /// A webhook trigger's `key_secret`.
    WebhookKey,
    /// A webhook trigger's signing secret.
    WebhookSignature,
}

/// One secret a flow names, and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecretUse {
    /// The secret.
    pub name: SecretName,
    /// `task ID` or `trigger ID`.
    pub by: String,
    /// How.
    pub kind: UseKind,
}

impl fmt::Display for SecretUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.kind {
            UseKind::Read => "secrets",
            UseKind::Rotate => "rotate",
            UseKind::WebhookKey => "webhook key_secret",
            UseKind::WebhookSignature => "webhook signing secret",
        };
        write!(f, "{} ({how})", self.by)
    }
}

impl Flow {
    /// Every secret any task or trigger names, with where and how, sorted
    /// by name: what deploying the flow must be vouched for.
    pub fn secret_uses(&self) -> Vec<SecretUse> {
        let mut out = Vec::new();
        for t in &self.tasks {
            let by = format!("task {}", t.id);
            let reads = t.grants.iter().map(|n| (n, UseKind::Read));
            for (name, kind) in reads.chain(t.rotate.iter().map(|n| (n, UseKind::Rotate))) {
                out.push(SecretUse { name: name.clone(), by: by.clone(), kind });
            }
        }
        for t in &self.triggers {
            if let TriggerKind::Webhook(w) = &t.kind {
                let kind = match w.auth {
                    crate::trigger::WebhookAuth::Key(_) => UseKind::WebhookKey,
                    crate::trigger::WebhookAuth::Signature { .. } => UseKind::WebhookSignature,
                };
                out.push(SecretUse { name: w.secret().clone(), by: format!("trigger {}", t.id), kind });
            }
        }
        out.sort();
        out
    }
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

/// Collects the findings of a check of one file (`check`, `expr`).
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
mod tests;
