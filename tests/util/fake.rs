//! A fake server for hostile-server tests: a thread that speaks the
//! protocol to one `ftpc` connection, logs it in with the real SCRAM
//! server side, then answers from a scripted [`FakeTree`] or a test's own
//! script, sending whatever a test wants (crafted names, lies).
//!
//! The peer is written against any `Read + Write` stream: the listener's
//! socket goes through [`transport`] once, the one place to wrap it (in TLS,
//! when `ftpc` speaks it) so every fake-server test follows.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ftpd::frame;
use ftpd::proto::{
    CHUNK_SIZE, Entry, EntryKind, ErrorCode, KdfParams, LIST_BATCH, NONCE_LEN, PROTOCOL_VERSION,
    Reply, Request,
};
use ftpd::scram::{self, StoredKeys, Transcript};

/// The user and password the fake accepts.
pub const FAKE_USER: &str = "alice";
pub const FAKE_PASSWORD: &str = "alice-pw";

/// The cheapest scrypt settings `ftpc` accepts, so logins are quick.
const FAST_KDF: KdfParams = KdfParams {
    log_n: 14,
    r: 8,
    p: 1,
};

/// Bound on each blocking read or write of the fake.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the fake waits for `ftpc` to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The stream a fake serves on.
pub type FakeStream = TcpStream;

/// Turns an accepted socket into the fake's transport: plain TCP for now
/// (ftpc runs `--plaintext` against it, see [`FakeServer::ftpc`]).
pub fn transport(socket: TcpStream) -> FakeStream {
    socket
}

fn keys() -> &'static StoredKeys {
    static KEYS: OnceLock<StoredKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        scram::stored_keys(FAKE_PASSWORD.as_bytes(), FAST_KDF).expect("stored keys")
    })
}

/// The fake's side of one connection, recording every request.
pub struct FakePeer<S: Read + Write> {
    stream: S,
    rx: Vec<u8>,
    pub seen: Vec<Request<'static>>,
}

