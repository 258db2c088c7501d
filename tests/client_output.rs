//! `ftpc ls` output: `-h` human sizes, `-t`/`-S` orders and `-r`.

use std::fs::File;
use std::time::{Duration, SystemTime};

use crate::util::{self, DataDir, TestServer};

const PW: &str = "alice-pw";

/// A server with alice's files `(name, size, seconds since the epoch)`,
/// uploaded with ftpc and then given their mtimes on the server's disk.
fn site(files: &[(&str, usize, u64)]) -> (DataDir, TestServer) {
    let data = DataDir::new();
    data.add_user("alice", PW, None);
    let server = TestServer::start(&data, &[]);
    let local = tempfile::tempdir().unwrap();
    for (i, (name, size, _)) in files.iter().enumerate() {
        let path = local.path().join(name);
        util::make_file(&path, *size, i as u64);
        server.ok("alice", PW, &["put", path.to_str().unwrap()]);
    }
    for (name, _, mtime) in files {
        let f = File::options()
            .write(true)
            .open(data.home("alice").join(name))
            .unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(*mtime))
            .unwrap();
    }
    (data, server)
}

fn names(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect()
}

#[test]
fn ls_orders_by_name_time_or_size_and_reverses() {
    let (_data, server) = site(&[
        ("b.bin", 3000, 1_700_000_300),
        ("a.bin", 10, 1_700_000_100),
        ("c.bin", 70_000, 1_700_000_200),
    ]);
    let ls = |args: &[&str]| server.ok("alice", PW, &[&["ls"], args].concat());
    assert_eq!(names(&ls(&[])), ["a.bin", "b.bin", "c.bin"]);
    assert_eq!(names(&ls(&["-t"])), ["b.bin", "c.bin", "a.bin"]);
    assert_eq!(names(&ls(&["-S"])), ["c.bin", "b.bin", "a.bin"]);
    assert_eq!(names(&ls(&["-r"])), ["c.bin", "b.bin", "a.bin"]);
    assert_eq!(names(&ls(&["-tr"])), ["a.bin", "c.bin", "b.bin"]);
    // The last of -t and -S wins, as in ls.
    assert_eq!(names(&ls(&["-S", "-t"])), ["b.bin", "c.bin", "a.bin"]);

    let human = ls(&["-hS"]);
    let sizes: Vec<&str> = human
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(sizes, ["69K", "3.0K", "10"], "{human}");
    // Without -h the sizes stay in bytes.
    assert!(ls(&[]).contains(" 70000 "));
}
