//! Principals of `host serve`: bearer tokens (stored as their SHA-256, shown
//! once), the role bindings each carries, and operators' custom roles, in
//! the `tokens` and `roles` tables of the store file.
//!
//! Invariant: a token is never stored, logged or audited, only its hash and
//! its id and name; every row is authenticated with the integrity key, so a
//! row edited outside keyhole (a binding widened to `admin`, a revocation
//! cleared) authenticates no one; a token is refused once revoked or
//! expired. What a principal may do is decided in [`crate::authz`], not here.

use crate::audit::NewRecord;
use crate::authz::{Binding, Principal};
use crate::crypto::{IntegrityKey, MacDomain};
use crate::db::{DbError, connect, sql_err};
use crate::store::{fmt_time, now};
use base64::Engine;
use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

mod roles;

/// What every token starts with, so that scanners and people recognise one.
pub const TOKEN_PREFIX: &str = "kh_";

/// A bearer token as presented or just issued. Its `Debug` shows only the
/// prefix.
pub struct TokenSecret(Zeroizing<String>);

impl TokenSecret {
    /// A fresh token: the prefix and 256 random bits (base64url).
    fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *bytes).expect("the operating system's random source failed");
        let body = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(*bytes));
        TokenSecret(Zeroizing::new(format!("{TOKEN_PREFIX}{}", body.as_str())))
    }

    /// Wraps a presented token.
    pub fn presented(text: &str) -> Self {
        TokenSecret(Zeroizing::new(text.to_owned()))
    }

    /// The token text: for the one place that prints a new token, and for
    /// clients that send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it has the shape of a token (prefix and 43 base64url
    /// characters): anything else is refused before a lookup.
    fn well_formed(&self) -> bool {
        self.0
            .strip_prefix(TOKEN_PREFIX)
            .is_some_and(|b| b.len() == 43 && b.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'))
    }

    fn hash(&self) -> String {
        hex::encode(crate::crypto::sha256(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TOKEN_PREFIX}***")
    }
}

/// A token's public description: never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenInfo {
    /// Its id, `tok-` and 16 hex digits.
    pub id: String,
    /// Its name, unique among tokens not revoked.
    pub name: String,
    /// Roles and where.
    pub bindings: Vec<Binding>,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Expiry, if any.
    pub expires: Option<String>,
    /// Revocation time, if revoked.
    pub revoked: Option<String>,
    /// When it last authenticated (to the minute), if ever.
    pub last_used: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// The token that issued it; `None`: the root operator (or a token
    /// from before keyhole recorded issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// `active`, `expired`, `revoked`, `tampered`, or `ended` (its issuer
    /// was revoked or expired).
    pub state: String,
}

/// Why a request was not authenticated. The client is told only "401"; the
/// reason goes to the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header, or not a token's shape.
    Malformed,
    /// No such token.
    Unknown,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Its row fails its integrity check.
    Tampered,
    /// A token in the chain that issued it was revoked, expired or edited.
    IssuerEnded,
}

impl AuthFailure {
    /// For the audit record.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Malformed => "no bearer token, or not a keyhole token",
            AuthFailure::Unknown => "unknown token",
            AuthFailure::Revoked => "revoked token",
            AuthFailure::Expired => "expired token",
            AuthFailure::Tampered => "the token's row fails its integrity check (edited outside keyhole)",
            AuthFailure::IssuerEnded => "the token that issued it was revoked or expired",
        }
    }
}

/// Failures of token and role management.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// SQLite refused.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A name, role or TTL that is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// No such token or role.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken.
    #[error("{0}")]
    Conflict(String),
    /// A stored row was edited outside keyhole.
    #[error("{0}: it was edited outside keyhole; revoke it and issue a new one")]
    Tampered(String),
}

/// Access to tokens and roles.
#[derive(Debug)]
pub struct Tokens {
    conn: Connection,
    path: PathBuf,
    integrity: IntegrityKey,
}

