//! Property tests that mirror the fuzz targets in `fuzz/`, so the normal
//! `cargo test` on stable Rust checks the same properties: the frame
//! decoder on streams cut anywhere and on garbage, a session driven by
//! arbitrary requests before and after a login, and path resolution with
//! the home jail.
//!
//! The properties themselves are plain functions in `fuzz/src/props.rs`,
//! shared with the fuzz targets; this file brings the proptest strategies
//! and runs the committed seed corpora through the fuzz entry points.
//! Case counts are kept low enough for a debug build (a logged-in session
//! case costs a data folder, a session and a few disk jobs).

#[path = "../fuzz/src/props.rs"]
mod shared;

use std::path::Path;

use ftpd::frame::{self, FrameError, HEADER_LEN};
use ftpd::jail::VPath;
use ftpd::proto::{
    CHUNK_SIZE, Entry, EntryKind, ErrorCode, KdfParams, MAGIC, MAX_FRAME, MAX_PATH_DEPTH,
    PROTOCOL_VERSION, QuotaInfo, Reply, Request,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, TestRunner};

use shared::{JailFixture, MAX_WIRE_FRAME};

/// A proptest configuration with `cases` cases and no regression files
/// written into the source tree (the seed corpora play that part).
fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// Messages with owned payloads, so a strategy can make and keep them.

#[derive(Debug, Clone)]
enum Req {
    Msg(Request<'static>),
    Chunk(Vec<u8>),
}

impl Req {
    fn get(&self) -> Request<'_> {
        match self {
            Req::Msg(r) => r.clone(),
            Req::Chunk(bytes) => Request::Chunk(bytes),
        }
    }
}

#[derive(Debug, Clone)]
enum Rep {
    Msg(Reply<'static>),
    Chunk(Vec<u8>),
}

impl Rep {
    fn get(&self) -> Reply<'_> {
        match self {
            Rep::Msg(r) => r.clone(),
            Rep::Chunk(bytes) => Reply::Chunk(bytes),
        }
    }
}

fn requests(script: &[Req]) -> Vec<Request<'_>> {
    script.iter().map(Req::get).collect()
}

// ---------------------------------------------------------------------------
// Strategies

/// Paths: the tricky ones, names of the test world, plausible and wild
/// strings.
fn path() -> impl Strategy<Value = String> {
    let world = vec(
        select(vec![
            "docs",
            "a.txt",
            "up",
            "link_dir",
            "abs_dir",
            "link_file",
            "bob_link",
            "dotdot",
            "loop",
            "empty",
            "notes.txt",
            "new",
            "x.bin",
            "..",
            ".",
            "",
        ]),
        0..5,
    )
    .prop_map(|parts| parts.join("/"));
    prop_oneof![
        3 => select(shared::tricky_paths()),
        3 => world,
        1 => "/?[a-z.]{0,6}(/[a-z.]{0,6}){0,3}",
        1 => any::<String>(),
    ]
}

fn user() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(shared::USER.to_owned()),
        1 => Just("bob".to_owned()),
        1 => Just(String::new()),
        1 => Just("u".repeat(33)),
        1 => any::<String>(),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0..5_000u64,
        1 => Just(shared::QUOTA),
        1 => any::<u64>(),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

/// Any request, every variant, fields anywhere from right to absurd.
fn any_request() -> impl Strategy<Value = Req> {
    let msg = |r: Request<'static>| Req::Msg(r);
    prop_oneof![
        (
            prop_oneof![Just(MAGIC), any::<u32>()],
            prop_oneof![Just(PROTOCOL_VERSION), any::<u32>()],
        )
            .prop_map(move |(magic, version)| msg(Request::Hello { magic, version })),
        (user(), prop_oneof![vec(any::<u8>(), 24), bytes(80)])
            .prop_map(move |(user, client_nonce)| msg(Request::LoginStart { user, client_nonce })),
        bytes(40).prop_map(move |proof| msg(Request::LoginProof { proof })),
        Just(msg(Request::Ping)),
        Just(msg(Request::Pwd)),
        path().prop_map(move |path| msg(Request::Cd { path })),
        path().prop_map(move |path| msg(Request::List { path })),
        path().prop_map(move |path| msg(Request::Stat { path })),
        path().prop_map(move |path| msg(Request::Mkdir { path })),
        path().prop_map(move |path| msg(Request::Rmdir { path })),
        path().prop_map(move |path| msg(Request::Remove { path })),
        (path(), path()).prop_map(move |(from, to)| msg(Request::Rename { from, to })),
        Just(msg(Request::Quota)),
        (path(), size(), any::<bool>()).prop_map(move |(path, size, resume)| msg(
            Request::PutStart {
                path,
                size,
                resume,
                mtime: None,
                crc32: None,
            }
        )),
        size().prop_map(move |offset| msg(Request::PutFrom { offset })),
        bytes(4096).prop_map(Req::Chunk),
        any::<u32>().prop_map(move |crc32| msg(Request::PutEnd { crc32 })),
        (path(), size(), any::<u32>()).prop_map(move |(path, offset, prefix_crc)| {
            msg(Request::GetStart {
                path,
                offset,
                prefix_crc,
            })
        }),
        Just(msg(Request::Bye)),
    ]
}

