//! The plugin's world and its bounds: the generated bindings for `wit/`
//! (the current `keyhole:task` and the frozen 0.1.0 text a plugin built
//! against it imports; a standard interface a capability serves, such as
//! `wasi:config`, is bound in that capability) and the per-task memory
//! limiter.
//!
//! Invariant: memory, tables and instances are capped per task; what a
//! task may call is `capability`'s business.

use wasmtime::{ResourceLimiter, Result};

/// Bindings generated from `wit/task.wit`, the current `keyhole:task`
/// (0.2.0): its imports, and the `run` export every task has.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "keyhole:task/task",
        exports: { default: async },
    });
}

/// Bindings of `wit/0.1.0/task.wit`, frozen: the same interfaces under the
/// names a 0.1.0 plugin imports. Capabilities serve both with one body.
pub mod bindings_0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "keyhole:task/task",
        exports: { default: async },
    });
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
    /// A limiter of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        MemoryLimiter { limit, used: 0, denied: None }
    }

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
