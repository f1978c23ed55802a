//! The resource limits of one task (memory, time, output): what a flow or
//! `host exec` asks for and the executor enforces. Shared by both, so the
//! flow parser depends on no executor type.

use std::time::Duration;

/// Resource limits for one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of linear memory and table space the task may use, all its
    /// memories and tables together.
    pub memory: usize,
    /// Wall-clock time for instantiation and `run` together.
    pub timeout: Duration,
    /// Plugin stdout + stderr + log bytes shown before output is cut off.
    pub output: usize,
}

impl Default for Limits {
    /// 64 MiB memory, 30 s, 1 MiB of output.
    fn default() -> Self {
        Limits { memory: 64 << 20, timeout: Duration::from_secs(30), output: 1 << 20 }
    }
}

/// Parses a size with a unit: `64MiB`, `512kb`, `1GiB`, `100B`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 64MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1000,
        "kib" => 1 << 10,
        "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "" => return Err(format!("{s:?} needs a unit: B, KiB, MiB, GiB (or kB, MB, GB)")),
        other => return Err(format!("{s:?}: unknown unit {other:?}; use B, KiB, MiB, GiB, kB, MB or GB")),
    };
    let bytes = n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))?;
    usize::try_from(bytes).map_err(|_| format!("{s:?} is too large"))
}

/// Parses a duration: `30s`, `2m`, `500ms`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.trim().parse::<f64>() {
        if secs.is_finite() && secs > 0.0 && secs < 1e9 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("{s:?} is not a positive number of seconds"));
    }
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration like 30s, 500ms or 2m: {e}"))
}
/// The most memory one task may have (`limits.memory`, `--memory`): 1 GiB.
pub const MAX_TASK_MEMORY: usize = 1 << 30;

/// A size as an operator writes one: `64MiB`, `1GiB`, `512KiB` or `100B`
/// (the largest binary unit that divides it).
pub fn show_size(n: usize) -> String {
    match n {
        0 => "0B".into(),
        _ if n.is_multiple_of(1 << 30) => format!("{}GiB", n >> 30),
        _ if n.is_multiple_of(1 << 20) => format!("{}MiB", n >> 20),
        _ if n.is_multiple_of(1 << 10) => format!("{}KiB", n >> 10),
        _ => format!("{n}B"),
    }
}

/// A duration as an operator writes one: `90d`, `12h`, `15m` or `30s`
/// (the largest unit that divides it).
pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_is_shown_in_the_largest_unit_that_divides_it() {
        assert_eq!(show_duration(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(show_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(show_duration(Duration::from_secs(900)), "15m");
        assert_eq!(show_duration(Duration::from_secs(61)), "61s");
        assert_eq!(show_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn a_size_is_shown_in_the_largest_unit_that_divides_it() {
        assert_eq!(show_size(MAX_TASK_MEMORY), "1GiB");
        assert_eq!(show_size(64 << 20), "64MiB");
        assert_eq!(show_size(1536), "1536B");
        assert_eq!(show_size(100), "100B");
    }
}