/// Checks a token name: 1 to 64 of letters, digits, `-`, `_`, `.`.
pub fn check_token_name(name: &str) -> Result<(), TokenError> {
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with("tok-")
    {
        let shown: String = name.chars().take(64).collect();
        return Err(TokenError::Invalid(format!(
            "invalid token name {shown:?}: 1 to 64 of letters, digits, '-', '_' and '.', not starting with \"tok-\""
        )));
    }
    Ok(())
}

struct Row {
    id: String,
    name: String,
    hash: String,
    bindings: String,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used: Option<i64>,
    created_by: String,
    mac: Vec<u8>,
    parent: Option<String>,
}

const COLUMNS: &str =
    "id, name, hash, bindings, created_at, expires_at, revoked_at, last_used, created_by, mac, parent";

/// The most tokens a chain of issuers may hold (a token issued by one
/// issued by one ...): a bound on the walk, and on delegation.
pub const MAX_CHAIN: usize = 16;

/// The longest lifetime a token may be given at the command line (ten
/// years); through the API the server's `--max-token-ttl` applies.
pub const MAX_TTL: Duration = Duration::from_secs(3650 * 86_400);

impl Row {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            id: r.get(0)?,
            name: r.get(1)?,
            hash: r.get(2)?,
            bindings: r.get(3)?,
            created_at: r.get(4)?,
            expires_at: r.get(5)?,
            revoked_at: r.get(6)?,
            last_used: r.get(7)?,
            created_by: r.get(8)?,
            mac: r.get(9)?,
            parent: r.get(10)?,
        })
    }

    /// The MAC'd fields; the issuer only for rows that have one, so rows
    /// from before keyhole recorded issuers keep their MAC.
    fn fields(&self) -> Vec<Vec<u8>> {
        let mut f = vec![
            self.id.as_bytes().to_vec(),
            self.name.as_bytes().to_vec(),
            self.hash.as_bytes().to_vec(),
            self.bindings.as_bytes().to_vec(),
            self.created_at.to_be_bytes().to_vec(),
            self.expires_at.map_or(b"-".to_vec(), |x| x.to_be_bytes().to_vec()),
            self.revoked_at.map_or(b"-".to_vec(), |x| x.to_be_bytes().to_vec()),
        ];
        if let Some(p) = &self.parent {
            f.push(p.as_bytes().to_vec());
        }
        f
    }

    fn mac(&self, key: &IntegrityKey) -> [u8; 32] {
        let f = self.fields();
        key.mac(MacDomain::TokenRow, &f.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }

    fn authentic(&self, key: &IntegrityKey) -> bool {
        let f = self.fields();
        key.verify(MacDomain::TokenRow, &f.iter().map(Vec::as_slice).collect::<Vec<_>>(), &self.mac)
    }

    /// Why this row alone authenticates no one, if it does not.
    fn refusal(&self, key: &IntegrityKey, now: i64) -> Option<AuthFailure> {
        if !self.authentic(key) {
            Some(AuthFailure::Tampered)
        } else if self.revoked_at.is_some() {
            Some(AuthFailure::Revoked)
        } else if self.expires_at.is_some_and(|x| x <= now) {
            Some(AuthFailure::Expired)
        } else {
            None
        }
    }

    /// `issuer` is what the chain above it says ([`Tokens::chain`]).
    fn info(&self, key: &IntegrityKey, now: i64, issuer: Result<(), AuthFailure>) -> TokenInfo {
        let bindings: Vec<Binding> = serde_json::from_str(&self.bindings).unwrap_or_default();
        let state = match (self.refusal(key, now), issuer) {
            (Some(AuthFailure::Tampered), _) => "tampered",
            (Some(AuthFailure::Revoked), _) => "revoked",
            (Some(_), _) => "expired",
            (None, Err(_)) => "ended",
            (None, Ok(())) => "active",
        };
        TokenInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            bindings,
            created: fmt_time(self.created_at),
            expires: self.expires_at.map(fmt_time),
            revoked: self.revoked_at.map(fmt_time),
            last_used: self.last_used.map(fmt_time),
            created_by: self.created_by.clone(),
            parent: self.parent.clone(),
            state: state.into(),
        }
    }
}

