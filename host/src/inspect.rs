//! What a plugin file is, read from its bytes without compiling it: kind
//! (component or core module), shape (keyhole task or WASI command), the
//! `keyhole:task` version it targets, its exports, and each import with the
//! capability it names and what keyhole will do about it.
//!
//! Invariant: reads bytes only; it never compiles, links or runs anything,
//! so it is safe (and fast) on any file, an 18 MB Python component included.

use serde::Serialize;
use wasmparser::{Parser, Payload};

/// The `keyhole:task` package versions this host serves, newest first.
pub const TASK_WIT_VERSIONS: &[&str] = &["0.2.0", "0.1.0"];

/// What a plugin exports, and so how it is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// A `keyhole:task` component: `run(input) -> result<output, error>`.
    Task,
    /// A WASI command (`wasi:cli/run`, or a core module's `_start`): input
    /// on stdin, output on stdout, failure by exit status.
    Command,
}

/// What a plugin file is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `component` or `core-module`.
    pub kind: Kind,
    /// How keyhole runs it, if it can.
    pub shape: Option<Shape>,
    /// Size in bytes.
    pub size: usize,
    /// SHA-256 of the file, lowercase hex: the value to pin in a flow (`sha256:`).
    pub sha256: String,
    /// The `keyhole:task` version its imports name, if it imports any.
    pub keyhole_task_version: Option<String>,
    /// Top-level exports.
    pub exports: Vec<String>,
    /// Top-level imports, each with its capability and keyhole's answer.
    pub imports: Vec<Import>,
}

/// The two kinds of wasm file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A component (`wasm32-wasip2`, componentize-py, componentize-js).
    Component,
    /// A core module (`wasm32-wasip1`), adapted to a component when loaded.
    CoreModule,
}

/// One import and what keyhole makes of it.
#[derive(Debug, Clone, Serialize)]
pub struct Import {
    /// As written in the file (`wasi:http/outgoing-handler@0.2.4`).
    pub name: String,
    /// The capability it belongs to.
    pub capability: Capability,
    /// What keyhole does with it.
    pub keyhole: &'static str,
}

/// The capabilities imports are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `keyhole:task/secrets`.
    Secrets,
    /// `wasi:config/store`.
    Config,
    /// `keyhole:task/log`.
    Log,
    /// `keyhole:task/context`.
    Context,
    /// `keyhole:task/rotation`.
    Rotation,
    /// `wasi:http`.
    Http,
    /// `wasi:sockets`.
    Sockets,
    /// `wasi:filesystem`.
    Filesystem,
    /// `wasi:cli` (stdio, environment, exit).
    Cli,
    /// `wasi:clocks`, `wasi:random`, `wasi:io`.
    Runtime,
    /// Core-module WASI preview1 functions (served through the adapter).
    Preview1,
    /// Anything else: the plugin will not load.
    Unknown,
}

impl Capability {
    /// The name shown in `host plugin inspect`.
    pub fn label(self) -> &'static str {
        match self {
            Capability::Secrets => "secrets",
            Capability::Config => "config",
            Capability::Log => "log",
            Capability::Context => "context",
            Capability::Rotation => "rotation",
            Capability::Http => "http",
            Capability::Sockets => "sockets",
            Capability::Filesystem => "filesystem",
            Capability::Cli => "cli",
            Capability::Runtime => "runtime",
            Capability::Preview1 => "wasi-preview1",
            Capability::Unknown => "unknown",
        }
    }
}

