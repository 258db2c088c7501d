//! TLS by default: trust and pinning as ftpc users see it, a man in the
//! middle that cannot log in, a recording relay that sees nothing, clear
//! words for mismatched modes, and bad handshakes that hurt no one else.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftpd::frame;
use ftpd::proto::{ErrorCode, Reply, Request};

use crate::util::{self, DataDir, FTPC, Raw, TestServer, stderr, stdout};

const PW: &str = "tls-test-pw";

fn site(extra: &[&str]) -> (DataDir, TestServer) {
    let data = DataDir::new();
    data.add_user("alice", PW, None);
    let server = TestServer::start(&data, extra);
    (data, server)
}

/// `ftpc --server ADDR --user alice ARGS...` with only the flags given
/// (no trust flags of the test helper).
fn ftpc_bare(addr: &str, known_hosts: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(FTPC);
    cmd.args(["--server", addr, "--user", "alice", "--quiet"])
        .arg("--known-hosts")
        .arg(known_hosts)
        .args(args)
        .env("FTPC_PASSWORD", PW)
        .stdin(std::process::Stdio::null());
    util::clean_client_env(&mut cmd);
    cmd.output().expect("run ftpc")
}

/// A known-hosts file of a test's own, empty at first.
struct Hosts(tempfile::TempDir);

impl Hosts {
    fn new() -> Hosts {
        Hosts(tempfile::tempdir().expect("tempdir"))
    }

    fn path(&self) -> std::path::PathBuf {
        self.0.path().join("known_hosts")
    }
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

#[test]
fn an_unknown_key_without_a_terminal_is_refused_with_exit_8_and_its_fingerprint() {
    let (_data, server) = site(&[]);
    let hosts = Hosts::new();
    let fp = server.fingerprint.clone().expect("tls");
    let out = ftpc_bare(&server.addr.to_string(), &hosts.path(), &["ls"]);
    assert_eq!(code(&out), Some(8), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&fp) && err.contains("--fingerprint"), "{err}");
    assert!(!hosts.path().exists(), "nothing may be pinned");
}

#[test]
fn a_matching_fingerprint_is_pinned_after_the_login_and_then_needs_no_flag() {
    let (_data, server) = site(&[]);
    let hosts = Hosts::new();
    let fp = server.fingerprint.clone().expect("tls");
    let addr = server.addr.to_string();
    // A failed login pins nothing: the server has not proved anything yet.
    let mut cmd = std::process::Command::new(FTPC);
    cmd.args(["--server", &addr, "--user", "alice", "--fingerprint", &fp])
        .arg("--known-hosts")
        .arg(hosts.path())
        .arg("ls")
        .env("FTPC_PASSWORD", "wrong")
        .stdin(std::process::Stdio::null());
    util::clean_client_env(&mut cmd);
    let out = cmd.output().expect("ftpc");
    assert_eq!(code(&out), Some(4), "{}", stderr(&out));
    assert!(!hosts.path().exists());

    let out = ftpc_bare(&addr, &hosts.path(), &["--fingerprint", &fp, "ls"]);
    util::assert_success(&out, "ls with --fingerprint");
    let pins = std::fs::read_to_string(hosts.path()).expect("pinned");
    assert_eq!(pins.trim(), format!("{addr} {fp}"));
    let out = ftpc_bare(&addr, &hosts.path(), &["--fingerprint", &fp, "ls"]);
    util::assert_success(&out, "again with --fingerprint");
    let pins_after = std::fs::read_to_string(hosts.path()).expect("pins");
    assert_eq!(pins_after, pins, "an existing pin is not written twice");

    let out = ftpc_bare(&addr, &hosts.path(), &["ping"]);
    util::assert_success(&out, "ping with the pin only");
    let text = stdout(&out);
    assert!(text.contains("TLS 1.3") && text.contains(&fp), "{text}");
    assert!(text.contains("X25519MLKEM768"), "{text}");
}