/// A whole upload (start, chunks, end), right or wrong in its sizes and
/// checksum, so scripts reach the transfer states. Mostly to a name that
/// can take it: an upload refused at the start makes the rest a breach.
fn upload() -> impl Strategy<Value = Vec<Req>> {
    (
        prop_oneof![3 => "(/|docs/|new/)?[a-c]{1,2}\\.bin", 1 => path()],
        bytes(3000),
        1..4usize,
        any::<bool>(),
        any::<bool>(),
        prop_oneof![4 => Just(0i64), 1 => -3..3i64],
    )
        .prop_map(|(path, data, pieces, good_crc, resume, skew)| {
            let size = (data.len() as u64).saturating_add_signed(skew);
            let crc = crc32fast::hash(&data);
            let mut steps = vec![
                Req::Msg(Request::PutStart {
                    path,
                    size,
                    resume,
                    mtime: None,
                    crc32: None,
                }),
                Req::Msg(Request::PutFrom { offset: 0 }),
            ];
            let per = data.len().div_ceil(pieces).max(1);
            steps.extend(data.chunks(per).map(|c| Req::Chunk(c.to_vec())));
            steps.push(Req::Msg(Request::PutEnd {
                crc32: if good_crc { crc } else { !crc },
            }));
            steps
        })
}

/// Scripts for a logged-in session: mostly commands that keep it open,
/// whole uploads, and now and then anything at all.
fn ready_script() -> impl Strategy<Value = Vec<Req>> {
    let command = prop_oneof![
        Just(Req::Msg(Request::Pwd)),
        Just(Req::Msg(Request::Quota)),
        path().prop_map(|path| Req::Msg(Request::Cd { path })),
        path().prop_map(|path| Req::Msg(Request::List { path })),
        path().prop_map(|path| Req::Msg(Request::Stat { path })),
        path().prop_map(|path| Req::Msg(Request::Mkdir { path })),
        path().prop_map(|path| Req::Msg(Request::Rmdir { path })),
        path().prop_map(|path| Req::Msg(Request::Remove { path })),
        (path(), path()).prop_map(|(from, to)| Req::Msg(Request::Rename { from, to })),
        (
            prop_oneof![
                2 => select(vec!["docs/a.txt", "/notes.txt", "a.bin", "/docs/b.bin"]),
                1 => select(vec!["link_file", "docs/up/bob/bob-secret.txt", "link_dir/outside-secret.txt"]),
            ],
            prop_oneof![Just(0u64), size()],
            any::<u32>(),
        )
            .prop_map(|(path, offset, prefix_crc)| {
                Req::Msg(Request::GetStart {
                    path: path.to_owned(),
                    offset,
                    prefix_crc,
                })
            }),
    ];
    vec(
        prop_oneof![
            6 => command.prop_map(|c| vec![c]),
            2 => upload(),
            1 => any_request().prop_map(|r| vec![r]),
        ],
        0..10,
    )
    .prop_map(|blocks| blocks.into_iter().flatten().take(24).collect())
}

