//! Keeps glibc's `memcpy` off `rep movsb` for mid-sized copies.
//!
//! glibc up to 2.38 copies blocks from 2 KiB upward with `rep movsb` on
//! CPUs that advertise fast string moves. On AMD EPYC (the CI and bench
//! machines) that instruction is slow whenever source and destination are
//! not aligned alike: a 16 KiB copy runs at 1.4-1.9 GB/s instead of about
//! 40 GB/s (measured with a C loop over `memcpy`). Every TLS record is such a
//! copy (rustls moves each decrypted record out of its receive buffer five
//! bytes past an aligned start), so it cost a third of the server's CPU on
//! an encrypted upload. glibc reads its tunables only at start-up, so each
//! binary re-executes itself once with the threshold raised, which makes
//! glibc use its vector loop instead.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

const TUNABLES: &str = "GLIBC_TUNABLES";
const THRESHOLD_NAME: &str = "glibc.cpu.x86_rep_movsb_threshold";
/// Copies up to 16 MiB use vector moves; longer ones are rare here.
const THRESHOLD: &str = "glibc.cpu.x86_rep_movsb_threshold=16777216";

/// Call first thing in `main`: re-executes the binary with the tunable set,
/// unless it is already set (by us or by the user) or this is not x86-64
/// glibc. If the re-exec fails, the process simply goes on as it is.
pub fn apply() {
    if !cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu"
    )) {
        return;
    }
    let current = std::env::var_os(TUNABLES);
    if current
        .as_ref()
        .is_some_and(|v| v.to_string_lossy().contains(THRESHOLD_NAME))
    {
        return;
    }
    let mut args = std::env::args_os();
    let Some(argv0) = args.next() else { return };
    // `exec` only returns when it failed (no /proc, say); then run untuned.
    let _ = Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env(TUNABLES, with_threshold(current))
        .exec();
}

fn with_threshold(current: Option<OsString>) -> OsString {
    match current {
        Some(v) if !v.is_empty() => {
            let mut v = v;
            v.push(":");
            v.push(THRESHOLD);
            v
        }
        _ => OsString::from(THRESHOLD),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_added_after_what_the_user_set() {
        assert_eq!(with_threshold(None), OsString::from(THRESHOLD));
        assert_eq!(
            with_threshold(Some(OsString::new())),
            OsString::from(THRESHOLD)
        );
        assert_eq!(
            with_threshold(Some(OsString::from("glibc.malloc.check=3"))),
            OsString::from(format!("glibc.malloc.check=3:{THRESHOLD}"))
        );
    }
}
