//! `host secret ...`: the secret lifecycle at the command line.

use super::remote::{self, Remote};
use super::table::{
    Align::{Left, Right},
    Table,
};
use super::*;
use keyhole::audit::{self, Actor};
use keyhole::backend::{BackendError, BackendKind, Router};
use keyhole::backup::{self, BundleKey};
use keyhole::network::AllowEntry;
use keyhole::service::{
    self,
    secrets::{SecretDescription, SecretList, state},
};
use keyhole::store::{SecretInfo, SetOptions, VersionInfo, fmt_time, now};
use keyhole::vouch::Voucher;
use zeroize::Zeroizing;

#[derive(Subcommand, Debug)]
pub(crate) enum SecretCommand {
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
        /// Stage the new version instead: tasks keep reading the current one until
        /// `host secret commit NAME --staged` (or `discard`). Local store only.
        #[arg(long)]
        staged: bool,
        #[command(flatten)]
        version: VersionOpts,
    },
    /// Make a secret's staged version current (a rotation the service has accepted).
    Commit {
        /// Secret name.
        name: SecretName,
        #[command(flatten)]
        at: At,
        /// The staged version (required: says what is committed).
        #[arg(long, required = true)]
        staged: bool,
    },
    /// Erase a secret's staged version (a rotation the service did not accept).
    Discard {
        /// Secret name.
        name: SecretName,
        #[command(flatten)]
        at: At,
        /// The staged version (required: says what is erased).
        #[arg(long, required = true)]
        staged: bool,
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
    /// Bind a secret to destinations (or `--clear` the binding): a bound secret never reaches a
    /// plugin, which gets a placeholder the host fills in on requests to these destinations only.
    Bind {
        /// Secret name.
        name: SecretName,
        #[command(flatten)]
        at: At,
        /// A destination, `scheme://host[:port]` (repeat for more); replaces the current list.
        #[arg(long = "destination", value_name = "URL", required_unless_present = "clear")]
        destinations: Vec<AllowEntry>,
        /// Remove the binding: tasks get the value itself again.
        #[arg(long, conflicts_with = "destinations")]
        clear: bool,
    },
    /// Revoke a secret at once, also for running executions; a new `set` or `rotate` lifts it.
    Revoke {
        /// Secret name.
        name: SecretName,
        #[command(flatten)]
        at: At,
    },
    /// Dynamic secrets: credentials minted per execution by Vault/OpenBao
    /// (add, rm, list).
    #[command(subcommand)]
    Dynamic(super::lease::DynamicCommand),
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
    /// Protect a secret (or with --all, every secret of the namespace and
    /// those below it): a flow revision that touches it waits until a
    /// second person holding secret:use there approves it.
    Protect(super::protect::ProtectArgs),
    /// Lift a protection `protect` set.
    Unprotect(super::protect::ProtectArgs),
    /// The protected secrets and namespaces.
    Protections {
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
pub(crate) struct VersionOpts {
    /// The new version expires after this long (e.g. 90d); reads then get `expired`.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    expires_in: Option<Duration>,
    /// Keep this many versions from now on (default 5).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    keep: Option<u32>,
    /// Bind the secret to this destination, `scheme://host[:port]` (repeat for more): tasks then
    /// get a placeholder, and the host puts the value only into requests to these destinations.
    #[arg(long = "destination", value_name = "URL")]
    destinations: Vec<AllowEntry>,
}

#[derive(Args, Debug)]
pub(crate) struct BundleKeyArgs {
    /// Read the bundle passphrase from this file (else $KEYHOLE_EXPORT_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Protect the bundle with a key file instead: base64 of 32 random bytes.
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_file")]
    key_file: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub(crate) enum Charset {
    /// Letters and digits.
    Alnum,
    /// Lowercase hex of N random bytes.
    Hex,
    /// Base64 of N random bytes.
    Base64,
    /// Printable ASCII without space.
    Ascii,
}

/// A new value: generated when `--generate N` was given, else read from
/// `--from-file` or stdin.
fn new_value(generated: Option<(usize, Charset)>, from_file: Option<PathBuf>) -> Result<SecretValue, Exit> {
    match generated {
        Some((n, charset)) => generate(n, charset),
        None => read_value(from_file.as_deref()).map_err(|e| fail(USAGE, e)),
    }
}

pub(crate) fn generate(n: usize, charset: Charset) -> Result<SecretValue, Exit> {
    let charset = match charset {
        Charset::Alnum => keyhole::secret::Charset::Alnum,
        Charset::Hex => keyhole::secret::Charset::Hex,
        Charset::Base64 => keyhole::secret::Charset::Base64,
        Charset::Ascii => keyhole::secret::Charset::Ascii,
    };
    SecretValue::generate(n, charset).map_err(|e| fail(USAGE, anyhow::anyhow!("--generate {e}")))
}

pub(crate) fn bundle_key(args: &BundleKeyArgs) -> Result<BundleKey, Exit> {
    use base64::Engine as _;
    if let Some(f) = &args.key_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(f)
                .map_err(|e| fail(USAGE, anyhow::anyhow!("cannot read key file {}: {e}", f.display())))?,
        );
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| fail(USAGE, anyhow::anyhow!("key file {} is not base64: {e}", f.display())))?,
        );
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            fail(USAGE, anyhow::anyhow!("key file {} must hold 32 bytes, not {}", f.display(), bytes.len()))
        })?;
        return Ok(BundleKey::Raw(Zeroizing::new(arr)));
    }
    let pass = match &args.passphrase_file {
        Some(f) => Zeroizing::new(
            std::fs::read_to_string(f)
                .map_err(|e| fail(USAGE, anyhow::anyhow!("cannot read passphrase file {}: {e}", f.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        ),
        None => Zeroizing::new(std::env::var("KEYHOLE_EXPORT_PASSPHRASE").map_err(|_| {
            fail(USAGE, anyhow::anyhow!("give --passphrase-file, --key-file or $KEYHOLE_EXPORT_PASSPHRASE"))
        })?),
    };
    if pass.len() < 12 {
        return Err(fail(USAGE, anyhow::anyhow!("the passphrase must be at least 12 characters")));
    }
    Ok(BundleKey::Passphrase(pass))
}

fn put_remote(
    remote: &Remote,
    name: &SecretName,
    ns: &Namespace,
    value: &SecretValue,
    v: VersionOpts,
    rotate: bool,
    staged: bool,
) -> Result<(), Exit> {
    let text = value.expose();
    let destinations = (!v.destinations.is_empty()).then(|| v.destinations.iter().map(ToString::to_string).collect());
    // Encoded straight into a zeroizing buffer: the value is never in a
    // `String` of its own.
    let body = keyhole::service::bodies::PutSecret {
        value: Some(text),
        generate: None,
        rotate,
        expires_in: v.expires_in.map(|d| format!("{}s", d.as_secs())),
        keep: v.keep,
        destinations,
        staged,
    };
    // Room for the worst escaping (\u00XX per byte), so the buffer never moves.
    let mut buf = Zeroizing::new(Vec::with_capacity(text.len() * 6 + 128));
    serde_json::to_writer(&mut *buf, &body).expect("JSON encodes");
    let path = format!("/api/v1/secrets/{}/{}", remote::ns_path(ns), name);
    let what = format!("store {name} in namespace {ns}");
    let answer = remote.put_bytes(&what, &path, "application/json", &buf)?;
    let verb = if staged {
        "staged"
    } else if rotate {
        "rotated"
    } else {
        "stored"
    };
    let written: keyhole::service::bodies::SecretWritten = remote::typed(answer, "a stored version")?;
    eprintln!("{verb} {name}: version {} in namespace {ns}", written.version);
    Ok(())
}

/// `secret commit|discard NAME --staged` through the API (`op` is the route).
fn remote_staged(remote: &Remote, name: &SecretName, ns: &Namespace, op: &str) -> Result<(), Exit> {
    let path = format!("/api/v1/secrets/{}/{name}/{op}", remote::ns_path(ns));
    let v = remote.send(&format!("{op} the staged version of {name}"), "POST", &path, &serde_json::json!({}), &[])?;
    let written: keyhole::service::bodies::SecretWritten = remote::typed(v, "a staged version's end")?;
    let version = written.version;
    match op {
        "commit" => eprintln!("committed {name}: version {version} is current in namespace {ns}"),
        _ => eprintln!("discarded {name}: staged version {version} in namespace {ns} is erased"),
    }
    Ok(())
}

/// The commands that go to the server when `KEYHOLE_ADDR` is set: the ones
/// a secret manager uses day to day. Values still come from stdin, a file
/// or `--generate`, and are never printed.
fn remote_secret(remote: &Remote, cmd: SecretCommand) -> Result<(), Exit> {
    let mut out = std::io::stdout().lock();
    match cmd {
        SecretCommand::Set { name, at, from_file, version: v } => {
            put_remote(remote, &name, &at.namespace, &new_value(None, from_file)?, v, false, false)
        }
        SecretCommand::Rotate { name, at, generate: g, charset, from_file, staged, version: v } => {
            put_remote(remote, &name, &at.namespace, &new_value(g.map(|n| (n, charset)), from_file)?, v, true, staged)
        }
        SecretCommand::Commit { name, at, .. } => remote_staged(remote, &name, &at.namespace, "commit"),
        SecretCommand::Discard { name, at, .. } => remote_staged(remote, &name, &at.namespace, "discard"),
        SecretCommand::List { namespace, expiring, json } => {
            let mut query = Vec::new();
            if let Some(ns) = &namespace {
                query.push(format!("namespace={}", remote::path_segment(ns.as_str())));
            }
            if let Some(d) = expiring {
                query.push(format!("expiring={}s", d.as_secs()));
            }
            let path = if query.is_empty() {
                "/api/v1/secrets".to_owned()
            } else {
                format!("/api/v1/secrets?{}", query.join("&"))
            };
            let list: SecretList = remote::typed(remote.get("list secrets", &path)?, "a secret list")?;
            print_secret_list(&mut out, &list, json)
        }
        SecretCommand::Describe { name, at, json } => {
            let path = format!("/api/v1/secrets/{}/{}", remote::ns_path(&at.namespace), name);
            let v = remote.get(&format!("describe {name} in namespace {}", at.namespace), &path)?;
            print_description(&mut out, &remote::typed(v, "a secret's description")?, json)
        }
        SecretCommand::Versions { name, at, json } => {
            let path = format!("/api/v1/secrets/{}/{}", remote::ns_path(&at.namespace), name);
            let v = remote.get(&format!("list the versions of {name} in namespace {}", at.namespace), &path)?;
            let described: keyhole::service::secrets::SecretDescription = remote::typed(v, "a secret's description")?;
            let versions = described.versions;
            print_versions(&mut out, versions, json)
        }
        SecretCommand::Bind { name, at, destinations, clear: _ } => {
            let path = format!("/api/v1/secrets/{}/{}/destinations", remote::ns_path(&at.namespace), name);
            let list: Vec<String> = destinations.iter().map(ToString::to_string).collect();
            let body = remote::body(&keyhole::service::bodies::BindSecret { destinations: list.clone() });
            remote.send(&format!("bind {name} in namespace {}", at.namespace), "PUT", &path, &body, &[])?;
            bound_note(&name, &at.namespace, &list);
            Ok(())
        }
        SecretCommand::Revoke { name, at } => {
            let path = format!("/api/v1/secrets/{}/{}/revoke", remote::ns_path(&at.namespace), name);
            let v = remote.send(&format!("revoke {name}"), "POST", &path, &serde_json::json!({}), &[])?;
            let ended: keyhole::service::bodies::SecretEnded = remote::typed(v, "a revocation")?;
            eprintln!("revoked {name} in namespace {}: {}", at.namespace, ended.done);
            Ok(())
        }
        SecretCommand::Destroy { name, at } => {
            let path = format!("/api/v1/secrets/{}/{}", remote::ns_path(&at.namespace), name);
            let v = remote.delete(&format!("destroy {name}"), &path)?;
            let ended: keyhole::service::bodies::SecretEnded = remote::typed(v, "a destruction")?;
            eprintln!("destroyed {name} in namespace {}: {}", at.namespace, ended.done);
            Ok(())
        }
        _ => Err(fail(
            USAGE,
            anyhow::anyhow!(
                "with KEYHOLE_ADDR set, `secret` takes set, rotate, commit, discard, list, describe, versions, \
                 bind, revoke, destroy, protect, unprotect and protections; run the rest where the data directory is"
            ),
        )),
    }
}

fn print_versions(out: &mut impl Write, versions: Vec<VersionInfo>, json: bool) -> Result<(), Exit> {
    if json {
        return print_json(out, &versions);
    }
    let mut table = Table::new(&[("VERSION", Right), ("CREATED", Left), ("EXPIRES", Left), ("", Left)]);
    let current = versions.iter().find(|v| v.current).map(|v| v.version);
    for v in versions {
        let staged = current.is_some_and(|c| v.version > c) && v.version_id.is_none();
        let cur = if v.current {
            "(current)"
        } else if staged {
            "(staged: not read until committed)"
        } else {
            ""
        };
        let exp = v.expires_at.map_or("-".to_owned(), fmt_time);
        let version = v.version_id.unwrap_or_else(|| v.version.to_string());
        table.row([version, fmt_time(v.created_at), exp, cur.to_owned()]);
    }
    table.write(out).map_err(stdout_err)
}

/// What `secret bind` says it did.
fn bound_note(name: &SecretName, ns: &Namespace, destinations: &[String]) {
    if destinations.is_empty() {
        eprintln!("{name} in namespace {ns} is no longer bound: tasks granted it get its value");
    } else {
        eprintln!(
            "{name} in namespace {ns} is bound to {}: tasks get a placeholder, the value goes only there",
            destinations.join(", ")
        );
    }
}

/// `secret list`, local or remote: the table (or JSON) on stdout, each
/// backend that did not answer on stderr; exit 5 after it when a listed
/// row failed its integrity check.
fn print_secret_list(out: &mut impl Write, list: &SecretList, json: bool) -> Result<(), Exit> {
    for u in &list.unavailable {
        let ns = Namespace::new(&u.namespace).unwrap_or_default();
        eprintln!("(namespace {ns} is unavailable: {}: {})", u.backend, u.error);
    }
    if json {
        print_json(out, &list.secrets)?;
    } else {
        let mut table = Table::new(&[
            ("NAMESPACE", Left),
            ("NAME", Left),
            ("VERSION", Right),
            ("CREATED", Left),
            ("UPDATED", Left),
            ("STATE", Left),
        ]);
        let t = now();
        for s in &list.secrets {
            let ns = if s.namespace.is_empty() { "(root)" } else { &s.namespace };
            let version = s.version_id.as_deref().map_or(s.version.to_string(), short_id);
            let (version, created, updated) = match s.dynamic {
                Some(_) => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
                None => (version, fmt_time(s.created_at), fmt_time(s.updated_at)),
            };
            table.row([ns.to_owned(), s.name.to_string(), version, created, updated, state(s, t)]);
        }
        table.write(out).map_err(stdout_err)?;
    }
    let bad: Vec<&SecretInfo> = list.tampered().collect();
    match bad.as_slice() {
        [] => Ok(()),
        [one, ..] => Err(fail(
            TAMPERED,
            anyhow::anyhow!(
                "{} secret(s) failed their integrity check (first: {} in namespace {:?}): the store was edited outside \
                 keyhole; see `host audit list --action integrity.check`",
                bad.len(),
                one.name,
                one.namespace
            ),
        )),
    }
}

/// `secret describe`, local or remote: `key value` lines, or JSON; exit 5
/// after it when the secret failed its integrity check.
fn print_description(out: &mut impl Write, d: &SecretDescription, json: bool) -> Result<(), Exit> {
    if json {
        print_json(out, d)?;
    } else {
        let doc = serde_json::to_value(d).expect("a description encodes");
        for (k, v) in doc.as_object().expect("an object") {
            let shown = match (k.as_str(), v) {
                (_, serde_json::Value::Null) => "-".into(),
                (_, serde_json::Value::String(s)) => s.clone(),
                ("versions", serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|v| v.get("version_id").unwrap_or(&v["version"]).to_string().trim_matches('"').to_owned())
                    .collect::<Vec<_>>()
                    .join(", "),
                ("staged", v) => format!("version {} (staged {})", v["version"], v["created"].as_str().unwrap_or("?")),
                ("last_read", v) => {
                    let by = match (v["execution"].as_str(), v["task"].as_str()) {
                        (Some(e), task) => format!(" by execution {e}, task {}", task.unwrap_or("?")),
                        (None, _) => " by an operator".into(),
                    };
                    format!("{}{by}", v["time"].as_str().unwrap_or("?"))
                }
                (_, serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(", "),
                (_, other) => other.to_string(),
            };
            writeln!(out, "{k:<16} {shown}").map_err(stdout_err)?;
        }
    }
    if d.tampered {
        return Err(fail(
            TAMPERED,
            anyhow::anyhow!(
                "{} in namespace {:?} failed its integrity check: the store was edited outside keyhole; see \
                 `host audit list --action integrity.check`",
                d.name,
                d.namespace
            ),
        ));
    }
    Ok(())
}

pub(crate) fn secret(dir: &DataDir, cmd: SecretCommand) -> Result<(), Exit> {
    use super::protect;
    let cmd = match cmd {
        SecretCommand::Protect(a) => return protect::set(dir, a, true),
        SecretCommand::Unprotect(a) => return protect::set(dir, a, false),
        SecretCommand::Protections { json } => return protect::list(dir, json),
        cmd => cmd,
    };
    if let Some(r) = Remote::from_env()? {
        return remote_secret(&r, cmd);
    }
    let me = Actor::current_user();
    let mut out = std::io::stdout().lock();
    match cmd {
        SecretCommand::Protect(_) | SecretCommand::Unprotect(_) | SecretCommand::Protections { .. } => {
            unreachable!("handled above")
        }
        SecretCommand::Dynamic(cmd) => super::lease::dynamic(dir, cmd),
        SecretCommand::Set { name, at, from_file, version: v } => {
            store_value(dir, &name, &at.namespace, &new_value(None, from_file)?, v, false)
        }
        SecretCommand::Rotate { name, at, generate: g, charset, from_file, staged: true, version: v } => {
            if !v.destinations.is_empty() || v.keep.is_some() {
                return Err(fail(
                    USAGE,
                    anyhow::anyhow!("--staged takes no --destination or --keep: commit applies the secret's own"),
                ));
            }
            let value = new_value(g.map(|n| (n, charset)), from_file)?;
            let expires_at = v.expires_in.map(|d| now() + d.as_secs() as i64);
            let secrets = open_secrets(dir)?;
            let version = secrets.stage(&me, &at.namespace, &name, &value, expires_at)?;
            let ns = &at.namespace;
            let flag = if ns.is_root() { String::new() } else { format!(" -n {ns}") };
            eprintln!(
                "staged {name}: version {version} in namespace {ns}; tasks keep reading the current version until \
                 `host secret commit {name}{flag} --staged` (or `discard`)"
            );
            Ok(())
        }
        SecretCommand::Rotate { name, at, generate: g, charset, from_file, staged: false, version: v } => {
            store_value(dir, &name, &at.namespace, &new_value(g.map(|n| (n, charset)), from_file)?, v, true)
        }
        SecretCommand::Commit { name, at, .. } => {
            let version = open_secrets(dir)?.commit_staged(&me, &at.namespace, &name)?;
            eprintln!("committed {name}: version {version} is current in namespace {}", at.namespace);
            Ok(())
        }
        SecretCommand::Discard { name, at, .. } => {
            let version = open_secrets(dir)?.discard_staged(&me, &at.namespace, &name)?;
            eprintln!("discarded {name}: staged version {version} in namespace {} is erased", at.namespace);
            Ok(())
        }
        SecretCommand::List { namespace, expiring, json } => {
            let secrets = open_secrets(dir)?;
            let before = expiring.map(|d| now() + d.as_secs() as i64);
            let list = service::secrets::list(&secrets, &Voucher::root(), namespace.as_ref(), before)?;
            print_secret_list(&mut out, &list, json)
        }
        SecretCommand::Versions { name, at, json } => {
            let secrets = open_secrets(dir)?;
            let versions =
                secrets.backend_for(&at.namespace).versions(&at.namespace, &name).map_err(checked(&secrets))?;
            print_versions(&mut out, versions, json)?;
            Ok(())
        }
        SecretCommand::Describe { name, at, json } => {
            let secrets = open_secrets(dir)?;
            let conn = audit::open(&dir.store_path(), false)?;
            let d =
                service::secrets::describe(&secrets, &dir.store_path(), &conn, &Voucher::root(), &at.namespace, &name)?;
            print_description(&mut out, &d, json)
        }
        SecretCommand::Bind { name, at, destinations, clear: _ } => {
            let secrets = open_secrets(dir)?;
            secrets.bind(&me, &at.namespace, &name, &destinations).map_err(checked(&secrets))?;
            let list: Vec<String> = destinations.iter().map(ToString::to_string).collect();
            bound_note(&name, &at.namespace, &list);
            Ok(())
        }
        SecretCommand::Revoke { name, at } => {
            let secrets = open_secrets(dir)?;
            let done = secrets.revoke(&me, &at.namespace, &name)?;
            eprintln!("revoked {name} in namespace {}: {done}", at.namespace);
            Ok(())
        }
        SecretCommand::Destroy { name, at } => {
            let secrets = open_secrets(dir)?;
            let done = secrets.destroy(&me, &at.namespace, &name)?;
            eprintln!("destroyed {name} in namespace {}: {done}", at.namespace);
            Ok(())
        }
        SecretCommand::Rm { name, at } => {
            let secrets = open_secrets(dir)?;
            if secrets.remove(&me, &at.namespace, &name)? {
                eprintln!("removed {name} from namespace {}", at.namespace);
                Ok(())
            } else {
                Err(Exit::from(StoreError::NotFound { namespace: at.namespace, name }))
            }
        }
        SecretCommand::Export { output, namespace, key } => {
            let key = bundle_key(&key)?;
            let secrets = open_secrets(dir)?;
            let exported = secrets.local().store().export(namespace.as_ref(), &me);
            let exported = exported.map_err(|e| checked(&secrets)(e.into()))?;
            let n = exported.len();
            let text = backup::seal(exported, &key)?;
            keyhole::data_dir::write_private_atomic(&output, text.as_bytes())
                .map_err(|e| fail(HOST, anyhow::anyhow!("cannot write {}: {e}", output.display())))?;
            eprintln!("exported {n} secret(s) to {}", output.display());
            Ok(())
        }
        SecretCommand::Import { file, overwrite, key } => {
            let key = bundle_key(&key)?;
            let text = std::fs::read_to_string(&file)
                .map_err(|e| fail(USAGE, anyhow::anyhow!("cannot read {}: {e}", file.display())))?;
            // Decrypt and check everything before the store is opened for writing.
            let bundle = backup::open(&text, &key)
                .map_err(|e| fail(USAGE, anyhow::Error::from(e).context(format!("bundle {}", file.display()))))?;
            let mut store = open_store(dir)?;
            let report = store.import(&bundle, overwrite, &me, || failpoint("import-before-commit"))?;
            eprintln!(
                "imported {} secret(s){}",
                report.imported.len(),
                if report.skipped.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; skipped {} that exist (use --overwrite): {}",
                        report.skipped.len(),
                        report.skipped.join(", ")
                    )
                }
            );
            Ok(())
        }
    }
}

/// The first characters of a long version id, for tables.
fn short_id(id: &str) -> String {
    id.chars().take(8).collect()
}

/// Maps a backend failure to its exit, recording a failed integrity check
/// in the audit trail first.
pub(crate) fn checked(secrets: &Router) -> impl FnOnce(BackendError) -> Exit + '_ {
    |e| {
        secrets.record_tamper(&e, &Actor::current_user());
        Exit::from(e)
    }
}

