//! Fairness under a flood: one user pipelines `Mkdir /q` + `Rmdir /q` on
//! one connection as fast as the server takes them, while another user
//! pings every few milliseconds; prints the pinger's round-trip times.
//!
//! `cargo run --release --example fairness -- ADDR FLOOD_USER FLOOD_PW USER PW [SECONDS] [uploads]`
//! (`scripts/fairness.sh` sets up a server and both users).
//!
//! With `uploads`, the flooding user instead runs 63 sessions that upload
//! 4 MiB files in a loop (each upload ends in a sync on the helper
//! threads), and the other user times 1 KB uploads.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ftpd::frame;
use ftpd::proto::{MAGIC, NONCE_LEN, PROTOCOL_VERSION, Reply, Request};
use ftpd::scram;

/// A blocking session that reads whole frames.
struct Session {
    stream: TcpStream,
    rx: Vec<u8>,
}

impl Session {
    fn connect(addr: &str) -> anyhow::Result<Session> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Session {
            stream,
            rx: Vec::new(),
        })
    }

    fn send(&mut self, req: &Request) -> anyhow::Result<()> {
        self.stream.write_all(&frame::encode(req)?)?;
        Ok(())
    }

    /// Hands the next reply to `look` (replies borrow the receive buffer).
    fn recv<T>(&mut self, look: impl FnOnce(Reply) -> T) -> anyhow::Result<T> {
        loop {
            if let Some((reply, n)) = frame::decode::<Reply>(&self.rx)? {
                let seen = look(reply);
                self.rx.drain(..n);
                return Ok(seen);
            }
            let mut buf = [0u8; 64 * 1024];
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.rx.extend_from_slice(&buf[..n]);
        }
    }

    fn login(addr: &str, user: &str, password: &str) -> anyhow::Result<Session> {
        let mut s = Session::connect(addr)?;
        s.send(&Request::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
        })?;
        s.recv(|_| ())?;
        let mut nonce = [0u8; NONCE_LEN];
        scram::fill_random(&mut nonce)?;
        s.send(&Request::LoginStart {
            user: user.into(),
            client_nonce: nonce.to_vec(),
        })?;
        let challenge = s.recv(|r| match r {
            Reply::Challenge {
                server_nonce,
                salt,
                kdf,
            } => Some((server_nonce, salt, kdf)),
            _ => None,
        })?;
        let Some((server_nonce, salt, kdf)) = challenge else {
            bail!("no challenge");
        };
        let keys = scram::client_keys(password.as_bytes(), &salt, &kdf)?;
        let auth = scram::Transcript {
            user,
            client_nonce: &nonce,
            server_nonce: &server_nonce,
            salt: &salt,
            kdf,
            // scripts/fairness.sh runs the server --plaintext.
            channel_binding: None,
        }
        .auth_message();
        s.send(&Request::LoginProof {
            proof: scram::client_proof(&keys, &auth).to_vec(),
        })?;
        let reply = s.recv(|r| format!("{r:?}"))?;
        if !reply.starts_with("LoginOk") {
            bail!("login of {user} failed: {reply}");
        }
        Ok(s)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, flood_user, flood_pw, user, pw, rest @ ..] = args.as_slice() else {
        bail!("usage: fairness ADDR FLOOD_USER FLOOD_PW USER PW [SECONDS]");
    };
    let secs: u64 = rest.first().map_or(Ok(8), |s| s.parse())?;
    if rest.get(1).is_some_and(|m| m == "uploads") {
        return uploads(addr, (flood_user, flood_pw), (user, pw), secs);
    }
    let mut pinger = Session::login(addr, user, pw)?;
    let flood = Session::login(addr, flood_user, flood_pw)?;
    // The flood: one thread writes 400,000 pairs, another drains replies.
    let mut writer = flood.stream.try_clone()?;
    let mut reader = flood.stream;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let writing = std::thread::spawn(move || -> anyhow::Result<u64> {
        let mut burst = Vec::new();
        for _ in 0..1000 {
            frame::encode_into(&Request::Mkdir { path: "/q".into() }, &mut burst)?;
            frame::encode_into(&Request::Rmdir { path: "/q".into() }, &mut burst)?;
        }
        let mut sent = 0u64;
        while sent < 400_000 && Instant::now() < deadline {
            if writer.write_all(&burst).is_err() {
                break;
            }
            sent += 2000;
        }
        Ok(sent)
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut rtts = Vec::new();
    while Instant::now() < deadline {
        let t = Instant::now();
        pinger.send(&Request::Ping)?;
        if !pinger.recv(|r| matches!(r, Reply::Pong))? {
            bail!("ping not answered with a pong");
        }
        rtts.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = writing
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    rtts.sort();
    println!(
        "flood: {sent} requests written in {secs} s; other user's pings: {} answered, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        rtts.len(),
        percentile(&rtts, 0.5).as_secs_f64() * 1e3,
        percentile(&rtts, 0.99).as_secs_f64() * 1e3,
        rtts.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}

/// Uploads `bytes` as `path`; true when the server confirmed it.
fn upload(s: &mut Session, path: &str, bytes: &[u8]) -> anyhow::Result<bool> {
    s.send(&Request::PutStart {
        path: path.into(),
        size: bytes.len() as u64,
        resume: false,
    })?;
    if !s.recv(|r| matches!(r, Reply::PutReady { .. }))? {
        return Ok(false);
    }
    s.send(&Request::PutFrom { offset: 0 })?;
    for chunk in bytes.chunks(ftpd::proto::CHUNK_SIZE) {
        s.send(&Request::Chunk(chunk))?;
    }
    s.send(&Request::PutEnd {
        crc32: crc32fast::hash(bytes),
    })?;
    s.recv(|r| matches!(r, Reply::PutDone { .. }))
}

/// 63 sessions of one user upload 4 MiB files in a loop; another user's
/// 1 KB uploads are timed.
fn uploads(
    addr: &str,
    (flood_user, flood_pw): (&str, &str),
    (user, pw): (&str, &str),
    secs: u64,
) -> anyhow::Result<()> {
    const FLOODERS: usize = 63;
    let sessions = (0..FLOODERS)
        .map(|_| Session::login(addr, flood_user, flood_pw))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut s = Session::login(addr, user, pw)?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut flooders = Vec::new();
    for (i, mut s) in sessions.into_iter().enumerate() {
        flooders.push(std::thread::spawn(move || -> anyhow::Result<u64> {
            let big = vec![i as u8; 4 << 20];
            let mut done = 0;
            while Instant::now() < deadline {
                if upload(&mut s, &format!("/big{i}"), &big)? {
                    done += 1;
                }
            }
            Ok(done)
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let small = vec![1u8; 1000];
    let mut times = Vec::new();
    let mut n = 0;
    while Instant::now() < deadline {
        let t = Instant::now();
        if !upload(&mut s, &format!("/small{}", n % 10), &small)? {
            bail!("a 1 KB upload failed");
        }
        times.push(t.elapsed());
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut big = 0;
    for f in flooders {
        big += f
            .join()
            .map_err(|_| anyhow::anyhow!("flooder panicked"))??;
    }
    times.sort();
    println!(
        "{FLOODERS} sessions of one user uploaded {big} files of 4 MiB in {secs} s; the other user's 1 KB uploads: {} done, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}
