//! `host exec`: one plugin as a one-task flow, and the session (store,
//! engine, audit log, execution records) that `exec` and `run` share.

use super::*;
use keyhole::exec::{Limits, TaskFailure};
use keyhole::flow::{Diagnostics, Flow, FlowTask};
use keyhole::names::TaskId;
use keyhole::network::{AllowEntry, NetLimitsDoc, NetworkDoc, NetworkPolicy};
use keyhole::output::stderr_sink;
use keyhole::policy::Grants;
use keyhole::run::{Start, prepare, run_flow};
use keyhole::runtime::Compiler;
use serde_json::{Map, Value};

#[derive(Args, Debug)]
pub(crate) struct ExecArgs {
    /// The plugin: a wasm32-wasip2 component or a wasm32-wasip1 module.
    plugin: PathBuf,
    /// Namespace the task's secrets are looked up in (then its parents).
    #[arg(long, short, default_value = "", value_name = "NS")]
    namespace: Namespace,
    /// Grant the task this secret (repeat for more). Nothing is granted by default.
    #[arg(long = "grant", short, value_name = "NAME")]
    grants: Vec<SecretName>,
    /// Let the task rotate this secret through `keyhole:task/rotation` (repeat for more).
    #[arg(long = "rotate", value_name = "NAME")]
    rotate: Vec<SecretName>,
    /// Input JSON document.
    #[arg(long, conflicts_with = "input_file", value_name = "JSON")]
    input: Option<String>,
    /// Read the input JSON document from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    input_file: Option<PathBuf>,
    /// Memory limit of the task (all its linear memories and tables together), in MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    memory: u64,
    /// Time limit: seconds, or a duration like `500ms`, `2m`.
    #[arg(long, default_value = "30", value_parser = parse_duration, value_name = "SECS")]
    timeout: Duration,
    /// Most bytes of plugin stdout, stderr and log lines shown.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    max_output: usize,
    /// Let the task send HTTP requests to this destination, `scheme://host[:port]`
    /// (host may start with `*.`; repeat for more). Nothing is allowed by default.
    #[arg(long = "allow-outbound", value_name = "URL", help_heading = "Network")]
    allow_outbound: Vec<AllowEntry>,
    /// Also trust the CA certificates in this PEM file for outbound HTTPS.
    #[arg(long, value_name = "PEM", help_heading = "Network")]
    ca_file: Option<PathBuf>,
    /// Most outbound requests the task may make [default: 100].
    #[arg(long, value_name = "N", help_heading = "Network")]
    max_requests: Option<u32>,
    /// Most outbound requests in flight at once [default: 4].
    #[arg(long, value_name = "N", help_heading = "Network")]
    max_concurrent_requests: Option<u32>,
    /// Largest request body, e.g. `1MiB` [default: 10MiB].
    #[arg(long, value_name = "SIZE", help_heading = "Network")]
    max_request_body: Option<String>,
    /// Largest response body, e.g. `5MiB` [default: 10MiB].
    #[arg(long, value_name = "SIZE", help_heading = "Network")]
    max_response_body: Option<String>,
    /// Time for one request, e.g. `10s` [default: 30s; never beyond --timeout].
    #[arg(long, value_name = "DURATION", help_heading = "Network")]
    request_timeout: Option<String>,
}

impl ExecArgs {
    /// The network policy the flags describe, checked as a flow's
    /// `network:` block is.
    fn network(&self) -> Result<NetworkPolicy> {
        let doc = NetworkDoc {
            allow: self.allow_outbound.clone(),
            ca_file: self.ca_file.as_ref().map(|p| p.display().to_string()),
            limits: NetLimitsDoc {
                requests: self.max_requests,
                concurrent: self.max_concurrent_requests,
                request_body: self.max_request_body.clone(),
                response_body: self.max_response_body.clone(),
                timeout: self.request_timeout.clone(),
            },
        };
        doc.policy(Path::new(".")).map_err(|e| anyhow::anyhow!("network: {e}"))
    }
}

/// Largest input document `host exec` reads.
const MAX_INPUT_BYTES: usize = 16 << 20;

