//! Triggers: what starts a deployed flow on a server without anyone typing.
//! A flow's `triggers:` are parsed and checked here (cron patterns, time
//! zones, webhook authentication); the firing times of a schedule and the
//! verification of a webhook request are decided here too, as pure
//! functions, so the server only wires them to its clock and its routes.
//!
//! Invariants: a webhook's key or signing secret is compared by the host in
//! constant time and is never granted to a task of the same flow (the flow
//! is refused); what a trigger hands to the flow (`{{ trigger.* }}`) is the
//! request's body and the headers the flow chose, nothing else.

use crate::names::{SecretName, TaskId};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Largest webhook body a flow may accept (`max_body`).
pub const MAX_WEBHOOK_BODY: usize = 1 << 20;
/// The webhook body limit when the flow names none.
pub const DEFAULT_WEBHOOK_BODY: usize = 256 << 10;
/// Most missed firings one schedule queues when it recovers with `all`.
pub const MAX_RECOVERED: usize = 100;

/// One trigger as written.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerDoc {
    /// Trigger id, unique in the flow; a signed webhook's URL ends with it.
    pub id: String,
    /// Start the flow on a cron schedule.
    #[serde(default)]
    pub schedule: Option<ScheduleDoc>,
    /// Start the flow from an HTTP POST.
    #[serde(default)]
    pub webhook: Option<WebhookDoc>,
    /// What the trigger is for.
    #[serde(default)]
    pub description: Option<String>,
}

/// `schedule: {cron, timezone, recover}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDoc {
    /// Cron pattern: `minute hour day-of-month month day-of-week`, with an
    /// optional leading seconds field (`*/5 * * * * *`).
    pub cron: String,
    /// IANA time zone the pattern is read in (default UTC): `Europe/Paris`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// What to do with the firings missed while the server was down.
    #[serde(default)]
    pub recover: Recover,
}

/// What a schedule does with the firings missed while the server was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Recover {
    /// Skip them (the default).
    #[default]
    None,
    /// Run once, for the latest of them.
    Last,
    /// Run each of them, oldest first (at most 100).
    All,
}

/// `webhook: {key_secret}` or `webhook: {signature: {...}}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDoc {
    /// A secret whose value is the last segment of the webhook's URL.
    #[serde(default)]
    pub key_secret: Option<String>,
    /// Verify a signature of the body instead (GitHub's style).
    #[serde(default)]
    pub signature: Option<SignatureDoc>,
    /// Request headers the flow may read as `{{ trigger.headers.NAME }}`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Largest body accepted, with a unit (default 256KiB, at most 1MiB).
    #[serde(default)]
    pub max_body: Option<String>,
}

/// `signature: {header, secret, scheme}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureDoc {
    /// The header holding the signature: `X-Hub-Signature-256`.
    pub header: String,
    /// The secret the sender signs with.
    pub secret: String,
    /// How the signature is made; `hmac-sha256` (`sha256=HEX` over the raw body).
    #[serde(default)]
    pub scheme: Scheme,
}

/// Signature schemes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Scheme {
    /// HMAC-SHA256 of the raw body, sent as `sha256=HEX` (or bare hex).
    #[default]
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
}

/// A checked trigger.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// Its id.
    pub id: TaskId,
    /// What fires it.
    pub kind: TriggerKind,
}

/// What fires a trigger.
#[derive(Debug, Clone)]
pub enum TriggerKind {
    /// A cron schedule (boxed: a parsed pattern is a few hundred bytes).
    Schedule(Box<Schedule>),
    /// An HTTP POST.
    Webhook(Webhook),
}

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    /// The pattern as written.
    pub pattern: String,
    tz: TimeZone,
    /// The time zone's name.
    pub timezone: String,
    /// What to do with missed firings.
    pub recover: Recover,
}

/// A checked webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// How a request proves it may start the flow.
    pub auth: WebhookAuth,
    /// Headers handed to the flow, as written.
    pub headers: Vec<String>,
    /// Largest body accepted.
    pub max_body: usize,
}

/// How a webhook request authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookAuth {
    /// The URL's last segment equals this secret's value.
    Key(SecretName),
    /// The body's HMAC-SHA256 under this secret is in `header`.
    Signature {
        /// The header, as written.
        header: String,
        /// The signing secret.
        secret: SecretName,
    },
}

impl Webhook {
    /// The secret this webhook authenticates with.
    pub fn secret(&self) -> &SecretName {
        match &self.auth {
            WebhookAuth::Key(s) | WebhookAuth::Signature { secret: s, .. } => s,
        }
    }
}

