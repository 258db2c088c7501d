//! Tab completion: command names, remote paths (from the server, see
//! `remote.rs`) and local paths (relative to the `lcd` folder), each where
//! the command expects one.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

use super::line::{command_names, escape, last_word_start, partial_word, split};
use super::local::LocalDir;
use super::remote::{Name, Remote};

/// Most local names read from one folder for Tab.
const MAX_LOCAL_NAMES: usize = 5000;

/// What an argument of a command names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg {
    Command,
    Remote,
    RemoteDir,
    Local,
    LocalDir,
    Nothing,
}

/// What argument `index` (flags not counted) of `command` names.
fn arg_kind(command: &str, index: usize) -> Arg {
    match (command, index) {
        ("put", 0) | ("get", 1) | ("lls", 0) | ("lmkdir", 0) => Arg::Local,
        ("lcd", 0) => Arg::LocalDir,
        ("cd", 0) => Arg::RemoteDir,
        ("put", 1) | ("get", 0) | ("mv", 0 | 1) => Arg::Remote,
        ("ls" | "rm" | "rmdir" | "mkdir" | "stat", 0) => Arg::Remote,
        ("help", 0) => Arg::Command,
        _ => Arg::Nothing,
    }
}

/// The shell's line helper: completion only.
pub struct ShellHelper {
    pub remote: Rc<RefCell<Remote>>,
    pub local: Rc<RefCell<LocalDir>>,
    pub commands: Vec<String>,
}

impl ShellHelper {
    pub fn new(remote: Rc<RefCell<Remote>>, local: Rc<RefCell<LocalDir>>) -> ShellHelper {
        ShellHelper {
            remote,
            local,
            commands: command_names(),
        }
    }

    fn candidates(&self, before: &str) -> (usize, Vec<Pair>) {
        let start = last_word_start(before);
        let Ok(words) = split(&before[..start]) else {
            return (start, Vec::new());
        };
        let typed = partial_word(&before[start..]);
        let kind = match words.split_first() {
            None => Arg::Command,
            Some((command, args)) => {
                let index = args.iter().filter(|a| !a.starts_with('-')).count();
                arg_kind(command, index)
            }
        };
        let pairs = match kind {
            Arg::Command => self
                .commands
                .iter()
                .filter(|c| c.starts_with(&typed))
                .map(|c| Pair {
                    display: c.clone(),
                    replacement: format!("{c} "),
                })
                .collect(),
            Arg::Remote | Arg::RemoteDir => {
                let (dir, prefix) = split_path(&typed);
                // Busy (cannot happen while the prompt is up): no names.
                let names = match self.remote.try_borrow_mut() {
                    Ok(mut remote) => remote.names(dir),
                    Err(_) => Vec::new(),
                };
                matches(dir, prefix, &names, kind == Arg::RemoteDir)
            }
            Arg::Local | Arg::LocalDir => {
                let (dir, prefix) = split_path(&typed);
                let local = self.local.borrow();
                let base = if dir.is_empty() {
                    local.base()
                } else {
                    local.resolve(Path::new(dir))
                };
                matches(dir, prefix, &local_names(&base), kind == Arg::LocalDir)
            }
            Arg::Nothing => Vec::new(),
        };
        (start, pairs)
    }
}

/// `docs/re` into the folder part `docs/` and the name typed so far `re`.
fn split_path(typed: &str) -> (&str, &str) {
    match typed.rfind('/') {
        Some(i) => typed.split_at(i + 1),
        None => ("", typed),
    }
}

/// The names in `dir` that start with `prefix`, as completions: a folder
/// ends in `/` (to go on typing in it), a file in a blank.
fn matches(dir: &str, prefix: &str, names: &[Name], dirs_only: bool) -> Vec<Pair> {
    let mut pairs: Vec<Pair> = names
        .iter()
        .filter(|n| n.name.starts_with(prefix) && (n.is_dir || !dirs_only))
        // Hidden names only when asked for, as in shells.
        .filter(|n| !n.name.starts_with('.') || prefix.starts_with('.'))
        // A name with control characters would be echoed raw into the
        // line: a hostile server's escape sequences never get there.
        .filter(|n| matches!(crate::display::sanitize(&n.name), Cow::Borrowed(_)))
        .map(|n| {
            let (display, end) = if n.is_dir {
                (format!("{}/", n.name), "/")
            } else {
                (n.name.clone(), " ")
            };
            Pair {
                display,
                replacement: format!("{}{end}", escape(&format!("{dir}{}", n.name))),
            }
        })
        .collect();
    pairs.sort_by(|a, b| a.display.cmp(&b.display));
    pairs
}

/// The names in a local folder (at most [`MAX_LOCAL_NAMES`]).
fn local_names(dir: &Path) -> Vec<Name> {
    let Ok(items) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    items
        .filter_map(Result::ok)
        .take(MAX_LOCAL_NAMES)
        .filter_map(|item| {
            let name = item.file_name().into_string().ok()?;
            // Follows links, so a link to a folder completes as one.
            let is_dir = item.path().is_dir();
            Some(Name { name, is_dir })
        })
        .collect()
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(self.candidates(&line[..pos]))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {}
impl Validator for ShellHelper {}
impl Helper for ShellHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str, is_dir: bool) -> Name {
        Name {
            name: n.into(),
            is_dir,
        }
    }

    #[test]
    fn arguments_name_local_or_remote_paths() {
        assert_eq!(arg_kind("put", 0), Arg::Local);
        assert_eq!(arg_kind("put", 1), Arg::Remote);
        assert_eq!(arg_kind("get", 0), Arg::Remote);
        assert_eq!(arg_kind("get", 1), Arg::Local);
        assert_eq!(arg_kind("cd", 0), Arg::RemoteDir);
        assert_eq!(arg_kind("lcd", 0), Arg::LocalDir);
        assert_eq!(arg_kind("pwd", 0), Arg::Nothing);
    }

    #[test]
    fn matches_escape_and_mark_folders() {
        let names = [
            name("docs", true),
            name("doc file.txt", false),
            name(".dot", false),
            name("x", false),
            name("do\x1b[2Jevil", false),
        ];
        let got: Vec<(String, String)> = matches("a/", "do", &names, false)
            .into_iter()
            .map(|p| (p.display, p.replacement))
            .collect();
        assert_eq!(
            got,
            [
                ("doc file.txt".into(), "a/doc\\ file.txt ".into()),
                ("docs/".into(), "a/docs/".into()),
            ]
        );
        assert_eq!(matches("", "", &names, true).len(), 1);
        assert_eq!(matches("", ".", &names, false).len(), 1);
        assert_eq!(split_path("a/b/c"), ("a/b/", "c"));
        assert_eq!(split_path("c"), ("", "c"));
        assert_eq!(split_path("/"), ("/", ""));
    }
}
