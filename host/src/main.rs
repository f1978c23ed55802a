//! The `host` command line: run task plugins and manage secrets.
//!
//! Exit codes (also in `host --help`):
//! 0 success; 1 the task returned an error; 2 bad usage or input (arguments,
//! input JSON, plugin file); 3 the plugin trapped or hit a limit (time,
//! memory); 4 the host failed (store, master key, disk).

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use keyhole::access::TaskIdentity;
use keyhole::data_dir::DataDir;
use keyhole::exec::{ExecutionEnv, Limits, TaskSpec, run_task};
use keyhole::mask::MaskSet;
use keyhole::names::{ExecutionId, Namespace, SecretName, TaskId};
use keyhole::output::stderr_sink;
use keyhole::policy::Grants;
use keyhole::runtime::{LoadError, LoadedFrom, Runtime, RuntimeOptions};
use keyhole::secret::SecretValue;
use keyhole::store::{SecretStore, StoreError};
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
  4  the host failed (secret store, master key, disk)";

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
    /// Memory limit per linear memory, in MiB.
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
        /// Namespace, e.g. finance.reporting (default: the root).
        #[arg(long, short, default_value = "", value_name = "NS")]
        namespace: Namespace,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// List secrets: names, namespaces, versions and times, never values.
    List {
        /// Only this namespace.
        #[arg(long, short, value_name = "NS")]
        namespace: Option<Namespace>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret and all its versions.
    Rm {
        /// Secret name.
        name: SecretName,
        /// Namespace (default: the root).
        #[arg(long, short, default_value = "", value_name = "NS")]
        namespace: Namespace,
    },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            eprintln!("error: {:#}", exit.error);
            ExitCode::from(exit.code)
        }
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYHOLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("keyhole={level},host={level}")));
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter).with_target(false).init();
}

fn run(cli: Cli) -> Result<(), Exit> {
    let dir = DataDir::locate(cli.data_dir.as_deref()).map_err(|e| fail(USAGE, e))?;
    match cli.command {
        Command::Exec(args) => exec(&dir, args),
        Command::Secret(cmd) => secret(&dir, cmd),
    }
}

fn open_store(dir: &DataDir) -> Result<SecretStore, Exit> {
    dir.ensure().map_err(|e| fail(HOST, e))?;
    SecretStore::open(dir).map_err(|e| {
        let code = match e {
            StoreError::Key(_) | StoreError::WrongKey { .. } => USAGE,
            _ => HOST,
        };
        fail(code, e)
    })
}

fn secret(dir: &DataDir, cmd: SecretCommand) -> Result<(), Exit> {
    match cmd {
        SecretCommand::Set { name, namespace, from_file } => {
            let value = read_value(from_file.as_deref()).map_err(|e| fail(USAGE, e))?;
            let mut store = open_store(dir)?;
            let version = store.set(&namespace, &name, &value).map_err(|e| fail(HOST, e))?;
            eprintln!("stored {name} version {version} in namespace {namespace}");
            Ok(())
        }
        SecretCommand::List { namespace, json } => {
            let store = open_store(dir)?;
            let list = store.list(namespace.as_ref()).map_err(|e| fail(HOST, e))?;
            let mut out = std::io::stdout().lock();
            let res = if json {
                serde_json::to_writer_pretty(&mut out, &list).map_err(std::io::Error::from).and_then(|()| writeln!(out))
            } else {
                write_table(&mut out, &list)
            };
            res.map_err(|e| fail(HOST, anyhow::Error::from(e).context("cannot write to stdout")))
        }
        SecretCommand::Rm { name, namespace } => {
            let mut store = open_store(dir)?;
            if store.remove(&namespace, &name).map_err(|e| fail(HOST, e))? {
                eprintln!("removed {name} from namespace {namespace}");
                Ok(())
            } else {
                Err(fail(USAGE, anyhow::anyhow!("no secret {name} in namespace {namespace}: see `host secret list`")))
            }
        }
    }
}

fn write_table(out: &mut impl Write, list: &[keyhole::store::SecretInfo]) -> std::io::Result<()> {
    let time = |t: i64| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64));
    writeln!(out, "{:<24} {:<32} {:>7}  {:<20}  {:<20}", "NAMESPACE", "NAME", "VERSION", "CREATED", "UPDATED")?;
    for s in list {
        let ns = if s.namespace.is_empty() { "(root)" } else { &s.namespace };
        writeln!(
            out,
            "{:<24} {:<32} {:>7}  {:<20}  {:<20}",
            ns,
            s.name,
            s.version,
            time(s.created_at).to_string(),
            time(s.updated_at).to_string()
        )?;
    }
    Ok(())
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

fn exec(dir: &DataDir, args: ExecArgs) -> Result<(), Exit> {
    let input = read_input(&args).map_err(|e| fail(USAGE, e))?;
    let memory = usize::try_from(args.memory.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    if memory == 0 {
        return Err(fail(USAGE, anyhow::anyhow!("--memory must be at least 1 MiB")));
    }
    let store = open_store(dir)?;
    let runtime = Runtime::new(RuntimeOptions { cache_dir: Some(dir.cache_dir()), pooling: false })
        .map_err(|e| fail(HOST, anyhow::anyhow!("cannot start the WebAssembly engine: {e:#}")))?;
    let plugin = runtime.load(&args.plugin).map_err(|e| {
        let code = if matches!(e, LoadError::Read { .. } | LoadError::Invalid { .. } | LoadError::World { .. }) {
            USAGE
        } else {
            HOST
        };
        fail(code, e)
    })?;
    let how = match plugin.loaded_from {
        LoadedFrom::Cache => "loaded from the compiled cache",
        LoadedFrom::Compiled => "compiled",
    };
    tracing::info!("plugin {} {how} (sha256 {})", plugin.origin, plugin.sha256);

    let stem = args.plugin.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let task = TaskId::from_file_stem(&stem);
    let identity = Arc::new(TaskIdentity {
        namespace: args.namespace,
        flow: task.clone(),
        task,
        execution: ExecutionId::generate(),
        plugin_sha256: plugin.sha256.clone(),
    });
    tracing::info!("execution {} started", identity.execution);
    let env = ExecutionEnv { store: Arc::new(Mutex::new(store)), sink: stderr_sink(), masks: Arc::new(MaskSet::new()) };
    let spec = TaskSpec {
        plugin: &plugin,
        identity,
        grants: Grants::new(args.grants),
        input: &input,
        limits: Limits { memory, timeout: args.timeout, output: args.max_output },
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| fail(HOST, anyhow::anyhow!("cannot start the async runtime: {e}")))?;
    let outcome = rt.block_on(run_task(&runtime, &env, spec));
    match outcome.result {
        Ok(value) => {
            let text = serde_json::to_string_pretty(&value).expect("a JSON value always serialises");
            let text = env.masks.mask(&text);
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}")
                .map_err(|e| fail(HOST, anyhow::Error::from(e).context("cannot write to stdout")))?;
            Ok(())
        }
        Err(failure) => {
            let code = if failure.is_task_error() { TASK_ERROR } else { PLUGIN_FAILED };
            Err(fail(code, anyhow::Error::from(failure).context(format!("plugin {}", args.plugin.display()))))
        }
    }
}
