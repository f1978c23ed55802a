//! `{{ ... }}` expressions: parsing one, checking every one a flow writes
//! against what the task may name (declared inputs, upstream tasks' outputs,
//! the trigger), and rendering a task's input from a [`Scope`].
//!
//! Invariant: there is no expression for a secret; a task's output is
//! reachable only from tasks downstream of it.

use super::Checker;
use serde_json::{Map, Value};
use std::collections::HashSet;

/// One `{{ ... }}` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Input(String, Vec<Step>),
    Output(String, Vec<Step>),
    Trigger(Vec<Step>),
    Error(Vec<Step>),
    Item(Vec<Step>),
    ExecutionId,
    FlowId,
    FlowNamespace,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Field(String),
    Index(usize),
}

const SECRET_HINT: &str = "secrets never travel through task inputs: grant the secret to the task \
    (`secrets: [NAME]`) and read it in the plugin with `keyhole_guest::secrets::get(\"NAME\")`";

fn parse_expr(src: &str) -> Result<Expr, String> {
    let s = src.trim();
    if s.starts_with("secret(") || s.starts_with("secret (") || s.starts_with("secrets.") {
        return Err(format!("`{{{{ {s} }}}}` is not supported: {SECRET_HINT}"));
    }
    let mut steps = Vec::new();
    let mut rest = s;
    let head_end = rest.find(['.', '[']).unwrap_or(rest.len());
    let head = &rest[..head_end];
    rest = &rest[head_end..];
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            if name.is_empty() {
                return Err(format!("empty field name in `{s}`"));
            }
            steps.push(Step::Field(name.to_owned()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| format!("missing `]` in `{s}`"))?;
            let idx = r[..end].trim().parse().map_err(|_| format!("`[{}]` is not an index in `{s}`", &r[..end]))?;
            steps.push(Step::Index(idx));
            rest = &r[end + 1..];
        } else {
            return Err(format!("cannot read `{s}`: use dotted names like outputs.TASK.FIELD"));
        }
    }
    let take_name = |steps: &mut Vec<Step>, what: &str| match steps.first() {
        Some(Step::Field(n)) => Ok(n.clone()),
        _ => Err(format!("`{s}` needs a {what} name, e.g. {head}.NAME")),
    };
    match head {
        "inputs" => {
            let name = take_name(&mut steps, "input")?;
            Ok(Expr::Input(name, steps[1..].to_vec()))
        }
        "outputs" => {
            let name = take_name(&mut steps, "task")?;
            Ok(Expr::Output(name, steps[1..].to_vec()))
        }
        "trigger" => Ok(Expr::Trigger(steps)),
        "error" => Ok(Expr::Error(steps)),
        "item" => Ok(Expr::Item(steps)),
        "execution" if steps == [Step::Field("id".into())] => Ok(Expr::ExecutionId),
        "flow" if steps == [Step::Field("id".into())] => Ok(Expr::FlowId),
        "flow" if steps == [Step::Field("namespace".into())] => Ok(Expr::FlowNamespace),
        "secret" | "secrets" => Err(format!("`{{{{ {s} }}}}` is not supported: {SECRET_HINT}")),
        _ => Err(format!(
            "unknown expression `{s}`: use inputs.X, outputs.TASK.FIELD, trigger.body, error.task, item, execution.id, flow.id or flow.namespace"
        )),
    }
}

/// Splits a string into literal text and expressions.
fn pieces(s: &str) -> Result<Vec<Result<&str, &str>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            out.push(Ok(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| format!("unclosed `{{{{` in {s:?}"))?;
        out.push(Err(&after[..end]));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Ok(rest));
    }
    Ok(out)
}

/// What a task's expressions may name.
#[derive(Clone, Copy)]
pub(super) struct Context<'a> {
    pub(super) inputs: &'a HashSet<String>,
    pub(super) triggers: bool,
    /// `{{ error }}` (an `errors:` or `finally:` task).
    pub(super) error: bool,
    /// `{{ item }}` (a task with `for_each`).
    pub(super) item: bool,
}

