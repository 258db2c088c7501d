//! Accounts and login: SCRAM exchange, decoys, replay, lockouts.

use std::collections::HashSet;
use std::time::Duration;

use ftpd::proto::{ErrorCode, NONCE_LEN, Reply, Request};
use ftpd::scram;

use crate::util::{DataDir, Raw, TestServer};

fn server_with_users(extra: &[&str]) -> (DataDir, TestServer) {
    let data = DataDir::new();
    data.add_user("alice", "alice-pw", None);
    data.add_user("bob", "bob-pw", None);
    let server = TestServer::start(&data, extra);
    (data, server)
}

#[test]
fn login_succeeds_and_the_server_proves_itself() {
    let (_data, server) = server_with_users(&[]);
    let mut c = server.raw();
    c.hello();
    // Raw::login checks the server signature itself.
    assert!(matches!(
        c.login("alice", "alice-pw"),
        Reply::LoginOk { .. }
    ));
    assert_eq!(c.call(&Request::Pwd), Reply::Cwd("/".into()));
}

#[test]
fn wrong_password_and_unknown_user_fail_identically() {
    let (_data, server) = server_with_users(&[]);
    let attempt = |user: &str| {
        let mut c = server.raw();
        c.hello();
        c.login_capture(user, "wrong")
    };
    let (known_reply, known_challenge, _) = attempt("alice");
    let (unknown_reply, unknown_challenge, _) = attempt("nobody");
    assert_eq!(known_reply, unknown_reply);
    match (known_challenge, unknown_challenge) {
        (
            Reply::Challenge {
                server_nonce: n1,
                salt: s1,
                kdf: k1,
            },
            Reply::Challenge {
                server_nonce: n2,
                salt: s2,
                kdf: k2,
            },
        ) => {
            assert_eq!((n1.len(), s1.len(), k1), (n2.len(), s2.len(), k2));
        }
        other => panic!("expected two challenges, got {other:?}"),
    }
    // The decoy salt is stable, so asking twice does not reveal a decoy.
    let (_, again, _) = attempt("nobody");
    let salt = |r: &Reply| match r {
        Reply::Challenge { salt, .. } => salt.clone(),
        _ => Vec::new(),
    };
    assert_eq!(salt(&again), salt(&attempt("nobody").1));
}

/// One login exchange with a chosen client nonce: the challenge, the proof
/// sent and the server's answer.
fn login_with_nonce(
    c: &mut Raw,
    user: &str,
    password: &str,
    nonce: &[u8],
) -> (Reply<'static>, Vec<u8>, Reply<'static>) {
    let challenge = c.call(&Request::LoginStart {
        user: user.into(),
        client_nonce: nonce.to_vec(),
    });
    let Reply::Challenge {
        server_nonce,
        salt,
        kdf,
    } = &challenge
    else {
        panic!("expected a challenge, got {challenge:?}");
    };
    let keys = scram::client_keys(password.as_bytes(), salt, kdf).expect("kdf");
    let auth = scram::Transcript {
        user,
        client_nonce: nonce,
        server_nonce,
        salt,
        kdf: *kdf,
        channel_binding: c.channel_binding().as_ref(),
    }
    .auth_message();
    let proof = scram::client_proof(&keys, &auth).to_vec();
    let reply = c.call(&Request::LoginProof {
        proof: proof.clone(),
    });
    (challenge, proof, reply)
}

