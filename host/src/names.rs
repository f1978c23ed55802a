//! Validated identifiers: secret names, namespaces, task and execution ids.
//!
//! Every string that crosses a trust boundary (CLI argument, flow file,
//! plugin call) is parsed into one of these types once, at the edge; the rest
//! of the host never re-checks them.

use std::fmt;
use std::str::FromStr;

/// Why a name was rejected. The message names the offending value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct InvalidName {
    kind: &'static str,
    value: String,
    rule: &'static str,
}

const MAX_NAME_LEN: usize = 128;

fn check_segment(kind: &'static str, whole: &str, seg: &str, extra: &[char]) -> Result<(), InvalidName> {
    let bad = |rule| {
        Err(InvalidName {
            kind,
            // Never echo an absurdly long value back into an error message.
            value: whole.chars().take(MAX_NAME_LEN).collect(),
            rule,
        })
    };
    if seg.is_empty() {
        return bad("must not be empty");
    }
    if whole.len() > MAX_NAME_LEN {
        return bad("must be at most 128 bytes");
    }
    let first = seg.chars().next().unwrap_or('_');
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return bad("must start with a letter, digit or underscore");
    }
    if !seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c)) {
        return bad("may contain only ASCII letters, digits, '_' and '-'");
    }
    Ok(())
}

/// The name of a secret, e.g. `WEBHOOK_SIGNING_KEY`: ASCII letters, digits,
/// `_`, `-` and `.` are allowed, at most 128 bytes. Case-sensitive.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretName(String);

impl SecretName {
    /// Parses and validates a secret name.
    pub fn new(s: &str) -> Result<Self, InvalidName> {
        check_segment("secret name", s, s, &['-', '.'])?;
        Ok(SecretName(s.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A dotted namespace such as `finance.reporting`; the empty string is the
/// root namespace. Lookups fall back from a namespace to its parents.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Namespace(String);

impl Namespace {
    /// The root namespace, parent of every other.
    pub fn root() -> Self {
        Namespace(String::new())
    }

    /// Parses a dotted namespace; `""` is the root.
    pub fn new(s: &str) -> Result<Self, InvalidName> {
        if s.is_empty() {
            return Ok(Self::root());
        }
        for seg in s.split('.') {
            check_segment("namespace", s, seg, &['-'])?;
        }
        Ok(Namespace(s.to_owned()))
    }

    /// The namespace as text (`""` for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root namespace.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// This namespace and its ancestors, nearest first, ending with the root:
    /// `a.b` gives `a.b`, `a`, ``.
    pub fn chain(&self) -> Vec<Namespace> {
        let mut out = Vec::new();
        let mut cur = self.0.as_str();
        loop {
            out.push(Namespace(cur.to_owned()));
            if cur.is_empty() {
                return out;
            }
            cur = cur.rfind('.').map_or("", |i| &cur[..i]);
        }
    }
}

/// Shows the root namespace as `(root)` so that it is visible in tables and
/// messages; use [`Namespace::as_str`] for the raw form.
impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() { f.write_str("(root)") } else { f.write_str(&self.0) }
    }
}

/// The id of a task within a flow (or a flow id), e.g. `sign`: ASCII letters,
/// digits, `_` and `-`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

impl TaskId {
    /// Parses and validates a task or flow id.
    pub fn new(s: &str) -> Result<Self, InvalidName> {
        check_segment("id", s, s, &['-'])?;
        Ok(TaskId(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Derives an id from a file stem, replacing characters an id may not
    /// hold with `-` (used for `host exec plugin.wasm`).
    pub fn from_file_stem(stem: &str) -> Self {
        let s: String = stem
            .chars()
            .take(MAX_NAME_LEN)
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' })
            .collect();
        let s = s.trim_start_matches('-');
        TaskId::new(s).unwrap_or_else(|_| TaskId("task".to_owned()))
    }
}

/// Flow ids follow the same rules as task ids.
pub type FlowId = TaskId;

/// The unique id of one execution of a flow (or of one `host exec`): a
/// time-ordered UUID (v7), so ids sort by start time.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecutionId(String);

impl ExecutionId {
    /// A new, unique execution id.
    pub fn generate() -> Self {
        ExecutionId(uuid::Uuid::now_v7().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ExecutionId {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, InvalidName> {
        uuid::Uuid::parse_str(s).map(|u| ExecutionId(u.to_string())).map_err(|_| InvalidName {
            kind: "execution id",
            value: s.chars().take(MAX_NAME_LEN).collect(),
            rule: "must be a UUID as printed by `host executions list`",
        })
    }
}

macro_rules! text_impls {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    )*};
}
text_impls!(SecretName, Namespace, TaskId, ExecutionId);

macro_rules! display_and_parse {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $t {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, InvalidName> {
                <$t>::new(s)
            }
        }
    )*};
}
display_and_parse!(SecretName, TaskId);

/// Namespaces (`""` for the root) and secret names travel as their raw text
/// and are checked when read back, like every other way in.
macro_rules! serde_as_text {
    ($($t:ident),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(d)?;
                text.parse::<$t>().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_as_text!(Namespace, SecretName, TaskId, ExecutionId);

/// In the API's schemas, a namespace (`""` or `-` for the root, dotted
/// segments) and a secret name are strings, checked when read.
macro_rules! schema_as_text {
    ($($t:ident: $what:literal),*) => {$(
        impl schemars::JsonSchema for $t {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($t).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "description": $what })
            }
        }
    )*};
}
schema_as_text!(
    Namespace: "A namespace: dotted segments of ASCII letters, digits, `_` and `-`, such as `finance.reporting`; empty for the root.",
    SecretName: "A secret's name: ASCII letters, digits, `_`, `-` and `.`, at most 128 bytes, such as `DB_PASSWORD`.",
    TaskId: "A flow's or a task's id: ASCII letters, digits, `_` and `-`.",
    ExecutionId: "An execution's id: a UUID (v7, so ids sort by start time)."
);

/// Stored as their text and checked when read back: a row whose name does
/// not check is a corrupt row, never taken as it is.
macro_rules! sql_as_text {
    ($($t:ident),*) => {$(
        impl rusqlite::types::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.0.as_str()))
            }
        }
        impl rusqlite::types::FromSql for $t {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let text = v.as_str()?;
                text.parse::<$t>().map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }
    )*};
}
sql_as_text!(Namespace, SecretName, TaskId, ExecutionId);

