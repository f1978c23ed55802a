//! The `host` command line: run task plugins and manage secrets.
//!
//! Exit codes (also in `host --help`):
//! 0 success; 1 the task returned an error (or `audit verify` found the log
//! broken); 2 bad usage or input (arguments, input JSON, plugin file); 3 the
//! plugin trapped or hit a limit (time, memory); 4 the host failed (store,
//! master key, disk); 5 stored state failed its integrity check (tampering).

mod lifecycle;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use keyhole::audit::{self, Actor, AuditKey, AuditLog, Verdict};
use keyhole::data_dir::DataDir;
use keyhole::exec::{ExecutionEnv, Limits, TaskFailure};
use keyhole::executions::{ExecutionRecord, Executions};
use keyhole::flow::{self, Diagnostic, Diagnostics, Flow, FlowTask, Severity};
use keyhole::mask::MaskSet;
use keyhole::names::{ExecutionId, Namespace, SecretName, TaskId};
use keyhole::output::{MaskedStderr, stderr_sink};
use keyhole::policy::Grants;
use keyhole::run::{prepare, run_flow};
use keyhole::runtime::{POOLING_MAX_MEMORY, Runtime, RuntimeOptions};
use keyhole::secret::SecretValue;
use keyhole::store::{SecretStore, StoreError};
use keyhole::vault::{self, Backends};
use serde_json::{Map, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the task ran and returned an error
  2  bad usage or input (arguments, input JSON, plugin file, names)
  3  the plugin trapped or hit a limit (time, memory)
  4  the host failed (secret store, master key, disk)
  5  stored state failed its integrity check: the database or a config file was edited outside keyhole";

/// Keyhole: run WebAssembly task plugins that get secrets only through a
/// capability-checked import.
#[derive(Parser, Debug)]
#[command(name = "host", version, after_help = EXIT_CODES)]
struct Cli {
    /// Data directory (store, master key, compiled-plugin cache).
    /// Default: $KEYHOLE_HOME, else $XDG_DATA_HOME/keyhole, else ~/.local/share/keyhole.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// More host diagnostics on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one task plugin; its JSON output goes to stdout.
    #[command(after_help = EXIT_CODES)]
    Exec(ExecArgs),
    /// Manage secrets in the encrypted store.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Run a flow file: its tasks in order, each with its own grants and limits.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Check a flow file without running it.
    Validate(ValidateArgs),
    /// Flow format helpers.
    #[command(subcommand)]
    Flow(FlowCommand),
    /// Past executions of flows and `host exec`.
    #[command(subcommand)]
    Executions(ExecutionsCommand),
    /// Inspect, verify and export the audit trail (needs no master key).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Master-key management.
    #[command(subcommand)]
    Key(KeyCommand),
    /// External secret backends (HashiCorp Vault / OpenBao) per namespace.
    #[command(subcommand)]
    Backend(BackendCommand),
}

#[derive(Args, Debug)]
struct RunArgs {
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
struct ValidateArgs {
    /// The flow file (YAML or JSON).
    flow: PathBuf,
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum FlowCommand {
    /// Print the JSON Schema of the flow format (for editor validation and completion).
    Schema,
}

#[derive(Subcommand, Debug)]
enum ExecutionsCommand {
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

#[derive(Args, Debug, Default)]
struct AuditFilter {
    /// Only records about this secret name.
    #[arg(long)]
    secret: Option<String>,
    /// Only records in this namespace.
    #[arg(long, short)]
    namespace: Option<String>,
    /// Only records of this flow.
    #[arg(long)]
    flow: Option<String>,
    /// Only records of this execution id.
    #[arg(long)]
    execution: Option<String>,
    /// Only this outcome: granted, denied, not-found, revoked, expired, unavailable, ok.
    #[arg(long)]
    outcome: Option<String>,
    /// Only this action: secret.read, task.start, secret.set, secret.rm, audit.prune, ...
    #[arg(long)]
    action: Option<String>,
    /// Records at or after this time: RFC 3339, a date (2026-11-27) or an age (24h, 7d).
    #[arg(long, value_parser = parse_time)]
    since: Option<String>,
    /// Records before this time (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    until: Option<String>,
    /// At most this many records (the newest).
    #[arg(long)]
    limit: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// List audit records, oldest first.
    List {
        #[command(flatten)]
        filter: AuditFilter,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Export records as JSON lines, for a SIEM.
    Export {
        /// Output format (only jsonl).
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl"])]
        format: String,
        #[command(flatten)]
        filter: AuditFilter,
    },
    /// Verify the keyed hash chain (needs the master key); exits 1 and names the
    /// first bad record if it is broken.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also prove that the log still contains the head recorded in this
        /// signed checkpoint (from `host audit checkpoint`): catches a log cut
        /// short or rolled back.
        #[arg(long, value_name = "CHECKPOINT")]
        against: Option<PathBuf>,
    },
    /// Verify the log and write a signed checkpoint of its head (C2SP
    /// tlog-checkpoint note format) to keep outside the data directory.
    Checkpoint {
        /// Write it to this file (refusing to go back from a newer checkpoint
        /// there) instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Delete records older than a time, keeping the rest verifiable.
    Prune {
        /// RFC 3339 time, a date, or an age (90d).
        #[arg(long, value_parser = parse_time)]
        before: String,
    },
    /// Per secret and task: reads and last read; grants never used show 0 reads.
    Usage {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create the audit key so that each released value's HMAC fingerprint is recorded.
    EnableFingerprints,
    /// Fingerprint a value found in the wild (read from stdin) and list the reads that released it.
    HashValue,
}

#[derive(Args, Debug)]
struct ExecArgs {
    /// The plugin: a wasm32-wasip2 component or a wasm32-wasip1 module.
    plugin: PathBuf,
    /// Namespace the task's secrets are looked up in (then its parents).
    #[arg(long, short, default_value = "", value_name = "NS")]
    namespace: Namespace,
    /// Grant the task this secret (repeat for more). Nothing is granted by default.
    #[arg(long = "grant", short, value_name = "NAME")]
    grants: Vec<SecretName>,
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
}

#[derive(Subcommand, Debug)]
enum SecretCommand {
    /// Store a secret (a new version if it exists). The value is read from
    /// stdin, never from the command line; one trailing newline is dropped.
    Set {
        /// Secret name, e.g. WEBHOOK_SIGNING_KEY.
        name: SecretName,
        #[command(flatten)]
        at: At,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        #[command(flatten)]
        version: VersionOpts,
    },
    /// Make a new version of an existing secret, from stdin or generated.
    Rotate {
        /// Secret name.
        name: SecretName,
        #[command(flatten)]
        at: At,
        /// Generate the value: this many random characters (alnum, ascii) or bytes (hex, base64).
        #[arg(long, value_name = "N")]
        generate: Option<usize>,
        /// Character set of a generated value.
        #[arg(long, value_enum, default_value = "alnum", requires = "generate")]
        charset: Charset,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "FILE", conflicts_with = "generate")]
        from_file: Option<PathBuf>,
        #[command(flatten)]
        version: VersionOpts,
    },
    /// List secrets: names, namespaces, versions, times and state, never values.
    List {
        /// Only this namespace.
        #[arg(long, short, value_name = "NS")]
        namespace: Option<Namespace>,
        /// Only secrets whose current version expires within this time (e.g. 14d), expired ones included.
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        expiring: Option<Duration>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The stored versions of a secret (never values).
    Versions {
        /// Secret name.
        name: SecretName,
        #[command(flatten)]
        at: At,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Metadata of a secret: versions, created, rotated, expires, revoked, last read. Never the value.
    Describe {
        /// Secret name.
        name: SecretName,
        #[command(flatten)]
        at: At,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a secret at once, also for running executions; a new `set` or `rotate` lifts it.
    Revoke {
        /// Secret name.
        name: SecretName,
        #[command(flatten)]
        at: At,
    },
    /// Crypto-erase a secret: every version's ciphertext and data key; a tombstone stays.
    Destroy {
        /// Secret name.
        name: SecretName,
        #[command(flatten)]
        at: At,
    },
    /// Delete a secret and all its versions.
    Rm {
        /// Secret name.
        name: SecretName,
        #[command(flatten)]
        at: At,
    },
    /// Write an encrypted backup bundle of every version of every secret.
    Export {
        /// The bundle file to create (mode 0600).
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
        /// Only this namespace.
        #[arg(long, short, value_name = "NS")]
        namespace: Option<Namespace>,
        #[command(flatten)]
        key: BundleKeyArgs,
    },
    /// Restore secrets from a bundle, in one transaction; existing secrets are skipped unless --overwrite.
    Import {
        /// The bundle file.
        file: PathBuf,
        /// Replace secrets that exist (all their versions).
        #[arg(long)]
        overwrite: bool,
        #[command(flatten)]
        key: BundleKeyArgs,
    },
}

#[derive(Args, Debug)]
struct At {
    /// Namespace, e.g. finance.reporting (default: the root).
    #[arg(long, short, default_value = "", value_name = "NS")]
    namespace: Namespace,
}

#[derive(Args, Debug)]
struct VersionOpts {
    /// The new version expires after this long (e.g. 90d); reads then get `expired`.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    expires_in: Option<Duration>,
    /// Keep this many versions from now on (default 5).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    keep: Option<u32>,
}

#[derive(Args, Debug)]
struct BundleKeyArgs {
    /// Read the bundle passphrase from this file (else $KEYHOLE_EXPORT_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Protect the bundle with a key file instead: base64 of 32 random bytes.
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_file")]
    key_file: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum Charset {
    /// Letters and digits.
    Alnum,
    /// Lowercase hex of N random bytes.
    Hex,
    /// Base64 of N random bytes.
    Base64,
    /// Printable ASCII without space.
    Ascii,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Re-wrap every data key under a new master key, in one transaction.
    Rotate,
}

#[derive(Subcommand, Debug)]
enum BackendCommand {
    /// Serve a namespace from a HashiCorp Vault / OpenBao KV v2 server.
    AddVault {
        /// The keyhole namespace it serves.
        namespace: Namespace,
        /// Server address, e.g. https://vault.example.com:8200.
        #[arg(long)]
        address: String,
        /// KV v2 mount.
        #[arg(long, default_value = "secret")]
        mount: String,
        /// Path prefix under the mount, e.g. keyhole/finance/.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Token file; it wins over $VAULT_TOKEN and $BAO_TOKEN.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// PEM file of the CA certificates to trust (a private CA) instead of the public roots.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Allow plain http:// to a non-loopback address (the token crosses the network in clear).
        #[arg(long)]
        insecure_http: bool,
    },
    /// List configured backends.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve a namespace from the local store again.
    Rm {
        /// The namespace.
        namespace: Namespace,
    },
}

/// Parses `--since`-style times into the RFC 3339 form records use.
fn parse_time(s: &str) -> Result<String, String> {
    let t = if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        t
    } else if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s}T00:00:00")) {
        t
    } else if let Ok(age) = humantime::parse_duration(s) {
        std::time::SystemTime::now() - age
    } else {
        return Err(format!(
            "{s:?} is not a time: use RFC 3339 (2026-11-27T10:00:00Z), a date (2026-11-27) or an age (24h, 7d)"
        ));
    };
    Ok(humantime::format_rfc3339_millis(t).to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs > 0.0 && secs < 1e9 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("{s:?} is not a positive number of seconds"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30, 1.5, 500ms or 2m: {e}"))
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
struct Exit {
    code: u8,
    error: anyhow::Error,
}

fn fail(code: u8, error: impl Into<anyhow::Error>) -> Exit {
    Exit { code, error: error.into() }
}

const TASK_ERROR: u8 = 1;
const USAGE: u8 = 2;
const PLUGIN_FAILED: u8 = 3;
const HOST: u8 = 4;
const TAMPERED: u8 = 5;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every value this process reveals; host diagnostics and the final error
    // line are masked with it too.
    let masks = Arc::new(MaskSet::new());
    init_tracing(cli.verbose, &masks);
    match run(cli, &masks) {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            let line = masks.mask(&format!("error: {:#}", exit.error)).into_owned();
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(&keyhole::output::escape_controls(line.as_bytes()));
            let _ = err.write_all(b"\n");
            ExitCode::from(exit.code)
        }
    }
}

fn init_tracing(verbose: u8, masks: &Arc<MaskSet>) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYHOLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("keyhole={level},host={level}")));
    tracing_subscriber::fmt()
        .with_writer(MaskedStderr(masks.clone()))
        .with_env_filter(filter)
        .with_target(false)
        // Plain text: the masked writer escapes control characters.
        .with_ansi(false)
        .init();
}

fn run(cli: Cli, masks: &Arc<MaskSet>) -> Result<(), Exit> {
    let dir = DataDir::locate(cli.data_dir.as_deref()).map_err(|e| fail(USAGE, e))?;
    match cli.command {
        Command::Exec(args) => exec(&dir, args, masks.clone()),
        Command::Secret(cmd) => lifecycle::secret(&dir, cmd),
        Command::Audit(cmd) => audit_cmd(&dir, cmd),
        Command::Run(args) => run_flow_cmd(&dir, args, masks.clone()),
        Command::Validate(args) => validate_cmd(&dir, args),
        Command::Flow(FlowCommand::Schema) => {
            let schema = serde_json::to_string_pretty(&flow::schema()).expect("schemas encode");
            writeln!(std::io::stdout().lock(), "{schema}").map_err(stdout_err)
        }
        Command::Executions(cmd) => executions_cmd(&dir, cmd),
        Command::Key(KeyCommand::Rotate) => lifecycle::key_rotate(&dir),
        Command::Backend(cmd) => lifecycle::backend(&dir, cmd),
    }
}

fn open_store(dir: &DataDir) -> Result<SecretStore, Exit> {
    SecretStore::open(dir).map_err(store_exit)
}

/// The one mapping from store failures to exit codes.
fn store_exit(e: StoreError) -> Exit {
    use keyhole::crypto::KeyError;
    let code = match &e {
        StoreError::Key(KeyError::Locked { .. } | KeyError::Io { .. }) => HOST,
        StoreError::NotFound { .. } | StoreError::Key(_) | StoreError::WrongKey { .. } => USAGE,
        StoreError::RowTampered { .. } | StoreError::Tampered { .. } => TAMPERED,
        _ => HOST,
    };
    fail(code, e)
}

/// Maps backend configuration failures: an edited file is tampering.
fn vault_exit(e: vault::VaultError) -> Exit {
    let code = if matches!(e, vault::VaultError::Tampered(_)) { TAMPERED } else { USAGE };
    fail(code, e)
}

fn read_value(from_file: Option<&Path>) -> Result<SecretValue> {
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    match from_file {
        Some(p) => {
            *bytes = std::fs::read(p).with_context(|| format!("cannot read secret value from {}", p.display()))?;
        }
        None => {
            std::io::stdin().lock().read_to_end(&mut bytes).context("cannot read the secret value from stdin")?;
        }
    }
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        bail!(
            "the secret value is empty: pipe it on stdin (e.g. `printf %s \"$VALUE\" | host secret set NAME`) or use --from-file"
        );
    }
    SecretValue::from_utf8(bytes).map_err(|e| anyhow::anyhow!("the secret value is not valid UTF-8 ({e})"))
}

fn read_input(args: &ExecArgs) -> Result<serde_json::Value> {
    let (text, origin) = match (&args.input, &args.input_file) {
        (Some(s), _) => (s.clone(), "--input".to_owned()),
        (None, Some(p)) if p == Path::new("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read the input from stdin")?;
            (s, "stdin".to_owned())
        }
        (None, Some(p)) => (
            std::fs::read_to_string(p).with_context(|| format!("cannot read input file {}", p.display()))?,
            p.display().to_string(),
        ),
        (None, None) => ("{}".to_owned(), "the default input".to_owned()),
    };
    serde_json::from_str(&text).with_context(|| format!("the input from {origin} is not a JSON document"))
}

/// Everything a run needs: store, engine, audit log, execution records.
struct Session {
    runtime: Arc<Runtime>,
    env: ExecutionEnv,
    records: Executions,
    rt: tokio::runtime::Runtime,
}

/// `pooling`: use the pooling instance allocator (for flows of several tasks).
fn session(dir: &DataDir, masks: Arc<MaskSet>, pooling: bool) -> Result<Session, Exit> {
    let store = open_store(dir)?;
    let runtime = Runtime::new(RuntimeOptions { cache_dir: Some(dir.cache_dir()), pooling })
        .map_err(|e| fail(HOST, anyhow::anyhow!("cannot start the WebAssembly engine: {e:#}")))?;
    let key = AuditKey::load(&dir.audit_key_path()).map_err(|e| fail(USAGE, e))?;
    let audit = AuditLog::open(&dir.store_path(), store.integrity().clone(), key).map_err(|e| fail(HOST, e))?;
    let records = Executions::open(&dir.store_path()).map_err(|e| fail(HOST, e))?;
    let backends = Backends::load(&vault::config_path(dir.root()), store.integrity()).map_err(vault_exit)?;
    let env = ExecutionEnv {
        store: Arc::new(Mutex::new(store)),
        sink: stderr_sink(),
        masks,
        audit,
        pins: Default::default(),
        backends: Arc::new(backends),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| fail(HOST, anyhow::anyhow!("cannot start the async runtime: {e}")))?;
    Ok(Session { runtime, env, records, rt })
}

fn failure_exit(context: String, failure: TaskFailure) -> Exit {
    let code = if failure.is_task_error() { TASK_ERROR } else { PLUGIN_FAILED };
    fail(code, anyhow::Error::from(failure).context(context))
}

fn print_warnings(d: &Diagnostics) {
    for w in &d.0 {
        eprintln!("{w}");
    }
}

/// `host exec`: a flow of one task whose grants come from `--grant`.
fn exec(dir: &DataDir, args: ExecArgs, masks: Arc<MaskSet>) -> Result<(), Exit> {
    let input = read_input(&args).map_err(|e| fail(USAGE, e))?;
    let memory = usize::try_from(args.memory.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    if memory == 0 {
        return Err(fail(USAGE, anyhow::anyhow!("--memory must be at least 1 MiB")));
    }
    let s = session(dir, masks, false)?;
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
            limits: Limits { memory, timeout: args.timeout, output: args.max_output },
            input,
            literal_input: true,
        }],
        source: args.plugin.display().to_string(),
    };
    let (plugins, warnings) = prepare(&s.runtime, &flow).map_err(|d| fail(USAGE, d))?;
    print_warnings(&warnings);
    let execution = ExecutionId::generate();
    tracing::info!("execution {execution} started");
    let report = s.rt.block_on(run_flow(&s.runtime, &s.env, &flow, &plugins, Map::new(), execution, &s.records));
    if let Some((_, failure)) = report.failure {
        return Err(failure_exit(format!("plugin {}", args.plugin.display()), failure));
    }
    let output = report.record.tasks[0].output.clone().unwrap_or(Value::Null);
    let text = serde_json::to_string_pretty(&output).expect("a JSON value always serialises");
    writeln!(std::io::stdout().lock(), "{text}").map_err(stdout_err)
}