fn server_nonce(challenge: &Reply) -> Vec<u8> {
    match challenge {
        Reply::Challenge { server_nonce, .. } => server_nonce.clone(),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

#[test]
fn a_replayed_proof_is_refused() {
    let (_data, server) = server_with_users(&[]);
    let mut nonce = [0u8; NONCE_LEN];
    scram::fill_random(&mut nonce).expect("random");
    let mut c = server.raw();
    c.hello();
    let (first, proof, reply) = login_with_nonce(&mut c, "alice", "alice-pw", &nonce);
    assert!(matches!(reply, Reply::LoginOk { .. }), "{reply:?}");
    // Replay the captured exchange byte for byte on a new connection: only
    // the server's fresh nonce can make the proof stale.
    let mut replay = server.raw();
    replay.hello();
    let second = replay.call(&Request::LoginStart {
        user: "alice".into(),
        client_nonce: nonce.to_vec(),
    });
    assert_ne!(
        server_nonce(&first),
        server_nonce(&second),
        "the server reused its nonce"
    );
    match replay.call(&Request::LoginProof { proof }) {
        Reply::Error { code, .. } => assert_eq!(code, ErrorCode::AuthFailed),
        other => panic!("replay accepted: {other:?}"),
    }
}

#[test]
fn every_challenge_carries_a_fresh_server_nonce() {
    let (_data, server) = server_with_users(&[]);
    let mut seen = HashSet::new();
    for user in ["alice", "alice", "nobody", "nobody", "bob"] {
        let mut c = server.raw();
        c.hello();
        let challenge = c.call(&Request::LoginStart {
            user: user.into(),
            client_nonce: vec![7; NONCE_LEN],
        });
        let nonce = server_nonce(&challenge);
        assert_eq!(nonce.len(), NONCE_LEN, "{user}");
        assert!(seen.insert(nonce), "{user}: a server nonce came twice");
    }
}

#[test]
fn lockout_holds_for_the_pair_without_slowing_others() {
    let (_data, server) = server_with_users(&["--lockout-after", "3", "--login-delay-ms", "300"]);
    for _ in 0..3 {
        let mut c = server.raw();
        c.hello();
        match c.login("bob", "guess") {
            Reply::Error { code, .. } => assert_eq!(code, ErrorCode::AuthFailed),
            other => panic!("{other:?}"),
        }
    }
    // Now even the right password is refused for bob from this address.
    let mut c = server.raw();
    c.hello();
    let reply = c.call(&Request::LoginStart {
        user: "bob".into(),
        client_nonce: vec![1; NONCE_LEN],
    });
    match reply {
        Reply::Error { code, message } => {
            assert_eq!(code, ErrorCode::LockedOut);
            assert!(message.contains("try again"), "{message}");
        }
        other => panic!("expected a lockout, got {other:?}"),
    }
    // While a failing login waits out its penalty, alice logs in: her reply
    // arrives first, so the penalty did not hold up the reactor. Her keys
    // are derived before carol's penalty starts, so within it she only has
    // a round trip and a few HMACs to do.
    let mut alice = server.raw();
    alice.hello();
    let mut alice_nonce = [0u8; NONCE_LEN];
    scram::fill_random(&mut alice_nonce).expect("random");
    let challenge = alice.call(&Request::LoginStart {
        user: "alice".into(),
        client_nonce: alice_nonce.to_vec(),
    });
    let Reply::Challenge {
        server_nonce,
        salt,
        kdf,
    } = &challenge
    else {
        panic!("expected a challenge, got {challenge:?}");
    };
    let keys = scram::client_keys(b"alice-pw", salt, kdf).expect("kdf");
    let auth = scram::Transcript {
        user: "alice",
        client_nonce: &alice_nonce,
        server_nonce,
        salt,
        kdf: *kdf,
        channel_binding: alice.channel_binding().as_ref(),
    }
    .auth_message();
    let mut slow = server.raw();
    slow.hello();
    let mut nonce = [0u8; NONCE_LEN];
    scram::fill_random(&mut nonce).expect("random");
    slow.send(&Request::LoginStart {
        user: "carol".into(),
        client_nonce: nonce.to_vec(),
    });
    assert!(matches!(slow.recv(), Some(Reply::Challenge { .. })));
    slow.send(&Request::LoginProof { proof: vec![0; 32] });
    let reply = alice.call(&Request::LoginProof {
        proof: scram::client_proof(&keys, &auth).to_vec(),
    });
    assert!(matches!(reply, Reply::LoginOk { .. }), "{reply:?}");
    slow.stream.set_nonblocking(true).expect("nonblocking");
    let mut probe = [0u8; 1];
    let pending = slow.stream.peek(&mut probe);
    assert!(
        matches!(pending, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "carol's failure was answered before alice's login finished: {pending:?}"
    );
    slow.stream.set_nonblocking(false).expect("blocking");
    assert!(matches!(
        slow.recv(),
        Some(Reply::Error {
            code: ErrorCode::AuthFailed,
            ..
        })
    ));
    // The failure is logged with the client's address.
    assert!(
        server
            .wait_log("login failed for \"carol\"", Duration::from_secs(5))
            .is_some_and(|l| l.contains("127.0.0.1"))
    );
}

#[test]
fn commands_before_login_are_refused() {
    let (_data, server) = server_with_users(&[]);
    let mut c = server.raw();
    c.hello();
    match c.call(&Request::Mkdir { path: "x".into() }) {
        Reply::Error { code, .. } => assert_eq!(code, ErrorCode::NotLoggedIn),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.recv(), None);
}

#[test]
fn users_added_and_removed_while_the_server_runs() {
    let (data, server) = server_with_users(&[]);
    data.add_user("carol", "carol-pw", Some("10M"));
    let mut c = server.raw();
    c.hello();
    assert!(matches!(
        c.login("carol", "carol-pw"),
        Reply::LoginOk { .. }
    ));
    let out = data.admin(&["user", "del", "carol"]).output().unwrap();
    crate::util::assert_success(&out, "user del");
    let mut c = server.raw();
    c.hello();
    assert!(matches!(
        c.login("carol", "carol-pw"),
        Reply::Error {
            code: ErrorCode::AuthFailed,
            ..
        }
    ));
    let mut c = server.raw();
    c.hello();
    assert!(matches!(
        c.login("alice", "alice-pw"),
        Reply::LoginOk { .. }
    ));
    let users = std::fs::read_to_string(data.path().join("users.json")).unwrap();
    assert!(users.contains("alice") && !users.contains("carol"));
}

#[test]
fn sessions_per_user_are_limited() {
    let (_data, server) = server_with_users(&["--max-sessions-per-user", "2"]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = server.raw();
        c.hello();
        assert!(matches!(
            c.login("alice", "alice-pw"),
            Reply::LoginOk { .. }
        ));
        held.push(c);
    }
    let mut c = server.raw();
    c.hello();
    assert!(matches!(
        c.login("alice", "alice-pw"),
        Reply::Error {
            code: ErrorCode::TooManySessions,
            ..
        }
    ));
    let mut other = server.raw();
    other.hello();
    assert!(matches!(
        other.login("bob", "bob-pw"),
        Reply::LoginOk { .. }
    ));
}
