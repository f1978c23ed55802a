//! The `host` command line: run task plugins and manage secrets.
//!
//! Exit codes (also in `host --help`):
//! 0 success; 1 the task returned an error (or `audit verify` found the log
//! broken); 2 bad usage or input (arguments, input JSON, plugin file); 3 the
//! plugin trapped or hit a limit (time, memory); 4 the host failed (store,
//! master key, disk); 5 stored state failed its integrity check (tampering).

mod cli;

use clap::Parser;
use keyhole::mask::MaskSet;
use keyhole::output::MaskedStderr;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Every value this process reveals; host diagnostics and the final error
    // lines are masked with it too.
    let masks = Arc::new(MaskSet::new());
    init_tracing(cli.verbose, &masks);
    match cli::run(cli, &masks) {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            let mut err = std::io::stderr().lock();
            for line in exit.lines() {
                let line = masks.mask(&line);
                let _ = err.write_all(keyhole::output::one_line(&line).as_bytes());
                let _ = err.write_all(b"\n");
            }
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
