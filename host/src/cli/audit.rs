//! `host audit ...`: list, export, verify (against a signed checkpoint),
//! checkpoint, prune, usage, fingerprints.

use super::table::{
    Align::{Left, Right},
    Table,
};
use super::*;
use keyhole::audit::{self, Actor, AuditKey, Verdict};

#[derive(Args, Debug, Default)]
pub(crate) struct AuditFilter {
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
    /// Only records by this actor: a token's name or id, or an OS user's name.
    #[arg(long)]
    actor: Option<String>,
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
pub(crate) enum AuditCommand {
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

pub(crate) fn read_checkpoint_file(
    conn: &rusqlite::Connection,
    key: &keyhole::crypto::IntegrityKey,
    file: &Path,
) -> Result<audit::Checkpoint, Exit> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| fail(USAGE, anyhow::anyhow!("cannot read checkpoint {}: {e}", file.display())))?;
    audit::read_checkpoint(conn, key, &text)
        .map_err(|e| fail(TASK_ERROR, anyhow::anyhow!("checkpoint {} is not valid: {e}", file.display())))
}

pub(crate) fn audit_filter(f: AuditFilter) -> audit::Filter {
    audit::Filter {
        secret: f.secret,
        namespace: f.namespace,
        flow: f.flow,
        execution: f.execution,
        outcome: f.outcome,
        action: f.action,
        actor: f.actor,
        since: f.since,
        until: f.until,
        limit: f.limit,
        before: None,
    }
}

fn print_records(out: &mut impl Write, records: Vec<audit::Record>, json: bool) -> Result<(), Exit> {
    if json {
        return print_json(out, &records);
    }
    let mut table = Table::new(&[
        ("SEQ", Right),
        ("TIME", Left),
        ("ACTION", Left),
        ("OUTCOME", Left),
        ("ACTOR", Left),
        ("NAMESPACE", Left),
        ("SECRET", Left),
        ("VER", Right),
        ("REASON", Left),
    ]);
    for r in records {
        let ns = if r.namespace.is_empty() { "(root)".to_owned() } else { r.namespace };
        table.row([
            r.seq.to_string(),
            r.time,
            r.action,
            r.outcome,
            r.actor,
            ns,
            r.secret.unwrap_or_else(|| "-".into()),
            r.version.map_or("-".to_owned(), |v| v.to_string()),
            r.reason.unwrap_or_default(),
        ]);
    }
    table.write(out).map_err(stdout_err)
}

/// Prints what `verify` found about the log at `place`; a broken log is
/// exit code 1, naming the record.
fn report_verdict(out: &mut impl Write, verdict: &Verdict, json: bool, place: &str) -> Result<(), Exit> {
    if json {
        print_json(out, verdict)?;
    }
    match verdict {
        Verdict::Intact { records, head_seq, head_hash, from_seq, key_id, keyed_from } => {
            if !json {
                let legacy = if *keyed_from > 1 {
                    format!(" (records before {keyed_from} predate the keyed chain: plain SHA-256)")
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "audit log intact: {records} records (seq {from_seq}..{head_seq}), head hash {head_hash}, \
                     verified with audit key {key_id}{legacy}"
                )
                .map_err(stdout_err)?;
            }
            Ok(())
        }
        Verdict::Broken { seq, problem } => {
            Err(fail(TASK_ERROR, anyhow::anyhow!("audit log {place} is broken at record {seq}: {problem}")))
        }
    }
}

/// `host audit list` and `audit verify` through the API.
fn remote_audit(remote: &super::remote::Remote, cmd: AuditCommand) -> Result<(), Exit> {
    if let AuditCommand::Verify { json, against: None } = cmd {
        let v = remote.get("verify the audit log", "/api/v1/audit/verify")?;
        let verdict: Verdict = serde_json::from_value(v)
            .map_err(|e| fail(HOST, anyhow::anyhow!("the server's answer is not a verdict: {e}")))?;
        return report_verdict(&mut std::io::stdout().lock(), &verdict, json, "on the server");
    }
    let AuditCommand::List { filter, json } = cmd else {
        return Err(fail(
            USAGE,
            anyhow::anyhow!(
                "with KEYHOLE_ADDR set only `audit list` and `audit verify` (without --against) go to the \
                 server; run the rest where the data directory is"
            ),
        ));
    };
    let query = serde_urlencoded::to_string(audit_filter(filter)).expect("a filter encodes");
    let path = if query.is_empty() { "/api/v1/audit".to_owned() } else { format!("/api/v1/audit?{query}") };
    let v = remote.get("list audit records", &path)?;
    let records = serde_json::from_value(v)
        .map_err(|e| fail(HOST, anyhow::anyhow!("the server's answer is not a list of audit records: {e}")))?;
    print_records(&mut std::io::stdout().lock(), records, json)
}

