//! The load generator keeps working: every scenario at small N against the
//! real server, checked through its `--json` report.

use std::process::Command;

use crate::util::{DataDir, TestServer};

const FTPLOAD: &str = env!("CARGO_BIN_EXE_ftpload");

/// Runs one scenario and returns its JSON report.
fn run(server: &TestServer, args: &[&str]) -> serde_json::Value {
    let out = Command::new(FTPLOAD)
        .args([
            "--addr",
            &server.addr.to_string(),
            "--user",
            "load0",
            "--json",
        ])
        .args([
            "--server-pid",
            &server.child.id().to_string(),
            "--timeout",
            "60",
        ])
        .args(server.trust_args())
        .args(args)
        .env("FTPLOAD_PASSWORD", "load-pw")
        .output()
        .expect("run ftpload");
    crate::util::assert_success(&out, &format!("ftpload {}", args.join(" ")));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ftpload printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn start() -> (DataDir, TestServer) {
    let data = DataDir::new();
    data.add_user("load0", "load-pw", Some("1G"));
    let server = TestServer::start(&data, &["--max-sessions-per-user", "0"]);
    (data, server)
}

/// Every session ran and none failed.
fn assert_clean(report: &serde_json::Value, sessions: u64) {
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["done"], sessions, "{report}");
    assert_eq!(report["outcome"], "complete", "{report}");
}

#[test]
fn login_and_transfer_scenarios_run_clean() {
    let (data, server) = start();
    let login = run(&server, &["login", "-n", "30"]);
    assert_clean(&login, 30);
    assert!(login["sessions_per_s"].as_f64().is_some_and(|r| r > 0.0));
    // Over TLS (the default), the handshake is timed apart from the login.
    assert_eq!(login["latency"]["tls"]["count"], 30, "{login}");
    let transfer = run(&server, &["transfer", "-n", "30", "--size", "100K"]);
    assert_clean(&transfer, 30);
    // Each session put and got back its 100 KiB, and removed it after.
    assert_eq!(transfer["bytes_up"], 30 * 100 * 1024, "{transfer}");
    assert_eq!(transfer["bytes_down"], 30 * 100 * 1024, "{transfer}");
    let left: Vec<_> = std::fs::read_dir(data.home("load0"))
        .expect("home")
        .map(|e| e.expect("entry").file_name())
        .filter(|name| name != ".ftpd-partial")
        .collect();
    assert!(left.is_empty(), "files left behind in the home: {left:?}");
    let partials = data.home("load0").join(".ftpd-partial");
    if partials.exists() {
        let count = std::fs::read_dir(&partials).expect("partials").count();
        assert_eq!(count, 0, "unfinished uploads left behind");
    }
    assert!(
        transfer["server"]["rss_end_kib"]
            .as_u64()
            .is_some_and(|k| k > 0)
    );
}

#[test]
fn idle_and_mixed_scenarios_run_clean() {
    let (_data, server) = start();
    let idle = run(
        &server,
        &["idle", "-n", "20", "--duration", "1", "--size", "4M"],
    );
    assert_eq!(idle["failed"], 0, "{idle}");
    let mixed = run(
        &server,
        &[
            "mixed",
            "-n",
            "10",
            "--duration",
            "1",
            "--big",
            "1",
            "--size",
            "4M",
            "--think",
            "5",
        ],
    );
    assert_eq!(mixed["failed"], 0, "{mixed}");
    let requests = mixed["latency"]["request"]["count"].as_u64().unwrap_or(0);
    assert!(requests > 0, "no small requests measured: {mixed}");
}
