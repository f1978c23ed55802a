//! `SecretValue`: the only type that holds a plaintext secret inside the host.
//!
//! It zeroizes its bytes on drop, prints as `***` through `Debug` and
//! `Display`, and is not `Serialize`, so it cannot slip into a log line, an
//! error or a JSON document by accident. Reading the text takes an explicit
//! call to [`SecretValue::expose`], which is easy to grep for.

use std::fmt;
use zeroize::Zeroizing;

/// The largest secret value keyhole stores from the command line (1 MiB,
/// a Kubernetes Secret's limit).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// A plaintext secret value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Wraps plaintext. The caller's `String` moves in and is zeroized with
    /// this value.
    pub fn new(value: String) -> Self {
        SecretValue(Zeroizing::new(value))
    }

    /// Decodes plaintext bytes, which must be UTF-8 (the WIT contract hands
    /// secrets to plugins as strings). The bytes are zeroized either way.
    pub fn from_utf8(bytes: Zeroizing<Vec<u8>>) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        let mut bytes = bytes;
        let owned = std::mem::take(&mut *bytes);
        // Checked above; this moves the buffer, it does not copy it.
        Ok(SecretValue::new(String::from_utf8(owned).expect("validated UTF-8")))
    }

    /// Reads plaintext from `source` (stdin, a file) without leaving a copy
    /// behind: the buffer grows by moving into a bigger zeroizing one, never
    /// by a reallocation that would free the old bytes as they are. More
    /// than `limit` bytes is an error (`FileTooLarge`), so an endless source
    /// such as `/dev/zero` stops there.
    pub fn read_plaintext(mut source: impl std::io::Read, limit: usize) -> std::io::Result<Zeroizing<Vec<u8>>> {
        let mut buf = Zeroizing::new(Vec::with_capacity(4096));
        loop {
            if buf.len() == buf.capacity() {
                let mut bigger = Zeroizing::new(Vec::with_capacity(buf.capacity() * 2));
                bigger.extend_from_slice(&buf);
                buf = bigger;
            }
            let start = buf.len();
            let room = buf.capacity();
            buf.resize(room, 0);
            let read = source.read(&mut buf[start..]);
            buf.truncate(start + read.as_ref().map_or(0, |n| *n));
            match read {
                Ok(0) => return Ok(buf),
                Ok(_) if buf.len() > limit => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::FileTooLarge,
                        format!("the secret value is larger than {limit} bytes, the most keyhole stores"),
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The plaintext. Every call site is a place where a secret leaves this
    /// type: keep them few.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A value arriving in a request body (`PUT /api/v1/secrets/...`): the
/// decoded text moves into the zeroizing wrapper without a copy.
/// The alphabet of a generated value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Charset {
    /// Letters and digits.
    Alnum,
    /// Lowercase hex of N random bytes.
    Hex,
    /// Base64 of N random bytes.
    Base64,
    /// Printable ASCII without space.
    Ascii,
}

/// Most characters (or random bytes) of a generated value.
pub const MAX_GENERATED: usize = 4096;

impl SecretValue {
    /// A new random value: `n` characters of `charset` (for hex and base64,
    /// `n` random bytes), uniform over the alphabet. The one generator of
    /// `secret rotate --generate` and of a task's rotation.
    pub fn generate(n: usize, charset: Charset) -> Result<SecretValue, String> {
        use base64::Engine as _;
        if n == 0 || n > MAX_GENERATED {
            return Err(format!("takes 1 to {MAX_GENERATED}, not {n}"));
        }
        let random = |len: usize| {
            let mut b = Zeroizing::new(vec![0u8; len]);
            getrandom::fill(&mut b).expect("the operating system's random source failed");
            b
        };
        let pick = |alphabet: &[u8]| {
            // Rejection sampling: uniform over the alphabet.
            let limit = 256 - (256 % alphabet.len());
            let mut out = Zeroizing::new(String::with_capacity(n));
            while out.len() < n {
                for &b in random(n * 2).iter() {
                    if (b as usize) < limit && out.len() < n {
                        out.push(alphabet[b as usize % alphabet.len()] as char);
                    }
                }
            }
            out
        };
        let text = match charset {
            Charset::Alnum => pick(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"),
            Charset::Ascii => pick(&(33u8..127).collect::<Vec<u8>>()),
            Charset::Hex => Zeroizing::new(hex::encode(&*random(n))),
            Charset::Base64 => Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*random(n))),
        };
        Ok(SecretValue::new(text.as_str().to_owned()))
    }
}

/// In the API's schema a value is a string sent, never answered.
impl schemars::JsonSchema for SecretValue {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretValue".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "writeOnly": true, "description": "The secret's value: sent, never answered." })
    }
}

impl<'de> serde::Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d).map(SecretValue::new)
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formats_its_value() {
        let v = SecretValue::new("hunter2".to_owned());
        assert_eq!(format!("{v}"), "***");
        assert_eq!(format!("{v:?}"), "***");
        assert_eq!(format!("{:?}", Some(&v)), "Some(***)");
        assert_eq!(v.expose(), "hunter2");
    }

    #[test]
    fn reads_plaintext_up_to_a_limit() {
        let big = vec![b'x'; 10_000];
        assert_eq!(*SecretValue::read_plaintext(&big[..], 10_000).unwrap(), big);
        let e = SecretValue::read_plaintext(&big[..], 9_999).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(!e.to_string().contains('x'), "{e}");
        let endless = std::io::repeat(b'z');
        assert_eq!(SecretValue::read_plaintext(endless, 1 << 20).unwrap_err().kind(), std::io::ErrorKind::FileTooLarge);
    }

    #[test]
    fn rejects_non_utf8() {
        assert!(SecretValue::from_utf8(Zeroizing::new(vec![0xff, 0xfe])).is_err());
        let v = SecretValue::from_utf8(Zeroizing::new(b"ok".to_vec())).unwrap();
        assert_eq!(v.expose(), "ok");
    }
}