pub(crate) fn read_input(args: &ExecArgs) -> Result<serde_json::Value> {
    let (bytes, origin) = match (&args.input, &args.input_file) {
        (Some(s), _) => (s.clone().into_bytes(), "--input".to_owned()),
        (None, Some(p)) if p == Path::new("-") => (
            keyhole::data_dir::read_limited(std::io::stdin().lock(), MAX_INPUT_BYTES, 0)
                .context("cannot read the input from stdin")?,
            "stdin".to_owned(),
        ),
        (None, Some(p)) => (
            keyhole::data_dir::read_bounded(p, MAX_INPUT_BYTES)
                .with_context(|| format!("cannot read input file {}", p.display()))?,
            p.display().to_string(),
        ),
        (None, None) => (b"{}".to_vec(), "the default input".to_owned()),
    };
    serde_json::from_slice(&bytes).with_context(|| format!("the input from {origin} is not a JSON document"))
}

/// An opened host and the async runtime that drives its tasks.
pub(crate) struct Session {
    pub(crate) host: keyhole::session::Session,
    pub(crate) rt: tokio::runtime::Runtime,
}

/// `pooling`: use the pooling instance allocator (for flows of several tasks).
pub(crate) fn session(dir: &DataDir, masks: Arc<MaskSet>, pooling: bool, compiler: Compiler) -> Result<Session, Exit> {
    let host = keyhole::session::Session::open(dir, stderr_sink(), masks, pooling, compiler)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .enable_io()
        .build()
        .map_err(|e| fail(HOST, anyhow::anyhow!("cannot start the async runtime: {e}")))?;
    Ok(Session { host, rt })
}

pub(crate) fn failure_exit(context: String, failure: TaskFailure) -> Exit {
    fail(failure_code(failure.kind()), anyhow::Error::from(failure).context(context))
}

pub(crate) fn print_warnings(d: &Diagnostics) {
    for w in &d.0 {
        eprintln!("{w}");
    }
}

/// What `prepare` found about a plugin's imports: said by `validate`, and
/// here only with `-v`, so that every run is not noisy about what it
/// refuses anyway.
pub(crate) fn log_import_notes(d: &Diagnostics) {
    for w in &d.0 {
        tracing::info!("{}: {}", w.location, w.message);
    }
}

/// `host exec`: a flow of one task whose grants come from `--grant`.
pub(crate) fn exec(dir: &DataDir, args: ExecArgs, masks: Arc<MaskSet>, compiler: Compiler) -> Result<(), Exit> {
    let input = read_input(&args).map_err(|e| fail(USAGE, e))?;
    let memory = usize::try_from(args.memory.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    if memory == 0 || memory > keyhole::limits::MAX_TASK_MEMORY {
        return Err(fail(USAGE, anyhow::anyhow!("--memory is 1 to 1024 (MiB): 1 GiB is the per-task ceiling")));
    }
    let network = args.network().map_err(|e| fail(USAGE, e))?;
    let s = session(dir, masks, false, compiler)?;
    let stem = args.plugin.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let task = TaskId::from_file_stem(&stem);
    let flow = Flow {
        id: task.clone(),
        namespace: args.namespace,
        inputs: Vec::new(),
        tasks: vec![FlowTask {
            id: task,
            plugin: args.plugin.clone(),
            sha256: None,
            grants: Grants::new(args.grants),
            rotate: Grants::new(args.rotate),
            phase: keyhole::flow::Phase::Main,
            retry: None,
            allow_failure: false,
            condition: None,
            for_each: None,
            approval: None,
            limits: Limits { memory, timeout: args.timeout, output: args.max_output },
            network,
            input,
            literal_input: true,
        }],
        plan: keyhole::plan::Plan::sequential(1),
        max_parallel: 1,
        timeout: None,
        concurrency: None,
        triggers: Vec::new(),
        on_interrupt: Default::default(),
        source: args.plugin.display().to_string(),
    };
    let (plugins, notes) = prepare(&s.host.runtime, &flow).map_err(|d| fail(USAGE, d))?;
    log_import_notes(&notes);
    let start = Start::cli(Map::new());
    tracing::info!("execution {} started", start.execution);
    let report = s.rt.block_on(run_flow(&s.host.runtime, &s.host.env, &flow, &plugins, start, &s.host.records));
    if let Some((_, failure)) = report.failure {
        return Err(failure_exit(format!("plugin {}", args.plugin.display()), failure));
    }
    let output = report.record.tasks[0].output.clone().unwrap_or(Value::Null);
    let text = serde_json::to_string_pretty(&output).expect("a JSON value always serialises");
    writeln!(std::io::stdout().lock(), "{text}").map_err(stdout_err)
}
