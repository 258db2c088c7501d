//! The per-connection session state machine: which requests each phase
//! accepts, and what they do.
//!
//! Dispatch is by phase and denies by default: before login only `Hello`,
//! `Ping` and the two login messages are accepted; anything out of order is
//! answered with an error and the connection closes after the reply.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Config;
use super::SERVER_JOB;
use super::accounts::Accounts;
use super::accounts::OpenedHome;
use super::accounts::open_home;
use super::batch::{self, Batches};
use super::fds::FdBudget;
use super::guard::{Attempt, Locked, LoginGuard, Verdict};
use super::transfer::{self, Download, Opening, Publish, Restarted, Upload, UploadEnd};
use super::worker::{Job, Lane, Step, Worker};
use crate::aligned_io::Stage;
use crate::buf::{Buffer, Bypass};
use crate::jail::{Change, FsError, Jail, Listing, OpenedPartial, Piece, TreeRemoval, VPath};
use crate::log;
use crate::proto::{
    CHUNK_SIZE, Entry, ErrorCode, LIST_BATCH, MAGIC, MAX_LIST_ENTRIES, MAX_NONCE_LEN, MAX_USER_LEN,
    MIN_NONCE_LEN, NONCE_LEN, PROTOCOL_VERSION, Reply, Request,
};
use crate::scram::{self, Transcript};
use crate::server::log::clean;
use crate::tls::ChannelBinding;

/// How long a closing connection waits for its peer to hang up.
const LINGER: Duration = Duration::from_secs(2);

/// Failed logins allowed on one connection before it is closed.
const ATTEMPTS_PER_CONN: u8 = 3;

/// Everything sessions share: settings, users, the login guard, the disk
/// helpers, and the reactor's clock.
pub struct Ctx {
    pub cfg: Config,
    pub accounts: Accounts,
    pub guard: LoginGuard,
    pub worker: Worker<JobResult>,
    /// Open transfer files against the open-files limit.
    pub fds: FdBudget,
    /// The time of the current reactor turn (one clock read per turn).
    pub now: Instant,
    /// Reused encoding space for replies.
    scratch: Vec<u8>,
    /// The aligned block that file data passes through on the reactor.
    pub stage: Stage,
}

impl Ctx {
    /// Shared state for a server.
    pub fn new(
        cfg: Config,
        accounts: Accounts,
        guard: LoginGuard,
        worker: Worker<JobResult>,
    ) -> Ctx {
        Ctx {
            cfg,
            accounts,
            guard,
            worker,
            fds: FdBudget::new(),
            now: Instant::now(),
            scratch: Vec::new(),
            stage: Stage::new(CHUNK_SIZE),
        }
    }

    /// Queues a reply.
    pub fn send(&mut self, tx: &mut Buffer, reply: &Reply) {
        self.scratch.clear();
        match crate::frame::encode_into(reply, &mut self.scratch) {
            Ok(()) => {
                if tx.extend(&self.scratch).is_err() {
                    // Replies are queued only below the high-water mark and
                    // the cap leaves room for one more, so this is a bug.
                    log!(Error, "reply dropped: send buffer full");
                }
            }
            Err(e) => log!(Error, "reply not encodable: {e}"),
        }
        if self.scratch.capacity() > 64 * 1024 {
            self.scratch = Vec::new();
        }
    }

    /// Queues an error reply.
    pub fn send_error(&mut self, tx: &mut Buffer, code: ErrorCode, message: &str) {
        self.send(
            tx,
            &Reply::Error {
                code,
                message: message.to_string(),
            },
        );
    }
}

/// A logged-in user's session.
pub struct LoggedIn {
    pub user: String,
    pub cwd: VPath,
    pub jail: Arc<Jail>,
}

/// A login waiting for the client's proof. The proof is checked against
/// the account as it is when the proof arrives, not as it was here: a
/// password changed or a user deleted meanwhile no longer lets it in.
pub struct Challenge {
    user: String,
    auth_message: Vec<u8>,
    attempt: Attempt,
}

/// Where a session is.
pub enum Phase {
    /// Waiting for `Hello`.
    Hello,
    /// Waiting for `LoginStart`.
    Login,
    /// Challenge sent, waiting for `LoginProof`.
    Challenged(Box<Challenge>),
    /// A failed login; its reply goes out when the delay ends.
    Penalty { until: Instant, close: bool },
    /// Logged in, waiting for a command.
    Ready,
    /// A listing paused until the client reads what was sent; its next
    /// batch is read (on a helper thread) once there is room.
    Listing(Box<Listing>),
    /// A disk job is running for this session; its result resumes it.
    Waiting,
    /// `PutReady` sent; waiting for `PutFrom`.
    PutOffered(Box<Upload>),
    /// Receiving upload chunks.
    Receiving(Box<Upload>),
    /// An upload failed; dropping its remaining chunks up to `PutEnd`.
    Discarding,
    /// Streaming a download.
    Sending(Box<Download>),
    /// Small files (`PutSmall`) are being stored in batches; only more of
    /// them are read until every one is answered.
    Batch(Box<Batches>),
    /// The last reply is queued; close once it is out and the peer hangs up.
    Closing { until: Instant },
    /// The client said goodbye: close as soon as the replies are out.
    Done,
    /// A transfer could not start because the server is out of file
    /// descriptors; it is retried when `until` passes (backing off), and
    /// fails only after the stall timeout.
    Deferred(Box<Deferred>),
}

