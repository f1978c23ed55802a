//! `keyhole:task/secrets`: the plugin's one way to a secret. Per task: the
//! grants and the shared plane, as [`SecretAccess`]; every call goes to
//! [`access::get_secret`], which decides, audits and masks.

use super::TaskState;
use crate::access::{self, AccessError, SecretAccess};
use wasmtime::component::{HasData, Linker};

/// The task's `secrets` state.
#[derive(Debug)]
pub struct Secrets(pub SecretAccess);

struct Data;

impl HasData for Data {
    type Data<'a> = &'a mut Secrets;
}

/// Adds `keyhole:task/secrets`, 0.2.0 and 0.1.0.
pub fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    use crate::sandbox::{bindings, bindings_0_1};
    bindings::keyhole::task::secrets::add_to_linker::<TaskState, Data>(linker, |s| &mut s.caps.secrets)?;
    bindings_0_1::keyhole::task::secrets::add_to_linker::<TaskState, Data>(linker, |s| &mut s.caps.secrets)
}

/// One body for each version's `secrets::Host`.
macro_rules! host {
    ($($secrets:ident)::+) => {
        impl $($secrets)::+::Host for Secrets {
            fn get(&mut self, name: String) -> Result<String, $($secrets)::+::Error> {
                use $($secrets)::+::Error;
                match access::get_secret(&self.0, &name) {
                    Ok(value) => Ok(value.expose().to_owned()),
                    Err(e) => Err(match e {
                        AccessError::Denied => Error::Denied,
                        AccessError::NotFound => Error::NotFound,
                        AccessError::Revoked => Error::Revoked,
                        AccessError::Expired => Error::Expired,
                        AccessError::Unavailable(why) => Error::Unavailable(why),
                    }),
                }
            }
        }
    };
}
host!(crate::sandbox::bindings::keyhole::task::secrets);
host!(crate::sandbox::bindings_0_1::keyhole::task::secrets);
