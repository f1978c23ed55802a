//! `host backend ...`: namespaces served by Vault/OpenBao or AWS Secrets
//! Manager instead of the local store.

use super::table::{Align::Left, Table};
use super::*;
use keyhole::audit::{Actor, NewRecord};
use keyhole::backend::aws::AwsConfig;
use keyhole::backend::config::{self, BackendConfig, Backends};
use keyhole::backend::http::check_address;
use keyhole::backend::vault::VaultConfig;
use keyhole::service::ServiceError;

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
    /// Serve a namespace from AWS Secrets Manager. Credentials come from the
    /// standard AWS sources ($AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY/$AWS_SESSION_TOKEN,
    /// else the shared credentials file and $AWS_PROFILE), never from the command line.
    AddAws {
        /// The keyhole namespace it serves.
        namespace: Namespace,
        /// AWS region, e.g. us-east-1.
        #[arg(long)]
        region: String,
        /// Another endpoint (a VPC endpoint, or a local test server).
        #[arg(long, value_name = "URL")]
        endpoint_url: Option<String>,
        /// Prefix of the secret ids (default: keyhole/NAMESPACE/).
        #[arg(long)]
        prefix: Option<String>,
        /// Refuse every write through keyhole (set, rotate, revoke, destroy, rm).
        #[arg(long)]
        read_only: bool,
        /// Allow plain http:// to a non-loopback endpoint (the signature crosses the network in clear).
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
    let path = config::config_path(dir.root());
    let store = open_store(dir)?;
    let mut b = Backends::load(&path, store.integrity())?;
    let me = Actor::current_user();
    let (namespace, cfg) = match cmd {
        BackendCommand::AddVault { namespace, address, mount, prefix, token_file, ca_file, insecure_http } => {
            check_address(&address, insecure_http).map_err(|e| fail(USAGE, anyhow::anyhow!("--address {e}")))?;
            // Re-pointing a namespace keeps the dynamic secrets defined on it.
            let dynamic = match b.for_namespace(&namespace) {
                Some(BackendConfig::Vault(old)) => old.dynamic.clone(),
                _ => Default::default(),
            };
            let cfg = VaultConfig {
                namespace: namespace.as_str().to_owned(),
                address,
                mount,
                prefix,
                token_file,
                ca_file,
                insecure_http,
                dynamic,
            };
            (namespace, Some(BackendConfig::Vault(cfg)))
        }
        BackendCommand::AddAws { namespace, region, endpoint_url, prefix, read_only, insecure_http } => {
            if let Some(url) = &endpoint_url {
                check_address(url, insecure_http).map_err(|e| fail(USAGE, anyhow::anyhow!("--endpoint-url {e}")))?;
            }
            if region.is_empty() || !region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(fail(USAGE, anyhow::anyhow!("--region {region:?} is not an AWS region like us-east-1")));
            }
            let cfg = AwsConfig {
                prefix: prefix.unwrap_or_else(|| format!("keyhole/{}/", namespace.as_str())),
                namespace: namespace.as_str().to_owned(),
                region,
                endpoint_url,
                read_only,
                revoked: Default::default(),
            };
            (namespace, Some(BackendConfig::Aws(cfg)))
        }
        BackendCommand::List { json } => {
            let mut out = std::io::stdout().lock();
            if json {
                return print_json(&mut out, &b.list());
            }
            let mut table = Table::new(&[("NAMESPACE", Left), ("KIND", Left), ("WHERE", Left), ("PREFIX", Left)]);
            for c in b.list() {
                let ro = matches!(c, BackendConfig::Aws(a) if a.read_only);
                let place = format!("{}{}", c.location(), if ro { " (read-only)" } else { "" });
                table.row([c.namespace().to_string(), c.kind().to_string(), place, c.prefix().to_string()]);
            }
            return table.write(&mut out).map_err(stdout_err);
        }
        BackendCommand::Rm { namespace } => (namespace, None),
    };
    let said = match cfg {
        Some(cfg) => {
            let said = format!("namespace {namespace} is now served by {}", keyhole::backend::open(&cfg).describe());
            b.upsert(cfg);
            said
        }
        None if b.remove(&namespace) => format!("namespace {namespace} is served by the local store again"),
        None => return Err(fail(USAGE, anyhow::anyhow!("no backend serves namespace {namespace}"))),
    };
    // On the record before it takes effect (fail closed).
    let mut store = store;
    let key = store.integrity().clone();
    let record = |rec: &NewRecord| store.record(rec).map(drop);
    let apply = || b.save(&path, &key).map_err(|e| ServiceError::Host(e.to_string()));
    keyhole::service::operator::change_backend(record, &me, &namespace, None, &said, apply)?;
    eprintln!("{said}");
    Ok(())
}
