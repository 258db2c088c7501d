//! glibc tunables the binaries set for themselves, measured on this
//! project's machines (AMD EPYC, glibc 2.36, transparent huge pages on
//! `madvise`). glibc reads its tunables only at start-up, so a binary that
//! wants one re-executes itself once with `GLIBC_TUNABLES` extended; a
//! tunable the user set already is left as it is.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

const VARIABLE: &str = "GLIBC_TUNABLES";

/// Keeps `memcpy` off `rep movsb` for copies up to 16 MiB. glibc up to
/// 2.38 copies blocks from 2 KiB upward with `rep movsb` on CPUs that
/// advertise fast string moves; on AMD EPYC that instruction is slow
/// whenever source and destination are not aligned alike: a 16 KiB copy
/// ran at 1.4-1.9 GB/s instead of about 40 GB/s (a C loop over `memcpy`).
/// Every TLS record is such a copy (rustls moves each decrypted record out
/// of its receive buffer five bytes past an aligned start), so it cost a
/// third of the server's CPU on an encrypted upload.
pub const MEMCPY_VECTOR: &str = "glibc.cpu.x86_rep_movsb_threshold=16777216";

/// Keeps up to 4 MiB free at the top of the heap before `malloc` gives
/// memory back to the kernel (glibc starts at 128 KiB and raises it only
/// once a large block is freed). A TLS download's sealed records, up to
/// 1 MiB of them, are freed together after each socket write; below the
/// threshold the heap shrank and grew around every write, and page faults
/// made the first 1 GiB gets after start cost the server 1.03-1.08 s of
/// CPU each instead of 0.51-0.54 s. Only for the server.
pub const MALLOC_TRIM_THRESHOLD: &str = "glibc.malloc.trim_threshold=4194304";

/// Lets `malloc` ask for transparent huge pages for its large blocks. The
/// login's scrypt needs 32 MiB at once; faulting that in 4 KiB pages took
/// a third of `ftpc pwd`'s time (0.12 s, 0.08 s with huge pages). Only for
/// the client: the server's many small buffers gain nothing from it.
pub const MALLOC_HUGE_PAGES: &str = "glibc.malloc.hugetlb=1";

/// Call first thing in `main`: re-executes the binary with the `wanted`
/// tunables added, unless each is set already or this is not x86-64 glibc.
/// If the re-exec fails, the process simply goes on as it is.
///
/// Running through `/proc/self/exe` would leave the process named "exe"
/// (what `ps`, `top` and `pkill ftpd` go by), so the re-executed process
/// takes back its binary's name.
pub fn apply(wanted: &[&str]) {
    if !cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu"
    )) {
        return;
    }
    let current = std::env::var_os(VARIABLE);
    let Some(value) = with_tunables(current.as_ref(), wanted) else {
        restore_name();
        return;
    };
    let mut args = std::env::args_os();
    let Some(argv0) = args.next() else { return };
    // `exec` only returns when it failed (no /proc, say); then run untuned.
    let _ = Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env(VARIABLE, value)
        .exec();
}

/// Names the process after its binary, as a plain `exec` of it would.
fn restore_name() {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let Some(name) = exe.file_name() else { return };
    // The kernel keeps 15 bytes of a name; so does `exec`.
    let bytes: Vec<u8> = name.as_encoded_bytes().iter().copied().take(15).collect();
    if let Ok(name) = std::ffi::CString::new(bytes) {
        let _ = rustix::thread::set_name(&name);
    }
}

/// `current` with the `wanted` tunables whose names it lacks appended, or
/// `None` when it lacks none.
fn with_tunables(current: Option<&OsString>, wanted: &[&str]) -> Option<OsString> {
    let text = current
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|t| {
            let name = t.split('=').next().unwrap_or(t);
            !text
                .split(':')
                .any(|set| set.split('=').next() == Some(name))
        })
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut value = current.cloned().unwrap_or_default();
    for t in missing {
        if !value.is_empty() {
            value.push(":");
        }
        value.push(t);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tunables_are_added_after_what_the_user_set() {
        let both = [MEMCPY_VECTOR, MALLOC_HUGE_PAGES];
        assert_eq!(
            with_tunables(None, &both),
            Some(OsString::from(format!(
                "{MEMCPY_VECTOR}:{MALLOC_HUGE_PAGES}"
            )))
        );
        let user = OsString::from("glibc.malloc.check=3");
        assert_eq!(
            with_tunables(Some(&user), &[MEMCPY_VECTOR]),
            Some(OsString::from(format!(
                "glibc.malloc.check=3:{MEMCPY_VECTOR}"
            )))
        );
        // The user's own threshold wins, and then nothing is re-executed.
        let own = OsString::from("glibc.cpu.x86_rep_movsb_threshold=4096");
        assert_eq!(with_tunables(Some(&own), &[MEMCPY_VECTOR]), None);
        assert_eq!(
            with_tunables(Some(&own), &both),
            Some(OsString::from(format!(
                "{}:{MALLOC_HUGE_PAGES}",
                own.to_string_lossy()
            )))
        );
        assert_eq!(with_tunables(Some(&OsString::new()), &[]), None);
    }
}
