//! `host plugin new | build | inspect | compile`: the plugin author's loop.
//! Templates live in `host/templates/`; the Python and JavaScript SDKs are
//! copied from `guest-sdk/` into each new project, so a project builds
//! without network access to this repository.

use super::*;
use keyhole::inspect::{self, Capability, Report, TASK_WIT_VERSIONS};
use keyhole::runtime::{Compiler, LoadedFrom, Runtime, RuntimeOptions};
use std::process::Stdio;

#[derive(Subcommand, Debug)]
pub(crate) enum PluginCommand {
    /// Start a plugin project that builds as it is: a task reading one
    /// granted secret, a native test against a fake host, and a README.
    New(NewArgs),
    /// Build the plugin project in DIR with its language's toolchain; the
    /// last line of stdout is the path of the built component.
    Build(BuildArgs),
    /// What a wasm file is: kind, shape, size, the SHA-256 to pin, the
    /// keyhole:task version, exports, and imports by capability with what
    /// keyhole grants or refuses. Compiles nothing.
    Inspect(InspectArgs),
    /// Compile plugins into the compiled-plugin cache now (e.g. when baking
    /// a CI image), so their first run starts at once.
    Compile(CompileArgs),
    /// Remove the deployed plugins no revision of any flow references (on
    /// the data directory; audited as `plugin.gc`).
    Gc {
        /// Spare plugins stored more recently than this (a deploy may be
        /// uploading them).
        #[arg(long, value_parser = parse_duration, default_value = "1h", value_name = "DURATION")]
        older_than: Duration,
    },
}

/// Languages `plugin new` and `plugin build` know.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    /// Rust, with the keyhole-guest crate (cargo, wasm32-wasip2).
    Rust,
    /// Python, with componentize-py.
    Python,
    /// JavaScript, with componentize-js.
    Js,
}