/// Checks the triggers as written; each error is `(where, what)`.
pub fn check(docs: &[TriggerDoc]) -> (Vec<Trigger>, Vec<(String, String)>) {
    let mut errors = Vec::new();
    let mut out: Vec<Trigger> = Vec::new();
    for d in docs {
        let at = format!("trigger {}", d.id);
        let mut error = |m: String| errors.push((at.clone(), m));
        let id = match TaskId::new(&d.id) {
            Ok(id) => Some(id),
            Err(e) => {
                error(e.to_string());
                None
            }
        };
        if out.iter().any(|t| t.id.as_str() == d.id) {
            error("duplicate trigger id: trigger ids must be unique in a flow".into());
        }
        let kind = match (&d.schedule, &d.webhook) {
            (Some(s), None) => schedule(s).map(|s| TriggerKind::Schedule(Box::new(s))),
            (None, Some(w)) => webhook(w).map(TriggerKind::Webhook),
            _ => Err("a trigger is either `schedule: {cron: ...}` or `webhook: {...}`, exactly one".into()),
        };
        match (id, kind) {
            (Some(id), Ok(kind)) => out.push(Trigger { id, kind }),
            (_, Err(e)) => error(e),
            _ => {}
        }
    }
    (out, errors)
}

fn schedule(s: &ScheduleDoc) -> Result<Schedule, String> {
    let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
    let cron = parser.parse(&s.cron).map_err(|e| {
        format!(
            "schedule.cron {:?}: {e}; write `minute hour day-of-month month day-of-week`, e.g. \"0 2 * * *\"",
            s.cron
        )
    })?;
    let timezone = s.timezone.clone().unwrap_or_else(|| "UTC".into());
    let tz = TimeZone::get(&timezone).map_err(|_| {
        format!(
            "schedule.timezone {timezone:?} is not a time zone this machine knows: use an IANA name like Europe/Paris"
        )
    })?;
    // A pattern that never fires (30 February) is a mistake, not a schedule.
    let now = Timestamp::now().to_zoned(tz.clone());
    cron.find_next_occurrence(&now, false).map_err(|e| format!("schedule.cron {:?} never fires: {e}", s.cron))?;
    Ok(Schedule { cron, pattern: s.cron.clone(), tz, timezone, recover: s.recover })
}

fn webhook(w: &WebhookDoc) -> Result<Webhook, String> {
    let auth = match (&w.key_secret, &w.signature) {
        (Some(k), None) => WebhookAuth::Key(SecretName::new(k).map_err(|e| format!("webhook.key_secret: {e}"))?),
        (None, Some(s)) => {
            axum::http::HeaderName::from_bytes(s.header.as_bytes())
                .map_err(|_| format!("webhook.signature.header {:?} is not a header name", s.header))?;
            let secret = SecretName::new(&s.secret).map_err(|e| format!("webhook.signature.secret: {e}"))?;
            WebhookAuth::Signature { header: s.header.clone(), secret }
        }
        _ => return Err("a webhook authenticates with `key_secret: NAME` or `signature: {...}`, exactly one".into()),
    };
    for h in &w.headers {
        axum::http::HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| format!("webhook.headers: {h:?} is not a header name"))?;
    }
    let max_body = match &w.max_body {
        Some(s) => crate::limits::parse_size(s).map_err(|e| format!("webhook.max_body: {e}"))?,
        None => DEFAULT_WEBHOOK_BODY,
    };
    if max_body > MAX_WEBHOOK_BODY {
        return Err(format!("webhook.max_body is at most 1MiB, not {max_body} bytes"));
    }
    Ok(Webhook { auth, headers: w.headers.clone(), max_body })
}

/// What one pass of the scheduler should queue for a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The firing times to queue, oldest first.
    pub fire: Vec<Timestamp>,
    /// Missed firings skipped (by `recover: none|last`, or past the cap).
    pub skipped: usize,
    /// The latest firing time considered: the next pass starts after it.
    pub last: Option<Timestamp>,
}

impl Schedule {
    /// The time zone the pattern is read in.
    pub fn time_zone(&self) -> TimeZone {
        self.tz.clone()
    }

