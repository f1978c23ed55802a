//! Repository conventions, checked under plain `cargo test`.

use crate::support::workspace;
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_source_file_says_what_it_is_for() {
    let mut files = Vec::new();
    for dir in ["host", "guest-sdk", "plugins", "tests"] {
        rust_files(&workspace().join(dir), &mut files);
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!"))
        .map(|f| f.strip_prefix(workspace()).unwrap().display().to_string())
        .collect();
    assert!(missing.is_empty(), "these files do not open with a `//!` line: {missing:?}");
}

#[test]
fn no_wasm_binaries_are_committed() {
    let out = std::process::Command::new("git").current_dir(workspace()).args(["ls-files", "*.wasm"]).output();
    if let Ok(out) = out {
        assert!(out.stdout.is_empty(), "committed wasm: {}", String::from_utf8_lossy(&out.stdout));
    }
}

/// The top-level modules of `host/src` (a file, or a folder of files) and
/// the modules each uses through `crate::`, outside its tests.
fn module_edges() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut graph = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(workspace().join("host/src")).unwrap() {
        let p = entry.unwrap().path();
        let Some(name) = p.file_stem().map(|n| n.to_string_lossy().into_owned()) else { continue };
        let mut files = Vec::new();
        if p.is_dir() {
            rust_files(&p, &mut files);
        } else if p.extension().is_some_and(|e| e == "rs") {
            files.push(p.clone());
        }
        if files.is_empty() || name == "main" || name == "lib" || name == "cli" {
            continue;
        }
        let mut deps = std::collections::BTreeSet::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let dep: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !dep.is_empty() && dep != name {
                    deps.insert(dep);
                }
            }
        }
        graph.insert(name, deps);
    }
    graph
}

#[test]
fn main_is_thin_and_long_files_are_explained() {
    let main = std::fs::read_to_string(workspace().join("host/src/main.rs")).unwrap();
    assert!(
        main.lines().count() < 150,
        "host/src/main.rs has {} lines: it only parses and dispatches",
        main.lines().count()
    );
    let architecture = std::fs::read_to_string(workspace().join("ARCHITECTURE.md")).unwrap();
    let mut files = Vec::new();
    rust_files(&workspace().join("host/src"), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).unwrap().lines().count() > 800)
        .map(|f| f.strip_prefix(workspace()).unwrap().display().to_string())
        .filter(|f| !architecture.contains(&format!("`{f}` is long because")))
        .collect();
    assert!(long.is_empty(), "files over 800 lines without a reason in ARCHITECTURE.md: {long:?}");
}

#[test]
fn the_layers_point_downwards() {
    // Persistence at the bottom, the plane above it, the sandbox above
    // that: a lower layer never names a higher one.
    let graph = module_edges();
    let layer = |m: &str| match m {
        "names" | "secret" | "data_dir" | "db" | "limits" | "plan" | "process" => 0,
        "crypto" | "keyring" | "mask" | "policy" | "authz" | "audit" | "executions" | "output" | "network"
        | "inspect" | "trigger" => 1,
        "store" => 2,
        "backend" | "backup" | "tokens" => 3,
        "access" | "flow" | "lease" | "rotate" => 4,
        "sandbox" | "capability" | "runtime" | "exec" | "run" | "vouch" => 5,
        "session" | "registry" => 6,
        "service" => 7,
        "embedded" => 8,
        "server" => 9,
        other => panic!("module {other} has no layer in tests/e2e/tidy.rs: give it one"),
    };
    let upward: Vec<String> = graph
        .iter()
        .flat_map(|(m, deps)| deps.iter().map(move |d| (m, d)))
        .filter(|(m, d)| layer(d) > layer(m))
        .map(|(m, d)| format!("{m} (layer {}) imports {d} (layer {})", layer(m), layer(d)))
        .collect();
    assert!(upward.is_empty(), "{upward:#?}");
}

