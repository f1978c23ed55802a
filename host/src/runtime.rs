//! The wasmtime engine, plugin loading and the compiled-plugin cache.
//!
//! A plugin file may be a component (`wasm32-wasip2`) or a core module
//! (`wasm32-wasip1`), which is turned into a component with the WASI
//! preview1 adapter (the command adapter if it exports `_start`, else the
//! reactor). It has one of two shapes ([`Shape`]): a `keyhole:task`
//! component exporting `run`, or a WASI command (a program with `main`). Compiled artifacts are cached in the data directory,
//! keyed by the SHA-256 of the plugin's bytes and the engine's configuration,
//! and written atomically (temporary file, then rename). Cached machine code
//! is loaded only after its tag checks out: XChaCha20-Poly1305 under a
//! private key in the cache directory, with a random nonce per entry, over
//! the plugin's SHA-256, the engine key and the artifact as associated data
//! (Poly1305 runs at GB/s; HMAC-SHA256 without SHA extensions took longer
//! than loading the entry). An entry copied over another plugin's, or
//! edited, is recompiled (with a warning), never run.

use crate::capability::{self, TaskState};
use crate::sandbox::bindings::TaskPre;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::p2::bindings::CommandPre;

/// How often the engine's epoch advances; the granularity of timeouts.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Which compiler turns plugins into machine code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compiler {
    /// Cranelift: optimising; slower to compile, faster code. The default.
    #[default]
    Cranelift,
    /// Winch: wasmtime's baseline compiler; compiles in a fraction of the
    /// time, runs slower. For large plugins (Python, JavaScript) on an empty
    /// cache and short tasks.
    Winch,
}

impl std::str::FromStr for Compiler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cranelift" => Ok(Compiler::Cranelift),
            "winch" => Ok(Compiler::Winch),
            other => Err(format!("{other:?} is not a compiler: use cranelift or winch")),
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// The compiler.
    pub compiler: Compiler,
    /// Where compiled plugins are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling instance allocator (worth it when many instances run
    /// in one process; each instance's memory is then capped at
    /// [`POOLING_MAX_MEMORY`]).
    pub pooling: bool,
}

/// Largest linear memory an instance may have under the pooling allocator.
pub const POOLING_MAX_MEMORY: usize = crate::limits::MAX_TASK_MEMORY;

/// Largest plugin file keyhole reads (a Python component is about 18 MB).
pub const MAX_PLUGIN_BYTES: usize = 256 << 20;

/// Plugin loading failures: each names the plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read plugin {path}: {err}")]
    Read {
        /// The plugin path.
        path: PathBuf,
        /// The I/O error.
        err: std::io::Error,
    },
    /// The bytes are not a usable wasm component or module.
    #[error("plugin {origin} is not a valid WebAssembly component or module: {why}")]
    Invalid {
        /// Where the bytes came from.
        origin: String,
        /// The wasmtime or encoder error.
        why: String,
    },
    /// The plugin needs an import the host does not provide, or lacks `run`.
    #[error("plugin {origin} does not fit the keyhole:task world: {why}")]
    World {
        /// Where the bytes came from.
        origin: String,
        /// What does not fit.
        why: String,
    },
}

/// Where a loaded plugin's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadedFrom {
    /// Compiled now (and stored in the cache, if any).
    Compiled,
    /// Loaded from the compiled-plugin cache.
    Cache,
    /// Already loaded by this process, under the same SHA-256 pin.
    Memory,
}

pub use crate::inspect::Shape;

/// The pre-instantiated entry point, by shape.
#[derive(Clone)]
pub(crate) enum Entry {
    Task(TaskPre<TaskState>),
    Command(CommandPre<TaskState>),
}

/// A plugin ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) entry: Entry,
    /// How it is run.
    pub shape: Shape,
    /// SHA-256 of the plugin file, lowercase hex.
    pub sha256: String,
    /// Whether it was compiled or loaded from the cache.
    pub loaded_from: LoadedFrom,
    /// Where it came from (a path, for messages).
    pub origin: String,
    /// The component's imports (`wasi:cli/environment@0.2.x`, ...).
    pub imports: Vec<String>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("origin", &self.origin).field("sha256", &self.sha256).finish_non_exhaustive()
    }
}

/// The engine, linker and cache; one per process.
pub struct Runtime {
    engine: Engine,
    linker: Linker<TaskState>,
    cache_dir: Option<PathBuf>,
    engine_key: String,
    pub(crate) pooling: bool,
    /// Plugins this process loaded, by SHA-256: a pinned plugin is read,
    /// hashed and deserialized once, not once per execution.
    loaded: std::sync::Mutex<HashMap<String, Plugin>>,
}

/// At most this many plugins stay loaded in memory.
const MAX_LOADED: usize = 64;

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("cache_dir", &self.cache_dir).finish_non_exhaustive()
    }
}

pub use crate::inspect::sha256_hex;

