//! The wire protocol between `ftpc` and `ftpd`.
//!
//! # Frames
//!
//! One TCP connection carries one session. Each message travels in a frame:
//!
//! ```text
//! +----------------------+---------------------------------------+
//! | length: u32, big end | postcard encoding of Request / Reply  |
//! +----------------------+---------------------------------------+
//! ```
//!
//! `length` counts only the body and never exceeds [`MAX_FRAME`]; a receiver
//! rejects a larger prefix before allocating anything (see [`crate::frame`]).
//! The client sends [`Request`]s, the server sends [`Reply`]s.
//!
//! # Order of messages
//!
//! ```text
//!  client                           server
//!  Hello{magic,version}      ──►
//!                            ◄──   Hello{version,server}   | Error(VersionMismatch), close
//!  LoginStart{user,cnonce}   ──►
//!                            ◄──   Challenge{snonce,salt,kdf}
//!  LoginProof{proof}         ──►
//!                            ◄──   LoginOk{server_signature} | Error(AuthFailed|LockedOut|TooManySessions)
//!  ── logged in: any command, one reply each ──
//!  Pwd | Cd | Stat | Mkdir | Rmdir | Remove | Rename | Quota | Ping
//!                            ◄──   Cwd | Entry | Ok | Quota | Pong | Error
//!  List{path}                ──►
//!                            ◄──   Entries(..)* ListEnd{total,truncated} | Error
//!  PutStart{path,size,resume}
//!                            ◄──   PutReady{offset,prefix_crc} | Error
//!  PutFrom{offset}           ──►   (offset is 0 or the offered offset)
//!  Chunk(bytes)*             ──►   (exactly size - offset bytes in all)
//!  PutEnd{crc32}             ──►   (CRC32 of the whole file)
//!                            ◄──   PutDone{size,crc32} | Error
//!
//! An upload that fails part-way (disk full, more bytes than announced) is
//! answered with `Error` at once; the server then discards the rest of the
//! upload's chunks up to `PutEnd`, so the session stays usable.
//!  GetStart{path,offset,prefix_crc}
//!                            ◄──   GetReady{size,offset} Chunk(bytes)* GetDone{crc32} | Error
//!  ListFrom{path,from}       ──►   (one page of a walk; from = 0 or a ListPage's next)
//!                            ◄──   Entries(..)* ListPage{next: Some(pos) | None} | Error
//!  RemoveTree{path}          ──►   (rm -r; never the home itself)
//!                            ◄──   Removing{entries}* Ok | Error
//!  Bye                       ──►   (server closes)
//! ```
//!
//! Requests may be pipelined: a client may send the next requests before
//! the replies to earlier ones have arrived (`ftpc get -r` keeps a bounded
//! window of `GetStart`s in flight). The server reads a request only once
//! it has answered the one before, so the later ones wait in the socket's
//! buffers, and replies come in request order.
//!
//! Every request gets exactly one reply (a listing and a download are one
//! reply streamed as several frames). A request the session's state does not
//! allow (anything but `Hello` first, anything but login before login) gets
//! `Error(BadRequest | NotLoggedIn)` and the server closes the connection.
//!
//! # Login
//!
//! SCRAM-shaped (RFC 5802), with scrypt as the key derivation; see
//! [`crate::scram`]. The password never crosses the wire: the client proves
//! it knows `ClientKey`, and the server proves it knows `ServerKey`.
//!
//! # Transfers
//!
//! A transfer carries file bytes in `Chunk` frames on the same connection.
//! Both directions end with the CRC32 of the whole file; a resumed transfer
//! first compares the CRC32 of the prefix both sides already have.
//!
//! The variant order of `Request::Hello`, `Reply::Error` and `Reply::Hello`
//! never changes, so every version can at least say which version it speaks.

use serde::{Deserialize, Serialize};

/// The protocol spoken by this build. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 3;

/// Sent first by every client ("FTPD" in ASCII), so that a stray client of
/// another protocol is told apart from a client of another version.
pub const MAGIC: u32 = 0x4654_5044;

/// Largest frame body either side accepts.
///
/// Large enough for a [`CHUNK_SIZE`] data chunk plus its header, small enough
/// that a receive buffer holding one whole frame stays a modest bound on
/// per-connection memory.
pub const MAX_FRAME: usize = CHUNK_SIZE + 1024;