    /// The first firing strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let z = t.to_zoned(self.tz.clone());
        self.cron.find_next_occurrence(&z, false).ok().map(|z| z.timestamp())
    }

    /// The last firing strictly before `t`.
    fn previous_before(&self, t: Timestamp) -> Option<Timestamp> {
        let z = t.to_zoned(self.tz.clone());
        self.cron.find_previous_occurrence(&z, false).ok().map(|z| z.timestamp())
    }

    /// The firings in `(last, now]`: those at or after `up_since` (when
    /// this server started) are due; earlier ones were missed while it was
    /// down and are queued as `recover` says. However long the server was
    /// down, a pass does bounded work.
    pub fn due(&self, last: Timestamp, now: Timestamp, up_since: Timestamp) -> Due {
        let mut due = Due { fire: Vec::new(), skipped: 0, last: None };
        let mut t = last;
        // Firings fall on whole seconds; the server came up within one.
        if let Some(prev) = self.previous_before(ceil_second(up_since.min(now))).filter(|p| *p > last) {
            // Missed: (last, prev].
            let missed = self.between(last, prev, MAX_SCAN);
            match self.recover {
                Recover::None => due.skipped = missed.len(),
                Recover::Last => {
                    due.skipped = missed.len().saturating_sub(1);
                    due.fire.push(prev);
                }
                Recover::All => {
                    let take = missed.len().min(MAX_RECOVERED);
                    due.skipped = missed.len() - take;
                    due.fire.extend_from_slice(&missed[..take]);
                }
            }
            t = prev;
        }
        due.fire.extend(self.between(t, now, MAX_RECOVERED));
        // The next pass starts after the latest firing up to now, even
        // when more were due than one pass queues.
        let z = floor_second(now).to_zoned(self.tz.clone());
        let latest = self.cron.find_previous_occurrence(&z, true).ok().map(|z| z.timestamp());
        due.last = latest.filter(|l| *l > last);
        due
    }

    /// The first `cap` firings in `(after, until]`.
    fn between(&self, after: Timestamp, until: Timestamp, cap: usize) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < cap {
            match self.next_after(t).filter(|n| *n <= until) {
                Some(n) => {
                    out.push(n);
                    t = n;
                }
                None => break,
            }
        }
        out
    }
}

fn floor_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

fn ceil_second(t: Timestamp) -> Timestamp {
    if t.subsec_nanosecond() == 0 { t } else { Timestamp::from_second(t.as_second() + 1).unwrap_or(t) }
}

/// Most firings one pass looks at: a per-second schedule down for a day
/// is not walked second by second.
const MAX_SCAN: usize = 10_000;

/// What `{{ trigger }}` holds: `{"type": kind, "id": id}` plus `extra`
/// (a webhook's body and headers, a schedule's date).
pub fn context(kind: &str, id: Option<&str>, extra: Map<String, Value>) -> Value {
    let mut v = json!({ "type": kind });
    if let Some(id) = id {
        v["id"] = json!(id);
    }
    if let Value::Object(m) = &mut v {
        m.extend(extra);
    }
    v
}

/// Whether `key` (the URL's last segment) is this key-webhook's secret
/// value; constant time in the contents of both.
pub fn key_matches(key: &str, secret: &[u8]) -> bool {
    crate::crypto::constant_time_eq(key.as_bytes(), secret)
}

/// Checks a GitHub-style `sha256=HEX` signature of `body` under `secret`.
pub fn signature_matches(header_value: Option<&str>, body: &[u8], secret: &[u8]) -> Result<(), String> {
    let v = header_value.ok_or("the signature header is missing")?;
    let hex_sig = v.trim().strip_prefix("sha256=").unwrap_or(v.trim());
    let tag = hex::decode(hex_sig).map_err(|_| "the signature is not `sha256=` and hex")?;
    if crate::crypto::verify_hmac_sha256(secret, body, &tag) {
        Ok(())
    } else {
        Err("the signature does not match the body".into())
    }
}

