//! Envelope encryption: the master key, per-secret data keys, and where the
//! master key comes from.
//!
//! Each secret version is encrypted with XChaCha20-Poly1305 under a fresh
//! random 256-bit data key; the data key is itself encrypted (wrapped) under
//! the master key. The associated data binds both ciphertexts to the secret's
//! namespace, name and version, so a row copied or swapped in the database
//! fails to decrypt instead of yielding another secret's value.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Environment variable that supplies the master key (base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "KEYHOLE_MASTER_KEY";
const NONCE_LEN: usize = 24;

/// The 256-bit key that wraps every data key. Zeroized on drop; its `Debug`
/// shows only the key id.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

/// A short public fingerprint of a master key, safe to print: it lets an
/// operator tell two keys apart without revealing either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a master key came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The `KEYHOLE_MASTER_KEY` environment variable.
    Env,
    /// A key file.
    File(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => write!(f, "${MASTER_KEY_ENV}"),
            KeySource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Failures to obtain a master key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key text is not base64 of exactly 32 bytes.
    #[error("master key from {source_} is malformed: expected base64 of 32 bytes ({why})")]
    Malformed {
        /// Where the key came from.
        source_: KeySource,
        /// What was wrong (never the key itself).
        why: String,
    },
    /// No key is configured and none may be created.
    #[error(
        "no master key: ${MASTER_KEY_ENV} is not set and {path} does not exist; \
         the store was created with key {expected}: set ${MASTER_KEY_ENV} or restore that file"
    )]
    Missing {
        /// The key file that was looked for.
        path: PathBuf,
        /// The id of the key the store expects.
        expected: KeyId,
    },
    /// Another process holds the key lock (a master-key rotation).
    #[error(
        "the key files are locked by another keyhole process (a master-key rotation is in progress, see {path}); \
         waited {waited:?}: try again when it has finished"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// How long this process waited.
        waited: std::time::Duration,
    },
    /// The key in the environment was rotated away.
    #[error(
        "${MASTER_KEY_ENV} holds key {got}, but the master key was rotated to key {next_id}, which is in {next}: \
         set ${MASTER_KEY_ENV} to the contents of that file (then move the file somewhere safe)"
    )]
    RotatedAway {
        /// The id of the key in the environment.
        got: KeyId,
        /// The file holding the new key.
        next: PathBuf,
        /// The new key's id.
        next_id: KeyId,
    },
    /// Reading or creating the key file failed.
    #[error("cannot {action} master key file {path}: {err}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        err: std::io::Error,
    },
}

/// Decryption failed: wrong key, or the ciphertext or its binding (namespace,
/// name, version) was altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed (wrong master key, or the stored row was altered or moved)")]
pub struct DecryptError;

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *k).expect("the operating system's random source failed");
        MasterKey(k)
    }

    /// Parses base64 text (surrounding whitespace ignored).
    pub fn from_base64(text: &str, source: KeySource) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(
            B64.decode(text.trim()).map_err(|e| KeyError::Malformed { source_: source.clone(), why: e.to_string() })?,
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Malformed { source_: source, why: format!("decoded to {} bytes", bytes.len()) })?;
        Ok(MasterKey(Zeroizing::new(arr)))
    }

    /// The key as base64 text.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(*self.0))
    }

    /// The key's public fingerprint.
    pub fn id(&self) -> KeyId {
        let digest = sha256_parts(&[b"keyhole key id v1\0", &*self.0]);
        KeyId(hex::encode(&digest[..8]))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }
}

/// Reads a key file (ignoring the environment).
pub fn read_key_file(path: &Path) -> Result<MasterKey, KeyError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|err| KeyError::Io {
        action: "read",
        path: path.to_owned(),
        err,
    })?);
    MasterKey::from_base64(&text, KeySource::File(path.to_owned()))
}

/// Writes `key` to a new file with mode 0600, durably; never overwrites.
pub fn write_new_key_file(path: &Path, key: &MasterKey) -> Result<(), KeyError> {
    crate::data_dir::create_private(path, &[key.to_base64().as_bytes(), b"\n"]).map_err(|err| KeyError::Io {
        action: "create",
        path: path.to_owned(),
        err,
    })
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id())
    }
}

/// One encrypted secret version as stored: the wrapped data key, the nonce
/// and the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Nonce followed by the data key encrypted under the master key.
    pub wrapped_key: Vec<u8>,
    /// Nonce of the value's encryption under the data key.
    pub nonce: Vec<u8>,
    /// The value encrypted under the data key, with its tag.
    pub ciphertext: Vec<u8>,
}