impl Runtime {
    /// Builds the engine and linker and starts the epoch ticker.
    pub fn new(options: RuntimeOptions) -> wasmtime::Result<Arc<Self>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.strategy(match options.compiler {
            Compiler::Cranelift => wasmtime::Strategy::Cranelift,
            Compiler::Winch => wasmtime::Strategy::Winch,
        });
        if options.pooling {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(64)
                .total_core_instances(256)
                .total_memories(256)
                .total_tables(256)
                .total_stacks(64)
                .max_memory_size(POOLING_MAX_MEMORY);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        capability::add_to_linker(&mut linker)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        // Machine code from one compiler is never loaded for the other.
        format!("{:?}", options.compiler).hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("keyhole-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| wasmtime::format_err!("cannot start the epoch thread: {e}"))?;

        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache_dir: options.cache_dir,
            engine_key,
            pooling: options.pooling,
            loaded: Default::default(),
        }))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Loads the plugin at `path`.
    pub fn load(&self, path: &Path) -> Result<Plugin, LoadError> {
        let bytes = crate::data_dir::read_bounded(path, MAX_PLUGIN_BYTES)
            .map_err(|err| LoadError::Read { path: path.to_owned(), err })?;
        self.load_bytes(&bytes, &path.display().to_string())
    }

    /// The plugin at `path`, which must hash to `sha256`: the copy this
    /// process already loaded under that hash if there is one (what runs is
    /// what was verified, whatever the file holds now), else read from
    /// `path`. A file that does not match is returned for the caller to
    /// refuse, and is not kept.
    pub fn load_pinned(&self, path: &Path, sha256: &str) -> Result<Plugin, LoadError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = loaded.get(sha256) {
            return Ok(Plugin { loaded_from: LoadedFrom::Memory, origin: path.display().to_string(), ..p.clone() });
        }
        drop(loaded);
        let plugin = self.load(path)?;
        if plugin.sha256 == sha256 {
            loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            if loaded.len() >= MAX_LOADED
                && let Some(k) = loaded.keys().next().cloned()
            {
                loaded.remove(&k);
            }
            loaded.insert(plugin.sha256.clone(), plugin.clone());
        }
        Ok(plugin)
    }

    /// Loads a plugin from its bytes; `origin` names it in messages.
    pub fn load_bytes(&self, bytes: &[u8], origin: &str) -> Result<Plugin, LoadError> {
        let sha256 = sha256_hex(bytes);
        let (component, loaded_from) = match self.cached(&sha256) {
            Some(c) => (c, LoadedFrom::Cache),
            None => {
                let c = self.compile(bytes, origin)?;
                self.store_in_cache(&sha256, &c);
                (c, LoadedFrom::Compiled)
            }
        };
        let imports = component.component_type().imports(&self.engine).map(|(name, _)| name.to_owned()).collect();
        let world = |e: wasmtime::Error| LoadError::World { origin: origin.to_owned(), why: format!("{e:#}") };
        let pre = self.linker.instantiate_pre(&component).map_err(world)?;
        let (entry, shape) = match TaskPre::new(pre.clone()) {
            Ok(task) => (Entry::Task(task), Shape::Task),
            Err(not_task) => match CommandPre::new(pre) {
                Ok(command) => (Entry::Command(command), Shape::Command),
                Err(_) => {
                    return Err(LoadError::World {
                        origin: origin.to_owned(),
                        why: format!(
                            "{not_task:#}; a plugin must either export `run: func(input: string) -> result<string, string>` \
                             (keyhole_guest::task! in Rust) or be a WASI command with `main` (wasi:cli/run)"
                        ),
                    });
                }
            },
        };
        Ok(Plugin { entry, shape, sha256, loaded_from, origin: origin.to_owned(), imports })
    }

    fn compile(&self, bytes: &[u8], origin: &str) -> Result<Component, LoadError> {
        let invalid = |why: String| LoadError::Invalid { origin: origin.to_owned(), why };
        if wasmparser::Parser::is_core_wasm(bytes) {
            let component = componentize(bytes).map_err(|e| invalid(format!("{e:#}")))?;
            Component::new(&self.engine, &component).map_err(|e| invalid(format!("{e:#}")))
        } else if wasmparser::Parser::is_component(bytes) {
            Component::new(&self.engine, bytes).map_err(|e| invalid(format!("{e:#}")))
        } else {
            Err(invalid("the file does not start with the WebAssembly magic bytes".into()))
        }
    }

    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        Some(self.cache_dir.as_ref()?.join(format!("{sha256}-{}.cwasm", self.engine_key)))
    }

    /// The key that authenticates cache entries (created 0600 on first use).
    fn cache_key(&self) -> std::io::Result<zeroize::Zeroizing<Vec<u8>>> {
        let dir = self.cache_dir.as_ref().ok_or(std::io::ErrorKind::NotFound)?;
        crate::data_dir::create_private_dir(dir)?;
        let path = dir.join("cache.key");
        match std::fs::read(&path) {
            Ok(k) if k.len() == 32 => return Ok(zeroize::Zeroizing::new(k)),
            Ok(_) => return Err(std::io::Error::other(format!("{} is not a 32-byte key", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut key = zeroize::Zeroizing::new(vec![0u8; 32]);
        getrandom::fill(&mut key).expect("the operating system's random source failed");
        let tmp = dir.join(format!(".cache.key.{}.tmp", std::process::id()));
        let mut f = crate::data_dir::private_file_options().create_new(true).open(&tmp)?;
        std::io::Write::write_all(&mut f, &key)?;
        f.sync_all()?;
        // If another process created it first, use theirs.
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                key = zeroize::Zeroizing::new(std::fs::read(&path)?)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        let _ = std::fs::remove_file(&tmp);
        Ok(key)
    }

    /// What an entry's tag covers: which plugin, which engine, which bytes.
    fn entry_aad(&self, sha256: &str, artifact: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(artifact.len() + 128);
        for part in [b"keyhole cache entry v1".as_slice(), sha256.as_bytes(), self.engine_key.as_bytes()] {
            aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad.extend_from_slice(artifact);
        aad
    }

    fn cached(&self, sha256: &str) -> Option<Component> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let path = self.cache_path(sha256)?;
        if !path.exists() {
            return None;
        }
        let drop_entry = |why: String| {
            tracing::warn!("compiled-plugin cache entry {}: {why}; recompiling the plugin", path.display());
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(mac_path(&path));
            None
        };
        let key = match self.cache_key() {
            Ok(k) => k,
            Err(e) => return drop_entry(format!("the cache key is unusable ({e})")),
        };
        let (artifact, tag) = match (std::fs::read(&path), std::fs::read(mac_path(&path))) {
            (Ok(a), Ok(t)) => (a, t),
            (Err(e), _) | (_, Err(e)) => return drop_entry(format!("cannot be read with its MAC ({e})")),
        };
        let cipher = chacha20poly1305::XChaCha20Poly1305::new_from_slice(&key).expect("the cache key is 32 bytes");
        let authentic = tag.len() == 24 + 16 && {
            let (nonce, t) = tag.split_at(24);
            let aad = self.entry_aad(sha256, &artifact);
            cipher.decrypt(nonce.into(), Payload { msg: t, aad: &aad }).is_ok_and(|m| m.is_empty())
        };
        if !authentic {
            return drop_entry(
                "failed its authentication (it was altered, or copied from another plugin's entry)".into(),
            );
        }
        match deserialize_cached(&self.engine, &artifact) {
            Ok(c) => Some(c),
            Err(e) => drop_entry(format!("is unusable ({e:#})")),
        }
    }

    fn store_in_cache(&self, sha256: &str, component: &Component) {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let Some(path) = self.cache_path(sha256) else {
            return;
        };
        let result = (|| -> anyhow::Result<()> {
            let key = self.cache_key()?;
            let bytes = component.serialize()?;
            let cipher = chacha20poly1305::XChaCha20Poly1305::new_from_slice(&key).expect("the cache key is 32 bytes");
            let mut tag = [0u8; 24].to_vec();
            getrandom::fill(&mut tag).expect("the operating system's random source failed");
            let aad = self.entry_aad(sha256, &bytes);
            let t = cipher
                .encrypt(tag.as_slice().into(), Payload { msg: &[], aad: &aad })
                .map_err(|_| anyhow::anyhow!("cannot tag the cache entry"))?;
            tag.extend_from_slice(&t);
            // The MAC first: an entry without its MAC is a miss, never a run.
            crate::data_dir::write_private_atomic(&mac_path(&path), &tag)?;
            crate::data_dir::write_private_atomic(&path, &bytes)?;
            Ok(())
        })();
        if let Err(e) = result {
            // The cache is an optimisation: a failure costs a recompile next time.
            tracing::warn!("cannot write compiled-plugin cache entry {}: {e:#}", path.display());
        }
    }
}

fn mac_path(entry: &Path) -> PathBuf {
    entry.with_extension("cwasm.mac")
}

/// Loads machine code this host compiled and cached earlier.
#[allow(unsafe_code)]
fn deserialize_cached(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `deserialize` trusts its input to be an artifact produced by
    // `Component::serialize` of a compatible engine. The caller passes only
    // bytes whose MAC, under the private cache key and bound to the plugin's
    // SHA-256 and this engine's compatibility hash, was made by
    // `store_in_cache` when this host compiled them; wasmtime itself checks
    // the header and the engine compatibility.
    unsafe { Component::deserialize(engine, artifact) }
}

/// Turns a `wasm32-wasip1` core module into a component with the preview1
/// adapter: the command adapter for a program (it exports `_start`), the
/// reactor adapter for a library exporting `run`.
fn componentize(module: &[u8]) -> anyhow::Result<Vec<u8>> {
    use wasi_preview1_component_adapter_provider as adapters;
    let adapter = if crate::inspect::core_exports(module)?.iter().any(|e| e == "_start") {
        adapters::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER
    } else {
        adapters::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER
    };
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(module)?
        .adapter("wasi_snapshot_preview1", adapter)?
        .encode()
}
