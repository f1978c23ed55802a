//! Hands-off rotation: change a service's credential and keyhole's copy in
//! one step, without the task ever holding the old or the new value.
//!
//! The flow must let the task rotate the secret (`rotate: [NAME]`, never
//! implied by `secrets:`), and the secret must be bound to the service's
//! destinations. The task gets placeholders; the host puts the values into
//! requests to those destinations as they leave.
//!
//! Host-generated (the service takes the password you give it):
//!
//! ```no_run
//! use keyhole_guest::{http, rotation, secrets, TaskError};
//!
//! fn rotate() -> Result<u64, TaskError> {
//!     let admin = secrets::get("VAULT_ADMIN_TOKEN")?;
//!     let staged = rotation::generate("SERVICE_PASSWORD", 32, rotation::Charset::Alnum)?;
//!     let body = format!(r#"{{"password":"{}"}}"#, staged.next);
//!     let r = http::post("https://vault.example.com/v1/auth/userpass/users/svc/password")
//!         .header("x-vault-token", &admin)
//!         .body(body)
//!         .send()?;
//!     if !r.is_success() {
//!         // Never accepted by the service: erase it (the host would, at the end).
//!         rotation::discard("SERVICE_PASSWORD")?;
//!         return Err(TaskError::new(format!("the service answered {}", r.status)));
//!     }
//!     Ok(rotation::commit("SERVICE_PASSWORD")?)
//! }
//! ```
//!
//! Service-generated (the service hands out the new credential):
//! [`capture`] names the field of the answer that holds it; the host stores
//! it and the task reads the placeholder in its place.

use crate::bindings::keyhole::task::rotation as wit;
use std::fmt;

/// Characters of a generated value.
pub use wit::Charset;

/// Placeholders of a rotation in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// Stands for the new value: put it where the service expects it.
    pub next: String,
    /// Stands for the current value, for a service that wants it to
    /// authenticate the change; `None` if it is revoked or expired.
    pub current: Option<String>,
}

/// Why a rotation step was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The flow does not let this task rotate the secret: add it to the
    /// task's `rotate:` list (or `--rotate NAME` for `host exec`).
    Denied,
    /// The secret exists in no namespace of this task's namespace chain.
    NotFound,
    /// Not possible now; the text says why and what to do.
    Refused(String),
    /// The host could not serve the request; the text says why.
    Unavailable(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied => f.write_str("rotation of this secret is not granted to this task"),
            Error::NotFound => f.write_str("secret not found in this task's namespaces"),
            Error::Refused(why) => write!(f, "rotation refused: {why}"),
            Error::Unavailable(why) => write!(f, "secret store unavailable: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<wit::Error> for Error {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::Denied => Error::Denied,
            wit::Error::NotFound => Error::NotFound,
            wit::Error::Refused(why) => Error::Refused(why),
            wit::Error::Unavailable(why) => Error::Unavailable(why),
        }
    }
}

#[cfg(target_family = "wasm")]
fn staged(s: wit::Staged) -> Staged {
    Staged { next: s.next, current: s.current }
}

/// Stages a new random value of `name` (`length` characters of `charset`,
/// 8 to 4096) and returns its placeholders. Send `next` to the service,
/// then [`commit`].
pub fn generate(name: &str, length: u32, charset: Charset) -> Result<Staged, Error> {
    #[cfg(target_family = "wasm")]
    return wit::generate(name, wit::Generator { length, charset }).map(staged).map_err(Error::from);
    #[cfg(not(target_family = "wasm"))]
    return fake(name, &format!("generate {length} {}", charset_name(charset)));
}

/// The fake host's answer to rotation `step` of `name` (native tests):
/// placeholders that say what they stand for.
#[cfg(not(target_family = "wasm"))]
fn fake(name: &str, step: &str) -> Result<Staged, Error> {
    match crate::testing::rotation(name, step) {
        Ok(true) => {
            Ok(Staged { next: format!("khp_fake_next_{name}"), current: Some(format!("khp_fake_current_{name}")) })
        }
        Ok(false) => Err(Error::Denied),
        Err(no_host) => Err(Error::Unavailable(no_host.into())),
    }
}

#[cfg(not(target_family = "wasm"))]
fn charset_name(charset: Charset) -> &'static str {
    match charset {
        Charset::Alnum => "alnum",
        Charset::Hex => "hex",
        Charset::Base64 => "base64",
        Charset::Ascii => "ascii",
    }
}

/// Captures the new value of `name` from the first 2xx JSON answer of one
/// of its destinations, at `pointer` (a JSON pointer such as
/// `/auth/client_token`); the task reads `next` there instead.
pub fn capture(name: &str, pointer: &str) -> Result<Staged, Error> {
    #[cfg(target_family = "wasm")]
    return wit::capture(name, pointer).map(staged).map_err(Error::from);
    #[cfg(not(target_family = "wasm"))]
    return fake(name, &format!("capture {pointer}"));
}

/// Makes the staged value current (once the service accepted it) and
/// returns its version number.
pub fn commit(name: &str) -> Result<u64, Error> {
    #[cfg(target_family = "wasm")]
    return wit::commit(name).map_err(Error::from);
    #[cfg(not(target_family = "wasm"))]
    return fake(name, "commit").map(|_| 2);
}

/// Erases the staged value (refused once the service may hold it).
pub fn discard(name: &str) -> Result<(), Error> {
    #[cfg(target_family = "wasm")]
    return wit::discard(name).map_err(Error::from);
    #[cfg(not(target_family = "wasm"))]
    return fake(name, "discard").map(|_| ());
}

#[cfg(all(test, not(target_family = "wasm")))]
mod tests {
    use super::*;
    use crate::testing::FakeHost;

    #[test]
    fn the_fake_host_answers_with_placeholders_and_records_each_step() {
        let host = FakeHost::new().rotatable("SERVICE_PASSWORD").install();
        let staged = generate("SERVICE_PASSWORD", 32, Charset::Alnum).unwrap();
        assert_eq!(staged.next, "khp_fake_next_SERVICE_PASSWORD");
        assert_eq!(commit("SERVICE_PASSWORD").unwrap(), 2);
        assert_eq!(capture("OTHER", "/token"), Err(Error::Denied), "deny by default, as the real host");
        assert_eq!(host.rotations(), ["generate SERVICE_PASSWORD 32 alnum", "commit SERVICE_PASSWORD"]);
    }
}
