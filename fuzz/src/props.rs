//! The properties behind the fuzz targets, as plain functions.
//!
//! Each target in `fuzz_targets/` hands its raw bytes to one of the
//! `fuzz_*` entry points here; `tests/props.rs` includes this same file
//! with `#[path]` and checks the same properties with proptest, on stable
//! Rust, in the normal `cargo test`. A violated property panics with a
//! message, which is what both libFuzzer and proptest report.
//!
//! Only `ftpd`, `postcard`, `tempfile` and std are used here: both crates
//! have them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ftpd::frame::{self, FrameError, HEADER_LEN};
use ftpd::jail::{Jail, PARTIAL_DIR, VPath};
use ftpd::proto::{
    EntryKind, ErrorCode, KdfParams, MAGIC, MAX_FRAME, MAX_PATH_DEPTH, MAX_PATH_LEN, NONCE_LEN,
    PROTOCOL_VERSION, Reply, Request,
};
use ftpd::scram::{self, ClientKeys, Transcript};
use ftpd::server::harness::Harness;
use ftpd::users::{HOMES_DIR, SECRET_FILE, USERS_FILE, User, UserDb};

// ---------------------------------------------------------------------------
// Frames

/// Longest frame [`frame::decode`] may ever take: the header and the
/// biggest body.
pub const MAX_WIRE_FRAME: usize = HEADER_LEN + MAX_FRAME;

/// What reading a byte stream frame by frame came to.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    /// The length of each frame decoded, in order.
    pub frames: Vec<usize>,
    /// How the stream ended.
    pub end: End,
}

/// How a stream of frames ended.
#[derive(Debug, PartialEq)]
pub enum End {
    /// Every frame decoded; this many bytes wait for the rest of a frame.
    Waiting(usize),
    /// A frame was refused (a reader closes the connection here).
    Failed(FrameError),
}

/// The declared body length of the frame at the front of `buf`, if its
/// header is complete.
fn declared(buf: &[u8]) -> Option<usize> {
    buf.first_chunk::<HEADER_LEN>()
        .map(|h| u32::from_be_bytes(*h) as usize)
}

/// [`frame::decode`], checked against its contract: "need more" only while
/// the frame is incomplete, an over-long prefix refused from the header
/// alone, and never more bytes taken than given or than one frame may hold.
pub fn decode_checked<'a, T: serde::Deserialize<'a> + std::fmt::Debug>(
    buf: &'a [u8],
) -> Result<Option<(T, usize)>, FrameError> {
    let result = frame::decode::<T>(buf);
    let len = declared(buf);
    match (&result, len) {
        (Ok(None), None) => {}
        (Ok(None), Some(len)) => assert!(
            len <= MAX_FRAME && buf.len() < HEADER_LEN + len,
            "decode wants more, but {} bytes hold a whole frame of {len}",
            buf.len()
        ),
        (Ok(Some((_, n))), Some(len)) => {
            assert_eq!(*n, HEADER_LEN + len, "decode took a different length");
            assert!(*n <= buf.len(), "decode took {n} of {} bytes", buf.len());
            assert!(*n <= MAX_WIRE_FRAME, "decode took a frame of {n} bytes");
        }
        (Err(FrameError::TooLarge(got)), Some(len)) => {
            assert_eq!(*got, len, "TooLarge names another length");
            assert!(len > MAX_FRAME, "TooLarge for {len} bytes");
        }
        (Err(FrameError::Malformed(_) | FrameError::Trailing(_)), Some(len)) => {
            assert!(
                len <= MAX_FRAME && buf.len() >= HEADER_LEN + len,
                "body refused before it was all there"
            );
            if let Err(FrameError::Trailing(rest)) = &result {
                assert!(*rest > 0 && *rest <= len, "{rest} trailing bytes of {len}");
            }
        }
        (other, None) => panic!("decode of {} bytes gave {other:?}", buf.len()),
    }
    result
}

