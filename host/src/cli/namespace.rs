//! `host namespace limits|list`: each namespace's quotas of queued and
//! running executions on `host serve`, set by the operator on the data
//! directory's machine (audited as `namespace.limits`).

use super::table::{Align::Left, Table};
use super::*;
use keyhole::audit::Actor;
use keyhole::service::operator;

#[derive(Subcommand, Debug)]
pub(crate) enum NamespaceCommand {
    /// Set a namespace's quotas (for it and every namespace below it): past
    /// --max-queued a new execution is refused (429); past --max-running the
    /// queued ones wait. Without either, the quotas are removed.
    Limits {
        /// The namespace (the root: "").
        namespace: Namespace,
        /// Most executions queued at once.
        #[arg(long, value_name = "N")]
        max_queued: Option<u64>,
        /// Most executions running or paused at a gate at once.
        #[arg(long, value_name = "N")]
        max_running: Option<u64>,
    },
    /// Every namespace's quotas.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn namespace(dir: &DataDir, cmd: NamespaceCommand) -> Result<(), Exit> {
    let state = open_state(dir)?;
    match cmd {
        NamespaceCommand::Limits { namespace, max_queued, max_running } => {
            let me = Actor::current_user();
            let what = operator::set_limits(&state, &me, &namespace, max_queued, max_running)?;
            eprintln!("namespace {namespace} and below: {what}");
            Ok(())
        }
        NamespaceCommand::List { json } => {
            let list = state.records().limits()?;
            let mut out = std::io::stdout().lock();
            if json {
                return print_json(&mut out, &list);
            }
            let mut table = Table::new(&[("NAMESPACE", Left), ("MAX QUEUED", Left), ("MAX RUNNING", Left)]);
            let show = |n: Option<u64>| n.map_or("-".to_owned(), |n| n.to_string());
            for l in list {
                let ns = if l.namespace.is_empty() { "(root)".to_owned() } else { l.namespace };
                table.row([ns, show(l.max_queued), show(l.max_running)]);
            }
            table.write(&mut out).map_err(stdout_err)
        }
    }
}
