//! Guest SDK for keyhole task plugins: write one function, add one macro.
//!
//! A keyhole task is a WebAssembly component that exports `run`, takes a JSON
//! document in and gives a JSON document back. This crate hides the component
//! plumbing: you write a plain Rust function over serde types and register it
//! with [`task!`].
//!
//! ```no_run
//! use keyhole_guest::{json, secrets, serde, task, TaskError, Value};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(crate = "keyhole_guest::serde")]
//! struct Input { name: String }
//!
//! fn greet(input: Input) -> Result<Value, TaskError> {
//!     let token = secrets::get("GREETING_TOKEN")?;
//!     Ok(json!({ "greeting": format!("hello, {}", input.name), "token_len": token.len() }))
//! }
//!
//! task!(greet);
//! # fn main() {}
//! ```
//!
//! `keyhole-guest` is the only dependency a plugin needs: it re-exports
//! [`serde`] and [`serde_json`]. Test the logic natively with [`testing`].
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` (the crate
//! must have `crate-type = ["cdylib"]`), or `host plugin build`, and run it with
//! `host exec target/wasm32-wasip2/release/NAME.wasm --grant GREETING_TOKEN`.
//! A `wasm32-wasip1` build works too: the host turns the core module into a
//! component when it loads it.
//!
//! The plugin runs with no files, no environment variables and no network
//! but the HTTP destinations its flow allows ([`http`]).
//! Everything it prints goes to the operator's terminal through the host's
//! masking, prefixed with the task id.

#![warn(missing_docs)]

// Lets the generated bindings name this crate by its public path from both
// inside this crate and inside the plugin crates that expand `task!`.
extern crate self as keyhole_guest;

use std::fmt;

/// Raw bindings generated from `wit/task.wit` (the copy in this crate). Most plugins never need them.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        // The crate's own copy of `wit/` (a tidy test keeps them identical),
        // so the crate builds on its own, packaged or copied elsewhere.
        path: "wit",
        world: "keyhole:task/task",
        pub_export_macro: true,
        export_macro_name: "__export_task",
        default_bindings_module: "::keyhole_guest::bindings",
        runtime_path: "::keyhole_guest::__private::wit_bindgen::rt",
    });
}

pub mod http;
pub mod rotation;
pub mod testing;

/// The `keyhole:task` WIT package version this SDK targets: `0.2.0`
/// (0.1.0 plus `rotation`). A host serves the versions it names in `host
/// plugin inspect`; plugins built against 0.1.0 keep running.
pub const WIT_VERSION: &str = "0.2.0";

/// serde, re-exported so a plugin needs one dependency. To derive with it,
/// name it: `#[derive(keyhole_guest::serde::Deserialize)]` plus
/// `#[serde(crate = "keyhole_guest::serde")]`.
pub use serde;
/// serde_json, re-exported: `keyhole_guest::serde_json::json!`, or the
/// shorter [`json!`](crate::json) and [`Value`].
pub use serde_json::{self, Value, json};

/// Reading secrets the flow granted to this task.
pub mod secrets {
    use crate::bindings::keyhole::task::secrets as wit;
    use std::fmt;

    /// Why the host did not hand out a secret.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Error {
        /// The secret was not granted to this task. Add it to the task's
        /// `secrets:` list in the flow (or `--grant NAME` for `host exec`).
        Denied,
        /// The secret exists in no namespace of this task's namespace chain.
        NotFound,
        /// The secret was revoked by an operator.
        Revoked,
        /// The secret has expired and needs rotating.
        Expired,
        /// The host could not serve the request; the text says why.
        Unavailable(String),
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Error::Denied => f.write_str("secret not granted to this task"),
                Error::NotFound => f.write_str("secret not found in this task's namespaces"),
                Error::Revoked => f.write_str("secret was revoked"),
                Error::Expired => f.write_str("secret has expired"),
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
                wit::Error::Revoked => Error::Revoked,
                wit::Error::Expired => Error::Expired,
                wit::Error::Unavailable(why) => Error::Unavailable(why),
            }
        }
    }

    /// Returns the value of the secret `name`.
    ///
    /// The host answers only if the flow granted `name` to this task, and
    /// records the read in its audit trail first. The value is masked in
    /// everything the task prints, logs or returns.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), keyhole_guest::secrets::Error> {
    /// let key = keyhole_guest::secrets::get("WEBHOOK_SIGNING_KEY")?;
    /// # let _ = key;
    /// # Ok(())
    /// # }
    /// ```
    pub fn get(name: &str) -> Result<String, Error> {
        #[cfg(target_family = "wasm")]
        return wit::get(name).map_err(Error::from);
        #[cfg(not(target_family = "wasm"))]
        return crate::testing::get(name);
    }
}

/// Logging to the operator's terminal (masked, prefixed with the task id).
pub mod log {
    use crate::bindings::keyhole::task::log as wit;

    pub use wit::Level;

    /// Emits one log line at `level`.
    ///
    /// ```no_run
    /// keyhole_guest::log::log(keyhole_guest::log::Level::Warn, "retrying");
    /// ```
    pub fn log(level: Level, message: &str) {
        #[cfg(target_family = "wasm")]
        wit::log(level, message);
        #[cfg(not(target_family = "wasm"))]
        crate::testing::log(level, message);
    }

