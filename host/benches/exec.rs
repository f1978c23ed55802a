//! Benchmarks for the core path, run with `cargo bench -p keyhole-host`:
//!
//! - `load/compile` vs `load/cache`: loading a plugin cold (Cranelift
//!   compile) and warm (the compiled artifact from the cache).
//! - `run/keyhole` vs `run/bare-wasmtime`: instantiate-and-run of the same
//!   component doing one `secrets.get`, through keyhole (grant check, SQLite
//!   lookup, decryption, masking, output capture, audit records kept in
//!   memory) and through bare wasmtime with a no-op import.
//! - `http/keyhole` vs `http/bare-wasi-http`: instantiate-and-run of the
//!   probe plugin sending one GET to a server on 127.0.0.1, through
//!   keyhole (allow-list, address check, pending and sent audit records in
//!   memory, body limits) and through wasmtime-wasi-http with a plain
//!   sender (connect, send, stream the response back).

#[path = "../../tests/e2e/plugins.rs"]
mod plugins;

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
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bare {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "keyhole:task/task",
        exports: { default: async },
    });
}
use bare::keyhole::task::{context, log, rotation, secrets};

struct BareState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: wasmtime_wasi_http::WasiHttpCtx,
    hooks: PlainSender,
}

impl BareState {
    fn new() -> Self {
        BareState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            http: Default::default(),
            hooks: PlainSender,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for BareState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// wasmtime-wasi-http's sending without any policy: connect, send, hand
/// the response back as it streams.
struct PlainSender;

type HttpError = wasmtime_wasi_http::Error;
type Io = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl wasmtime_wasi_http::WasiHttpHooks for PlainSender {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Io,
    ) -> Box<dyn Future<Output = Result<(http::Response<wasmtime_wasi_http::WasiBody>, Io), HttpError>> + Send> {
        use http_body_util::BodyExt;
        Box::new(async move {
            let (mut parts, body) = request.into_parts();
            let authority = parts.uri.authority().expect("an authority").to_string();
            let tcp = tokio::net::TcpStream::connect(authority).await.map_err(HttpError::Connect)?;
            let io = wasmtime_wasi_http::io::TokioIo::new(tcp);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(HttpError::Hyper)?;
            tokio::spawn(conn);
            parts.uri = parts.uri.path_and_query().expect("a path").as_str().parse().expect("a path");
            let response =
                sender.send_request(http::Request::from_parts(parts, body)).await.map_err(HttpError::Hyper)?;
            let response = response.map(|b| b.map_err(HttpError::Hyper).boxed_unsync());
            Ok((response, Box::new(async { Ok(()) }) as Io))
        })
    }
}

/// A server on 127.0.0.1 answering every request `200 ok`; its origin.
fn local_server() -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    origin
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl secrets::Host for BareState {
    fn get(&mut self, _name: String) -> Result<String, secrets::Error> {
        Ok("bench-token".to_owned())
    }
}
impl rotation::Host for BareState {
    fn generate(&mut self, _: String, _: rotation::Generator) -> Result<rotation::Staged, rotation::Error> {
        Err(rotation::Error::Denied)
    }
    fn capture(&mut self, _: String, _: String) -> Result<rotation::Staged, rotation::Error> {
        Err(rotation::Error::Denied)
    }
    fn commit(&mut self, _: String) -> Result<u64, rotation::Error> {
        Err(rotation::Error::Denied)
    }
    fn discard(&mut self, _: String) -> Result<(), rotation::Error> {
        Err(rotation::Error::Denied)
    }
}
impl log::Host for BareState {
    fn log(&mut self, _level: log::Level, _message: String) {}
}
impl context::Host for BareState {
    fn current(&mut self) -> context::Execution {
        context::Execution { namespace: String::new(), flow: "f".into(), task: "t".into(), execution_id: "e".into() }
    }
}

struct BareData;
impl HasData for BareData {
    type Data<'a> = &'a mut BareState;
}

fn load(c: &mut Criterion) {
    let bytes = std::fs::read(plugins::component(plugins::Plugin::Hello)).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cold = Runtime::new(RuntimeOptions { cache_dir: None, ..Default::default() }).unwrap();
    let warm = Runtime::new(RuntimeOptions { cache_dir: Some(cache.path().to_owned()), ..Default::default() }).unwrap();
    warm.load_bytes(&bytes, "hello.wasm").unwrap();

    let mut g = c.benchmark_group("load");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("compile", |b| b.iter(|| cold.load_bytes(&bytes, "hello.wasm").unwrap()));
    g.bench_function("cache", |b| b.iter(|| warm.load_bytes(&bytes, "hello.wasm").unwrap()));
    g.finish();
}

fn run(c: &mut Criterion) {
    let path = plugins::component(plugins::Plugin::Hello);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let input = serde_json::json!({ "name": "bench" });

    // keyhole: the real path, with a real SQLite store holding the secret.
    let dir = tempfile::tempdir().unwrap();
    let mut store = SecretStore::open_with_key(&dir.path().join("bench.db"), MasterKey::generate()).unwrap();
    let token = SecretName::new("API_TOKEN").unwrap();
    store
        .set(
            &Namespace::root(),
            &token,
            &SecretValue::new("bench-token".into()),
            &Default::default(),
            &keyhole::audit::NewRecord::ok(
                &Actor::current_user(),
                keyhole::audit::Action::SecretSet,
                &Namespace::root(),
                None,
            ),
        )
        .unwrap();
    let runtime = Runtime::new(RuntimeOptions { cache_dir: None, pooling: true, ..Default::default() }).unwrap();
    let plugin = runtime.load(&path).unwrap();
    let secrets = Arc::new(Router::new(LocalBackend::new(store), Default::default(), None).unwrap());
    let sink: keyhole::output::Sink = Arc::new(Mutex::new(std::io::sink()));
    let task = TaskId::new("hello").unwrap();
    // The runtime's own overhead, with the audit log in memory; what a
    // durable audit record adds is measured in benches/audit.rs.
    let audit = AuditLog::open_in_memory().unwrap();

    // bare wasmtime: same component, same allocator, no-op imports.
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(PoolingAllocationConfig::default()));
    let engine = Engine::new(&config).unwrap();
    let mut linker: Linker<BareState> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    bare::Task::add_to_linker::<BareState, BareData>(&mut linker, |s| s).unwrap();
    let component = wasmtime::component::Component::from_file(&engine, &path).unwrap();
    let pre = bare::TaskPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    let input_text = input.to_string();

