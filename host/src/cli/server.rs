//! `host serve`, `host token ...` and `host role ...`: the server and its
//! principals, managed on the machine that holds the data directory (or,
//! for tokens, through the API when `KEYHOLE_ADDR` is set).

use super::remote::{self, Remote};
use super::table::{Align::Left, Table};
use super::*;
use keyhole::authz::{Permission, Role};
use keyhole::server::{ServeError, ServeOptions};
use keyhole::service::{self, tokens::IssueRequest};
use keyhole::tokens::{TokenError, TokenInfo};
use keyhole::vouch::Voucher;
use serde_json::Value;
use std::net::SocketAddr;
use zeroize::Zeroizing;

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on; anything but loopback needs TLS.
    #[arg(long, default_value = "127.0.0.1:8420")]
    listen: SocketAddr,
    /// PEM certificate chain for TLS.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Threads running executions.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// How long running executions may go on after SIGTERM/SIGINT before
    /// they are recorded as interrupted.
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "DURATION")]
    shutdown_timeout: Duration,
    /// Failed authentications allowed per client address per minute; past
    /// it the address gets 429 for the rest of the minute.
    #[arg(long, default_value_t = 10, value_name = "N")]
    max_auth_failures: u32,
    /// How long a web console session lasts without a request.
    #[arg(long, value_parser = parse_duration, default_value = "15m", value_name = "DURATION")]
    session_idle: Duration,
    /// The longest a token issued through the API may live; one issued
    /// without a TTL gets this.
    #[arg(long, value_parser = parse_duration, default_value = "90d", value_name = "DURATION")]
    max_token_ttl: Duration,
    /// Plugin bytes one namespace may hold (uploads past it are refused
    /// with 413; `host plugin gc` frees what no revision uses).
    #[arg(long, value_parser = parse_bytes, default_value = "1GiB", value_name = "SIZE")]
    max_plugin_bytes: u64,
    /// A request's headers must have arrived this long after it began;
    /// else the connection is closed (slow or silent clients).
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    header_timeout: Duration,
    /// A connection that sends and receives nothing for this long is closed.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    idle_timeout: Duration,
    /// Connections served at once; more are closed as they are accepted.
    /// Default: what the open-file limit (raised to its hard limit at
    /// start) leaves room for, at most 16384.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Memory every running task together may have: each reserves its
    /// `limits.memory` before it starts and waits while the budget is
    /// spent. Default: half the machine's memory.
    #[arg(long, value_parser = parse_size_arg, value_name = "SIZE")]
    max_memory: Option<usize>,
}

fn parse_size_arg(s: &str) -> Result<usize, String> {
    keyhole::limits::parse_size(s)
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_size_arg(s).map(|n| n as u64)
}

