//! Figures about a process from `/proc`: memory, CPU time, limits.

use std::fs;
use std::io;

/// Units of `utime` and `stime` in `/proc/PID/stat`. Linux reports them
/// in `USER_HZ`, which is 100 on every architecture it exports to user
/// space (the kernel converts from its internal `HZ`), so no `sysconf`
/// call is needed.
pub const TICKS_PER_SEC: u64 = 100;

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Mem {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most resident since start (or since the last reset).
    pub hwm_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` from `/proc/PID/status`.
pub fn mem(pid: u32) -> io::Result<Mem> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no {name} in /proc/{pid}/status")))
    };
    Ok(Mem {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// Resets a process's `VmHWM` to its current RSS (`clear_refs` value 5),
/// so the peak covers only what follows. Needs to own the process.
pub fn reset_hwm(pid: u32) -> io::Result<()> {
    fs::write(format!("/proc/{pid}/clear_refs"), b"5")
}

/// User plus system CPU time of a process (all its threads), in ticks of
/// [`TICKS_PER_SEC`]; `None` means this process.
pub fn cpu_ticks(pid: Option<u32>) -> io::Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = fs::read_to_string(&path)?;
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after its closing parenthesis start with field 3, the state,
    // so utime and stime (fields 14 and 15) are the 12th and 13th.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| io::Error::other(format!("unexpected {path}")))?;
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || -> io::Result<u64> {
        fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other(format!("unexpected {path}")))
    };
    Ok(next()? + next()?)
}

/// The soft open-files limit of a process, from `/proc/PID/limits`.
pub fn open_files_limit(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How many local ports `connect` may pick from, per destination.
pub fn ephemeral_ports() -> Option<u64> {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<u64>().ok());
    let (low, high) = (it.next()??, it.next()??);
    Some(high.saturating_sub(low) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let m = mem(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
        cpu_ticks(None).unwrap();
        assert!(open_files_limit(std::process::id()).is_some());
    }
}
