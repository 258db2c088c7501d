//! Writes the seed corpora in `fuzz/corpus/<target>/`: small inputs in each
//! target's own format that reach the interesting states (a whole session,
//! an upload, a download, paths through the symlinks of the test world).
//!
//! `cd fuzz && cargo run --example seeds` rewrites them; `tests/props.rs`
//! runs every seed through its target's checks in `cargo test`.

use std::fs;
use std::path::Path;

use ftpd::frame;
use ftpd::proto::{ErrorCode, MAGIC, MAX_FRAME, NONCE_LEN, PROTOCOL_VERSION, Reply, Request};

fn hello() -> Request<'static> {
    Request::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
    }
}

fn login_start(user: &str) -> Request<'static> {
    Request::LoginStart {
        user: user.to_owned(),
        client_nonce: vec![0x5a; NONCE_LEN],
    }
}

fn path(p: &str) -> String {
    p.to_owned()
}

/// Requests back to back in postcard, as the `session` target reads them.
fn bare(msgs: &[Request]) -> Vec<u8> {
    msgs.iter()
        .flat_map(|m| postcard::to_stdvec(m).expect("postcard"))
        .collect()
}

/// Frames back to back, as they travel.
fn framed<T: serde::Serialize>(msgs: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        frame::encode_into(m, &mut out).expect("encode");
    }
    out
}

/// A `frames` input: the cut count and cuts, then the stream.
fn with_cuts(cuts: &[u16], stream: &[u8]) -> Vec<u8> {
    let mut out = vec![cuts.len() as u8];
    for c in cuts {
        out.extend_from_slice(&c.to_le_bytes());
    }
    out.extend_from_slice(stream);
    out
}

/// A `session` input: the mode byte (1: log in first), then the script.
fn session(log_in: bool, msgs: &[Request]) -> Vec<u8> {
    let mut out = vec![u8::from(log_in)];
    out.extend(bare(msgs));
    out
}