#[test]
fn library_modules_have_no_import_cycle() {
    // A cycle between two modules is a missing third module (ARCHITECTURE.md).
    let graph = module_edges();
    assert!(graph.contains_key("db") && graph.contains_key("store"), "{graph:?}");
    fn visit(
        m: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if !done.insert(m.to_owned()) {
            return None;
        }
        path.push(m.to_owned());
        for dep in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(dep, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = std::collections::BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("module import cycle: {}", cycle.join(" -> "));
        }
    }
    // Persistence stays at the bottom.
    assert!(graph["db"].iter().all(|d| d == "data_dir"), "db imports {:?}", graph["db"]);
}

#[test]
fn the_guest_sdk_carries_the_same_wit_as_the_repository() {
    // The SDK builds from its own copy so that it can be packaged; the
    // contract is `wit/`, and the copy must never drift from it.
    let ours = workspace().join("wit");
    let sdk = workspace().join("guest-sdk/wit");
    let names = |dir: &std::path::Path| {
        // The files of the current contract; `wit/0.1.0/` is the host's alone.
        let mut n: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.file_name())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&ours), names(&sdk), "guest-sdk/wit/ must hold the same files as wit/");
    for name in names(&ours) {
        let (a, b) = (std::fs::read(ours.join(&name)).unwrap(), std::fs::read(sdk.join(&name)).unwrap());
        assert!(a == b, "guest-sdk/wit/{name:?} differs from wit/{name:?}: copy wit/ into guest-sdk/wit/");
    }
}

/// The function a cargo-mutants mutant text names: `replace Grants::none ->
/// Self with Default::default()` names `Grants::none`, `replace == with != in
/// check_against` names `check_against`.
fn mutated_function(mutant: &str) -> &str {
    if let Some((_, f)) = mutant.rsplit_once(" in ") {
        return f;
    }
    let f = mutant.strip_prefix("replace ").unwrap_or(mutant);
    let end = [" -> ", " with "].iter().filter_map(|s| f.find(s)).min().unwrap_or(f.len());
    &f[..end]
}

#[test]
fn mutants_md_explains_only_functions_that_exist_and_the_script_mutates_only_files_that_exist() {
    let text = std::fs::read_to_string(workspace().join("tests/MUTANTS.md")).unwrap();
    let mut stale = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("- `host/src/") else { continue };
        let entry = rest.split_once('`').and_then(|(m, why)| Some((m.split_once(": ")?, why)));
        let Some(((file, mutant), why)) = entry else {
            stale.push(format!("line {}: not `- `host/src/FILE[:LINE]: MUTANT` — why`", n + 1));
            continue;
        };
        if why.trim_start_matches([' ', '—', '-', ':']).trim().len() < 10 {
            stale.push(format!("line {}: `{mutant}` has no reason", n + 1));
        }
        // `FILE:LINE`: only the mutant on that line, which must still hold
        // what the mutant replaces (`replace A with B in F`, `delete A in F`).
        let (file, at) = match file.split_once(':') {
            Some((f, l)) => (f, Some(l.parse::<usize>().unwrap_or(0))),
            None => (file, None),
        };
        let Ok(src) = std::fs::read_to_string(workspace().join("host/src").join(file)) else {
            stale.push(format!("line {}: host/src/{file} does not exist", n + 1));
            continue;
        };
        if let Some(at) = at {
            let replaced = mutant
                .strip_prefix("replace ")
                .or_else(|| mutant.strip_prefix("delete "))
                .and_then(|m| m.split([' ']).next())
                .unwrap_or("");
            let held = at.checked_sub(1).and_then(|i| src.lines().nth(i));
            if !held.is_some_and(|l| l.contains(replaced)) {
                stale.push(format!("line {}: host/src/{file}:{at} does not hold `{replaced}` any more", n + 1));
            }
        }
        let func = mutated_function(mutant);
        let (owner, name) = func.rsplit_once("::").unwrap_or(("", func));
        // `<impl Display for Secret>` is owned by `Secret`; `Grants` by itself.
        let owner = owner.trim_end_matches('>').rsplit([' ', '<']).next().unwrap_or("");
        let name = name.split('<').next().unwrap();
        if !src.contains(&format!("fn {name}")) || !src.contains(owner) {
            stale.push(format!("line {}: host/src/{file} has no function `{func}`", n + 1));
        }
    }
    assert!(stale.is_empty(), "tests/MUTANTS.md explains what is no longer there:\n{}", stale.join("\n"));

    let script = std::fs::read_to_string(workspace().join("scripts/mutants.sh")).unwrap();
    let table = script.split_once("GROUPS_TABLE='").and_then(|(_, t)| t.split_once('\'')).unwrap().0;
    let mut files = 0;
    for row in table.lines().filter(|l| !l.is_empty()) {
        for f in row.split('|').nth(1).unwrap().split_whitespace() {
            files += 1;
            assert!(
                workspace().join("host/src").join(f).is_file(),
                "scripts/mutants.sh mutates host/src/{f}, which does not exist"
            );
        }
    }
    assert!(files > 20, "scripts/mutants.sh's table names only {files} files");
}

