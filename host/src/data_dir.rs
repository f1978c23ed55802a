//! The data directory: where the store, the master key file and the compiled
//! plugin cache live, and how its location is chosen; how keyhole writes a
//! file of its own (private from the first byte, durable once written) and
//! reads a file an operator names (up to a limit).

use std::path::{Path, PathBuf};

/// Environment variable that overrides the data directory.
pub const HOME_ENV: &str = "KEYHOLE_HOME";

/// A keyhole data directory (created with mode 0700 on first use).
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Chooses the directory: `explicit` (from `--data-dir`), else
    /// `$KEYHOLE_HOME`, else `$XDG_DATA_HOME/keyhole`, else
    /// `~/.local/share/keyhole`.
    pub fn locate(explicit: Option<&Path>) -> Result<Self, std::io::Error> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let root = explicit
            .map(Path::to_path_buf)
            .or_else(|| env(HOME_ENV))
            .or_else(|| env("XDG_DATA_HOME").map(|d| d.join("keyhole")))
            .or_else(|| env("HOME").map(|h| h.join(".local/share/keyhole")))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "cannot choose a data directory: none of --data-dir, $KEYHOLE_HOME, $XDG_DATA_HOME or $HOME is set",
                )
            })?;
        Ok(DataDir { root })
    }

    /// Uses `root` as the data directory.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// Creates the directory (mode 0700) if it does not exist; warns once
    /// if an existing one, or its key files, can be read by other users.
    pub fn ensure(&self) -> Result<(), std::io::Error> {
        create_private_dir(&self.root).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot create data directory {}: {e}", self.root.display()))
        })?;
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            for path in [self.root.clone(), self.master_key_path(), self.audit_key_path()] {
                if let Some(mode) = loose_mode(&path) {
                    tracing::warn!(
                        "{} is accessible by other users (mode {mode:04o}); it should be private: chmod {} {}",
                        path.display(),
                        if path == self.root { "700" } else { "600" },
                        path.display()
                    );
                }
            }
        });
        Ok(())
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite file holding secrets (and, later, audit and executions).
    pub fn store_path(&self) -> PathBuf {
        self.root.join("keyhole.db")
    }

    /// The master key file used when `$KEYHOLE_MASTER_KEY` is not set.
    pub fn master_key_path(&self) -> PathBuf {
        self.root.join("master.key")
    }

    /// The key for audit value fingerprints (kept apart from the master key).
    pub fn audit_key_path(&self) -> PathBuf {
        self.root.join("audit.key")
    }

    /// The compiled-plugin cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }
}

/// Options that create a file readable and writable by its owner only
/// (0600): every file keyhole writes in the data directory.
pub fn private_file_options() -> std::fs::OpenOptions {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts
}

/// Creates `dir` and its missing parents with mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Writes `bytes` to `path` atomically and durably: a private temporary
/// file, synced, renamed over `path`, and the directory synced, so that once
/// this returns a crash leaves the new file (never the old one, a torn one,
/// or none).
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = private_file_options().truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| sync_dir(parent_of(path)))
}

/// Creates `path` (mode 0600) holding `parts` one after the other, durably:
/// the file and its directory entry are synced before this returns. Never
/// overwrites: an existing file is an `AlreadyExists` error. For key files
/// (written as parts, so a key is never copied into a joined buffer).
pub fn create_private(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = private_file_options().create_new(true).open(path)?;
    for part in parts {
        f.write_all(part)?;
    }
    f.sync_all()?;
    sync_dir(parent_of(path));
    Ok(())
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Makes renames and creations in `dir` durable (best effort: some file
/// systems cannot sync a directory).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Largest certificate (CA) file keyhole reads; a full public CA bundle is
/// about 220 KB.
pub const MAX_CA_FILE_BYTES: usize = 4 << 20;

/// Reads a file an operator named (a plugin, a flow), refusing one larger
/// than `limit` bytes before holding more than that: a device such as
/// `/dev/zero` is an error, not a process that eats memory.
pub fn read_bounded(path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    // A regular file says its size (and is read without reallocating); a
    // device or a pipe is read up to the limit.
    let size = file.metadata()?.len();
    if size > limit as u64 {
        return Err(too_large(limit));
    }
    read_limited(file, limit, size as usize)
}

/// Reads `source` to its end (stdin, a pipe), or fails once it has given
/// more than `limit` bytes; `size_hint` bytes are reserved up front.
pub fn read_limited(source: impl std::io::Read, limit: usize, size_hint: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(size_hint.min(limit));
    source.take(limit as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > limit {
        return Err(too_large(limit));
    }
    Ok(bytes)
}

fn too_large(limit: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::FileTooLarge,
        format!("it is larger than keyhole reads: the limit is {limit} bytes"),
    )
}

/// The mode of `path` if group or others have any access to it.
fn loose_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn create_private_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.key");
        create_private(&path, &[b"first", b"\n"]).unwrap();
        let again = create_private(&path, &[b"second\n"]).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first\n");
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn read_bounded_refuses_what_is_too_large_even_without_an_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_bounded(&path, 5).unwrap(), b"12345");
        let e = read_bounded(&path, 4).unwrap_err();
        assert_eq!(e.to_string(), "it is larger than keyhole reads: the limit is 4 bytes");
        #[cfg(target_os = "linux")]
        assert_eq!(read_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err().kind(), std::io::ErrorKind::FileTooLarge);
    }

    #[test]
    fn write_private_atomic_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backends.json");
        std::fs::write(&path, b"old").unwrap();
        write_private_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["backends.json"]);
    }
}