impl FromStr for Namespace {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, InvalidName> {
        Namespace::new(s)
    }
}

impl fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_chain_is_nearest_first_and_ends_at_root() {
        let ns = Namespace::new("finance.reporting.eu").unwrap();
        let chain: Vec<_> = ns.chain().iter().map(|n| n.as_str().to_owned()).collect();
        assert_eq!(chain, ["finance.reporting.eu", "finance.reporting", "finance", ""]);
        assert_eq!(Namespace::root().chain(), vec![Namespace::root()]);
    }

    #[test]
    fn bad_names_are_rejected_with_the_rule() {
        let e = Namespace::new("finance..x").unwrap_err();
        assert_eq!(e.to_string(), "invalid namespace \"finance..x\": must not be empty");
        let e = SecretName::new("has space").unwrap_err();
        assert!(e.to_string().contains("may contain only"), "{e}");
        assert!(SecretName::new("").is_err());
        assert!(SecretName::new(&"A".repeat(129)).is_err());
        assert!(SecretName::new("db.password-2").is_ok());
        assert!(Namespace::new("a.b-c.d_e").is_ok());
    }

    #[test]
    fn file_stems_become_valid_ids() {
        assert_eq!(TaskId::from_file_stem("hmac_sign").as_str(), "hmac_sign");
        assert_eq!(TaskId::from_file_stem("my plugin.v2").as_str(), "my-plugin-v2");
        assert_eq!(TaskId::from_file_stem("...").as_str(), "task");
    }

    #[test]
    fn execution_ids_are_unique_and_parse_back() {
        let a = ExecutionId::generate();
        let b = ExecutionId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().parse::<ExecutionId>().unwrap(), a);
        assert!("nope".parse::<ExecutionId>().is_err());
    }
}
