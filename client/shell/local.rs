//! The shell's local side: `lcd`, `lpwd`, `lls`, `lmkdir`, and the local
//! paths of put and get, globs included, taken relative to the `lcd` folder.
//!
//! The process's working directory never changes: a local path typed in the
//! shell is joined to the `lcd` folder explicitly. That keeps the process
//! state out of it (the history file, the password file and every path
//! given at start keep their meaning), and the completer, the globs and the
//! commands all read the folder from one place.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ftpd::proto::{Entry, EntryKind, MAX_LIST_ENTRIES};

use crate::display::{self, ListOptions};

/// Most local files one glob may expand to: a typo such as `put /*/*/*`
/// should fail, not queue a million uploads.
const MAX_GLOB_MATCHES: usize = 10_000;

/// The local folder of the shell.
#[derive(Debug, Default)]
pub struct LocalDir {
    /// Set by `lcd` (absolute); `None` until then: the process's own.
    dir: Option<PathBuf>,
}

impl LocalDir {
    /// `path` as the shell means it: relative to the local folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match &self.dir {
            // `join` keeps an absolute `path` as it is.
            Some(dir) => dir.join(path),
            None => path.to_owned(),
        }
    }

    /// The folder set by `lcd`, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The folder relative paths start from.
    pub fn base(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| PathBuf::from("."))
    }

    /// `lpwd`.
    pub fn pwd(&self) -> anyhow::Result<PathBuf> {
        match &self.dir {
            Some(dir) => Ok(dir.clone()),
            None => std::env::current_dir().context("cannot tell the local directory"),
        }
    }

    /// `lcd [PATH]`: to PATH, or to the home folder as `cd` does.
    pub fn cd(&mut self, path: Option<&Path>) -> anyhow::Result<()> {
        let target = match path {
            Some(p) => self.resolve(p),
            None => std::env::var_os("HOME")
                .map(PathBuf::from)
                .context("HOME is not set; give lcd a folder")?,
        };
        let dir = fs::canonicalize(&target)
            .with_context(|| format!("no such local directory: {}", target.display()))?;
        if !dir.is_dir() {
            bail!("not a local directory: {}", target.display());
        }
        self.dir = Some(dir);
        Ok(())
    }

    /// `lmkdir PATH`.
    pub fn mkdir(&self, path: &Path) -> anyhow::Result<()> {
        let target = self.resolve(path);
        fs::create_dir(&target)
            .with_context(|| format!("cannot create the local directory {}", target.display()))
    }

    /// `lls [PATH]`: the local folder in `ls`'s format.
    pub fn ls(&self, path: Option<&Path>, options: &ListOptions) -> anyhow::Result<()> {
        let target = path.map_or_else(|| self.base(), |p| self.resolve(p));
        let shown = target.display();
        let meta = fs::metadata(&target).with_context(|| format!("no such local file: {shown}"))?;
        let mut entries = Vec::new();
        let mut truncated = false;
        if meta.is_dir() {
            for item in fs::read_dir(&target).with_context(|| format!("cannot list {shown}"))? {
                let item = item.with_context(|| format!("cannot list {shown}"))?;
                if entries.len() == MAX_LIST_ENTRIES {
                    truncated = true;
                    break;
                }
                if let Ok(meta) = item.metadata() {
                    entries.push(entry(&item.file_name().to_string_lossy(), &meta));
                }
            }
        } else {
            let name = target.file_name().unwrap_or(target.as_os_str());
            entries.push(entry(&name.to_string_lossy(), &meta));
        }
        display::sort_entries(&mut entries, options);
        let look = display::Look::current();
        let lines: Vec<String> = display::listing_lines(&entries, options.human, &look).collect();
        crate::commands::print_lines(lines)?;
        if truncated {
            eprintln!("(only the first {MAX_LIST_ENTRIES} entries are shown)");
        }
        Ok(())
    }

    /// The local files `pattern` names: itself if it has no glob
    /// characters, else its matches (sorted, hidden files only when the
    /// pattern spells the dot, as in sh). No match is an error, as in
    /// shells with `failglob`: `put *.jpgg` should not upload a file
    /// literally named `*.jpgg`.
    pub fn glob(&self, pattern: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let text = pattern.to_string_lossy();
        // The same rule as for remote patterns (`glob.rs`).
        if !crate::glob::has_magic(&text) {
            return Ok(vec![self.resolve(pattern)]);
        }
        let full = match &self.dir {
            Some(dir) if pattern.is_relative() => {
                let base = ::glob::Pattern::escape(&dir.to_string_lossy());
                format!("{base}/{text}")
            }
            _ => text.to_string(),
        };
        let options = ::glob::MatchOptions {
            require_literal_leading_dot: true,
            ..Default::default()
        };
        let paths = ::glob::glob_with(&full, options)
            .map_err(|e| anyhow::anyhow!("bad pattern {text}: {e}"))?;
        let mut matches = Vec::new();
        for path in paths {
            // An unreadable folder on the way is no match, as in sh.
            let Ok(path) = path else { continue };
            if matches.len() == MAX_GLOB_MATCHES {
                bail!("{text} matches more than {MAX_GLOB_MATCHES} local files");
            }
            matches.push(path);
        }
        if matches.is_empty() {
            bail!("no local file matches {text}");
        }
        Ok(matches)
    }
}

/// A local file as a listing entry.
fn entry(name: &str, meta: &fs::Metadata) -> Entry {
    let kind = if meta.is_dir() {
        EntryKind::Dir
    } else if meta.is_file() {
        EntryKind::File
    } else if meta.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    };
    Entry {
        name: name.to_owned(),
        kind,
        size: meta.len(),
        mtime: meta.mtime(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_globs_are_relative_to_the_lcd_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("we[ird] dir");
        fs::create_dir(&sub).unwrap();
        for name in ["a.jpg", "b.jpg", "c.txt", ".hidden.jpg"] {
            fs::write(sub.join(name), name).unwrap();
        }
        let mut local = LocalDir::default();
        assert_eq!(local.resolve(Path::new("x")), PathBuf::from("x"));
        local.cd(Some(&sub)).unwrap();
        let sub = fs::canonicalize(&sub).unwrap();
        assert_eq!(local.pwd().unwrap(), sub);
        assert_eq!(local.resolve(Path::new("x")), sub.join("x"));
        assert_eq!(local.resolve(Path::new("/abs")), PathBuf::from("/abs"));
        assert_eq!(
            local.glob(Path::new("*.jpg")).unwrap(),
            [sub.join("a.jpg"), sub.join("b.jpg")]
        );
        assert_eq!(local.glob(Path::new("c.txt")).unwrap(), [sub.join("c.txt")]);
        assert!(local.glob(Path::new("*.png")).is_err());
        local.mkdir(Path::new("new")).unwrap();
        assert!(sub.join("new").is_dir());
        local.cd(Some(Path::new(".."))).unwrap();
        assert_eq!(local.pwd().unwrap(), sub.parent().unwrap());
        assert!(local.cd(Some(Path::new("nosuch"))).is_err());
    }
}