/// Reads `stream` as a server does: the bytes arrive in pieces cut at
/// `cuts` (positions into `stream`, in any order, clamped), each piece is
/// appended to a receive buffer, every complete frame is decoded with
/// `decode`, and what is left waits for the next piece.
///
/// Checks that what waits is always less than one maximal frame, so a
/// receive buffer of [`MAX_WIRE_FRAME`] bytes never overflows.
pub fn read_in_pieces(
    stream: &[u8],
    cuts: &[usize],
    mut decode: impl FnMut(&[u8]) -> Result<Option<usize>, FrameError>,
) -> Outcome {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(stream.len())).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut rx = Vec::new();
    let mut frames = Vec::new();
    let mut from = 0;
    for cut in cuts {
        rx.extend_from_slice(&stream[from..cut]);
        from = cut;
        let mut used = 0;
        loop {
            match decode(&rx[used..]) {
                Ok(Some(n)) => {
                    frames.push(n);
                    used += n;
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        frames,
                        end: End::Failed(e),
                    };
                }
            }
        }
        rx.drain(..used);
        assert!(
            rx.len() < MAX_WIRE_FRAME,
            "{} bytes wait for a frame, more than any frame holds",
            rx.len()
        );
    }
    Outcome {
        frames,
        end: End::Waiting(rx.len()),
    }
}

/// Decodes a frame as a `Request`, checked; returns its length.
pub fn request_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    decode_checked::<Request>(buf).map(|m| m.map(|(_, n)| n))
}

/// Decodes a frame as a `Reply`, checked; returns its length.
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    decode_checked::<Reply>(buf).map(|m| m.map(|(_, n)| n))
}

/// Any bytes, read whole and read in pieces, as requests and as replies:
/// the same frames and the same ending either way, and no panic.
pub fn check_any_stream(stream: &[u8], cuts: &[usize]) {
    for decode in [request_len, reply_len] {
        let whole = read_in_pieces(stream, &[], decode);
        let pieces = read_in_pieces(stream, cuts, decode);
        assert_eq!(whole, pieces, "cut at {cuts:?}");
    }
}

