//! Plugin blobs: `DATA_DIR/plugins/<sha256>.wasm`, stored once per digest,
//! only if they are WebAssembly; which namespaces uploaded each
//! (`plugin_uploads`), against a per-namespace byte quota; and collecting
//! the blobs no revision references.

use super::{Registry, RegistryError};
use crate::data_dir::{DataDir, create_private_dir, write_private_atomic};
use crate::names::Namespace;
use crate::store::now;
use rusqlite::params;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// Plugin bytes one namespace may hold on a server (1 GiB), unless
/// `host serve --max-plugin-bytes` says otherwise.
pub const DEFAULT_MAX_PLUGIN_BYTES: u64 = 1 << 30;

/// Whether `bytes` start as a WebAssembly core module (version 1) or a
/// component (layer 1) does: anything else is never stored.
pub fn is_wasm(bytes: &[u8]) -> bool {
    matches!(bytes.get(..8), Some([0, b'a', b's', b'm', 1, 0, 0, 0]) | Some([0, b'a', b's', b'm', 0x0d, 0, 1, 0]))
}

/// The directory plugins are stored in.
pub fn plugins_dir(dir: &DataDir) -> PathBuf {
    dir.root().join("plugins")
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its digest.
    pub sha256: String,
    /// Whether the bytes were new to the server (else it had them).
    pub new: bool,
}

/// What a collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// The digests removed.
    pub removed: Vec<String>,
    /// Their bytes.
    pub bytes: u64,
}

impl Registry {
    pub(super) fn blob(&self, sha256: &str) -> PathBuf {
        self.blobs.join(format!("{sha256}.wasm"))
    }

    /// Whether a plugin with this digest is stored.
    pub fn has_plugin(&self, sha256: &str) -> bool {
        super::is_sha256(sha256) && self.blob(sha256).is_file()
    }

    /// Stores plugin bytes under their digest (once), for flows of
    /// `namespace`, which then holds them against its quota (`max`, none
    /// for the root operator). Bytes that are not WebAssembly are refused
    /// before anything is written.
    pub fn put_plugin(&self, bytes: &[u8], namespace: &Namespace, max: Option<u64>) -> Result<Stored, RegistryError> {
        if !is_wasm(bytes) {
            return Err(RegistryError::Plugin(
                "the upload is not a WebAssembly module or component (it does not start with \\0asm and a known version)"
                    .into(),
            ));
        }
        let sha = hex::encode(crate::crypto::sha256(bytes));
        let size = bytes.len() as u64;
        let tx = self.begin()?;
        let known: bool = tx
            .query_row(
                "SELECT count(*) FROM plugin_uploads WHERE sha256 = ?1 AND namespace = ?2",
                params![sha, namespace.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .map_err(self.err("read plugin uploads"))?
            > 0;
        if !known {
            let held: i64 = tx
                .query_row(
                    "SELECT coalesce(sum(bytes), 0) FROM plugin_uploads WHERE namespace = ?1",
                    [namespace.as_str()],
                    |r| r.get(0),
                )
                .map_err(self.err("read plugin uploads"))?;
            if let Some(max) = max.filter(|&m| held as u64 + size > m) {
                return Err(RegistryError::Quota(format!(
                    "namespace {namespace} holds {held} bytes of plugins, and this one ({size} bytes) would pass its \
                     quota of {max}: remove flows it no longer needs and run `host plugin gc`"
                )));
            }
            tx.execute(
                "INSERT INTO plugin_uploads (sha256, namespace, bytes, uploaded_at) VALUES (?1, ?2, ?3, ?4)",
                params![sha, namespace.as_str(), size as i64, now()],
            )
            .map_err(self.err("record a plugin upload"))?;
        }
        let path = self.blob(&sha);
        let new = !path.is_file();
        if new {
            create_private_dir(&self.blobs).map_err(|err| RegistryError::Io { path: self.blobs.clone(), err })?;
            write_private_atomic(&path, bytes).map_err(|err| RegistryError::Io { path: path.clone(), err })?;
        }
        tx.commit().map_err(self.err("record a plugin upload"))?;
        Ok(Stored { sha256: sha, new })
    }

    /// Removes every stored plugin that no revision of any flow references
    /// and that is older than `grace` (a deploy may be uploading it now),
    /// with the audit record `audit` builds, committed before any file goes.
    pub fn collect_plugins(
        &self,
        grace: Duration,
        audit: impl FnOnce(&Collected) -> crate::audit::NewRecord,
    ) -> Result<Collected, RegistryError> {
        let tx = self.begin()?;
        let mut referenced = BTreeSet::new();
        {
            let mut stmt = tx.prepare("SELECT plugins FROM flows").map_err(self.err("read flows"))?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(self.err("read flows"))?;
            for text in rows {
                let text = text.map_err(self.err("read flows"))?;
                // An unreadable row keeps everything: nothing is removed on a guess.
                let map: std::collections::BTreeMap<String, String> = serde_json::from_str(&text).map_err(|_| {
                    RegistryError::Plugin("a flow revision's plugin list does not parse: nothing collected".into())
                })?;
                referenced.extend(map.into_values());
            }
        }
        let mut out = Collected::default();
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(err) => return Err(RegistryError::Io { path: self.blobs.clone(), err }),
        };
        let cutoff = std::time::SystemTime::now().checked_sub(grace).unwrap_or(std::time::UNIX_EPOCH);
        let mut doomed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(sha) = name.strip_suffix(".wasm").filter(|s| super::is_sha256(s)) else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            if referenced.contains(sha) || meta.modified().is_ok_and(|m| m > cutoff) {
                continue;
            }
            out.bytes += meta.len();
            out.removed.push(sha.to_owned());
            doomed.push(entry.path());
        }
        out.removed.sort();
        if out.removed.is_empty() {
            return Ok(out);
        }
        for sha in &out.removed {
            tx.execute("DELETE FROM plugin_uploads WHERE sha256 = ?1", [sha]).map_err(self.err("forget a plugin"))?;
        }
        crate::audit::append(&tx, &self.integrity, &audit(&out)).map_err(self.err("write the audit record"))?;
        tx.commit().map_err(self.err("collect plugins"))?;
        for path in doomed {
            let _ = std::fs::remove_file(path);
        }
        Ok(out)
    }
}
