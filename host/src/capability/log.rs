//! `keyhole:task/log`: structured log lines into the task's output, which
//! masks and bounds them like stdout and stderr.

use super::TaskState;
use crate::output::TaskOutput;
use wasmtime::component::{HasData, Linker};

/// The task's `log` state: where its lines go.
#[derive(Debug)]
pub struct Log(pub TaskOutput);

struct Data;

impl HasData for Data {
    type Data<'a> = &'a mut Log;
}

/// Adds `keyhole:task/log`, 0.2.0 and 0.1.0.
pub fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    use crate::sandbox::{bindings, bindings_0_1};
    bindings::keyhole::task::log::add_to_linker::<TaskState, Data>(linker, |s| &mut s.caps.log)?;
    bindings_0_1::keyhole::task::log::add_to_linker::<TaskState, Data>(linker, |s| &mut s.caps.log)
}

/// One body for each version's `log::Host`.
macro_rules! host {
    ($($log:ident)::+) => {
        impl $($log)::+::Host for Log {
            fn log(&mut self, level: $($log)::+::Level, message: String) {
                use $($log)::+::Level;
                let level = match level {
                    Level::Trace => "TRACE",
                    Level::Debug => "DEBUG",
                    Level::Info => "INFO",
                    Level::Warn => "WARN",
                    Level::Error => "ERROR",
                };
                self.0.log(level, &message);
            }
        }
    };
}
host!(crate::sandbox::bindings::keyhole::task::log);
host!(crate::sandbox::bindings_0_1::keyhole::task::log);
