//! The figures of a run: one JSON object (`--json`) or a table.

use std::collections::BTreeMap;
use std::io::{self, Write};

use ftpd::size::format_size;
use serde::Serialize;

use crate::stats::{GroupStats, OpKind, Summary};

/// Bytes in the "MB" of MB/s: decimal, as network figures usually are.
const MB: f64 = 1e6;

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub addr: String,
    pub users: usize,
    /// Sessions asked for (`-n`); `big` sessions come on top.
    pub sessions: usize,
    /// How sessions were started.
    pub connect: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// "complete", or "deadline" / "interrupted" when the run was cut short.
    pub outcome: &'static str,
    /// Sessions of the measured phase (including `big` ones).
    pub done: u64,
    pub failed: u64,
    /// Failed sessions by kind, including cleanup.
    pub failures: BTreeMap<String, u64>,
    pub failure_samples: BTreeMap<String, Vec<String>>,
    /// Sessions whose `Bye` was answered with an `Error` (counted as done).
    #[serde(skip_serializing_if = "is_zero")]
    pub bye_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bye_error_sample: Option<String>,
    /// Wall time of the measured phase.
    pub elapsed_s: f64,
    /// Sessions done per second of the measured phase.
    pub sessions_per_s: f64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// (bytes up + bytes down) / elapsed, in MB (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Latencies, in milliseconds: `session` (connect to the server's
    /// close after Bye), `connect` (TCP), `tls` (the TLS handshake after
    /// it), and per request kind; `request` is
    /// every request of the `mixed` loop.
    pub latency: BTreeMap<&'static str, Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<Requests>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub big: Option<Big>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<Idle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<Server>,
    /// This load generator's CPU time in the measured phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu_ms: Option<u64>,
    /// Our open-files limit after raising it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_files_limit: Option<u64>,
}

/// The `mixed` loop's small requests.
#[derive(Debug, Serialize)]
pub struct Requests {
    pub count: u64,
    /// Achieved: requests over the loop's duration.
    pub per_s: f64,
    /// `--think`: mean think time between a reply and the next request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub think_ms: Option<f64>,
    /// With `--think`: sessions / think time, the rate asked for (each
    /// request's latency comes on top of its think time, so the achieved
    /// rate stays somewhat below).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_per_s: Option<f64>,
}

/// The large transfers (`idle`: one; `mixed`: `--big`).
#[derive(Debug, Serialize)]
pub struct Big {
    pub sessions: usize,
    pub size_bytes: u64,
    pub puts: u64,
    pub gets: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Bytes of completed puts over the time they took, in MB/s.
    pub put_mb_per_s: f64,
    pub get_mb_per_s: f64,
    /// All bytes moved over the measured phase's wall time.
    pub mb_per_s: f64,
}

/// The `idle` scenario's memory figures.
///
/// `bytes_per_session = (rss_with_idle - rss_before) / held`: `VmRSS` of
/// the server read just before the first idle session connects, and again
/// once every idle session is logged in (before the big transfer starts).
/// It counts everything the sessions made the server keep resident,
/// allocator slack included.
#[derive(Debug, Serialize)]
pub struct Idle {
    pub held: u64,
    pub hold_s: f64,
    /// Idle sessions logged in per second while they were set up.
    pub logins_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_before_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_with_idle_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_transfer_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_session: Option<f64>,
}

/// The server process (`--server-pid`), over the measured phase.
#[derive(Debug, Serialize)]
pub struct Server {
    pub pid: u32,
    /// utime + stime of all its threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms_per_session: Option<f64>,
    /// `mixed`: server CPU over the small requests (the big transfers'
    /// share included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms_per_request: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_start_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_end_kib: Option<u64>,
    /// Largest VmRSS sampled every 100 ms.
    pub rss_peak_sampled_kib: u64,
    /// VmHWM at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hwm_kib: Option<u64>,
    /// Whether VmHWM was reset at the start of the phase; if not, it is
    /// the peak since the server started.
    pub hwm_reset: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Latency summaries of `stats`, by name.
pub fn latencies(stats: &GroupStats, with_session: bool) -> BTreeMap<&'static str, Summary> {
    let mut out = BTreeMap::new();
    if with_session && let Some(s) = stats.session.summary() {
        out.insert("session", s);
    }
    if let Some(s) = stats.connect.summary() {
        out.insert("connect", s);
    }
    if let Some(s) = stats.handshake.summary() {
        out.insert("tls", s);
    }
    for kind in OpKind::ALL {
        if let Some(s) = stats.ops[kind as usize].summary() {
            out.insert(kind.name(), s);
        }
    }
    if let Some(s) = stats.request.summary() {
        out.insert("request", s);
    }
    out
}

pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / MB / secs
    } else {
        0.0
    }
}

fn kib(k: u64) -> String {
    format_size(k.saturating_mul(1024))
}