/// Scripts for a fresh session: often a right `Hello` first, then
/// anything, with logins (that cannot succeed) well represented.
fn fresh_script() -> impl Strategy<Value = Vec<Req>> {
    let login = (user(), vec(any::<u8>(), 24), bytes(40)).prop_map(|(user, nonce, proof)| {
        vec![
            Req::Msg(Request::LoginStart {
                user,
                client_nonce: nonce,
            }),
            Req::Msg(Request::LoginProof { proof }),
        ]
    });
    let hello = Req::Msg(Request::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
    });
    (
        prop::bool::weighted(0.8),
        vec(
            prop_oneof![
                3 => any_request().prop_map(|r| vec![r]),
                2 => login,
                1 => Just(vec![Req::Msg(Request::Ping)]),
            ],
            0..12,
        ),
    )
        .prop_map(move |(greet, blocks)| {
            let first = greet.then(|| hello.clone());
            first
                .into_iter()
                .chain(blocks.into_iter().flatten())
                .take(20)
                .collect()
        })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    use ErrorCode::*;
    select(vec![
        BadRequest,
        VersionMismatch,
        AuthFailed,
        LockedOut,
        NotLoggedIn,
        TooManySessions,
        Timeout,
        NotFound,
        AlreadyExists,
        NotADirectory,
        IsADirectory,
        NotEmpty,
        PermissionDenied,
        QuotaExceeded,
        Busy,
        CrcMismatch,
        TransferFailed,
        Io,
        Internal,
        Unavailable,
    ])
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        any::<String>(),
        select(vec![
            EntryKind::File,
            EntryKind::Dir,
            EntryKind::Symlink,
            EntryKind::Other,
        ]),
        any::<u64>(),
        any::<i64>(),
    )
        .prop_map(|(name, kind, size, mtime)| Entry {
            name,
            kind,
            size,
            mtime,
        })
}

/// Any reply, every variant.
fn any_reply() -> impl Strategy<Value = Rep> {
    let msg = |r: Reply<'static>| Rep::Msg(r);
    prop_oneof![
        (error_code(), any::<String>())
            .prop_map(move |(code, message)| msg(Reply::Error { code, message })),
        (any::<u32>(), any::<String>())
            .prop_map(move |(version, server)| msg(Reply::Hello { version, server })),
        (bytes(64), bytes(64), any::<(u8, u32, u32)>()).prop_map(
            move |(server_nonce, salt, (log_n, r, p))| msg(Reply::Challenge {
                server_nonce,
                salt,
                kdf: KdfParams { log_n, r, p },
            })
        ),
        bytes(64).prop_map(move |server_signature| msg(Reply::LoginOk { server_signature })),
        Just(msg(Reply::Pong)),
        Just(msg(Reply::Ok)),
        any::<String>().prop_map(move |c| msg(Reply::Cwd(c))),
        entry().prop_map(move |e| msg(Reply::Entry(e))),
        vec(entry(), 0..8).prop_map(move |e| msg(Reply::Entries(e))),
        (any::<u64>(), any::<bool>())
            .prop_map(move |(total, truncated)| msg(Reply::ListEnd { total, truncated })),
        (any::<(u64, u64, u64)>(), any::<(u64, Option<u64>)>()).prop_map(
            move |((used, reserved, limit), (files, max_files))| msg(Reply::Quota(QuotaInfo {
                used,
                reserved,
                limit,
                files,
                max_files,
            }))
        ),
        (any::<u64>(), any::<u32>())
            .prop_map(move |(offset, prefix_crc)| msg(Reply::PutReady { offset, prefix_crc })),
        (any::<u64>(), any::<u32>())
            .prop_map(move |(size, crc32)| msg(Reply::PutDone { size, crc32 })),
        (any::<u64>(), any::<u64>())
            .prop_map(move |(size, offset)| msg(Reply::GetReady { size, offset })),
        bytes(4096).prop_map(Rep::Chunk),
        any::<u32>().prop_map(move |crc32| msg(Reply::GetDone { crc32 })),
    ]
}

/// Cut points as positions into a stream of `len` bytes.
fn cuts_in(cuts: &[Index], len: usize) -> Vec<usize> {
    cuts.iter().map(|c| c.index(len + 1)).collect()
}

fn stream_len<T: serde::Serialize>(msgs: &[T]) -> usize {
    msgs.iter()
        .map(|m| frame::encode(m).expect("encode").len())
        .sum()
}

/// Garbage, sometimes behind a header whose length fits the garbage
/// (so bodies get parsed), sometimes a header over the limit.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let framed = (bytes(300), 0..8usize).prop_map(|(body, slack)| {
        let len = body.len().saturating_sub(slack) as u32;
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    });
    let oversized = ((MAX_FRAME as u32 + 1).., bytes(16)).prop_map(|(len, tail)| {
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(&tail);
        out
    });
    prop_oneof![2 => bytes(300), 2 => framed, 1 => oversized]
}

// ---------------------------------------------------------------------------
// 1. The frame decoder

