//! What durable auditing costs on the `secrets.get` path, run with
//! `cargo bench -p keyhole-host --bench audit`: `access::get_secret` with the
//! audit log in the store file (each read durably committed before the value
//! is released; concurrent reads group-committed) against the same with the
//! log in SQLite's `:memory:` engine and with the production log on a RAM
//! file system (`/dev/shm`: the same engine, WAL and fsync, no disk), for 1
//! and 16 concurrent readers.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyhole::access::{SecretAccess, TaskIdentity, get_secret};
use keyhole::audit::{Actor, AuditLog};
use keyhole::backend::Router;
use keyhole::backend::local::LocalBackend;
use keyhole::crypto::{IntegrityKey, MasterKey};
use keyhole::mask::MaskSet;
use keyhole::names::{ExecutionId, Namespace, SecretName, TaskId};
use keyhole::policy::Grants;
use keyhole::secret::SecretValue;
use keyhole::store::SecretStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn access(secrets: &Arc<Router>, audit: AuditLog) -> SecretAccess {
    let task = TaskId::new("bench").unwrap();
    let leases = Arc::new(keyhole::lease::ExecutionLeases::new(secrets.clone(), audit.clone(), Actor::Server));
    SecretAccess {
        identity: Arc::new(TaskIdentity {
            namespace: Namespace::root(),
            flow: task.clone(),
            task,
            execution: ExecutionId::generate(),
            plugin_sha256: "0".repeat(64),
        }),
        grants: Grants::new([SecretName::new("K").unwrap()]),
        secrets: secrets.clone(),
        masks: Arc::new(MaskSet::new()),
        task_masks: Arc::new(MaskSet::new()),
        requests: Default::default(),
        audit,
        pins: Default::default(),
        bound: Default::default(),
        leases,
        deadline: keyhole::store::now() + 30,
    }
}

fn reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let mut store = SecretStore::open_with_key(&path, MasterKey::generate()).unwrap();
    let name = SecretName::new("K").unwrap();
    store
        .set(
            &Namespace::root(),
            &name,
            &SecretValue::new("bench-value".into()),
            &Default::default(),
            &keyhole::audit::NewRecord::ok(
                &Actor::current_user(),
                keyhole::audit::Action::SecretSet,
                &Namespace::root(),
                None,
            ),
        )
        .unwrap();
    let chain = store.integrity().clone();
    let secrets = Arc::new(Router::new(LocalBackend::new(store), Default::default(), None).unwrap());

    for readers in [1usize, 16] {
        let mut g = c.benchmark_group(format!("secrets.get/{readers}-readers"));
        g.throughput(Throughput::Elements(readers as u64));
        g.sample_size(20).measurement_time(Duration::from_secs(5));
        // Each group gets fresh in-memory and RAM-disk logs, so 16 readers
        // do not pay for the records 1 reader left (SQLite's `:memory:`
        // engine slows as it grows: it walks its page cache at commits).
        // The durable log is the store's own file.
        let ram = ram_disk().join(format!("keyhole-bench-{}-{readers}.db", std::process::id()));
        let logs = [
            ("audited", AuditLog::open(&path, chain.clone(), None).unwrap()),
            ("audit-in-memory", AuditLog::open_in_memory().unwrap()),
            ("audit-ram-disk", AuditLog::open(&ram, IntegrityKey::generate(), None).unwrap()),
        ];
        for (label, log) in &logs {
            g.bench_function(*label, |b| {
                b.iter_custom(|iters| {
                    let accesses: Vec<_> = (0..readers).map(|_| access(&secrets, log.clone())).collect();
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for a in &accesses {
                            s.spawn(move || {
                                for _ in 0..iters {
                                    // One task may make at most 10,000 audited requests: these are many tasks.
                                    a.requests.store(0, std::sync::atomic::Ordering::Relaxed);
                                    get_secret(a, "K").unwrap();
                                }
                            });
                        }
                    });
                    start.elapsed()
                })
            });
        }
        g.finish();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", ram.display()));
        }
    }
}

/// A RAM file system for the `audit-ram-disk` log: the production database
/// (WAL, fsync per commit) with its writes landing in memory.
fn ram_disk() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        return shm.to_owned();
    }
    eprintln!("audit bench: no /dev/shm here; audit-ram-disk uses the temporary directory (a disk)");
    std::env::temp_dir()
}

criterion_group!(benches, reads);
criterion_main!(benches);
