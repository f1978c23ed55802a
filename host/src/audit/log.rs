//! The audit log as the sandbox uses it: [`AuditLog`] appends records by
//! leader-based group commit (whoever commits takes everything queued: one
//! fsync for many records), and [`AuditKey`] fingerprints released values.

use super::*;

/// The key for value fingerprints, kept apart from the master key.
#[derive(Clone)]
pub struct AuditKey(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(***)")
    }
}

impl AuditKey {
    /// `$KEYHOLE_AUDIT_KEY` or the file `path`; `None` when neither exists
    /// (fingerprints disabled).
    pub fn load(path: &Path) -> Result<Option<Self>, AuditError> {
        use base64::Engine as _;
        let text = match std::env::var(AUDIT_KEY_ENV) {
            Ok(t) => Zeroizing::new(t),
            Err(_) => match std::fs::read_to_string(path) {
                Ok(t) => Zeroizing::new(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(AuditError::Key(format!("cannot read {}: {e}", path.display()))),
            },
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| AuditError::Key(format!("not base64 ({e})")))?;
        if bytes.len() < 32 {
            return Err(AuditError::Key(format!("must be at least 32 bytes, got {}", bytes.len())));
        }
        Ok(Some(AuditKey(Zeroizing::new(bytes))))
    }

    /// Creates a new random key file (mode 0600), durably; fails if it exists.
    pub fn create(path: &Path) -> Result<Self, AuditError> {
        use base64::Engine as _;
        let mut bytes = Zeroizing::new(vec![0u8; 32]);
        getrandom::fill(&mut bytes).map_err(|e| AuditError::Key(e.to_string()))?;
        let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*bytes));
        crate::data_dir::create_private(path, &[text.as_bytes(), b"\n"])
            .map_err(|e| AuditError::Key(format!("cannot create {}: {e}", path.display())))?;
        Ok(AuditKey(bytes))
    }

    /// HMAC-SHA256 of `value`, lowercase hex: the value's fingerprint.
    pub fn fingerprint(&self, value: &str) -> String {
        hex::encode(crate::crypto::hmac_sha256(&self.0, value.as_bytes()))
    }
}

/// The durable, group-committing writer used on the plugin read path.
///
/// Group commit without a writer thread: a caller queues its record; if no
/// commit is in progress it becomes the leader, takes everything queued and
/// commits it in one transaction on its own thread; callers that arrive
/// meanwhile sleep. When the leader is done it wakes exactly the callers
/// whose records it committed, and hands leadership to the oldest caller
/// still waiting, so no thread wakes only to sleep again. One reader pays
/// one fsync and no thread handoff; many readers share fsyncs.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
    key: Option<AuditKey>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.shared.path).finish_non_exhaustive()
    }
}

struct Shared {
    path: PathBuf,
    chain: IntegrityKey,
    conn: Mutex<Connection>,
    state: Mutex<Queue>,
}

/// A queued record, and the thread to wake when it is settled (none for
/// [`AuditLog::record_later`]).
struct Entry {
    ticket: u64,
    record: Prepared,
    waiter: Option<Thread>,
}

#[derive(Default)]
struct Queue {
    next_ticket: u64,
    pending: Vec<Entry>,
    /// Threads in [`AuditLog::flush`], each with the ticket it waits for.
    flushers: Vec<(u64, Thread)>,
    leader: bool,
    /// Outcomes of committed tickets not yet collected by their waiters.
    done: HashMap<u64, Result<u64, String>>,
    /// Every ticket below this has been committed or has failed.
    settled_below: u64,
}

