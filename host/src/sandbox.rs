//! The plugin's world: the generated bindings for `wit/`, the per-task store
//! state, and the thin host implementations of the `keyhole:task` imports.
//!
//! Invariants: a plugin gets no preopened directory, no environment variable,
//! no argument, no network and an empty stdin; every capability it has is
//! passed in here explicitly. The imports decide nothing themselves: they
//! call `access`, `output` and `mask`.

use crate::access::{self, AccessError, SecretAccess};
use crate::output::{Stream, TaskOutput};
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Bindings generated from `wit/task.wit`: the one place `bindgen!` runs.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "keyhole:task/task",
        exports: { default: async },
    });
}

use bindings::keyhole::task::{context, log, secrets};

/// Per-task store data.
pub struct TaskState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    host: TaskHost,
}

impl std::fmt::Debug for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskState").field("task", &self.host.access.identity.task).finish_non_exhaustive()
    }
}

/// What the `keyhole:task` imports see.
#[derive(Debug)]
pub struct TaskHost {
    access: SecretAccess,
    output: TaskOutput,
}

impl TaskState {
    /// State for one task: WASI with nothing but the masked output channels,
    /// memory (all memories and tables together) capped at `memory_limit`
    /// bytes.
    pub fn new(access: SecretAccess, output: TaskOutput, memory_limit: usize) -> Self {
        let wasi = WasiCtxBuilder::new()
            // Defaults already deny these; say so where a reader looks.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(output.stream(Stream::Stdout))
            .stderr(output.stream(Stream::Stderr))
            .build();
        TaskState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { limit: memory_limit, used: 0, denied: None },
            host: TaskHost { access, output },
        }
    }
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps the task's memory: every linear memory and table of every core
/// instance counted together (a component can instantiate many modules,
/// each with memories of its own), and the number of instances, memories
/// and tables. Remembers a refused growth, so a failure can be reported as
/// "memory limit reached" rather than a bare trap.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: usize,
    /// Bytes of linear memory and table space in use.
    used: usize,
    /// The total a refused growth asked for.
    pub denied: Option<usize>,
}

/// Most table elements across all tables of a task.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Bytes a table element is counted as.
const TABLE_ELEMENT_BYTES: usize = 8;
/// Most core instances, memories and tables one task may create.
pub const MAX_INSTANCES: usize = 1_000;
/// See [`MAX_INSTANCES`].
pub const MAX_MEMORIES: usize = 100;
/// See [`MAX_INSTANCES`].
pub const MAX_TABLES: usize = 1_000;

impl MemoryLimiter {
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.limit {
            self.denied = Some(total);
            return false;
        }
        self.used = total;
        true
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        Ok(self.grow(current * TABLE_ELEMENT_BYTES, desired * TABLE_ELEMENT_BYTES))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

struct KeyholeImports;

impl HasData for KeyholeImports {
    type Data<'a> = &'a mut TaskHost;
}

/// Adds WASI p2 and the `keyhole:task` imports to `linker`.
pub fn add_to_linker(linker: &mut Linker<TaskState>) -> Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    bindings::Task::add_to_linker::<TaskState, KeyholeImports>(linker, |s| &mut s.host)?;
    Ok(())
}

impl secrets::Host for TaskHost {
    fn get(&mut self, name: String) -> Result<String, secrets::Error> {
        match access::get_secret(&self.access, &name) {
            Ok(value) => Ok(value.expose().to_owned()),
            Err(e) => Err(match e {
                AccessError::Denied => secrets::Error::Denied,
                AccessError::NotFound => secrets::Error::NotFound,
                AccessError::Revoked => secrets::Error::Revoked,
                AccessError::Expired => secrets::Error::Expired,
                AccessError::Unavailable(why) => secrets::Error::Unavailable(why),
            }),
        }
    }
}

impl log::Host for TaskHost {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Trace => "TRACE",
            log::Level::Debug => "DEBUG",
            log::Level::Info => "INFO",
            log::Level::Warn => "WARN",
            log::Level::Error => "ERROR",
        };
        self.output.log(level, &message);
    }
}

impl context::Host for TaskHost {
    fn current(&mut self) -> context::Execution {
        let id = &self.access.identity;
        context::Execution {
            namespace: id.namespace.as_str().to_owned(),
            flow: id.flow.as_str().to_owned(),
            task: id.task.as_str().to_owned(),
            execution_id: id.execution.as_str().to_owned(),
        }
    }
}