fn random_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).expect("the operating system's random source failed");
    n
}

fn dek_aad(aad: &[u8]) -> Vec<u8> {
    let mut v = b"keyhole data key\0".to_vec();
    v.extend_from_slice(aad);
    v
}

/// Encrypts `plaintext` under a fresh data key wrapped by `master`; `aad` is
/// bound to both layers.
pub fn seal(master: &MasterKey, aad: &[u8], plaintext: &[u8]) -> Sealed {
    let mut dek = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *dek).expect("the operating system's random source failed");
    let wrapped_key = wrap(master, aad, &dek);
    let nonce = random_nonce();
    let ciphertext = XChaCha20Poly1305::new((&*dek).into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .expect("XChaCha20-Poly1305 encryption does not fail for in-memory buffers");
    Sealed { wrapped_key, nonce: nonce.to_vec(), ciphertext }
}

fn wrap(master: &MasterKey, aad: &[u8], dek: &[u8; 32]) -> Vec<u8> {
    let nonce = random_nonce();
    let mut out = nonce.to_vec();
    out.extend(
        master
            .cipher()
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: dek, aad: &dek_aad(aad) })
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory buffers"),
    );
    out
}

fn unwrap_key(master: &MasterKey, aad: &[u8], wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, DecryptError> {
    if wrapped.len() < NONCE_LEN {
        return Err(DecryptError);
    }
    let (nonce, ct) = wrapped.split_at(NONCE_LEN);
    let dek = Zeroizing::new(
        master
            .cipher()
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &dek_aad(aad) })
            .map_err(|_| DecryptError)?,
    );
    let arr: [u8; 32] = dek.as_slice().try_into().map_err(|_| DecryptError)?;
    Ok(Zeroizing::new(arr))
}

/// Decrypts a sealed value. Fails if the key is wrong or anything, including
/// the associated data, differs from what was sealed.
pub fn open(master: &MasterKey, aad: &[u8], sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    let dek = unwrap_key(master, aad, &sealed.wrapped_key)?;
    if sealed.nonce.len() != NONCE_LEN {
        return Err(DecryptError);
    }
    XChaCha20Poly1305::new((&*dek).into())
        .decrypt(XNonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad })
        .map(Zeroizing::new)
        .map_err(|_| DecryptError)
}

/// A random 256-bit key, kept wrapped under the master key in the store,
/// from which the integrity subkeys are derived: the MAC over each secret's
/// security-relevant columns, the audit chain, the backend configuration.
/// Kept apart from the master key so that a master-key rotation re-wraps it
/// without changing any MAC or breaking the audit chain.
#[derive(Clone)]
pub struct IntegrityKey {
    key: Zeroizing<[u8; 32]>,
    /// An HMAC key for the subkey of each [`MacDomain`], derived and keyed
    /// once: each MAC starts from its precomputed state instead of hashing
    /// the key again (two SHA-256 blocks saved per MAC). The keyed state is
    /// as secret as the subkey; like the key itself it lives as long as the
    /// process.
    subkeys: std::sync::Arc<[ring::hmac::Key; MacDomain::ALL.len()]>,
}

impl fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IntegrityKey(***)")
    }
}

/// What an integrity MAC protects: each use has its own subkey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacDomain {
    /// A row of `secrets` (current version, keep, revoked, destroyed).
    SecretRow,
    /// A row of `secret_versions` (version, creation, expiry).
    VersionRow,
    /// The audit hash chain and its head.
    AuditChain,
    /// `backends.json`.
    Backends,
    /// A row of `tokens` (its hash, bindings, expiry, revocation).
    TokenRow,
    /// A row of `roles` (its permissions).
    RoleRow,
    /// A row of `flows` (a deployed revision: its text and plugin digests).
    FlowRow,
    /// A row of `flow_reviews` (a second person's decision on a revision).
    ReviewRow,
    /// A row of `protections` (a secret or namespace that needs review).
    ProtectionRow,
}

impl MacDomain {
    const ALL: [MacDomain; 9] = [
        MacDomain::SecretRow,
        MacDomain::VersionRow,
        MacDomain::AuditChain,
        MacDomain::Backends,
        MacDomain::TokenRow,
        MacDomain::RoleRow,
        MacDomain::FlowRow,
        MacDomain::ReviewRow,
        MacDomain::ProtectionRow,
    ];

