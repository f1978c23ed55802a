//! `keyhole:task/rotation` (0.2.0): hands-off rotation. Per task: the
//! shared [`Rotations`] (also seen by outbound HTTP, which reports what
//! the service answered and captures handed-out credentials); every call
//! goes to `rotate`, which decides, stages and audits.

use super::TaskState;
use crate::rotate::{RotateError, Rotations};
use crate::sandbox::bindings::keyhole::task::rotation as wit;
use crate::secret::Charset;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

/// The task's `rotation` state.
#[derive(Debug)]
pub struct Rotation(pub Arc<Rotations>);

struct Data;

impl HasData for Data {
    type Data<'a> = &'a mut Rotation;
}

/// Adds `keyhole:task/rotation`.
pub fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<TaskState, Data>(linker, |s| &mut s.caps.rotation)
}

fn error(e: RotateError) -> wit::Error {
    match e {
        RotateError::Denied => wit::Error::Denied,
        RotateError::NotFound => wit::Error::NotFound,
        RotateError::Refused(why) => wit::Error::Refused(why),
        RotateError::Unavailable(why) => wit::Error::Unavailable(why),
    }
}

fn staged(s: crate::rotate::Staged) -> wit::Staged {
    wit::Staged { next: s.next, current: s.current }
}

impl wit::Host for Rotation {
    fn generate(&mut self, name: String, spec: wit::Generator) -> Result<wit::Staged, wit::Error> {
        let charset = match spec.charset {
            wit::Charset::Alnum => Charset::Alnum,
            wit::Charset::Hex => Charset::Hex,
            wit::Charset::Base64 => Charset::Base64,
            wit::Charset::Ascii => Charset::Ascii,
        };
        self.0.generate(&name, spec.length as usize, charset).map(staged).map_err(error)
    }

    fn capture(&mut self, name: String, pointer: String) -> Result<wit::Staged, wit::Error> {
        self.0.capture(&name, &pointer).map(staged).map_err(error)
    }

    fn commit(&mut self, name: String) -> Result<u64, wit::Error> {
        self.0.commit(&name).map_err(error)
    }

    fn discard(&mut self, name: String) -> Result<(), wit::Error> {
        self.0.discard(&name).map_err(error)
    }
}