#[derive(Args, Debug)]
pub(crate) struct NewArgs {
    /// Project name: lowercase letters, digits and '-', starting with a letter.
    name: String,
    /// Language of the project.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// Where to create it [default: ./NAME]; must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Rust: depend on the keyhole-guest crate at this path [default: the
    /// SDK this host was built from, when it is still there].
    #[arg(long, value_name = "DIR", conflicts_with = "sdk_version")]
    sdk_path: Option<PathBuf>,
    /// Rust: depend on keyhole-guest from crates.io with this version requirement.
    #[arg(long, value_name = "REQ")]
    sdk_version: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct BuildArgs {
    /// The project directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// The wasm file.
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct CompileArgs {
    /// The wasm files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub(crate) fn plugin(dir: &DataDir, cmd: PluginCommand, compiler: Compiler) -> Result<(), Exit> {
    match cmd {
        PluginCommand::New(args) => new(args).map_err(|e| fail(USAGE, e)),
        PluginCommand::Build(args) => build(&args.dir),
        PluginCommand::Inspect(args) => inspect_cmd(args),
        PluginCommand::Compile(args) => compile(dir, args, compiler),
        PluginCommand::Gc { older_than } => gc(dir, older_than),
    }
}

/// `plugin gc`: what no revision references goes, on the record.
fn gc(dir: &DataDir, older_than: Duration) -> Result<(), Exit> {
    let state = super::open_state(dir)?;
    let me = keyhole::audit::Actor::current_user();
    let done = keyhole::service::operator::collect_plugins(&state, &me, older_than)?;
    eprintln!("removed {} plugin(s) no flow revision references ({} bytes)", done.removed.len(), done.bytes);
    Ok(())
}

// ---- new ----

const WIT: &str = include_str!("../../../wit/task.wit");

fn template(lang: Lang) -> &'static [(&'static str, &'static str)] {
    match lang {
        Lang::Rust => &[
            ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml")),
            ("src/lib.rs", include_str!("../../templates/rust/src/lib.rs")),
            ("README.md", include_str!("../../templates/rust/README.md")),
            (".gitignore", include_str!("../../templates/rust/.gitignore")),
        ],
        Lang::Python => &[
            ("app.py", include_str!("../../templates/python/app.py")),
            ("test_app.py", include_str!("../../templates/python/test_app.py")),
            ("README.md", include_str!("../../templates/python/README.md")),
            (".gitignore", include_str!("../../templates/python/.gitignore")),
            ("keyhole/__init__.py", include_str!("../../../guest-sdk/python/keyhole/__init__.py")),
            ("keyhole/testing.py", include_str!("../../../guest-sdk/python/keyhole/testing.py")),
            ("wit/task.wit", WIT),
        ],
        Lang::Js => &[
            ("app.js", include_str!("../../templates/js/app.js")),
            ("test/app.test.js", include_str!("../../templates/js/test/app.test.js")),
            ("package.json", include_str!("../../templates/js/package.json")),
            ("README.md", include_str!("../../templates/js/README.md")),
            (".gitignore", include_str!("../../templates/js/.gitignore")),
            ("keyhole/index.js", include_str!("../../../guest-sdk/js/keyhole/index.js")),
            ("keyhole/testing.js", include_str!("../../../guest-sdk/js/keyhole/testing.js")),
            ("wit/task.wit", WIT),
        ],
    }
}

fn valid_project_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// The keyhole-guest dependency line of a new Rust project.
fn sdk_dependency(args: &NewArgs) -> Result<(String, String)> {
    if let Some(req) = &args.sdk_version {
        return Ok((format!("{req:?}"), format!("keyhole-guest {req} from crates.io")));
    }
    let path = match &args.sdk_path {
        Some(p) => p.clone(),
        None => {
            let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
            if !built_from.join("Cargo.toml").is_file() {
                let req = format!("\"{}\"", env!("CARGO_PKG_VERSION"));
                return Ok((req, format!("keyhole-guest {} from crates.io", env!("CARGO_PKG_VERSION"))));
            }
            built_from
        }
    };
    let path = path.canonicalize().with_context(|| format!("--sdk-path {}", path.display()))?;
    if !path.join("Cargo.toml").is_file() {
        bail!("--sdk-path {}: no Cargo.toml there; point it at keyhole's guest-sdk/ directory", path.display());
    }
    let shown = path.display().to_string();
    Ok((format!("{{ path = {shown:?} }}"), format!("keyhole-guest at {shown}")))
}

fn new(args: NewArgs) -> Result<()> {
    if !valid_project_name(&args.name) {
        bail!(
            "{:?} is not a project name: use lowercase letters, digits and '-', starting with a letter (e.g. sign-payload)",
            args.name
        );
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?.next().is_some()
    {
        bail!("{} already exists and is not empty: choose another --dir", dir.display());
    }
    let (sdk, sdk_shown) = if args.lang == Lang::Rust { sdk_dependency(&args)? } else { Default::default() };
    for (path, text) in template(args.lang) {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = text.replace("{{name}}", &args.name).replace("{{sdk}}", &sdk);
        std::fs::write(&target, text).with_context(|| format!("cannot write {}", target.display()))?;
    }
    let mut out = std::io::stdout().lock();
    let test = match args.lang {
        Lang::Rust => "cargo test",
        Lang::Python => "python3 -m unittest",
        Lang::Js => "npm install && npm test",
    };
    let lang = match args.lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
    };
    let _ = writeln!(out, "created {} ({lang} plugin)", dir.display());
    if !sdk_shown.is_empty() {
        let _ = writeln!(out, "  depends on {sdk_shown}");
    }
    let _ = writeln!(out, "next:\n  cd {}\n  {test}\n  host plugin build", dir.display());
    Ok(())
}

// ---- build ----

fn detect(dir: &Path) -> Option<Lang> {
    if dir.join("Cargo.toml").is_file() {
        Some(Lang::Rust)
    } else if dir.join("package.json").is_file() {
        Some(Lang::Js)
    } else if dir.join("app.py").is_file() {
        Some(Lang::Python)
    } else {
        None
    }
}

fn build(dir: &Path) -> Result<(), Exit> {
    let lang = detect(dir).ok_or_else(|| {
        fail(
            USAGE,
            anyhow::anyhow!(
                "{} is not a plugin project: no Cargo.toml, package.json or app.py there (start one with `host plugin new NAME`)",
                dir.display()
            ),
        )
    })?;
    let built = match lang {
        Lang::Rust => build_rust(dir),
        Lang::Python => build_componentize(dir, Lang::Python),
        Lang::Js => build_componentize(dir, Lang::Js),
    }?;
    let built = built.canonicalize().unwrap_or(built);
    writeln!(std::io::stdout().lock(), "{}", built.display()).map_err(stdout_err)
}

/// Where a missing tool is reported: what to install, the exact command.
fn missing(tool: &str, install: &str) -> Exit {
    fail(
        USAGE,
        anyhow::anyhow!(
            "{tool} is not installed (or not on PATH): install it with `{install}`, then run `host plugin build` again"
        ),
    )
}

fn on_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
}

