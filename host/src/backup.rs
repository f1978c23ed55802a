//! Encrypted backup bundles for `host secret export` / `import`.
//!
//! A bundle is a small JSON document: a header (format, key derivation,
//! nonce) and the XChaCha20-Poly1305 ciphertext of the exported secrets,
//! with the header as associated data. The key is derived from a passphrase
//! with Argon2id, or given directly as 32 random bytes (base64). A wrong
//! passphrase or any change to the bundle fails authentication, and the
//! store is not touched.

use crate::store::ExportedSecret;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const FORMAT: &str = "keyhole-export-v1";
/// Largest Argon2id cost a bundle may ask for (keyhole writes 64 MiB, t=3, p=1).
const MAX_M_KIB: u32 = 256 * 1024;
const MAX_T: u32 = 10;
const MAX_P: u32 = 4;

/// What protects a bundle.
#[derive(Debug)]
pub enum BundleKey {
    /// A passphrase, stretched with Argon2id.
    Passphrase(Zeroizing<String>),
    /// 32 random bytes.
    Raw(Zeroizing<[u8; 32]>),
}

/// Bundle failures; none reveals a value or the passphrase.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not a keyhole bundle, or a version this host does not read.
    #[error("not a keyhole export bundle: {0}")]
    Format(String),
    /// Authentication failed.
    #[error("the bundle cannot be decrypted: wrong passphrase or key, or the file was altered")]
    Auth,
    /// The bundle needs the other kind of key.
    #[error("the bundle is protected by a {0}; supply that instead")]
    WrongKind(&'static str),
    /// Key derivation failed.
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    kdf: Kdf,
    nonce: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "alg", rename_all = "lowercase", deny_unknown_fields)]
enum Kdf {
    Argon2id { salt: String, m_kib: u32, t: u32, p: u32 },
    Raw,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bundle {
    header: Header,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload_ {
    exported_at: String,
    secrets: Vec<ExportedSecret>,
}

fn derive(key: &BundleKey, kdf: &Kdf) -> Result<Zeroizing<[u8; 32]>, BundleError> {
    match (key, kdf) {
        (BundleKey::Raw(k), Kdf::Raw) => Ok(k.clone()),
        (BundleKey::Passphrase(p), Kdf::Argon2id { salt, m_kib, t, p: lanes }) => {
            // The header is read before anything is authenticated: a crafted
            // bundle must not make us spend gigabytes or minutes first.
            if *m_kib > MAX_M_KIB || *t > MAX_T || *lanes > MAX_P {
                return Err(BundleError::Format(format!(
                    "its key-derivation cost (m={m_kib} KiB, t={t}, p={lanes}) is above what keyhole writes or accepts \
                     (m<={MAX_M_KIB} KiB, t<={MAX_T}, p<={MAX_P})"
                )));
            }
            let salt = B64.decode(salt).map_err(|e| BundleError::Format(format!("salt: {e}")))?;
            let params =
                argon2::Params::new(*m_kib, *t, *lanes, Some(32)).map_err(|e| BundleError::Kdf(e.to_string()))?;
            let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut out = Zeroizing::new([0u8; 32]);
            argon.hash_password_into(p.as_bytes(), &salt, &mut *out).map_err(|e| BundleError::Kdf(e.to_string()))?;
            Ok(out)
        }
        (BundleKey::Raw(_), Kdf::Argon2id { .. }) => Err(BundleError::WrongKind("passphrase")),
        (BundleKey::Passphrase(_), Kdf::Raw) => Err(BundleError::WrongKind("key file")),
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

/// Encrypts `secrets` into a bundle (JSON text).
pub fn seal(secrets: Vec<ExportedSecret>, key: &BundleKey) -> Result<String, BundleError> {
    let kdf = match key {
        BundleKey::Passphrase(_) => Kdf::Argon2id { salt: B64.encode(random::<16>()), m_kib: 64 * 1024, t: 3, p: 1 },
        BundleKey::Raw(_) => Kdf::Raw,
    };
    let k = derive(key, &kdf)?;
    let nonce = random::<24>();
    let header = Header { format: FORMAT.into(), kdf, nonce: B64.encode(nonce) };
    let aad = serde_json::to_vec(&header).expect("headers encode");
    let plain = Zeroizing::new(
        serde_json::to_vec(&Payload_ { exported_at: crate::audit::now_rfc3339(), secrets }).expect("payloads encode"),
    );
    let ct = XChaCha20Poly1305::new((&*k).into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: &plain, aad: &aad })
        .expect("encryption of an in-memory buffer does not fail");
    Ok(serde_json::to_string_pretty(&Bundle { header, ciphertext: B64.encode(ct) }).expect("bundles encode"))
}

/// Decrypts a bundle; fails without side effects on any alteration.
pub fn open(text: &str, key: &BundleKey) -> Result<Vec<ExportedSecret>, BundleError> {
    let bundle: Bundle = serde_json::from_str(text).map_err(|e| BundleError::Format(e.to_string()))?;
    if bundle.header.format != FORMAT {
        return Err(BundleError::Format(format!("format {:?}, expected {FORMAT:?}", bundle.header.format)));
    }
    let nonce = B64.decode(&bundle.header.nonce).map_err(|_| BundleError::Auth)?;
    if nonce.len() != 24 {
        return Err(BundleError::Auth);
    }
    let k = derive(key, &bundle.header.kdf)?;
    let aad = serde_json::to_vec(&bundle.header).expect("headers encode");
    let ct = B64.decode(&bundle.ciphertext).map_err(|_| BundleError::Auth)?;
    let plain = Zeroizing::new(
        XChaCha20Poly1305::new((&*k).into())
            .decrypt(XNonce::from_slice(&nonce), Payload { msg: &ct, aad: &aad })
            .map_err(|_| BundleError::Auth)?,
    );
    // serde's message could quote a value from the payload: report only where.
    let payload: Payload_ = serde_json::from_slice(&plain).map_err(|e| {
        BundleError::Format(format!("its decrypted contents are malformed at line {} column {}", e.line(), e.column()))
    })?;
    Ok(payload.secrets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ExportedVersion;

    fn sample() -> Vec<ExportedSecret> {
        vec![ExportedSecret {
            namespace: "a".into(),
            name: "K".into(),
            keep_versions: 5,
            revoked: false,
            versions: vec![ExportedVersion {
                version: 1,
                created_at: 1,
                expires_at: None,
                value: Zeroizing::new("v".into()),
            }],
        }]
    }

    #[test]
    fn raw_keys_round_trip_and_detect_tampering() {
        let key = BundleKey::Raw(Zeroizing::new([7u8; 32]));
        let text = seal(sample(), &key).unwrap();
        assert!(!text.contains("\"v\""));
        assert_eq!(open(&text, &key).unwrap()[0].versions[0].value.as_str(), "v");
        assert!(matches!(open(&text, &BundleKey::Raw(Zeroizing::new([8u8; 32]))), Err(BundleError::Auth)));
        let tampered = text.replace("\"raw\"", "\"argon2id\"");
        assert!(open(&tampered, &key).is_err());
        assert!(matches!(
            open(&text, &BundleKey::Passphrase(Zeroizing::new("x".into()))),
            Err(BundleError::WrongKind("key file"))
        ));
    }
}
