//! A process's identity: its pid and its start time, so that a later
//! process that got the same pid is not mistaken for it. Leases and
//! command-line executions name their owner this way, and a sweep or a
//! queue treats the rows of a process that is gone as abandoned.

/// This process: its pid and its start time in clock ticks since boot.
pub fn this_process() -> String {
    process_id(std::process::id()).unwrap_or_else(|| format!("{}:?", std::process::id()))
}

fn process_id(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its `)`.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.to_owned();
    Some(format!("{pid}:{start}"))
}

/// Whether the process `owner` names is still running.
pub fn alive(owner: &str) -> bool {
    let Some(pid) = owner.split(':').next().and_then(|p| p.parse::<u32>().ok()) else { return false };
    process_id(pid).is_some_and(|now| now == owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owner is a process, told apart from a later one that got
    /// the same pid: a sweep revokes the leases of the dead only.
    #[test]
    fn an_owner_is_alive_while_its_process_runs_and_not_a_reused_pid() {
        let me = this_process();
        let (pid, start) = me.split_once(':').unwrap();
        assert_eq!(pid, std::process::id().to_string());
        assert!(start.parse::<u64>().is_ok(), "start time in clock ticks: {me}");
        assert!(alive(&me), "{me}");
        // The same pid with another start time: a process that came later.
        assert!(!alive(&format!("{pid}:{}", start.parse::<u64>().unwrap() + 1)));
        assert!(!alive(&format!("{pid}:?")), "a process whose start could not be read");
        for gone in ["4294967295:1", "", "x:1", "junk"] {
            assert!(!alive(gone), "{gone:?}");
        }
    }
}
