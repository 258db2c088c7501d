//! The client's typed failures and the exit code each one maps to.
//!
//! Everything that is not a [`Failure`] (a local file that cannot be read, a
//! full local disk, ...) exits with [`exit::OTHER`].

use ftpd::proto::ErrorCode;

use crate::display::sanitize;

/// Exit codes of `ftpc`; `client/main.rs` documents them for users.
pub mod exit {
    /// Any other error: local files, local disk, ...
    pub const OTHER: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// Cannot connect, connection lost, protocol error, version mismatch, time-out.
    pub const CONNECTION: u8 = 3;
    /// Login failed.
    pub const LOGIN: u8 = 4;
    /// The server refused the command.
    pub const REFUSED: u8 = 5;
    /// The user's quota cannot hold the upload.
    pub const QUOTA: u8 = 6;
    /// Data did not match its CRC32.
    pub const INTEGRITY: u8 = 7;
    /// The server's key is not trusted (unknown, changed, not the one given).
    pub const TRUST: u8 = 8;
}

/// A failure with a known exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The command line is incomplete in a way clap cannot see.
    #[error("{0}")]
    Usage(String),
    /// No connection, a lost one, or a server that broke the protocol.
    #[error("{0}")]
    Link(String),
    /// The login did not succeed (already phrased for the user).
    #[error("{0}")]
    Login(String),
    /// The server answered a request with an error.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    /// Transferred data did not match its CRC32.
    #[error("{0}")]
    Integrity(String),
    /// The server's key was refused (already phrased for the user).
    #[error("{0}")]
    Trust(String),
    /// First contact with a key nothing vouches for; the caller may ask
    /// the user, as ssh does.
    #[error(
        "the server at {host_port} is not known yet; its key fingerprint is {offered}\n\
         If that is the fingerprint `ftpd fingerprint` prints on the server, connect once with \
         --fingerprint {offered} (or --accept-new) to trust it."
    )]
    UnknownKey {
        host_port: String,
        offered: ftpd::tls::Fingerprint,
    },
    /// `ftpc`'s own side failed outside any file (no randomness, ...).
    #[error("{0}")]
    Local(String),
    /// Ctrl-C in the shell cancelled a transfer (see `cancel.rs`); the
    /// session is dropped and the shell logs in again.
    #[error("cancelled")]
    Cancelled,
    /// Some files of a tree job failed; `code` is the most serious
    /// failure's (see `tree_report::SEVERITY`). The files were listed.
    #[error("{failed} {} failed", if *failed == 1 { "file" } else { "files" })]
    Tree { failed: u64, code: u8 },
    /// Some lines of a shell script failed; `code` is the last failure's.
    #[error("{failed} of {total} commands failed")]
    Script {
        failed: usize,
        total: usize,
        code: u8,
    },
}

impl Failure {
    /// A server error reply, with its message made safe to print.
    pub fn refused(code: ErrorCode, message: &str) -> Failure {
        let message = if message.is_empty() {
            describe(code).to_owned()
        } else {
            sanitize(message).into_owned()
        };
        Failure::Refused { code, message }
    }

    /// A reply that the protocol does not allow at this point.
    pub fn unexpected(expected: &str, got: &ftpd::proto::Reply) -> Failure {
        Failure::Link(format!(
            "protocol error: expected {expected}, the server sent {}",
            reply_name(got)
        ))
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => exit::USAGE,
            Failure::Link(_) => exit::CONNECTION,
            Failure::Login(_) => exit::LOGIN,
            Failure::Refused { code, .. } => code_exit(*code),
            Failure::Integrity(_) => exit::INTEGRITY,
            Failure::Local(_) | Failure::Cancelled => exit::OTHER,
            Failure::Trust(_) | Failure::UnknownKey { .. } => exit::TRUST,
            Failure::Script { code, .. } | Failure::Tree { code, .. } => *code,
        }
    }

    /// Whether the session cannot carry on after this failure.
    pub fn is_fatal(&self) -> bool {
        match self {
            Failure::Link(_)
            | Failure::Login(_)
            | Failure::Trust(_)
            | Failure::UnknownKey { .. } => true,
            Failure::Refused { code, .. } => code_exit(*code) == exit::CONNECTION,
            _ => false,
        }
    }
}

