//! The shell's history, kept between sessions in the XDG state folder:
//! `$XDG_STATE_HOME/ftpc/history`, else `~/.local/state/ftpc/history`.
//!
//! At most [`MAX_LINES`] lines; the folder is made private (0700) and the
//! file is written with mode 0600 (rustyline saves it so, and we set it
//! again in case the file was made by someone else first). A line that
//! could hold a secret is never recorded: no command takes a password
//! today, and [`SECRET_COMMANDS`] keeps a future one out.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustyline::history::History;

/// Lines kept between sessions.
pub const MAX_LINES: usize = 1000;

/// Commands whose lines are not recorded: any that takes a password or a
/// key (a future `passwd`, say).
const SECRET_COMMANDS: [&str; 4] = ["passwd", "password", "login", "user"];

/// Where the history lives, or `None` without `XDG_STATE_HOME` and `HOME`.
pub fn path() -> Option<PathBuf> {
    // The XDG spec ignores a relative value.
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|home| home.join(".local/state"))
        })?;
    Some(state.join("ftpc").join("history"))
}

/// Whether `line` may be written to the history.
pub fn may_record(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or("");
    !line.trim().is_empty() && !SECRET_COMMANDS.contains(&first)
}

/// Loads the history; a missing file is a first session, and any other
/// failure only costs the history, with one line saying so.
pub fn load(history: &mut impl History, path: &Path) {
    if !path.exists() {
        return;
    }
    if let Err(e) = history.load(path) {
        eprintln!("ftpc: cannot read the history {}: {e}", path.display());
    }
}

/// Saves the history to `path`, creating its folder; failing only costs
/// the history (said once per session by the caller).
pub fn save(history: &mut impl History, path: &Path) -> Result<(), String> {
    let fail =
        |e: &dyn std::fmt::Display| format!("cannot save the history {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(&e))?;
    }
    history.save(path).map_err(|e| fail(&e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_blank_lines_are_not_recorded() {
        assert!(may_record("put a.txt"));
        assert!(!may_record("passwd hunter2"));
        assert!(!may_record("  password x"));
        assert!(!may_record("   "));
    }
}