/// Bytes of file data in one `Chunk` frame. Big chunks cut syscalls and
/// per-frame overhead; 128 KiB matches what the kernel moves per loopback
/// write without splitting.
pub const CHUNK_SIZE: usize = 128 * 1024;

/// Longest user name a client may send.
pub const MAX_USER_LEN: usize = 32;

/// Longest path (in bytes) a client may send.
pub const MAX_PATH_LEN: usize = 1024;

/// Deepest path (in components) the server resolves.
pub const MAX_PATH_DEPTH: usize = 64;

/// Most entries one listing returns; a larger directory is truncated (the
/// first this many in the folder's own order are sent, the rest counted)
/// and `ListEnd::truncated` says so.
pub const MAX_LIST_ENTRIES: usize = 20_000;

/// Entries per `Entries` frame, so a listing streams in bounded pieces.
pub const LIST_BATCH: usize = 256;

/// Length of each side's login nonce, in bytes (192 bits).
pub const NONCE_LEN: usize = 24;

/// Shortest nonce either side accepts from the other: below 128 bits a
/// replayed or predictable challenge becomes plausible.
pub const MIN_NONCE_LEN: usize = 16;

/// Longest nonce the server accepts from a client.
pub const MAX_NONCE_LEN: usize = 64;

/// postcard's variant index of [`Reply::Chunk`], for [`crate::frame::chunk_header`].
pub const REPLY_CHUNK_TAG: u8 = 14;

/// A message from client to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request<'a> {
    /// First message: who we are and which protocol we speak.
    Hello { magic: u32, version: u32 },
    /// First half of the login: the user name and a fresh client nonce.
    LoginStart {
        user: String,
        #[serde(with = "serde_bytes")]
        client_nonce: Vec<u8>,
    },
    /// Second half of the login: `ClientKey XOR ClientSignature`.
    LoginProof {
        #[serde(with = "serde_bytes")]
        proof: Vec<u8>,
    },
    /// Round-trip check.
    Ping,
    /// Current directory.
    Pwd,
    /// Change the current directory.
    Cd { path: String },
    /// List a directory ("" means the current one).
    List { path: String },
    /// Type, size and modification time of one path.
    Stat { path: String },
    /// Create a directory.
    Mkdir { path: String },
    /// Remove an empty directory.
    Rmdir { path: String },
    /// Remove a file.
    Remove { path: String },
    /// Move or rename inside the home; replaces an existing file.
    Rename { from: String, to: String },
    /// Used, reserved and limit of the user's quota.
    Quota,
    /// Announce an upload of `size` bytes. With `resume`, the server offers
    /// to continue an unfinished upload to the same path.
    PutStart {
        path: String,
        size: u64,
        resume: bool,
    },
    /// Start sending at `offset`: 0, or the offset offered by `PutReady`.
    PutFrom { offset: u64 },
    /// File bytes of an upload.
    Chunk(#[serde(with = "serde_bytes", borrow)] &'a [u8]),
    /// After the last chunk: the CRC32 of the whole file as the client read it.
    PutEnd { crc32: u32 },
    /// Ask for a file from `offset`, whose first `offset` bytes have CRC32
    /// `prefix_crc` on the client's side.
    GetStart {
        path: String,
        offset: u64,
        prefix_crc: u32,
    },
    /// End of session.
    Bye,
    /// One page of a folder's listing, for walks: at most
    /// [`MAX_LIST_ENTRIES`] entries from the folder position `from` (0: the
    /// start), answered by `Entries*` and `ListPage`. Unlike `List`, a
    /// folder of any size can be read whole, a page at a time, without the
    /// server holding more than a batch.
    ListFrom { path: String, from: u64 },
    /// Remove a folder and everything in it (or one file), on the server's
    /// helper threads in bounded pieces. The home itself is refused.
    RemoveTree { path: String },
}