#[test]
fn a_wrong_fingerprint_is_refused_and_names_both_keys() {
    let (_data, server) = site(&[]);
    let hosts = Hosts::new();
    let fp = server.fingerprint.clone().expect("tls");
    let other = util::tls::own_server().1;
    let out = ftpc_bare(
        &server.addr.to_string(),
        &hosts.path(),
        &["--fingerprint", &other, "ls"],
    );
    assert_eq!(code(&out), Some(8), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&fp) && err.contains(&other), "{err}");
}

#[test]
fn a_changed_key_on_a_pinned_address_is_refused_with_both_fingerprints() {
    let (_data, server) = site(&[]);
    let hosts = Hosts::new();
    let fp = server.fingerprint.clone().expect("tls");
    let addr = server.addr.to_string();
    let old = util::tls::own_server().1;
    std::fs::write(hosts.path(), format!("# pins\n{addr} {old}\n")).expect("pin");
    for extra in [&[][..], &["--accept-new"][..]] {
        let mut args = extra.to_vec();
        args.push("ls");
        let out = ftpc_bare(&addr, &hosts.path(), &args);
        assert_eq!(code(&out), Some(8), "{extra:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("has changed"), "{err}");
        assert!(err.contains(&fp) && err.contains(&old), "{err}");
        assert!(err.contains("line 2 of"), "{err}");
    }
}

#[test]
fn accept_new_pins_an_unknown_key_on_first_contact() {
    let (_data, server) = site(&[]);
    let hosts = Hosts::new();
    let fp = server.fingerprint.clone().expect("tls");
    let addr = server.addr.to_string();
    let out = ftpc_bare(&addr, &hosts.path(), &["--accept-new", "ls"]);
    util::assert_success(&out, "ls --accept-new");
    let pins = std::fs::read_to_string(hosts.path()).expect("pinned");
    assert!(pins.contains(&fp), "{pins}");
    util::assert_success(&ftpc_bare(&addr, &hosts.path(), &["ls"]), "ls with the pin");
    // The same from the environment, as scripts set it.
    let other = Hosts::new();
    let mut cmd = std::process::Command::new(FTPC);
    cmd.args(["--server", &addr, "--user", "alice", "--quiet", "ls"])
        .env("FTPC_PASSWORD", PW)
        .stdin(std::process::Stdio::null());
    util::clean_client_env(&mut cmd);
    cmd.env("FTPC_ACCEPT_NEW", "1")
        .env("FTPC_KNOWN_HOSTS", other.path());
    util::assert_success(&cmd.output().expect("ftpc"), "FTPC_ACCEPT_NEW=1");
    let pins = std::fs::read_to_string(other.path()).expect("pinned");
    assert!(pins.contains(&fp), "{pins}");
}

#[test]
fn a_plaintext_client_is_told_the_server_requires_tls() {
    let (_data, server) = site(&[]);
    let hosts = Hosts::new();
    let out = ftpc_bare(
        &server.addr.to_string(),
        &hosts.path(),
        &["--plaintext", "ls"],
    );
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("requires TLS"), "{}", stderr(&out));
    // The refusal is one plaintext frame a raw client can read.
    let mut raw = Raw::connect_plain(server.addr);
    raw.send(&Request::Ping);
    match raw.recv() {
        Some(Reply::Error { code, .. }) => assert_eq!(code, ErrorCode::TlsRequired),
        other => panic!("expected TlsRequired, got {other:?}"),
    }
}

#[test]
fn a_tls_client_is_told_a_plaintext_server_does_not_speak_tls() {
    let (_data, server) = site(&["--plaintext"]);
    let hosts = Hosts::new();
    let out = ftpc_bare(
        &server.addr.to_string(),
        &hosts.path(),
        &["--accept-new", "ls"],
    );
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("does not speak TLS") && err.contains("trusted links only"),
        "{err}"
    );
    // Both sides asking for plaintext works.
    util::assert_success(&server.ftpc("alice", PW, &["ls"]), "ls --plaintext");
}

/// Reads one frame (header and body) from `r`.
fn read_frame(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header).ok()?;
    let len = u32::from_be_bytes(header) as usize;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    let mut whole = header.to_vec();
    whole.extend_from_slice(&body);
    Some(whole)
}