/// A transfer request waiting for resources.
pub struct Deferred {
    pub op: DeferredOp,
    pub until: Instant,
    pub since: Instant,
    pub backoff: Duration,
}

/// The request a [`Phase::Deferred`] retries.
pub enum DeferredOp {
    Put {
        path: String,
        put: transfer::PutArgs,
    },
    Get {
        path: String,
        offset: u64,
        prefix_crc: u32,
    },
}

/// First wait before retrying a deferred transfer; it doubles up to
/// [`MAX_BACKOFF`], so thousands of waiting sessions cost few wake-ups.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Puts a transfer aside until resources free up, or fails it when it has
/// waited as long as a stalled transfer may.
pub fn defer(
    st: &State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    op: DeferredOp,
    previous: Option<&Deferred>,
) -> Phase {
    let since = previous.map_or(ctx.now, |d| d.since);
    if ctx.now.saturating_duration_since(since) >= ctx.cfg.stall_timeout {
        log!(
            Warn,
            "{} {}: out of file descriptors for too long; giving up",
            st.peer,
            clean(st.user())
        );
        ctx.send_error(
            tx,
            ErrorCode::Unavailable,
            "the server is out of resources right now; try again later",
        );
        return Phase::Ready;
    }
    let backoff = previous.map_or(FIRST_BACKOFF, |d| (d.backoff * 2).min(MAX_BACKOFF));
    Phase::Deferred(Box::new(Deferred {
        op,
        until: ctx.now + backoff,
        since,
        backoff,
    }))
}

impl Phase {
    /// Whether requests are read in this phase.
    pub fn wants_input(&self) -> bool {
        !matches!(
            self,
            Phase::Penalty { .. }
                | Phase::Waiting
                | Phase::Listing(_)
                | Phase::Sending(_)
                | Phase::Done
                | Phase::Deferred(_)
        )
    }

    /// Whether the server is streaming a long reply.
    pub fn is_streaming(&self) -> bool {
        matches!(self, Phase::Sending(_))
    }

    /// Whether file bytes are moving (buffers keep their memory meanwhile).
    pub fn is_transfer(&self) -> bool {
        matches!(
            self,
            Phase::Receiving(_) | Phase::Sending(_) | Phase::Discarding | Phase::Batch(_)
        )
    }
}

/// A session: its phase, its user, its clocks.
pub struct State {
    pub peer: SocketAddr,
    /// Slab key and generation: who a disk job's result belongs to.
    pub key: usize,
    pub generation: u64,
    pub phase: Phase,
    pub login: Option<LoggedIn>,
    attempts: u8,
    opened: Instant,
    /// Last time bytes moved.
    pub active: Instant,
    /// The earliest deadline armed in the timer heap, if any.
    pub armed: Option<Instant>,
    /// Whether the connection is TLS (it always is, but with `--plaintext`).
    pub encrypted: bool,
    /// The TLS channel binding, set once the handshake is done; a login
    /// over TLS is bound to it (see `scram::Transcript`).
    pub channel_binding: Option<ChannelBinding>,
}

impl State {
    /// A fresh session waiting for `Hello`.
    pub fn new(
        peer: SocketAddr,
        key: usize,
        generation: u64,
        now: Instant,
        encrypted: bool,
    ) -> State {
        State {
            peer,
            key,
            generation,
            phase: Phase::Hello,
            login: None,
            attempts: 0,
            opened: now,
            active: now,
            armed: None,
            encrypted,
            channel_binding: None,
        }
    }

    /// When this session's next timeout is due.
    pub fn deadline(&self, cfg: &Config) -> Instant {
        match &self.phase {
            Phase::Hello | Phase::Login | Phase::Challenged(_) => self.opened + cfg.login_timeout,
            Phase::Penalty { until, .. } | Phase::Closing { until } => *until,
            Phase::Done => self.active + LINGER,
            Phase::Deferred(d) => d.until,
            Phase::Ready | Phase::Listing(_) | Phase::Waiting => self.active + cfg.idle_timeout,
            Phase::PutOffered(_)
            | Phase::Receiving(_)
            | Phase::Discarding
            | Phase::Sending(_)
            | Phase::Batch(_) => self.active + cfg.stall_timeout,
        }
    }

    pub fn user(&self) -> &str {
        self.login.as_ref().map_or("-", |l| l.user.as_str())
    }
}

