//! Lockouts under parallel guessing, per-address limits over IPv6, and
//! proofs checked against the account as it is when they arrive.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ftpd::proto::{ErrorCode, NONCE_LEN, Reply, Request};
use ftpd::scram;

use crate::util::{DataDir, FTPD, Raw, TestServer, assert_success, run_with_stdin, stderr};

/// Log lines about logins of `user`, gathered until `expected` of them
/// arrived (or 20 s passed: then the assertion that follows shows what
/// did arrive).
fn login_outcomes(server: &TestServer, user: &str, expected: usize) -> (usize, usize) {
    let failed = format!("login failed for {user:?}");
    let refused = format!("login refused for {user:?}: locked out");
    let (mut failures, mut refusals) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while failures + refusals < expected && Instant::now() < deadline {
        for line in server.log_lines() {
            failures += usize::from(line.contains(&failed));
            refusals += usize::from(line.contains(&refused));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (failures, refusals)
}

/// Connects, says hello and asks for a challenge for `user`.
fn challenged(addr: SocketAddr, user: &str) -> Raw {
    let mut c = Raw::connect(addr);
    c.hello();
    let reply = c.call(&Request::LoginStart {
        user: user.into(),
        client_nonce: vec![9; NONCE_LEN],
    });
    assert!(
        matches!(reply, Reply::Challenge { .. }),
        "no challenge: {reply:?}"
    );
    c
}

#[test]
fn parallel_wrong_proofs_are_checked_at_most_lockout_after_times() {
    let data = DataDir::new();
    data.add_user("bob", "bob-pw", None);
    let server = TestServer::start(&data, &["--lockout-after", "3"]);
    // Thirty connections hold a challenge at once, then all send a guess.
    let mut conns: Vec<Raw> = (0..30).map(|_| challenged(server.addr, "bob")).collect();
    for c in &mut conns {
        c.send(&Request::LoginProof { proof: vec![0; 32] });
    }
    let codes: Vec<ErrorCode> = conns
        .iter_mut()
        .map(|c| match c.recv() {
            Some(Reply::Error { code, .. }) => code,
            other => panic!("expected an error, got {other:?}"),
        })
        .collect();
    let checked = codes
        .iter()
        .filter(|&&c| c == ErrorCode::AuthFailed)
        .count();
    let locked = codes.iter().filter(|&&c| c == ErrorCode::LockedOut).count();
    assert_eq!((checked, locked), (3, 27), "{codes:?}");
    assert_eq!(login_outcomes(&server, "bob", 30), (3, 27));
}

#[test]
fn parallel_guesses_over_many_names_are_checked_at_most_addr_lockout_after_times() {
    let data = DataDir::new();
    let server = TestServer::start(&data, &["--addr-lockout-after", "5"]);
    let mut conns: Vec<Raw> = (0..30)
        .map(|i| challenged(server.addr, &format!("user{i}")))
        .collect();
    for c in &mut conns {
        c.send(&Request::LoginProof { proof: vec![0; 32] });
    }
    let checked = conns
        .iter_mut()
        .map(|c| c.recv())
        .filter(|r| {
            matches!(
                r,
                Some(Reply::Error {
                    code: ErrorCode::AuthFailed,
                    ..
                })
            )
        })
        .count();
    assert_eq!(checked, 5);
}

#[test]
fn thirty_ftpc_processes_guessing_at_once_get_three_guesses() {
    let data = DataDir::new();
    data.add_user("bob", "bob-pw", None);
    let server = TestServer::start(&data, &["--lockout-after", "3"]);
    let children: Vec<Child> = (0..30)
        .map(|i| {
            server
                .ftpc_cmd("bob", &format!("guess{i}"), &["pwd"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn ftpc")
        })
        .collect();
    let mut wrong = 0;
    for child in children {
        let out = child.wait_with_output().expect("wait ftpc");
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        wrong += usize::from(stderr(&out).contains("wrong user name or password"));
    }
    assert_eq!(wrong, 3, "proofs checked, by the replies");
    let (failures, refusals) = login_outcomes(&server, "bob", 30);
    assert_eq!(failures, 3, "proofs checked, by the log");
    assert_eq!(refusals, 27);
}

/// A challenge for `user` and the proof of `password` for it, not sent yet.
fn challenge_and_proof(c: &mut Raw, user: &str, password: &str) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    scram::fill_random(&mut nonce).unwrap();
    let reply = c.call(&Request::LoginStart {
        user: user.into(),
        client_nonce: nonce.to_vec(),
    });
    let Reply::Challenge {
        server_nonce,
        salt,
        kdf,
    } = reply
    else {
        panic!("expected a challenge, got {reply:?}");
    };
    let keys = scram::client_keys(password.as_bytes(), &salt, &kdf).unwrap();
    let auth = scram::Transcript {
        user,
        client_nonce: &nonce,
        server_nonce: &server_nonce,
        salt: &salt,
        kdf,
        channel_binding: c.channel_binding().as_ref(),
    }
    .auth_message();
    scram::client_proof(&keys, &auth).to_vec()
}

/// Makes the server notice the changed user file, as the next login does.
fn reload_through_another_login(server: &TestServer) {
    drop(challenged(server.addr, "someone"));
}

#[test]
fn a_proof_made_before_passwd_is_checked_against_the_new_password() {
    let data = DataDir::new();
    data.add_user("alice", "old-pw", None);
    data.add_user("carol", "carol-pw", None);
    let server = TestServer::start(&data, &[]);
    let mut c = server.raw();
    c.hello();
    let proof = challenge_and_proof(&mut c, "alice", "old-pw");

    let out = run_with_stdin(
        data.admin(&["user", "passwd", "alice", "--password-stdin"]),
        "new-pw\n",
    );
    assert_success(&out, "ftpd user passwd");
    reload_through_another_login(&server);

    match c.call(&Request::LoginProof { proof }) {
        Reply::Error { code, .. } => assert_eq!(code, ErrorCode::AuthFailed),
        other => panic!("the old password still logs in: {other:?}"),
    }
    let mut fresh = server.raw();
    fresh.hello();
    assert!(matches!(
        fresh.login("alice", "new-pw"),
        Reply::LoginOk { .. }
    ));

    // The same for a user deleted between challenge and proof.
    let mut c = server.raw();
    c.hello();
    let proof = challenge_and_proof(&mut c, "carol", "carol-pw");
    assert_success(
        &data.admin(&["user", "del", "carol"]).output().unwrap(),
        "ftpd user del",
    );
    reload_through_another_login(&server);
    match c.call(&Request::LoginProof { proof }) {
        Reply::Error { code, .. } => assert_eq!(code, ErrorCode::AuthFailed),
        other => panic!("a deleted user logged in: {other:?}"),
    }
}

/// `ftpd` listening on `[::1]`, killed on drop.
struct V6Server {
    child: Child,
    addr: SocketAddr,
}

impl V6Server {
    /// Starts it, or says why not (no IPv6 loopback here).
    fn start(data: &DataDir, extra: &[&str]) -> Result<V6Server, String> {
        std::net::TcpListener::bind("[::1]:0").map_err(|e| format!("no IPv6 loopback: {e}"))?;
        let mut child = Command::new(FTPD)
            .arg("--root")
            .arg(data.path())
            .args(["--listen", "[::1]:0", "--login-delay-ms", "20"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ftpd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("ftpd did not print its address");
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        Ok(V6Server { child, addr })
    }
}

impl Drop for V6Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Loopback has a single IPv6 address, so this shows that the limits hold
/// for IPv6 clients; that the whole /64 counts as one client is shown by
/// the unit tests in `src/server/addr.rs` and `src/server/guard.rs`.
#[test]
fn limits_hold_for_ipv6_clients() {
    let data = DataDir::new();
    data.add_user("bob", "bob-pw", None);
    let server = match V6Server::start(&data, &["--lockout-after", "2", "--max-conns-per-ip", "4"])
    {
        Ok(server) => server,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let mut conns: Vec<Raw> = (0..3).map(|_| challenged(server.addr, "bob")).collect();
    for c in &mut conns {
        c.send(&Request::LoginProof { proof: vec![0; 32] });
    }
    let codes: Vec<ErrorCode> = conns
        .iter_mut()
        .filter_map(|c| match c.recv() {
            Some(Reply::Error { code, .. }) => Some(code),
            _ => None,
        })
        .collect();
    let checked = codes
        .iter()
        .filter(|&&c| c == ErrorCode::AuthFailed)
        .count();
    let locked = codes.iter().filter(|&&c| c == ErrorCode::LockedOut).count();
    assert_eq!((checked, locked), (2, 1), "{codes:?}");
    // Three connections are open; the fourth fits, the fifth is turned away.
    let mut fourth = Raw::connect(server.addr);
    fourth.hello();
    let mut fifth = Raw::connect(server.addr);
    match fifth.recv() {
        Some(Reply::Error { code, message }) => {
            assert_eq!(code, ErrorCode::TooManySessions);
            assert!(message.contains("too many connections"), "{message}");
        }
        other => panic!("fifth connection not turned away: {other:?}"),
    }
}