/// Encodes `msgs` as one stream, reads it back in pieces cut at `cuts`, and
/// checks that the same messages come out, in order, with nothing left.
pub fn check_request_stream(msgs: &[Request<'_>], cuts: &[usize]) {
    let mut stream = Vec::new();
    for m in msgs {
        frame::encode_into(m, &mut stream).expect("encode");
    }
    let mut next = 0;
    let outcome = read_in_pieces(&stream, cuts, |buf| {
        Ok(decode_checked::<Request>(buf)?.map(|(msg, n)| {
            assert_eq!(Some(&msg), msgs.get(next), "request {next}");
            next += 1;
            n
        }))
    });
    assert_eq!(outcome.end, End::Waiting(0));
    assert_eq!(next, msgs.len());
    assert_eq!(outcome, read_in_pieces(&stream, &[], request_len));
}

/// [`check_request_stream`] for replies.
pub fn check_reply_stream(msgs: &[Reply<'_>], cuts: &[usize]) {
    let mut stream = Vec::new();
    for m in msgs {
        frame::encode_into(m, &mut stream).expect("encode");
    }
    let mut next = 0;
    let outcome = read_in_pieces(&stream, cuts, |buf| {
        Ok(decode_checked::<Reply>(buf)?.map(|(msg, n)| {
            assert_eq!(Some(&msg), msgs.get(next), "reply {next}");
            next += 1;
            n
        }))
    });
    assert_eq!(outcome.end, End::Waiting(0));
    assert_eq!(next, msgs.len());
    assert_eq!(outcome, read_in_pieces(&stream, &[], reply_len));
}

/// Splits fuzz input into cut points and the rest: the first byte says how
/// many cuts, each cut is the next two bytes (little-endian).
fn split_cuts(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let take = (usize::from(count % 16) * 2).min(rest.len() & !1);
    let (head, stream) = rest.split_at(take);
    let cuts = head
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    (cuts, stream)
}

/// Messages of type `T` back to back in postcard, without frames: the
/// form the fuzz targets take their scripts in, so that a mutation of one
/// message does not break the framing of all the others. Stops at the
/// first byte that does not decode, or after `max` messages.
pub fn parse_messages<'a, T: serde::Deserialize<'a>>(mut data: &'a [u8], max: usize) -> Vec<T> {
    let mut out = Vec::new();
    while !data.is_empty() && out.len() < max {
        match postcard::take_from_bytes::<T>(data) {
            Ok((msg, rest)) => {
                out.push(msg);
                data = rest;
            }
            Err(_) => break,
        }
    }
    out
}

/// Fuzz target `frames`: the input is cut points and a stream. The stream
/// is decoded as raw frames (whole and in pieces), and its messages are
/// parsed, framed and read back in pieces.
pub fn fuzz_frames(data: &[u8]) {
    let (cuts, stream) = split_cuts(data);
    check_any_stream(stream, &cuts);
    // Messages parsed from at most a few KiB of input re-encode far below
    // the limit; the filter only keeps a pathological input from failing
    // in `encode` instead of in the property.
    let mut requests: Vec<Request> = parse_messages(stream, 64);
    requests.retain(|m| frame::encode(m).is_ok());
    check_request_stream(&requests, &cuts);
    let mut replies: Vec<Reply> = parse_messages(stream, 64);
    replies.retain(|m| frame::encode(m).is_ok());
    check_reply_stream(&replies, &cuts);
}

// ---------------------------------------------------------------------------
// A small world on disk: a data folder with alice's home, a symlink or two
// leading out of it, another user's home and files outside every home.

/// The user whose home the session and jail checks work in.
pub const USER: &str = "alice";
/// alice's password.
pub const PASSWORD: &str = "correct horse battery";
/// alice's quota: small, so that uploads run into it.
pub const QUOTA: u64 = 256 * 1024;
/// Content of the file outside every home.
pub const OUTSIDE_SECRET: &str = "OUTSIDE-SECRET-3f9a1c";
/// Content of the file in bob's home.
pub const BOB_SECRET: &str = "BOB-SECRET-77c1e0";
/// Names of the files alice must never see.
pub const SECRET_NAMES: [&str; 2] = ["outside-secret.txt", "bob-secret.txt"];

/// Paths that poke at the jail: through the symlinks of the world, up past
/// the top, at the hidden partial folder, with refused characters, too
/// long, too deep.
pub fn tricky_paths() -> Vec<String> {
    let mut paths: Vec<String> = [
        "",
        "/",
        ".",
        "..",
        "../..",
        "/..",
        "/../../outside/outside-secret.txt",
        "../bob/bob-secret.txt",
        "docs",
        "docs/a.txt",
        "/docs/./a.txt",
        "docs/up",
        "docs/up/bob",
        "docs/up/bob/bob-secret.txt",
        "link_dir",
        "link_dir/outside-secret.txt",
        "abs_dir/outside-secret.txt",
        "link_file",
        "dotdot/alice",
        "loop",
        "loop/x",
        "bob_link/bob-secret.txt",
        "empty",
        "new",
        "new/sub",
        "x.bin",
        PARTIAL_DIR,
        ".ftpd-partial/x.part",
        "a\0b",
        "a\\..\\b",
        "a\nb",
        "\u{202e}txt",
        "é/ü",
        "//a//b//",
        "a/./b/../c",
        "...",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    paths.push("n".repeat(256));
    paths.push("d/".repeat(MAX_PATH_DEPTH + 1));
    paths.push("../".repeat(MAX_PATH_DEPTH + 5));
    paths.push("a".repeat(MAX_PATH_LEN + 1));
    paths
}

/// Builds the world in `root` and returns alice's home:
///
/// ```text
/// users.json (not here: the caller's business)
/// outside/outside-secret.txt          OUTSIDE_SECRET
/// homes/bob/bob-secret.txt            BOB_SECRET
/// homes/alice/docs/a.txt, notes.txt, empty/
/// homes/alice/link_dir  -> ../../outside          (relative, to a folder)
/// homes/alice/abs_dir   -> ROOT/outside           (absolute)
/// homes/alice/link_file -> ../../outside/outside-secret.txt
/// homes/alice/bob_link  -> ../bob
/// homes/alice/dotdot    -> ..
/// homes/alice/docs/up   -> ../..
/// homes/alice/loop      -> loop
/// ```
pub fn build_world(root: &Path) -> PathBuf {
    let outside = root.join("outside");
    let homes = root.join(HOMES_DIR);
    let home = homes.join(USER);
    for dir in [
        &outside,
        &homes.join("bob"),
        &home.join("docs"),
        &home.join("empty"),
    ] {
        fs::create_dir_all(dir).expect("mkdir");
    }
    // Sizes differ from every file in the home, so a size would tell too.
    fs::write(outside.join(SECRET_NAMES[0]), OUTSIDE_SECRET.repeat(7)).expect("write");
    fs::write(
        homes.join("bob").join(SECRET_NAMES[1]),
        BOB_SECRET.repeat(5),
    )
    .expect("write");
    fs::write(home.join("docs/a.txt"), "inside a\n").expect("write");
    fs::write(home.join("notes.txt"), "notes of alice\n").expect("write");
    let links: [(&str, PathBuf); 7] = [
        ("link_dir", "../../outside".into()),
        ("abs_dir", outside.clone()),
        ("link_file", "../../outside/outside-secret.txt".into()),
        ("bob_link", "../bob".into()),
        ("dotdot", "..".into()),
        ("docs/up", "../..".into()),
        ("loop", "loop".into()),
    ];
    for (name, target) in links {
        symlink(target, home.join(name)).expect("symlink");
    }
    home
}

/// A file or folder as [`outside_tree`] records it.
#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
    Other,
}

/// Everything in the data folder `root` except alice's home (recorded as a
/// folder, not entered) and the files the server itself writes.
pub fn outside_tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let home = root.join(HOMES_DIR).join(USER);
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for item in fs::read_dir(&dir).expect("read_dir") {
            let path = item.expect("dir entry").path();
            let rel = path.strip_prefix(root).expect("below root").to_path_buf();
            if dir == root && (rel == Path::new(USERS_FILE) || rel == Path::new(SECRET_FILE)) {
                continue;
            }
            let meta = fs::symlink_metadata(&path).expect("lstat");
            let node = if meta.file_type().is_symlink() {
                Node::Link(fs::read_link(&path).expect("readlink"))
            } else if meta.is_dir() {
                if path != home {
                    todo.push(path.clone());
                }
                Node::Dir
            } else if meta.is_file() {
                Node::File(fs::read(&path).expect("read"))
            } else {
                Node::Other
            };
            out.insert(rel, node);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Sessions

/// What every session check shares: alice's entry in `users.json`, and her
/// client keys, derived once (scrypt is the slow part of a login; the salt
/// and settings stay the same for every copy of the file).
pub struct SessionFixture {
    users_json: Vec<u8>,
    keys: ClientKeys,
}

/// The fixture, made on first use.
pub fn session_fixture() -> &'static SessionFixture {
    static FIXTURE: OnceLock<SessionFixture> = OnceLock::new();
    FIXTURE.get_or_init(SessionFixture::new)
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a request carries `needle` in one of its fields; a reply may
/// echo only what the client said.
fn mentions(req: &Request<'_>, needle: &[u8]) -> bool {
    let has = |s: &[u8]| contains(s, needle);
    match req {
        Request::LoginStart { user, client_nonce } => has(user.as_bytes()) || has(client_nonce),
        Request::LoginProof { proof } => has(proof),
        Request::Cd { path }
        | Request::List { path }
        | Request::Stat { path }
        | Request::Mkdir { path }
        | Request::Rmdir { path }
        | Request::Remove { path }
        | Request::PutStart { path, .. }
        | Request::GetStart { path, .. }
        | Request::ListFrom { path, .. }
        | Request::RemoveTree { path } => has(path.as_bytes()),
        Request::Rename { from, to } => has(from.as_bytes()) || has(to.as_bytes()),
        Request::Chunk(bytes) => has(bytes),
        Request::PutSmall { path, data, .. } => has(path.as_bytes()) || has(data),
        Request::Hello { .. }
        | Request::Ping
        | Request::Pwd
        | Request::Quota
        | Request::PutFrom { .. }
        | Request::PutEnd { .. }
        | Request::Bye => false,
    }
}

/// Every frame in `out`, which must be whole, valid reply frames.
fn replies(out: &[u8]) -> Vec<Reply<'_>> {
    let mut all = Vec::new();
    let mut used = 0;
    while used < out.len() {
        match frame::decode::<Reply>(&out[used..]) {
            Ok(Some((reply, n))) => {
                all.push(reply);
                used += n;
            }
            other => panic!("broken reply frame at byte {used}: {other:?}"),
        }
    }
    all
}

/// What a session may say before a login succeeded.
fn allowed_before_login(reply: &Reply<'_>) -> bool {
    matches!(
        reply,
        Reply::Error { .. } | Reply::Hello { .. } | Reply::Pong | Reply::Challenge { .. }
    )
}

impl SessionFixture {
    fn new() -> SessionFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let kdf = KdfParams {
            log_n: 14,
            ..scram::DEFAULT_KDF
        };
        let stored = scram::stored_keys(PASSWORD.as_bytes(), kdf).expect("stored keys");
        let keys = scram::client_keys(PASSWORD.as_bytes(), &stored.salt, &kdf).expect("kdf");
        let mut db = UserDb::default();
        db.insert(User {
            name: USER.to_owned(),
            quota: QUOTA,
            max_files: None,
            keys: stored,
        });
        db.save(dir.path()).expect("save users");
        let users_json = fs::read(dir.path().join(USERS_FILE)).expect("read users");
        SessionFixture { users_json, keys }
    }

    /// A fresh data folder holding the world and alice's account.
    pub fn data_dir(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        build_world(dir.path());
        fs::write(dir.path().join(USERS_FILE), &self.users_json).expect("write users");
        dir
    }

    /// Logs `h` in as alice, checking every step and the server's proof.
    pub fn log_in(&self, h: &mut Harness) {
        let out = h.feed(Request::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
        });
        let hello = replies(&out);
        assert!(
            matches!(&hello[..], [Reply::Hello { version, .. }] if *version == PROTOCOL_VERSION),
            "hello: {hello:?}"
        );
        let client_nonce = [0x5a; NONCE_LEN];
        let out = h.feed(Request::LoginStart {
            user: USER.to_owned(),
            client_nonce: client_nonce.to_vec(),
        });
        let challenge = replies(&out);
        let [
            Reply::Challenge {
                server_nonce,
                salt,
                kdf,
            },
        ] = &challenge[..]
        else {
            panic!("login start: {challenge:?}");
        };
        let auth = Transcript {
            user: USER,
            client_nonce: &client_nonce,
            server_nonce,
            salt,
            kdf: *kdf,
            // The harness has no transport: a plaintext session.
            channel_binding: None,
        }
        .auth_message();
        let proof = scram::client_proof(&self.keys, &auth).to_vec();
        let out = h.feed(Request::LoginProof { proof });
        match &replies(&out)[..] {
            [Reply::LoginOk { server_signature }] => assert!(
                scram::verify_server_signature(&self.keys, &auth, server_signature),
                "server signature"
            ),
            other => panic!("login proof: {other:?}"),
        }
        assert!(h.logged_in() && !h.closing());
    }

    /// Runs `script` against a fresh session (logged in first if
    /// `log_in`), and checks:
    ///
    /// - the session never panics and only ever sends whole reply frames;
    /// - before a login succeeds, it only answers `Error`, `Hello`, `Pong`
    ///   or `Challenge` (or `LoginOk`, for the login that succeeds);
    /// - once it decided to close, it answers nothing more;
    /// - no reply carries a secret name or content from outside the home,
    ///   or the server's path of the data folder, unless the script said it;
    /// - nothing outside alice's home changed.
    pub fn run(&self, script: &[Request<'_>], log_in: bool) {
        let data = self.data_dir();
        let root = data.path();
        let before = outside_tree(root);
        let root_text = root.to_string_lossy().into_owned();
        let needles: Vec<&[u8]> = [OUTSIDE_SECRET, BOB_SECRET, root_text.as_str()]
            .into_iter()
            .chain(SECRET_NAMES)
            .map(str::as_bytes)
            .collect();
        let said: Vec<u8> = script
            .iter()
            .filter_map(|r| match r {
                Request::Chunk(b) => Some(*b),
                _ => None,
            })
            .flatten()
            .copied()
            .collect();
        let echo_ok =
            |needle: &[u8]| contains(&said, needle) || script.iter().any(|r| mentions(r, needle));
        {
            let mut h = Harness::new(root).expect("harness");
            if log_in {
                self.log_in(&mut h);
            }
            for (i, req) in script.iter().enumerate() {
                let was_closing = h.closing();
                let was_in = h.logged_in();
                let out = h.feed(req.clone());
                if was_closing {
                    assert!(out.is_empty(), "request {i} {req:?} answered after closing");
                }
                for reply in replies(&out) {
                    let login_ok = matches!(reply, Reply::LoginOk { .. }) && h.logged_in();
                    assert!(
                        was_in || allowed_before_login(&reply) || login_ok,
                        "request {i} {req:?} got {reply:?} before a login"
                    );
                }
                for needle in &needles {
                    assert!(
                        !contains(&out, needle) || echo_ok(needle),
                        "request {i} {req:?}: reply shows {:?}",
                        String::from_utf8_lossy(needle)
                    );
                }
            }
        }
        let after = outside_tree(root);
        assert_eq!(before, after, "something outside the home changed");
    }
}

/// A download of a file of `size` bytes through a session whose chunks may
/// go past the send buffer (as over TLS) into a stand-in that takes as
/// many bytes as `takes` says, call after call: whatever it takes or
/// refuses, the client receives `GetReady`, chunks that are exactly the
/// file, in order, and a `GetDone` with the file's CRC32.
pub fn download_through_bypass(takes: &[usize], size: usize) {
    let fx = session_fixture();
    let data = fx.data_dir();
    let content: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(7919) >> 3) as u8)
        .collect();
    let home = data.path().join(HOMES_DIR).join(USER);
    fs::write(home.join("big.bin"), &content).expect("write");
    let mut h = Harness::with_bypass(data.path(), takes.to_vec()).expect("harness");
    fx.log_in(&mut h);
    let out = h.feed(Request::GetStart {
        path: "/big.bin".to_owned(),
        offset: 0,
        prefix_crc: 0,
    });
    let all = replies(&out);
    let Some((
        Reply::GetReady {
            size: told,
            offset: 0,
        },
        rest,
    )) = all.split_first()
    else {
        panic!("get start: {:?}", all.first());
    };
    assert_eq!(*told, size as u64);
    let Some((Reply::GetDone { crc32 }, chunks)) = rest.split_last() else {
        panic!("no GetDone at the end: {:?}", rest.last());
    };
    let mut got = Vec::with_capacity(size);
    for reply in chunks {
        match reply {
            Reply::Chunk(bytes) => got.extend_from_slice(bytes),
            other => panic!("expected a chunk, got {other:?}"),
        }
    }
    assert!(
        got == content,
        "the chunks are not the file ({} of {size} bytes)",
        got.len()
    );
    assert_eq!(*crc32, crc32fast::hash(&content));
}

