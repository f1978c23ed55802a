//! End-to-end tests: the real `host` binary, real SQLite files, real plugins
//! built from `plugins/`. One test binary (see `support` for the helpers).

mod plugins;
mod support;

mod audit;
mod authors;
mod aws;
mod console;
mod dynamic;
mod engine;
mod exec;
mod flows;
mod hardening;
mod lifecycle;
mod masking;
mod network;
mod records;
mod rotation;
mod safety;
mod sandbox;
mod server;
mod store;
mod tidy;
mod vault;
mod vouch;