pub(crate) fn store_value(
    dir: &DataDir,
    name: &SecretName,
    ns: &Namespace,
    value: &SecretValue,
    v: VersionOpts,
    rotate: bool,
) -> Result<(), Exit> {
    let expires_at = v.expires_in.map(|d| now() + d.as_secs() as i64);
    let secrets = open_secrets(dir)?;
    let destinations = (!v.destinations.is_empty()).then_some(v.destinations);
    let opts = SetOptions { expires_at, keep: v.keep, rotate, destinations };
    let version = secrets.set(&Actor::current_user(), ns, name, value, &opts).map_err(|e| match e {
        e @ (BackendError::Store(StoreError::NotFound { .. }) | BackendError::NotFound { .. }) if rotate => {
            fail(USAGE, anyhow::Error::from(e).context("rotate needs an existing secret: use `host secret set`"))
        }
        e => Exit::from(e),
    })?;
    let verb = if rotate { "rotated" } else { "stored" };
    let exp = expires_at.map(|x| format!(", expires {}", fmt_time(x))).unwrap_or_default();
    let backend = secrets.backend_for(ns);
    let place = if backend.kind() == BackendKind::Local { String::new() } else { format!(" ({})", backend.describe()) };
    eprintln!("{verb} {name}: version {version} in namespace {ns}{exp}{place}");
    Ok(())
}