proptest! {
    #![proptest_config(config(256))]

    /// Requests of every kind, encoded back to back and read in pieces cut
    /// anywhere, come out the same, in order, with nothing left over.
    #[test]
    fn request_streams_survive_any_cuts(
        script in vec(any_request(), 0..12),
        cuts in vec(any::<Index>(), 0..10),
    ) {
        let msgs = requests(&script);
        let cuts = cuts_in(&cuts, stream_len(&msgs));
        shared::check_request_stream(&msgs, &cuts);
    }

    /// The same for replies.
    #[test]
    fn reply_streams_survive_any_cuts(
        script in vec(any_reply(), 0..12),
        cuts in vec(any::<Index>(), 0..10),
    ) {
        let msgs: Vec<Reply> = script.iter().map(Rep::get).collect();
        let cuts = cuts_in(&cuts, stream_len(&msgs));
        shared::check_reply_stream(&msgs, &cuts);
    }

    /// Garbage, whole or in pieces: never a panic, the decoder's contract
    /// holds at every call, and both readings agree.
    #[test]
    fn garbage_decodes_the_same_whole_or_in_pieces(
        data in garbage(),
        cuts in vec(any::<Index>(), 0..10),
    ) {
        let cuts = cuts_in(&cuts, data.len());
        shared::check_any_stream(&data, &cuts);
    }

    /// A length over the limit is refused from the header alone.
    #[test]
    fn oversized_length_is_refused_before_the_body(len in (MAX_FRAME as u32 + 1)..) {
        let header = len.to_be_bytes();
        prop_assert_eq!(
            frame::decode::<Request>(&header),
            Err(FrameError::TooLarge(len as usize))
        );
    }

    /// The fuzz target's own reading of its input, on random bytes.
    #[test]
    fn fuzz_frames_on_random_bytes(data in bytes(600)) {
        shared::fuzz_frames(&data);
    }
}

/// Short streams: every single cut position, not just sampled ones.
#[test]
fn short_streams_survive_every_cut() {
    let mut runner = TestRunner::new(config(32));
    let strategy = vec(any_request(), 1..5).prop_filter("short", |s| {
        let msgs = requests(s);
        stream_len(&msgs) <= 600
    });
    runner
        .run(&strategy, |script| {
            let msgs = requests(&script);
            for cut in 0..=stream_len(&msgs) {
                shared::check_request_stream(&msgs, &[cut]);
            }
            Ok(())
        })
        .unwrap();
}

