//! One user cannot stall the others: a connection that pipelines tiny
//! requests as fast as it can gets its share of the reactor and of the
//! helper threads, not all of them. (The figures are for the benchmark,
//! `scripts/fairness.sh`; the bound here only tells "served" from
//! "stalled for seconds".)

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ftpd::frame;
use ftpd::proto::{Reply, Request};

use crate::util::{DataDir, Raw, TestServer};

fn logged_in(server: &TestServer, user: &str) -> Raw {
    let mut c = server.raw();
    c.hello();
    assert!(matches!(c.login(user, "pw"), Reply::LoginOk { .. }));
    c
}

#[test]
fn a_flood_of_tiny_requests_does_not_stall_another_user() {
    let data = DataDir::new();
    data.add_user("flood", "pw", Some("1"));
    data.add_user("other", "pw", None);
    let server = TestServer::start(&data, &[]);
    let flood = logged_in(&server, "flood");
    let mut other = logged_in(&server, "other");
    let mut burst = Vec::new();
    for _ in 0..1000 {
        frame::encode_into(&Request::Mkdir { path: "/q".into() }, &mut burst).unwrap();
        frame::encode_into(&Request::Rmdir { path: "/q".into() }, &mut burst).unwrap();
    }
    let mut writer = flood.stream.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut reader = flood.stream.try_clone().unwrap();
    let stop = Instant::now() + Duration::from_secs(4);
    let writing = std::thread::spawn(move || {
        // About 400,000 requests of 8 bytes, as in the report.
        let mut sent = 0usize;
        while Instant::now() < stop && sent < 400_000 * 8 {
            // An error is a write time-out: the server stopped reading
            // for now.
            if let Ok(n) = writer.write(&burst) {
                sent += n;
            }
        }
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for _ in 0..30 {
        let t = Instant::now();
        assert!(matches!(other.call(&Request::Ping), Reply::Pong));
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    writing.join().unwrap();
    eprintln!("slowest ping during the flood: {worst:?}");
    // Before turns were bounded by requests, a ping here waited for many
    // seconds (the whole pipeline ahead of it).
    assert!(worst < Duration::from_secs(2), "a ping took {worst:?}");
}

/// A user added while the server runs has their home counted on a helper
/// thread: the reactor serves others meanwhile, and the new user's login
/// says to try again in a moment instead of waiting for the count.
#[test]
fn a_new_users_home_is_counted_off_the_reactor() {
    const FILES: usize = 200_000;
    let data = DataDir::new();
    data.add_user("other", "pw", None);
    let server = TestServer::start(&data, &[]);
    let mut other = logged_in(&server, "other");
    // A big home, made before the user exists for the server.
    let home = data.home("carol");
    std::fs::create_dir_all(&home).unwrap();
    for i in 0..FILES {
        std::fs::File::create(home.join(format!("{i}"))).unwrap();
    }
    data.add_user("carol", "pw", None);
    let pid = rustix::process::Pid::from_raw(server.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    server
        .wait_log("SIGHUP: reloading the user file", Duration::from_secs(10))
        .expect("SIGHUP handled");
    // Served while carol's home is still being counted...
    assert!(matches!(other.call(&Request::Ping), Reply::Pong));
    let mut carol = server.raw();
    carol.hello();
    match carol.login("carol", "pw") {
        Reply::Error { message, .. } => assert!(message.contains("being prepared"), "{message}"),
        other => panic!("logged in before the home of {FILES} files was counted: {other:?}"),
    }
    // ...and carol gets in once it is.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut carol = server.raw();
        carol.hello();
        if matches!(carol.login("carol", "pw"), Reply::LoginOk { .. }) {
            break;
        }
        assert!(Instant::now() < deadline, "carol never got in");
        std::thread::sleep(Duration::from_millis(100));
    }
}
