//! The `host` command line: argument definitions, one file per command
//! group, and the one mapping from failures to exit codes. `main.rs` only
//! parses and dispatches to [`run`].

mod audit;
mod backend;
mod exec;
mod flow;
mod key;
mod lease;
mod namespace;
mod plugin;
mod protect;
mod remote;
mod secret;
mod server;
mod table;

use audit::AuditCommand;
use backend::BackendCommand;
use exec::ExecArgs;
use flow::{ExecutionsCommand, FlowCommand, RunArgs, ValidateArgs};
use key::KeyCommand;
use lease::LeaseCommand;
use namespace::NamespaceCommand;
use plugin::PluginCommand;
use secret::SecretCommand;
use server::{RoleCommand, ServeArgs, TokenCommand};

pub(crate) use anyhow::{Context, Result, bail};
pub(crate) use clap::{Args, Parser, Subcommand};
pub(crate) use keyhole::backend::Router;
pub(crate) use keyhole::data_dir::DataDir;
pub(crate) use keyhole::mask::MaskSet;
pub(crate) use keyhole::names::{Namespace, SecretName};
pub(crate) use keyhole::secret::SecretValue;
pub(crate) use keyhole::service::Plane;
pub(crate) use keyhole::store::{SecretStore, StoreError};
pub(crate) use std::io::Write;
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::sync::Arc;
pub(crate) use std::time::Duration;

pub(crate) const EXIT_CODES: &str = "\
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
pub(crate) struct Cli {
    /// Data directory (store, master key, compiled-plugin cache).
    /// Default: $KEYHOLE_HOME, else $XDG_DATA_HOME/keyhole, else ~/.local/share/keyhole.
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Compiler for plugins not yet in the compiled cache: cranelift
    /// (optimising, the default) or winch (baseline: compiles several times
    /// faster, runs slower; for big Python/JavaScript plugins on a cold cache).
    #[arg(long, global = true, env = "KEYHOLE_COMPILER", default_value = "cranelift", value_name = "NAME")]
    pub(crate) compiler: keyhole::runtime::Compiler,
    /// More host diagnostics on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
    /// External secret backends per namespace: HashiCorp Vault / OpenBao, AWS Secrets Manager.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Write plugins: start a project, build it, inspect a component, pre-compile.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Serve the API: hold the data directory and master key, run deployed
    /// flows for principals with tokens.
    Serve(ServeArgs),
    /// Bearer tokens of `host serve`: create, list, revoke, lookup-self
    /// (locally, or through the API with $KEYHOLE_ADDR).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Roles: the built-in ones and custom permission sets.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Credentials minted for executions from dynamic secrets: list them,
    /// revoke those a stopped run left behind.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Namespaces' quotas of queued and running executions on `host serve`.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
}

/// `--namespace NS` of a command that acts on one secret.
#[derive(Args, Debug)]
pub(crate) struct At {
    /// Namespace, e.g. finance.reporting (default: the root).
    #[arg(long, short, default_value = "", value_name = "NS")]
    pub(crate) namespace: Namespace,
}