fn build_rust(dir: &Path) -> Result<PathBuf, Exit> {
    let cargo = std::env::var_os("CARGO").map(PathBuf::from).or_else(|| on_path("cargo"));
    let cargo = cargo.ok_or_else(|| missing("cargo", "curl https://sh.rustup.rs -sSf | sh"))?;
    if let Some(rustup) = on_path("rustup") {
        let installed = std::process::Command::new(rustup).args(["target", "list", "--installed"]).output();
        if installed.is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).lines().any(|l| l == "wasm32-wasip2")) {
            return Err(missing("the wasm32-wasip2 target", "rustup target add wasm32-wasip2"));
        }
    }
    eprintln!("building {} with cargo (wasm32-wasip2, release)", dir.display());
    let output = std::process::Command::new(cargo)
        .current_dir(dir)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| fail(HOST, anyhow::anyhow!("cannot run cargo: {e}")))?;
    if !output.status.success() {
        return Err(fail(
            TASK_ERROR,
            anyhow::anyhow!("cargo build failed in {} (its errors are above)", dir.display()),
        ));
    }
    // The artifact cargo reports: right whatever CARGO_TARGET_DIR says.
    let wasm = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .rfind(|f| f.extension().is_some_and(|e| e == "wasm"));
    wasm.ok_or_else(|| {
        fail(
            USAGE,
            anyhow::anyhow!(
                "cargo built no .wasm in {}: a plugin crate needs `crate-type = [\"cdylib\"]` under [lib] (or a `main` for a WASI command)",
                dir.display()
            ),
        )
    })
}

fn project_name(dir: &Path, lang: Lang) -> String {
    let from_package = (lang == Lang::Js)
        .then(|| std::fs::read_to_string(dir.join("package.json")).ok())
        .flatten()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["name"].as_str().map(str::to_owned));
    let name = from_package
        .or_else(|| dir.canonicalize().ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())));
    let name: String = name
        .unwrap_or_else(|| "plugin".into())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    if name.is_empty() { "plugin".into() } else { name }
}

