//! Test helpers: a fresh data directory per test and a way to drive `host`.

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub use crate::plugins::{Plugin, component, core_module, workspace};

/// A data directory of its own, removed when dropped.
pub struct Env {
    dir: tempfile::TempDir,
}

/// What one `host` run did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stdout, parsed as JSON; panics with the whole run if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }

    /// Asserts the exit code, showing the run if it differs.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        self
    }

    /// Everything the host printed.
    pub fn all_output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        // Private, as a data directory should be (keyhole warns otherwise).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        Env { dir }
    }

    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    pub fn db(&self) -> PathBuf {
        self.home().join("keyhole.db")
    }

    /// A `host` command with this data directory and no key in the environment.
    pub fn host(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_host"));
        c.env("KEYHOLE_HOME", self.home()).env_remove("KEYHOLE_MASTER_KEY").env_remove("KEYHOLE_LOG");
        c
    }

    /// Runs `host ARGS` with `stdin` and collects the result.
    pub fn run_with(&self, cmd: &mut Command, stdin: &[u8]) -> Run {
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("cannot start host");
        let feeder = feed(&mut child, stdin);
        let out = child.wait_with_output().unwrap();
        feeder.join().expect("the stdin writer panicked");
        Run {
            code: out.status.code().unwrap_or_else(|| panic!("host died by a signal: {:?}", out.status)),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(self.host().args(args), b"")
    }

    /// Stores a secret through the CLI.
    pub fn set_secret(&self, namespace: &str, name: &str, value: &str) {
        let r = self.run_with(self.host().args(["secret", "set", name, "--namespace", namespace]), value.as_bytes());
        r.expect_code(0);
    }

    /// Runs the probe plugin with `input`, granting `grants`, in `namespace`.
    pub fn probe(&self, namespace: &str, grants: &[&str], input: serde_json::Value, extra: &[&str]) -> Run {
        let plugin = component(Plugin::Probe);
        let mut cmd = self.host();
        cmd.arg("exec").arg(&plugin).args(["--namespace", namespace, "--input", &input.to_string()]);
        for g in grants {
            cmd.args(["--grant", g]);
        }
        cmd.args(extra);
        self.run_with(&mut cmd, b"")
    }
}

/// Writes `input` to the child's stdin from a thread of its own, then closes
/// it, so a child that fills its stdout before reading cannot deadlock against
/// the writer. A child that exits (or closes stdin) without reading it all is
/// not an error: its exit status and output decide the test, not the pipe.
pub fn feed(child: &mut Child, input: &[u8]) -> std::thread::JoinHandle<()> {
    let mut stdin = child.stdin.take().expect("the child's stdin must be piped");
    let input = input.to_vec();
    std::thread::spawn(move || match stdin.write_all(&input) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.expect("cannot write to the child's stdin"),
    })
}

pub fn sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Every row of every table, for "nothing changed on disk" checks.
pub fn dump(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut out = Vec::new();
    for table in ["meta", "secrets", "secret_versions"] {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2")).unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                let cols: Vec<String> = (0..n).map(|i| format!("{:?}", r.get_ref(i).unwrap())).collect();
                Ok(format!("{table}: {}", cols.join(" | ")))
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

/// Starts `host ARGS` and returns once its stderr shows `marker`.
pub fn start_until(cmd: &mut std::process::Command, marker: &str) -> (Child, BufReader<std::process::ChildStderr>) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut seen = false;
    while !seen {
        line.clear();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        seen = line.contains(marker);
    }
    if !seen {
        let status = child.wait();
        panic!("the process ended ({status:?}) before printing {marker:?}");
    }
    (child, err)
}

/// A private CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by
/// it (`srv.pem`, `srv.key`) in `dir`, made with the `openssl` command;
/// `false` (after saying so loudly) when openssl is not installed.
pub fn private_ca(dir: &Path) -> bool {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        eprintln!("*** SKIPPED: openssl is not installed, so no TLS server with a private CA can be made");
        return false;
    }
    let openssl = |args: &[&str]| {
        let out =
            std::process::Command::new("openssl").current_dir(dir).args(args).output().expect("cannot run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ca = "/CN=keyhole test CA";
    openssl(&[
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj",
        ca,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let sign = ["x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"];
    openssl(&[&sign[..], &["-out", "srv.pem", "-days", "1", "-extfile", "ext"]].concat());
    true
}

/// `openssl s_server` on 127.0.0.1 with `dir`'s `srv.pem`/`srv.key` (see
/// [`private_ca`]), answering every request with a status page; stopped
/// when dropped.
pub struct TlsServer {
    pub port: u16,
    child: Child,
}

impl TlsServer {
    pub fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let accept = format!("127.0.0.1:{port}");
        let child = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(["s_server", "-accept", &accept, "-cert", "srv.pem", "-key", "srv.key", "-www", "-quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < until, "openssl s_server did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        TlsServer { port, child }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 4 MiB tmpfs mounted at `dir`, unmounted when dropped: a disk that can
/// really be filled. Needs root (CI runs as root); `None`, after saying so
/// loudly for `test`, where mounting is not allowed.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    pub fn mount(dir: &Path, test: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted =
            std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"]).arg(dir).status();
        if !matches!(mounted, Ok(s) if s.success()) {
            eprintln!("*** SKIPPED {test}: cannot mount a tmpfs (not root?)");
            return None;
        }
        Some(SmallDisk(dir.to_owned()))
    }

    /// Fills every remaining byte.
    pub fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        while f.write_all(&small[..1]).is_ok() {}
    }

    /// Gives the space back.
    pub fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Regression (issue 26): `run_with` panicked with a broken pipe when `host`
/// exited before reading its stdin. Many megabytes into commands that never
/// read stdin, over and over: the pipe must never decide the outcome.
#[test]
fn a_command_that_never_reads_its_stdin_is_judged_by_its_exit_and_output() {
    let env = Env::new();
    env.set_secret("", "PRESENT", "v");
    let input = vec![b'x'; 8 << 20];
    for _ in 0..20 {
        let r = env.run_with(env.host().args(["secret", "list"]), &input);
        r.expect_code(0);
        assert!(r.stdout.contains("PRESENT"), "{r:#?}");
        let r = env.run_with(env.host().args(["validate", "/nonexistent/flow.yaml"]), &input);
        r.expect_code(2);
        assert!(r.stderr.contains("/nonexistent/flow.yaml"), "{r:#?}");
    }
}