pub(crate) fn audit_cmd(dir: &DataDir, cmd: AuditCommand) -> Result<(), Exit> {
    if let Some(r) = super::remote::Remote::from_env()? {
        return remote_audit(&r, cmd);
    }
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
    let mut conn = audit::open(&path, false)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        AuditCommand::List { filter, json } => {
            print_records(&mut out, audit::list(&conn, &path, &audit_filter(filter))?, json)
        }
        AuditCommand::Export { format: _, filter } => {
            for r in audit::list(&conn, &path, &audit_filter(filter))? {
                serde_json::to_writer(&mut out, &r).map_err(stdout_err)?;
                writeln!(out).map_err(stdout_err)?;
            }
            Ok(())
        }
        AuditCommand::Verify { json, against } => {
            let verdict = audit::verify(&conn, &path, &key())?;
            let checkpoint = match &against {
                Some(file) => Some(read_checkpoint_file(&conn, &key(), file)?),
                None => None,
            };
            if let Some(c) = &checkpoint {
                audit::check_against(&conn, &path, &verdict, c).map_err(|e| {
                    fail(TASK_ERROR, anyhow::Error::from(e).context(format!("audit log {}", path.display())))
                })?;
            }
            report_verdict(&mut out, &verdict, json, &path.display().to_string())?;
            if let (Some(c), Some(f)) = (&checkpoint, &against)
                && !json
            {
                writeln!(out, "contains checkpoint {} (record {}, {})", f.display(), c.seq, c.time)
                    .map_err(stdout_err)?;
            }
            Ok(())
        }
        AuditCommand::Checkpoint { output } => {
            let note = audit::checkpoint_note(&conn, &path, &key())?;
            let Some(file) = output else {
                return write!(out, "{note}").map_err(stdout_err);
            };
            if file.exists() {
                // Like a sumdb client: never go back from what is on file.
                let old = read_checkpoint_file(&conn, &key(), &file)?;
                let new = audit::read_checkpoint(&conn, &key(), &note).map_err(|e| fail(HOST, anyhow::anyhow!(e)))?;
                let verdict = audit::verify(&conn, &path, &key())?;
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
            let n = audit::prune(&mut conn, &path, &key(), &before, &Actor::current_user())?;
            eprintln!("pruned {n} audit records before {before}; the rest remain verifiable");
            Ok(())
        }
        AuditCommand::Usage { json } => {
            let usage = audit::usage(&conn, &path)?;
            if json {
                print_json(&mut out, &usage)?;
            } else {
                let mut table = Table::new(&[
                    ("SECRET", Left),
                    ("FLOW", Left),
                    ("TASK", Left),
                    ("READS", Right),
                    ("LAST READ", Left),
                ]);
                for u in usage {
                    let last = u.last_read.unwrap_or_else(|| "never (grant unused)".into());
                    table.row([u.secret, u.flow, u.task, u.reads.to_string(), last]);
                }
                table.write(&mut out).map_err(stdout_err)?;
            }
            Ok(())
        }
        AuditCommand::EnableFingerprints => {
            AuditKey::create(&dir.audit_key_path())?;
            let store = store.as_mut().expect("opened above");
            let record = |rec: &audit::NewRecord| store.record(rec).map(drop);
            keyhole::service::operator::fingerprints_enabled(record, &Actor::current_user(), &dir.audit_key_path())?;
            eprintln!(
                "audit fingerprints enabled: key in {} (keep it apart from master.key)",
                dir.audit_key_path().display()
            );
            Ok(())
        }
        AuditCommand::HashValue => {
            let key = AuditKey::load(&dir.audit_key_path())?.ok_or_else(|| {
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