/// Results of disk jobs, handed back to the session that asked (or, for
/// the server's own jobs and those of closed sessions, to [`orphaned`]).
pub enum JobResult {
    /// The next batch of a listing.
    Listed(Result<(Box<Listing>, Vec<Entry>), FsError>),
    /// A command changed the tree (mkdir, rmdir, rm, mv): whose, what was
    /// reserved for it, and what it did.
    Changed {
        user: String,
        reserved: u64,
        entries: u64,
        result: Result<Change, FsError>,
    },
    UploadOpened(Box<Opening>, Result<OpenedPartial, FsError>),
    UploadPrefix(Box<Upload>, std::io::Result<u32>),
    UploadRestarted(Box<Upload>, Result<Change, FsError>, Restarted),
    Published(Box<Upload>, Publish),
    DownloadPrefix(Box<Download>, std::io::Result<u32>),
    /// An upload's target was compared with the client's CRC32: whether
    /// it already holds the same bytes.
    TargetChecked(Box<Opening>, bool),
    /// A batch of small files was stored.
    SmallStored {
        user: String,
        /// The batch's place in the session's order of batches.
        seq: u64,
        /// Whether it created folders.
        folders: bool,
        results: Vec<batch::Stored>,
    },
    /// A bad or empty partial was deleted (a server job).
    PartialRemoved {
        user: String,
        path: VPath,
        result: Result<Change, FsError>,
    },
    /// Stale partial uploads of a user were deleted (a server job).
    Swept(String, std::io::Result<Change>),
    /// A user new to the user file has its home open and counted.
    HomeOpened(String, std::io::Result<OpenedHome>),
    /// A file was closed off the reactor (a server job).
    Closed,
    /// A piece of an `rm -r` is done: whose, in which home, the rest of
    /// the work (unless it could not start), and what the piece did.
    TreeRemoved {
        user: String,
        jail: Arc<Jail>,
        removal: Option<Box<TreeRemoval>>,
        piece: Piece,
    },
}

/// Entries removed per piece of an `rm -r`: a few milliseconds of disk
/// work under the home's tree lock, then the user's figures are updated and
/// other jobs get their turn.
const REMOVE_PIECE: usize = 256;

/// Where an `rm -r` job stands.
enum TreeWork {
    /// Not started: the path to remove.
    Start(VPath),
    /// Under way.
    Going(Box<TreeRemoval>),
}

/// The next piece of an `rm -r`, as a helper job.
fn remove_tree_job(jail: Arc<Jail>, user: String, work: TreeWork) -> Job<JobResult> {
    Box::new(move || {
        let mut removal = match work {
            TreeWork::Going(removal) => removal,
            TreeWork::Start(p) => match jail.start_tree_removal(&p) {
                Ok(removal) => Box::new(removal),
                Err(e) => {
                    let piece = Piece {
                        change: Change::default(),
                        gone: Vec::new(),
                        result: Err(e),
                    };
                    return Step::Done(JobResult::TreeRemoved {
                        user,
                        jail,
                        removal: None,
                        piece,
                    });
                }
            },
        };
        let piece = removal.next_piece(&jail, REMOVE_PIECE);
        Step::Done(JobResult::TreeRemoved {
            user,
            jail,
            removal: Some(removal),
            piece,
        })
    })
}

/// Applies what a piece of an `rm -r` removed to the user's figures; a
/// file still being downloaded stays charged until its download ends.
fn settle_piece(ctx: &mut Ctx, user: &str, piece: &Piece) {
    ctx.accounts.apply(user, piece.change);
    for gone in &piece.gone {
        let mut change = Change::new(0, 0);
        change.gone = Some(*gone);
        ctx.accounts.apply(user, change);
    }
}

/// Reserved while a folder is created: its first block, and one for the
/// parent folder growing to hold the name.
pub(super) const MKDIR_SLACK: u64 = 2 * crate::usage::BLOCK;

/// Reserved while something is moved: the target folder may grow a block.
const RENAME_SLACK: u64 = crate::usage::BLOCK;

/// Opens the homes of users new to the user file, on helper threads.
pub fn open_homes(ctx: &mut Ctx, names: Vec<String>) {
    for name in names {
        let root = ctx.accounts.root().to_path_buf();
        let ttl = ctx.accounts.partial_ttl();
        let owner = name.clone();
        let job = move || {
            let opened = open_home(&root, &name, ttl);
            Step::Done(JobResult::HomeOpened(name, opened))
        };
        ctx.worker
            .submit(Lane::Sync, &owner, SERVER_JOB, 0, Box::new(job));
    }
}

/// Runs a change to the user's tree on a helper thread, with `slack` bytes
/// and `entries` reserved for what it may add; the result replies.
fn change_tree(
    ctx: &mut Ctx,
    (key, generation): (usize, u64),
    login: &LoggedIn,
    (slack, entries): (u64, u64),
    op: impl FnOnce(&Jail) -> Result<Change, FsError> + Send + 'static,
) -> Result<Option<Reply<'static>>, FsError> {
    ctx.accounts
        .reserve_creation(&login.user, slack, entries)
        .map_err(|(code, message)| FsError { code, message })?;
    let jail = Arc::clone(&login.jail);
    let user = login.user.clone();
    let job = move || {
        let result = op(&jail);
        Step::Done(JobResult::Changed {
            user,
            reserved: slack,
            entries,
            result,
        })
    };
    ctx.worker
        .submit(Lane::Sync, &login.user, key, generation, Box::new(job));
    Ok(None)
}

/// A command's change to the tree is done: hands back what was reserved
/// for it and applies what it did.
fn settle_change(
    ctx: &mut Ctx,
    user: &str,
    (reserved, entries): (u64, u64),
    result: Result<Change, FsError>,
) -> Result<(), FsError> {
    ctx.accounts.release_creation(user, reserved, entries);
    result.map(|change| ctx.accounts.apply(user, change))
}

