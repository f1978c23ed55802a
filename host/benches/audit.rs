//! What durable auditing costs on the `secrets.get` path, run with
//! `cargo bench -p keyhole-host --bench audit`: `access::get_secret` with the
//! audit log in the store file (each read durably committed before the value
//! is released; concurrent reads group-committed) against the same with the
//! log in memory (no fsync), for 1 and 16 concurrent readers.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyhole::access::{SecretAccess, TaskIdentity, get_secret};
use keyhole::audit::{Actor, AuditLog};
use keyhole::backend::Router;
use keyhole::backend::local::LocalBackend;
use keyhole::crypto::MasterKey;
use keyhole::mask::MaskSet;
use keyhole::names::{ExecutionId, Namespace, SecretName, TaskId};
use keyhole::policy::Grants;
use keyhole::secret::SecretValue;
use keyhole::store::SecretStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn access(secrets: &Arc<Router>, audit: AuditLog) -> SecretAccess {
    let task = TaskId::new("bench").unwrap();
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
        // The in-memory and no-fsync logs start empty for each group, so
        // 16 readers do not pay for the records 1 reader left (an
        // in-memory database slows as it grows: SQLite walks its page
        // cache at commits). The durable log is the store's own file.
        let logs = [
            ("audited", AuditLog::open(&path, chain.clone(), None).unwrap()),
            ("audit-in-memory", AuditLog::open_in_memory().unwrap()),
            ("audit-no-fsync", AuditLog::open_without_fsync(&dir.path().join(format!("nosync-{readers}.db"))).unwrap()),
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
    }
}

criterion_group!(benches, reads);
criterion_main!(benches);