fn parse_input_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{s:?} is not ID=VALUE"))
}

/// `host run`: a flow file.
fn run_flow_cmd(dir: &DataDir, args: RunArgs, masks: Arc<MaskSet>) -> Result<(), Exit> {
    let (flow, warnings) = flow::load(&args.flow).map_err(|d| fail(USAGE, d))?;
    print_warnings(&warnings);
    let inputs = flow::bind_inputs(&flow, &args.inputs).map_err(|e| fail(USAGE, anyhow::anyhow!(e)))?;
    // Several instances in one process: pool them, unless a task may need
    // more memory than a pooled instance can have.
    let pooling = flow.tasks.len() > 1 && flow.tasks.iter().all(|t| t.limits.memory <= POOLING_MAX_MEMORY);
    let s = session(dir, masks, pooling)?;
    let (plugins, warnings) = prepare(&s.runtime, &flow).map_err(|d| fail(USAGE, d))?;
    print_warnings(&warnings);
    let execution = ExecutionId::generate();
    eprintln!("[{}] execution {execution} started", flow.id);
    let report = s.rt.block_on(run_flow(&s.runtime, &s.env, &flow, &plugins, inputs, execution, &s.records));
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

fn write_execution(out: &mut impl Write, r: &ExecutionRecord) -> std::io::Result<()> {
    let ns = if r.namespace.is_empty() { "(root)" } else { &r.namespace };
    writeln!(out, "execution {}  flow {}  namespace {ns}  {}", r.id, r.flow, r.status)?;
    writeln!(out, "started {}  ended {}", r.started, r.ended.as_deref().unwrap_or("-"))?;
    for t in &r.tasks {
        let status =
            serde_json::to_value(t.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        writeln!(out, "  {:<10} {:<24} {:>7} ms  {}", status, t.id, t.duration_ms, t.error.as_deref().unwrap_or(""))?;
    }
    let outputs: Map<String, Value> =
        r.tasks.iter().filter_map(|t| t.output.clone().map(|o| (t.id.clone(), o))).collect();
    writeln!(out, "outputs:")?;
    writeln!(out, "{}", serde_json::to_string_pretty(&outputs).expect("JSON encodes"))
}

/// `host validate`: everything `run` would check, without running.
fn validate_cmd(dir: &DataDir, args: ValidateArgs) -> Result<(), Exit> {
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
        let runtime = Runtime::new(RuntimeOptions { cache_dir: Some(dir.cache_dir()), pooling: false })
            .map_err(|e| fail(HOST, anyhow::anyhow!("cannot start the WebAssembly engine: {e:#}")))?;
        match prepare(&runtime, flow) {
            Ok((_, w)) => found.extend(w.0),
            Err(d) => found.extend(d.0),
        }
        for t in &flow.tasks {
            for g in t.grants.iter() {
                let exists = keyhole::store::exists_in_chain(&dir.store_path(), &flow.namespace, g)
                    .map_err(|e| fail(HOST, e))?;
                if !exists {
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
        writeln!(out, "flow {} is valid ({} warning(s))", args.flow.display(), diags.0.len()).map_err(stdout_err)?;
    }
    Ok(())
}

fn executions_cmd(dir: &DataDir, cmd: ExecutionsCommand) -> Result<(), Exit> {
    if !dir.store_path().exists() {
        return Err(fail(USAGE, anyhow::anyhow!("no executions yet: {} does not exist", dir.store_path().display())));
    }
    let records = Executions::open(&dir.store_path()).map_err(|e| fail(HOST, e))?;
    let mut out = std::io::stdout().lock();
    match cmd {
        ExecutionsCommand::List { flow, limit, json } => {
            let list = records.list(flow.as_deref(), limit).map_err(|e| fail(HOST, e))?;
            if json {
                print_json(&mut out, &list)?;
            } else {
                writeln!(out, "{:<36}  {:<24} {:<10} {:<24}  TASKS", "EXECUTION", "FLOW", "STATUS", "STARTED")
                    .map_err(stdout_err)?;
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
                    writeln!(
                        out,
                        "{:<36}  {:<24} {:<10} {:<24}  {}",
                        r.id,
                        r.flow,
                        r.status,
                        r.started,
                        tasks.join(" ")
                    )
                    .map_err(stdout_err)?;
                }
            }
        }
        ExecutionsCommand::Show { id, json } => {
            let id: ExecutionId = id.parse().map_err(|e| fail(USAGE, e))?;
            let r = records.get(id.as_str()).map_err(|e| match e {
                keyhole::executions::RecordError::NotFound(_) => fail(USAGE, e),
                e => fail(HOST, e),
            })?;
            if json {
                print_json(&mut out, &r)?;
            } else {
                write_execution(&mut out, &r).map_err(stdout_err)?;
            }
        }
    }
    Ok(())
}

fn read_checkpoint_file(
    conn: &rusqlite::Connection,
    key: &keyhole::crypto::IntegrityKey,
    file: &Path,
) -> Result<audit::Checkpoint, Exit> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| fail(USAGE, anyhow::anyhow!("cannot read checkpoint {}: {e}", file.display())))?;
    audit::read_checkpoint(conn, key, &text)
        .map_err(|e| fail(TASK_ERROR, anyhow::anyhow!("checkpoint {} is not valid: {e}", file.display())))
}

fn audit_filter(f: AuditFilter) -> audit::Filter {
    audit::Filter {
        secret: f.secret,
        namespace: f.namespace,
        flow: f.flow,
        execution: f.execution,
        outcome: f.outcome,
        action: f.action,
        since: f.since,
        until: f.until,
        limit: f.limit,
    }
}

/// Writes `value` as pretty JSON and a newline.
fn print_json(out: &mut impl Write, value: &impl serde::Serialize) -> Result<(), Exit> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(stdout_err)?;
    writeln!(out).map_err(stdout_err)
}