/// Reads a listing's next batch on a helper thread.
fn list_next(listing: Box<Listing>) -> Job<JobResult> {
    Box::new(move || {
        let mut listing = listing;
        let result = listing.next_batch(LIST_BATCH);
        Step::Done(JobResult::Listed(result.map(|batch| (listing, batch))))
    })
}

/// Answers with an error, ends what the session was doing, and returns the
/// phase that closes after the reply: for requests that break the protocol.
pub fn refuse(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    code: ErrorCode,
    message: &str,
) -> Phase {
    ctx.send_error(tx, code, message);
    abandon(st, ctx);
    Phase::Closing {
        until: ctx.now + LINGER,
    }
}

/// Handles one request.
pub fn handle(st: &mut State, tx: &mut Buffer, ctx: &mut Ctx, req: Request) {
    let phase = std::mem::replace(&mut st.phase, Phase::Waiting);
    st.phase = match (phase, req) {
        // Goodbye ends any phase: a transfer in progress is abandoned.
        (phase, Request::Bye) => {
            st.phase = phase;
            abandon(st, ctx);
            Phase::Done
        }
        (Phase::Hello, Request::Hello { magic, version }) => hello(tx, ctx, magic, version),
        (phase @ (Phase::Login | Phase::Ready), Request::Ping) => {
            ctx.send(tx, &Reply::Pong);
            phase
        }
        (Phase::Login, Request::LoginStart { user, client_nonce }) => {
            login_start(st, tx, ctx, user, &client_nonce)
        }
        (Phase::Challenged(ch), Request::LoginProof { proof }) => {
            login_proof(st, tx, ctx, *ch, &proof)
        }
        (
            phase @ (Phase::Ready | Phase::Batch(_)),
            Request::PutSmall {
                path,
                mtime,
                crc32,
                data,
            },
        ) => batch::put_small(st, ctx, phase, &path, mtime, crc32, data),
        (phase @ Phase::Batch(_), Request::Mkdir { path }) => batch::mkdir(st, ctx, phase, &path),
        (Phase::Ready, req) => command(st, tx, ctx, req),
        (Phase::PutOffered(up), Request::PutFrom { offset }) => {
            transfer::put_from(st, tx, ctx, up, offset)
        }
        (Phase::Receiving(up), Request::Chunk(bytes)) => {
            transfer::put_chunk(st, tx, ctx, up, bytes)
        }
        (Phase::Receiving(up), Request::PutEnd { crc32 }) => {
            transfer::put_end(st, tx, ctx, up, crc32)
        }
        (Phase::Discarding, Request::Chunk(_)) => Phase::Discarding,
        (Phase::Discarding, Request::PutEnd { .. }) => Phase::Ready,
        (phase, req) => {
            st.phase = phase;
            let (code, message) = match (&st.phase, &req) {
                (Phase::Hello, _) => (ErrorCode::BadRequest, "expected Hello first".to_string()),
                (Phase::Login | Phase::Challenged(_), _) => {
                    (ErrorCode::NotLoggedIn, "log in first".to_string())
                }
                _ => (
                    ErrorCode::BadRequest,
                    format!("unexpected {} now", request_name(&req)),
                ),
            };
            log!(Info, "{} {}: {message}; closing", st.peer, clean(st.user()));
            refuse(st, tx, ctx, code, &message)
        }
    };
}

/// Whether `req` may be handled now, or must wait unread: while small
/// files are being stored, only more of them and `Mkdir`s (while the
/// filling batch has room) and `Bye` are taken, so replies keep the order
/// of requests.
pub fn accepts(phase: &Phase, req: &Request) -> bool {
    match (phase, req) {
        (Phase::Batch(_), Request::Bye) => true,
        (Phase::Batch(b), Request::PutSmall { data, .. }) => b.has_room(data.len()),
        (Phase::Batch(b), Request::Mkdir { .. }) => b.has_room(0),
        (Phase::Batch(_), _) => false,
        _ => true,
    }
}

/// A short name of a request for messages (never its payload).
fn request_name(req: &Request) -> &'static str {
    match req {
        Request::Hello { .. } => "Hello",
        Request::LoginStart { .. } => "LoginStart",
        Request::LoginProof { .. } => "LoginProof",
        Request::Ping => "Ping",
        Request::Pwd => "Pwd",
        Request::Cd { .. } => "Cd",
        Request::List { .. } => "List",
        Request::Stat { .. } => "Stat",
        Request::Mkdir { .. } => "Mkdir",
        Request::Rmdir { .. } => "Rmdir",
        Request::Remove { .. } => "Remove",
        Request::Rename { .. } => "Rename",
        Request::Quota => "Quota",
        Request::PutStart { .. } => "PutStart",
        Request::PutFrom { .. } => "PutFrom",
        Request::Chunk(_) => "Chunk",
        Request::PutEnd { .. } => "PutEnd",
        Request::GetStart { .. } => "GetStart",
        Request::Bye => "Bye",
        Request::ListFrom { .. } => "ListFrom",
        Request::RemoveTree { .. } => "RemoveTree",
        Request::PutSmall { .. } => "PutSmall",
    }
}