/// A module's path below its crate root: `host/src/server/handlers/tokens.rs`
/// is `server::handlers::tokens`, a `mod.rs` is its directory's module,
/// `lib.rs` the root.
fn module_path(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// Every path a piece of code names from `crate::`, `super::` or `self::`,
/// resolved against the module `at`, with `use x::{a, b::c}` groups
/// expanded; comments are not code.
fn named_paths(code: &str, at: &[String]) -> Vec<Vec<String>> {
    let code: String = code.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        for (i, _) in code.match_indices(start) {
            if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':') {
                continue;
            }
            // The path's segments, then an optional `{...}` group.
            let mut path: Vec<String> = match start {
                "crate::" => Vec::new(),
                "super::" => at[..at.len().saturating_sub(1)].to_vec(),
                _ => at.to_vec(),
            };
            let mut rest = &code[i + start.len()..];
            loop {
                if let Some(r) = rest.strip_prefix("super::") {
                    path.pop();
                    rest = r;
                    continue;
                }
                let seg = ident(rest);
                if seg.is_empty() {
                    break;
                }
                rest = &rest[seg.len()..];
                path.push(seg);
                match rest.strip_prefix("::") {
                    Some(r) => rest = r,
                    None => break,
                }
            }
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let first = ident(item.trim());
                    if !first.is_empty() && first != "self" {
                        let mut p = path.clone();
                        p.push(first);
                        out.push(p);
                    }
                }
            }
            out.push(path);
        }
    }
    out
}

/// For every directory of modules: which of its child modules names which
/// other child (at any depth below them), from the files given as (module
/// path, code). A child naming its parent, or a parent its child, is no edge.
type Edges =
    std::collections::BTreeMap<Vec<String>, std::collections::BTreeMap<String, std::collections::BTreeSet<String>>>;

fn sibling_edges(files: &[(Vec<String>, String)]) -> Edges {
    let modules: std::collections::BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    let is_module = |p: &[String]| modules.iter().any(|m| m.starts_with(p));
    let mut edges = Edges::new();
    for (at, code) in files {
        for target in named_paths(code, at) {
            let k = at.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if k < at.len() && k < target.len() && is_module(&target[..=k]) {
                edges.entry(at[..k].to_vec()).or_default().entry(at[k].clone()).or_default().insert(target[k].clone());
            }
        }
    }
    edges
}

