//! `host backend ...`: namespaces served by Vault/OpenBao.

use super::*;
use keyhole::audit::{Action, Actor, NewRecord};
use keyhole::vault::VaultConfig;

#[derive(Subcommand, Debug)]
pub(crate) enum BackendCommand {
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

pub(crate) fn backend(dir: &DataDir, cmd: BackendCommand) -> Result<(), Exit> {
    let path = vault::config_path(dir.root());
    let mut store = open_store(dir)?;
    let mut b = backends(dir, &store)?;
    let me = Actor::current_user();
    match cmd {
        BackendCommand::AddVault { namespace, address, mount, prefix, token_file, ca_file, insecure_http } => {
            vault::check_address(&address, insecure_http).map_err(|e| fail(USAGE, anyhow::anyhow!("--address {e}")))?;
            let cfg = VaultConfig {
                namespace: namespace.as_str().to_owned(),
                address: address.clone(),
                mount,
                prefix,
                token_file,
                ca_file,
                insecure_http,
            };
            b.upsert(cfg);
            b.save(&path, store.integrity())?;
            let rec = NewRecord::ok(&me, Action::BackendChange, &namespace, None)
                .reason(format!("namespace served by vault server {address}"));
            store.record(&rec)?;
            eprintln!("namespace {namespace} is now served by vault server {address}");
            Ok(())
        }
        BackendCommand::List { json } => {
            let mut out = std::io::stdout().lock();
            if json {
                print_json(&mut out, &b.list())?;
            } else {
                writeln!(out, "{:<24} {:<36} {:<12} PREFIX", "NAMESPACE", "ADDRESS", "MOUNT").map_err(stdout_err)?;
                for c in b.list() {
                    writeln!(out, "{:<24} {:<36} {:<12} {}", c.namespace, c.address, c.mount, c.prefix)
                        .map_err(stdout_err)?;
                }
            }
            Ok(())
        }
        BackendCommand::Rm { namespace } => {
            if !b.remove(namespace.as_str()) {
                return Err(fail(USAGE, anyhow::anyhow!("no backend serves namespace {namespace}")));
            }
            b.save(&path, store.integrity())?;
            let rec = NewRecord::ok(&me, Action::BackendChange, &namespace, None)
                .reason("namespace served by the local store again");
            store.record(&rec)?;
            eprintln!("namespace {namespace} is served by the local store again");
            Ok(())
        }
    }
}