fn hello(tx: &mut Buffer, ctx: &mut Ctx, magic: u32, version: u32) -> Phase {
    let closing = Phase::Closing {
        until: ctx.now + LINGER,
    };
    if magic != MAGIC {
        ctx.send_error(tx, ErrorCode::BadRequest, "not an ftpd client");
        return closing;
    }
    if version != PROTOCOL_VERSION {
        let message = format!(
            "protocol version mismatch: client speaks {version}, server speaks {PROTOCOL_VERSION}"
        );
        ctx.send_error(tx, ErrorCode::VersionMismatch, &message);
        return closing;
    }
    ctx.send(
        tx,
        &Reply::Hello {
            version: PROTOCOL_VERSION,
            server: format!("ftpd {}", env!("CARGO_PKG_VERSION")),
        },
    );
    Phase::Login
}

fn login_start(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    user: String,
    nonce: &[u8],
) -> Phase {
    if user.is_empty()
        || user.len() > MAX_USER_LEN
        || !(MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&nonce.len())
    {
        let message = "malformed login request";
        return refuse(st, tx, ctx, ErrorCode::BadRequest, message);
    }
    let attempt = match ctx.guard.begin(&user, st.peer.ip(), ctx.now) {
        Ok(attempt) => attempt,
        Err(locked) => return locked_out(st, tx, ctx, &user, locked),
    };
    let new = ctx.accounts.refresh();
    open_homes(ctx, new);
    let creds = ctx.accounts.credentials(&user);
    let mut server_nonce = [0u8; NONCE_LEN];
    if scram::fill_random(&mut server_nonce).is_err() {
        ctx.send_error(tx, ErrorCode::Internal, "server has no random source");
        return Phase::Login;
    }
    if st.encrypted && st.channel_binding.is_none() {
        // Cannot happen: no login bytes arrive before the handshake ends.
        ctx.send_error(tx, ErrorCode::Internal, "the TLS channel is not ready");
        return Phase::Login;
    }
    let auth_message = Transcript {
        user: &user,
        client_nonce: nonce,
        server_nonce: &server_nonce,
        salt: &creds.keys.salt,
        kdf: creds.keys.kdf,
        channel_binding: st.channel_binding.as_ref(),
    }
    .auth_message();
    ctx.send(
        tx,
        &Reply::Challenge {
            server_nonce: server_nonce.to_vec(),
            salt: creds.keys.salt.clone(),
            kdf: creds.keys.kdf,
        },
    );
    Phase::Challenged(Box::new(Challenge {
        user,
        auth_message,
        attempt,
    }))
}

/// Refuses a login because its user or address is locked out.
fn locked_out(st: &State, tx: &mut Buffer, ctx: &mut Ctx, user: &str, locked: Locked) -> Phase {
    log!(
        Warn,
        "{} login refused for {:?}: locked out",
        st.peer,
        clean(user)
    );
    let message = format!(
        "too many failed logins; try again in {} s",
        locked.remaining.as_secs().max(1)
    );
    ctx.send_error(tx, ErrorCode::LockedOut, &message);
    Phase::Login
}

fn login_proof(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    ch: Challenge,
    proof: &[u8],
) -> Phase {
    let creds = ctx.accounts.credentials(&ch.user);
    // The guard checks the lockout, the proof and counts the outcome in one
    // step, so parallel connections cannot slip extra guesses in between.
    let verdict = ctx.guard.settle(ch.attempt, ctx.now, || {
        // Verify before looking at `known`, so a decoy costs the same work.
        let verified = scram::verify_client_proof(&creds.keys.stored_key, &ch.auth_message, proof);
        verified && creds.known
    });
    if let Verdict::Locked(locked) = verdict {
        return locked_out(st, tx, ctx, &ch.user, locked);
    }
    if let Verdict::Failed { delay } = verdict {
        st.attempts += 1;
        log!(
            Warn,
            "{} login failed for {:?} (attempt {} on this connection)",
            st.peer,
            clean(&ch.user),
            st.attempts
        );
        return Phase::Penalty {
            until: ctx.now.checked_add(delay).unwrap_or(ctx.now),
            close: st.attempts >= ATTEMPTS_PER_CONN,
        };
    }
    let max = ctx.cfg.max_sessions_per_user;
    if ctx.accounts.is_pending(&ch.user) {
        // A user just added: the home is being opened on a helper thread.
        let message = "your home folder is being prepared; try again in a moment";
        ctx.send_error(tx, ErrorCode::Unavailable, message);
        return Phase::Login;
    }
    let Some(acc) = ctx.accounts.get_mut(&ch.user) else {
        ctx.send_error(tx, ErrorCode::Internal, "account not loaded");
        return Phase::Login;
    };
    if max > 0 && acc.sessions >= max {
        log!(
            Warn,
            "{} login refused for {}: {max} sessions open",
            st.peer,
            ch.user
        );
        let message = format!("too many sessions for {} (limit {max})", ch.user);
        ctx.send_error(tx, ErrorCode::TooManySessions, &message);
        return Phase::Closing {
            until: ctx.now + LINGER,
        };
    }
    acc.sessions += 1;
    let jail = Arc::clone(&acc.jail);
    let signature = scram::server_signature(&creds.keys.server_key, &ch.auth_message);
    ctx.send(
        tx,
        &Reply::LoginOk {
            server_signature: signature.to_vec(),
        },
    );
    log!(Info, "{} login {}", st.peer, clean(&ch.user));
    st.login = Some(LoggedIn {
        user: ch.user,
        cwd: VPath::root(),
        jail,
    });
    Phase::Ready
}

