//! `host run`, `host validate`, `host flow schema` and `host executions`.

use super::exec::{failure_exit, log_import_notes, print_warnings, session};
use super::table::{Align::Left, Table};
use super::*;
use keyhole::executions::{Admission, ExecutionRecord, Executions, TaskStatus};
use keyhole::flow::{self, Diagnostic, Diagnostics, Severity};
use keyhole::names::ExecutionId;
use keyhole::run::{Start, prepare, run_flow};
use keyhole::runtime::{Compiler, POOLING_MAX_MEMORY, Runtime, RuntimeOptions};
use keyhole::service::bodies;
use serde_json::{Map, Value};

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// The flow file (YAML or JSON); with $KEYHOLE_ADDR set, the id of a
    /// deployed flow, run on the server.
    flow: PathBuf,
    /// The deployed flow's namespace (with $KEYHOLE_ADDR).
    #[arg(long, short, default_value = "")]
    namespace: Namespace,
    /// A flow input, as ID=VALUE (repeat for more).
    #[arg(long = "input", short, value_parser = parse_input_pair, value_name = "ID=VALUE")]
    inputs: Vec<(String, String)>,
    /// Print the execution record as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ValidateArgs {
    /// The flow file (YAML or JSON).
    flow: PathBuf,
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum FlowCommand {
    /// Print the JSON Schema of the flow format (for editor validation and completion).
    Schema,
    /// Store a flow in the server, revisioned, with its plugins by SHA-256
    /// (to $KEYHOLE_ADDR when set, else into the local data directory).
    Deploy {
        /// The flow file (YAML or JSON); its plugins are read from disk now.
        flow: PathBuf,
        /// Print the deployed revision as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deployed flows (the current revision of each).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A deployed flow's current revision, with its text.
    Show {
        /// Flow id.
        id: String,
        /// Its namespace (default: the root).
        #[arg(long, short, default_value = "")]
        namespace: Namespace,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every revision of a deployed flow.
    Revisions {
        /// Flow id.
        id: String,
        /// Its namespace (default: the root).
        #[arg(long, short, default_value = "")]
        namespace: Namespace,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a deployed flow (a tombstone revision; its executions stay).
    Rm {
        /// Flow id.
        id: String,
        /// Its namespace (default: the root).
        #[arg(long, short, default_value = "")]
        namespace: Namespace,
    },
    /// Approve a revision pending review (it touches a protected secret):
    /// it runs from then on. Also vouches for an `unchecked` revision.
    Approve(ReviewArgs),
    /// Reject a revision pending review: it never runs; the revision
    /// before it keeps serving.
    Reject(ReviewArgs),
}

/// Which revision, and why.
#[derive(clap::Args, Debug)]
pub(crate) struct ReviewArgs {
    /// Flow id.
    id: String,
    /// Its namespace (default: the root).
    #[arg(long, short, default_value = "")]
    namespace: Namespace,
    /// The revision (`host flow list` shows those pending review).
    #[arg(long)]
    revision: u64,
    /// Why: kept in the audit record and with the revision.
    #[arg(long)]
    comment: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ExecutionsCommand {
    /// The newest executions first.
    List {
        /// Only this flow.
        #[arg(long)]
        flow: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One execution: per-task status, duration, masked output or error.
    Show {
        /// Execution id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow an execution to its end: its log (masked) on stderr as it is
    /// written, then the outcome as `show` prints it; the exit code is the
    /// one `run` would give.
    Follow {
        /// Execution id.
        id: String,
        /// Print the final record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel an execution on the server ($KEYHOLE_ADDR): a queued one never
    /// runs, a running one is interrupted.
    Cancel {
        /// Execution id.
        id: String,
    },
    /// Approve a task waiting at its approval gate: it runs.
    Approve(Decide),
    /// Reject a task waiting at its approval gate: it does not run; `finally:` does.
    Reject(Decide),
}

/// Which gate, and why.
#[derive(clap::Args, Debug)]
pub(crate) struct Decide {
    /// Execution id (`host executions list` shows `paused` ones).
    id: String,
    /// The waiting task.
    #[arg(long)]
    task: String,
    /// Why: kept in the audit record and the execution record.
    #[arg(long)]
    comment: Option<String>,
}

pub(crate) fn parse_input_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{s:?} is not ID=VALUE"))
}

/// `host run`: a flow file.
pub(crate) fn run_flow_cmd(dir: &DataDir, args: RunArgs, masks: Arc<MaskSet>, compiler: Compiler) -> Result<(), Exit> {
    if let Some(r) = super::remote::Remote::from_env()? {
        return remote_run(&r, args);
    }
    let (flow, warnings) = flow::load(&args.flow).map_err(|d| fail(USAGE, d))?;
    print_warnings(&warnings);
    let inputs = flow::bind_inputs(&flow, &args.inputs).map_err(|e| fail(USAGE, anyhow::anyhow!(e)))?;
    // Several instances in one process: pool them, unless a task may need
    // more memory than a pooled instance can have.
    let pooling = flow.tasks.len() > 1 && flow.tasks.iter().all(|t| t.limits.memory <= POOLING_MAX_MEMORY);
    let s = session(dir, masks, pooling, compiler)?;
    let (plugins, notes) = prepare(&s.host.runtime, &flow).map_err(|d| fail(USAGE, d))?;
    log_import_notes(&notes);
    let start = Start::cli(inputs);
    if let Some(c) = flow.concurrency {
        // The flow's limit holds across every process on this data directory.
        let rec = keyhole::run::new_record(&flow, &start.execution);
        let mut said = false;
        let waiting = |busy: i64| {
            if !std::mem::replace(&mut said, true) {
                eprintln!(
                    "[{}] waiting: {busy} execution(s) of the flow hold all {} place(s) of its concurrency limit",
                    flow.id, c.limit
                );
            }
        };
        let me = keyhole::process::this_process();
        if let Admission::NotRun(rec) = s.host.records.admit(&rec, c, &me, keyhole::process::alive, waiting)? {
            return finish(&rec, args.json);
        }
    }
    eprintln!("[{}] execution {} started", flow.id, start.execution);
    let report = s.rt.block_on(run_flow(&s.host.runtime, &s.host.env, &flow, &plugins, start, &s.host.records));
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &report.record)?;
    } else {
        write_execution(&mut out, &report.record).map_err(stdout_err)?;
    }
    match report.failure {
        Some((task, failure)) => Err(failure_exit(format!("flow {} failed at task {task}", flow.id), failure)),
        None => Ok(()),
    }
}

pub(crate) fn write_execution(out: &mut impl Write, r: &ExecutionRecord) -> std::io::Result<()> {
    let ns = if r.namespace.is_root() { "(root)" } else { r.namespace.as_str() };
    writeln!(out, "execution {}  flow {}  namespace {ns}  {}", r.id, r.flow, r.status)?;
    writeln!(out, "started {}  ended {}", r.started, r.ended.as_deref().unwrap_or("-"))?;
    let id_width = r.tasks.iter().map(|t| t.id.chars().count()).max().unwrap_or(0);
    // A timeline: where each task ran within the execution, so tasks that
    // ran at once are seen side by side.
    let at = |t: &str| humantime::parse_rfc3339(t).ok();
    let zero = at(&r.started);
    let offset = |t: &keyhole::executions::TaskRecord| {
        let (Some(z), Some(s)) = (zero, t.started.as_deref().and_then(at)) else { return None };
        Some(s.duration_since(z).map_or(0, |d| d.as_millis() as u64))
    };
    let span = r.tasks.iter().filter_map(|t| offset(t).map(|o| o + t.duration_ms)).max().unwrap_or(0).max(1);
    const BAR: u64 = 24;
    for t in &r.tasks {
        let status = t.status.as_str();
        // The error is plugin text (masked when stored): shown on its line only.
        let error = keyhole::output::one_line(t.error.as_deref().or(t.skipped.as_deref()).unwrap_or(""));
        let (when, bar) = match offset(t) {
            Some(o) => {
                let from = (o * BAR / span).min(BAR - 1);
                let to = ((o + t.duration_ms) * BAR).div_ceil(span).max(from + 1).min(BAR);
                let bar: String = (0..BAR).map(|i| if i >= from && i < to { '#' } else { '.' }).collect();
                (format!("+{o} ms"), bar)
            }
            None => (String::new(), " ".repeat(BAR as usize)),
        };
        let tries = match t.attempts.len() {
            0 | 1 => String::new(),
            n => format!(" ({n} attempts)"),
        };
        let line =
            format!("  {:<10} {:<id_width$} {:>7} ms {when:>10} {bar}{tries}  {error}", status, t.id, t.duration_ms);
        writeln!(out, "{}", line.trim_end())?;
    }
    let outputs: Map<String, Value> =
        r.tasks.iter().filter_map(|t| t.output.clone().map(|o| (t.id.clone(), o))).collect();
    writeln!(out, "outputs:")?;
    writeln!(out, "{}", serde_json::to_string_pretty(&outputs).expect("JSON encodes"))
}

/// `host validate`: everything `run` would check, without running.
pub(crate) fn validate_cmd(dir: &DataDir, args: ValidateArgs, compiler: Compiler) -> Result<(), Exit> {
    let mut found = Vec::new();
    let flow = match flow::load(&args.flow) {
        Ok((flow, warnings)) => {
            found.extend(warnings.0);
            Some(flow)
        }
        Err(d) => {
            found.extend(d.0);
            None
        }
    };
    if let Some(flow) = &flow {
        let runtime = Runtime::new(RuntimeOptions { cache_dir: Some(dir.cache_dir()), pooling: false, compiler })
            .map_err(|e| fail(HOST, anyhow::anyhow!("cannot start the WebAssembly engine: {e:#}")))?;
        match prepare(&runtime, flow) {
            Ok((_, w)) => found.extend(w.0),
            Err(d) => found.extend(d.0),
        }
        // A namespace served by Vault or AWS is not asked (that needs its
        // credentials and the network): a grant that may live there is not
        // warned about.
        let remote = keyhole::backend::config::Backends::remote_namespaces_unverified(
            &keyhole::backend::config::config_path(dir.root()),
        );
        let unchecked = flow.namespace.chain().iter().any(|ns| remote.iter().any(|r| r == ns.as_str()));
        for t in &flow.tasks {
            for g in t.grants.iter() {
                let exists = keyhole::store::exists_in_chain(&dir.store_path(), &flow.namespace, g)?;
                if !exists && !unchecked {
                    found.push(Diagnostic {
                        severity: Severity::Warning,
                        location: format!("{}: task {}", flow.source, t.id),
                        message: format!(
                            "secret {g} is granted but exists in no namespace of {}'s chain: `host secret set {g} --namespace {}`",
                            flow.namespace,
                            flow.namespace.as_str()
                        ),
                    });
                }
            }
        }
    }
    let diags = Diagnostics(found);
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &diags.0)?;
    } else {
        for d in &diags.0 {
            writeln!(out, "{d}").map_err(stdout_err)?;
        }
    }
    if diags.has_errors() {
        let n = diags.0.iter().filter(|d| d.severity == Severity::Error).count();
        return Err(fail(USAGE, anyhow::anyhow!("flow {} has {n} error(s)", args.flow.display())));
    }
    if !args.json {
        let warnings = diags.0.iter().filter(|d| d.severity == Severity::Warning).count();
        writeln!(out, "flow {} is valid ({warnings} warning(s))", args.flow.display()).map_err(stdout_err)?;
    }
    Ok(())
}

pub(crate) fn executions_cmd(dir: &DataDir, cmd: ExecutionsCommand) -> Result<(), Exit> {
    if let Some(r) = super::remote::Remote::from_env()? {
        return remote_executions(&r, cmd);
    }
    if let ExecutionsCommand::Cancel { .. } = cmd {
        return Err(fail(USAGE, anyhow::anyhow!("cancel asks a server: set KEYHOLE_ADDR and KEYHOLE_TOKEN")));
    }
    if !dir.store_path().exists() {
        return Err(fail(USAGE, anyhow::anyhow!("no executions yet: {} does not exist", dir.store_path().display())));
    }
    let records = Executions::open(&dir.store_path())?;
    let mut out = std::io::stdout().lock();
    let decide = |d: Decide, approved: bool| -> Result<(), Exit> {
        let id: ExecutionId = d.id.parse().map_err(|e| fail(USAGE, e))?;
        let actor = keyhole::audit::Actor::current_user();
        let may = |_: keyhole::authz::Permission, _: &keyhole::names::Namespace| true;
        let person = match &actor {
            keyhole::audit::Actor::Cli { user } => Some(format!("operator {user}")),
            _ => None,
        };
        let decider = keyhole::executions::Decider { actor: &actor, who: None, person, may: &may };
        let mut store = open_store(dir)?;
        let record = |rec: keyhole::audit::NewRecord| store.record(&rec).map(drop).map_err(|e| e.to_string());
        keyhole::executions::decide_gate(&records, &decider, id.as_str(), &d.task, approved, d.comment, record)
            .map_err(|e| match e {
                keyhole::executions::GateError::Denied(m) | keyhole::executions::GateError::NotWaiting(m) => {
                    fail(USAGE, anyhow::anyhow!(m))
                }
                e => fail(HOST, anyhow::Error::from(e)),
            })?;
        eprintln!("task {} of execution {id}: {}", d.task, if approved { "approved" } else { "rejected" });
        Ok(())
    };
    match cmd {
        ExecutionsCommand::Approve(d) => return decide(d, true),
        ExecutionsCommand::Reject(d) => return decide(d, false),
        ExecutionsCommand::List { flow, limit, json } => {
            print_execution_list(&mut out, &records.list(flow.as_deref(), limit)?, json)?;
        }
        ExecutionsCommand::Show { id, json } => {
            let id: ExecutionId = id.parse().map_err(|e| fail(USAGE, e))?;
            let r = records.get(id.as_str())?;
            if json {
                print_json(&mut out, &r)?;
            } else {
                write_execution(&mut out, &r).map_err(stdout_err)?;
            }
        }
        ExecutionsCommand::Follow { id, json } => {
            // A server on this data directory may be running it: wait for
            // the record to end, then print the stored log.
            let id: ExecutionId = id.parse().map_err(|e| fail(USAGE, e))?;
            let record = loop {
                let r = records.get(id.as_str())?;
                if r.status.ended() {
                    break r;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            drop(out);
            eprint!("{}", records.log(id.as_str())?);
            return finish(&record, json);
        }
        ExecutionsCommand::Cancel { .. } => unreachable!("refused above"),
    }
    Ok(())
}

/// `executions list`, local or remote: one table (or JSON).
fn print_execution_list(out: &mut impl Write, list: &[ExecutionRecord], json: bool) -> Result<(), Exit> {
    if json {
        return print_json(out, &list);
    }
    let mut table = Table::new(&[
        ("EXECUTION", Left),
        ("FLOW", Left),
        ("STATUS", Left),
        ("STARTED", Left),
        ("TRIGGER", Left),
        ("TASKS", Left),
    ]);
    for r in list {
        let tasks: Vec<String> = r.tasks.iter().map(|t| format!("{}:{}", t.id, t.status.as_str())).collect();
        let trigger = r.trigger.clone().unwrap_or_else(|| "-".into());
        table.row([
            r.id.to_string(),
            r.flow.to_string(),
            r.status.to_string(),
            r.started.clone(),
            trigger,
            tasks.join(" "),
        ]);
    }
    table.write(out).map_err(stdout_err)
}

/// `host run ID` against a server: queue, wait, print as the local run does.
fn remote_run(r: &super::remote::Remote, args: RunArgs) -> Result<(), Exit> {
    use super::remote::ns_path;
    let id = args.flow.to_string_lossy().into_owned();
    let base = format!("/api/v1/flows/{}/{id}", ns_path(&args.namespace));
    let deployed: keyhole::registry::Deployed = serde_json::from_value(r.get("find the flow", &base)?)
        .map_err(|e| fail(HOST, anyhow::anyhow!("the server's answer is not a flow: {e}")))?;
    // The flow's declarations type the --input values, as for a local run.
    let (flow, _) = flow::parse(&deployed.source, &deployed.file, Path::new("/")).map_err(|d| fail(HOST, d))?;
    let inputs = flow::bind_inputs(&flow, &args.inputs).map_err(|e| fail(USAGE, anyhow::anyhow!(e)))?;
    let path = format!("/api/v1/executions/{}/{id}", ns_path(&args.namespace));
    let queued = r.send(&format!("run flow {id}"), "POST", &path, &Value::Object(inputs), &[])?;
    let exec_id = super::remote::typed::<bodies::Queued>(queued, "a queued execution")?.id;
    eprintln!("[{id}] execution {exec_id} queued on the server");
    remote_follow(r, &exec_id, args.json)
}

/// Follows execution `id` on the server to its end: its log on stderr as it
/// is written, then [`finish`].
fn remote_follow(r: &super::remote::Remote, id: &str, json: bool) -> Result<(), Exit> {
    let mut end: Option<Value> = None;
    let mut closed: Option<String> = None;
    r.events("follow the execution", &format!("/api/v1/executions/{id}/follow"), |event, data| {
        match event {
            "log" => eprint!("{}", data.get("text").and_then(Value::as_str).unwrap_or_default()),
            "end" => end = Some(data),
            "closed" => closed = Some(data.get("error").and_then(Value::as_str).unwrap_or("closed").to_owned()),
            _ => return Ok(true),
        }
        Ok(end.is_none() && closed.is_none())
    })?;
    if let Some(why) = closed {
        return Err(fail(
            HOST,
            anyhow::anyhow!("stopped following execution {id}: {why} (`host executions follow {id}` goes on)"),
        ));
    }
    let record: ExecutionRecord = serde_json::from_value(end.unwrap_or_default())
        .map_err(|e| fail(HOST, anyhow::anyhow!("the server's answer is not an execution: {e}")))?;
    finish(&record, json)
}

/// Prints an ended execution as `show` does and turns its outcome into
/// `run`'s exit code.
fn finish(record: &ExecutionRecord, json: bool) -> Result<(), Exit> {
    let mut out = std::io::stdout().lock();
    if json {
        print_json(&mut out, record)?;
    } else {
        write_execution(&mut out, record).map_err(stdout_err)?;
    }
    let (id, flow) = (&record.id, &record.flow);
    use keyhole::executions::ExecutionStatus as S;
    match record.status {
        S::Succeeded | S::Warning => Ok(()),
        S::Failed if !record.tasks.iter().any(|t| t.error.is_some()) => {
            // Failed before any task ran (its concurrency limit): say why.
            let why = record.tasks.iter().find_map(|t| t.skipped.as_deref()).unwrap_or("no task ran");
            Err(fail(TASK_ERROR, anyhow::anyhow!("flow {flow} failed: {why}")))
        }
        S::Cancelled if !record.tasks.iter().any(|t| t.status != TaskStatus::Skipped) => {
            let why = record.tasks.iter().find_map(|t| t.skipped.as_deref()).unwrap_or("no task ran");
            Err(fail(HOST, anyhow::anyhow!("execution {id} of flow {flow} was cancelled: {why}")))
        }
        S::Failed => {
            let failed = record.tasks.iter().find(|t| t.error.is_some());
            let task = failed.map_or("-", |t| t.id.as_str());
            // A record from before keyhole kept the kind: the plugin's failure.
            let kind = failed.and_then(|t| t.failure).unwrap_or(keyhole::executions::FailureKind::Plugin);
            Err(fail(failure_code(kind), anyhow::anyhow!("flow {flow} failed at task {task}")))
        }
        other => Err(fail(HOST, anyhow::anyhow!("execution {id} of flow {flow} ended {other}"))),
    }
}

fn remote_executions(r: &super::remote::Remote, cmd: ExecutionsCommand) -> Result<(), Exit> {
    let mut out = std::io::stdout().lock();
    let decode = |v: Value| -> Result<ExecutionRecord, Exit> {
        serde_json::from_value(v)
            .map_err(|e| fail(HOST, anyhow::anyhow!("the server's answer is not an execution: {e}")))
    };
    match cmd {
        ExecutionsCommand::List { flow, limit, json } => {
            let mut path = format!("/api/v1/executions?limit={limit}");
            if let Some(f) = &flow {
                path.push_str(&format!(
                    "&flow={}",
                    percent_encoding::utf8_percent_encode(f, percent_encoding::NON_ALPHANUMERIC)
                ));
            }
            let list: Vec<ExecutionRecord> =
                super::remote::typed(r.get("list executions", &path)?, "an execution list")?;
            print_execution_list(&mut out, &list, json)
        }
        ExecutionsCommand::Show { id, json } => {
            let id: ExecutionId = id.parse().map_err(|e| fail(USAGE, e))?;
            let rec = decode(r.get("show the execution", &format!("/api/v1/executions/{id}"))?)?;
            if json { print_json(&mut out, &rec) } else { write_execution(&mut out, &rec).map_err(stdout_err) }
        }
        ExecutionsCommand::Follow { id, json } => {
            let id: ExecutionId = id.parse().map_err(|e| fail(USAGE, e))?;
            remote_follow(r, id.as_str(), json)
        }
        cmd @ (ExecutionsCommand::Approve(_) | ExecutionsCommand::Reject(_)) => {
            let (d, verb) = match cmd {
                ExecutionsCommand::Approve(d) => (d, "approve"),
                ExecutionsCommand::Reject(d) => (d, "reject"),
                _ => unreachable!("matched above"),
            };
            let id: ExecutionId = d.id.parse().map_err(|e| fail(USAGE, e))?;
            let body = remote::body(&bodies::Decide { task: d.task.clone(), comment: d.comment.clone() });
            r.send(&format!("{verb} task {}", d.task), "POST", &format!("/api/v1/executions/{id}/{verb}"), &body, &[])?;
            eprintln!("task {} of execution {id}: {verb}d", d.task);
            Ok(())
        }
        ExecutionsCommand::Cancel { id } => {
            let id: ExecutionId = id.parse().map_err(|e| fail(USAGE, e))?;
            let v = r.send(
                "cancel the execution",
                "POST",
                &format!("/api/v1/executions/{id}/cancel"),
                &serde_json::json!({}),
                &[],
            )?;
            eprintln!("execution {id}: {}", v.get("status").and_then(Value::as_str).unwrap_or("?"));
            Ok(())
        }
    }
}

/// `host flow deploy|list|show|revisions|rm|approve|reject`: through the
/// service layer, as the root operator on the data directory, or through
/// the API with $KEYHOLE_ADDR.
pub(crate) fn flow_cmd(dir: &DataDir, cmd: FlowCommand) -> Result<(), Exit> {
    use super::remote::{Remote, ns_path};
    use keyhole::registry::{Decision, Deployed};
    use keyhole::service::flows as service;
    use keyhole::vouch::Voucher;
    let remote = Remote::from_env()?;
    let mut out = std::io::stdout().lock();
    let parse = |v: Value| -> Result<Vec<Deployed>, Exit> {
        let list = if v.is_array() { v } else { Value::Array(vec![v]) };
        serde_json::from_value(list)
            .map_err(|e| fail(HOST, anyhow::anyhow!("the server's answer is not a flow list: {e}")))
    };
    let (list, json) = match cmd {
        FlowCommand::Schema => unreachable!("handled by the caller"),
        FlowCommand::Deploy { flow: path, json } => {
            let (flow, warnings) = flow::load(&path).map_err(|d| fail(USAGE, d))?;
            print_warnings(&warnings);
            let source = String::from_utf8(
                keyhole::data_dir::read_bounded(&path, flow::MAX_FLOW_BYTES)
                    .map_err(|e| fail(USAGE, anyhow::anyhow!("cannot read {}: {e}", path.display())))?,
            )
            .map_err(|e| fail(USAGE, anyhow::anyhow!("{} is not UTF-8: {e}", path.display())))?;
            let file =
                path.file_name().map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into_owned());
            let plugins = keyhole::registry::read_plugins(&flow).map_err(registry_exit)?;
            let deployed = match &remote {
                Some(r) => {
                    let mut digests = std::collections::BTreeMap::new();
                    for (task, bytes) in &plugins {
                        let sha = hex::encode(keyhole::crypto::sha256(bytes));
                        r.put_bytes(
                            &format!("upload the plugin of task {task}"),
                            &format!("/api/v1/plugins/{sha}?namespace={}", ns_path(&flow.namespace)),
                            "application/wasm",
                            bytes,
                        )?;
                        digests.insert(task.to_string(), sha);
                    }
                    let deploy =
                        bodies::Deploy { file: file.to_string(), source: source.to_string(), plugins: digests };
                    let body = remote::body(&deploy);
                    parse(r.send(&format!("deploy {}", path.display()), "POST", "/api/v1/flows", &body, &[])?)?
                }
                None => {
                    let state = open_state(dir)?;
                    let mut digests = std::collections::BTreeMap::new();
                    for (task, bytes) in &plugins {
                        let stored =
                            state.registry().put_plugin(bytes, &flow.namespace, None).map_err(registry_exit)?;
                        digests.insert(task.to_string(), stored.sha256);
                    }
                    let req = service::DeployRequest { file: &file, source: &source, plugins: &digests };
                    vec![service::deploy(&state, &Voucher::root(), req)?]
                }
            };
            if let Some(d) = deployed.first() {
                eprintln!("deployed flow {} revision {} in namespace {}", d.id, d.revision, d.namespace);
                if d.state == keyhole::registry::RevisionState::Pending {
                    let touched =
                        d.vouches.as_ref().map(|v| v.review.iter().map(|n| n.to_string()).collect::<Vec<_>>());
                    eprintln!(
                        "revision {} is pending review: it touches protected {}; it runs once a second person holding \
                         secret:use there approves it (`host flow approve {} -n {} --revision {}`)",
                        d.revision,
                        touched.unwrap_or_default().join(", "),
                        d.id,
                        d.namespace.as_str(),
                        d.revision
                    );
                }
            }
            (deployed, json)
        }
        FlowCommand::List { json } => {
            let list = match &remote {
                Some(r) => parse(r.get("list flows", "/api/v1/flows")?)?,
                None => open_state(dir)?.registry().list().map_err(registry_exit)?,
            };
            (list, json)
        }
        FlowCommand::Show { id, namespace, json } => {
            let (d, pending) = match &remote {
                Some(r) => {
                    let v = r.get("show the flow", &format!("/api/v1/flows/{}/{id}", ns_path(&namespace)))?;
                    let shown = super::remote::typed::<bodies::FlowShown>(v, "a flow")?;
                    (shown.deployed, shown.pending)
                }
                None => {
                    let (d, _, pending) = open_state(dir)?.registry().shown(&namespace, &id).map_err(registry_exit)?;
                    (d, pending)
                }
            };
            if json {
                return print_json(&mut out, &d);
            }
            write_flow(&mut out, &d, &pending).map_err(stdout_err)?;
            return Ok(());
        }
        FlowCommand::Revisions { id, namespace, json } => {
            let list = match &remote {
                Some(r) => {
                    parse(r.get("list revisions", &format!("/api/v1/flows/{}/{id}/revisions", ns_path(&namespace)))?)?
                }
                None => open_state(dir)?.registry().revisions(&namespace, &id).map_err(registry_exit)?,
            };
            (list, json)
        }
        FlowCommand::Rm { id, namespace } => {
            match &remote {
                Some(r) => {
                    r.delete("remove the flow", &format!("/api/v1/flows/{}/{id}", ns_path(&namespace)))?;
                }
                None => {
                    service::remove(&open_state(dir)?, &Voucher::root(), &namespace, &id)?;
                }
            }
            eprintln!("removed flow {id} from namespace {namespace}");
            return Ok(());
        }
        cmd @ (FlowCommand::Approve(_) | FlowCommand::Reject(_)) => {
            let (a, decision) = match cmd {
                FlowCommand::Approve(a) => (a, Decision::Approved),
                FlowCommand::Reject(a) => (a, Decision::Rejected),
                _ => unreachable!("matched above"),
            };
            let verb = if decision == Decision::Approved { "approve" } else { "reject" };
            let d = match &remote {
                Some(r) => {
                    let path =
                        format!("/api/v1/flows/{}/{}/revisions/{}/{verb}", ns_path(&a.namespace), a.id, a.revision);
                    let body = remote::body(&bodies::Review { comment: a.comment.clone() });
                    parse(r.send(
                        &format!("{verb} revision {} of flow {}", a.revision, a.id),
                        "POST",
                        &path,
                        &body,
                        &[],
                    )?)?
                    .remove(0)
                }
                None => {
                    let req = service::ReviewRequest {
                        namespace: &a.namespace,
                        flow: &a.id,
                        revision: a.revision,
                        decision,
                        comment: a.comment,
                    };
                    service::review(&open_state(dir)?, &Voucher::root(), req)?
                }
            };
            eprintln!("flow {} revision {} in namespace {}: {}d ({})", d.id, d.revision, d.namespace, verb, d.state);
            return Ok(());
        }
    };
    if json {
        return print_json(&mut out, &list);
    }
    let mut table = Table::new(&[
        ("NAMESPACE", Left),
        ("FLOW", Left),
        ("REVISION", Left),
        ("STATE", Left),
        ("DEPLOYED", Left),
        ("BY", Left),
    ]);
    for d in list {
        let rev = if d.removed { format!("{} (removed)", d.revision) } else { d.revision.to_string() };
        table.row([d.namespace.to_string(), d.id, rev, d.state.to_string(), d.deployed_at, d.deployed_by]);
    }
    table.write(&mut out).map_err(stdout_err)
}

/// `host flow show`: the revision, who deployed it, each task's plugin, and
/// for each secret it names where it resolved and who vouched for it.
fn write_flow(out: &mut impl Write, d: &keyhole::registry::Deployed, pending: &[u64]) -> std::io::Result<()> {
    writeln!(out, "flow {}  namespace {}  revision {}  {}", d.id, d.namespace, d.revision, d.state)?;
    writeln!(out, "deployed {} by {} from {}", d.deployed_at, d.deployed_by, d.file)?;
    if let Some(r) = &d.review {
        let verb =
            serde_json::to_value(r.decision).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let comment = r.comment.as_deref().map(|c| format!(": {}", keyhole::output::one_line(c))).unwrap_or_default();
        writeln!(out, "{verb} {} by {}{comment}", r.at, r.by)?;
    }
    for (task, sha) in &d.plugins {
        writeln!(out, "  task {task}: plugin sha256 {sha}")?;
    }
    match d.vouched() {
        None if d.vouches.is_none() && !d.removed => writeln!(
            out,
            "  secrets: unchecked (deployed before keyhole checked secret:use; deploy it again, or `host flow approve {} -n {} --revision {}`)",
            d.id,
            d.namespace.as_str(),
            d.revision
        )?,
        None => {}
        Some(v) => {
            let reviewer = d.review.as_ref().filter(|r| r.decision == keyhole::registry::Decision::Approved);
            for s in &v.secrets {
                let at = match &s.resolved_in {
                    Some(ns) => format!("resolved in {ns}"),
                    None => format!("resolves nowhere yet (checked in {})", s.checked_in),
                };
                let protected = if s.protected { ", protected" } else { "" };
                let reviewed = match reviewer {
                    Some(r) if v.review.contains(&s.secret) || d.vouches.is_none() => format!(", approved by {}", r.by),
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "  secret {}: {at}{protected}; vouched for by {}{reviewed} ({})",
                    s.secret,
                    v.by,
                    s.uses.join(", ")
                )?;
            }
        }
    }
    for r in pending {
        let (id, ns) = (&d.id, d.namespace.as_str());
        writeln!(out, "revision {r} is pending review: `host flow approve {id} -n {ns} --revision {r}` (or reject)")?;
    }
    writeln!(out, "---\n{}", d.source.trim_end())
}

pub(crate) fn registry_exit(e: keyhole::registry::RegistryError) -> Exit {
    use keyhole::registry::RegistryError as R;
    match e {
        R::Invalid(d) => fail(USAGE, d),
        e @ (R::Plugin(_) | R::NotFound { .. } | R::Pending { .. } | R::Conflict(_) | R::Quota(_)) => fail(USAGE, e),
        e @ (R::Tampered { .. } | R::ProtectionTampered { .. }) => fail(TAMPERED, e),
        R::Db(e) => Exit::from(StoreError::Db(e)),
        e @ R::Io { .. } => fail(HOST, e),
    }
}
