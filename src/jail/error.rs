//! [`FsError`]: a filesystem failure in the user's terms.

use std::fmt;
use std::io;

use rustix::io::Errno;

use super::VPath;
use crate::proto::ErrorCode;

/// An error in the user's terms: never contains a server path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    /// What went wrong, as the client sees it.
    pub code: ErrorCode,
    /// One line for the user; paths in it are [`VPath`]s.
    pub message: String,
}

impl FsError {
    /// An error with a message of our own.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> FsError {
        FsError {
            code,
            message: message.into(),
        }
    }

    /// The one place an I/O error becomes a wire error.
    ///
    /// The `io::Error`'s own text is never used: it can name server paths.
    /// `ELOOP` and `EXDEV` are what `openat2` says when a path meets a
    /// symlink or a mount point, so they mean "not allowed" here.
    pub fn from_io(err: &io::Error, path: &VPath) -> FsError {
        use ErrorCode::*;
        let (code, message) = match Errno::from_io_error(err) {
            Some(Errno::NOENT) => (NotFound, format!("no such file or directory: {path}")),
            Some(Errno::NOTDIR) => (NotADirectory, format!("not a directory: {path}")),
            Some(Errno::ISDIR) => (IsADirectory, format!("is a directory: {path}")),
            Some(Errno::EXIST) => (AlreadyExists, format!("already exists: {path}")),
            Some(Errno::NOTEMPTY) => (NotEmpty, format!("directory not empty: {path}")),
            Some(Errno::LOOP | Errno::XDEV | Errno::ACCESS | Errno::PERM) => {
                (PermissionDenied, format!("permission denied: {path}"))
            }
            Some(Errno::NOSPC | Errno::DQUOT) => (Io, "the server's disk is full".to_owned()),
            Some(Errno::NAMETOOLONG) => (BadRequest, format!("name too long: {path}")),
            Some(Errno::MFILE | Errno::NFILE | Errno::NOMEM) => (
                Unavailable,
                "the server is out of resources right now; try again later".to_owned(),
            ),
            Some(_) => (Io, format!("I/O error on {path}")),
            // Not from the OS (a std or test error): go by its kind.
            None => match err.kind() {
                io::ErrorKind::NotFound => (NotFound, format!("no such file or directory: {path}")),
                io::ErrorKind::PermissionDenied => {
                    (PermissionDenied, format!("permission denied: {path}"))
                }
                io::ErrorKind::AlreadyExists => (AlreadyExists, format!("already exists: {path}")),
                _ => (Io, format!("I/O error on {path}")),
            },
        };
        FsError { code, message }
    }

    /// [`FsError::from_io`] for a rustix error.
    pub(super) fn from_errno(err: Errno, path: &VPath) -> FsError {
        FsError::from_io(&err.into(), path)
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FsError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(errno: Errno) -> FsError {
        let path = VPath::resolve(&VPath::root(), "/docs/a.txt").unwrap();
        FsError::from_io(&io::Error::from(errno), &path)
    }

    #[test]
    fn maps_errno_to_codes() {
        use ErrorCode::*;
        let cases = [
            (
                Errno::NOENT,
                NotFound,
                "no such file or directory: /docs/a.txt",
            ),
            (Errno::NOTDIR, NotADirectory, "not a directory: /docs/a.txt"),
            (Errno::ISDIR, IsADirectory, "is a directory: /docs/a.txt"),
            (Errno::EXIST, AlreadyExists, "already exists: /docs/a.txt"),
            (
                Errno::NOTEMPTY,
                NotEmpty,
                "directory not empty: /docs/a.txt",
            ),
            (
                Errno::LOOP,
                PermissionDenied,
                "permission denied: /docs/a.txt",
            ),
            (
                Errno::XDEV,
                PermissionDenied,
                "permission denied: /docs/a.txt",
            ),
            (
                Errno::ACCESS,
                PermissionDenied,
                "permission denied: /docs/a.txt",
            ),
            (
                Errno::PERM,
                PermissionDenied,
                "permission denied: /docs/a.txt",
            ),
            (Errno::NOSPC, Io, "the server's disk is full"),
            (Errno::DQUOT, Io, "the server's disk is full"),
            (Errno::NAMETOOLONG, BadRequest, "name too long: /docs/a.txt"),
            (Errno::IO, Io, "I/O error on /docs/a.txt"),
        ];
        for (errno, code, message) in cases {
            let e = map(errno);
            assert_eq!((e.code, e.message.as_str()), (code, message), "{errno:?}");
            assert_eq!(e.to_string(), message);
        }
    }

    #[test]
    fn never_repeats_the_io_text() {
        let secret = io::Error::other("/srv/ftp/homes/alice/docs/a.txt");
        let e = FsError::from_io(&secret, &VPath::root());
        assert_eq!(e.code, ErrorCode::Io);
        assert!(!e.message.contains("/srv"), "{}", e.message);
        let e = FsError::from_io(&io::Error::from(io::ErrorKind::NotFound), &VPath::root());
        assert_eq!(e.code, ErrorCode::NotFound);
    }
}
