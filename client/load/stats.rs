//! What a run counts: latency histograms, failures by kind, bytes moved.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use ftpd::proto::ErrorCode;

/// Failure messages kept per kind, to show what went wrong without keeping
/// one string per failed session.
const SAMPLES_PER_KIND: usize = 3;

/// Why a session failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The TCP connection could not be made.
    Connect,
    /// A step made no progress within `--step-timeout`, or the run's
    /// `--timeout` ended it.
    Timeout,
    /// The login was refused or the server could not prove it knows the key.
    Login,
    /// The server answered a request with this error code.
    Server(ErrorCode),
    /// Data or a CRC32 did not match what was sent.
    Crc,
    /// The server sent something the protocol does not allow here.
    Protocol,
    /// The connection broke (reset, closed early).
    Io,
    /// The run was interrupted (SIGINT/SIGTERM).
    Interrupted,
}

impl fmt::Display for FailKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailKind::Connect => f.write_str("connect"),
            FailKind::Timeout => f.write_str("timeout"),
            FailKind::Login => f.write_str("login"),
            FailKind::Server(code) => write!(f, "server:{code:?}"),
            FailKind::Crc => f.write_str("crc"),
            FailKind::Protocol => f.write_str("protocol"),
            FailKind::Io => f.write_str("io"),
            FailKind::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// A failed session: the kind (counted) and a message (sampled).
#[derive(Debug)]
pub struct Fail {
    pub kind: FailKind,
    pub message: String,
}

impl Fail {
    pub fn new(kind: FailKind, message: impl Into<String>) -> Fail {
        Fail {
            kind,
            message: message.into(),
        }
    }
}

/// Requests whose latency is recorded one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Login,
    Put,
    Get,
    Stat,
    List,
    Remove,
}

impl OpKind {
    pub const ALL: [OpKind; 6] = [
        OpKind::Login,
        OpKind::Put,
        OpKind::Get,
        OpKind::Stat,
        OpKind::List,
        OpKind::Remove,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Login => "login",
            OpKind::Put => "put",
            OpKind::Get => "get",
            OpKind::Stat => "stat",
            OpKind::List => "list",
            OpKind::Remove => "remove",
        }
    }
}

/// Linear buckets below this many microseconds, one per microsecond.
const LINEAR: u64 = 128;
/// log2 of the sub-buckets per power of two above `LINEAR`: 64 of them
/// keep every reported figure within 1.6 % of the true value.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets for every `u64` value.
const BUCKETS: usize = LINEAR as usize + (64 - 7) * SUB as usize;

/// A log-linear latency histogram in microseconds: fixed memory whatever
/// the number of samples, exact count and max.
#[derive(Debug, Clone, Default)]
pub struct Hist {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    max: u64,
}

/// A histogram's summary.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= 7
    let sub = (v >> (e - SUB_BITS)) - SUB;
    LINEAR as usize + (e as usize - 7) * SUB as usize + sub as usize
}

/// The smallest value in bucket `b`, and the bucket's width.
fn bucket_range(b: usize) -> (u64, u64) {
    if (b as u64) < LINEAR {
        return (b as u64, 1);
    }
    let i = b - LINEAR as usize;
    let e = (i / SUB as usize) as u32 + 7;
    let sub = (i % SUB as usize) as u64;
    let shift = e - SUB_BITS;
    ((SUB + sub) << shift, 1 << shift)
}

impl Hist {
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        self.counts[bucket(us)] += 1;
        self.count += 1;
        self.sum += u128::from(us);
        self.max = self.max.max(us);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn merge(&mut self, other: &Hist) {
        if other.count == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// The value below which a fraction `q` of the samples lie (bucket
    /// midpoint, never above the exact max).
    fn quantile(&self, q: f64) -> u64 {
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bucket_range(b);
                return (low + width / 2).min(self.max);
            }
        }
        self.max
    }

    pub fn summary(&self) -> Option<Summary> {
        if self.count == 0 {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Summary {
            count: self.count,
            p50_ms: ms(self.quantile(0.50)),
            p99_ms: ms(self.quantile(0.99)),
            max_ms: ms(self.max),
            mean_ms: self.sum as f64 / self.count as f64 / 1000.0,
        })
    }
}

