//! The data directory: where the store, the master key file and the compiled
//! plugin cache live, and how its location is chosen.

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

/// Writes `bytes` to `path` atomically (a private temporary file, synced,
/// then renamed over `path`).
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
    result
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
