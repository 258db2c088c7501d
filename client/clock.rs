//! Times as people read them: in the local time zone (or UTC with
//! `--utc`), in the format `ls -l` uses.
//!
//! The zone comes from `TZ`, else the system's (`/etc/localtime`), through
//! jiff, which reads the system's time-zone database. It is chosen once,
//! when first needed (finding the system's zone reads the database, some
//! milliseconds a transfer need not pay): like the terminal's colours, it
//! is a property of where ftpc runs, the same for every listing.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// Roughly six months, as `ls` counts them (half a Gregorian year): files
/// newer than this show the time of day, older ones the year.
const SIX_MONTHS_SECS: i64 = 31_556_952 / 2;

static ZONE: OnceLock<TimeZone> = OnceLock::new();

static UTC: AtomicBool = AtomicBool::new(false);

/// Chooses the zone for this run: UTC, or the local one.
pub fn init(utc: bool) {
    UTC.store(utc, Ordering::Relaxed);
}

/// The zone chosen by [`init`] (the local one if it was not called).
pub fn zone() -> TimeZone {
    ZONE.get_or_init(|| {
        if UTC.load(Ordering::Relaxed) {
            TimeZone::UTC
        } else {
            TimeZone::system()
        }
    })
    .clone()
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    Timestamp::now().as_second()
}

/// `ls -l`'s time column: `Nov 29 22:52` for the last six months,
/// `Nov 29  2025` for older or future times. `None` for a time jiff cannot
/// represent (beyond year 9999), which only a broken server sends.
pub fn ls_time(secs: i64, now: i64, tz: &TimeZone) -> Option<String> {
    let zoned = Timestamp::from_second(secs)
        .ok()?
        .to_zoned_datetime(tz.clone());
    let recent = secs <= now && now.saturating_sub(secs) < SIX_MONTHS_SECS;
    let format = if recent { "%b %e %H:%M" } else { "%b %e  %Y" };
    Some(zoned.strftime(format).to_string())
}

/// A full time for `stat`: `2026-11-29 22:52:07 IST` (the zone's
/// abbreviation, `UTC` with `--utc`).
pub fn full_time(secs: i64, tz: &TimeZone) -> Option<String> {
    let zoned = Timestamp::from_second(secs)
        .ok()?
        .to_zoned_datetime(tz.clone());
    Some(zoned.strftime("%Y-%m-%d %H:%M:%S %Z").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_992_727; // 2026-11-29 22:52:07 UTC

    #[test]
    fn recent_times_show_the_time_of_day_older_ones_the_year() {
        let utc = TimeZone::UTC;
        assert_eq!(ls_time(NOW, NOW, &utc).unwrap(), "Nov 29 22:52");
        assert_eq!(
            ls_time(NOW - 86_400 * 25, NOW, &utc).unwrap(),
            "Nov  4 22:52"
        );
        assert_eq!(
            ls_time(NOW - 86_400 * 200, NOW, &utc).unwrap(),
            "May 13  2026"
        );
        assert_eq!(ls_time(0, NOW, &utc).unwrap(), "Jan  1  1970");
        // The future gets the year: a clock is wrong somewhere.
        assert_eq!(ls_time(NOW + 3600, NOW, &utc).unwrap(), "Nov 29  2026");
        assert_eq!(ls_time(i64::MAX, NOW, &utc), None);
        assert_eq!(ls_time(i64::MIN, NOW, &utc), None);
    }

    #[test]
    fn zones_shift_the_clock() {
        let kolkata = TimeZone::get("Asia/Kolkata").unwrap();
        assert_eq!(ls_time(NOW, NOW, &kolkata).unwrap(), "Nov 30 04:22");
        assert_eq!(full_time(NOW, &kolkata).unwrap(), "2026-11-30 04:22:07 IST");
        assert_eq!(
            full_time(NOW, &TimeZone::UTC).unwrap(),
            "2026-11-29 22:52:07 UTC"
        );
    }
}