/// Counters of one group of sessions.
#[derive(Debug, Default)]
pub struct GroupStats {
    pub started: u64,
    pub done: u64,
    pub failed: u64,
    /// Sessions parked in `Hold` right now.
    pub holding: u64,
    pub failures: BTreeMap<String, u64>,
    /// A few messages per failure kind.
    pub samples: BTreeMap<String, Vec<String>>,
    /// From starting the connect to the server's EOF after `Bye`.
    pub session: Hist,
    pub connect: Hist,
    /// From the TCP connection to the end of the TLS handshake.
    pub handshake: Hist,
    pub ops: [Hist; OpKind::ALL.len()],
    /// Requests inside a script's repeated part (the `mixed` loop).
    pub request: Hist,
    /// Bytes of completed uploads and downloads.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Summed time of completed uploads and downloads.
    pub put_time: Duration,
    pub get_time: Duration,
    pub first_start: Option<Instant>,
    pub last_end: Option<Instant>,
    /// Sessions whose `Bye` got an `Error` reply before the server closed
    /// (the session's work was done, so they count as done).
    pub bye_errors: u64,
    pub bye_error_sample: Option<String>,
}

impl GroupStats {
    pub fn op(&mut self, kind: OpKind) -> &mut Hist {
        &mut self.ops[kind as usize]
    }

    pub fn fail(&mut self, fail: Fail) {
        self.failed += 1;
        let key = fail.kind.to_string();
        let samples = self.samples.entry(key.clone()).or_default();
        if samples.len() < SAMPLES_PER_KIND {
            samples.push(fail.message);
        }
        *self.failures.entry(key).or_insert(0) += 1;
    }

    pub fn settled(&self) -> u64 {
        self.done + self.failed
    }

    /// Adds `other`'s figures to these.
    pub fn merge(&mut self, other: &GroupStats) {
        self.started += other.started;
        self.done += other.done;
        self.failed += other.failed;
        for (k, v) in &other.failures {
            *self.failures.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &other.samples {
            let mine = self.samples.entry(k.clone()).or_default();
            for m in v {
                if mine.len() < SAMPLES_PER_KIND {
                    mine.push(m.clone());
                }
            }
        }
        self.session.merge(&other.session);
        self.connect.merge(&other.connect);
        self.handshake.merge(&other.handshake);
        for (a, b) in self.ops.iter_mut().zip(&other.ops) {
            a.merge(b);
        }
        self.request.merge(&other.request);
        self.bye_errors += other.bye_errors;
        if self.bye_error_sample.is_none() {
            self.bye_error_sample.clone_from(&other.bye_error_sample);
        }
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
        self.put_time += other.put_time;
        self.get_time += other.get_time;
        self.first_start = match (self.first_start, other.first_start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_end = match (self.last_end, other.last_end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut last = None;
        for v in (0..100_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let b = bucket(v);
            assert!(b < BUCKETS, "{v}");
            let (low, width) = bucket_range(b);
            assert!(low <= v && v - low < width, "{v}: {low} {width}");
            if let Some(prev) = last {
                assert!(b == prev || b == prev + 1 || v > 100_000);
            }
            last = Some(b);
        }
    }

    #[test]
    fn quantiles_are_close() {
        let mut h = Hist::default();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary().unwrap();
        assert_eq!(s.count, 10_000);
        assert!((s.p50_ms - 5.0).abs() < 5.0 * 0.02, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() < 9.9 * 0.02, "{s:?}");
        assert_eq!(s.max_ms, 10.0);
    }
}