/// A man in the middle with a key of its own: terminates the client's
/// TLS, opens its own TLS to the server, and relays frames one request and
/// one reply at a time. With `fake_ok`, it answers the proof itself with
/// a made-up `LoginOk`. Returns its address and what it learned.
fn mitm(server: std::net::SocketAddr, fake_ok: bool) -> (String, String, Arc<Mutex<Vec<String>>>) {
    let (config, fingerprint) = util::tls::own_server();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        let Ok((client_tcp, _)) = listener.accept() else {
            return;
        };
        let _ = client_tcp.set_read_timeout(Some(Duration::from_secs(20)));
        let conn = rustls::ServerConnection::new(config).expect("server conn");
        let mut client = rustls::StreamOwned::new(conn, client_tcp);
        let mut upstream = Raw::connect(server);
        let note = |s: String| log.lock().expect("log").push(s);
        while let Some(request) = read_frame(&mut client) {
            let is_proof = matches!(
                frame::decode::<Request>(&request),
                Ok(Some((Request::LoginProof { .. }, _)))
            );
            if is_proof && fake_ok {
                let fake = frame::encode(&Reply::LoginOk {
                    server_signature: vec![7; 32],
                })
                .expect("encode");
                let _ = client.write_all(&fake);
                let _ = client.flush();
                continue;
            }
            upstream.send_raw(&request).expect("relay request");
            let Some(reply) = upstream.recv() else {
                note("server closed".into());
                break;
            };
            note(format!("{reply:?}"));
            if is_proof {
                // Whatever the login said, try to use the session.
                note(format!("after login: {:?}", upstream.call(&Request::Pwd)));
            }
            let bytes = frame::encode(&reply).expect("encode");
            if client
                .write_all(&bytes)
                .and_then(|()| client.flush())
                .is_err()
            {
                break;
            }
        }
    });
    (addr, fingerprint, seen)
}

#[test]
fn a_man_in_the_middle_cannot_log_in_nor_run_a_command_and_is_not_pinned() {
    let (_data, server) = site(&[]);
    let hosts = Hosts::new();
    let (relay, relay_fp, seen) = mitm(server.addr, false);
    // The user was fooled into accepting the relay's key.
    let out = ftpc_bare(&relay, &hosts.path(), &["--fingerprint", &relay_fp, "ls"]);
    assert_eq!(code(&out), Some(4), "{}", stderr(&out));
    let seen = seen.lock().expect("seen").clone();
    assert!(
        seen.iter().any(|s| s.contains("AuthFailed")),
        "the server must refuse a proof made for another channel: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.starts_with("after login:") && !s.contains("Cwd")),
        "the relay must not get a session: {seen:?}"
    );
    assert!(!hosts.path().exists(), "the relay's key is not pinned");
}

#[test]
fn a_man_in_the_middle_cannot_make_the_client_believe_it_logged_in() {
    let (_data, server) = site(&[]);
    let hosts = Hosts::new();
    let (relay, relay_fp, _seen) = mitm(server.addr, true);
    let out = ftpc_bare(&relay, &hosts.path(), &["--fingerprint", &relay_fp, "ls"]);
    assert_eq!(code(&out), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("could not prove it knows your password"),
        "{}",
        stderr(&out)
    );
    assert!(!hosts.path().exists(), "the relay's key is not pinned");
}