/// Fuzz target `session`: the first byte's low bit says whether to log in
/// first; the rest is the script, requests back to back in postcard.
pub fn fuzz_session(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let script: Vec<Request> = parse_messages(rest, 64);
    session_fixture().run(&script, mode & 1 == 1);
}

// ---------------------------------------------------------------------------
// Paths

/// The components of `p`, found through `file_name` and `parent` (not its
/// display), so a `/` inside a name would show.
pub fn components(p: &VPath) -> Vec<String> {
    let mut names = Vec::new();
    let mut cur = p.clone();
    while let Some(name) = cur.file_name() {
        names.push(name.to_owned());
        cur = cur.parent().expect("a path with a name has a parent");
    }
    assert!(cur.is_root(), "walking up ended at {cur}");
    names.reverse();
    names
}

/// What `VPath` promises of every value: plain names only, not too many,
/// and a display of "/" followed by the names.
pub fn check_vpath(p: &VPath) {
    let names = components(p);
    assert!(names.len() <= MAX_PATH_DEPTH, "{p}: too deep");
    for name in &names {
        assert!(
            !name.is_empty()
                && name != "."
                && name != ".."
                && name != PARTIAL_DIR
                && name.len() <= 255
                && !name.contains(['/', '\\', '\0'])
                && !name.chars().any(char::is_control),
            "{p:?}: bad component {name:?}"
        );
    }
    let shown = p.to_string();
    assert!(shown.starts_with('/'), "{shown}");
    assert_eq!(shown, format!("/{}", names.join("/")));
    assert_eq!(p.is_root(), names.is_empty());
}