pub(super) fn check_expressions(
    c: &mut Checker<'_>,
    task: &str,
    at: &str,
    v: &Value,
    ctx: &Context<'_>,
    before: &[String],
) {
    match v {
        Value::String(s) => match pieces(s) {
            Err(e) => c.error(format!("{task}: {at}"), e),
            Ok(ps) => {
                for p in ps.into_iter().filter_map(Result::err) {
                    match parse_expr(p) {
                        Err(e) => c.error(format!("{task}: {at}"), e),
                        Ok(Expr::Input(name, _)) if !ctx.inputs.contains(&name) => {
                            c.error(format!("{task}: {at}"), format!("`inputs.{name}` is not a declared input"))
                        }
                        Ok(Expr::Trigger(_)) if !ctx.triggers => c.error(
                            format!("{task}: {at}"),
                            "`trigger` is what started the flow, and this flow declares no `triggers:`",
                        ),
                        Ok(Expr::Item(_)) if !ctx.item => c.error(
                            format!("{task}: {at}"),
                            "`item` is the value of a `for_each` iteration; this task has no `for_each`",
                        ),
                        Ok(Expr::Error(_)) if !ctx.error => c.error(
                            format!("{task}: {at}"),
                            "`error` is the failure an `errors:` or `finally:` task handles; `tasks:` have none",
                        ),
                        Ok(Expr::Output(name, _)) if !before.contains(&name) => c.error(
                            format!("{task}: {at}"),
                            format!(
                                "`outputs.{name}` refers to a task that does not run before this one (name it in \
                                 `depends_on`, directly or through another task)"
                            ),
                        ),
                        Ok(_) => {}
                    }
                }
            }
        },
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_expressions(c, task, &format!("{at}[{i}]"), item, ctx, before);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                check_expressions(c, task, &format!("{at}.{k}"), item, ctx, before);
            }
        }
        _ => {}
    }
}

/// What expressions can see while a flow runs.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Input values.
    pub inputs: Map<String, Value>,
    /// Outputs of the tasks that ran (already masked).
    pub outputs: Map<String, Value>,
    /// Execution id.
    pub execution_id: String,
    /// Flow id.
    pub flow_id: String,
    /// Flow namespace.
    pub namespace: String,
    /// What started the execution: `{"type": "webhook", "id": ..., "body": ..., "headers": {...}}`,
    /// `{"type": "schedule", "id": ..., "date": ...}`, `{"type": "api"}`, `{"type": "cli"}`.
    pub trigger: Value,
    /// The failure `errors:` and `finally:` tasks handle: `{"task": ID, "message": MASKED}`, or null.
    pub error: Value,
    /// The value of the current `for_each` iteration, or null.
    pub item: Value,
}

fn walk<'v>(mut v: &'v Value, steps: &[Step], what: &str) -> Result<&'v Value, String> {
    for s in steps {
        v = match s {
            Step::Field(f) => v.get(f).ok_or_else(|| format!("{what} has no field `{f}`"))?,
            Step::Index(i) => v.get(i).ok_or_else(|| format!("{what} has no element [{i}]"))?,
        };
    }
    Ok(v)
}

fn resolve(src: &str, scope: &Scope) -> Result<Value, String> {
    Ok(match parse_expr(src)? {
        Expr::Input(name, steps) => {
            let v = scope.inputs.get(&name).ok_or_else(|| format!("input `{name}` was not given"))?;
            walk(v, &steps, &format!("`inputs.{}`", src.trim()["inputs.".len()..].trim()))?.clone()
        }
        Expr::Output(task, steps) => {
            let v = scope.outputs.get(&task).ok_or_else(|| format!("task `{task}` has no output"))?;
            walk(v, &steps, &format!("the output of task `{task}`"))?.clone()
        }
        Expr::Trigger(steps) => walk(&scope.trigger, &steps, "the trigger")?.clone(),
        Expr::Error(steps) => walk(&scope.error, &steps, "the error")?.clone(),
        Expr::Item(steps) => walk(&scope.item, &steps, "the item")?.clone(),
        Expr::ExecutionId => Value::String(scope.execution_id.clone()),
        Expr::FlowId => Value::String(scope.flow_id.clone()),
        Expr::FlowNamespace => Value::String(scope.namespace.clone()),
    })
}

/// Renders a task's input template. A string that is exactly one
/// expression takes the referenced value with its JSON type; expressions
/// inside longer text are interpolated (non-strings as compact JSON).
pub fn render(template: &Value, scope: &Scope) -> Result<Value, String> {
    Ok(match template {
        Value::String(s) => {
            let ps = pieces(s)?;
            if let [Err(only)] = ps.as_slice() {
                return resolve(only, scope);
            }
            let mut out = String::new();
            for p in ps {
                match p {
                    Ok(text) => out.push_str(text),
                    Err(e) => match resolve(e, scope)? {
                        Value::String(v) => out.push_str(&v),
                        other => out.push_str(&other.to_string()),
                    },
                }
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| render(i, scope)).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), render(v, scope)?))).collect::<Result<_, String>>()?)
        }
        other => other.clone(),
    })
}

/// Whether a rendered `if:` value counts as true: `true`, a non-zero
/// number, a non-empty array or object, or text other than empty,
/// `false`, `0`, `no` and `null`.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !matches!(s.trim().to_ascii_lowercase().as_str(), "" | "false" | "0" | "no" | "null"),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}