/// A `paths` input: the current folder's length and text, then the input.
fn paths(cwd: &str, input: &str) -> Vec<u8> {
    let mut out = vec![cwd.len() as u8];
    out.extend_from_slice(cwd.as_bytes());
    out.extend_from_slice(input.as_bytes());
    out
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    fs::write(dir.join(name), data).expect("write seed");
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let dir = |t: &str| {
        let d = corpus.join(t);
        fs::create_dir_all(&d).expect("mkdir");
        d
    };

    let upload = [
        Request::PutStart {
            path: path("x.bin"),
            size: 11,
            resume: false,
            mtime: None,
            crc32: None,
        },
        Request::PutFrom { offset: 0 },
        Request::Chunk(b"hello "),
        Request::Chunk(b"world"),
        Request::PutEnd {
            crc32: crc32fast::hash(b"hello world"),
        },
    ];

    let frames = dir("frames");
    let login = [
        hello(),
        login_start("alice"),
        Request::LoginProof { proof: vec![1; 32] },
    ];
    write(&frames, "login-whole", &with_cuts(&[], &framed(&login)));
    write(
        &frames,
        "login-cut",
        &with_cuts(&[1, 5, 9, 30], &framed(&login)),
    );
    write(
        &frames,
        "upload-cut",
        &with_cuts(&[3, 40, 41], &framed(&upload)),
    );
    let replies = [
        Reply::Hello {
            version: PROTOCOL_VERSION,
            server: "ftpd 0.1.0".to_owned(),
        },
        Reply::Error {
            code: ErrorCode::NotFound,
            message: "no such file or directory: /x".to_owned(),
        },
        Reply::GetReady { size: 3, offset: 0 },
        Reply::Chunk(b"abc"),
        Reply::GetDone { crc32: 0x352441c2 },
    ];
    write(
        &frames,
        "replies-cut",
        &with_cuts(&[2, 17], &framed(&replies)),
    );
    write(&frames, "bare-requests", &with_cuts(&[0], &bare(&upload)));
    let mut oversized = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0; 8]);
    write(&frames, "oversized", &with_cuts(&[2], &oversized));
    let mut trailing = framed(&[Request::Ping]);
    trailing[3] += 2;
    trailing.extend_from_slice(&[0, 0]);
    write(&frames, "trailing", &with_cuts(&[], &trailing));

    let session_dir = dir("session");
    write(
        &session_dir,
        "login-fails",
        &session(
            false,
            &[
                hello(),
                Request::Ping,
                login_start("alice"),
                Request::LoginProof { proof: vec![0; 32] },
                login_start("nobody"),
                Request::LoginProof { proof: vec![] },
                Request::Pwd,
            ],
        ),
    );
    write(
        &session_dir,
        "no-hello",
        &session(false, &[Request::List { path: path("/") }]),
    );
    let mut tour = vec![
        Request::Pwd,
        Request::Mkdir { path: path("new") },
        Request::Cd { path: path("new") },
    ];
    tour.extend(upload.iter().cloned());
    tour.extend([
        Request::List { path: path("") },
        Request::Stat {
            path: path("x.bin"),
        },
        Request::GetStart {
            path: path("x.bin"),
            offset: 0,
            prefix_crc: 0,
        },
        Request::Rename {
            from: path("x.bin"),
            to: path("/y.bin"),
        },
        Request::Remove {
            path: path("/y.bin"),
        },
        Request::Cd { path: path("..") },
        Request::Rmdir { path: path("new") },
        Request::Quota,
        Request::Bye,
        Request::Pwd,
    ]);
    write(&session_dir, "tour", &session(true, &tour));
    let escapes = [
        Request::Stat {
            path: path("link_dir"),
        },
        Request::List {
            path: path("link_dir"),
        },
        Request::GetStart {
            path: path("link_file"),
            offset: 0,
            prefix_crc: 0,
        },
        Request::Cd {
            path: path("docs/up"),
        },
        Request::List {
            path: path("docs/up/bob"),
        },
        Request::Rename {
            from: path("docs/a.txt"),
            to: path("link_dir/a.txt"),
        },
        Request::Mkdir {
            path: path("abs_dir/new"),
        },
        Request::Remove {
            path: path("link_file"),
        },
        Request::PutStart {
            path: path("../../outside/evil"),
            size: 1,
            resume: false,
            mtime: None,
            crc32: None,
        },
        Request::PutFrom { offset: 0 },
        Request::Chunk(b"!"),
        Request::PutEnd { crc32: 0 },
        Request::List { path: path("/") },
    ];
    write(&session_dir, "escapes", &session(true, &escapes));
    write(
        &session_dir,
        "breach-mid-upload",
        &session(
            true,
            &[
                upload[0].clone(),
                upload[1].clone(),
                Request::Chunk(b"hello "),
                Request::Quota,
                Request::Pwd,
            ],
        ),
    );

    let paths_dir = dir("paths");
    for (i, (cwd, input)) in [
        ("/", "../../outside/outside-secret.txt"),
        ("/docs", "up/bob/bob-secret.txt"),
        ("/", "link_dir/outside-secret.txt"),
        ("/", "link_file"),
        ("/docs", "../a.txt/../docs/./a.txt"),
        ("/", "a\\..\\b"),
        ("/", ".ftpd-partial/x"),
        ("/d/d/d", "../../../../../.."),
        ("/", "\u{202e}txt/\u{ff0f}etc"),
    ]
    .into_iter()
    .enumerate()
    {
        write(&paths_dir, &format!("seed-{i}"), &paths(cwd, input));
    }
    // From a folder with a long name, a relative input gives a path
    // longer than any input may be.
    let deep = ["d", "e", "f", "g"].map(|c| c.repeat(250)).join("/");
    write(
        &paths_dir,
        "long-result",
        &paths(&format!("/{}", "c".repeat(200)), &deep),
    );
    println!("seeds written to {}", corpus.display());
}