    let mut g = c.benchmark_group("run");
    g.bench_function("keyhole", |b| {
        b.iter(|| {
            let grants = Grants::new([token.clone()]);
            keyhole_task(&rt, &runtime, &plugin, &secrets, &sink, &audit, &task, grants, &input, Default::default())
        })
    });
    g.bench_function("bare-wasmtime", |b| {
        b.iter(|| {
            rt.block_on(async {
                let state = BareState::new();
                let mut store = Store::new(&engine, state);
                let task = pre.instantiate_async(&mut store).await.unwrap();
                let out = task.call_run(&mut store, &input_text).await.unwrap();
                assert!(out.is_ok());
            })
        })
    });
    g.finish();
}

fn http_request(c: &mut Criterion) {
    let path = plugins::component(plugins::Plugin::Probe);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().enable_io().build().unwrap();
    let origin = local_server();
    let input = serde_json::json!({ "action": "http", "requests": [{ "url": format!("{origin}/") }] });

    let runtime = Runtime::new(RuntimeOptions { cache_dir: None, pooling: true, ..Default::default() }).unwrap();
    let plugin = runtime.load(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SecretStore::open_with_key(&dir.path().join("bench.db"), MasterKey::generate()).unwrap();
    let secrets = Arc::new(Router::new(LocalBackend::new(store), Default::default(), None).unwrap());
    let sink: keyhole::output::Sink = Arc::new(Mutex::new(std::io::sink()));
    let task = TaskId::new("probe").unwrap();
    let audit = AuditLog::open_in_memory().unwrap();
    let network = keyhole::network::NetworkDoc { allow: vec![origin.parse().unwrap()], ..Default::default() }
        .policy(std::path::Path::new("."))
        .unwrap();

    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(PoolingAllocationConfig::default()));
    let engine = Engine::new(&config).unwrap();
    let mut linker: Linker<BareState> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
    bare::Task::add_to_linker::<BareState, BareData>(&mut linker, |s| s).unwrap();
    let component = wasmtime::component::Component::from_file(&engine, &path).unwrap();
    let pre = bare::TaskPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    let input_text = input.to_string();

    let mut g = c.benchmark_group("http");
    g.bench_function("keyhole", |b| {
        b.iter(|| {
            let grants = Grants::new([]);
            let out =
                keyhole_task(&rt, &runtime, &plugin, &secrets, &sink, &audit, &task, grants, &input, network.clone());
            assert_eq!(out[0]["status"], 200, "{out}");
        })
    });
    g.bench_function("bare-wasi-http", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut store = Store::new(&engine, BareState::new());
                let task = pre.instantiate_async(&mut store).await.unwrap();
                let out = task.call_run(&mut store, &input_text).await.unwrap().unwrap();
                assert!(out.contains("\"status\":200"), "{out}");
            })
        })
    });
    g.finish();
}

criterion_group!(benches, load, run, http_request);
criterion_main!(benches);
