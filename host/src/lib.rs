//! Keyhole: a WebAssembly plugin host for secret-aware tasks.
//!
//! Each task runs as a sandboxed component of the `keyhole:task` world
//! (`wit/task.wit`). It can obtain a secret only through the `secrets.get`
//! import, which [`access::get_secret`] answers after checking the task's
//! [`policy::Grants`]; values are encrypted at rest in the [`store`] and
//! masked by [`mask`] in everything the task prints or returns.
//!
//! See `ARCHITECTURE.md` at the repository root for the codemap.

pub mod access;
pub mod audit;
pub mod authz;
pub mod backend;
pub mod backup;
pub mod capability;
pub mod crypto;
pub mod data_dir;
pub mod db;
pub mod embedded;
pub mod exec;
pub mod executions;
pub mod flow;
pub mod inspect;
pub mod keyring;
pub mod lease;
pub mod limits;
pub mod mask;
pub mod names;
pub mod network;
pub mod output;
pub mod plan;
pub mod policy;
pub mod process;
pub mod registry;
pub mod rotate;
pub mod run;
pub mod runtime;
pub mod sandbox;
pub mod secret;
pub mod server;
pub mod service;
pub mod session;
pub mod store;
pub mod tokens;
pub mod trigger;
pub mod vouch;