fn stdout_err(e: impl Into<anyhow::Error>) -> Exit {
    fail(HOST, e.into().context("cannot write to stdout"))
}

fn audit_cmd(dir: &DataDir, cmd: AuditCommand) -> Result<(), Exit> {
    let path = dir.store_path();
    // Writing a record or checking the chain needs the integrity key, which
    // only the master key opens; listing needs no key.
    let needs_key = !matches!(
        cmd,
        AuditCommand::List { .. } | AuditCommand::Export { .. } | AuditCommand::Usage { .. } | AuditCommand::HashValue
    );
    if needs_key && !path.exists() && !matches!(cmd, AuditCommand::EnableFingerprints) {
        return Err(fail(USAGE, audit::AuditError::NoStore(path.clone())));
    }
    let mut store = if needs_key { Some(open_store(dir)?) } else { None };
    let key = store.as_ref().map(|s| s.integrity().clone());
    let key = || key.clone().expect("opened above for every command that needs the key");
    let mut conn = audit::open(&path, false).map_err(|e| fail(USAGE, e))?;
    let mut out = std::io::stdout().lock();
    match cmd {
        AuditCommand::List { filter, json } => {
            let records = audit::list(&conn, &path, &audit_filter(filter)).map_err(|e| fail(HOST, e))?;
            if json {
                print_json(&mut out, &records)?;
            } else {
                writeln!(
                    out,
                    "{:>6}  {:<24}  {:<12} {:<11} {:<24} {:<20} {:<24} {:>3}  REASON",
                    "SEQ", "TIME", "ACTION", "OUTCOME", "ACTOR", "NAMESPACE", "SECRET", "VER"
                )
                .map_err(stdout_err)?;
                for r in records {
                    let ns = if r.namespace.is_empty() { "(root)" } else { &r.namespace };
                    writeln!(
                        out,
                        "{:>6}  {:<24}  {:<12} {:<11} {:<24} {:<20} {:<24} {:>3}  {}",
                        r.seq,
                        r.time,
                        r.action,
                        r.outcome,
                        r.actor,
                        ns,
                        r.secret.as_deref().unwrap_or("-"),
                        r.version.map_or("-".to_owned(), |v| v.to_string()),
                        r.reason.as_deref().unwrap_or(""),
                    )
                    .map_err(stdout_err)?;
                }
            }
            Ok(())
        }
        AuditCommand::Export { format: _, filter } => {
            for r in audit::list(&conn, &path, &audit_filter(filter)).map_err(|e| fail(HOST, e))? {
                serde_json::to_writer(&mut out, &r).map_err(stdout_err)?;
                writeln!(out).map_err(stdout_err)?;
            }
            Ok(())
        }
        AuditCommand::Verify { json, against } => {
            let verdict = audit::verify(&conn, &path, &key()).map_err(|e| fail(HOST, e))?;
            let checkpoint = match &against {
                Some(file) => Some(read_checkpoint_file(&conn, &key(), file)?),
                None => None,
            };
            if let Some(c) = &checkpoint {
                audit::check_against(&conn, &path, &verdict, c).map_err(|e| {
                    fail(TASK_ERROR, anyhow::Error::from(e).context(format!("audit log {}", path.display())))
                })?;
            }
            if json {
                print_json(&mut out, &verdict)?;
            }
            match verdict {
                Verdict::Intact { records, head_seq, head_hash, from_seq, key_id, keyed_from } => {
                    if !json {
                        writeln!(
                            out,
                            "audit log intact: {records} records (seq {from_seq}..{head_seq}), head hash {head_hash}, \
                             verified with audit key {key_id}{}",
                            if keyed_from > 1 {
                                format!(" (records before {keyed_from} predate the keyed chain: plain SHA-256)")
                            } else {
                                String::new()
                            }
                        )
                        .map_err(stdout_err)?;
                        if let (Some(c), Some(f)) = (&checkpoint, &against) {
                            writeln!(out, "contains checkpoint {} (record {}, {})", f.display(), c.seq, c.time)
                                .map_err(stdout_err)?;
                        }
                    }
                    Ok(())
                }
                Verdict::Broken { seq, problem } => Err(fail(
                    TASK_ERROR,
                    anyhow::anyhow!("audit log {} is broken at record {seq}: {problem}", path.display()),
                )),
            }
        }
        AuditCommand::Checkpoint { output } => {
            let note = audit::checkpoint_note(&conn, &path, &key()).map_err(|e| fail(TASK_ERROR, e))?;
            let Some(file) = output else {
                return write!(out, "{note}").map_err(stdout_err);
            };
            if file.exists() {
                // Like a sumdb client: never go back from what is on file.
                let old = read_checkpoint_file(&conn, &key(), &file)?;
                let new = audit::read_checkpoint(&conn, &key(), &note).map_err(|e| fail(HOST, anyhow::anyhow!(e)))?;
                let verdict = audit::verify(&conn, &path, &key()).map_err(|e| fail(HOST, e))?;
                audit::check_against(&conn, &path, &verdict, &old).map_err(|e| {
                    fail(
                        TASK_ERROR,
                        anyhow::Error::from(e).context(format!("{} is newer than the log", file.display())),
                    )
                })?;
                if new.seq < old.seq {
                    return Err(fail(TASK_ERROR, anyhow::anyhow!("{} is newer than the log", file.display())));
                }
            }
            keyhole::data_dir::write_private_atomic(&file, note.as_bytes())
                .map_err(|e| fail(HOST, anyhow::anyhow!("cannot write {}: {e}", file.display())))?;
            eprintln!(
                "wrote a signed checkpoint of the audit log to {}: keep a copy outside the data directory",
                file.display()
            );
            Ok(())
        }
        AuditCommand::Prune { before } => {
            let n =
                audit::prune(&mut conn, &path, &key(), &before, &Actor::current_user()).map_err(|e| fail(HOST, e))?;
            eprintln!("pruned {n} audit records before {before}; the rest remain verifiable");
            Ok(())
        }
        AuditCommand::Usage { json } => {
            let usage = audit::usage(&conn, &path).map_err(|e| fail(HOST, e))?;
            if json {
                print_json(&mut out, &usage)?;
            } else {
                writeln!(out, "{:<28} {:<24} {:<20} {:>6}  {:<24}", "SECRET", "FLOW", "TASK", "READS", "LAST READ")
                    .map_err(stdout_err)?;
                for u in usage {
                    let last = u.last_read.as_deref().unwrap_or("never (grant unused)");
                    writeln!(out, "{:<28} {:<24} {:<20} {:>6}  {:<24}", u.secret, u.flow, u.task, u.reads, last)
                        .map_err(stdout_err)?;
                }
            }
            Ok(())
        }
        AuditCommand::EnableFingerprints => {
            AuditKey::create(&dir.audit_key_path()).map_err(|e| fail(USAGE, e))?;
            let rec =
                audit::NewRecord::ok(&Actor::current_user(), audit::Action::AuditKeyCreate, &Namespace::root(), None)
                    .reason(format!("created {}", dir.audit_key_path().display()));
            store.as_mut().expect("opened above").record(&rec).map_err(store_exit)?;
            eprintln!(
                "audit fingerprints enabled: key in {} (keep it apart from master.key)",
                dir.audit_key_path().display()
            );
            Ok(())
        }
        AuditCommand::HashValue => {
            let key = AuditKey::load(&dir.audit_key_path()).map_err(|e| fail(USAGE, e))?.ok_or_else(|| {
                fail(USAGE, anyhow::anyhow!("fingerprints are not enabled: run `host audit enable-fingerprints` first"))
            })?;
            let value = read_value(None).map_err(|e| fail(USAGE, e))?;
            let fp = key.fingerprint(value.expose());
            writeln!(out, "{fp}").map_err(stdout_err)?;
            let mut stmt = conn
                .prepare(
                    "SELECT seq, time, actor, namespace, secret, version FROM audit WHERE value_hmac = ?1 ORDER BY seq",
                )
                .map_err(|e| fail(HOST, e))?;
            let rows = stmt
                .query_map([&fp], |r| {
                    Ok(format!(
                        "released by record {} at {}: {} read {} version {} in namespace {:?}",
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                        r.get::<_, Option<i64>>(5)?.unwrap_or_default(),
                        r.get::<_, String>(3)?,
                    ))
                })
                .map_err(|e| fail(HOST, e))?;
            let mut any = false;
            for row in rows {
                writeln!(out, "{}", row.map_err(|e| fail(HOST, e))?).map_err(stdout_err)?;
                any = true;
            }
            if !any {
                writeln!(out, "no recorded read released this value").map_err(stdout_err)?;
            }
            Ok(())
        }
    }
}