/// The rules of `VPath::resolve`, spelled out plainly: `None` where it
/// must refuse (with `BadRequest`), else the components it must give.
pub fn model_resolve(cwd: &[String], input: &str) -> Option<Vec<String>> {
    let bad_char = |c: char| c == '\0' || c == '\\' || c.is_control();
    if input.len() > MAX_PATH_LEN || input.contains(bad_char) {
        return None;
    }
    let mut names = if input.starts_with('/') {
        Vec::new()
    } else {
        cwd.to_vec()
    };
    for part in input.split('/') {
        match part {
            "" | "." => {}
            // At the top, `..` stays at the top.
            ".." => {
                names.pop();
            }
            name if name == PARTIAL_DIR || name.len() > 255 => return None,
            name => names.push(name.to_owned()),
        }
    }
    let shown_len: usize = names.iter().map(|n| n.len() + 1).sum();
    (names.len() <= MAX_PATH_DEPTH && shown_len <= MAX_PATH_LEN).then_some(names)
}

/// `VPath::resolve(cwd, input)` agrees with [`model_resolve`], errs only
/// with `BadRequest`, gives a [`check_vpath`]-clean path, and that path
/// resolves to itself from anywhere; `..` from `cwd` is its parent (or the
/// top).
pub fn check_resolve(cwd: &VPath, input: &str) {
    check_vpath(cwd);
    let cwd_names = components(cwd);
    let want = model_resolve(&cwd_names, input);
    match VPath::resolve(cwd, input) {
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{input:?}: {e}");
            assert_eq!(want, None, "{input:?} from {cwd} refused: {e}");
        }
        Ok(p) => {
            check_vpath(&p);
            assert_eq!(Some(components(&p)), want, "{input:?} from {cwd}");
            // Results obey the input's length cap, so every path shown can
            // be sent back as it is.
            let shown = p.to_string();
            assert_eq!(VPath::resolve(&VPath::root(), &shown).as_ref(), Ok(&p));
            assert_eq!(VPath::resolve(cwd, &shown).as_ref(), Ok(&p));
        }
    }
    let up = VPath::resolve(cwd, "..").expect("`..` is always fine");
    assert_eq!(up, cwd.parent().unwrap_or_else(VPath::root));
}

