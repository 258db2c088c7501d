//! The interactive shell, driven in a pseudo-terminal as a person would:
//! Tab completion, lcd and local globs, Ctrl-C during a transfer, history
//! across restarts, coloured listings.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use ftpd::jail::PARTIAL_DIR;
use rexpect::session::{PtySession, spawn_command};

use crate::util::{self, DataDir, TestServer};

const PW: &str = "alice-pw";

/// How long any one expected output may take (liveness only).
const EXPECT_MS: u64 = 30_000;

/// A server with alice, and folders for her local files and her state.
struct Tty {
    data: DataDir,
    server: TestServer,
    local: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Tty {
    fn new() -> Tty {
        let data = DataDir::new();
        data.add_user("alice", PW, None);
        let server = TestServer::start(&data, &[]);
        Tty {
            data,
            server,
            local: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// `ftpc EXTRA... shell` in a pseudo-terminal, in the local folder,
    /// with the history under `state`; returns at the first prompt.
    fn shell(&self, extra: &[&str], env: &[(&str, &str)]) -> PtySession {
        let mut args = extra.to_vec();
        args.push("shell");
        let mut cmd = self.server.ftpc_cmd_loud("alice", PW, &args);
        cmd.current_dir(self.local.path())
            .env("XDG_STATE_HOME", self.state.path())
            .env("HOME", self.state.path())
            .env("TERM", "xterm")
            .env_remove("NO_COLOR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut s = spawn_command(cmd, Some(EXPECT_MS)).expect("spawn ftpc in a pty");
        prompt(&mut s);
        s
    }

    fn home(&self) -> std::path::PathBuf {
        self.data.home("alice")
    }
}

/// Types `text` (no Enter).
fn typed(s: &mut PtySession, text: &str) {
    s.send(text).expect("type");
    s.flush().expect("flush");
}

/// What the line editor prints as it starts reading a line, and as it
/// stops (it turns bracketed paste on and off): a prompt redrawn while
/// typing has neither, so these tell a new prompt from a redraw.
const EDITING: &str = "\x1b[?2004h";
const EDITED: &str = "\x1b[?2004l";

/// Waits for a new prompt, and returns what came before it. Type only at
/// a prompt: the line editor drops what was typed while a command ran.
fn prompt(s: &mut PtySession) -> String {
    let before = s.exp_string(EDITING).expect("prompt");
    s.exp_string("> ").expect("prompt");
    before
}

/// Types `line` and Enter, and returns the output up to the next prompt.
fn run(s: &mut PtySession, line: &str) -> String {
    typed(s, &format!("{line}\r"));
    s.exp_string(EDITED).expect("the line was taken");
    prompt(s)
}

/// Whatever the terminal shows within `time`.
fn read_for(s: &mut PtySession, time: Duration) -> String {
    let started = Instant::now();
    let mut out = String::new();
    while started.elapsed() < time {
        match s.try_read() {
            Some(c) => out.push(c),
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    out
}

/// Waits up to `limit` for `cond`.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tab_completes_a_remote_folder_then_a_file_in_it() {
    let t = Tty::new();
    fs::create_dir_all(t.home().join("documents/old")).unwrap();
    fs::write(t.home().join("documents/report.txt"), b"the report").unwrap();
    fs::write(t.home().join("other.txt"), b"x").unwrap();
    let mut s = t.shell(&[], &[]);

    typed(&mut s, "get doc\t");
    s.exp_string("documents/").expect("the folder completed");
    typed(&mut s, "rep\t");
    s.exp_string("report.txt").expect("the file completed");
    run(&mut s, "");
    let got = t.local.path().join("report.txt");
    assert_eq!(fs::read(&got).unwrap(), b"the report");

    // Command names complete too, and cd completes only folders.
    typed(&mut s, "sta\t");
    s.exp_string("stat ").expect("command name completed");
    typed(&mut s, "\x15"); // Ctrl-U: clear the line
    typed(&mut s, "cd documents/\t");
    s.exp_string("documents/old/")
        .expect("only the folder is offered to cd");
    run(&mut s, "");
    let out = run(&mut s, "pwd");
    assert!(out.contains("\n/documents/old\r\n"), "{out:?}");
    typed(&mut s, "exit\r");
    s.exp_eof().expect("exit ends the shell");
}

#[test]
fn lcd_then_put_of_a_relative_path_and_a_local_glob() {
    let t = Tty::new();
    let photos = t.local.path().join("photos");
    fs::create_dir(&photos).unwrap();
    for (name, body) in [("a.jpg", "A"), ("b.jpg", "BB"), ("notes.txt", "N")] {
        fs::write(photos.join(name), body).unwrap();
    }
    let mut s = t.shell(&[], &[]);
    run(&mut s, "lcd photos");
    let shown = fs::canonicalize(&photos).unwrap();
    let out = run(&mut s, "lpwd");
    assert!(
        out.contains(&format!("\n{}\r\n", shown.display())),
        "lpwd shows the new folder: {out:?}"
    );
    run(&mut s, "put notes.txt");
    assert_eq!(fs::read(t.home().join("notes.txt")).unwrap(), b"N");

    run(&mut s, "mkdir up");
    run(&mut s, "put *.jpg up/");
    assert_eq!(fs::read(t.home().join("up/a.jpg")).unwrap(), b"A");
    assert_eq!(fs::read(t.home().join("up/b.jpg")).unwrap(), b"BB");
    assert!(!t.home().join("up/notes.txt").exists());

    // get lands in the lcd folder too; lmkdir and lls work there.
    run(&mut s, "lmkdir back");
    run(&mut s, "get up/b.jpg back/");
    assert_eq!(fs::read(photos.join("back/b.jpg")).unwrap(), b"BB");
    // get -r of a folder makes a folder of its name in the lcd folder.
    run(&mut s, "get -r up");
    assert_eq!(fs::read(photos.join("up/a.jpg")).unwrap(), b"A");
    let out = run(&mut s, "lls back");
    assert!(
        out.contains(" b.jpg"),
        "lls lists the local folder: {out:?}"
    );
    typed(&mut s, "exit\r");
    s.exp_eof().unwrap();
}

#[test]
fn ctrl_c_cancels_a_rate_limited_put_and_the_next_put_resumes() {
    let t = Tty::new();
    let size = 1 << 20;
    let file = t.local.path().join("big.bin");
    util::make_file(&file, size, 7);
    // 1 MiB at 200 KiB/s: about five seconds, plenty of time to cancel.
    let mut s = t.shell(&["--limit-rate", "200K"], &[]);
    run(&mut s, "mkdir in");
    run(&mut s, "cd in");
    typed(&mut s, "put big.bin\r");
    let partial_len = || -> u64 {
        let Ok(dir) = fs::read_dir(t.home().join(PARTIAL_DIR)) else {
            return 0;
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    };
    wait_for(Duration::from_secs(20), "part of the upload", || {
        partial_len() >= 128 * 1024
    });
    s.send_control('c').unwrap();
    s.exp_string("cancelled")
        .expect("one line says the put was cancelled");
    s.exp_string(EDITING).expect("back at the prompt");
    s.exp_string(":/in> ")
        .expect("still in the remote folder after logging in again");
    let kept = partial_len();
    assert!(kept > 0 && kept < size as u64, "partial of {kept} bytes");
    assert!(!t.home().join("in/big.bin").exists());

    let out = run(&mut s, "put big.bin");
    assert!(
        out.contains("resuming at"),
        "the second put resumes: {out:?}"
    );
    assert_eq!(
        fs::read(t.home().join("in/big.bin")).unwrap(),
        fs::read(&file).unwrap()
    );
    typed(&mut s, "exit\r");
    s.exp_eof().unwrap();
}

#[test]
fn ctrl_c_cancels_a_rate_limited_get_keeping_the_part_file_for_a_resume() {
    let t = Tty::new();
    let size = 1 << 20;
    util::make_file(&t.home().join("big.bin"), size, 9);
    let mut s = t.shell(&["--limit-rate", "200K"], &[]);
    typed(&mut s, "get big.bin\r");
    let part = t.local.path().join("big.bin.part");
    wait_for(Duration::from_secs(20), "part of the download", || {
        fs::metadata(&part).is_ok_and(|m| m.len() >= 128 * 1024)
    });
    s.send_control('c').unwrap();
    s.exp_string("cancelled")
        .expect("one line says the get was cancelled");
    prompt(&mut s);
    let kept = fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < size as u64, "part file of {kept} bytes");
    assert!(!t.local.path().join("big.bin").exists());

    let out = run(&mut s, "get big.bin");
    assert!(
        out.contains("resuming at"),
        "the second get resumes: {out:?}"
    );
    assert_eq!(
        fs::read(t.local.path().join("big.bin")).unwrap(),
        fs::read(t.home().join("big.bin")).unwrap()
    );
    assert!(!part.exists());
    typed(&mut s, "exit\r");
    s.exp_eof().unwrap();
}

/// A download the server stops feeding (its process is stopped) waits in
/// a socket read, not between chunks; Ctrl-C ends that wait too, long
/// before `--timeout` would.
#[test]
fn ctrl_c_cancels_a_get_the_server_has_stalled() {
    use rustix::process::{Pid, Signal, kill_process};
    let t = Tty::new();
    // Far more than the socket buffers between the two can hold, so the
    // download cannot end while the server is stopped.
    let size = 32 << 20;
    util::make_file(&t.home().join("big.bin"), size, 11);
    let mut s = t.shell(&["--timeout", "600", "--limit-rate", "1M"], &[]);
    typed(&mut s, "get big.bin\r");
    let part = t.local.path().join("big.bin.part");
    let len = || fs::metadata(&part).map_or(0, |m| m.len());
    wait_for(Duration::from_secs(20), "part of the download", || {
        len() >= 256 * 1024
    });
    let ftpd = Pid::from_raw(t.server.child.id() as i32).unwrap();
    kill_process(ftpd, Signal::STOP).unwrap();
    // Once what is in the socket buffers has arrived, ftpc waits in a read.
    let mut last = len();
    let mut still_since = Instant::now();
    wait_for(Duration::from_secs(60), "the download to stall", || {
        let now = len();
        if now != last {
            (last, still_since) = (now, Instant::now());
        }
        still_since.elapsed() > Duration::from_secs(1)
    });
    let stalled_at = len();
    s.send_control('c').unwrap();
    let cancelled = s.exp_string("cancelled");
    kill_process(ftpd, Signal::CONT).unwrap();
    cancelled.expect("Ctrl-C ended the stalled wait");
    prompt(&mut s);
    assert_eq!(len(), stalled_at, "the .part is kept as it was");
    assert!(stalled_at < size as u64);
    typed(&mut s, "exit\r");
    s.exp_eof().unwrap();
}

#[test]
fn history_survives_a_restart_without_secrets() {
    let t = Tty::new();
    let mut s = t.shell(&[], &[]);
    run(&mut s, "mkdir remembered");
    run(&mut s, "passwd hunter2");
    typed(&mut s, "exit\r");
    s.exp_eof().unwrap();

    let file = t.state.path().join("ftpc/history");
    let text = fs::read_to_string(&file).expect("history file");
    assert!(text.contains("mkdir remembered"), "{text}");
    assert!(!text.contains("hunter2"), "a secret was recorded: {text}");
    let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Up arrow in a new shell brings the lines back (`exit`, then the
    // mkdir: the passwd line is not there); Enter runs it again.
    fs::remove_dir(t.home().join("remembered")).unwrap();
    let mut s = t.shell(&[], &[]);
    typed(&mut s, "\x1b[A");
    s.exp_string("exit").expect("the last line is back");
    typed(&mut s, "\x1b[A");
    s.exp_string("mkdir remembered").expect("the line is back");
    run(&mut s, "");
    assert!(t.home().join("remembered").is_dir());
    typed(&mut s, "exit\r");
    s.exp_eof().unwrap();
}

#[test]
fn ctrl_c_at_the_prompt_clears_the_line_and_ctrl_d_leaves() {
    let t = Tty::new();
    let mut s = t.shell(&[], &[]);
    typed(&mut s, "mkdir never");
    s.send_control('c').unwrap();
    prompt(&mut s);
    run(&mut s, "mkdir yes");
    assert!(!t.home().join("never").exists());
    assert!(t.home().join("yes").is_dir());
    s.send_control('d').unwrap();
    s.exp_eof().expect("Ctrl-D ends the shell");
}

/// `ftpc ls` on a terminal: folders in colour unless NO_COLOR or TERM=dumb.
#[test]
fn listings_are_coloured_on_a_terminal_unless_no_color() {
    let t = Tty::new();
    fs::create_dir(t.home().join("folder")).unwrap();
    fs::write(t.home().join("file.txt"), b"x").unwrap();
    let ls = |env: &[(&str, &str)]| {
        let mut cmd = t.server.ftpc_cmd_loud("alice", PW, &["ls"]);
        cmd.env("TERM", "xterm").env_remove("NO_COLOR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut s = spawn_command(cmd, Some(EXPECT_MS)).unwrap();
        s.exp_eof().unwrap()
    };
    let coloured = ls(&[]);
    assert!(coloured.contains("\x1b[34mfolder\x1b[0m"), "{coloured:?}");
    assert!(coloured.contains(" file.txt"), "{coloured:?}");
    for env in [[("NO_COLOR", "1")], [("TERM", "dumb")]] {
        let plain = ls(&env);
        assert!(!plain.contains('\x1b'), "{env:?}: {plain:?}");
        assert!(plain.contains(" folder"), "{plain:?}");
    }
    // Not a terminal: never coloured.
    let out = t
        .server
        .ftpc_cmd("alice", PW, &["ls"])
        .env("TERM", "xterm")
        .output()
        .unwrap();
    util::assert_success(&out, "ftpc ls");
    assert!(!util::stdout(&out).contains('\x1b'));
}

/// Tab in a folder of thousands of names answers within half a second
/// with what has arrived (at most 5000 names), asks before showing them
/// all, and leaves the session in step for the next command.
#[test]
fn tab_in_a_huge_folder_is_bounded_and_keeps_the_session_in_step() {
    let t = Tty::new();
    let many = t.home().join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..6000 {
        fs::write(many.join(format!("f{i:05}")), b"").unwrap();
    }
    fs::write(t.home().join("after.txt"), b"after").unwrap();
    let mut s = t.shell(&[], &[]);
    // Each Tab waits half a second at most and completes from what has
    // arrived; on a busy machine the names may take a few Tabs to come.
    let started = Instant::now();
    typed(&mut s, "stat many/f");
    let mut seen = String::new();
    while !seen.contains("possibilities") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no list of names after a minute of Tabs: {seen:?}"
        );
        typed(&mut s, "\t");
        seen += &read_for(&mut s, Duration::from_millis(700));
    }
    let shown: usize = seen
        .rsplit("Display all ")
        .next()
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{seen:?}"));
    assert!((101..=5000).contains(&shown), "{seen:?}");
    typed(&mut s, "n");
    typed(&mut s, "\x15"); // Ctrl-U: clear the line
    // The next requests get their own replies, not the rest of a listing.
    let out = run(&mut s, "get after.txt -");
    assert!(out.contains("after"), "{out:?}");
    let out = run(&mut s, "stat many/f00042");
    assert!(out.contains("name:     f00042"), "{out:?}");
    typed(&mut s, "exit\r");
    s.exp_eof().unwrap();
}
