//! Plugins in the three languages `host plugin new` writes, run with
//! `cargo bench -p keyhole-host --bench languages`: the greeting task in
//! Rust, Python and JavaScript, built with `host plugin build`.
//! `languages/cold/LANG/COMPILER` compiles the component (an empty cache);
//! `languages/warm/LANG/COMPILER` runs one task from the loaded plugin
//! (instantiate + `run` with one audited `secrets.get`); each with
//! Cranelift and with Winch. Python and JavaScript need componentize-py and
//! componentize-js (scripts/test.sh installs them); without them they are
//! skipped, loudly.

mod common;
use common::keyhole_task;

use criterion::{Criterion, criterion_group, criterion_main};
use keyhole::audit::{Actor, AuditLog};
use keyhole::backend::Router;
use keyhole::backend::local::LocalBackend;
use keyhole::crypto::MasterKey;
use keyhole::names::{Namespace, SecretName, TaskId};
use keyhole::policy::Grants;
use keyhole::runtime::{Runtime, RuntimeOptions};
use keyhole::secret::SecretValue;
use keyhole::store::SecretStore;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `host plugin new NAME --lang LANG` + `host plugin build`, or `None`
/// (said loudly) when the language's toolchain is missing.
fn template_plugin(root: &std::path::Path, lang: &str) -> Option<Vec<u8>> {
    use std::process::Command;
    let host = env!("CARGO_BIN_EXE_host");
    let dir = root.join(lang);
    let new =
        Command::new(host).args(["plugin", "new", "greeter", "--lang", lang, "--dir"]).arg(&dir).output().unwrap();
    assert!(new.status.success(), "{}", String::from_utf8_lossy(&new.stderr));
    let tools = workspace().join("target/js-tools/node_modules/.bin");
    let path = format!("{}:{}", tools.display(), std::env::var("PATH").unwrap_or_default());
    let built = Command::new(host)
        .args(["plugin", "build"])
        .current_dir(&dir)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", workspace().join("target/plugins"))
        .output()
        .unwrap();
    if !built.status.success() {
        eprintln!("\n*** SKIPPED languages/*/{lang}: {} ***\n", String::from_utf8_lossy(&built.stderr).trim());
        return None;
    }
    let wasm = String::from_utf8_lossy(&built.stdout).lines().last().unwrap().to_owned();
    Some(std::fs::read(wasm).unwrap())
}

fn languages(c: &mut Criterion) {
    use keyhole::runtime::Compiler;
    let root = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut store = SecretStore::open_with_key(&dir.path().join("bench.db"), MasterKey::generate()).unwrap();
    let token = SecretName::new("GREETING_TOKEN").unwrap();
    let record = keyhole::audit::NewRecord::ok(
        &Actor::current_user(),
        keyhole::audit::Action::SecretSet,
        &Namespace::root(),
        None,
    );
    store
        .set(&Namespace::root(), &token, &SecretValue::new("bench-token".into()), &Default::default(), &record)
        .unwrap();
    let secrets = Arc::new(Router::new(LocalBackend::new(store), Default::default(), None).unwrap());
    let sink: keyhole::output::Sink = Arc::new(Mutex::new(std::io::sink()));
    let audit = AuditLog::open_in_memory().unwrap();
    let task = TaskId::new("greeter").unwrap();
    let input = serde_json::json!({ "name": "bench" });

    let mut g = c.benchmark_group("languages");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for lang in ["rust", "python", "js"] {
        let Some(bytes) = template_plugin(root.path(), lang) else { continue };
        for compiler in [Compiler::Cranelift, Compiler::Winch] {
            let name = format!("{lang}/{compiler:?}").to_lowercase();
            let runtime = Runtime::new(RuntimeOptions { compiler, ..Default::default() }).unwrap();
            g.bench_function(format!("cold/{name}"), |b| {
                b.iter(|| runtime.load_bytes(&bytes, "greeter.wasm").unwrap())
            });
            let plugin = runtime.load_bytes(&bytes, "greeter.wasm").unwrap();
            g.bench_function(format!("warm/{name}"), |b| {
                b.iter(|| {
                    let grants = Grants::new([token.clone()]);
                    let out = keyhole_task(
                        &rt,
                        &runtime,
                        &plugin,
                        &secrets,
                        &sink,
                        &audit,
                        &task,
                        grants,
                        &input,
                        Default::default(),
                    );
                    assert_eq!(out["greeting"], "hello, bench");
                })
            });
        }
    }
    g.finish();
}

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ lives in the workspace").to_owned()
}

criterion_group!(benches, languages);
criterion_main!(benches);
