//! The resource limits of one task (memory, time, output): what a flow or
//! `host exec` asks for and the executor enforces. Shared by both, so the
//! flow parser depends on no executor type.

use std::time::Duration;

/// Resource limits for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of linear memory and table space the task may use, all its
    /// memories and tables together.
    pub memory: usize,
    /// Wall-clock time for instantiation and `run` together.
    pub timeout: Duration,
    /// Plugin stdout + stderr + log bytes shown before output is cut off.
    pub output: usize,
}

impl Default for Limits {
    /// 64 MiB memory, 30 s, 1 MiB of output.
    fn default() -> Self {
        Limits { memory: 64 << 20, timeout: Duration::from_secs(30), output: 1 << 20 }
    }
}