/// A message from server to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply<'a> {
    /// The request failed; the session goes on unless the code says otherwise.
    Error { code: ErrorCode, message: String },
    /// Answer to `Hello`.
    Hello { version: u32, server: String },
    /// Login challenge: server nonce and the user's key-derivation settings.
    Challenge {
        #[serde(with = "serde_bytes")]
        server_nonce: Vec<u8>,
        #[serde(with = "serde_bytes")]
        salt: Vec<u8>,
        kdf: KdfParams,
    },
    /// Login accepted; the server's proof that it knows the user's key.
    LoginOk {
        #[serde(with = "serde_bytes")]
        server_signature: Vec<u8>,
    },
    /// Answer to `Ping`.
    Pong,
    /// Success without data.
    Ok,
    /// Current directory, as the user sees it.
    Cwd(String),
    /// Answer to `Stat`.
    Entry(Entry),
    /// A piece of a listing: 1 to [`LIST_BATCH`] entries, in the folder's
    /// own order (clients sort). The decoder
    /// enforces the upper bound, so a frame never expands to more than a
    /// frame's worth of memory; [`Reply::check`] refuses an empty one.
    Entries(#[serde(deserialize_with = "batch_of_entries")] Vec<Entry>),
    /// End of a listing.
    ListEnd { total: u64, truncated: bool },
    /// Answer to `Quota`.
    Quota(QuotaInfo),
    /// Upload accepted; `offset` bytes are already on the server (resume),
    /// and their CRC32 is `prefix_crc`.
    PutReady { offset: u64, prefix_crc: u32 },
    /// Upload complete, verified, synced and published.
    PutDone { size: u64, crc32: u32 },
    /// Download accepted: the file has `size` bytes and chunks start at
    /// `offset` (0 when the client's prefix did not match).
    GetReady { size: u64, offset: u64 },
    /// File bytes of a download; never empty (see [`Reply::check`]).
    Chunk(#[serde(with = "serde_bytes", borrow)] &'a [u8]),
    /// Download complete; CRC32 of the whole file.
    GetDone { crc32: u32 },
    /// End of a `ListFrom` page: where the next page starts, or `None`
    /// when the folder has been read to its end. The position is the
    /// server's own cookie; clients only hand it back.
    ListPage { next: Option<u64> },
    /// A `RemoveTree` is under way: `entries` removed so far. Sent now and
    /// then (never more than one waiting in the send buffer) before the
    /// final `Ok` or `Error`, so a long removal shows progress.
    Removing { entries: u64 },
}

/// Why a request failed, in terms a client can turn into a message and an
/// exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Malformed or out-of-order request.
    BadRequest,
    /// Client and server speak different protocol versions.
    VersionMismatch,
    /// Wrong user name or password (never says which).
    AuthFailed,
    /// Too many failed logins; try again later.
    LockedOut,
    /// A command that needs a login came before one.
    NotLoggedIn,
    /// The server or this user has too many sessions.
    TooManySessions,
    /// The session was idle (or stalled) for too long.
    Timeout,
    /// No such file or directory.
    NotFound,
    /// The target exists already.
    AlreadyExists,
    /// A directory was expected.
    NotADirectory,
    /// A file was expected.
    IsADirectory,
    /// The directory is not empty.
    NotEmpty,
    /// Not allowed (outside the home, a symlink, a special file, ...).
    PermissionDenied,
    /// The user's quota cannot hold this.
    QuotaExceeded,
    /// Someone else is uploading to the same path.
    Busy,
    /// The data did not match its CRC32.
    CrcMismatch,
    /// The transfer broke off (file changed, more bytes than announced, ...).
    TransferFailed,
    /// The server's disk failed (full, I/O error).
    Io,
    /// Anything else on the server's side.
    Internal,
    /// The server is out of a resource (open files, memory) for now.
    Unavailable,
    /// Sent in clear to a client that spoke in clear to a TLS server.
    TlsRequired,
    /// Sent in clear by a `--plaintext` server to a client that began TLS.
    NoTls,
}

/// scrypt settings for one user; bound into the login transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// log2 of scrypt's N.
    pub log_n: u8,
    /// scrypt's block size r.
    pub r: u32,
    /// scrypt's parallelism p.
    pub p: u32,
}

/// What kind of thing a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    /// Shown but never followed.
    Symlink,
    /// FIFOs, sockets, devices: shown but never opened.
    Other,
}

/// One file or directory as a listing or `stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// One name, not a path (`/` for the home itself). At most
    /// [`MAX_PATH_LEN`] bytes: a name on disk has at most 255 bytes, and
    /// at most three times that once invalid UTF-8 is replaced.
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
}