/// Parses `--since`-style times into the RFC 3339 form records use.
pub(crate) fn parse_time(s: &str) -> Result<String, String> {
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

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
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
pub(crate) struct Exit {
    pub(crate) code: u8,
    pub(crate) error: anyhow::Error,
}

pub(crate) fn fail(code: u8, error: impl Into<anyhow::Error>) -> Exit {
    Exit { code, error: error.into() }
}

impl Exit {
    /// What the operator is shown on stderr, a line each: the errors and
    /// warnings that stopped a flow as `validate` shows them (each names
    /// its severity and where), anything else as one `error: ...` line.
    pub(crate) fn lines(&self) -> Vec<String> {
        use keyhole::flow::{Diagnostics, Severity};
        match self.error.downcast_ref::<Diagnostics>() {
            Some(found) => found.0.iter().filter(|d| d.severity != Severity::Note).map(ToString::to_string).collect(),
            None => vec![format!("error: {:#}", self.error)],
        }
    }
}

pub(crate) const TASK_ERROR: u8 = 1;
pub(crate) const USAGE: u8 = 2;
pub(crate) const PLUGIN_FAILED: u8 = 3;
pub(crate) const HOST: u8 = 4;
pub(crate) const TAMPERED: u8 = 5;

pub(crate) fn run(cli: Cli, masks: &Arc<MaskSet>) -> Result<(), Exit> {
    let dir = DataDir::locate(cli.data_dir.as_deref()).map_err(|e| fail(USAGE, e))?;
    match cli.command {
        Command::Exec(args) => exec::exec(&dir, args, masks.clone(), cli.compiler),
        Command::Secret(cmd) => secret::secret(&dir, cmd),
        Command::Audit(cmd) => audit::audit_cmd(&dir, cmd),
        Command::Run(args) => flow::run_flow_cmd(&dir, args, masks.clone(), cli.compiler),
        Command::Validate(args) => flow::validate_cmd(&dir, args, cli.compiler),
        Command::Flow(FlowCommand::Schema) => {
            let schema = serde_json::to_string_pretty(&keyhole::flow::schema()).expect("schemas encode");
            writeln!(std::io::stdout().lock(), "{schema}").map_err(stdout_err)
        }
        Command::Flow(cmd) => flow::flow_cmd(&dir, cmd),
        Command::Executions(cmd) => flow::executions_cmd(&dir, cmd),
        Command::Key(KeyCommand::Rotate) => key::key_rotate(&dir),
        Command::Backend(cmd) => backend::backend(&dir, cmd),
        Command::Plugin(cmd) => plugin::plugin(&dir, cmd, cli.compiler),
        Command::Serve(args) => server::serve(&dir, args, cli.compiler),
        Command::Token(cmd) => server::token(&dir, cmd),
        Command::Role(cmd) => server::role(&dir, cmd),
        Command::Lease(cmd) => lease::lease(&dir, cmd),
        Command::Namespace(cmd) => namespace::namespace(&dir, cmd),
    }
}

/// The exit code of a task's failure, by its kind (never by its text).
pub(crate) fn failure_code(kind: keyhole::executions::FailureKind) -> u8 {
    use keyhole::executions::FailureKind as K;
    match kind {
        K::Task => TASK_ERROR,
        K::Plugin | K::Stopped => PLUGIN_FAILED,
        K::Host => HOST,
    }
}

pub(crate) fn open_store(dir: &DataDir) -> Result<SecretStore, Exit> {
    SecretStore::open(dir).map_err(Exit::from)
}

// One conversion per library error type: the variant, not the call site,
// decides the exit code.

impl From<StoreError> for Exit {
    fn from(e: StoreError) -> Self {
        use keyhole::crypto::KeyError;
        let code = match &e {
            StoreError::Key(KeyError::Locked { .. } | KeyError::Io { .. }) => HOST,
            StoreError::NotFound { .. }
            | StoreError::Staged { .. }
            | StoreError::Key(_)
            | StoreError::WrongKey { .. } => USAGE,
            StoreError::RowTampered { .. } | StoreError::Tampered { .. } => TAMPERED,
            _ => HOST,
        };
        fail(code, e)
    }
}

impl From<keyhole::crypto::KeyError> for Exit {
    fn from(e: keyhole::crypto::KeyError) -> Self {
        StoreError::Key(e).into()
    }
}

impl From<keyhole::backend::BackendError> for Exit {
    fn from(e: keyhole::backend::BackendError) -> Self {
        use keyhole::backend::BackendError as B;
        let code = match e {
            B::Store(e) => return e.into(),
            B::Config { .. } | B::NoCredentials { .. } | B::Unsupported { .. } | B::NotFound { .. } => USAGE,
            B::Unreachable { .. } | B::Server { .. } | B::Shape { .. } => HOST,
        };
        fail(code, e)
    }
}

impl From<keyhole::backend::config::ConfigError> for Exit {
    fn from(e: keyhole::backend::config::ConfigError) -> Self {
        use keyhole::backend::config::ConfigError as C;
        let code = if matches!(e, C::Tampered(_)) { TAMPERED } else { USAGE };
        fail(code, e)
    }
}

impl From<keyhole::audit::AuditError> for Exit {
    fn from(e: keyhole::audit::AuditError) -> Self {
        use keyhole::audit::AuditError as A;
        match e {
            A::Db(e) => StoreError::Db(e).into(),
            e @ (A::NoStore(_) | A::Key(_)) => fail(USAGE, e),
            // The log does not vouch for what was asked: like a broken chain.
            e @ A::Checkpoint(_) => fail(TASK_ERROR, e),
            e @ (A::WriterGone | A::Writer(_)) => fail(HOST, e),
        }
    }
}

impl From<keyhole::session::SessionError> for Exit {
    fn from(e: keyhole::session::SessionError) -> Self {
        use keyhole::session::SessionError as S;
        match e {
            S::Store(e) => e.into(),
            S::Audit(e) => e.into(),
            S::Records(e) => e.into(),
            S::Config(e) => e.into(),
            S::Backend(e) => e.into(),
            e @ S::Engine(_) => fail(HOST, e),
        }
    }
}

impl From<keyhole::embedded::OpenError> for Exit {
    fn from(e: keyhole::embedded::OpenError) -> Self {
        use keyhole::embedded::OpenError as O;
        match e {
            O::Session(e) => (*e).into(),
            O::Tokens(e) => e.into(),
            O::Registry(e) => flow::registry_exit(e),
        }
    }
}

impl From<keyhole::executions::RecordError> for Exit {
    fn from(e: keyhole::executions::RecordError) -> Self {
        use keyhole::executions::RecordError as R;
        let code = match e {
            R::NotFound(_) | R::Quota(_) => USAGE,
            R::Corrupt { .. } => TAMPERED,
            R::Db(_) => HOST,
        };
        fail(code, e)
    }
}

impl From<keyhole::service::ServiceError> for Exit {
    fn from(e: keyhole::service::ServiceError) -> Self {
        use keyhole::service::ServiceError as S;
        match e {
            S::Diagnostics(d) => fail(USAGE, d),
            e @ (S::Forbidden(_) | S::Invalid(_) | S::NotFound(_) | S::Conflict(_) | S::Quota(_) | S::OverLimit(_)) => {
                fail(USAGE, e)
            }
            e @ S::Tampered(_) => fail(TAMPERED, e),
            S::Backend(e) => e.into(),
            e @ (S::AuditFailed(_) | S::Host(_)) => fail(HOST, e),
        }
    }
}

impl From<keyhole::backup::BundleError> for Exit {
    fn from(e: keyhole::backup::BundleError) -> Self {
        let code = if matches!(e, keyhole::backup::BundleError::Kdf(_)) { HOST } else { USAGE };
        fail(code, e)
    }
}

pub(crate) fn read_value(from_file: Option<&Path>) -> Result<SecretValue> {
    use keyhole::secret::MAX_VALUE_BYTES;
    let mut bytes = match from_file {
        Some(p) => std::fs::File::open(p)
            .and_then(|f| SecretValue::read_plaintext(f, MAX_VALUE_BYTES))
            .with_context(|| format!("cannot read secret value from {}", p.display()))?,
        None => SecretValue::read_plaintext(std::io::stdin().lock(), MAX_VALUE_BYTES)
            .context("cannot read the secret value from stdin")?,
    };
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

/// Writes `value` as pretty JSON and a newline.
pub(crate) fn print_json(out: &mut impl Write, value: &impl serde::Serialize) -> Result<(), Exit> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(stdout_err)?;
    writeln!(out).map_err(stdout_err)
}

pub(crate) fn stdout_err(e: impl Into<anyhow::Error>) -> Exit {
    fail(HOST, e.into().context("cannot write to stdout"))
}

/// Environment variable naming a test failpoint: the process stops there
/// (prints `failpoint NAME reached` and sleeps) so a test can kill it.
pub(crate) const FAILPOINT_ENV: &str = "KEYHOLE_FAILPOINT";

pub(crate) fn failpoint(name: &str) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == name) {
        eprintln!("failpoint {name} reached");
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// The state of `dir` as the service layer reaches it (flows, executions,
/// tokens, the audit chain, secrets), for operations done as the root
/// operator.
pub(crate) fn open_state(dir: &DataDir) -> Result<keyhole::embedded::Embedded, Exit> {
    keyhole::embedded::Embedded::open(dir).map_err(Exit::from)
}

/// The secret plane of `dir`: the store and every configured backend.
pub(crate) fn open_secrets(dir: &DataDir) -> Result<Router, Exit> {
    keyhole::session::open_secrets(dir).map_err(Exit::from)
}