    fn label(self) -> &'static [u8] {
        match self {
            MacDomain::SecretRow => b"keyhole mac v1: secret row",
            MacDomain::VersionRow => b"keyhole mac v1: version row",
            MacDomain::AuditChain => b"keyhole mac v1: audit chain",
            MacDomain::Backends => b"keyhole mac v1: backends",
            MacDomain::TokenRow => b"keyhole mac v1: token row",
            MacDomain::RoleRow => b"keyhole mac v1: role row",
            MacDomain::FlowRow => b"keyhole mac v1: flow row",
            MacDomain::ReviewRow => b"keyhole mac v1: review row",
            MacDomain::ProtectionRow => b"keyhole mac v1: protection row",
        }
    }
}

impl IntegrityKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *k).expect("the operating system's random source failed");
        Self::with_subkeys(k)
    }

    fn with_subkeys(key: Zeroizing<[u8; 32]>) -> Self {
        let subkeys = MacDomain::ALL.map(|d| {
            let subkey = Zeroizing::new(hmac_sha256(&*key, d.label()));
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &*subkey)
        });
        IntegrityKey { key, subkeys: std::sync::Arc::new(subkeys) }
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Self::with_subkeys(Zeroizing::new(arr)))
    }

    /// `fields`, each prefixed with its length, so that no two field lists
    /// encode alike.
    fn framed(fields: &[&[u8]]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(fields.iter().map(|f| f.len() + 8).sum());
        for f in fields {
            bytes.extend_from_slice(&(f.len() as u64).to_be_bytes());
            bytes.extend_from_slice(f);
        }
        bytes
    }

    /// HMAC-SHA256 under the subkey of `domain` over `fields`, each
    /// length-prefixed so that no two field lists encode alike.
    pub fn mac(&self, domain: MacDomain, fields: &[&[u8]]) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.subkeys[domain as usize], &Self::framed(fields));
        tag.as_ref().try_into().expect("HMAC-SHA256 tags are 32 bytes")
    }

    /// Checks a MAC from [`IntegrityKey::mac`] in constant time.
    pub fn verify(&self, domain: MacDomain, fields: &[&[u8]], tag: &[u8]) -> bool {
        ring::hmac::verify(&self.subkeys[domain as usize], &Self::framed(fields), tag).is_ok()
    }

    /// A short public id of the key (of one domain's subkey), safe to print.
    pub fn id(&self, domain: MacDomain) -> String {
        hex::encode(&self.mac(domain, &[b"key id"])[..4])
    }

    /// Seals the key under `master` for storage.
    pub fn seal(&self, master: &MasterKey) -> Vec<u8> {
        seal(master, INTEGRITY_AAD, &*self.key).to_blob()
    }

    /// Opens a stored key.
    pub fn open(master: &MasterKey, blob: &[u8]) -> Result<Self, DecryptError> {
        let sealed = Sealed::from_blob(blob).ok_or(DecryptError)?;
        let plain = open(master, INTEGRITY_AAD, &sealed)?;
        IntegrityKey::from_bytes(&plain).ok_or(DecryptError)
    }
}

const INTEGRITY_AAD: &[u8] = b"keyhole integrity key v1";

impl Sealed {
    /// One blob: the three parts, each with a 2-byte length.
    pub fn to_blob(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for part in [&self.wrapped_key, &self.nonce, &self.ciphertext] {
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Parses [`Sealed::to_blob`]; `None` if malformed.
    pub fn from_blob(mut blob: &[u8]) -> Option<Self> {
        let mut take = || -> Option<Vec<u8>> {
            let (len, rest) = blob.split_first_chunk::<2>()?;
            let len = u16::from_be_bytes(*len) as usize;
            let part = rest.get(..len)?.to_vec();
            blob = &rest[len..];
            Some(part)
        };
        let s = Sealed { wrapped_key: take()?, nonce: take()?, ciphertext: take()? };
        blob.is_empty().then_some(s)
    }
}

/// Re-wraps a data key from `old` to `new` master key without touching the
/// value's ciphertext (master-key rotation).
pub fn rewrap(old: &MasterKey, new: &MasterKey, aad: &[u8], wrapped: &[u8]) -> Result<Vec<u8>, DecryptError> {
    let dek = unwrap_key(old, aad, wrapped)?;
    Ok(wrap(new, aad, &dek))
}

/// SHA-256 of `bytes`. Every hash in keyhole goes through here or
/// [`hmac_sha256`]: ring's implementation, which picks the CPU's fastest
/// code (about 1.7× the portable one on a CPU without SHA extensions).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    sha256_parts(&[bytes])
}

/// SHA-256 of `parts` concatenated.
fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().try_into().expect("SHA-256 digests are 32 bytes")
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, data).as_ref().try_into().expect("HMAC-SHA256 tags are 32 bytes")
}