/// Whether an error ends the session (see [`Failure::is_fatal`]).
pub fn is_fatal(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Failure>().is_some_and(Failure::is_fatal)
}

/// The exit code for an error reply.
fn code_exit(code: ErrorCode) -> u8 {
    use ErrorCode::*;
    match code {
        AuthFailed | LockedOut | TooManySessions => exit::LOGIN,
        QuotaExceeded => exit::QUOTA,
        CrcMismatch => exit::INTEGRITY,
        // The server closes the session after these.
        VersionMismatch | NotLoggedIn | Timeout | TlsRequired | NoTls => exit::CONNECTION,
        BadRequest | NotFound | AlreadyExists | NotADirectory | IsADirectory | NotEmpty
        | PermissionDenied | Busy | TransferFailed | Io | Internal | Unavailable => exit::REFUSED,
    }
}

/// Words for an error reply that came without a message.
fn describe(code: ErrorCode) -> &'static str {
    use ErrorCode::*;
    match code {
        BadRequest => "the server rejected the request",
        VersionMismatch => "the server speaks another protocol version",
        AuthFailed => "wrong user name or password",
        LockedOut => "too many failed logins; try again later",
        NotLoggedIn => "not logged in",
        TooManySessions => "too many sessions",
        Timeout => "the session timed out",
        NotFound => "no such file or directory",
        AlreadyExists => "already exists",
        NotADirectory => "not a directory",
        IsADirectory => "is a directory",
        NotEmpty => "directory not empty",
        PermissionDenied => "permission denied",
        QuotaExceeded => "quota exceeded",
        Busy => "someone else is uploading to this path",
        CrcMismatch => "the data did not match its CRC32",
        TransferFailed => "the transfer failed",
        Io => "the server's disk failed",
        Unavailable => "the server is out of resources right now; try again later",
        TlsRequired => "the server speaks only TLS; connect without --plaintext",
        NoTls => "the server does not speak TLS; --plaintext is for trusted links only",
        Internal => "internal server error",
    }
}

/// The name of a reply's variant, for protocol errors.
fn reply_name(reply: &ftpd::proto::Reply) -> &'static str {
    use ftpd::proto::Reply::*;
    match reply {
        Error { .. } => "Error",
        Hello { .. } => "Hello",
        Challenge { .. } => "Challenge",
        LoginOk { .. } => "LoginOk",
        Pong => "Pong",
        Ok => "Ok",
        Cwd(_) => "Cwd",
        Entry(_) => "Entry",
        Entries(_) => "Entries",
        ListEnd { .. } => "ListEnd",
        Quota(_) => "Quota",
        PutReady { .. } => "PutReady",
        PutDone { .. } => "PutDone",
        GetReady { .. } => "GetReady",
        Chunk(_) => "Chunk",
        GetDone { .. } => "GetDone",
        ListPage { .. } => "ListPage",
        Removing { .. } => "Removing",
        Unchanged => "Unchanged",
    }
}

/// The exit code for any error `run` returned.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(exit::OTHER, Failure::exit_code)
}

/// Whether `err` is only a closed stdout (`ftpc ls | head`), which is no failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn exit_codes_survive_context() {
        let err = Err::<(), _>(Failure::refused(ErrorCode::QuotaExceeded, ""))
            .context("uploading x")
            .unwrap_err();
        assert_eq!(exit_code(&err), exit::QUOTA);
        assert_eq!(format!("{err:#}"), "uploading x: quota exceeded");
        let err = anyhow::anyhow!("plain");
        assert_eq!(exit_code(&err), exit::OTHER);
    }

    #[test]
    fn server_messages_are_sanitised() {
        let f = Failure::refused(ErrorCode::NotFound, "no \x1b[31mred");
        assert_eq!(f.to_string(), "no ?[31mred");
        assert_eq!(f.exit_code(), exit::REFUSED);
    }
}
