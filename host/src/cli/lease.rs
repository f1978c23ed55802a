//! `host secret dynamic ...` (define credentials minted per execution) and
//! `host lease list|sweep` (the credentials minted, and revoking those a
//! stopped run left behind).

use super::table::{Align::*, Table};
use super::*;
use keyhole::audit::{Actor, NewRecord};
use keyhole::backend::config::{self, BackendConfig, Backends};
use keyhole::backend::vault::VaultBackend;
use keyhole::service::ServiceError;
use keyhole::session::open_secrets;

#[derive(Subcommand, Debug)]
pub(crate) enum DynamicCommand {
    /// Define a dynamic secret on a namespace served by Vault/OpenBao: each
    /// execution that reads it gets a credential minted for it (a child
    /// token of keyhole's own reads PATH), revoked when the execution ends.
    Add {
        /// Secret name, granted in flows like any other.
        name: SecretName,
        /// Namespace (served by a Vault/OpenBao backend).
        #[arg(long, short, default_value = "", value_name = "NS")]
        namespace: Namespace,
        /// The path that mints a credential, e.g. database/creds/readonly.
        #[arg(long, value_name = "PATH")]
        vault_path: String,
        /// The longest a credential lives (also bounded by the task's timeout plus a minute).
        #[arg(long, default_value = "15m", value_parser = parse_duration, value_name = "DURATION")]
        ttl: Duration,
        /// Bind it to a destination, `scheme://host[:port]` (repeat for more): the task gets a
        /// placeholder, and the host puts the credential only into requests to these.
        #[arg(long = "destination", value_name = "URL")]
        destinations: Vec<keyhole::network::AllowEntry>,
    },
    /// Remove a dynamic secret's definition (credentials already minted stay leased until revoked).
    Rm {
        /// Secret name.
        name: SecretName,
        /// Namespace.
        #[arg(long, short, default_value = "", value_name = "NS")]
        namespace: Namespace,
    },
    /// The dynamic secrets, by namespace.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum LeaseCommand {
    /// Credentials minted for executions: lease id, secret, execution,
    /// expiry, revoked (never the credential). Outstanding ones only, unless --all.
    List {
        /// Also the revoked ones.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke every outstanding credential whose run has stopped (with
    /// --all, also those of runs still going).
    Sweep {
        /// Also revoke credentials of runs still going.
        #[arg(long)]
        all: bool,
    },
}

/// Every dynamic secret: the Vault backend defining it, its name, its definition.
fn dynamic_defs(
    backends: &Backends,
) -> impl Iterator<Item = (&keyhole::backend::vault::VaultConfig, &String, &keyhole::backend::DynamicDef)> {
    backends
        .list()
        .iter()
        .filter_map(|c| match c {
            BackendConfig::Vault(v) => Some(v),
            _ => None,
        })
        .flat_map(|v| v.dynamic.iter().map(move |(name, def)| (v, name, def)))
}

/// The backend configuration (checked against its MAC) and where it lives.
fn backends(dir: &DataDir, secrets: &Router) -> Result<(PathBuf, Backends), Exit> {
    let path = config::config_path(dir.root());
    let loaded = Backends::load(&path, secrets.local().store().integrity())
        .map_err(|e| fail(TAMPERED, anyhow::Error::from(e)))?;
    Ok((path, loaded))
}

pub(crate) fn dynamic(dir: &DataDir, cmd: DynamicCommand) -> Result<(), Exit> {
    let secrets = open_secrets(dir)?;
    let (path, mut backends) = backends(dir, &secrets)?;
    let key = secrets.local().store().integrity().clone();
    let mut out = std::io::stdout().lock();
    let (namespace, name, said, cfg) = match cmd {
        DynamicCommand::List { json } => {
            let rows: Vec<_> = dynamic_defs(&backends)
                .map(|(v, name, def)| {
                    serde_json::json!({
                        "namespace": v.namespace, "name": name, "path": def.path,
                        "ttl_secs": def.ttl_secs, "policy": def.policy, "server": v.address,
                        "destinations": def.destinations,
                    })
                })
                .collect();
            if json {
                return print_json(&mut out, &rows);
            }
            let mut table = Table::new(&[("NAMESPACE", Left), ("NAME", Left), ("MINTED FROM", Left), ("TTL", Right)]);
            for r in rows {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                table.row([
                    s("namespace"),
                    s("name"),
                    format!("{} at {}", s("path"), s("server")),
                    format!("{}s", r["ttl_secs"]),
                ]);
            }
            return table.write(&mut out).map_err(stdout_err);
        }
        DynamicCommand::Add { name, namespace, vault_path, ttl, destinations } => {
            let Some(BackendConfig::Vault(v)) = backends.for_namespace(&namespace).cloned() else {
                return Err(fail(
                    USAGE,
                    anyhow::anyhow!(
                        "namespace {namespace} is not served by a Vault/OpenBao backend: \
                         `host backend add-vault {namespace} --address ...` first"
                    ),
                ));
            };
            let mut def = VaultBackend::new(v.clone()).define_dynamic(&namespace, &name, &vault_path, ttl)?;
            def.destinations = destinations.iter().map(ToString::to_string).collect();
            let said = format!(
                "{name} in namespace {namespace} is dynamic: each execution gets a credential minted from {} \
                 (at most {} s), revoked when it ends",
                def.path, def.ttl_secs
            );
            let mut v = v;
            v.dynamic.insert(name.as_str().to_owned(), def);
            (namespace, name, said, BackendConfig::Vault(v))
        }
        DynamicCommand::Rm { name, namespace } => {
            let Some(BackendConfig::Vault(mut v)) = backends.for_namespace(&namespace).cloned() else {
                return Err(fail(USAGE, anyhow::anyhow!("no dynamic secret {name} in namespace {namespace}")));
            };
            if v.dynamic.remove(name.as_str()).is_none() {
                return Err(fail(USAGE, anyhow::anyhow!("no dynamic secret {name} in namespace {namespace}")));
            }
            let said = format!("{name} in namespace {namespace} is no longer dynamic");
            (namespace, name, said, BackendConfig::Vault(v))
        }
    };
    backends.upsert(cfg);
    let record = |rec: &NewRecord| secrets.record(rec);
    let apply = || backends.save(&path, &key).map_err(|e| ServiceError::Host(e.to_string()));
    keyhole::service::operator::change_backend(record, &Actor::current_user(), &namespace, Some(&name), &said, apply)?;
    eprintln!("{said}");
    Ok(())
}

pub(crate) fn lease(dir: &DataDir, cmd: LeaseCommand) -> Result<(), Exit> {
    if !dir.store_path().exists() {
        return Err(fail(USAGE, anyhow::anyhow!("no leases: {} does not exist", dir.store_path().display())));
    }
    let mut out = std::io::stdout().lock();
    match cmd {
        LeaseCommand::List { all, json } => {
            let leases =
                keyhole::lease::Leases::open(&dir.store_path()).map_err(|e| fail(HOST, anyhow::Error::from(e)))?;
            let list = leases.list(!all).map_err(|e| fail(HOST, anyhow::Error::from(e)))?;
            if json {
                return print_json(&mut out, &list);
            }
            let mut table = Table::new(&[
                ("SECRET", Left),
                ("EXECUTION", Left),
                ("MINTED", Left),
                ("EXPIRES", Left),
                ("REVOKED", Left),
                ("LEASE", Left),
            ]);
            for l in list {
                table.row([
                    format!("{}/{}", if l.namespace.is_empty() { "-" } else { &l.namespace }, l.name),
                    l.execution,
                    l.minted,
                    keyhole::store::fmt_time(l.expires_at),
                    l.revoked.unwrap_or_else(|| "outstanding".into()),
                    l.lease_id,
                ]);
            }
            table.write(&mut out).map_err(stdout_err)
        }
        LeaseCommand::Sweep { all } => {
            let secrets = open_secrets(dir)?;
            let audit = keyhole::session::open_audit(dir, &secrets)?;
            let (revoked, failed, live) =
                keyhole::lease::sweep(&secrets, &audit, &dir.store_path(), &Actor::current_user(), all)
                    .map_err(|e| fail(HOST, anyhow::Error::from(e)))?;
            eprintln!("revoked {revoked} credential(s); {live} belong to runs still going");
            if failed > 0 {
                return Err(fail(
                    HOST,
                    anyhow::anyhow!(
                        "{failed} credential(s) could not be revoked: the audit trail says why; sweep again"
                    ),
                ));
            }
            Ok(())
        }
    }
}