/// Encoding refuses exactly the frames over the limit, and every frame it
/// makes decodes back; a whole `CHUNK_SIZE` chunk fits.
#[test]
fn encoder_keeps_to_the_limit() {
    let big = vec![0xa5; MAX_FRAME + 8];
    for len in (MAX_FRAME - 12..=MAX_FRAME + 8).chain([CHUNK_SIZE]) {
        let msg = Request::Chunk(&big[..len]);
        let body = postcard::to_stdvec(&msg).expect("postcard").len();
        match frame::encode(&msg) {
            Ok(out) => {
                assert!(body <= MAX_FRAME, "encoded a body of {body} bytes");
                assert_eq!(out.len(), HEADER_LEN + body);
                assert!(out.len() <= MAX_WIRE_FRAME);
                shared::check_request_stream(&[msg], &[HEADER_LEN, out.len() / 2]);
            }
            Err(e) => {
                assert!(body > MAX_FRAME, "refused a body of {body} bytes: {e}");
                assert_eq!(e, FrameError::TooLarge(body));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 2. The session state machine

proptest! {
    #![proptest_config(config(256))]

    /// Before a login: only errors, greetings, pongs and challenges; no
    /// answer once closing; nothing outside the home touched.
    #[test]
    fn session_before_login(script in fresh_script()) {
        shared::session_fixture().run(&requests(&script), false);
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// After a real login: any commands, uploads and protocol breaches;
    /// nothing outside alice's home changes and no reply shows it.
    #[test]
    fn session_after_login(script in ready_script()) {
        shared::session_fixture().run(&requests(&script), true);
    }

    /// The fuzz target's own reading of its input, on random bytes.
    #[test]
    fn fuzz_session_on_random_bytes(data in bytes(200)) {
        shared::fuzz_session(&data);
    }
}

// ---------------------------------------------------------------------------
// 3. Paths and the jail

/// A current folder: any path that resolves, else the top.
fn cwd() -> impl Strategy<Value = VPath> {
    path().prop_map(|p| VPath::resolve(&VPath::root(), &p).unwrap_or_else(|_| VPath::root()))
}

proptest! {
    #![proptest_config(config(1024))]

    /// Any input from any folder: refused with `BadRequest`, or a clean
    /// absolute path exactly as the rules say.
    #[test]
    fn resolve_gives_clean_paths_or_bad_request(cwd in cwd(), input in path()) {
        shared::check_resolve(&cwd, &input);
    }

    /// Wholly arbitrary text, control characters and all.
    #[test]
    fn resolve_any_text(cwd in cwd(), input in any::<String>()) {
        shared::check_resolve(&cwd, &input);
    }

    /// `..` chains climb one level each and stop at the top; they never
    /// fail on depth, however many there are.
    #[test]
    fn dotdot_chains_clamp_at_the_top(
        depth in 0..=MAX_PATH_DEPTH,
        ups in 0..(MAX_PATH_DEPTH + 20),
        slash in any::<bool>(),
    ) {
        let cwd = VPath::resolve(&VPath::root(), &"d/".repeat(depth)).unwrap();
        let input = if slash { "../".repeat(ups) } else { vec![".."; ups].join("/") };
        let got = VPath::resolve(&cwd, &input).unwrap();
        let mut want = cwd.clone();
        for _ in 0..ups {
            want = want.parent().unwrap_or_else(VPath::root);
        }
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Every path the server accepts can be sent back as it is shown (by
    /// `Pwd`, in listings and messages), e.g. `cd "$(pwd)"`.
    #[test]
    fn long_paths_resolve_back(
        names in vec("[a-z]{200,255}", 5..MAX_PATH_DEPTH),
    ) {
        let mut cwd = VPath::root();
        for name in &names {
            // Going deeper stops where the result would be too long.
            match VPath::resolve(&cwd, name) {
                Ok(deeper) => cwd = deeper,
                Err(e) => {
                    prop_assert_eq!(e.code, ErrorCode::BadRequest);
                    break;
                }
            }
            let shown = cwd.to_string();
            prop_assert_eq!(VPath::resolve(&VPath::root(), &shown), Ok(cwd.clone()));
        }
    }
}

/// A download whose chunks go past the send buffer (as over TLS) arrives
/// whole and in order however much of each the TLS layer takes.
#[test]
fn a_download_past_the_send_buffer_arrives_whole_and_in_order() {
    let take = prop_oneof![
        2 => Just(0usize),
        // Within a chunk's header, or just past it.
        2 => 1usize..16,
        3 => 16usize..(2 * CHUNK_SIZE),
        2 => Just(usize::MAX),
    ];
    let strategy = (vec(take, 1..8), 0usize..(3 * CHUNK_SIZE + 1000));
    TestRunner::new(config(24))
        .run(&strategy, |(takes, size)| {
            shared::download_through_bypass(&takes, size);
            Ok(())
        })
        .unwrap();
}

/// On a real home with symlinks to outside (to a folder, to a file, `..`,
/// absolute, a loop): `stat`, `check_dir`, `list` and `open_read` show only
/// what the tree holds without following a symlink.
#[test]
fn jail_never_follows_a_symlink_out() {
    let fx = JailFixture::new();
    let names = select(vec![
        "docs",
        "a.txt",
        "up",
        "link_dir",
        "abs_dir",
        "link_file",
        "bob_link",
        "dotdot",
        "loop",
        "empty",
        "notes.txt",
        "outside-secret.txt",
        "bob-secret.txt",
        "bob",
        "alice",
        "homes",
        "outside",
        "..",
        ".",
        "",
    ]);
    let input = (any::<bool>(), vec(names, 0..6)).prop_map(|(abs, parts)| {
        let joined = parts.join("/");
        if abs { format!("/{joined}") } else { joined }
    });
    let strategy = (cwd(), prop_oneof![4 => input, 1 => path()]);
    TestRunner::new(config(1024))
        .run(&strategy, |(cwd, input)| {
            fx.check(&cwd, &input);
            Ok(())
        })
        .unwrap();
}

/// The fuzz target's own reading of its input, on random bytes.
#[test]
fn fuzz_paths_on_random_bytes() {
    let fx = JailFixture::new();
    TestRunner::new(config(256))
        .run(&bytes(300), |data| {
            shared::fuzz_paths(&fx, &data);
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------
// The committed seed corpora, through the fuzz targets' entry points.

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("corpus entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("read seed"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

#[test]
fn seed_corpora_pass() {
    for (name, data) in corpus("frames") {
        eprintln!("frames/{name}");
        shared::fuzz_frames(&data);
    }
    for (name, data) in corpus("session") {
        eprintln!("session/{name}");
        shared::fuzz_session(&data);
    }
    let fx = JailFixture::new();
    for (name, data) in corpus("paths") {
        eprintln!("paths/{name}");
        shared::fuzz_paths(&fx, &data);
    }
}
