//! WASI p2 for a task: masked stdout and stderr, an empty stdin, and
//! nothing else: no preopened directory, environment variable, argument or
//! socket (HTTP is `capability::http`). Also knows which WASI imports name
//! a capability no flow can grant yet, so `validate` and `run` can say so
//! before a task fails.

use super::TaskState;
use crate::output::{Stream, TaskOutput};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The task's WASI state.
pub struct Wasi {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl std::fmt::Debug for Wasi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wasi").finish_non_exhaustive()
    }
}

impl Wasi {
    /// WASI whose stdout and stderr go to `output`.
    pub fn new(output: &TaskOutput) -> Self {
        let ctx = WasiCtxBuilder::new()
            // Defaults already deny these; say so where a reader looks.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(output.stream(Stream::Stdout))
            .stderr(output.stream(Stream::Stderr))
            .build();
        Wasi { ctx, table: ResourceTable::new() }
    }
}

impl Wasi {
    /// The resource table, shared with the other WASI interfaces (wasi:http
    /// streams live in it too).
    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let w = &mut self.caps.wasi;
        WasiCtxView { ctx: &mut w.ctx, table: &mut w.table }
    }
}

/// Adds WASI p2.
pub fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)
}

/// Imports a plugin may have that no flow grants, with what they are.
pub fn ungrantable_imports(imports: &[String]) -> Vec<(&str, &'static str)> {
    imports
        .iter()
        .filter_map(|i| {
            let what = if i.starts_with("wasi:sockets/") {
                "network sockets"
            } else {
                return None;
            };
            Some((i.as_str(), what))
        })
        .collect()
}