/// A home in the world of [`build_world`], opened as a jail.
pub struct JailFixture {
    _dir: tempfile::TempDir,
    home: PathBuf,
    jail: Jail,
}

/// How a resolved path meets the real folder tree, walked with `lstat`.
enum Reach {
    /// A folder on the way is missing, a symlink or not a folder: the jail
    /// must refuse (or not find) it.
    Blocked,
    /// The folders on the way are real; the last name is missing.
    Missing,
    /// The last name exists; its `lstat`.
    Found(fs::Metadata),
}

impl Default for JailFixture {
    fn default() -> Self {
        JailFixture::new()
    }
}

impl JailFixture {
    /// A new world in a temporary folder.
    pub fn new() -> JailFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = build_world(dir.path());
        let jail = Jail::open(&home).expect("open jail (Linux 5.6+ needed)");
        JailFixture {
            _dir: dir,
            home,
            jail,
        }
    }

    fn reach(&self, names: &[String]) -> Reach {
        let mut path = self.home.clone();
        for (i, name) in names.iter().enumerate() {
            path.push(name);
            match fs::symlink_metadata(&path) {
                Ok(meta) if i + 1 == names.len() => return Reach::Found(meta),
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Reach::Blocked,
                Err(_) if i + 1 == names.len() => return Reach::Missing,
                Err(_) => return Reach::Blocked,
            }
        }
        Reach::Found(fs::symlink_metadata(&path).expect("home"))
    }

    /// Resolves `input` from `cwd` and, if that works, reads what the jail
    /// lets through: `stat`, `check_dir`, `list` and `open_read` must match
    /// the real tree walked without following any symlink, so a symlink
    /// out of the home is shown as a symlink and never followed.
    pub fn check(&self, cwd: &VPath, input: &str) {
        let Ok(p) = VPath::resolve(cwd, input) else {
            return;
        };
        let names = components(&p);
        let reach = self.reach(&names);
        let real = |meta: &fs::Metadata| meta.is_dir() && !meta.file_type().is_symlink();

        match (self.jail.stat(&p), &reach) {
            (Ok(entry), Reach::Found(meta)) => {
                let kind = if meta.file_type().is_symlink() {
                    EntryKind::Symlink
                } else if meta.is_dir() {
                    EntryKind::Dir
                } else if meta.is_file() {
                    EntryKind::File
                } else {
                    EntryKind::Other
                };
                assert_eq!(entry.kind, kind, "stat {p}");
                if kind == EntryKind::File {
                    assert_eq!(entry.size, meta.len(), "stat {p}");
                }
            }
            (Ok(entry), _) => panic!("stat {p} gave {entry:?} beyond a symlink"),
            (Err(e), Reach::Found(_)) => panic!("stat {p} failed: {e}"),
            (Err(_), _) => {}
        }

        let is_dir = matches!(&reach, Reach::Found(m) if real(m));
        assert_eq!(self.jail.check_dir(&p).is_ok(), is_dir, "check_dir {p}");

        match self.jail.list(&p, 100) {
            Ok((entries, total, _)) => {
                assert!(is_dir, "list {p} worked beyond a symlink");
                let dir = self.home.join(names.join("/"));
                let mut want: Vec<String> = fs::read_dir(&dir)
                    .expect("read_dir")
                    .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                    .filter(|n| !(p.is_root() && n == PARTIAL_DIR))
                    .collect();
                want.sort();
                let got: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
                assert_eq!(got, want, "list {p}");
                assert_eq!(total, want.len() as u64);
            }
            Err(e) => assert!(!is_dir, "list {p} failed: {e}"),
        }

        let is_file = matches!(&reach, Reach::Found(m) if m.is_file());
        match self.jail.open_read(&p) {
            Ok((mut file, size, _)) => {
                assert!(is_file, "open_read {p} opened what is not a file here");
                let mut got = Vec::new();
                file.read_to_end(&mut got).expect("read");
                assert_eq!(got.len() as u64, size);
                let want = fs::read(self.home.join(names.join("/"))).expect("read");
                assert_eq!(got, want, "open_read {p}");
                assert!(!contains(&got, OUTSIDE_SECRET.as_bytes()));
            }
            Err(e) => assert!(!is_file, "open_read {p} failed: {e}"),
        }
    }
}

/// Fuzz target `paths`: the first byte is the length of the current
/// folder's text, then that text, then the input; both are taken as UTF-8
/// (lossily), as the wire carries only valid UTF-8.
pub fn fuzz_paths(jail: &JailFixture, data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (cwd, input) = rest.split_at(usize::from(n).min(rest.len()));
    let cwd = VPath::resolve(&VPath::root(), &String::from_utf8_lossy(cwd))
        .unwrap_or_else(|_| VPath::root());
    let input = String::from_utf8_lossy(input);
    check_resolve(&cwd, &input);
    jail.check(&cwd, &input);
}
