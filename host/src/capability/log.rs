//! `keyhole:task/log`: structured log lines into the task's output, which
//! masks and bounds them like stdout and stderr.

use super::TaskState;
use crate::output::TaskOutput;
use crate::sandbox::bindings::keyhole::task::log;
use wasmtime::component::{HasData, Linker};

/// The task's `log` state: where its lines go.
#[derive(Debug)]
pub struct Log(pub TaskOutput);

struct Data;

impl HasData for Data {
    type Data<'a> = &'a mut Log;
}

/// Adds `keyhole:task/log`.
pub fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    log::add_to_linker::<TaskState, Data>(linker, |s| &mut s.caps.log)
}

impl log::Host for Log {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Trace => "TRACE",
            log::Level::Debug => "DEBUG",
            log::Level::Info => "INFO",
            log::Level::Warn => "WARN",
            log::Level::Error => "ERROR",
        };
        self.0.log(level, &message);
    }
}
