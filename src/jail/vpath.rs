//! [`VPath`]: a path as the user sees it, checked and normalized before it
//! ever reaches a syscall.

use std::fmt;

use super::{FsError, PARTIAL_DIR};
use crate::proto::{ErrorCode, MAX_PATH_DEPTH, MAX_PATH_LEN};

/// Longest single name most Linux filesystems accept (`NAME_MAX`).
const MAX_NAME_LEN: usize = 255;

/// How much of an over-long name an error message repeats back.
const NAME_PREVIEW: usize = 32;

/// A normalized absolute path as the user sees it, e.g. "/docs/a.txt"; "/" is the home.
///
/// Every component is a plain name: never empty, `.`, `..`, [`PARTIAL_DIR`],
/// and never containing `/`, `\`, NUL or a control character. So the path
/// can be handed to the kernel as a relative path below the home as is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VPath {
    components: Vec<String>,
}

impl VPath {
    /// The home itself.
    pub fn root() -> VPath {
        VPath {
            components: Vec::new(),
        }
    }

    /// Resolves `input` (absolute or relative to `cwd`) with `.` and `..`;
    /// `..` at `/` stays at `/` (like chroot).
    ///
    /// Refuses NUL bytes, backslashes, control characters, any component
    /// equal to [`PARTIAL_DIR`] (even one a later `..` would cancel), a
    /// component over 255 bytes, a result deeper than [`MAX_PATH_DEPTH`] and
    /// input longer than [`MAX_PATH_LEN`], all as `BadRequest`.
    pub fn resolve(cwd: &VPath, input: &str) -> Result<VPath, FsError> {
        if input.len() > MAX_PATH_LEN {
            return Err(bad(format!("path too long (over {MAX_PATH_LEN} bytes)")));
        }
        check_chars(input)?;
        let mut path = if input.starts_with('/') {
            VPath::root()
        } else {
            cwd.clone()
        };
        for part in input.split('/') {
            match part {
                "" | "." => {}
                // At the top, `..` stays put, as it does in a chroot.
                ".." => {
                    path.components.pop();
                }
                name => {
                    check_name(name)?;
                    path.components.push(name.to_owned());
                }
            }
        }
        path.check_depth()?;
        Ok(path)
    }