/// Resolves a client path against the session's current directory.
pub fn resolve(login: &LoggedIn, path: &str) -> Result<VPath, FsError> {
    VPath::resolve(&login.cwd, path)
}

/// A logged-in command.
fn command(st: &mut State, tx: &mut Buffer, ctx: &mut Ctx, req: Request) -> Phase {
    let (key, generation) = (st.key, st.generation);
    let Some(login) = st.login.as_mut() else {
        ctx.send_error(tx, ErrorCode::NotLoggedIn, "log in first");
        return Phase::Login;
    };
    let result: Result<Option<Reply>, FsError> = match req {
        Request::Pwd => Ok(Some(Reply::Cwd(login.cwd.to_string()))),
        Request::Cd { path } => resolve(login, &path).and_then(|p| {
            login.jail.check_dir(&p)?;
            login.cwd = p;
            Ok(Some(Reply::Cwd(login.cwd.to_string())))
        }),
        Request::Stat { path } => {
            resolve(login, &path).and_then(|p| Ok(Some(Reply::Entry(login.jail.stat(&p)?))))
        }
        Request::Mkdir { path } => resolve(login, &path).and_then(|p| {
            let op = move |jail: &Jail| jail.mkdir(&p);
            change_tree(ctx, (key, generation), login, (MKDIR_SLACK, 1), op)
        }),
        Request::Rmdir { path } => resolve(login, &path).and_then(|p| {
            let op = move |jail: &Jail| jail.rmdir(&p);
            change_tree(ctx, (key, generation), login, (0, 0), op)
        }),
        Request::Remove { path } => resolve(login, &path).and_then(|p| {
            let op = move |jail: &Jail| jail.remove_file(&p);
            change_tree(ctx, (key, generation), login, (0, 0), op)
        }),
        Request::Rename { from, to } => {
            rename_target(login, ctx, &from, &to).and_then(|(from, to)| {
                let op = move |jail: &Jail| jail.rename(&from, &to);
                change_tree(ctx, (key, generation), login, (RENAME_SLACK, 0), op)
            })
        }
        Request::Quota => Ok(Some(Reply::Quota(ctx.accounts.quota_info(&login.user)))),
        Request::RemoveTree { path } => resolve(login, &path).map(|p| {
            let jail = Arc::clone(&login.jail);
            let job = remove_tree_job(jail, login.user.clone(), TreeWork::Start(p));
            ctx.worker
                .submit(Lane::Sync, &login.user, key, generation, job);
            None
        }),
        Request::ListFrom { path, from } => resolve(login, &path).map(|p| {
            let jail = Arc::clone(&login.jail);
            let job = move || match jail.open_listing_page(&p, MAX_LIST_ENTRIES, from) {
                Ok(listing) => list_next(Box::new(listing))(),
                Err(e) => Step::Done(JobResult::Listed(Err(e))),
            };
            ctx.worker
                .submit(Lane::Read, &login.user, key, generation, Box::new(job));
            None
        }),
        Request::List { path } => resolve(login, &path).map(|p| {
            let jail = Arc::clone(&login.jail);
            let job = move || match jail.open_listing(&p, MAX_LIST_ENTRIES) {
                Ok(listing) => list_next(Box::new(listing))(),
                Err(e) => Step::Done(JobResult::Listed(Err(e))),
            };
            ctx.worker
                .submit(Lane::Read, &login.user, key, generation, Box::new(job));
            None
        }),
        Request::PutStart {
            path,
            size,
            resume,
            mtime,
            crc32,
        } => {
            let put = transfer::PutArgs {
                size,
                resume,
                mtime,
                crc32,
            };
            return transfer::put_start(st, tx, ctx, &path, put, None);
        }
        Request::GetStart {
            path,
            offset,
            prefix_crc,
        } => return transfer::get_start(st, tx, ctx, &path, offset, prefix_crc, None),
        other => {
            let message = format!("unexpected {} now", request_name(&other));
            return refuse(st, tx, ctx, ErrorCode::BadRequest, &message);
        }
    };
    match result {
        Ok(Some(reply)) => {
            ctx.send(tx, &reply);
            Phase::Ready
        }
        Ok(None) => Phase::Waiting,
        Err(e) => {
            ctx.send_error(tx, e.code, &e.message);
            Phase::Ready
        }
    }
}

/// `mv FROM TO`: onto an existing directory means into it, as with `mv`.
fn rename_target(
    login: &LoggedIn,
    ctx: &Ctx,
    from: &str,
    to: &str,
) -> Result<(VPath, VPath), FsError> {
    let from = resolve(login, from)?;
    let mut to = resolve(login, to)?;
    if let Ok(entry) = login.jail.stat(&to)
        && entry.kind == crate::proto::EntryKind::Dir
        && to != from
        && let Some(name) = from.file_name()
    {
        to = to.join(name)?;
    }
    let uploads = ctx.accounts.get(&login.user).map(|a| &a.uploads);
    let busy = [&from, &to]
        .into_iter()
        .find(|p| uploads.is_some_and(|u| u.contains(*p)));
    if let Some(busy) = busy {
        return Err(FsError {
            code: ErrorCode::Busy,
            message: format!("busy: an upload to {busy} is in progress"),
        });
    }
    Ok((from, to))
}

