//! How long `ftpc` waits for the server: one rule for every read and write.
//!
//! A request must be taken, and a reply must arrive whole, within the
//! time-out (`--timeout`, 60 s by default) of the moment ftpc starts to
//! wait. Bytes that trickle in do not extend it, so a server cannot hold a
//! reply open by sending one byte every 59 s.
//!
//! A stream (a listing, a download, an upload) gets a progress deadline
//! instead, one time-out ahead. It moves on by a time-out only once the
//! stream has made one step of useful progress since it last moved:
//! [`BYTES_PER_STEP`] of file data, or [`LIST_BATCH`] listing entries.
//! The end of the stream (`ListEnd`, `GetDone`) must also come before it.
//! So a stream that makes less than a step per time-out fails, however
//! often it sends something: empty frames are refused outright
//! (`Reply::check`), and a trickle of tiny ones earns no time.

use std::time::{Duration, Instant};

use ftpd::proto::LIST_BATCH;
use ftpd::size::format_size;

use crate::error::Failure;

/// File bytes a transfer must move per time-out: 64 KiB a minute is
/// about 1 KiB/s, slower than any link worth waiting on, yet far above a
/// trickle meant to keep ftpc busy forever.
pub const BYTES_PER_STEP: u64 = 64 * 1024;

/// What ftpc is waiting for; it decides the step and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaiting {
    /// The server to take one request.
    Request,
    /// One whole reply.
    Reply,
    /// The entries of a listing, up to `ListEnd`.
    Listing,
    /// A download's chunks, up to `GetDone`.
    Download,
    /// The server to take an upload's chunks.
    Upload,
    /// An `rm -r`'s progress frames, up to its `Ok`.
    Removal,
}

impl Awaiting {
    /// Progress that earns another time-out; `None` for a single message,
    /// which has to arrive within one.
    fn step(self) -> Option<u64> {
        match self {
            Awaiting::Request | Awaiting::Reply => None,
            // LIST_BATCH is a few hundred, so it fits in u64.
            Awaiting::Listing => Some(LIST_BATCH as u64),
            Awaiting::Download | Awaiting::Upload => Some(BYTES_PER_STEP),
            // The server sends one after each bounded piece of removal.
            Awaiting::Removal => Some(1),
        }
    }
}

/// A deadline for one wait on the server, moved on by useful progress.
#[derive(Debug)]
pub struct Pace {
    awaiting: Awaiting,
    timeout: Duration,
    /// When the deadline last moved: it is `timeout` after this.
    since: Instant,
    /// Progress since then.
    earned: u64,
}

impl Pace {
    /// Starts waiting now for `awaiting`, with `timeout` per step.
    pub fn start(awaiting: Awaiting, timeout: Duration) -> Pace {
        Pace {
            awaiting,
            timeout,
            since: Instant::now(),
            earned: 0,
        }
    }

    /// Counts `n` units of progress (bytes, or entries for a listing).
    pub fn advance(&mut self, n: u64) {
        let Some(step) = self.awaiting.step() else {
            return;
        };
        self.earned = self.earned.saturating_add(n);
        if self.earned >= step {
            self.earned = 0;
            self.since = Instant::now();
        }
    }

    /// Moves the deadline on by `d` that ftpc spent on purpose, not
    /// waiting for the server (sleeping for `--limit-rate`).
    pub fn pause(&mut self, d: Duration) {
        self.since += d;
    }

    /// The time left, or the time-out failure once there is none.
    pub fn left(&self) -> Result<Duration, Failure> {
        let left = self.timeout.saturating_sub(self.since.elapsed());
        if left.is_zero() {
            return Err(self.missed());
        }
        Ok(left)
    }

    /// What went wrong, in the user's terms.
    fn missed(&self) -> Failure {
        let secs = self.timeout.as_secs_f64();
        let step = format_size(BYTES_PER_STEP);
        Failure::Link(match self.awaiting {
            Awaiting::Request => format!("timed out: the server took no request for {secs} s"),
            Awaiting::Reply => format!("timed out: no reply from the server within {secs} s"),
            Awaiting::Listing => format!(
                "timed out: the server sent fewer than {LIST_BATCH} listing entries in {secs} s"
            ),
            Awaiting::Download => {
                format!("timed out: the server sent less than {step} of the file in {secs} s")
            }
            Awaiting::Upload => {
                format!("timed out: the server took less than {step} of the file in {secs} s")
            }
            Awaiting::Removal => {
                format!("timed out: the server reported no progress removing the tree in {secs} s")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_message_earns_no_time() {
        let mut pace = Pace::start(Awaiting::Reply, Duration::from_secs(60));
        let before = pace.since;
        pace.advance(u64::MAX);
        assert_eq!(pace.since, before);
    }

    #[test]
    fn a_stream_earns_time_only_by_whole_steps() {
        let mut pace = Pace::start(Awaiting::Download, Duration::from_secs(60));
        let first = pace.since;
        for _ in 0..BYTES_PER_STEP - 1 {
            pace.advance(1);
        }
        assert_eq!(pace.since, first, "a trickle earned time");
        std::thread::sleep(Duration::from_millis(2));
        pace.advance(1);
        assert!(pace.since > first);
        assert_eq!(pace.earned, 0);
    }

    #[test]
    fn a_passed_deadline_is_a_connection_failure() {
        let pace = Pace::start(Awaiting::Listing, Duration::from_millis(500));
        assert!(pace.left().is_ok());
        std::thread::sleep(Duration::from_millis(600));
        let err = pace.left().unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::CONNECTION);
        assert_eq!(
            err.to_string(),
            "timed out: the server sent fewer than 256 listing entries in 0.5 s"
        );
    }
}
