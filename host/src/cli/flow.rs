//! `host run`, `host validate`, `host flow schema` and `host executions`.

use super::exec::{failure_exit, log_import_notes, print_warnings, session};
use super::table::{Align::Left, Table};
use super::*;
use keyhole::executions::{ExecutionRecord, Executions};
use keyhole::flow::{self, Diagnostic, Diagnostics, Severity};
use keyhole::names::ExecutionId;
use keyhole::run::{prepare, run_flow};
use keyhole::runtime::{Compiler, POOLING_MAX_MEMORY, Runtime, RuntimeOptions};
use serde_json::{Map, Value};

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// The flow file (YAML or JSON).
    flow: PathBuf,
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
}

pub(crate) fn parse_input_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{s:?} is not ID=VALUE"))
}

/// `host run`: a flow file.
pub(crate) fn run_flow_cmd(dir: &DataDir, args: RunArgs, masks: Arc<MaskSet>, compiler: Compiler) -> Result<(), Exit> {
    let (flow, warnings) = flow::load(&args.flow).map_err(|d| fail(USAGE, d))?;
    print_warnings(&warnings);
    let inputs = flow::bind_inputs(&flow, &args.inputs).map_err(|e| fail(USAGE, anyhow::anyhow!(e)))?;
    // Several instances in one process: pool them, unless a task may need
    // more memory than a pooled instance can have.
    let pooling = flow.tasks.len() > 1 && flow.tasks.iter().all(|t| t.limits.memory <= POOLING_MAX_MEMORY);
    let s = session(dir, masks, pooling, compiler)?;
    let (plugins, notes) = prepare(&s.host.runtime, &flow).map_err(|d| fail(USAGE, d))?;
    log_import_notes(&notes);
    let execution = ExecutionId::generate();
    eprintln!("[{}] execution {execution} started", flow.id);
    let report =
        s.rt.block_on(run_flow(&s.host.runtime, &s.host.env, &flow, &plugins, inputs, execution, &s.host.records));
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
    let ns = if r.namespace.is_empty() { "(root)" } else { &r.namespace };
    writeln!(out, "execution {}  flow {}  namespace {ns}  {}", r.id, r.flow, r.status)?;
    writeln!(out, "started {}  ended {}", r.started, r.ended.as_deref().unwrap_or("-"))?;
    let id_width = r.tasks.iter().map(|t| t.id.chars().count()).max().unwrap_or(0);
    for t in &r.tasks {
        let status =
            serde_json::to_value(t.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        // The error is plugin text (masked when stored): shown on its line only.
        let error = keyhole::output::one_line(t.error.as_deref().unwrap_or(""));
        let line = format!("  {:<10} {:<id_width$} {:>7} ms  {error}", status, t.id, t.duration_ms);
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
    if !dir.store_path().exists() {
        return Err(fail(USAGE, anyhow::anyhow!("no executions yet: {} does not exist", dir.store_path().display())));
    }
    let records = Executions::open(&dir.store_path())?;
    let mut out = std::io::stdout().lock();
    match cmd {
        ExecutionsCommand::List { flow, limit, json } => {
            let list = records.list(flow.as_deref(), limit)?;
            if json {
                print_json(&mut out, &list)?;
            } else {
                let mut table = Table::new(&[
                    ("EXECUTION", Left),
                    ("FLOW", Left),
                    ("STATUS", Left),
                    ("STARTED", Left),
                    ("TASKS", Left),
                ]);
                for r in list {
                    let tasks: Vec<String> = r
                        .tasks
                        .iter()
                        .map(|t| {
                            format!(
                                "{}:{}",
                                t.id,
                                serde_json::to_value(t.status)
                                    .ok()
                                    .and_then(|v| v.as_str().map(str::to_owned))
                                    .unwrap_or_default()
                            )
                        })
                        .collect();
                    table.row([r.id.to_string(), r.flow, r.status.to_string(), r.started, tasks.join(" ")]);
                }
                table.write(&mut out).map_err(stdout_err)?;
            }
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
    }
    Ok(())
}