impl Tokens {
    /// Opens the tables in the store file at `path`; rows are checked with
    /// `integrity`.
    pub fn open(path: &Path, integrity: IntegrityKey) -> Result<Self, TokenError> {
        Ok(Tokens { conn: connect(path)?, path: path.to_owned(), integrity })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> TokenError + use<> {
        let e = sql_err(&self.path, op);
        move |err| TokenError::Db(e(err))
    }

    /// Issues a token named `name` with `bindings`, valid for `ttl` (or
    /// until revoked). Every role must exist. Returns the token: the only
    /// time it is ever available.
    ///
    /// `issuer` is the token issuing it (through the API), `None` for the
    /// root operator: a token lives no longer than its issuer, and ends
    /// when any token of the chain that issued it is revoked or expires.
    /// The audit record `audit` makes of it commits with it.
    pub fn create(
        &self,
        name: &str,
        bindings: Vec<Binding>,
        ttl: Option<Duration>,
        created_by: &str,
        issuer: Option<&str>,
        audit: impl FnOnce(&TokenInfo) -> NewRecord,
    ) -> Result<(TokenInfo, TokenSecret), TokenError> {
        check_token_name(name)?;
        if bindings.is_empty() {
            return Err(TokenError::Invalid("a token needs at least one role: --role NAME".into()));
        }
        if ttl.is_some_and(|t| t > MAX_TTL) {
            return Err(TokenError::Invalid(format!(
                "a token lives at most {} days: give a shorter --ttl",
                MAX_TTL.as_secs() / 86_400
            )));
        }
        for b in &bindings {
            self.role(&b.role)?;
        }
        let created_at = now();
        let mut expires_at = ttl.map(|d| created_at.saturating_add(d.as_secs() as i64));
        if let Some(issuer) = issuer {
            let row = self.find(issuer)?;
            let refused =
                |why: AuthFailure| TokenError::Invalid(format!("the issuing token cannot issue: {}", why.as_str()));
            if let Some(why) = row.refusal(&self.integrity, created_at) {
                return Err(refused(why));
            }
            let (_, depth, until) = self.chain(&row, created_at).map_err(refused)?;
            if depth >= MAX_CHAIN {
                return Err(TokenError::Invalid(format!(
                    "a token may be issued through at most {MAX_CHAIN} tokens: issue it from one nearer the operator"
                )));
            }
            // A child lives no longer than the chain that issued it.
            expires_at = match (expires_at, until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let secret = TokenSecret::generate();
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).expect("the operating system's random source failed");
        let mut row = Row {
            id: format!("tok-{}", hex::encode(id)),
            name: name.to_owned(),
            hash: secret.hash(),
            bindings: serde_json::to_string(&bindings).expect("bindings encode"),
            created_at,
            expires_at,
            revoked_at: None,
            last_used: None,
            created_by: created_by.to_owned(),
            mac: Vec::new(),
            parent: issuer.map(|_| String::new()),
        };
        if let Some(issuer) = issuer {
            row.parent = Some(self.find(issuer)?.id);
        }
        row.mac = row.mac(&self.integrity).to_vec();
        let tx = self.begin()?;
        let done = tx.execute(
            &format!("INSERT INTO tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
            params![
                row.id,
                row.name,
                row.hash,
                row.bindings,
                row.created_at,
                row.expires_at,
                row.revoked_at,
                row.last_used,
                row.created_by,
                row.mac,
                row.parent
            ],
        );
        match done {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                return Err(TokenError::Conflict(format!(
                    "a token named {name:?} exists: revoke it first (`host token revoke {name}`) or pick another name"
                )));
            }
            other => other.map_err(self.err("store a token"))?,
        };
        let info = row.info(&self.integrity, created_at, Ok(()));
        self.commit(tx, &audit(&info))?;
        Ok((info, secret))
    }

    fn begin(&self) -> Result<Transaction<'_>, TokenError> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate).map_err(self.err("start a write"))
    }

    /// Appends `rec` to the audit chain in `tx`, then commits both.
    fn commit(&self, tx: Transaction<'_>, rec: &NewRecord) -> Result<(), TokenError> {
        crate::audit::append(&tx, &self.integrity, rec).map_err(self.err("write the audit record"))?;
        tx.commit().map_err(self.err("commit"))
    }

    /// Appends one audit record on its own (a refusal).
    pub fn record(&self, rec: &NewRecord) -> Result<(), TokenError> {
        crate::audit::append_alone(&self.conn, &self.integrity, rec).map_err(self.err("write the audit record"))?;
        Ok(())
    }

    /// Walks the tokens that issued `row`, up to one the root operator
    /// issued: that one's id (who `row` counts as for a second-person
    /// rule), how many tokens issued it, and when the first of them expires;
    /// or why one of them authenticates no one (then neither does `row`).
    fn chain(&self, row: &Row, now: i64) -> Result<(String, usize, Option<i64>), AuthFailure> {
        let mut until = row.expires_at;
        let mut cur_id = row.id.clone();
        let mut parent = row.parent.clone();
        for depth in 0..=MAX_CHAIN {
            let Some(pid) = parent else { return Ok((cur_id, depth, until)) };
            let up = self.rows("id = ?1", [&pid]).ok().and_then(|mut r| r.pop()).ok_or(AuthFailure::IssuerEnded)?;
            if up.refusal(&self.integrity, now).is_some() {
                return Err(AuthFailure::IssuerEnded);
            }
            until = match (until, up.expires_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            cur_id = up.id;
            parent = up.parent;
        }
        Err(AuthFailure::IssuerEnded)
    }

    fn rows(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<Row>, TokenError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM tokens WHERE {filter} ORDER BY created_at, name, id"))
            .map_err(self.err("list tokens"))?;
        let rows = stmt.query_map(args, Row::read).map_err(self.err("list tokens"))?;
        rows.collect::<Result<_, _>>().map_err(self.err("read tokens"))
    }

    /// Every token, oldest first (revoked ones included, marked).
    pub fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let t = now();
        Ok(self.rows("1", [])?.iter().map(|r| self.info(r, t)).collect())
    }

    fn info(&self, row: &Row, now: i64) -> TokenInfo {
        row.info(&self.integrity, now, self.chain(row, now).map(drop))
    }

    fn find(&self, name_or_id: &str) -> Result<Row, TokenError> {
        let mut rows = self.rows("(id = ?1 OR name = ?1) AND revoked_at IS NULL", [name_or_id])?;
        if rows.is_empty() {
            rows = self.rows("id = ?1", [name_or_id])?;
        }
        rows.pop().ok_or_else(|| {
            let shown: String = name_or_id.chars().take(64).collect();
            TokenError::NotFound(format!("no token {shown:?}: see `host token list`"))
        })
    }

    /// One token by name (among those not revoked) or id.
    pub fn get(&self, name_or_id: &str) -> Result<TokenInfo, TokenError> {
        Ok(self.info(&self.find(name_or_id)?, now()))
    }

    /// Revokes a token by name or id: it authenticates no one from now on.
    /// Revoking a revoked token changes nothing (and is still recorded).
    /// The audit record `audit` makes of it (as it was) commits with it.
    pub fn revoke(
        &self,
        name_or_id: &str,
        audit: impl FnOnce(&TokenInfo) -> NewRecord,
    ) -> Result<TokenInfo, TokenError> {
        let tx = self.begin()?;
        let mut row = self.find(name_or_id)?;
        let rec = audit(&self.info(&row, now()));
        if !row.authentic(&self.integrity) {
            // Revoking is always allowed; the new MAC covers the revocation.
            tracing::warn!("token {} fails its integrity check; revoking it anyway", row.id);
        }
        if row.revoked_at.is_none() {
            row.revoked_at = Some(now());
            row.mac = row.mac(&self.integrity).to_vec();
            tx.execute(
                "UPDATE tokens SET revoked_at = ?2, mac = ?3 WHERE id = ?1",
                params![row.id, row.revoked_at, row.mac],
            )
            .map_err(self.err("revoke a token"))?;
        }
        self.commit(tx, &rec)?;
        Ok(self.info(&row, now()))
    }

    /// Who presents `token`, with every role resolved; or why no one.
    pub fn authenticate(&self, token: &TokenSecret) -> Result<(Principal, TokenInfo), AuthFailure> {
        if !token.well_formed() {
            return Err(AuthFailure::Malformed);
        }
        let found = self.rows("hash = ?1", [token.hash()]).map_err(|e| {
            tracing::error!("cannot look up a token: {e}");
            AuthFailure::Unknown
        })?;
        let row = found.into_iter().next().ok_or(AuthFailure::Unknown)?;
        let t = now();
        if let Some(why) = row.refusal(&self.integrity, t) {
            return Err(why);
        }
        let (person, _, _) = self.chain(&row, t)?;
        if row.last_used.is_none_or(|u| t - u >= 60) {
            // Best effort, at most once a minute: never a reason to refuse.
            let _ = self.conn.execute("UPDATE tokens SET last_used = ?2 WHERE id = ?1", params![row.id, t]);
        }
        let info = row.info(&self.integrity, t, Ok(()));
        let mut bindings = Vec::new();
        for b in &info.bindings {
            match self.role(&b.role) {
                Ok(role) => bindings.push((role, b.namespace.clone())),
                // Deny by default: a binding to a role that is gone grants nothing.
                Err(e) => tracing::warn!("token {}: binding {b} ignored: {e}", info.id),
            }
        }
        Ok((
            Principal { id: info.id.clone(), name: info.name.clone(), person: format!("token {person}"), bindings },
            info,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Permission, Role};
    use crate::names::Namespace;

    fn open() -> (tempfile::TempDir, Tokens) {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::open(&dir.path().join("store.db"), IntegrityKey::generate()).unwrap();
        (dir, t)
    }

    /// What the service layer would record; these tests look at tokens.
    fn noted(info: &TokenInfo) -> NewRecord {
        let who = crate::audit::Actor::Cli { user: "root".into() };
        NewRecord::ok(&who, crate::audit::Action::TokenCreate, &Namespace::root(), None).reason(info.name.clone())
    }

    fn dummy() -> TokenInfo {
        TokenInfo {
            id: "tok-0".into(),
            name: "-".into(),
            bindings: vec![],
            created: String::new(),
            expires: None,
            revoked: None,
            last_used: None,
            created_by: String::new(),
            parent: None,
            state: String::new(),
        }
    }

    fn create(
        t: &Tokens,
        name: &str,
        bindings: Vec<Binding>,
        ttl: Option<Duration>,
        by: &str,
        issuer: Option<&str>,
    ) -> Result<(TokenInfo, TokenSecret), TokenError> {
        t.create(name, bindings, ttl, by, issuer, noted)
    }

    fn runner_in(ns: &str) -> Vec<Binding> {
        vec![Binding { role: "runner".into(), namespace: Namespace::new(ns).unwrap() }]
    }

    #[test]
    fn a_token_is_shown_once_stored_as_a_hash_and_authenticates_its_principal() {
        let (dir, t) = open();
        let (info, secret) = create(&t, "ci-bot", runner_in("finance"), None, "root", None).unwrap();
        assert!(secret.expose().starts_with("kh_") && secret.expose().len() == 46, "{secret:?}");
        assert_eq!(format!("{secret:?}"), "kh_***");
        let db = std::fs::read(dir.path().join("store.db")).unwrap();
        let body = &secret.expose().as_bytes()[3..];
        assert!(!db.windows(body.len()).any(|w| w == body), "the token is in the database");
        let (who, _) = t.authenticate(&TokenSecret::presented(secret.expose())).unwrap();
        assert_eq!((who.id.as_str(), who.name.as_str()), (info.id.as_str(), "ci-bot"));
        assert_eq!(who.bindings[0].0.name, "runner");
        let other = TokenSecret::generate();
        assert_eq!(t.authenticate(&other).unwrap_err(), AuthFailure::Unknown);
        assert_eq!(t.authenticate(&TokenSecret::presented("Bearer x")).unwrap_err(), AuthFailure::Malformed);
    }

    #[test]
    fn revoked_expired_and_edited_tokens_authenticate_no_one() {
        let (dir, t) = open();
        let (_, a) = create(&t, "a", runner_in(""), None, "root", None).unwrap();
        let (_, b) = create(&t, "b", runner_in(""), Some(Duration::from_secs(0)), "root", None).unwrap();
        let (c_info, c) = create(&t, "c", runner_in("marketing"), None, "root", None).unwrap();
        t.revoke("a", noted).unwrap();
        assert_eq!(t.authenticate(&a).unwrap_err(), AuthFailure::Revoked);
        assert_eq!(t.authenticate(&b).unwrap_err(), AuthFailure::Expired);
        // An attacker with the database widens c's binding to admin everywhere.
        let conn = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
        let admin =
            serde_json::to_string(&vec![Binding { role: "admin".into(), namespace: Namespace::root() }]).unwrap();
        conn.execute("UPDATE tokens SET bindings = ?1 WHERE id = ?2", params![admin, c_info.id]).unwrap();
        assert_eq!(t.authenticate(&c).unwrap_err(), AuthFailure::Tampered);
        // ... or clears a's revocation.
        conn.execute("UPDATE tokens SET revoked_at = NULL WHERE name = 'a'", []).unwrap();
        assert_eq!(t.authenticate(&a).unwrap_err(), AuthFailure::Tampered);
        let states: Vec<String> = t.list().unwrap().into_iter().map(|i| i.state).collect();
        assert_eq!(states, ["tampered", "expired", "tampered"]);
    }

    #[test]
    fn a_token_whose_issue_cannot_be_recorded_is_not_issued() {
        let (dir, t) = open();
        let conn = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
        create(&t, "kept", runner_in(""), None, "root", None).unwrap();
        // The audit trail cannot be written: the change and its record go together.
        conn.execute_batch("ALTER TABLE audit RENAME TO audit_gone").unwrap();
        let e = create(&t, "ghost", runner_in(""), None, "root", None).unwrap_err();
        assert!(e.to_string().contains("write the audit record"), "{e}");
        assert!(t.revoke("kept", noted).is_err());
        let role = Role { name: "ghost-role".into(), allow: vec![Permission::FlowRead], deny: vec![] };
        assert!(t.define_role(&role, &noted(&dummy())).is_err());
        conn.execute_batch("ALTER TABLE audit_gone RENAME TO audit").unwrap();
        let live: Vec<(String, String)> = t.list().unwrap().into_iter().map(|i| (i.name, i.state)).collect();
        assert_eq!(live, [("kept".to_owned(), "active".to_owned())], "nothing changed without its record");
        assert!(t.role("ghost-role").is_err());
    }

    #[test]
    fn names_are_unique_among_live_tokens_and_roles_must_exist() {
        let (_dir, t) = open();
        create(&t, "bot", runner_in(""), None, "root", None).unwrap();
        assert!(matches!(create(&t, "bot", runner_in(""), None, "root", None), Err(TokenError::Conflict(_))));
        t.revoke("bot", noted).unwrap();
        create(&t, "bot", runner_in(""), None, "root", None).unwrap();
        let bad = vec![Binding { role: "nope".into(), namespace: Namespace::root() }];
        let e = create(&t, "x", bad, None, "root", None).unwrap_err();
        assert!(e.to_string().contains("no role \"nope\""), "{e}");
        assert!(create(&t, "tok-1", runner_in(""), None, "root", None).is_err());
    }

    #[test]
    fn custom_roles_are_authenticated_and_cannot_be_removed_while_bound() {
        let (dir, t) = open();
        let role = Role { name: "rotator".into(), allow: vec![Permission::SecretWrite], deny: vec![] };
        t.define_role(&role, &noted(&dummy())).unwrap();
        let b = vec![Binding { role: "rotator".into(), namespace: Namespace::root() }];
        let (_, tok) = create(&t, "r", b, None, "root", None).unwrap();
        assert!(t.remove_role("rotator", &noted(&dummy())).unwrap_err().to_string().contains("bound to token(s) r"));
        let conn = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
        conn.execute("UPDATE roles SET allow = '[\"secret:write\",\"key:rotate\"]'", []).unwrap();
        let (who, _) = t.authenticate(&tok).unwrap();
        assert!(who.bindings.is_empty(), "an edited role grants nothing");
        assert!(matches!(t.role("rotator"), Err(TokenError::Tampered(_))));
    }

    #[test]
    fn a_custom_role_that_predates_a_built_in_of_its_name_keeps_its_meaning() {
        let (_dir, t) = open();
        // What an older keyhole let an operator define: a custom `builder`.
        let (allow, deny, at) = ("[\"flow:read\"]", "[]", 1_i64);
        let fields = [b"builder".as_slice(), allow.as_bytes(), deny.as_bytes(), &at.to_be_bytes()];
        let mac = t.integrity.mac(MacDomain::RoleRow, &fields).to_vec();
        t.conn
            .execute(
                "INSERT INTO roles (name, allow, deny, created_at, mac) VALUES ('builder', ?1, ?2, ?3, ?4)",
                params![allow, deny, at, mac],
            )
            .unwrap();
        assert_eq!(t.role("builder").unwrap().allow, vec![Permission::FlowRead], "no upgrade widens a token");
        let listed: Vec<Role> = t.roles().unwrap().into_iter().filter(|r| r.name == "builder").collect();
        assert_eq!(listed.len(), 1, "{listed:?}");
        t.remove_role("builder", &noted(&dummy())).unwrap();
        assert!(t.role("builder").unwrap().allow.contains(&Permission::SecretUse), "then the built-in one");
        assert!(t.remove_role("builder", &noted(&dummy())).unwrap_err().to_string().contains("built-in role"));
    }

    #[test]
    fn a_token_lives_no_longer_than_its_issuer_counts_as_its_person_and_ends_with_it() {
        let (_dir, t) = open();
        let (root_info, root) =
            create(&t, "alice", runner_in(""), Some(Duration::from_secs(3600)), "root", None).unwrap();
        assert_eq!(root_info.parent, None);
        let (child_info, child) = create(&t, "alice-bot", runner_in(""), None, "alice", Some(&root_info.id)).unwrap();
        assert_eq!(child_info.parent.as_deref(), Some(root_info.id.as_str()));
        assert_eq!(child_info.expires, root_info.expires, "no TTL asked: its issuer's expiry");
        let (grand_info, grand) =
            create(&t, "alice-bot2", runner_in(""), Some(Duration::from_secs(86_400)), "x", Some(&child_info.id))
                .unwrap();
        assert_eq!(grand_info.expires, root_info.expires, "a longer TTL is cut to the chain's");
        // Every token of the chain is the same person: the one the operator issued.
        for tok in [&root, &child, &grand] {
            assert_eq!(t.authenticate(tok).unwrap().0.person, format!("token {}", root_info.id));
        }
        // Revoking the issuer ends what it issued, down the chain.
        t.revoke(&child_info.id, noted).unwrap();
        assert_eq!(t.authenticate(&grand).unwrap_err(), AuthFailure::IssuerEnded);
        assert!(t.authenticate(&root).is_ok(), "not the other way");
        let states: Vec<(String, String)> = t.list().unwrap().into_iter().map(|i| (i.name, i.state)).collect();
        assert!(states.contains(&("alice-bot2".into(), "ended".into())), "{states:?}");
        let e = create(&t, "more", runner_in(""), None, "x", Some(&grand_info.id)).unwrap_err();
        assert!(e.to_string().contains("the issuing token cannot issue"), "{e}");
        // An edited issuer column authenticates no one.
        t.conn.execute("UPDATE tokens SET parent = NULL WHERE name = 'alice-bot2'", []).unwrap();
        assert_eq!(t.authenticate(&grand).unwrap_err(), AuthFailure::Tampered);
        // Absurd lifetimes are refused at the command line too.
        let e = create(&t, "forever", runner_in(""), Some(Duration::from_secs(100_000 * 86_400)), "root", None)
            .unwrap_err();
        assert!(e.to_string().contains("at most 3650 days"), "{e}");
    }
}