#[derive(Subcommand, Debug)]
pub(crate) enum TokenCommand {
    /// Issue a token (printed once, on stdout) for a role in a namespace.
    Create {
        /// A name for it, unique among live tokens (ci-bot, alice).
        #[arg(long)]
        name: String,
        /// Role: admin, secret-manager, developer, builder, runner, auditor, approver, or a custom one.
        #[arg(long)]
        role: String,
        /// Where the role applies: this namespace and its children. Default: every namespace.
        #[arg(long, short, default_value = "")]
        namespace: Namespace,
        /// Lifetime (30d, 12h); default: until revoked.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// Every token: name, roles, scopes, created, expires, last used (never the token).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name or id: it authenticates no one from now on.
    Revoke {
        /// Name or id.
        token: String,
    },
    /// Ask the server ($KEYHOLE_ADDR) which token you hold: name, roles, expiry.
    LookupSelf {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum RoleCommand {
    /// Define (or redefine) a custom role.
    Create {
        /// Its name.
        name: String,
        /// A permission it allows (repeat), e.g. secret:write.
        #[arg(long)]
        allow: Vec<Permission>,
        /// A permission it denies (repeat): wins over an allow at the same depth.
        #[arg(long)]
        deny: Vec<Permission>,
    },
    /// Built-in and custom roles with their permissions.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a custom role no live token is bound to.
    Rm {
        /// Its name.
        name: String,
    },
}

impl From<TokenError> for Exit {
    fn from(e: TokenError) -> Self {
        let code = match e {
            TokenError::Db(_) => HOST,
            TokenError::Tampered(_) => TAMPERED,
            _ => USAGE,
        };
        fail(code, e)
    }
}

pub(crate) fn serve(dir: &DataDir, args: ServeArgs, compiler: keyhole::runtime::Compiler) -> Result<(), Exit> {
    let opts = ServeOptions {
        listen: args.listen,
        tls: args.tls_cert.zip(args.tls_key),
        workers: args.workers,
        shutdown_timeout: args.shutdown_timeout,
        compiler,
        max_auth_failures: args.max_auth_failures,
        session_idle: args.session_idle,
        max_token_ttl: args.max_token_ttl,
        max_plugin_bytes: args.max_plugin_bytes,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
        max_memory: args.max_memory,
    };
    keyhole::server::serve(dir, opts).map_err(|e| match e {
        ServeError::Open(e) => Exit::from(*e),
        e @ ServeError::Refused(_) => fail(USAGE, e),
        e @ ServeError::Io(_) => fail(HOST, e),
    })
}

/// What `token create` prints once, on stdout, and says on stderr.
fn announce_token(out: &mut impl Write, secret: &str, info: &TokenInfo) -> Result<(), Exit> {
    writeln!(out, "{secret}").map_err(stdout_err)?;
    let roles: Vec<String> = info.bindings.iter().map(ToString::to_string).collect();
    let exp = info.expires.as_deref().map(|x| format!(", expires {x}")).unwrap_or_default();
    eprintln!(
        "token {} ({}) created with {}{exp}. It is shown this once: keyhole keeps only its hash.",
        info.name,
        info.id,
        roles.join(", ")
    );
    Ok(())
}

fn print_tokens(out: &mut impl Write, list: Vec<TokenInfo>, json: bool) -> Result<(), Exit> {
    if json {
        return print_json(out, &list);
    }
    let mut table = Table::new(&[
        ("ID", Left),
        ("NAME", Left),
        ("ROLES", Left),
        ("CREATED", Left),
        ("EXPIRES", Left),
        ("LAST USED", Left),
        ("STATE", Left),
    ]);
    for t in list {
        let roles: Vec<String> = t.bindings.iter().map(ToString::to_string).collect();
        table.row([
            t.id,
            t.name,
            roles.join(", "),
            t.created,
            t.expires.unwrap_or_else(|| "-".into()),
            t.last_used.unwrap_or_else(|| "-".into()),
            t.state,
        ]);
    }
    table.write(out).map_err(stdout_err)
}

fn token_info(v: Value) -> Result<TokenInfo, Exit> {
    remote::typed(v, "a token")
}

/// `host token ...` through the API, as the principal `remote` holds.
fn remote_token(remote: &Remote, cmd: TokenCommand) -> Result<(), Exit> {
    let mut out = std::io::stdout().lock();
    match cmd {
        TokenCommand::Create { name, role, namespace, ttl } => {
            let ttl = ttl.map(|t| format!("{}s", t.as_secs()));
            let body = super::remote::body(&keyhole::service::bodies::NewToken { name, role, namespace, ttl });
            let v = remote.send("create a token", "POST", "/api/v1/tokens", &body, &[])?;
            let issued: keyhole::service::bodies::IssuedToken = super::remote::typed(v, "an issued token")?;
            let secret = Zeroizing::new(issued.token);
            announce_token(&mut out, &secret, &issued.info)
        }
        TokenCommand::List { json } => {
            let v = remote.get("list tokens", "/api/v1/tokens")?;
            print_tokens(&mut out, remote::typed(v, "a token list")?, json)
        }
        TokenCommand::Revoke { token } => {
            let path = format!("/api/v1/tokens/{}", remote::path_segment(&token));
            let info = token_info(remote.delete("revoke a token", &path)?)?;
            eprintln!("revoked token {} ({})", info.name, info.id);
            Ok(())
        }
        TokenCommand::LookupSelf { json } => {
            let info = token_info(remote.get("look up your token", "/api/v1/tokens/self")?)?;
            print_tokens(&mut out, vec![info], json)
        }
    }
}

pub(crate) fn token(dir: &DataDir, cmd: TokenCommand) -> Result<(), Exit> {
    if let Some(r) = Remote::from_env()? {
        return remote_token(&r, cmd);
    }
    if let TokenCommand::LookupSelf { .. } = cmd {
        return Err(fail(
            USAGE,
            anyhow::anyhow!("lookup-self asks a server which token you hold: set KEYHOLE_ADDR and KEYHOLE_TOKEN"),
        ));
    }
    let state = open_state(dir)?;
    let me = Voucher::root();
    let mut out = std::io::stdout().lock();
    match cmd {
        TokenCommand::Create { name, role, namespace, ttl } => {
            let req = IssueRequest { name, role, namespace, ttl };
            let (info, secret) = service::tokens::issue(&state, &me, req, None)?;
            announce_token(&mut out, secret.expose(), &info)?;
        }
        TokenCommand::List { json } => print_tokens(&mut out, service::tokens::list(&state, &me)?, json)?,
        TokenCommand::Revoke { token } => {
            let info = service::tokens::revoke(&state, &me, &token)?;
            eprintln!("revoked token {} ({})", info.name, info.id);
        }
        TokenCommand::LookupSelf { .. } => unreachable!("answered above"),
    }
    Ok(())
}

pub(crate) fn role(dir: &DataDir, cmd: RoleCommand) -> Result<(), Exit> {
    let state = open_state(dir)?;
    let me = Voucher::root();
    let mut out = std::io::stdout().lock();
    match cmd {
        RoleCommand::Create { name, allow, deny } => {
            service::tokens::define_role(&state, &me, &Role { name: name.clone(), allow, deny })?;
            eprintln!("role {name} defined");
        }
        RoleCommand::List { json } => {
            let roles = state.tokens().roles()?;
            if json {
                return print_json(&mut out, &roles);
            }
            let mut table = Table::new(&[("ROLE", Left), ("ALLOWS", Left), ("DENIES", Left)]);
            for r in roles {
                let names = |ps: &[Permission]| ps.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(" ");
                let deny = if r.deny.is_empty() { "-".into() } else { names(&r.deny) };
                table.row([r.name.clone(), names(&r.allow), deny]);
            }
            table.write(&mut out).map_err(stdout_err)?;
        }
        RoleCommand::Rm { name } => {
            service::tokens::remove_role(&state, &me, &name)?;
            eprintln!("role {name} removed");
        }
    }
    Ok(())
}
