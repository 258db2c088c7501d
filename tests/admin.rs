//! `ftpd` as administrators run it: the command line's ranges, and
//! `ftpd user ...` commands run at the same time.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ftpd::proto::{ErrorCode, Reply, Request};

use crate::util::{DataDir, FTPD, TEST_KDF_LOG_N, TestServer, stderr};

#[test]
fn concurrent_user_adds_all_end_up_in_the_user_file() {
    const USERS: usize = 20;
    let data = DataDir::new();
    let children: Vec<_> = (0..USERS)
        .map(|i| {
            let name = format!("user{i}");
            let mut child = data
                .admin(&[
                    "user",
                    "add",
                    &name,
                    "--password-stdin",
                    "--kdf-log-n",
                    TEST_KDF_LOG_N,
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn ftpd user add");
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(b"pw\n").expect("password");
            (name, child)
        })
        .collect();
    for (name, child) in children {
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "adding {name}: {}", stderr(&out));
    }
    let text = std::fs::read_to_string(data.path().join("users.json")).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).expect("users.json is whole");
    let mut names: Vec<&str> = file["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..USERS).map(|i| format!("user{i}")).collect();
    expected.sort();
    assert_eq!(names, expected, "users lost");
    // Every one of them can log in.
    let server = TestServer::start(&data, &[]);
    for name in &expected {
        server.ok(name, "pw", &["pwd"]);
    }
}

/// Runs `ftpd ARGS` (serving on a free port if the flags are accepted) and
/// returns its exit code and stderr, or None if it was still serving after
/// 10 s (then it is killed).
fn serve_briefly(args: &[&str]) -> (Option<i32>, String) {
    let data = DataDir::new();
    let mut child = Command::new(FTPD)
        .arg("--root")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ftpd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    let code = out.status.code();
    (code, stderr(&out))
}

#[test]
fn out_of_range_flags_are_refused_with_a_clear_message() {
    let cases: [(&str, &str, &str); 8] = [
        ("--login-delay-ms", "18446744073709551615", "0..=60000"),
        ("--idle-timeout", "99999999999", "1..=604800"),
        ("--login-timeout", "0", "1..=3600"),
        ("--stall-timeout", "18446744073709551615", "1..=86400"),
        ("--lockout-secs", "18446744073709551615", "1..=86400"),
        ("--partial-ttl-hours", "18446744073709551615", "1..=8760"),
        ("--max-conns", "0", "1..=1000000"),
        ("--lockout-after", "0", "1..=1000000"),
    ];
    for (flag, value, range) in cases {
        let (code, err) = serve_briefly(&[flag, value]);
        assert_eq!(code, Some(2), "{flag} {value}: {err}");
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag}"))
                && err.contains(&format!("is not in {range}")),
            "{flag} {value}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Every numeric flag at one end of its range, then the other: the server
/// serves logins, failed logins (the delay and lockout arithmetic) and
/// commands, and is still running.
#[test]
fn the_server_never_panics_at_the_ends_of_the_ranges() {
    let highest = [
        ("--max-conns", "1000000"),
        ("--max-conns-per-ip", "1000000"),
        ("--max-sessions-per-user", "1000000"),
        ("--idle-timeout", "604800"),
        ("--login-timeout", "3600"),
        ("--stall-timeout", "86400"),
        ("--partial-ttl-hours", "8760"),
        ("--login-delay-ms", "60000"),
        ("--lockout-after", "1000000"),
        ("--addr-lockout-after", "1000000"),
        ("--lockout-secs", "86400"),
    ];
    let lowest = [
        ("--max-conns", "1"),
        ("--max-conns-per-ip", "1"),
        ("--max-sessions-per-user", "0"),
        ("--idle-timeout", "1"),
        ("--login-timeout", "1"),
        ("--stall-timeout", "1"),
        ("--partial-ttl-hours", "1"),
        ("--login-delay-ms", "0"),
        ("--lockout-after", "1"),
        ("--addr-lockout-after", "1"),
        ("--lockout-secs", "1"),
    ];
    for flags in [highest, lowest] {
        let data = DataDir::new();
        data.add_user("alice", "alice-pw", None);
        let args: Vec<&str> = flags.iter().flat_map(|(f, v)| [*f, *v]).collect();
        let mut server = TestServer::start(&data, &args);
        // A failed login: its delay is computed at once (the reply may
        // take up to a minute; nobody waits for it here).
        let mut failing = server.raw();
        failing.hello();
        failing.send(&Request::LoginStart {
            user: "alice".into(),
            client_nonce: vec![3; ftpd::proto::NONCE_LEN],
        });
        assert!(matches!(failing.recv(), Some(Reply::Challenge { .. })));
        failing.send(&Request::LoginProof { proof: vec![0; 32] });
        if flags == lowest {
            // One connection at most: the failing one must go first.
            match failing.recv() {
                Some(Reply::Error { code, .. }) => assert_eq!(code, ErrorCode::AuthFailed),
                other => panic!("{other:?}"),
            }
            drop(failing);
            assert!(
                server
                    .wait_log("disconnected", Duration::from_secs(10))
                    .is_some()
            );
            // The lockout (one failure) is over after a second. On a busy
            // machine the one-second login timeout may win over the login:
            // either is fine, a panic is not.
            std::thread::sleep(Duration::from_millis(1100));
            let mut c = server.raw();
            c.hello();
            match c.login("alice", "alice-pw") {
                Reply::LoginOk { .. }
                | Reply::Error {
                    code: ErrorCode::Timeout,
                    ..
                } => {}
                other => panic!("{other:?}"),
            }
        } else {
            let mut c = server.raw();
            c.hello();
            assert!(matches!(
                c.login("alice", "alice-pw"),
                Reply::LoginOk { .. }
            ));
            assert_eq!(c.call(&Request::Pwd), Reply::Cwd("/".into()));
            drop(failing);
        }
        assert!(
            server.child.try_wait().expect("try_wait").is_none(),
            "ftpd exited with {flags:?}"
        );
        server.kill();
    }
}
