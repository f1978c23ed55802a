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

    /// Creates the directory (mode 0700) if it does not exist.
    pub fn ensure(&self) -> Result<(), std::io::Error> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&self.root).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot create data directory {}: {e}", self.root.display()))
        })
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
