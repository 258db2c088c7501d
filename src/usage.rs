//! How many bytes a user's home holds, for quotas.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Total apparent size (file lengths, not blocks) of the regular files under
/// `dir`, at any depth, hidden ones included (unfinished uploads live in
/// `.ftpd-partial/` and count against the quota).
///
/// Symlinks under `dir` are never followed or counted, so a link to a big
/// file elsewhere costs nothing and a link loop cannot trap the walk; `dir`
/// itself is opened as given. Entries that disappear during the walk (a
/// user deleting files meanwhile) are skipped. Other errors, such as an
/// unreadable folder, fail the walk and name the path.
///
/// Walks with an explicit stack, so a deep tree cannot exhaust the thread's
/// stack.
pub fn disk_usage(dir: &Path) -> io::Result<u64> {
    let mut total: u64 = 0;
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            // `dir` itself missing is the caller's business, not "0 bytes".
            Err(e) if e.kind() == io::ErrorKind::NotFound && path != dir => continue,
            Err(e) => return Err(with_path(e, &path)),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(with_path(e, &path)),
            };
            // DirEntry::file_type does not follow symlinks.
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(with_path(e, &entry.path())),
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                // Nor does DirEntry::metadata on Unix (it is an lstat).
                match entry.metadata() {
                    Ok(meta) => total = total.saturating_add(meta.len()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(with_path(e, &entry.path())),
                }
            }
        }
    }
    Ok(total)
}

/// Adds the path to an error, keeping its kind for callers that match on it.
fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, len: usize) {
        fs::write(path, vec![b'x'; len]).unwrap();
    }

    #[test]
    fn counts_regular_files_recursively_including_hidden() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        write(&h.join("a"), 10);
        fs::create_dir_all(h.join("d/e/f")).unwrap();
        write(&h.join("d/b"), 20);
        write(&h.join("d/e/f/c"), 30);
        fs::create_dir(h.join(".ftpd-partial")).unwrap();
        write(&h.join(".ftpd-partial/upload"), 40);
        write(&h.join(".hidden"), 1);
        fs::create_dir(h.join("empty")).unwrap();
        assert_eq!(disk_usage(h).unwrap(), 101);
    }

    #[test]
    fn symlinks_are_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        write(&outside.path().join("big"), 1 << 20);
        fs::create_dir(outside.path().join("dir")).unwrap();
        write(&outside.path().join("dir/big2"), 1 << 20);

        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        write(&h.join("mine"), 5);
        symlink(outside.path().join("big"), h.join("link")).unwrap();
        symlink(outside.path().join("dir"), h.join("dirlink")).unwrap();
        symlink(h, h.join("loop")).unwrap();
        symlink(h.join("missing"), h.join("dangling")).unwrap();
        assert_eq!(disk_usage(h).unwrap(), 5);
    }

    #[test]
    fn missing_top_folder_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let err = disk_usage(&tmp.path().join("nope")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn deep_tree_does_not_recurse() {
        let tmp = tempfile::tempdir().unwrap();
        let mut path = tmp.path().to_path_buf();
        for _ in 0..200 {
            path.push("d");
        }
        fs::create_dir_all(&path).unwrap();
        write(&path.join("f"), 7);
        assert_eq!(disk_usage(tmp.path()).unwrap(), 7);
    }
}