    /// Emits one line at `info` level.
    ///
    /// ```no_run
    /// keyhole_guest::log::info("signed 3 payloads");
    /// ```
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Emits one line at `warn` level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Emits one line at `error` level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }

    /// Emits one line at `debug` level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
}

/// Logs a formatted line at `info` level: `info!("signed {} payloads", n)`.
///
/// ```no_run
/// let n = 3;
/// keyhole_guest::info!("signed {n} payloads");
/// ```
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::info(&::std::format!($($arg)*)) };
}

/// Logs a formatted line at `warn` level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::warn(&::std::format!($($arg)*)) };
}

/// Logs a formatted line at `error` level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::error(&::std::format!($($arg)*)) };
}

/// Logs a formatted line at `debug` level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::debug(&::std::format!($($arg)*)) };
}

/// Where this task runs: namespace, flow, task id and execution id.
pub mod context {
    pub use crate::bindings::keyhole::task::context::Execution;

    /// Returns the identity of the running task.
    ///
    /// ```no_run
    /// let me = keyhole_guest::context::current();
    /// keyhole_guest::log::info(&format!("running {} in {}", me.task, me.namespace));
    /// ```
    pub fn current() -> Execution {
        #[cfg(target_family = "wasm")]
        return crate::bindings::keyhole::task::context::current();
        #[cfg(not(target_family = "wasm"))]
        return crate::testing::current();
    }
}

/// The error a task function returns: its text becomes the task's error
/// message, shown to the operator and recorded in the execution.
///
/// Anything that is `std::error::Error` converts into it with `?`; build one
/// from a message with [`TaskError::new`].
///
/// ```
/// use keyhole_guest::TaskError;
/// let e = TaskError::new("payload is empty");
/// assert_eq!(e.to_string(), "payload is empty");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError(String);

impl TaskError {
    /// Creates an error with the given message.
    pub fn new(message: impl Into<String>) -> Self {
        TaskError(message.into())
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for TaskError {
    fn from(e: E) -> Self {
        TaskError(e.to_string())
    }
}

/// Registers `fn(Input) -> Result<Output, E>` as the task's `run` export.
///
/// `Input` must implement `serde::Deserialize` and `Output`
/// `serde::Serialize`; `E` must implement `Display` (a [`TaskError`] is the
/// usual choice). Use the macro once per plugin crate, at the top level.
///
/// ```no_run
/// use keyhole_guest::{task, TaskError};
/// use serde_json::Value;
///
/// fn echo(input: Value) -> Result<Value, TaskError> {
///     Ok(input)
/// }
///
/// task!(echo);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! task {
    ($run:path) => {
        #[doc(hidden)]
        struct __KeyholeTask;

        impl $crate::bindings::Guest for __KeyholeTask {
            fn run(input: ::std::string::String) -> ::std::result::Result<::std::string::String, ::std::string::String> {
                $crate::__private::run_json(&input, $run)
            }
        }

        $crate::bindings::__export_task!(__KeyholeTask);
    };
    ($($other:tt)*) => {
        ::std::compile_error!(
            "keyhole_guest::task! takes the path of one function, e.g. `task!(run);` where `fn run(input: In) -> Result<Out, TaskError>`"
        );
    };
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    /// Decodes the JSON input, calls the task function and encodes its output.
    pub fn run_json<I, O, E>(input: &str, run: impl FnOnce(I) -> Result<O, E>) -> Result<String, String>
    where
        I: serde::de::DeserializeOwned,
        O: serde::Serialize,
        E: std::fmt::Display,
    {
        let input: I =
            serde_json::from_str(input).map_err(|e| format!("the task's input does not match what it expects: {e}"))?;
        let output = run(input).map_err(|e| e.to_string())?;
        serde_json::to_string(&output).map_err(|e| format!("the task's output could not be encoded as JSON: {e}"))
    }

    #[cfg(test)]
    mod tests {
        use super::run_json;
        use serde_json::{Value, json};

        #[test]
        fn decodes_input_and_encodes_output() {
            let out = run_json("{\"a\":1}", |v: Value| Ok::<_, String>(json!({"got": v})));
            assert_eq!(out.unwrap(), "{\"got\":{\"a\":1}}");
        }

        #[test]
        fn bad_input_names_the_problem() {
            #[derive(serde::Deserialize, Debug)]
            struct In {
                #[allow(dead_code)]
                payload: String,
            }
            let err = run_json("{}", |_: In| Ok::<_, String>(1)).unwrap_err();
            assert!(err.contains("missing field `payload`"), "{err}");
        }

        #[test]
        fn the_sdk_targets_the_wit_it_carries() {
            let wit = include_str!("../wit/task.wit");
            assert!(wit.contains(&format!("package keyhole:task@{};", crate::WIT_VERSION)));
        }

        #[test]
        fn task_error_text_is_passed_through() {
            let err = run_json("null", |_: Value| Err::<Value, _>("boom")).unwrap_err();
            assert_eq!(err, "boom");
        }
    }
}