/// Classifies one component import name.
pub fn classify(name: &str) -> (Capability, &'static str) {
    let iface = name.split('@').next().unwrap_or(name);
    match iface {
        "keyhole:task/secrets" => (Capability::Secrets, "granted per secret: `secrets:` in the flow, --grant for exec"),
        "keyhole:task/log" => (Capability::Log, "always: to the operator's terminal, masked"),
        "keyhole:task/context" => (Capability::Context, "always: namespace, flow, task and execution ids"),
        "keyhole:task/rotation" => {
            (Capability::Rotation, "granted per secret: `rotate:` in the flow, --rotate for exec; placeholders only")
        }
        "wasi:config/store" => (Capability::Config, "answered from the task's granted secrets, audited and masked"),
        "wasi:cli/stdin" => (Capability::Cli, "a command's input document; empty for a task"),
        "wasi:cli/stdout" => (Capability::Cli, "a command's output; shown masked for a task"),
        "wasi:cli/stderr" => (Capability::Cli, "shown to the operator, masked"),
        "wasi:cli/environment" => (Capability::Cli, "empty: no environment variables, no arguments"),
        "wasi:cli/exit" => (Capability::Cli, "ends the program; a non-zero status fails the task"),
        _ if iface.starts_with("wasi:cli/terminal") => (Capability::Cli, "no terminal"),
        _ if iface.starts_with("wasi:http/") => {
            (Capability::Http, "only destinations the flow allows (network.allow, --allow-outbound)")
        }
        _ if iface.starts_with("wasi:sockets/") => {
            (Capability::Sockets, "linked, every call refused: no flow grants raw sockets")
        }
        _ if iface.starts_with("wasi:filesystem/") => {
            (Capability::Filesystem, "linked, no directory preopened: every open fails")
        }
        _ if ["wasi:clocks/", "wasi:random/", "wasi:io/"].iter().any(|p| iface.starts_with(p)) => {
            (Capability::Runtime, "always")
        }
        _ => (Capability::Unknown, "not provided: the plugin will not load"),
    }
}

/// One line on what kind of plugin this is: a keyhole task, a WASI
/// command, and whether it reads configuration through `wasi:config/store`.
pub fn describe(shape: Shape, imports: &[String]) -> String {
    let config = imports.iter().any(|i| classify(i).0 == Capability::Config);
    let shape = match shape {
        Shape::Task => "keyhole task (exports run: JSON in, JSON out)",
        Shape::Command => "WASI command (main: input JSON on stdin, output on stdout)",
    };
    if config {
        format!("{shape} reading configuration through wasi:config/store (answered from its grants)")
    } else {
        shape.to_owned()
    }
}

/// Reads a plugin file's bytes.
pub fn inspect(bytes: &[u8]) -> Result<Report, String> {
    let (kind, surface) = if Parser::is_component(bytes) {
        (Kind::Component, component_surface(bytes)?)
    } else if Parser::is_core_wasm(bytes) {
        (Kind::CoreModule, core_surface(bytes)?)
    } else {
        return Err("the file does not start with the WebAssembly magic bytes".into());
    };
    let Surface { shape, version, exports, imports } = surface;
    Ok(Report {
        kind,
        shape,
        size: bytes.len(),
        sha256: sha256_hex(bytes),
        keyhole_task_version: version,
        exports,
        imports,
    })
}

/// What a file exports and imports, and what that makes it.
struct Surface {
    shape: Option<Shape>,
    version: Option<String>,
    exports: Vec<String>,
    imports: Vec<Import>,
}

fn component_surface(bytes: &[u8]) -> Result<Surface, String> {
    let (imports, exports) = component_names(bytes)?;
    let version = imports.iter().find_map(|i| task_version(i));
    let shape = if exports.iter().any(|e| e == "run") {
        Some(Shape::Task)
    } else if exports.iter().any(|e| e.split('@').next() == Some("wasi:cli/run")) {
        Some(Shape::Command)
    } else {
        None
    };
    let imports = imports
        .into_iter()
        .map(|name| {
            let (capability, keyhole) = classify(&name);
            Import { name, capability, keyhole }
        })
        .collect();
    Ok(Surface { shape, version, exports, imports })
}

fn core_surface(bytes: &[u8]) -> Result<Surface, String> {
    let exports = core_exports(bytes).map_err(|e| e.to_string())?;
    let mut imports = Vec::new();
    let mut version = None;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| e.to_string())? {
            Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    let import = import.map_err(|e| e.to_string())?;
                    let (capability, keyhole) = if import.module == "wasi_snapshot_preview1" {
                        (Capability::Preview1, "served through the preview1 adapter, same sandbox")
                    } else {
                        if version.is_none() {
                            version = task_version(import.module);
                        }
                        classify(import.module)
                    };
                    imports.push(Import { name: format!("{}::{}", import.module, import.name), capability, keyhole });
                }
            }
            Payload::CustomSection(c) if version.is_none() && c.name().starts_with("component-type") => {
                // wit-bindgen's world description names the package.
                let data = c.data();
                if let Some(at) = memchr::memmem::find(data, b"keyhole:task@") {
                    let rest = &data[at + "keyhole:task@".len()..];
                    let end = rest.iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-'));
                    version = std::str::from_utf8(&rest[..end.unwrap_or(rest.len())]).ok().map(str::to_owned);
                }
            }
            _ => {}
        }
    }
    let shape = if exports.iter().any(|e| e == "_start") {
        Some(Shape::Command)
    } else if exports.iter().any(|e| e == "run") {
        Some(Shape::Task)
    } else {
        None
    };
    Ok(Surface { shape, version, exports, imports })
}

