//! `keyhole:task/context`: who the task is (namespace, flow, task,
//! execution). Names only: nothing here is secret.

use super::TaskState;
use crate::access::TaskIdentity;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

/// The task's `context` state.
#[derive(Debug)]
pub struct Context(pub Arc<TaskIdentity>);

struct Data;

impl HasData for Data {
    type Data<'a> = &'a mut Context;
}

/// Adds `keyhole:task/context`, 0.2.0 and 0.1.0.
pub fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    use crate::sandbox::{bindings, bindings_0_1};
    bindings::keyhole::task::context::add_to_linker::<TaskState, Data>(linker, |s| &mut s.caps.context)?;
    bindings_0_1::keyhole::task::context::add_to_linker::<TaskState, Data>(linker, |s| &mut s.caps.context)
}

/// One body for each version's `context::Host`.
macro_rules! host {
    ($($context:ident)::+) => {
        impl $($context)::+::Host for Context {
            fn current(&mut self) -> $($context)::+::Execution {
                let id = &self.0;
                $($context)::+::Execution {
                    namespace: id.namespace.as_str().to_owned(),
                    flow: id.flow.as_str().to_owned(),
                    task: id.task.as_str().to_owned(),
                    execution_id: id.execution.as_str().to_owned(),
                }
            }
        }
    };
}
host!(crate::sandbox::bindings::keyhole::task::context);
host!(crate::sandbox::bindings_0_1::keyhole::task::context);