/// Fills the send buffer from a streaming reply; returns bytes queued.
/// A listing queues while fewer than `tx_high` bytes wait (the
/// connection's backpressure mark); a download fills what room is left.
pub fn pump(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    tx_high: usize,
    bypass: Option<&mut dyn Bypass>,
) -> usize {
    match &st.phase {
        Phase::Listing(_) if tx.len() < tx_high => {
            if let Phase::Listing(listing) = std::mem::replace(&mut st.phase, Phase::Waiting) {
                let user = st.user().to_owned();
                ctx.worker
                    .submit(Lane::Read, &user, st.key, st.generation, list_next(listing));
            }
            0
        }
        Phase::Sending(_) => transfer::pump_download(st, tx, ctx, bypass),
        Phase::Batch(_) => {
            batch::pump(st, tx, ctx, tx_high);
            0
        }
        _ => 0,
    }
}

/// A disk job finished for this session.
pub fn job_done(st: &mut State, tx: &mut Buffer, ctx: &mut Ctx, result: JobResult) {
    if let JobResult::SmallStored {
        user,
        seq,
        folders,
        results,
    } = result
    {
        st.phase = match std::mem::replace(&mut st.phase, Phase::Waiting) {
            Phase::Batch(b) if b.storing() => {
                batch::stored(st, tx, ctx, b, (seq, folders, results))
            }
            other => {
                batch::orphan_stored(ctx, &user, results);
                other
            }
        };
        return;
    }
    if !matches!(st.phase, Phase::Waiting) {
        // Cannot happen: only Waiting sessions have jobs out. Clean up anyway.
        orphaned(ctx, result);
        return;
    }
    st.phase = match result {
        JobResult::Listed(Ok((listing, batch))) => {
            // Never an empty batch: a slice that only counted sends nothing.
            if !batch.is_empty() {
                ctx.send(tx, &Reply::Entries(batch));
            }
            if listing.finished() {
                let end = if listing.is_page() {
                    Reply::ListPage {
                        next: listing.next_page(),
                    }
                } else {
                    Reply::ListEnd {
                        total: listing.total(),
                        truncated: listing.truncated(),
                    }
                };
                ctx.send(tx, &end);
                Phase::Ready
            } else {
                Phase::Listing(listing)
            }
        }
        JobResult::Listed(Err(e)) => {
            ctx.send_error(tx, e.code, &e.message);
            Phase::Ready
        }
        JobResult::Changed {
            user,
            reserved,
            entries,
            result,
        } => {
            match settle_change(ctx, &user, (reserved, entries), result) {
                Ok(()) => ctx.send(tx, &Reply::Ok),
                Err(e) => ctx.send_error(tx, e.code, &e.message),
            }
            Phase::Ready
        }
        JobResult::UploadOpened(opening, opened) => {
            transfer::upload_opened(st, tx, ctx, *opening, opened)
        }
        JobResult::UploadPrefix(up, crc) => transfer::offer_upload(st, tx, ctx, up, crc),
        JobResult::UploadRestarted(up, result, then) => {
            transfer::restarted(st, tx, ctx, up, result, then)
        }
        JobResult::Published(up, outcome) => transfer::published(st, tx, ctx, up, outcome),
        JobResult::DownloadPrefix(down, crc) => transfer::begin_download(st, tx, ctx, down, crc),
        JobResult::TargetChecked(opening, unchanged) => {
            transfer::target_checked(st, tx, ctx, *opening, unchanged)
        }
        JobResult::TreeRemoved {
            user,
            jail,
            removal,
            piece,
        } => {
            settle_piece(ctx, &user, &piece);
            match (piece.result, removal) {
                (Ok(false), Some(removal)) => {
                    // Progress, at most one waiting: a client that does not
                    // read holds one small frame, not one per piece.
                    if tx.is_empty() {
                        let entries = removal.removed();
                        ctx.send(tx, &Reply::Removing { entries });
                    }
                    let owner = user.clone();
                    let job = remove_tree_job(jail, user, TreeWork::Going(removal));
                    ctx.worker
                        .submit(Lane::Sync, &owner, st.key, st.generation, job);
                    Phase::Waiting
                }
                (Ok(_), _) => {
                    ctx.send(tx, &Reply::Ok);
                    Phase::Ready
                }
                (Err(e), _) => {
                    ctx.send_error(tx, e.code, &e.message);
                    Phase::Ready
                }
            }
        }
        other => {
            orphaned(ctx, other);
            Phase::Waiting
        }
    };
}