impl<S: Read + Write> FakePeer<S> {
    pub fn new(stream: S) -> FakePeer<S> {
        FakePeer {
            stream,
            rx: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// The next request; `None` once the client hung up.
    pub fn recv(&mut self) -> Option<Request<'static>> {
        loop {
            match frame::decode::<Request>(&self.rx) {
                Ok(Some((req, n))) => {
                    let req = own_request(req);
                    self.rx.drain(..n);
                    self.seen.push(req.clone());
                    return Some(req);
                }
                Ok(None) => {}
                Err(e) => panic!("ftpc sent a bad frame: {e}"),
            }
            let mut buf = [0u8; 64 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    pub fn send(&mut self, reply: &Reply) -> io::Result<()> {
        let bytes = frame::encode(reply).expect("encode");
        self.stream.write_all(&bytes)
    }

    /// Runs `Hello` and the whole login as a real server would.
    pub fn login(&mut self) {
        match self.recv() {
            Some(Request::Hello { version, .. }) => assert_eq!(version, PROTOCOL_VERSION),
            other => panic!("expected Hello, got {other:?}"),
        }
        self.send(&Reply::Hello {
            version: PROTOCOL_VERSION,
            server: "fake 0.0".into(),
        })
        .expect("send Hello");
        let (user, client_nonce) = match self.recv() {
            Some(Request::LoginStart { user, client_nonce }) => (user, client_nonce),
            other => panic!("expected LoginStart, got {other:?}"),
        };
        assert_eq!(user, FAKE_USER);
        let keys = keys();
        let mut server_nonce = vec![0u8; NONCE_LEN];
        scram::fill_random(&mut server_nonce).expect("random");
        self.send(&Reply::Challenge {
            server_nonce: server_nonce.clone(),
            salt: keys.salt.clone(),
            kdf: keys.kdf,
        })
        .expect("send Challenge");
        let auth = Transcript {
            user: &user,
            client_nonce: &client_nonce,
            server_nonce: &server_nonce,
            salt: &keys.salt,
            kdf: keys.kdf,
            // In clear: nothing to bind. Over TLS, the fake's channel
            // binding goes here.
            channel_binding: None,
        }
        .auth_message();
        match self.recv() {
            Some(Request::LoginProof { proof }) => assert!(
                scram::verify_client_proof(&keys.stored_key, &auth, &proof),
                "ftpc's proof does not verify"
            ),
            other => panic!("expected LoginProof, got {other:?}"),
        }
        let server_signature = scram::server_signature(&keys.server_key, &auth).to_vec();
        self.send(&Reply::LoginOk { server_signature })
            .expect("send LoginOk");
    }

    /// Answers every request from `tree` until the client hangs up.
    pub fn serve(&mut self, tree: &FakeTree) {
        while let Some(req) = self.recv() {
            if self.answer(tree, req).is_err() {
                return;
            }
        }
    }

    fn answer(&mut self, tree: &FakeTree, req: Request) -> io::Result<()> {
        let missing = |path: &str| Reply::Error {
            code: ErrorCode::NotFound,
            message: format!("no such file or directory: {path}"),
        };
        match req {
            Request::Stat { path } => match tree.entry(&path) {
                Some(entry) => self.send(&Reply::Entry(entry)),
                None => self.send(&missing(&path)),
            },
            Request::ListFrom { path, .. } => match tree.folders.get(&norm(&path)) {
                Some(entries) => {
                    for batch in entries.chunks(LIST_BATCH) {
                        self.send(&Reply::Entries(batch.to_vec()))?;
                    }
                    self.send(&Reply::ListPage { next: None })
                }
                None => self.send(&missing(&path)),
            },
            Request::GetStart { path, .. } => match tree.files.get(&norm(&path)) {
                Some(data) => {
                    self.send(&Reply::GetReady {
                        size: data.len() as u64,
                        offset: 0,
                    })?;
                    for chunk in data.chunks(CHUNK_SIZE) {
                        self.send(&Reply::Chunk(chunk))?;
                    }
                    self.send(&Reply::GetDone {
                        crc32: crc32fast::hash(data),
                    })
                }
                None => self.send(&missing(&path)),
            },
            Request::Bye => Ok(()),
            other => self.send(&Reply::Error {
                code: ErrorCode::BadRequest,
                message: format!("the fake does not do {other:?}"),
            }),
        }
    }
}

/// What a fake serves: folders (path to the entries it lists, which may
/// be anything at all) and file contents by path. Paths are as ftpc sends
/// them, without a trailing `/`.
#[derive(Default, Clone)]
pub struct FakeTree {
    pub folders: HashMap<String, Vec<Entry>>,
    pub files: HashMap<String, Vec<u8>>,
}

impl FakeTree {
    /// A folder at `path` listing `entries`.
    pub fn folder(mut self, path: &str, entries: Vec<Entry>) -> FakeTree {
        self.folders.insert(norm(path), entries);
        self
    }

    /// A file's content at `path` (listed or not).
    pub fn file(mut self, path: &str, data: &[u8]) -> FakeTree {
        self.files.insert(norm(path), data.to_vec());
        self
    }

    fn entry(&self, path: &str) -> Option<Entry> {
        let path = norm(path);
        let name = path.rsplit('/').next().unwrap_or("").to_owned();
        if self.folders.contains_key(&path) {
            return Some(entry(&name, EntryKind::Dir, 0));
        }
        self.files
            .get(&path)
            .map(|d| entry(&name, EntryKind::File, d.len() as u64))
    }
}

fn norm(path: &str) -> String {
    path.trim_end_matches('/').to_owned()
}

/// An entry as a listing shows it.
pub fn entry(name: &str, kind: EntryKind, size: u64) -> Entry {
    Entry {
        name: name.into(),
        kind,
        size,
        mtime: 1_700_000_000,
    }
}

/// A fake server for one `ftpc` connection.
pub struct FakeServer {
    pub addr: SocketAddr,
    thread: JoinHandle<Vec<Request<'static>>>,
}

impl FakeServer {
    /// Logs the client in, then answers from `tree`.
    pub fn serving(tree: FakeTree) -> FakeServer {
        FakeServer::start(move |peer| {
            peer.login();
            peer.serve(&tree);
        })
    }

    /// Listens on 127.0.0.1:0 and runs `script` on the first connection,
    /// then reads (and records) until the client hangs up.
    pub fn start(script: impl FnOnce(&mut FakePeer<FakeStream>) + Send + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + ACCEPT_TIMEOUT;
            let socket = loop {
                match listener.accept() {
                    Ok((socket, _)) => break socket,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Vec::new();
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            };
            socket.set_nonblocking(false).expect("blocking");
            socket.set_read_timeout(Some(IO_TIMEOUT)).expect("rto");
            socket.set_write_timeout(Some(IO_TIMEOUT)).expect("wto");
            let mut peer = FakePeer::new(transport(socket));
            script(&mut peer);
            while peer.recv().is_some() {}
            peer.seen
        });
        FakeServer { addr, thread }
    }

    /// Runs `ftpc --quiet ARGS` against the fake in `cwd` (in clear, as
    /// the fake speaks: the one place to change with [`transport`]).
    pub fn ftpc(&self, cwd: &Path, args: &[&str]) -> Output {
        super::ftpc_cmd_to(self.addr, &["--plaintext"], FAKE_USER, FAKE_PASSWORD, args)
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run ftpc")
    }

    /// Waits for the fake to end (re-raising its panic); the requests it saw.
    pub fn finish(self) -> Vec<Request<'static>> {
        match self.thread.join() {
            Ok(seen) => seen,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Copies a request's borrowed payload out, so it can be kept.
pub fn own_request(req: Request) -> Request<'static> {
    match req {
        Request::Chunk(bytes) => Request::Chunk(Vec::leak(bytes.to_vec())),
        Request::Hello { magic, version } => Request::Hello { magic, version },
        Request::LoginStart { user, client_nonce } => Request::LoginStart { user, client_nonce },
        Request::LoginProof { proof } => Request::LoginProof { proof },
        Request::Ping => Request::Ping,
        Request::Pwd => Request::Pwd,
        Request::Cd { path } => Request::Cd { path },
        Request::List { path } => Request::List { path },
        Request::Stat { path } => Request::Stat { path },
        Request::Mkdir { path } => Request::Mkdir { path },
        Request::Rmdir { path } => Request::Rmdir { path },
        Request::Remove { path } => Request::Remove { path },
        Request::Rename { from, to } => Request::Rename { from, to },
        Request::Quota => Request::Quota,
        Request::PutStart { path, size, resume } => Request::PutStart { path, size, resume },
        Request::PutFrom { offset } => Request::PutFrom { offset },
        Request::PutEnd { crc32 } => Request::PutEnd { crc32 },
        Request::GetStart {
            path,
            offset,
            prefix_crc,
        } => Request::GetStart {
            path,
            offset,
            prefix_crc,
        },
        Request::Bye => Request::Bye,
        Request::ListFrom { path, from } => Request::ListFrom { path, from },
        Request::RemoveTree { path } => Request::RemoveTree { path },
    }
}