/// Something a well-formed reply carries that a correct server never
/// sends; see [`Reply::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// An `Entries` frame without entries.
    #[error("an empty listing batch")]
    EmptyBatch,
    /// A `Chunk` without bytes.
    #[error("an empty data chunk")]
    EmptyChunk,
    /// An entry whose name is over [`MAX_PATH_LEN`] bytes.
    #[error("a name of {0} bytes (the limit is {MAX_PATH_LEN})")]
    NameTooLong(usize),
}

impl Reply<'_> {
    /// Refuses what a correct server never sends, though it decodes: an
    /// empty listing batch or data chunk, which would let a stream go on
    /// forever without progress, and a name over the length limit, which
    /// would let a listing's 20,000 entries take gigabytes. Both clients
    /// call this on every reply they decode.
    pub fn check(&self) -> Result<(), Violation> {
        let name_fits = |e: &Entry| {
            if e.name.len() > MAX_PATH_LEN {
                return Err(Violation::NameTooLong(e.name.len()));
            }
            Ok(())
        };
        match self {
            Reply::Entries(batch) if batch.is_empty() => Err(Violation::EmptyBatch),
            Reply::Entries(batch) => batch.iter().try_for_each(name_fits),
            Reply::Entry(entry) => name_fits(entry),
            Reply::Chunk([]) => Err(Violation::EmptyChunk),
            _ => Ok(()),
        }
    }
}

/// A user's quota figures, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaInfo {
    /// Bytes stored in the home, including unfinished uploads.
    pub used: u64,
    /// Bytes reserved by uploads in progress, beyond what they wrote so far.
    pub reserved: u64,
    /// The quota.
    pub limit: u64,
    /// Files and folders in the home, unfinished uploads included.
    pub files: u64,
    /// Most files and folders the home may hold, if limited.
    pub max_files: Option<u64>,
}

impl QuotaInfo {
    /// Bytes that a new upload may still reserve.
    pub fn available(&self) -> u64 {
        self.limit
            .saturating_sub(self.used.saturating_add(self.reserved))
    }
}

/// Decodes the entries of one `Entries` frame, refusing more than
/// [`LIST_BATCH`]: a 4-byte entry on the wire is some 48 bytes in memory,
/// and a sender may claim any count, so neither the count nor the frame
/// size may decide how much is allocated.
fn batch_of_entries<'de, D>(decoder: D) -> Result<Vec<Entry>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Batch;

    impl<'de> serde::de::Visitor<'de> for Batch {
        type Value = Vec<Entry>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "at most {LIST_BATCH} directory entries")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<Entry>, A::Error> {
            let claimed = seq.size_hint().unwrap_or(0);
            if claimed > LIST_BATCH {
                return Err(serde::de::Error::invalid_length(claimed, &self));
            }
            let mut entries = Vec::with_capacity(claimed);
            while let Some(entry) = seq.next_element()? {
                if entries.len() == LIST_BATCH {
                    return Err(serde::de::Error::invalid_length(entries.len() + 1, &self));
                }
                entries.push(entry);
            }
            Ok(entries)
        }
    }

    decoder.deserialize_seq(Batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry {
            name: name.into(),
            kind: EntryKind::File,
            size: 0,
            mtime: 0,
        }
    }

    #[test]
    fn check_refuses_what_a_correct_server_never_sends() {
        let longest = "n".repeat(MAX_PATH_LEN);
        for fine in [
            Reply::Entries(vec![entry("a"), entry(&longest)]),
            Reply::Entry(entry("/")),
            Reply::Chunk(b"x"),
            Reply::Ok,
        ] {
            assert_eq!(fine.check(), Ok(()), "{fine:?}");
        }
        let over = format!("{longest}x");
        assert_eq!(
            Reply::Entries(Vec::new()).check(),
            Err(Violation::EmptyBatch)
        );
        assert_eq!(Reply::Chunk(&[]).check(), Err(Violation::EmptyChunk));
        let too_long = Err(Violation::NameTooLong(MAX_PATH_LEN + 1));
        assert_eq!(
            Reply::Entries(vec![entry("a"), entry(&over)]).check(),
            too_long
        );
        assert_eq!(Reply::Entry(entry(&over)).check(), too_long);
    }
}
