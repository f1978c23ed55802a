//! `wasi:config/store`: the standard configuration interface, for
//! components written for other hosts (Spin's SDK imports it, wasmtime
//! ships a host for it). Both versions in use are served, since a component
//! built against one does not link against the other:
//! `wasi:config@0.2.0-draft-2024-09-27` (Spin) and `wasi:config@0.2.0-rc.1`
//! (`wasmtime-wasi-config`).
//!
//! A key is a secret name. Every answer comes from `access::get_secret`, so
//! the policy, the audit record and the masking are exactly those of
//! `secrets.get`: `get(key)` of a name not granted is `none` (audited as
//! denied), `get-all` reads each granted secret (each read audited) and
//! returns those that exist. Destination-bound secrets come back as their
//! placeholders, as they do from `secrets.get`.
//!
//! Invariant: this module decides nothing; it translates.

use super::TaskState;
use super::secrets::Secrets;
use crate::access::{self, AccessError, SecretAccess};
use wasmtime::component::{HasData, Linker};

mod rc1 {
    wasmtime::component::bindgen!({
        inline: "
            package wasi:config@0.2.0-rc.1;
            interface store {
                variant error { upstream(string), io(string) }
                get: func(key: string) -> result<option<string>, error>;
                get-all: func() -> result<list<tuple<string, string>>, error>;
            }
            world config { import store; }
        ",
        world: "wasi:config/config",
    });
}

mod draft {
    wasmtime::component::bindgen!({
        inline: "
            package wasi:config@0.2.0-draft-2024-09-27;
            interface store {
                variant error { upstream(string), io(string) }
                get: func(key: string) -> result<option<string>, error>;
                get-all: func() -> result<list<tuple<string, string>>, error>;
            }
            world config { import store; }
        ",
        world: "wasi:config/config",
    });
}

/// No state of its own: a task's `wasi:config/store` is answered from the
/// state of its `secrets` capability (the same grants, request count,
/// pins and masks).
struct Data;

impl HasData for Data {
    type Data<'a> = &'a mut Secrets;
}

/// Adds both versions of `wasi:config/store`.
pub fn add_to_linker(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    rc1::wasi::config::store::add_to_linker::<TaskState, Data>(linker, |s| &mut s.caps.secrets)?;
    draft::wasi::config::store::add_to_linker::<TaskState, Data>(linker, |s| &mut s.caps.secrets)
}

/// `get(key)`: the value if granted and present, `none` if not granted or
/// absent anywhere in the namespace chain, an error otherwise.
fn get(access: &SecretAccess, key: &str) -> Result<Option<String>, String> {
    match access::get_secret(access, key) {
        Ok(value) => Ok(Some(value.expose().to_owned())),
        Err(AccessError::Denied | AccessError::NotFound) => Ok(None),
        Err(e) => Err(refusal(key, &e, access)),
    }
}

/// `get-all()`: every granted secret that can be read. One that is absent,
/// revoked or expired is left out (its read is audited like any other); a
/// store or audit failure fails the whole call, so a partial answer is
/// never mistaken for a whole one.
fn get_all(access: &SecretAccess) -> Result<Vec<(String, String)>, String> {
    let mut all = Vec::new();
    for name in access.grants.iter() {
        match access::get_secret(access, name.as_str()) {
            Ok(value) => all.push((name.as_str().to_owned(), value.expose().to_owned())),
            Err(AccessError::Unavailable(why)) => return Err(format!("secret store unavailable: {why}")),
            Err(_) => {}
        }
    }
    Ok(all)
}

fn refusal(key: &str, e: &AccessError, access: &SecretAccess) -> String {
    // The key is plugin-chosen text and may carry a value it read before.
    let key = access.masks.mask(key);
    match e {
        AccessError::Revoked => format!("secret {key:?} was revoked"),
        AccessError::Expired => format!("secret {key:?} has expired"),
        AccessError::Unavailable(why) => format!("secret store unavailable: {why}"),
        AccessError::Denied | AccessError::NotFound => unreachable!("answered as none"),
    }
}

impl rc1::wasi::config::store::Host for Secrets {
    fn get(&mut self, key: String) -> Result<Option<String>, rc1::wasi::config::store::Error> {
        get(&self.0, &key).map_err(rc1::wasi::config::store::Error::Upstream)
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, rc1::wasi::config::store::Error> {
        get_all(&self.0).map_err(rc1::wasi::config::store::Error::Upstream)
    }
}

impl draft::wasi::config::store::Host for Secrets {
    fn get(&mut self, key: String) -> Result<Option<String>, draft::wasi::config::store::Error> {
        get(&self.0, &key).map_err(draft::wasi::config::store::Error::Upstream)
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, draft::wasi::config::store::Error> {
        get_all(&self.0).map_err(draft::wasi::config::store::Error::Upstream)
    }
}
