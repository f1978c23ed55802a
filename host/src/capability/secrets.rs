//! `keyhole:task/secrets`: the plugin's one way to a secret. Per task: the
//! grants and the shared plane, as [`SecretAccess`]; every call goes to
//! [`access::get_secret`], which decides, audits and masks.

use super::TaskState;
use crate::access::{self, AccessError, SecretAccess};
use crate::sandbox::bindings::keyhole::task::secrets;
use wasmtime::component::{HasData, Linker};

/// The task's `secrets` state.
#[derive(Debug)]
pub struct Secrets(pub SecretAccess);

struct Data;

impl HasData for Data {
    type Data<'a> = &'a mut Secrets;
}

/// Adds `keyhole:task/secrets`.
pub fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    secrets::add_to_linker::<TaskState, Data>(linker, |s| &mut s.caps.secrets)
}

impl secrets::Host for Secrets {
    fn get(&mut self, name: String) -> Result<String, secrets::Error> {
        match access::get_secret(&self.0, &name) {
            Ok(value) => Ok(value.expose().to_owned()),
            Err(e) => Err(match e {
                AccessError::Denied => secrets::Error::Denied,
                AccessError::NotFound => secrets::Error::NotFound,
                AccessError::Revoked => secrets::Error::Revoked,
                AccessError::Expired => secrets::Error::Expired,
                AccessError::Unavailable(why) => secrets::Error::Unavailable(why),
            }),
        }
    }
}
