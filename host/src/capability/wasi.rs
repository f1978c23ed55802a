//! WASI p2 for a task: masked stdout and stderr, an empty stdin, and
//! nothing else: no preopened directory, environment variable, argument or
//! socket (HTTP is `capability::http`). A WASI command (a program with
//! `main`) gets its input document on stdin instead, and its stdout is
//! captured as its output rather than shown. Also knows which WASI imports name
//! a capability no flow can grant yet, so `validate` and `run` can say so
//! before a task fails.

use super::TaskState;
use crate::output::{Captured, Stream, TaskOutput};
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

/// How a task's standard streams are wired, by the plugin's shape.
#[derive(Debug, Clone)]
pub enum Stdio {
    /// A `keyhole:task` component: empty stdin, stdout shown (masked) to
    /// the operator like stderr.
    Task,
    /// A WASI command: `stdin` holds its input document, its stdout is
    /// captured here to become its output.
    Command {
        /// The input document.
        stdin: Vec<u8>,
        /// Where stdout goes.
        stdout: Captured,
    },
}

impl Wasi {
    /// WASI whose stderr (and, for a task, stdout) goes to `output`.
    pub fn new(output: &TaskOutput, stdio: Stdio) -> Self {
        let mut builder = WasiCtxBuilder::new();
        // Defaults already deny these; say so where a reader looks.
        builder.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        builder.stderr(output.stream(Stream::Stderr));
        match stdio {
            Stdio::Task => builder.stdout(output.stream(Stream::Stdout)),
            Stdio::Command { stdin, stdout } => {
                builder.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(stdin)).stdout(stdout)
            }
        };
        Wasi { ctx: builder.build(), table: ResourceTable::new() }
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