impl Report {
    /// The human-readable summary.
    pub fn print_table(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "ftpload {}: {} sessions against {} ({} users, connect {}){}",
            self.scenario,
            self.sessions,
            self.addr,
            self.users,
            self.connect,
            match self.outcome {
                "complete" => String::new(),
                other => format!(" [cut short: {other}]"),
            }
        )?;
        let mut params = Vec::new();
        if let Some(size) = self.size_bytes {
            params.push(format!("size {}", format_size(size)));
        }
        if let Some(d) = self.duration_s {
            params.push(format!("duration {d} s"));
        }
        if !params.is_empty() {
            writeln!(out, "  {}", params.join(", "))?;
        }
        writeln!(
            out,
            "  sessions   {} done, {} failed in {:.2} s: {:.1} sessions/s",
            self.done, self.failed, self.elapsed_s, self.sessions_per_s
        )?;
        if self.failures.is_empty() {
            writeln!(out, "  failures   none")?;
        } else {
            let kinds: Vec<String> = self
                .failures
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(out, "  failures   {}", kinds.join(", "))?;
            for samples in self.failure_samples.values() {
                for s in samples {
                    writeln!(out, "    e.g. {s}")?;
                }
            }
        }
        if self.bye_errors > 0 {
            writeln!(
                out,
                "  warning    {} sessions got an Error reply to Bye (counted as done), e.g.",
                self.bye_errors
            )?;
            if let Some(s) = &self.bye_error_sample {
                writeln!(out, "    {s}")?;
            }
        }
        if self.bytes_up + self.bytes_down > 0 {
            writeln!(
                out,
                "  data       up {:.1} MB, down {:.1} MB: {:.1} MB/s",
                self.bytes_up as f64 / MB,
                self.bytes_down as f64 / MB,
                self.mb_per_s
            )?;
        }
        if let Some(r) = &self.requests {
            let offered = match (r.offered_per_s, r.think_ms) {
                (Some(rate), Some(ms)) => {
                    format!(
                        " (offered {rate:.0}/s: {} sessions, think {ms} ms ±50%)",
                        self.sessions
                    )
                }
                _ => String::new(),
            };
            writeln!(
                out,
                "  requests   {} small requests: {:.0}/s{offered}",
                r.count, r.per_s
            )?;
        }
        if !self.latency.is_empty() {
            writeln!(
                out,
                "  latency ms {:>10} {:>10} {:>10} {:>10} {:>9}",
                "p50", "p99", "max", "mean", "count"
            )?;
            let order = [
                "session", "connect", "tls", "login", "put", "get", "stat", "list", "remove",
            ];
            let names = order
                .into_iter()
                .chain(std::iter::once("request"))
                .filter_map(|n| self.latency.get_key_value(n));
            for (name, s) in names {
                writeln!(
                    out,
                    "    {name:<8} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>9}",
                    s.p50_ms, s.p99_ms, s.max_ms, s.mean_ms, s.count
                )?;
            }
        }
        if let Some(b) = &self.big {
            writeln!(
                out,
                "  big        {} session(s) of {}: {} puts at {:.1} MB/s, {} gets at {:.1} MB/s ({:.1} MB/s overall)",
                b.sessions,
                format_size(b.size_bytes),
                b.puts,
                b.put_mb_per_s,
                b.gets,
                b.get_mb_per_s,
                b.mb_per_s
            )?;
        }
        if let Some(i) = &self.idle {
            writeln!(
                out,
                "  idle       {} sessions held {:.1} s, logged in at {:.1}/s",
                i.held, i.hold_s, i.logins_per_s
            )?;
            if let (Some(before), Some(with)) = (i.rss_before_kib, i.rss_with_idle_kib) {
                writeln!(
                    out,
                    "             server RSS {} before, {} with them{}: {}",
                    kib(before),
                    kib(with),
                    i.rss_after_transfer_kib
                        .map(|a| format!(", {} after the transfer", kib(a)))
                        .unwrap_or_default(),
                    i.bytes_per_session
                        .map(|b| format!("{:.1} KiB per idle session", b / 1024.0))
                        .unwrap_or_else(|| "n/a".into())
                )?;
            }
        }
        if let Some(s) = &self.server {
            let mut notes = Vec::new();
            if let Some(per) = s.cpu_ms_per_session {
                notes.push(format!("{per:.3} ms/session"));
            }
            if let Some(per) = s.cpu_ms_per_request {
                notes.push(format!(
                    "{:.1} us/small request, big transfers included",
                    per * 1000.0
                ));
            }
            let cpu = match s.cpu_ms {
                Some(ms) if notes.is_empty() => format!("cpu {ms} ms"),
                Some(ms) => format!("cpu {ms} ms ({})", notes.join(", ")),
                None => "cpu n/a".into(),
            };
            writeln!(out, "  server     pid {}: {cpu}", s.pid)?;
            writeln!(
                out,
                "             RSS {} at start, {} at end, peak sampled {}, VmHWM {} ({})",
                s.rss_start_kib.map_or("n/a".into(), kib),
                s.rss_end_kib.map_or("n/a".into(), kib),
                kib(s.rss_peak_sampled_kib),
                s.hwm_kib.map_or("n/a".into(), kib),
                if s.hwm_reset {
                    "since the phase began"
                } else {
                    "since the server started"
                }
            )?;
        }
        if let Some(ms) = self.client_cpu_ms {
            writeln!(out, "  ftpload    cpu {ms} ms")?;
        }
        Ok(())
    }
}