fn build_componentize(dir: &Path, lang: Lang) -> Result<PathBuf, Exit> {
    let name = project_name(dir, lang);
    let out = Path::new("dist").join(format!("{name}.wasm"));
    std::fs::create_dir_all(dir.join("dist"))
        .map_err(|e| fail(HOST, anyhow::anyhow!("cannot create {}: {e}", dir.join("dist").display())))?;
    // The project's own copy of the contract (written by `plugin new`),
    // else the one this host serves.
    let wit = if dir.join("wit").is_dir() {
        PathBuf::from("wit")
    } else {
        let tmp = std::env::temp_dir().join(format!("keyhole-wit-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)
            .and_then(|()| std::fs::write(tmp.join("task.wit"), WIT))
            .map_err(|e| fail(HOST, anyhow::anyhow!("cannot write the WIT files to {}: {e}", tmp.display())))?;
        tmp
    };
    let mut cmd = match lang {
        Lang::Python => {
            let tool = on_path("componentize-py")
                .ok_or_else(|| missing("componentize-py", "pip install componentize-py==0.25.1"))?;
            let mut c = std::process::Command::new(tool);
            c.arg("-d").arg(&wit).args(["-w", "task", "componentize", "app", "-o"]).arg(&out);
            c
        }
        Lang::Js => {
            let local = dir.join("node_modules/.bin/componentize-js");
            let tool = if local.is_file() { Some(local) } else { on_path("componentize-js") };
            let tool = tool.ok_or_else(|| {
                missing(
                    "componentize-js",
                    &format!("cd {} && npm install --save-dev @bytecodealliance/componentize-js", dir.display()),
                )
            })?;
            let mut c = std::process::Command::new(tool);
            c.arg("--wit").arg(&wit).args(["--world-name", "task", "-o"]).arg(&out).arg("app.js");
            c
        }
        Lang::Rust => unreachable!("cargo builds Rust"),
    };
    eprintln!("building {} with {:?} (about 20 s)", dir.display(), cmd.get_program());
    let status = cmd
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| fail(HOST, anyhow::anyhow!("cannot run {:?}: {e}", cmd.get_program())))?;
    if !status.success() {
        return Err(fail(
            TASK_ERROR,
            anyhow::anyhow!("{:?} failed in {} (its errors are above)", cmd.get_program(), dir.display()),
        ));
    }
    Ok(dir.join(out))
}

// ---- inspect ----

fn inspect_cmd(args: InspectArgs) -> Result<(), Exit> {
    let bytes = keyhole::data_dir::read_bounded(&args.file, keyhole::runtime::MAX_PLUGIN_BYTES)
        .map_err(|e| fail(USAGE, anyhow::anyhow!("cannot read {}: {e}", args.file.display())))?;
    let report = inspect::inspect(&bytes).map_err(|e| {
        fail(USAGE, anyhow::anyhow!("{} is not a WebAssembly component or module: {e}", args.file.display()))
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        return print_json(&mut out, &report);
    }
    print_report(&mut out, &args.file, &report).map_err(stdout_err)
}

fn print_report(out: &mut impl Write, file: &Path, r: &Report) -> std::io::Result<()> {
    writeln!(out, "{}", file.display())?;
    let kind = match r.kind {
        inspect::Kind::Component => "component",
        inspect::Kind::CoreModule => "core module (wasm32-wasip1; adapted to a component when loaded)",
    };
    writeln!(out, "  kind     {kind}")?;
    let imports: Vec<String> = r.imports.iter().map(|i| i.name.clone()).collect();
    match r.shape {
        Some(shape) => writeln!(out, "  shape    {}", inspect::describe(shape, &imports))?,
        None => writeln!(
            out,
            "  shape    none keyhole runs: it exports neither `run` (a keyhole task) nor wasi:cli/run / _start (a WASI command)"
        )?,
    }
    writeln!(out, "  size     {} bytes ({:.1} MiB)", r.size, r.size as f64 / (1 << 20) as f64)?;
    writeln!(out, "  sha256   {}  (pin it in a flow task: `sha256: ...`)", r.sha256)?;
    match &r.keyhole_task_version {
        Some(v) if TASK_WIT_VERSIONS.contains(&v.as_str()) => {
            writeln!(out, "  targets  keyhole:task@{v} (this host serves it)")?
        }
        Some(v) => writeln!(
            out,
            "  targets  keyhole:task@{v}: this host serves only {}; it will not load",
            TASK_WIT_VERSIONS.join(" and ")
        )?,
        None => writeln!(out, "  targets  no keyhole:task import (standard WASI only)")?,
    }
    writeln!(out, "  exports  {}", if r.exports.is_empty() { "(none)".to_owned() } else { r.exports.join(", ") })?;
    writeln!(out, "imports, by capability:")?;
    let mut groups: Vec<Capability> = r.imports.iter().map(|i| i.capability).collect();
    groups.sort();
    groups.dedup();
    for cap in groups {
        let members: Vec<&inspect::Import> = r.imports.iter().filter(|i| i.capability == cap).collect();
        let same = members.iter().all(|i| i.keyhole == members[0].keyhole);
        if same {
            writeln!(out, "  {:<13} {}", cap.label(), members[0].keyhole)?;
        } else {
            writeln!(out, "  {}", cap.label())?;
        }
        for i in members {
            if same {
                writeln!(out, "      {}", i.name)?;
            } else {
                writeln!(out, "      {}: {}", i.name, i.keyhole)?;
            }
        }
    }
    Ok(())
}

// ---- compile ----

fn compile(dir: &DataDir, args: CompileArgs, compiler: Compiler) -> Result<(), Exit> {
    let runtime = Runtime::new(RuntimeOptions { cache_dir: Some(dir.cache_dir()), pooling: false, compiler })
        .map_err(|e| fail(HOST, anyhow::anyhow!("cannot start the WebAssembly engine: {e:#}")))?;
    let mut out = std::io::stdout().lock();
    for file in &args.files {
        compile_one(&runtime, file, &mut out)?;
    }
    Ok(())
}

fn compile_one(runtime: &Runtime, file: &Path, out: &mut impl Write) -> Result<(), Exit> {
    let started = std::time::Instant::now();
    let plugin = runtime.load(file).map_err(|e| fail(USAGE, e))?;
    let how = match plugin.loaded_from {
        LoadedFrom::Compiled => "compiled into the cache",
        LoadedFrom::Cache | LoadedFrom::Memory => "already in the cache",
    };
    writeln!(out, "{}: {how} in {:.2?} (sha256 {})", file.display(), started.elapsed(), plugin.sha256)
        .map_err(stdout_err)
}