/// SHA-256 of `bytes`, lowercase hex: how a plugin is named in pins, the
/// compiled cache and the audit trail.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(crate::crypto::sha256(bytes))
}

/// `0.1.0` from `keyhole:task/secrets@0.1.0`.
fn task_version(import: &str) -> Option<String> {
    import.strip_prefix("keyhole:task/")?.split_once('@').map(|(_, v)| v.to_owned())
}

/// The names a core module exports.
pub fn core_exports(module: &[u8]) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::ExportSection(section) = payload? {
            for export in section {
                names.push(export?.name.to_owned());
            }
        }
    }
    Ok(names)
}

/// The top-level import and export names of a component (nested modules
/// and components have their own, which are not the plugin's).
fn component_names(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| e.to_string())? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    imports.push(import.map_err(|e| e.to_string())?.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    exports.push(export.map_err(|e| e.to_string())?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_grouped_by_capability() {
        assert_eq!(classify("keyhole:task/secrets@0.1.0").0, Capability::Secrets);
        assert_eq!(classify("wasi:config/store@0.2.0-draft-2024-09-27").0, Capability::Config);
        assert_eq!(classify("wasi:config/store@0.2.0-rc.1").0, Capability::Config);
        assert_eq!(classify("wasi:http/outgoing-handler@0.2.4").0, Capability::Http);
        assert_eq!(classify("wasi:sockets/tcp@0.2.0").0, Capability::Sockets);
        assert_eq!(classify("wasi:filesystem/preopens@0.2.3").0, Capability::Filesystem);
        assert_eq!(classify("wasi:cli/stdin@0.2.0").0, Capability::Cli);
        assert_eq!(classify("wasi:io/streams@0.2.0").0, Capability::Runtime);
        assert_eq!(classify("acme:db/query").0, Capability::Unknown);
    }

    #[test]
    fn a_core_module_with_start_is_a_command() {
        let wasm = wat::parse_str(
            r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                       (memory (export "memory") 1) (func (export "_start")))"#,
        )
        .unwrap();
        let r = inspect(&wasm).unwrap();
        assert_eq!(r.kind, Kind::CoreModule);
        assert_eq!(r.shape, Some(Shape::Command));
        assert_eq!(r.imports[0].name, "wasi_snapshot_preview1::fd_write");
        assert_eq!(r.imports[0].capability, Capability::Preview1);
        assert_eq!(r.sha256.len(), 64);
    }

    proptest::proptest! {
        /// Any file, however crafted, is an answer or an error: never a
        /// panic. Mutations of a real component reach deep into the parser.
        #[test]
        fn crafted_files_never_panic(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 0..8),
        ) {
            let mut raw = b"\0asm\x01\0\0\0".to_vec();
            raw.extend_from_slice(&tail);
            let _ = inspect(&raw);
            let mut component = COMPONENT.with(|c| c.clone());
            for (at, byte) in flips {
                let n = component.len();
                component[at % n] = byte;
            }
            let _ = inspect(&component);
        }
    }

    thread_local! {
        static COMPONENT: Vec<u8> = wat::parse_str(
            r#"(component
                 (import "keyhole:task/secrets@0.1.0" (instance))
                 (core module $m (func (export "run")))
                 (core instance $i (instantiate $m))
                 (func $run (canon lift (core func $i "run")))
                 (export "run" (func $run)))"#,
        )
        .unwrap();
    }

    #[test]
    fn a_component_names_its_task_version_and_shape() {
        let r = COMPONENT.with(|c| inspect(c)).unwrap();
        assert_eq!(r.kind, Kind::Component);
        assert_eq!(r.shape, Some(Shape::Task));
        assert_eq!(r.keyhole_task_version.as_deref(), Some("0.1.0"));
        assert_eq!(r.imports[0].capability, Capability::Secrets);
    }

    #[test]
    fn not_wasm_is_an_error() {
        assert!(inspect(b"#!/bin/sh\n").unwrap_err().contains("magic bytes"));
    }
}
