//! Running plugin logic under plain `cargo test`, with no host.
//!
//! Outside WebAssembly there is no keyhole host to answer `secrets::get`,
//! `log` or `context::current`. Install a fake one for the current test
//! (each test runs on its own thread, and the fake is per thread):
//!
//! ```
//! use keyhole_guest::testing::FakeHost;
//! use keyhole_guest::{secrets, TaskError};
//!
//! fn token_length(_: ()) -> Result<usize, TaskError> {
//!     keyhole_guest::info!("reading the token");
//!     Ok(secrets::get("API_TOKEN")?.len())
//! }
//!
//! let host = FakeHost::new().secret("API_TOKEN", "t0k3n").install();
//! assert_eq!(token_length(()).unwrap(), 5);
//! assert_eq!(host.reads(), ["API_TOKEN"]);
//! assert_eq!(host.logs()[0].1, "reading the token");
//!
//! // Deny by default, as the real host: a secret the fake was not given is `Denied`.
//! assert_eq!(secrets::get("OTHER"), Err(secrets::Error::Denied));
//! ```
//!
//! Like the real host, the fake refuses every secret it was not given; use
//! [`FakeHost::error`] to make one read fail another way (revoked, expired,
//! unavailable). Outbound HTTP ([`crate::http`]) is not faked: test the code
//! that builds requests and parses responses, not the transport.

use crate::context::Execution;
use crate::log::Level;
use crate::secrets::Error;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A fake keyhole host for native tests: secrets, context and a log.
#[derive(Debug, Clone)]
pub struct FakeHost {
    secrets: HashMap<String, Result<String, Error>>,
    rotatable: Vec<String>,
    context: Execution,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            secrets: HashMap::new(),
            rotatable: Vec::new(),
            context: Execution {
                namespace: String::new(),
                flow: "test".into(),
                task: "test".into(),
                execution_id: "00000000-0000-0000-0000-000000000000".into(),
            },
        }
    }
}

#[derive(Debug, Default)]
struct Recorded {
    reads: Vec<String>,
    logs: Vec<(Level, String)>,
    rotations: Vec<String>,
}

// Read only outside wasm, where the fake answers.
#[cfg_attr(target_family = "wasm", allow(dead_code))]
struct Installed {
    host: FakeHost,
    recorded: Rc<RefCell<Recorded>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Installed>> = const { RefCell::new(None) };
}

impl FakeHost {
    /// A host that grants nothing, in the root namespace, flow and task `test`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Grants `name` with `value`.
    pub fn secret(mut self, name: &str, value: &str) -> Self {
        self.secrets.insert(name.to_owned(), Ok(value.to_owned()));
        self
    }

    /// Lets the task rotate `name`: [`crate::rotation`] calls answer with
    /// placeholders `khp_fake_next_NAME` / `khp_fake_current_NAME` and are
    /// recorded ([`Installation::rotations`]); others are `Denied`.
    pub fn rotatable(mut self, name: &str) -> Self {
        self.rotatable.push(name.to_owned());
        self
    }

    /// Makes reading `name` fail with `error` (e.g. [`Error::Revoked`]).
    pub fn error(mut self, name: &str, error: Error) -> Self {
        self.secrets.insert(name.to_owned(), Err(error));
        self
    }

    /// Sets what `context::current()` returns.
    pub fn context(mut self, namespace: &str, flow: &str, task: &str) -> Self {
        self.context.namespace = namespace.to_owned();
        self.context.flow = flow.to_owned();
        self.context.task = task.to_owned();
        self
    }

    /// Makes this the host of the current thread until the returned guard
    /// is dropped.
    pub fn install(self) -> Installation {
        let recorded = Rc::new(RefCell::new(Recorded::default()));
        CURRENT.with(|c| *c.borrow_mut() = Some(Installed { host: self, recorded: recorded.clone() }));
        Installation { recorded }
    }
}

/// The installed fake: what the code under test read and logged.
#[derive(Debug)]
pub struct Installation {
    recorded: Rc<RefCell<Recorded>>,
}

impl Installation {
    /// The secret names read, in order (denied reads included).
    pub fn reads(&self) -> Vec<String> {
        self.recorded.borrow().reads.clone()
    }

    /// The log lines, in order.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.recorded.borrow().logs.clone()
    }

    /// The rotation steps, in order: `"generate NAME 32 alnum"`,
    /// `"capture NAME /auth/client_token"`, `"commit NAME"`, `"discard NAME"`.
    pub fn rotations(&self) -> Vec<String> {
        self.recorded.borrow().rotations.clone()
    }
}

impl Drop for Installation {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

#[cfg(not(target_family = "wasm"))]
const NO_HOST: &str =
    "no keyhole host: this code runs outside WebAssembly; in a test, install a keyhole_guest::testing::FakeHost first";

#[cfg(not(target_family = "wasm"))]
pub(crate) fn get(name: &str) -> Result<String, Error> {
    CURRENT.with(|c| match &*c.borrow() {
        Some(i) => {
            i.recorded.borrow_mut().reads.push(name.to_owned());
            i.host.secrets.get(name).cloned().unwrap_or(Err(Error::Denied))
        }
        None => Err(Error::Unavailable(NO_HOST.into())),
    })
}

#[cfg(not(target_family = "wasm"))]
pub(crate) fn log(level: Level, message: &str) {
    CURRENT.with(|c| match &*c.borrow() {
        Some(i) => i.recorded.borrow_mut().logs.push((level, message.to_owned())),
        None => eprintln!("{level:?} {message}"),
    })
}

#[cfg(not(target_family = "wasm"))]
pub(crate) fn current() -> Execution {
    CURRENT.with(|c| c.borrow().as_ref().map(|i| i.host.context.clone())).unwrap_or_else(|| panic!("{NO_HOST}"))
}

/// Records rotation `step` of `name` if the fake host lets the task rotate
/// it: whether it does, or that no host is installed.
#[cfg(not(target_family = "wasm"))]
pub(crate) fn rotation(name: &str, step: &str) -> Result<bool, &'static str> {
    CURRENT.with(|c| match &*c.borrow() {
        Some(i) if i.host.rotatable.iter().any(|n| n == name) => {
            let (verb, rest) = step.split_once(' ').unwrap_or((step, ""));
            let line = if rest.is_empty() { format!("{verb} {name}") } else { format!("{verb} {name} {rest}") };
            i.recorded.borrow_mut().rotations.push(line);
            Ok(true)
        }
        Some(_) => Ok(false),
        None => Err(NO_HOST),
    })
}