    /// Whether this is the home itself.
    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The last component; `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        self.components.last().map(String::as_str)
    }

    /// The folder holding this path; `None` for the root.
    pub fn parent(&self) -> Option<VPath> {
        let (_, rest) = self.components.split_last()?;
        Some(VPath {
            components: rest.to_vec(),
        })
    }

    /// This path with one more component, checked like a component of
    /// [`VPath::resolve`]; `.`, `..`, `/` and the empty name are refused.
    pub fn join(&self, name: &str) -> Result<VPath, FsError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(bad(format!("not a plain name: {}", preview(name))));
        }
        check_chars(name)?;
        check_name(name)?;
        let mut path = self.clone();
        path.components.push(name.to_owned());
        path.check_depth()?;
        Ok(path)
    }

    /// Whether `other` is this path or one of its ancestors, compared by
    /// component (so "/ab" does not start with "/a").
    pub fn starts_with(&self, other: &VPath) -> bool {
        self.components.starts_with(&other.components)
    }

    /// The path relative to the home, as `openat2` gets it: "." for the root.
    pub(super) fn relative(&self) -> String {
        if self.is_root() {
            ".".to_owned()
        } else {
            self.components.join("/")
        }
    }

    fn check_depth(&self) -> Result<(), FsError> {
        if self.components.len() > MAX_PATH_DEPTH {
            return Err(bad(format!("path too deep (over {MAX_PATH_DEPTH} levels)")));
        }
        // The result obeys the same length cap as input, so every path the
        // server shows (pwd, listings) can be sent back to it.
        let len: usize = self.components.iter().map(|c| c.len() + 1).sum();
        if len > MAX_PATH_LEN {
            return Err(bad(format!("path too long (over {MAX_PATH_LEN} bytes)")));
        }
        Ok(())
    }
}

impl fmt::Display for VPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            return f.write_str("/");
        }
        for c in &self.components {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

fn bad(message: String) -> FsError {
    FsError {
        code: ErrorCode::BadRequest,
        message,
    }
}

/// Refuses characters that either mean something to some layer below us
/// (NUL ends a C string, `\` is a separator to Windows clients) or that
/// garble terminals and logs when a name is shown (C0, DEL and C1 controls).
fn check_chars(s: &str) -> Result<(), FsError> {
    if s.contains('\0') {
        return Err(bad("path contains a NUL byte".to_owned()));
    }
    if s.contains('\\') {
        return Err(bad("path contains a backslash".to_owned()));
    }
    if s.chars().any(char::is_control) {
        return Err(bad("path contains a control character".to_owned()));
    }
    Ok(())
}

/// Checks one component that is already known to be a plain name.
fn check_name(name: &str) -> Result<(), FsError> {
    if name == PARTIAL_DIR {
        return Err(bad(format!("reserved name: {PARTIAL_DIR}")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(format!("name too long: {}", preview(name))));
    }
    Ok(())
}

/// The start of `name`, cut at a character boundary, for error messages.
fn preview(name: &str) -> String {
    match name.char_indices().nth(NAME_PREVIEW) {
        Some((cut, _)) => format!("{}...", &name[..cut]),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cwd: &str, input: &str) -> Result<String, FsError> {
        let cwd = VPath::resolve(&VPath::root(), cwd)?;
        VPath::resolve(&cwd, input).map(|p| p.to_string())
    }

    fn refused(cwd: &str, input: &str) -> String {
        match r(cwd, input) {
            Ok(p) => panic!("{input:?} resolved to {p}"),
            Err(e) => {
                assert_eq!(e.code, ErrorCode::BadRequest, "{input:?}: {e}");
                e.message
            }
        }
    }

    #[test]
    fn dotdot_past_the_top_stays_at_root() {
        assert_eq!(r("/", "..").unwrap(), "/");
        assert_eq!(r("/", "../../..").unwrap(), "/");
        assert_eq!(r("/a", "../../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(r("/a/b", "/../../x").unwrap(), "/x");
        assert_eq!(r("/", "a/../../b").unwrap(), "/b");
    }

    #[test]
    fn dots_and_slashes_normalize() {
        assert_eq!(r("/", "a/./b/../c").unwrap(), "/a/c");
        assert_eq!(r("/", "a//b///").unwrap(), "/a/b");
        assert_eq!(r("/x", "").unwrap(), "/x");
        assert_eq!(r("/x", ".").unwrap(), "/x");
        assert_eq!(r("/x", "./").unwrap(), "/x");
        assert_eq!(r("/", "...").unwrap(), "/...");
        assert_eq!(r("/", "..a/a..").unwrap(), "/..a/a..");
    }

    #[test]
    fn absolute_and_relative() {
        assert_eq!(r("/docs", "a.txt").unwrap(), "/docs/a.txt");
        assert_eq!(r("/docs", "/a.txt").unwrap(), "/a.txt");
        assert_eq!(r("/docs", "../a.txt").unwrap(), "/a.txt");
        assert_eq!(r("/docs/sub", "..").unwrap(), "/docs");
    }

    #[test]
    fn refuses_bad_characters() {
        assert!(refused("/", "a\0b").contains("NUL"));
        assert!(refused("/", "a\\..\\b").contains("backslash"));
        assert!(refused("/", "..\\..\\etc").contains("backslash"));
        for c in ['\n', '\r', '\t', '\x01', '\x1b', '\x7f', '\u{9b}'] {
            assert!(refused("/", &format!("a{c}b")).contains("control"), "{c:?}");
        }
    }

    #[test]
    fn refuses_the_reserved_name() {
        refused("/", PARTIAL_DIR);
        refused("/", "/.ftpd-partial/x.part");
        refused("/a", "../.ftpd-partial");
        // Even when a later `..` would cancel it.
        refused("/", ".ftpd-partial/..");
        // Names that merely look alike are ordinary names.
        assert_eq!(r("/", ".ftpd-partial2").unwrap(), "/.ftpd-partial2");
        assert_eq!(r("/", ".FTPD-PARTIAL").unwrap(), "/.FTPD-PARTIAL");
    }

    #[test]
    fn refuses_over_long_names_and_paths() {
        let name = "n".repeat(MAX_NAME_LEN);
        assert!(r("/", &name).is_ok());
        let msg = refused("/", &format!("{name}x"));
        assert!(msg.starts_with("name too long"), "{msg}");
        assert!(msg.len() < 64, "{msg}");
        // Multi-byte characters: 128 * 2 bytes = 256 bytes.
        refused("/", &"é".repeat(128));

        let long = "a/".repeat(MAX_PATH_LEN / 2 + 1);
        assert!(refused("/", &long).contains("too long"));
        // The length limit counts the input, even if it normalizes to little.
        refused("/", &"./".repeat(MAX_PATH_LEN));
    }

    #[test]
    fn refuses_too_deep() {
        let ok = "d/".repeat(MAX_PATH_DEPTH);
        let deep = VPath::resolve(&VPath::root(), &ok).unwrap();
        assert!(refused("/", &format!("{ok}d")).contains("too deep"));
        // Relative to a deep cwd.
        assert_eq!(
            VPath::resolve(&deep, "x").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert!(VPath::resolve(&deep, "../x").is_ok());
        assert_eq!(deep.join("x").unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn odd_unicode_is_a_plain_name() {
        // Right-to-left override, combining marks, zero-width joiner,
        // fullwidth solidus and a one-dot leader: all just names.
        for name in [
            "evil\u{202e}txt.exe",
            "e\u{301}\u{301}\u{301}",
            "a\u{200d}b",
            "\u{ff0f}etc\u{ff0f}passwd",
            "\u{2024}\u{2024}",
            "\u{fe52}\u{fe52}",
        ] {
            let p = r("/", &format!("../{name}/..//{name}")).unwrap();
            assert_eq!(p, format!("/{name}"));
            let p = VPath::resolve(&VPath::root(), name).unwrap();
            assert_eq!(p.file_name(), Some(name));
            assert_eq!(p.parent(), Some(VPath::root()));
        }
    }

    #[test]
    fn accessors() {
        let root = VPath::root();
        assert!(root.is_root());
        assert_eq!(root.to_string(), "/");
        assert_eq!(root.file_name(), None);
        assert_eq!(root.parent(), None);
        assert_eq!(root.relative(), ".");

        let p = VPath::resolve(&root, "/docs/a.txt").unwrap();
        assert!(!p.is_root());
        assert_eq!(p.to_string(), "/docs/a.txt");
        assert_eq!(p.relative(), "docs/a.txt");
        assert_eq!(p.file_name(), Some("a.txt"));
        let docs = p.parent().unwrap();
        assert_eq!(docs.to_string(), "/docs");
        assert!(p.starts_with(&docs));
        assert!(p.starts_with(&root));
        assert!(p.starts_with(&p));
        assert!(!docs.starts_with(&p));
        let ab = VPath::resolve(&root, "/ab").unwrap();
        let a = VPath::resolve(&root, "/a").unwrap();
        assert!(!ab.starts_with(&a));
    }

    #[test]
    fn join_takes_one_plain_name() {
        let docs = VPath::resolve(&VPath::root(), "/docs").unwrap();
        assert_eq!(docs.join("a.txt").unwrap().to_string(), "/docs/a.txt");
        for name in ["", ".", "..", "a/b", "/", "a\\b", "a\0", PARTIAL_DIR] {
            assert_eq!(
                docs.join(name).unwrap_err().code,
                ErrorCode::BadRequest,
                "{name:?}"
            );
        }
        assert!(docs.join(&"x".repeat(256)).is_err());
        // At the root the reserved name is refused too.
        assert!(VPath::root().join(PARTIAL_DIR).is_err());
    }
}
