//! The CRC32 of a published file, remembered next to it, so that a rerun
//! of `put -r` can tell an identical file without reading it.
//!
//! The CRC32 is kept in the extended attribute [`CRC_XATTR`], stamped with
//! the file's size, modification time (in nanoseconds) and inode number
//! when it was computed. A stamp that no longer matches the file (it was
//! changed, touched, or replaced by a copy) is ignored and the CRC32
//! computed again by reading the file. A filesystem without user extended
//! attributes simply never has a stamp: every check then reads the file.
//!
//! Only uploads write stamps, after the data was verified against the
//! client's CRC32; nothing a client sends is stored as a CRC32 unchecked.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crc32fast::Hasher;
use rustix::fs::{Stat, XattrFlags};

/// The extended attribute holding a file's CRC32 and its stamp.
pub const CRC_XATTR: &str = "user.ftpd.crc32";

/// crc32, size, mtime in nanoseconds, inode: 4 + 8 + 8 + 8 bytes.
const STAMP_LEN: usize = 28;

/// Bytes read per call while hashing a small file inline.
const READ_PIECE: usize = 64 * 1024;

/// The modification time in `st`, in nanoseconds since the Unix epoch.
pub fn mtime_ns(st: &Stat) -> i64 {
    // `st_mtime` is `i64` or `c_long`, `st_mtime_nsec` may be unsigned,
    // depending on the target.
    #[allow(clippy::unnecessary_cast)]
    let (secs, nanos) = (st.st_mtime as i64, st.st_mtime_nsec as i64);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

fn stamp_bytes(crc: u32, st: &Stat) -> [u8; STAMP_LEN] {
    let mut out = [0u8; STAMP_LEN];
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out[4..12].copy_from_slice(&u64::try_from(st.st_size).unwrap_or(0).to_le_bytes());
    out[12..20].copy_from_slice(&mtime_ns(st).to_le_bytes());
    #[allow(clippy::unnecessary_cast)]
    out[20..28].copy_from_slice(&(st.st_ino as u64).to_le_bytes());
    out
}

/// The remembered CRC32 of `file`, if its stamp matches `st` (the file's
/// `fstat` now).
pub fn read_stamp(file: &File, st: &Stat) -> Option<u32> {
    let mut buf = [0u8; STAMP_LEN];
    let n = rustix::fs::fgetxattr(file, CRC_XATTR, &mut buf).ok()?;
    if n != STAMP_LEN {
        return None;
    }
    let expected = stamp_bytes(0, st);
    if buf[4..] != expected[4..] {
        return None;
    }
    let crc: [u8; 4] = buf[..4].try_into().ok()?;
    Some(u32::from_le_bytes(crc))
}

/// Remembers that `file` has CRC32 `crc`, stamped with its state now.
/// Best effort: a filesystem without extended attributes (or a full one)
/// only costs a recomputation later.
pub fn write_stamp(file: &File, crc: u32) {
    if let Ok(st) = rustix::fs::fstat(file) {
        let _ = rustix::fs::fsetxattr(file, CRC_XATTR, &stamp_bytes(crc, &st), XattrFlags::empty());
    }
}

/// Like [`write_stamp`], but only if the file is still as `before` (its
/// `fstat` when the CRC32 was begun), so a file changed while it was
/// being hashed is not stamped with a CRC32 of neither version.
pub fn write_stamp_if_unchanged(file: &File, crc: u32, before: &Stat) {
    if let Ok(now) = rustix::fs::fstat(file)
        && stamp_bytes(0, &now)[4..] == stamp_bytes(0, before)[4..]
    {
        let _ = rustix::fs::fsetxattr(
            file,
            CRC_XATTR,
            &stamp_bytes(crc, &now),
            XattrFlags::empty(),
        );
    }
}

/// The CRC32 of `file` (of `len` bytes), from its stamp or, when the stamp
/// is missing or stale, by reading it (and stamping it afresh). For small
/// files only: it reads the whole file in one go.
pub fn crc_of_small(file: &File, st: &Stat) -> io::Result<u32> {
    if let Some(crc) = read_stamp(file, st) {
        return Ok(crc);
    }
    let len = u64::try_from(st.st_size).unwrap_or(0);
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; READ_PIECE.min(usize::try_from(len).unwrap_or(READ_PIECE))];
    let mut pos = 0u64;
    while pos < len {
        let want = usize::try_from((len - pos).min(buf.len() as u64)).unwrap_or(0);
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"));
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    let crc = hasher.finalize();
    write_stamp_if_unchanged(file, crc, st);
    Ok(crc)
}

/// A wire modification time (nanoseconds since the epoch) as a
/// `SystemTime`; `None` if it does not fit.
pub fn system_time(ns: i64) -> Option<SystemTime> {
    let (secs, nanos) = (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
    let nanos = u32::try_from(nanos).ok()?;
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(u64::try_from(secs).ok()?, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

/// Sets `file`'s modification time to `ns` (nanoseconds since the epoch);
/// a time the system cannot represent is left alone.
pub fn set_mtime(file: &File, ns: i64) -> io::Result<()> {
    match system_time(ns) {
        Some(t) => file.set_modified(t),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fstat(f: &File) -> Stat {
        rustix::fs::fstat(f).unwrap()
    }

    #[test]
    fn a_stale_stamp_is_recomputed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.write_all(b"hello").unwrap();
        let want = crc32fast::hash(b"hello");
        write_stamp(&f, want);
        if read_stamp(&f, &fstat(&f)).is_none() {
            eprintln!("skipped: no user extended attributes on this filesystem");
            assert_eq!(crc_of_small(&f, &fstat(&f)).unwrap(), want);
            return;
        }
        assert_eq!(crc_of_small(&f, &fstat(&f)).unwrap(), want);
        // Changed in place with the same size: the new mtime makes the
        // stamp stale, and the CRC32 is computed again.
        f.write_all_at(b"jello", 0).unwrap();
        set_mtime(&f, 1_000_000_000).unwrap();
        let st = fstat(&f);
        assert_eq!(
            read_stamp(&f, &st),
            None,
            "a stamp of another mtime was trusted"
        );
        assert_eq!(crc_of_small(&f, &st).unwrap(), crc32fast::hash(b"jello"));
        // Recomputing stamped it afresh.
        assert_eq!(read_stamp(&f, &fstat(&f)), Some(crc32fast::hash(b"jello")));
    }

    #[test]
    fn times_before_and_after_the_epoch() {
        assert_eq!(system_time(0), Some(UNIX_EPOCH));
        assert_eq!(
            system_time(-1),
            UNIX_EPOCH.checked_sub(Duration::from_nanos(1))
        );
        assert_eq!(
            system_time(1_500_000_000_123),
            UNIX_EPOCH.checked_add(Duration::new(1500, 123))
        );
    }
}
