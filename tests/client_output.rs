//! `ftpc ls` output: `-h` human sizes, `-t`/`-S` orders and `-r`, times in
//! the local zone or UTC; `--limit-rate`.

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

/// `ls` and `stat` show times in the zone of `TZ` by default, in UTC with
/// `--utc`, in `ls -l`'s format (the year for old files, the time of day
/// for recent ones).
#[test]
fn times_are_local_unless_utc() {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // 2023-11-14 22:13:20 UTC is 2023-11-15 03:43:20 in Kolkata.
    let (_data, server) = site(&[("old.txt", 5, 1_700_000_000), ("new.txt", 5, now - 3600)]);
    let run = |tz: &str, args: &[&str]| {
        let out = server
            .ftpc_cmd("alice", PW, args)
            .env("TZ", tz)
            .output()
            .unwrap();
        util::assert_success(&out, &format!("TZ={tz} ftpc {}", args.join(" ")));
        util::stdout(&out)
    };
    let line = |listing: &str, name: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("{name} missing: {listing}"))
            .to_owned()
    };
    let kolkata = run("Asia/Kolkata", &["ls"]);
    assert_eq!(line(&kolkata, "old.txt"), "- 5 Nov 15  2023 old.txt");
    let utc = run("Asia/Kolkata", &["--utc", "ls"]);
    assert_eq!(line(&utc, "old.txt"), "- 5 Nov 14  2023 old.txt");
    // A recent file shows the time of day, 5:30 apart between the two.
    let recent = |tz: jiff::tz::TimeZone| {
        let t = jiff::Timestamp::from_second((now - 3600) as i64)
            .unwrap()
            .to_zoned_datetime(tz);
        format!("- 5 {} new.txt", t.strftime("%b %e %H:%M"))
    };
    let ist = jiff::tz::TimeZone::get("Asia/Kolkata").unwrap();
    assert_eq!(line(&kolkata, "new.txt"), recent(ist));
    assert_eq!(line(&utc, "new.txt"), recent(jiff::tz::TimeZone::UTC));
    assert_ne!(line(&kolkata, "new.txt"), line(&utc, "new.txt"));
    // TZ=UTC is the same as --utc.
    assert_eq!(run("UTC", &["ls"]), utc);

    let stat = run("Asia/Kolkata", &["stat", "old.txt"]);
    assert!(
        stat.ends_with("modified: 2023-11-15 03:43:20 IST\n"),
        "{stat}"
    );
    let stat = run("Asia/Kolkata", &["--utc", "stat", "old.txt"]);
    assert!(
        stat.ends_with("modified: 2023-11-14 22:13:20 UTC\n"),
        "{stat}"
    );
}

/// `--limit-rate` bounds the average rate of put and get: 2 MiB at 1 MiB/s
/// cannot take less than about two seconds (the bucket lets a tenth of a
/// second through as a burst), however fast the link.
#[test]
fn limit_rate_bounds_the_average_rate_of_put_and_get() {
    let (_data, server) = site(&[]);
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("two.bin");
    util::make_file(&file, 2 << 20, 3);
    let timed = |args: &[&str]| {
        let started = std::time::Instant::now();
        server.ok("alice", PW, args);
        started.elapsed()
    };
    let file_arg = file.to_str().unwrap();
    let took = timed(&["--limit-rate", "1M", "put", file_arg, "two.bin"]);
    assert!(took >= Duration::from_millis(1500), "put took {took:?}");
    let back = local.path().join("back.bin");
    let took = timed(&[
        "--limit-rate",
        "1M",
        "get",
        "two.bin",
        back.to_str().unwrap(),
    ]);
    assert!(took >= Duration::from_millis(1500), "get took {took:?}");
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());

    // The same for a tree of small files, which go whole in one frame
    // each: 64 files of 32 KiB.
    let tree = local.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    for i in 0..64 {
        util::make_file(&tree.join(format!("f{i:02}")), 32 << 10, i);
    }
    let took = timed(&["--limit-rate", "1M", "put", "-r", tree.to_str().unwrap()]);
    assert!(took >= Duration::from_millis(1500), "put -r took {took:?}");
    let fetched = local.path().join("fetched");
    let took = timed(&[
        "--limit-rate",
        "1M",
        "get",
        "-r",
        "tree",
        fetched.to_str().unwrap(),
    ]);
    assert!(took >= Duration::from_millis(1500), "get -r took {took:?}");
    assert_eq!(
        std::fs::read(fetched.join("f07")).unwrap(),
        std::fs::read(tree.join("f07")).unwrap()
    );

    // A bad rate is a usage error.
    let out = server.ftpc("alice", PW, &["--limit-rate", "0", "ls"]);
    assert_eq!(out.status.code(), Some(2), "{}", util::stderr(&out));
    let out = server.ftpc("alice", PW, &["--limit-rate", "fast", "ls"]);
    assert_eq!(out.status.code(), Some(2), "{}", util::stderr(&out));
}