/// The body as the flow sees it: JSON if it parses as JSON, else text.
pub fn body_value(body: &[u8]) -> Result<Value, String> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    std::str::from_utf8(body)
        .map(|s| Value::String(s.to_owned()))
        .map_err(|_| "the body is neither JSON nor UTF-8 text".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(cron: &str, tz: &str, recover: Recover) -> Schedule {
        schedule(&ScheduleDoc { cron: cron.into(), timezone: Some(tz.into()), recover }).unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_schedule_fires_in_its_time_zone() {
        // 02:00 in Paris is 01:00 UTC in winter and 00:00 UTC in summer.
        let s = sched("0 2 * * *", "Europe/Paris", Recover::None);
        assert_eq!(s.next_after(ts("2026-12-04T12:00:00Z")), Some(ts("2026-12-05T01:00:00Z")));
        assert_eq!(s.next_after(ts("2026-07-04T12:00:00Z")), Some(ts("2026-07-05T00:00:00Z")));
        let every5 = sched("*/5 * * * * *", "UTC", Recover::None);
        assert_eq!(every5.next_after(ts("2026-12-04T12:00:03Z")), Some(ts("2026-12-04T12:00:05Z")));
    }

    #[test]
    fn missed_firings_follow_recover() {
        let last = ts("2026-12-04T00:00:00Z");
        let up = ts("2026-12-04T05:30:00Z");
        let now = ts("2026-12-04T06:00:00Z");
        let hourly = |r| sched("0 * * * *", "UTC", r);
        // Missed: 01..05 (five); on time: 06:00.
        let d = hourly(Recover::None).due(last, now, up);
        assert_eq!((d.fire, d.skipped), (vec![ts("2026-12-04T06:00:00Z")], 5));
        let d = hourly(Recover::Last).due(last, now, up);
        assert_eq!((d.fire, d.skipped), (vec![ts("2026-12-04T05:00:00Z"), ts("2026-12-04T06:00:00Z")], 4));
        let d = hourly(Recover::All).due(last, now, up);
        assert_eq!(d.fire.len(), 6);
        assert_eq!(d.skipped, 0);
        assert_eq!(d.last, Some(now));
        // A server that came up half a second after a firing missed it.
        let d = hourly(Recover::None).due(last, ts("2026-12-04T06:00:00.5Z"), ts("2026-12-04T06:00:00.5Z"));
        assert_eq!((d.fire.len(), d.skipped), (0, 6));
        let d = hourly(Recover::None).due(last, ts("2026-12-04T06:00:00.5Z"), ts("2026-12-04T05:59:59.5Z"));
        assert_eq!((d.fire, d.skipped), (vec![ts("2026-12-04T06:00:00Z")], 5));
        // The last firing queued is also the last one before the server
        // came up: nothing was missed, and nothing is queued twice.
        let d = hourly(Recover::Last).due(ts("2026-12-04T05:00:00Z"), now, up);
        assert_eq!((d.fire, d.skipped), (vec![now], 0));
        // Nothing due: the pass changes nothing.
        let d = hourly(Recover::All).due(now, ts("2026-12-04T06:30:00Z"), up);
        assert_eq!(d, Due { fire: vec![], skipped: 0, last: None });
    }

    #[test]
    fn recovering_all_is_capped() {
        let s = sched("* * * * * *", "UTC", Recover::All);
        let d = s.due(ts("2026-12-04T00:00:00Z"), ts("2026-12-04T01:00:00Z"), ts("2026-12-04T01:00:00Z"));
        assert_eq!(d.fire.len(), MAX_RECOVERED + 1);
        assert_eq!(d.skipped, 3599 - MAX_RECOVERED);
        // Up all along but an hour without a pass (a stalled machine): one
        // pass queues at most MAX_RECOVERED, and the next starts after now.
        let d = s.due(ts("2026-12-04T00:00:00Z"), ts("2026-12-04T01:00:00Z"), ts("2026-12-03T00:00:00Z"));
        assert_eq!((d.fire.len(), d.skipped, d.last), (MAX_RECOVERED, 0, Some(ts("2026-12-04T01:00:00Z"))));
    }

    #[test]
    fn bad_triggers_say_what_is_wrong() {
        let doc = |y: &str| serde_yaml_ng::from_str::<Vec<TriggerDoc>>(y).unwrap();
        let (_, e) = check(&doc("- {id: a, schedule: {cron: '61 * * * *'}}"));
        assert!(e[0].1.contains("schedule.cron \"61 * * * *\""), "{e:?}");
        let (_, e) = check(&doc("- {id: a, schedule: {cron: '0 2 * * *', timezone: Mars/Olympus}}"));
        assert!(e[0].1.contains("IANA name"), "{e:?}");
        let (_, e) = check(&doc("- {id: a, schedule: {cron: '0 0 30 2 *'}}"));
        assert!(e[0].1.contains("never fires"), "{e:?}");
        let (_, e) = check(&doc("- {id: a, webhook: {}}"));
        assert!(e[0].1.contains("exactly one"), "{e:?}");
        let (_, e) = check(&doc("- {id: a, webhook: {key_secret: K, max_body: 2MiB}}"));
        assert!(e[0].1.contains("at most 1MiB"), "{e:?}");
        let (_, e) = check(&doc("- {id: a, webhook: {key_secret: K, max_body: 1MiB}}"));
        assert!(e.is_empty(), "the limit itself is allowed: {e:?}");
        let (_, e) = check(&doc("- {id: a, webhook: {key_secret: K}}\n- {id: a, webhook: {key_secret: L}}"));
        assert!(e[0].1.contains("duplicate trigger id"), "{e:?}");
        let (t, e) = check(&doc("- {id: gh, webhook: {signature: {header: X-Hub-Signature-256, secret: GH}}}"));
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(t[0].id.as_str(), "gh");
    }

    #[test]
    fn signatures_are_checked_over_the_raw_body() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        // GitHub's documented example.
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(signature_matches(Some(good), body, secret), Ok(()));
        assert!(signature_matches(Some(good), b"Hello, World?", secret).is_err());
        assert!(signature_matches(None, body, secret).unwrap_err().contains("missing"));
        assert!(signature_matches(Some("sha256=zz"), body, secret).unwrap_err().contains("hex"));
        assert!(key_matches("k3y", b"k3y") && !key_matches("k3y", b"k3z") && !key_matches("k3", b"k3y"));
    }
}
