//! `keyhole:task/context`: who the task is (namespace, flow, task,
//! execution). Names only: nothing here is secret.

use super::TaskState;
use crate::access::TaskIdentity;
use crate::sandbox::bindings::keyhole::task::context;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

/// The task's `context` state.
#[derive(Debug)]
pub struct Context(pub Arc<TaskIdentity>);

struct Data;

impl HasData for Data {
    type Data<'a> = &'a mut Context;
}

/// Adds `keyhole:task/context`.
pub fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    context::add_to_linker::<TaskState, Data>(linker, |s| &mut s.caps.context)
}

impl context::Host for Context {
    fn current(&mut self) -> context::Execution {
        let id = &self.0;
        context::Execution {
            namespace: id.namespace.as_str().to_owned(),
            flow: id.flow.as_str().to_owned(),
            task: id.task.as_str().to_owned(),
            execution_id: id.execution.as_str().to_owned(),
        }
    }
}