/// A job finished after its session closed, or a server job: settle its
/// bookkeeping.
pub fn orphaned(ctx: &mut Ctx, result: JobResult) {
    match result {
        JobResult::Listed(_) | JobResult::Closed => {}
        JobResult::Changed {
            user,
            reserved,
            entries,
            result,
        } => {
            // Nobody to tell how it went.
            let _ = settle_change(ctx, &user, (reserved, entries), result);
        }
        JobResult::UploadOpened(opening, opened) => transfer::orphan_opening(ctx, *opening, opened),
        JobResult::UploadPrefix(up, _) => {
            transfer::end_upload(ctx, *up, UploadEnd::Keep, "connection closed");
        }
        JobResult::UploadRestarted(up, result, _) => {
            if let Ok(change) = result {
                ctx.accounts.apply(up.user_name(), change);
            }
            transfer::end_upload(ctx, *up, UploadEnd::Keep, "connection closed");
        }
        JobResult::Published(up, outcome) => transfer::settle_published(ctx, *up, outcome),
        JobResult::DownloadPrefix(down, _) => transfer::release_download(ctx, *down),
        JobResult::TargetChecked(opening, _) => transfer::orphan_check(ctx, *opening),
        JobResult::SmallStored { user, results, .. } => batch::orphan_stored(ctx, &user, results),
        JobResult::PartialRemoved { user, path, result } => {
            transfer::partial_removed(ctx, &user, &path, result);
        }
        JobResult::Swept(user, Ok(change)) => {
            if change.bytes != 0 {
                log!(
                    Info,
                    "user {}: removed stale partial uploads ({} bytes)",
                    clean(&user),
                    change.bytes.unsigned_abs()
                );
            }
            ctx.accounts.apply(&user, change);
        }
        JobResult::Swept(user, Err(e)) => {
            log!(
                Warn,
                "user {}: sweeping partial uploads failed: {e}",
                clean(&user)
            )
        }
        JobResult::HomeOpened(user, opened) => ctx.accounts.opened(&user, opened),
        // The session is gone: count what was removed, stop there.
        JobResult::TreeRemoved { user, piece, .. } => settle_piece(ctx, &user, &piece),
    }
}

/// A deadline passed. Returns true when the connection should close now.
pub fn timeout(st: &mut State, tx: &mut Buffer, ctx: &mut Ctx) -> bool {
    let closing = Phase::Closing {
        until: ctx.now + LINGER,
    };
    match std::mem::replace(&mut st.phase, Phase::Waiting) {
        Phase::Penalty { close, .. } => {
            ctx.send_error(tx, ErrorCode::AuthFailed, "login failed");
            st.phase = if close { closing } else { Phase::Login };
        }
        Phase::Closing { .. } | Phase::Done => return true,
        Phase::Deferred(d) => {
            st.phase = match d.op {
                DeferredOp::Put { ref path, put } => {
                    transfer::put_start(st, tx, ctx, path, put, Some(&d))
                }
                DeferredOp::Get {
                    ref path,
                    offset,
                    prefix_crc,
                } => transfer::get_start(st, tx, ctx, path, offset, prefix_crc, Some(&d)),
            };
        }
        Phase::Hello | Phase::Login | Phase::Challenged(_) => {
            log!(Info, "{} login timed out", st.peer);
            ctx.send_error(tx, ErrorCode::Timeout, "login timed out");
            st.phase = closing;
        }
        Phase::Waiting => {
            // A disk job is slow; keep waiting, the job's result resumes us.
            st.active = ctx.now;
            st.phase = Phase::Waiting;
        }
        Phase::Batch(b) if b.storing() => {
            // Likewise: the stored batch's result resumes us.
            st.active = ctx.now;
            st.phase = Phase::Batch(b);
        }
        phase @ (Phase::Ready | Phase::Listing(_)) => {
            st.phase = phase;
            let secs = ctx.cfg.idle_timeout.as_secs();
            log!(
                Info,
                "{} {} idle for {secs} s; closing",
                st.peer,
                clean(st.user())
            );
            ctx.send_error(
                tx,
                ErrorCode::Timeout,
                &format!("idle for {secs} s; closing"),
            );
            abandon(st, ctx);
            st.phase = closing;
        }
        phase => {
            st.phase = phase;
            let secs = ctx.cfg.stall_timeout.as_secs();
            log!(
                Info,
                "{} {} transfer stalled for {secs} s; closing",
                st.peer,
                clean(st.user())
            );
            ctx.send_error(
                tx,
                ErrorCode::Timeout,
                &format!("transfer stalled for {secs} s"),
            );
            abandon(st, ctx);
            st.phase = closing;
        }
    }
    false
}

/// Ends whatever the session was doing (an upload keeps its partial file
/// for resume), without replying.
pub fn abandon(st: &mut State, ctx: &mut Ctx) {
    match std::mem::replace(&mut st.phase, Phase::Ready) {
        Phase::PutOffered(up) | Phase::Receiving(up) => {
            transfer::end_upload(ctx, *up, UploadEnd::Keep, "abandoned");
        }
        Phase::Sending(down) => transfer::end_download(st, ctx, *down, "abandoned"),
        Phase::Batch(b) => {
            let user = st.user().to_owned();
            batch::abandon(ctx, &user, *b);
        }
        other => st.phase = other,
    }
}

/// The connection is gone: release what the session held.
pub fn closed(st: &mut State, ctx: &mut Ctx) {
    abandon(st, ctx);
    if let Some(login) = st.login.take() {
        if let Some(acc) = ctx.accounts.get_mut(&login.user) {
            acc.sessions = acc.sessions.saturating_sub(1);
        }
        log!(Debug, "{} logout {}", st.peer, clean(&login.user));
    }
}