/// A TCP relay that records every byte both ways.
fn recording_relay(server: std::net::SocketAddr) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let tape = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&tape);
    std::thread::spawn(move || {
        for client in listener.incoming().take(8) {
            let Ok(client) = client else { return };
            let Ok(upstream) = TcpStream::connect(server) else {
                return;
            };
            for (mut from, mut to) in [
                (
                    client.try_clone().expect("clone"),
                    upstream.try_clone().expect("clone"),
                ),
                (upstream, client),
            ] {
                let tape = Arc::clone(&recorded);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        tape.lock().expect("tape").extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (addr, tape)
}

#[test]
fn a_recording_relay_sees_no_contents_no_names_and_no_password() {
    let (_data, server) = site(&[]);
    let hosts = Hosts::new();
    let fp = server.fingerprint.clone().expect("tls");
    let (relay, tape) = recording_relay(server.addr);
    let dir = tempfile::tempdir().expect("tempdir");
    let name = "secret-plans-7f3a.txt";
    let content = "THE-CONTENT-MARKER-91c2 ".repeat(2000);
    std::fs::write(dir.path().join(name), &content).expect("write");
    let local = dir.path().join(name);
    let local = local.to_str().expect("utf-8");
    for args in [vec!["put", local], vec!["ls"], vec!["get", name, "-"]] {
        let mut all = vec!["--fingerprint", fp.as_str()];
        all.extend(args.iter().copied());
        let out = ftpc_bare(&relay, &hosts.path(), &all);
        util::assert_success(&out, &format!("{args:?} through the relay"));
        if args[0] == "get" {
            assert_eq!(stdout(&out), content);
        }
    }
    let tape = tape.lock().expect("tape").clone();
    assert!(tape.len() > content.len(), "the relay carried the session");
    let contains = |needle: &[u8]| tape.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(b"THE-CONTENT-MARKER"), "file contents in clear");
    assert!(!contains(b"secret-plans"), "a file name in clear");
    assert!(!contains(PW.as_bytes()), "the password in clear");
    assert!(!contains(b"alice"), "the user name in clear");
}

/// Whether another user's session is served promptly right now.
fn ping_ok(server: &TestServer) -> Duration {
    let started = Instant::now();
    let mut c = server.raw();
    c.hello();
    assert_eq!(c.call(&Request::Ping), Reply::Pong);
    started.elapsed()
}

#[test]
fn garbage_stalled_and_flooding_handshakes_leave_others_served() {
    let (_data, server) = site(&["--login-timeout", "2"]);
    // Garbage that claims to be a handshake record.
    let mut garbage = TcpStream::connect(server.addr).expect("connect");
    garbage
        .write_all(&[0x16, 3, 1, 0, 40, 1, 0, 0, 36, 9, 9, 9, 9, 9, 9, 9, 9])
        .expect("garbage");
    garbage.write_all(&[0xAB; 64]).expect("more garbage");
    // A ClientHello cut short: the handshake stalls.
    let mut stalled = TcpStream::connect(server.addr).expect("connect");
    stalled
        .write_all(&[0x16, 3, 1, 2, 0, 1, 0, 1, 252])
        .expect("half a hello");
    // A flood of handshakes from other addresses, never finished.
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|i| {
            let source = format!("127.0.0.{}:0", 2 + i % 3);
            let s = socket2_connect(&source, server.addr)?;
            let mut s = s;
            let _ = s.write_all(&[0x16, 3, 1, 2, 0]);
            Some(s)
        })
        .collect();
    assert!(flood.len() > 100, "the flood could not connect");
    let took = ping_ok(&server);
    assert!(took < Duration::from_secs(5), "ping took {took:?}");

    // The garbage got an alert or a close, not a session.
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    let answered = garbage.read(&mut buf).unwrap_or(0);
    assert!(
        answered == 0 || buf[0] == 0x15,
        "expected an alert or EOF: {:?}",
        &buf[..answered]
    );
    // The stalled handshake is closed by the login time-out.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let _ = stalled.read(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "stalled handshake kept open"
    );
    assert!(ping_ok(&server) < Duration::from_secs(5));
}

#[test]
fn handshakes_that_stall_in_every_slot_hold_them_briefly_and_starve_no_one() {
    // A login time-out far beyond the test's: only the end of the slots'
    // lease can let the next handshake in.
    let (_data, server) = site(&["--login-timeout", "600"]);
    // Well over the server's 64 handshake slots, each taken by a record
    // header whose body never comes.
    let stalled: Vec<TcpStream> = (0..200)
        .filter_map(|i| {
            let source = format!("127.0.0.{}:0", 2 + i % 4);
            let mut s = socket2_connect(&source, server.addr)?;
            s.write_all(&[0x16, 3, 1, 2, 0]).ok()?;
            Some(s)
        })
        .collect();
    assert!(
        stalled.len() > 128,
        "the stalled handshakes could not connect"
    );
    // The session's handshake would fail after its 20 s read timeout.
    let took = ping_ok(&server);
    assert!(took < Duration::from_secs(10), "ping took {took:?}");
    drop(stalled);
}

