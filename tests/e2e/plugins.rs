//! Builds the plugins in `plugins/` to wasm, once per test process, and
//! hands out their paths. Shared by the end-to-end tests and the benchmarks.
//!
//! Plugins are build artifacts, never committed: this runs
//! `cargo build --release --target wasm32-wasip2` (and `wasm32-wasip1` for
//! the core-module test) into `target/plugins`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The plugins in `plugins/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Plugin {
    /// `plugins/hello`: reads API_TOKEN, greets.
    Hello,
    /// `plugins/hmac-sign`: signs a payload with WEBHOOK_SIGNING_KEY.
    HmacSign,
    /// `plugins/probe`: does what its input asks, hostile things included.
    Probe,
    /// `plugins/webhook-request`: delivers a webhook signed by the host.
    WebhookRequest,
    /// `plugins/open-issue`: calls a JSON API with a bearer token.
    OpenIssue,
    /// `plugins/config-command`: a WASI program with `main` reading `wasi:config/store`.
    ConfigCommand,
    /// `plugins/rotate-http`: rotates a credential at an HTTP service, or calls it.
    RotateHttp,
    /// `plugins/legacy-v010`: built against the frozen `keyhole:task@0.1.0`.
    LegacyV010,
}

impl Plugin {
    fn package(self) -> &'static str {
        match self {
            Plugin::Hello => "hello",
            Plugin::HmacSign => "hmac-sign",
            Plugin::Probe => "probe",
            Plugin::WebhookRequest => "webhook-request",
            Plugin::OpenIssue => "open-issue",
            Plugin::ConfigCommand => "config-command",
            Plugin::RotateHttp => "rotate-http",
            Plugin::LegacyV010 => "legacy-v010",
        }
    }
    fn artifact(self) -> String {
        match self {
            // A binary keeps its name; a cdylib's dashes become underscores.
            Plugin::ConfigCommand => format!("{}.wasm", self.package()),
            _ => format!("{}.wasm", self.package().replace('-', "_")),
        }
    }
}

const ALL: [Plugin; 8] = [
    Plugin::Hello,
    Plugin::HmacSign,
    Plugin::Probe,
    Plugin::WebhookRequest,
    Plugin::OpenIssue,
    Plugin::ConfigCommand,
    Plugin::RotateHttp,
    Plugin::LegacyV010,
];

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ lives in the workspace").to_owned()
}

fn target_dir() -> PathBuf {
    workspace().join("target").join("plugins")
}

fn build(target: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace())
        .args(["build", "--release", "--quiet", "--target", target, "--target-dir"])
        .arg(target_dir())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    for p in ALL {
        cmd.args(["-p", p.package()]);
    }
    let status = cmd.status().expect("cannot run cargo to build the test plugins");
    assert!(
        status.success(),
        "building the plugins for {target} failed; is the target installed? (`rustup target add {target}`)"
    );
}

/// Path to `plugin` built as a wasm32-wasip2 component.
pub fn component(plugin: Plugin) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| build("wasm32-wasip2"));
    target_dir().join("wasm32-wasip2/release").join(plugin.artifact())
}

/// Path to `plugin` built as a wasm32-wasip1 core module.
#[allow(dead_code)]
pub fn core_module(plugin: Plugin) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| build("wasm32-wasip1"));
    target_dir().join("wasm32-wasip1/release").join(plugin.artifact())
}