/// A cycle among the children of one directory, if any: `dir: a -> b -> a`.
fn first_cycle(edges: &Edges) -> Option<String> {
    for (dir, graph) in edges {
        for startnode in graph.keys() {
            let mut stack = vec![(startnode.clone(), vec![startnode.clone()])];
            let mut seen = std::collections::BTreeSet::new();
            while let Some((n, path)) = stack.pop() {
                for next in graph.get(&n).into_iter().flatten() {
                    if next == startnode {
                        return Some(format!("{}: {} -> {next}", dir.join("::"), path.join(" -> ")));
                    }
                    if seen.insert(next.clone()) {
                        let mut p = path.clone();
                        p.push(next.clone());
                        stack.push((next.clone(), p));
                    }
                }
            }
        }
    }
    None
}

/// The crate under `root` as (module path, code outside tests).
fn crate_files(root: &Path) -> Vec<(Vec<String>, String)> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "tests.rs" && n != "main.rs"))
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default().to_owned();
            (module_path(root, &f), code)
        })
        .collect()
}

#[test]
fn no_module_names_one_that_names_it_back_at_any_depth() {
    // Siblings of every directory, the host and the guest SDK alike: a
    // cycle between two modules is a missing third module.
    for root in ["host/src", "guest-sdk/src"] {
        let edges = sibling_edges(&crate_files(&workspace().join(root)));
        assert!(edges.contains_key(&vec!["server".to_owned()]) || root != "host/src", "{edges:?}");
        if let Some(cycle) = first_cycle(&edges) {
            panic!("{root}: module import cycle: {cycle}");
        }
    }
    // The check sees what it must: a planted cycle, through `super::`, a
    // `use` group and `crate::` at depth, and nothing from a comment.
    let m = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
    let planted = vec![
        (m("server::api"), "use super::{follow, error::ApiError};".to_owned()),
        (m("server::follow"), "fn f() { crate::server::api::router(); }".to_owned()),
        (m("server::error"), "// super::api::ROUTES is only a comment".to_owned()),
    ];
    let found = first_cycle(&sibling_edges(&planted)).expect("the planted cycle");
    assert!(found == "server: api -> follow -> api" || found == "server: follow -> api -> follow", "{found}");
    let acyclic =
        vec![(m("server::api"), "use super::error::ApiError;".to_owned()), (m("server::error"), String::new())];
    assert_eq!(first_cycle(&sibling_edges(&acyclic)), None);
}

#[test]
fn the_edges_build_no_audit_record() {
    // Each operation's record is written in `service/` (or the library
    // under it), with its change; `cli/` and `server/` only call it.
    let builds = |text: &str| {
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        code.contains("NewRecord::") || code.match_indices("Action::").any(|(i, _)| !code[..i].ends_with("Arg"))
    };
    let mut files = Vec::new();
    rust_files(&workspace().join("host/src/cli"), &mut files);
    rust_files(&workspace().join("host/src/server"), &mut files);
    assert!(files.len() > 20, "{files:?}");
    let building: Vec<String> = files
        .iter()
        .filter(|f| builds(&std::fs::read_to_string(f).unwrap()))
        .map(|f| f.strip_prefix(workspace()).unwrap().display().to_string())
        .collect();
    assert!(
        building.is_empty(),
        "these edges build audit records; write the operation in host/src/service/: {building:?}"
    );
}

#[test]
fn the_edges_reach_flows_tokens_and_queues_only_through_the_engine() {
    // The CLI and the server open the state of a data directory as one
    // engine (`embedded::Embedded`, behind `service::Plane`); neither opens
    // a part of it on its own, so a second engine replaces all of it.
    let opens = ["Registry::open", "Tokens::open", "Executions::open_for_intake", "AuditLog::open"];
    let mut files = Vec::new();
    rust_files(&workspace().join("host/src/cli"), &mut files);
    rust_files(&workspace().join("host/src/server"), &mut files);
    let found: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default().to_owned();
            let name = f.strip_prefix(workspace()).unwrap().display().to_string();
            opens.iter().filter(move |o| code.contains(*o)).map(move |o| format!("{name}: {o}")).collect::<Vec<_>>()
        })
        .collect();
    assert!(found.is_empty(), "open the engine (cli::open_state, App::state) instead: {found:?}");
}