/// Whether `tag` is the HMAC-SHA256 of `data` under `key`, compared in
/// constant time.
pub fn verify_hmac_sha256(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    ring::hmac::verify(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data, tag).is_ok()
}

/// Whether `a` equals `b`, in time that depends on neither's contents:
/// both are MAC'd under a one-off random key and the tags compared in
/// constant time (so their lengths leak nothing either).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the OS random source works");
    verify_hmac_sha256(&key, a, &hmac_sha256(&key, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_the_published_vectors() {
        // FIPS 180-2, "abc"; RFC 4231, test case 2.
        assert_eq!(hex::encode(sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// The MAC of `fields` under `domain`, computed with the `hmac`/`sha2`
    /// crates (keyhole's MACs before ring): what a stored MAC holds.
    fn reference_mac(key: &IntegrityKey, domain: MacDomain, fields: &[&[u8]]) -> [u8; 32] {
        use hmac::Mac;
        type H = hmac::Hmac<sha2::Sha256>;
        let mut sub = <H as Mac>::new_from_slice(&*key.key).unwrap();
        sub.update(domain.label());
        let mut mac = <H as Mac>::new_from_slice(&sub.finalize().into_bytes()).unwrap();
        for f in fields {
            mac.update(&(f.len() as u64).to_be_bytes());
            mac.update(f);
        }
        mac.finalize().into_bytes().into()
    }

    proptest::proptest! {
        #[test]
        fn macs_stored_before_ring_still_verify(
            fields in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), 0..5),
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            use sha2::Digest;
            let key = IntegrityKey::generate();
            let fields: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
            for domain in MacDomain::ALL {
                let stored = reference_mac(&key, domain, &fields);
                proptest::prop_assert_eq!(key.mac(domain, &fields), stored);
                proptest::prop_assert!(key.verify(domain, &fields, &stored));
                let mut forged = stored;
                forged[31] ^= 1;
                proptest::prop_assert!(!key.verify(domain, &fields, &forged));
                proptest::prop_assert!(!key.verify(domain, &fields, &stored[..31]));
            }
            proptest::prop_assert_eq!(sha256(&data), <[u8; 32]>::from(sha2::Sha256::digest(&data)));
        }
    }

    #[test]
    fn round_trips_and_binds_associated_data() {
        let k = MasterKey::generate();
        let s = seal(&k, b"ns/A/1", b"value");
        assert_eq!(open(&k, b"ns/A/1", &s).unwrap().as_slice(), b"value");
        assert_eq!(open(&k, b"ns/B/1", &s), Err(DecryptError));
        assert_eq!(open(&MasterKey::generate(), b"ns/A/1", &s), Err(DecryptError));
        let mut bad = s.clone();
        bad.ciphertext[0] ^= 1;
        assert_eq!(open(&k, b"ns/A/1", &bad), Err(DecryptError));
    }

    /// The store's format: a value sealed under master key 32 × 0x07 for
    /// row `ops/DB/1` (by this code, in December 2026) opens, with the
    /// data-key label and both layers' associated data; moved to another
    /// row, neither its data key nor its value opens.
    #[test]
    fn a_stored_value_keeps_opening_and_its_data_key_stays_bound_to_its_row() {
        let k = MasterKey(Zeroizing::new([7; 32]));
        let stored = Sealed {
            wrapped_key: hex::decode(
                "be9957e963a08070bb78ed940f83589c94c3550f887fb2144f28afd16d539281\
                 f0aead636991ced02effff9b3344fd4247067aef01e7983b7ddb1564a0f0a301faf4f6b6ffee0721",
            )
            .unwrap(),
            nonce: hex::decode("588a71eaa894d91be42f893cbd3dbf5e398152345823e2e1").unwrap(),
            ciphertext: hex::decode("9ff8194a5c1741304720f7f6acdec53eabd8b9b25a4e04").unwrap(),
        };
        assert_eq!(open(&k, b"ops/DB/1", &stored).unwrap().as_slice(), b"hunter2");
        assert!(unwrap_key(&k, b"ops/DB/1", &stored.wrapped_key).is_ok());
        assert_eq!(unwrap_key(&k, b"ops/DB/2", &stored.wrapped_key).err(), Some(DecryptError));
        assert_eq!(open(&k, b"ops/DB/2", &stored), Err(DecryptError));
    }

    /// Every seal draws fresh nonces for both layers. A nonce repeated
    /// under the master key would let whoever reads two rows combine their
    /// wrapped data keys (and forge the data-key layer's tag).
    #[test]
    fn every_seal_draws_fresh_nonces() {
        let k = MasterKey::generate();
        let (a, b) = (seal(&k, b"x", b"v"), seal(&k, b"x", b"v"));
        assert_ne!(a.wrapped_key[..NONCE_LEN], b.wrapped_key[..NONCE_LEN]);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    /// An edited row whose wrapped key or nonce was cut short or padded is
    /// refused as altered: never a panic.
    #[test]
    fn a_truncated_or_padded_row_is_refused_without_a_panic() {
        let k = MasterKey::generate();
        let s = seal(&k, b"x", b"v");
        for n in 0..s.wrapped_key.len() + 2 {
            let mut t = s.clone();
            t.wrapped_key.resize(n, 0);
            let want = if n == s.wrapped_key.len() { Ok(b"v".to_vec()) } else { Err(DecryptError) };
            assert_eq!(open(&k, b"x", &t).map(|v| v.to_vec()), want, "wrapped key of {n} bytes");
        }
        for n in [0, 1, NONCE_LEN - 1, NONCE_LEN + 1] {
            let mut t = s.clone();
            t.nonce.resize(n, 0);
            assert_eq!(open(&k, b"x", &t), Err(DecryptError), "nonce of {n} bytes");
        }
    }

    #[test]
    fn rewrap_moves_a_value_to_a_new_key() {
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        let mut s = seal(&a, b"x", b"v");
        s.wrapped_key = rewrap(&a, &b, b"x", &s.wrapped_key).unwrap();
        assert_eq!(open(&b, b"x", &s).unwrap().as_slice(), b"v");
        assert!(open(&a, b"x", &s).is_err());
    }

    #[test]
    fn integrity_macs_bind_domain_fields_and_key() {
        let k = IntegrityKey::generate();
        let tag = k.mac(MacDomain::SecretRow, &[b"a", b"bc"]);
        assert!(k.verify(MacDomain::SecretRow, &[b"a", b"bc"], &tag));
        assert!(!k.verify(MacDomain::SecretRow, &[b"ab", b"c"], &tag), "fields are length-prefixed");
        assert!(!k.verify(MacDomain::VersionRow, &[b"a", b"bc"], &tag));
        assert!(!IntegrityKey::generate().verify(MacDomain::SecretRow, &[b"a", b"bc"], &tag));
        let m = MasterKey::generate();
        let back = IntegrityKey::open(&m, &k.seal(&m)).unwrap();
        assert_eq!(back.mac(MacDomain::Backends, &[]), k.mac(MacDomain::Backends, &[]));
        assert!(IntegrityKey::open(&MasterKey::generate(), &k.seal(&m)).is_err());
        assert!(IntegrityKey::open(&m, b"\x00").is_err());
        // Its public id (what `audit verify` names): 8 hex digits, the same
        // after a round trip through the store, another for another key.
        let id = k.id(MacDomain::AuditChain);
        assert!(id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");
        assert_eq!(back.id(MacDomain::AuditChain), id);
        assert_ne!(IntegrityKey::generate().id(MacDomain::AuditChain), id);
        assert_ne!(k.id(MacDomain::SecretRow), id, "each domain's subkey has its own id");
    }

    #[test]
    fn malformed_key_text_is_explained_without_echoing_it() {
        let e = MasterKey::from_base64("c2hvcnQ=", KeySource::Env).unwrap_err().to_string();
        assert!(e.contains("decoded to 5 bytes"), "{e}");
        assert!(!e.contains("c2hvcnQ"), "{e}");
        let k = MasterKey::generate();
        let back = MasterKey::from_base64(&k.to_base64(), KeySource::Env).unwrap();
        assert_eq!(back.id(), k.id());
        assert!(format!("{k:?}").starts_with("MasterKey("));
    }
}
