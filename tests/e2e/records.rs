//! Execution records are typed: a status keyhole does not know, or a JSON
//! column that does not parse, is an integrity error (exit code 5), never a
//! default; a failed run's exit code comes from the kind of its task's
//! failure, kept in the record, never from its text.

use crate::server::{Server, token};
use crate::support::*;

fn flow(env: &Env, id: &str, input: &str) -> std::path::PathBuf {
    let file = env.home().join(format!("{id}.yaml"));
    let probe = component(Plugin::Probe);
    std::fs::write(
        &file,
        format!("id: {id}\nnamespace: ops\ntasks:\n  - {{id: t, plugin: '{}', input: {input}}}\n", probe.display()),
    )
    .unwrap();
    file
}

#[test]
fn a_corrupt_execution_row_is_an_integrity_error_not_a_default() {
    let env = Env::new();
    let file = flow(&env, "ok", "{action: context}");
    let r = env.run(&["run", file.to_str().unwrap(), "--json"]);
    r.expect_code(0);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["status"], "succeeded");
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    for edit in [
        "UPDATE executions SET tasks = 'not json'",
        "UPDATE executions SET status = 'exploded', tasks = '[]'",
        // A name that does not check is no namespace (it was once read as the root).
        "UPDATE executions SET status = 'succeeded', namespace = '../ops'",
        "UPDATE executions SET namespace = 'ops', flow = 'no flow!'",
    ] {
        conn.execute_batch(edit).unwrap();
        for args in [vec!["executions", "show", id.as_str()], vec!["executions", "list"]] {
            let r = env.run(&args);
            r.expect_code(5);
            assert!(
                r.stderr.contains("fails its integrity check") && r.stderr.contains("edited outside keyhole"),
                "{edit}: {r:#?}"
            );
        }
    }
}

#[test]
fn a_failed_runs_exit_code_comes_from_the_kind_of_its_failure() {
    let env = Env::new();
    // A task that returns an error (a secret it was not granted), and one that panics.
    let returned = flow(&env, "returned", "{action: http, secret: NOT_GRANTED, requests: []}");
    let trapped = flow(&env, "trapped", "{action: panic, message: boom}");
    for f in [&returned, &trapped] {
        env.run(&["flow", "deploy", f.to_str().unwrap()]).expect_code(0);
    }
    let admin = token(&env, "admin", "admin", "", &[]);
    let server = Server::start(&env, 1, &[]);
    let remote = |id: &str| {
        let mut cmd = env.host();
        cmd.env("KEYHOLE_ADDR", &server.base)
            .env("KEYHOLE_TOKEN", &admin)
            .env("KEYHOLE_HOME", env.home().join("client"));
        env.run_with(cmd.args(["run", id, "-n", "ops", "--json"]), b"")
    };
    for (id, code, kind) in [("returned", 1, "task"), ("trapped", 3, "plugin")] {
        for r in [remote(id), env.run(&["run", env.home().join(format!("{id}.yaml")).to_str().unwrap(), "--json"])] {
            r.expect_code(code);
            assert_eq!(r.json()["tasks"][0]["failure"], kind, "{id}: {r:#?}");
        }
    }
}
