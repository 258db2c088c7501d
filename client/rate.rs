//! `--limit-rate`: a token bucket that keeps put and get at a steady rate.
//!
//! Each chunk is paid for when it has been sent or received; when the
//! bucket is empty the transfer sleeps until it would have been free. The
//! bucket holds at most [`BURST`] of credit, so a pause (a slow disk, the
//! server busy) never turns into a burst above the limit afterwards.
//!
//! The sleep is our own doing, not the server's, so it is taken off the
//! stall deadline ([`Pace::pause`]): `--timeout` measures only time spent
//! waiting on the server. It is slept in short slices so Ctrl-C in the
//! shell cancels at once.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::Failure;
use crate::pace::Pace;

/// Credit the bucket may hold: a fraction of a second, so the rate shown
/// by the progress bar stays steady.
const BURST: Duration = Duration::from_millis(100);

/// Longest single sleep, so a cancel is seen quickly.
const SLICE: Duration = Duration::from_millis(50);

/// Smallest chunk an upload is cut into under a limit.
const MIN_CHUNK: usize = 512;

/// Bytes per second from `--limit-rate`, set once at start.
static LIMIT: OnceLock<u64> = OnceLock::new();

/// Sets the process's limit in bytes per second (from `--limit-rate`).
/// The limit is a preference of the user for every transfer this run
/// makes, one-shot or in the shell, across reconnects, hence process-wide.
pub fn set_limit(bytes_per_second: u64) {
    let _ = LIMIT.set(bytes_per_second);
}

/// Parses `--limit-rate` (`500K`, `10M`: units as for quotas, per second).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.strip_suffix("/s").unwrap_or(s);
    match ftpd::size::parse_size(s)? {
        0 => Err("a rate of 0 would never finish; leave --limit-rate out for no limit".into()),
        n => Ok(n),
    }
}

/// The pacing of one transfer.
#[derive(Debug)]
pub struct Throttle {
    /// Bytes per second; `None` for no limit.
    rate: Option<u64>,
    /// When the bytes paid for so far would all have gone out at `rate`.
    free_at: Instant,
}

impl Throttle {
    /// A throttle at the process's `--limit-rate`, if any.
    pub fn new() -> Throttle {
        Throttle::at(LIMIT.get().copied())
    }

    fn at(rate: Option<u64>) -> Throttle {
        let now = Instant::now();
        Throttle {
            rate,
            // A full bucket to start with.
            free_at: now.checked_sub(BURST).unwrap_or(now),
        }
    }

    /// Whether `--limit-rate` was given.
    pub fn is_limited(&self) -> bool {
        self.rate.is_some()
    }

    /// The chunk size to send at under a limit: a tenth of a second's
    /// worth (at least [`MIN_CHUNK`], at most `max`), so the bytes and the
    /// progress bar move several times a second; `None` without a limit.
    pub fn chunk(&self, max: usize) -> Option<usize> {
        let tenth = usize::try_from(self.rate? / 10).unwrap_or(usize::MAX);
        Some(tenth.clamp(MIN_CHUNK.min(max), max))
    }

    /// How long to wait after moving `n` more bytes, at `now`.
    fn debt(&mut self, n: u64, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        // Unused credit beyond BURST is lost.
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        self.free_at = self.free_at.max(earliest) + Duration::from_secs_f64(n as f64 / rate as f64);
        self.free_at.saturating_duration_since(now)
    }

    /// Pays for `n` bytes: sleeps as long as the limit needs, keeping that
    /// time off `pace`'s deadline, and fails at once on a cancel.
    pub fn pay(&mut self, n: u64, pace: &mut Pace) -> Result<(), Failure> {
        let mut left = self.debt(n, Instant::now());
        while !left.is_zero() {
            crate::cancel::check()?;
            let nap = left.min(SLICE);
            std::thread::sleep(nap);
            pace.pause(nap);
            left -= nap;
        }
        crate::cancel::check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_use_quota_units() {
        assert_eq!(parse_rate("500K"), Ok(500 * 1024));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("1M/s"), Ok(1 << 20));
        assert_eq!(parse_rate("100"), Ok(100));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn chunks_shrink_to_a_tenth_of_a_second_under_a_limit() {
        assert_eq!(Throttle::at(None).chunk(131_072), None);
        assert_eq!(Throttle::at(Some(1 << 30)).chunk(131_072), Some(131_072));
        assert_eq!(Throttle::at(Some(500 * 1024)).chunk(131_072), Some(51_200));
        assert_eq!(Throttle::at(Some(100)).chunk(131_072), Some(512));
    }

    #[test]
    fn no_limit_never_waits() {
        let mut t = Throttle::at(None);
        assert_eq!(t.debt(u64::MAX, Instant::now()), Duration::ZERO);
    }

    #[test]
    fn the_bucket_charges_bytes_at_the_rate_after_a_small_burst() {
        let now = Instant::now();
        let mut t = Throttle::at(Some(1000));
        // The first 100 ms of credit is free; beyond it each byte costs 1 ms.
        let first = t.debt(100, now);
        assert!(first <= Duration::from_millis(1), "{first:?}");
        let second = t.debt(500, now);
        assert!(
            second >= Duration::from_millis(490) && second <= Duration::from_millis(510),
            "{second:?}"
        );
        // A long idle spell earns no more than the burst.
        let later = now + Duration::from_secs(10);
        let after_idle = t.debt(1000, later);
        assert!(after_idle >= Duration::from_millis(890), "{after_idle:?}");
    }
}