impl AuditLog {
    /// Opens the log in the store file at `path` with its own connection;
    /// records are chained under `chain` (the store's integrity key).
    /// `key` enables value fingerprints.
    pub fn open(path: &Path, chain: IntegrityKey, key: Option<AuditKey>) -> Result<Self, AuditError> {
        let conn = connect(path)?;
        Ok(AuditLog {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                chain,
                conn: Mutex::new(conn),
                state: Mutex::new(Queue::default()),
            }),
            key,
        })
    }

    /// Opens a log in a private in-memory database: nothing is durable. For
    /// benchmarks that measure what durability costs; never used by `host`.
    #[doc(hidden)]
    pub fn open_in_memory() -> Result<Self, AuditError> {
        Self::open(Path::new(":memory:"), IntegrityKey::generate(), None)
    }

    /// The fingerprint of `value`, when fingerprints are enabled.
    pub fn fingerprint(&self, value: &str) -> Option<String> {
        self.key.as_ref().map(|k| k.fingerprint(value))
    }

    /// Appends `record` and returns its sequence number once it is durably
    /// committed.
    pub fn record(&self, record: NewRecord) -> Result<u64, AuditError> {
        let ticket = self.enqueue(record, Some(std::thread::current()));
        self.wait_for(ticket)
    }

    /// Queues `record` without waiting. It commits with the next batch; a
    /// later [`AuditLog::record`] or [`AuditLog::flush`] returns only after
    /// it is durable. For records that release nothing (a task starting).
    pub fn record_later(&self, record: NewRecord) -> Result<(), AuditError> {
        self.enqueue(record, None);
        Ok(())
    }

    /// Returns once every record queued before it is durable.
    pub fn flush(&self) -> Result<(), AuditError> {
        let last = {
            let mut q = lock(&self.shared.state);
            if q.next_ticket == 0 {
                return Ok(());
            }
            let last = q.next_ticket - 1;
            q.flushers.push((last, std::thread::current()));
            last
        };
        self.wait_for(last).map(|_| ())
    }

    fn enqueue(&self, record: NewRecord, waiter: Option<Thread>) -> u64 {
        // Encoded here, in parallel with other callers; the commit only
        // chains, MACs and inserts.
        let record = Prepared::new(&record);
        let mut q = lock(&self.shared.state);
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending.push(Entry { ticket, record, waiter });
        ticket
    }

    /// Waits until `ticket` is settled, leading a commit when no one else is.
    fn wait_for(&self, ticket: u64) -> Result<u64, AuditError> {
        let sh = &*self.shared;
        let me = std::thread::current().id();
        loop {
            let mut q = lock(&sh.state);
            if ticket < q.settled_below {
                q.flushers.retain(|(t, th)| !(*t == ticket && th.id() == me));
                return match q.done.remove(&ticket) {
                    Some(Ok(seq)) => Ok(seq),
                    Some(Err(why)) => Err(AuditError::Writer(format!("audit log {}: {why}", sh.path.display()))),
                    None => Ok(0),
                };
            }
            if q.leader {
                // The leader wakes this thread when its ticket is settled or
                // when it is its turn to lead; a wake-up that came before the
                // park makes the park return at once.
                drop(q);
                std::thread::park();
                continue;
            }
            q.leader = true;
            let batch = std::mem::take(&mut q.pending);
            let settles = q.next_ticket;
            drop(q);
            let (records, waiters): (Vec<Prepared>, Vec<(u64, Option<Thread>)>) =
                batch.into_iter().map(|e| (e.record, (e.ticket, e.waiter))).unzip();
            let n = records.len();
            // A panic here (a bug) must not leave `leader` set with everyone
            // asleep behind it: it fails the batch like any other error (the
            // transaction rolls back as it unwinds).
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                commit(&mut lock(&sh.conn), &sh.path, sh.chain_key(), records)
            }))
            .unwrap_or_else(|_| Err("the audit writer panicked; the batch was rolled back".to_owned()));
            let mut q = lock(&sh.state);
            if let Err(why) = &result {
                tracing::error!("{n} audit record(s) could not be written: {why}");
            }
            // The next batch is led by the oldest caller still waiting: a
            // record's writer, or else a flusher whose records were queued
            // after this batch was taken (not one this batch settled: that
            // one returns, and the other would sleep forever). It is woken
            // first, so the next commit starts before the callers settled
            // here wake up to compete with it for the CPU.
            let mut wake: Vec<Thread> = q
                .pending
                .iter()
                .find_map(|e| e.waiter.clone())
                .or_else(|| q.flushers.iter().find(|(t, _)| *t >= settles).map(|f| f.1.clone()))
                .into_iter()
                .collect();
            for (i, (ticket, waiter)) in waiters.into_iter().enumerate() {
                if let Some(thread) = waiter {
                    q.done.insert(ticket, result.as_ref().map(|seqs| seqs[i]).map_err(Clone::clone));
                    wake.push(thread);
                }
            }
            q.settled_below = settles;
            q.leader = false;
            wake.extend(q.flushers.iter().filter(|(t, _)| *t < settles).map(|(_, th)| th.clone()));
            drop(q);
            for thread in wake {
                if thread.id() != me {
                    thread.unpark();
                }
            }
        }
    }
}

impl Shared {
    fn chain_key(&self) -> &IntegrityKey {
        &self.chain
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Appends a batch in one IMMEDIATE transaction.
fn commit(conn: &mut Connection, path: &Path, key: &IntegrityKey, batch: Vec<Prepared>) -> Result<Vec<u64>, String> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let why = |op: &str, e: rusqlite::Error| format!("cannot {op} in {}: {e}", path.display());
    let tx =
        conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| why("start a transaction", e))?;
    let seqs = append_all(&tx, key, batch).map_err(|e| why("append records", e))?;
    #[cfg(test)]
    if PANIC_IN_COMMIT.with(|p| p.replace(false)) {
        panic!("a failpoint: the commit panics with its records appended");
    }
    tx.commit().map_err(|e| why("commit", e))?;
    Ok(seqs)
}

#[cfg(test)]
thread_local! {
    /// Makes this thread's next commit panic (a bug in the commit path,
    /// simulated).
    pub(super) static PANIC_IN_COMMIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_key_that_cannot_be_read_or_is_short_is_an_error_not_off() {
        use base64::Engine as _;
        if std::env::var_os(AUDIT_KEY_ENV).is_some() {
            return; // the variable wins over the file
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(AuditKey::load(&dir.path().join("absent")).unwrap().is_none(), "no key: fingerprints off");
        // A key file that exists but cannot be read must not turn
        // fingerprints off without a word.
        assert!(AuditKey::load(dir.path()).is_err(), "a directory read as a key");
        let short = dir.path().join("short");
        std::fs::write(&short, base64::engine::general_purpose::STANDARD.encode([7u8; 31])).unwrap();
        let e = AuditKey::load(&short).expect_err("a 31-byte key is refused").to_string();
        assert!(e.contains("at least 32 bytes, got 31"), "{e}");
        std::fs::write(&short, base64::engine::general_purpose::STANDARD.encode([7u8; 32])).unwrap();
        assert!(AuditKey::load(&short).unwrap().is_some());
    }

    /// A flush that returned leaves nothing behind: a server that flushes
    /// after every task for months keeps no list that grows with them.
    #[test]
    fn a_returned_flush_leaves_nothing_behind() {
        use crate::audit::Outcome;
        use crate::audit::tests::{rec, setup};
        let (_d, _path, log, _key) = setup();
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..40 {
                        log.record_later(rec(&format!("T{t}_{i}"), Outcome::Ok)).unwrap();
                        log.flush().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(lock(&log.shared.state).flushers.is_empty(), "flushes that returned are still listed");
    }
}
