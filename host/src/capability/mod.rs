//! What a task can do, one module per capability, in the spirit of
//! wasmtime-wasi's `WasiCtxBuilder` and Spin's factors. Each module owns
//! its per-task state (built from what the flow or CLI granted), the host
//! side of its WIT interface, and its `add_to_linker`:
//!
//! - [`secrets`]: `keyhole:task/secrets`, answered by `access::get_secret`;
//! - [`log`]: `keyhole:task/log`, into the task's masked output;
//! - [`context`]: `keyhole:task/context`, the task's identity;
//! - [`rotation`]: `keyhole:task/rotation` (0.2.0), answered by `rotate`;
//! - [`config`]: `wasi:config/store` (both versions in use), answered from
//!   the task's grants through the same `access::get_secret`;
//! - [`http`]: `wasi:http/outgoing-handler`, under the task's
//!   `network::NetworkPolicy` (no destination unless allowed);
//! - [`wasi`]: WASI p2 with nothing but masked stdout/stderr (and, for a
//!   WASI command, its input on stdin and its stdout captured as its
//!   output): no files, environment, arguments or sockets.
//!
//! Invariant: a capability decides nothing about secrets itself (it calls
//! `access`, `output`, `mask`), and a task has no capability it was not
//! given here. Adding one is a module with those three things, a field in
//! [`Capabilities`], and one line in [`add_to_linker`].

pub mod config;
pub mod context;
pub mod http;
pub mod log;
pub mod rotation;
pub mod secrets;
pub mod wasi;

use crate::access::SecretAccess;
use crate::network::NetworkPolicy;
use crate::output::TaskOutput;
use crate::rotate::Rotations;
use crate::sandbox::MemoryLimiter;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::Linker;

/// One task's capabilities: the per-task state of each module.
#[derive(Debug)]
pub struct Capabilities {
    /// `secrets.get`, and `wasi:config/store` (`config`) through the same state.
    pub secrets: secrets::Secrets,
    /// `log.log`.
    pub log: log::Log,
    /// `context.current`.
    pub context: context::Context,
    /// `rotation.*`, sharing its state with `http`.
    pub rotation: rotation::Rotation,
    /// WASI: stdout and stderr only.
    pub wasi: wasi::Wasi,
    /// Outbound HTTP.
    pub http: http::Http,
}

/// Per-task store data.
pub struct TaskState {
    pub(crate) caps: Capabilities,
    pub(crate) limiter: MemoryLimiter,
}

impl std::fmt::Debug for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskState").field("task", &self.caps.context.0.task).finish_non_exhaustive()
    }
}

impl TaskState {
    /// State for one task: its secrets access and rotations, its output
    /// (stdout, stderr, log) and stdio shape, its network policy (until
    /// `deadline`), memory (all memories and tables together) capped at
    /// `memory_limit` bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        access: SecretAccess,
        rotations: Arc<Rotations>,
        output: TaskOutput,
        stdio: wasi::Stdio,
        network: NetworkPolicy,
        deadline: Instant,
        memory_limit: usize,
    ) -> Self {
        let http = http::Http::new(network, &access, rotations.clone(), deadline);
        let caps = Capabilities {
            http,
            rotation: rotation::Rotation(rotations),
            wasi: wasi::Wasi::new(&output, stdio),
            context: context::Context(access.identity.clone()),
            secrets: secrets::Secrets(access),
            log: log::Log(output),
        };
        TaskState { caps, limiter: MemoryLimiter::new(memory_limit) }
    }
}

/// Adds every capability's imports to `linker`: the one place a new
/// capability is wired in.
pub fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    wasi::add_to_linker(linker)?;
    http::add_to_linker(linker)?;
    secrets::add_to_linker(linker)?;
    log::add_to_linker(linker)?;
    context::add_to_linker(linker)?;
    rotation::add_to_linker(linker)?;
    config::add_to_linker(linker)?;
    Ok(())
}