/// Connects from `source` (a loopback address) to `to`.
fn socket2_connect(source: &str, to: std::net::SocketAddr) -> Option<TcpStream> {
    use rustix::net::{AddressFamily, SocketType};
    let source: std::net::SocketAddr = source.parse().ok()?;
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).ok()?;
    rustix::net::bind(&fd, &source).ok()?;
    rustix::net::connect(&fd, &to).ok()?;
    Some(TcpStream::from(fd))
}

/// A CA of the test's own, and a certificate and key it signed for
/// "localhost", written into `dir` as ca.pem, cert.pem and key.pem.
fn ca_signed_localhost(dir: &std::path::Path) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params.signed_by(&key, &ca).expect("sign");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("ca.pem");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert.pem");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("key.pem");
}

#[test]
fn a_certificate_valid_under_the_system_roots_is_trusted_without_asking_or_pinning() {
    let certs = tempfile::tempdir().expect("tempdir");
    ca_signed_localhost(certs.path());
    let cert = certs.path().join("cert.pem");
    let key = certs.path().join("key.pem");
    let (cert, key) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let (_data, server) = site(&["--tls-cert", cert, "--tls-key", key]);
    let hosts = Hosts::new();
    let addr = format!("localhost:{}", server.addr.port());
    let run = |roots: &std::path::Path| {
        let mut cmd = std::process::Command::new(FTPC);
        cmd.args(["--server", &addr, "--user", "alice", "--quiet"])
            .arg("--known-hosts")
            .arg(hosts.path())
            .arg("ls")
            .env("FTPC_PASSWORD", PW)
            // rustls-native-certs reads the system's roots from here.
            .env("SSL_CERT_FILE", roots)
            .stdin(std::process::Stdio::null());
        util::clean_client_env(&mut cmd);
        cmd.output().expect("ftpc")
    };
    let out = run(&certs.path().join("ca.pem"));
    util::assert_success(&out, "ls trusting the CA");
    assert!(!hosts.path().exists(), "a CA-trusted key is not pinned");
    // Without that root the same key is just unknown.
    let other = tempfile::tempdir().expect("tempdir");
    ca_signed_localhost(other.path());
    let out = run(&other.path().join("ca.pem"));
    assert_eq!(code(&out), Some(8), "{}", stderr(&out));
}

#[test]
fn sighup_reloads_the_given_certificate_and_a_broken_one_keeps_the_old() {
    let files = tempfile::tempdir().expect("tempdir");
    let cert = files.path().join("cert.pem");
    let key = files.path().join("key.pem");
    let make = |dir: &std::path::Path| {
        let source = ftpd::tls::identity::Source::Generated {
            root: dir.to_owned(),
        };
        let fp = source.load().expect("identity").fingerprint.to_string();
        std::fs::copy(dir.join("tls-cert.pem"), &cert).expect("cert");
        std::fs::copy(dir.join("tls-key.pem"), &key).expect("key");
        fp
    };
    let first_dir = tempfile::tempdir().expect("tempdir");
    let first = make(first_dir.path());
    let (c, k) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let (_data, server) = site(&["--tls-cert", c, "--tls-key", k]);
    assert_eq!(server.fingerprint.as_deref(), Some(first.as_str()));
    let hosts = Hosts::new();
    let addr = server.addr.to_string();
    let ls_with = |fp: &str| ftpc_bare(&addr, &hosts.path(), &["--fingerprint", fp, "ls"]);
    util::assert_success(&ls_with(&first), "ls with the first key");

    let second_dir = tempfile::tempdir().expect("tempdir");
    let second = make(second_dir.path());
    let pid = rustix::process::Pid::from_raw(server.child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
    server
        .wait_log("TLS identity reloaded", Duration::from_secs(10))
        .expect("reloaded");
    util::assert_success(&ls_with(&second), "ls with the second key");
    assert_eq!(code(&ls_with(&first)), Some(8), "the old key is gone");

    std::fs::write(&cert, "not a certificate").expect("break the file");
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
    let line = server
        .wait_log("TLS identity not reloaded", Duration::from_secs(10))
        .expect("refused");
    assert!(line.contains("cert.pem"), "{line}");
    util::assert_success(&ls_with(&second), "the second key still serves");
}
