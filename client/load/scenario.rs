//! The scenarios: which groups of sessions run, in which phases, and what
//! is measured around them.
//!
//! Every scenario starts by priming: one probe per user learns the user's
//! salt and scrypt settings from a `Challenge`, the keys are derived once
//! per user (in parallel, outside the measured phase), and one full login
//! per user checks the password before thousands of sessions could turn a
//! typo into a lockout. Measured sessions then reuse the cached keys: each
//! still does the whole exchange with fresh nonces and checks the server's
//! signature, so the server does all of its work and we do none of scrypt's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::ValueEnum;
use ftpd::scram;

use crate::content::Content;
use crate::engine::{Engine, Outcome, UserKeys};
use crate::procfs::{self, Mem, TICKS_PER_SEC};
use crate::report::{self, Big, Idle, Report, Requests, Server};
use crate::session::{FileRef, Op, Script};
use crate::stats::GroupStats;

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Connect, Hello, log in, Bye.
    Login,
    /// Log in, put a file, get it back and check it, remove it, Bye.
    Transfer,
    /// Hold N idle sessions while one session puts and gets a large file.
    Idle,
    /// Small requests in a loop from N sessions while a few large
    /// transfers run.
    Mixed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Login => "login",
            Scenario::Transfer => "transfer",
            Scenario::Idle => "idle",
            Scenario::Mixed => "mixed",
        }
    }
}

/// The run's settings.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub sessions: usize,
    /// `transfer`: each session's file; `idle`, `mixed`: the large file.
    pub size: u64,
    pub small_size: u64,
    pub duration: Duration,
    pub big: usize,
    /// `mixed`: mean think time of the small-request sessions (zero: a
    /// closed loop, requests back to back).
    pub think: Duration,
    pub keep: bool,
    pub seed: u64,
}

/// The server's and our own figures at one moment.
struct Mark {
    at: Instant,
    server_cpu: Option<u64>,
    server_mem: Option<Mem>,
    client_cpu: Option<u64>,
}

impl Mark {
    fn take(eng: &mut Engine) -> Mark {
        let pid = eng.monitor.as_ref().map(|m| m.pid);
        Mark {
            at: Instant::now(),
            server_cpu: pid.and_then(|p| procfs::cpu_ticks(Some(p)).ok()),
            server_mem: eng.monitor.as_mut().and_then(|m| m.sample()),
            client_cpu: procfs::cpu_ticks(None).ok(),
        }
    }
}

/// Starts a measured phase: resets the server's VmHWM and sampled peak.
fn begin(eng: &mut Engine, name: &'static str) -> (Mark, bool) {
    let reset = eng
        .monitor
        .as_ref()
        .is_some_and(|m| procfs::reset_hwm(m.pid).is_ok());
    if let Some(m) = &mut eng.monitor {
        m.peak_rss_kib = 0;
    }
    let first = eng.cx.groups.len();
    eng.progress.phase(name, first);
    (Mark::take(eng), reset)
}

/// Runs `plan` and returns its report (without the fields `main` fills).
pub fn run(eng: &mut Engine, plan: &Plan) -> anyhow::Result<Report> {
    match plan.scenario {
        Scenario::Login => login(eng, plan),
        Scenario::Transfer => transfer(eng, plan),
        Scenario::Idle => idle(eng, plan),
        Scenario::Mixed => mixed(eng, plan),
    }
}

/// Fails unless every session of group `g` succeeded.
fn all_ok(eng: &Engine, g: usize, outcome: Outcome, doing: &str) -> anyhow::Result<()> {
    let group = eng.group(g);
    if outcome == Outcome::Reached && group.stats.failed == 0 {
        return Ok(());
    }
    let samples: Vec<&String> = group.stats.samples.values().flatten().take(5).collect();
    let mut text = format!(
        "{doing} failed for {} of {} users",
        group.stats.failed, group.count
    );
    for s in samples {
        text += &format!("\n  {s}");
    }
    bail!(text)
}

/// Learns every user's salt, derives their keys once, and logs each in
/// once; with `small`, also uploads each user's small file.
fn prime(eng: &mut Engine, small: Option<Arc<Content>>) -> anyhow::Result<()> {
    let users = eng.cx.users.len();
    eng.progress.phase("probe", eng.cx.groups.len());
    let probe = eng.add_group(
        "probe",
        Script::new(vec![Op::Hello, Op::Probe, Op::Bye]),
        users,
    );
    let outcome = eng.run_until(|e| e.group(probe).settled());
    all_ok(eng, probe, outcome, "reaching the server")?;
    derive_keys(eng)?;

    let mut ops = vec![Op::Hello, Op::Login];
    if small.is_some() {
        ops.push(Op::Put(FileRef::Small));
    }
    ops.push(Op::Bye);
    let script = Script {
        small,
        ..Script::new(ops)
    };
    eng.progress.phase("prime", eng.cx.groups.len());
    let prime = eng.add_group("prime", script, users);
    let outcome = eng.run_until(|e| e.group(prime).settled());
    all_ok(eng, prime, outcome, "logging in once per user")
}

/// Derives each user's keys from the probed salt, one thread per core.
fn derive_keys(eng: &mut Engine) -> anyhow::Result<()> {
    let cx = &mut eng.cx;
    let mut jobs = Vec::new();
    for (i, user) in cx.users.iter().enumerate() {
        let Some((salt, kdf)) = &cx.probed[i] else {
            bail!("no challenge was seen for user {}", user.name);
        };
        if let Err(e) = scram::check_kdf(kdf) {
            bail!("user {}: {e}", user.name);
        }
        jobs.push((i, user.password.as_bytes(), salt.as_slice(), *kdf));
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, jobs.len().max(1));
    let per_thread = jobs.len().div_ceil(threads).max(1);
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(per_thread)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|&(i, password, salt, kdf)| {
                            (i, scram::client_keys(password, salt, &kdf))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect::<Vec<_>>()
    });
    if results.len() != jobs.len() {
        bail!("a key-derivation thread failed");
    }
    for (i, keys) in results {
        let keys = match keys {
            Ok(k) => k,
            Err(e) => bail!("deriving the key of user {}: {e}", cx.users[i].name),
        };
        let Some((salt, kdf)) = cx.probed[i].take() else {
            continue;
        };
        cx.keys[i] = Some(UserKeys { salt, kdf, keys });
    }
    Ok(())
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Reached => "complete",
        Outcome::Deadline => "deadline",
        Outcome::Interrupted => "interrupted",
    }
}

/// The report's common part from the measured phase's groups.
fn report(
    eng: &Engine,
    plan: &Plan,
    groups: &[usize],
    start: &Mark,
    end: &Mark,
    hwm_reset: bool,
    outcome: Outcome,
) -> Report {
    let mut all = GroupStats::default();
    for &g in groups {
        all.merge(&eng.group(g).stats);
    }
    let elapsed = end.at.duration_since(start.at).as_secs_f64();
    let server = eng.monitor.as_ref().map(|m| {
        let cpu_ms = start
            .server_cpu
            .zip(end.server_cpu)
            .map(|(a, b)| b.saturating_sub(a) * 1000 / TICKS_PER_SEC);
        let hwm = procfs::mem(m.pid).ok().map(|mem| mem.hwm_kib);
        Server {
            pid: m.pid,
            cpu_ms,
            cpu_ms_per_session: cpu_ms
                .filter(|_| all.done > 0)
                .map(|ms| ms as f64 / all.done as f64),
            rss_start_kib: start.server_mem.map(|m| m.rss_kib),
            rss_end_kib: end.server_mem.map(|m| m.rss_kib),
            rss_peak_sampled_kib: m.peak_rss_kib,
            cpu_ms_per_request: None,
            hwm_kib: hwm,
            hwm_reset,
        }
    });
    Report {
        scenario: plan.scenario.name(),
        addr: String::new(),
        users: eng.cx.users.len(),
        sessions: plan.sessions,
        connect: String::new(),
        size_bytes: None,
        duration_s: None,
        outcome: outcome_name(outcome),
        done: all.done,
        failed: all.failed,
        failures: all.failures.clone(),
        failure_samples: all.samples.clone(),
        bye_errors: all.bye_errors,
        bye_error_sample: all.bye_error_sample.clone(),
        elapsed_s: elapsed,
        sessions_per_s: if elapsed > 0.0 {
            all.done as f64 / elapsed
        } else {
            0.0
        },
        bytes_up: all.bytes_up,
        bytes_down: all.bytes_down,
        mb_per_s: report::mb_per_s(all.bytes_up + all.bytes_down, elapsed),
        latency: report::latencies(&all, true),
        requests: None,
        big: None,
        idle: None,
        server,
        client_cpu_ms: start
            .client_cpu
            .zip(end.client_cpu)
            .map(|(a, b)| b.saturating_sub(a) * 1000 / TICKS_PER_SEC),
        open_files_limit: None,
    }
}

fn big_stats(stats: &GroupStats, sessions: usize, size: u64, elapsed: f64) -> Big {
    let puts = stats.ops[crate::stats::OpKind::Put as usize].count();
    let gets = stats.ops[crate::stats::OpKind::Get as usize].count();
    Big {
        sessions,
        size_bytes: size,
        puts,
        gets,
        bytes_up: stats.bytes_up,
        bytes_down: stats.bytes_down,
        put_mb_per_s: report::mb_per_s(stats.bytes_up, stats.put_time.as_secs_f64()),
        get_mb_per_s: report::mb_per_s(stats.bytes_down, stats.get_time.as_secs_f64()),
        mb_per_s: report::mb_per_s(stats.bytes_up + stats.bytes_down, elapsed),
    }
}

/// Runs a one-group phase until every session has ended.
fn one_group(
    eng: &mut Engine,
    plan: &Plan,
    name: &'static str,
    script: Script,
) -> anyhow::Result<Report> {
    let (start, reset) = begin(eng, name);
    let g = eng.add_group(name, script, plan.sessions);
    let outcome = eng.run_until(|e| e.group(g).settled());
    let end = Mark::take(eng);
    Ok(report(eng, plan, &[g], &start, &end, reset, outcome))
}

fn login(eng: &mut Engine, plan: &Plan) -> anyhow::Result<Report> {
    prime(eng, None)?;
    let script = Script::new(vec![Op::Hello, Op::Login, Op::Bye]);
    one_group(eng, plan, "login", script)
}

fn transfer(eng: &mut Engine, plan: &Plan) -> anyhow::Result<Report> {
    let own = Arc::new(Content::generate(plan.seed, plan.size).map_err(anyhow::Error::msg)?);
    prime(eng, None)?;
    let mut ops = vec![
        Op::Hello,
        Op::Login,
        Op::Put(FileRef::Own),
        Op::Get(FileRef::Own),
    ];
    if !plan.keep {
        ops.push(Op::Remove(FileRef::Own));
    }
    ops.push(Op::Bye);
    let script = Script {
        own: Some(own),
        ..Script::new(ops)
    };
    let mut r = one_group(eng, plan, "transfer", script)?;
    r.size_bytes = Some(plan.size);
    Ok(r)
}

/// A script that puts, gets and (unless `keep`) removes its own file,
/// repeating that part while the loop window is open.
fn big_script(content: Arc<Content>, keep: bool) -> Script {
    let mut ops = vec![
        Op::Hello,
        Op::Login,
        Op::Put(FileRef::Own),
        Op::Get(FileRef::Own),
    ];
    if !keep {
        ops.push(Op::Remove(FileRef::Own));
    }
    let end = ops.len();
    ops.push(Op::Bye);
    Script {
        repeat: Some((2, end)),
        own: Some(content),
        tag: "big",
        ..Script::new(ops)
    }
}

fn idle(eng: &mut Engine, plan: &Plan) -> anyhow::Result<Report> {
    let content = Arc::new(Content::generate(plan.seed, plan.size).map_err(anyhow::Error::msg)?);
    prime(eng, None)?;
    let (start, reset) = begin(eng, "idle");
    let idle = eng.add_group(
        "idle",
        Script::new(vec![Op::Hello, Op::Login, Op::Hold, Op::Bye]),
        plan.sessions,
    );
    let mut outcome = eng.run_until(|e| e.group(idle).parked());
    let parked_at = Instant::now();
    let logins_per_s = eng.group(idle).stats.holding as f64
        / parked_at.duration_since(start.at).as_secs_f64().max(1e-9);
    let with_idle = eng.monitor.as_mut().and_then(|m| m.sample());
    let held = eng.group(idle).stats.holding;

    // Big's loop window stays closed: one put and one get.
    let big = eng.add_group("big", big_script(content, plan.keep), 1);
    if outcome == Outcome::Reached {
        outcome = eng.run_until(|e| e.group(big).settled());
    }
    let after = eng.monitor.as_mut().and_then(|m| m.sample());
    let release = (parked_at + plan.duration).max(Instant::now());
    eng.cx.release_at = Some(release);
    if outcome == Outcome::Reached {
        outcome = eng.run_until(|e| e.group(idle).settled());
    }
    let end = Mark::take(eng);
    let mut r = report(eng, plan, &[idle, big], &start, &end, reset, outcome);
    r.latency = report::latencies(&eng.group(idle).stats, false);
    r.size_bytes = Some(plan.size);
    r.duration_s = Some(plan.duration.as_secs_f64());
    let elapsed = r.elapsed_s;
    r.big = Some(big_stats(&eng.group(big).stats, 1, plan.size, elapsed));
    let before = start.server_mem.map(|m| m.rss_kib);
    let with = with_idle.map(|m| m.rss_kib);
    r.idle = Some(Idle {
        held,
        hold_s: release.duration_since(parked_at).as_secs_f64(),
        logins_per_s,
        rss_before_kib: before,
        rss_with_idle_kib: with,
        rss_after_transfer_kib: after.map(|m| m.rss_kib),
        bytes_per_session: before
            .zip(with)
            .filter(|_| held > 0)
            .map(|(b, w)| (w as f64 - b as f64) * 1024.0 / held as f64),
    });
    Ok(r)
}

fn mixed(eng: &mut Engine, plan: &Plan) -> anyhow::Result<Report> {
    let big_content =
        Arc::new(Content::generate(plan.seed, plan.size).map_err(anyhow::Error::msg)?);
    let small_content = Arc::new(
        Content::generate(plan.seed ^ 0x5bd1_e995, plan.small_size).map_err(anyhow::Error::msg)?,
    );
    prime(eng, Some(Arc::clone(&small_content)))?;
    let (start, reset) = begin(eng, "mixed");
    eng.cx.loop_until = Some(Instant::now() + plan.duration);
    let big = eng.add_group("big", big_script(big_content, plan.keep), plan.big);
    let small_ops = vec![
        Op::Hello,
        Op::Login,
        Op::List,
        Op::Stat(FileRef::Small),
        Op::Get(FileRef::Small),
        Op::Bye,
    ];
    let small_script = Script {
        repeat: Some((2, 5)),
        small: Some(Arc::clone(&small_content)),
        think: plan.think,
        ..Script::new(small_ops)
    };
    let small = eng.add_group("small", small_script, plan.sessions);
    let outcome = eng.run_until(|e| e.group(big).settled() && e.group(small).settled());
    let end = Mark::take(eng);
    let mut r = report(eng, plan, &[big, small], &start, &end, reset, outcome);
    r.latency = report::latencies(&eng.group(small).stats, true);
    r.size_bytes = Some(plan.size);
    r.duration_s = Some(plan.duration.as_secs_f64());
    let elapsed = r.elapsed_s;
    let requests = eng.group(small).stats.request.count();
    r.requests = Some(Requests {
        count: requests,
        per_s: requests as f64 / plan.duration.as_secs_f64().min(elapsed).max(1e-9),
        // With a think time, each session sends about one request per
        // think time at most: the rate the run offers, whatever the server.
        think_ms: (!plan.think.is_zero()).then_some(plan.think.as_micros() as f64 / 1000.0),
        offered_per_s: (!plan.think.is_zero())
            .then(|| plan.sessions as f64 / plan.think.as_secs_f64()),
    });
    r.big = Some(big_stats(
        &eng.group(big).stats,
        plan.big,
        plan.size,
        elapsed,
    ));
    if let Some(server) = &mut r.server {
        server.cpu_ms_per_request = server
            .cpu_ms
            .filter(|_| requests > 0)
            .map(|ms| ms as f64 / requests as f64);
    }

    if !plan.keep && outcome == Outcome::Reached {
        eng.cx.loop_until = None;
        eng.progress.phase("cleanup", eng.cx.groups.len());
        let script = Script {
            small: Some(small_content),
            ..Script::new(vec![
                Op::Hello,
                Op::Login,
                Op::Remove(FileRef::Small),
                Op::Bye,
            ])
        };
        let users = eng.cx.users.len();
        let cleanup = eng.add_group("cleanup", script, users);
        eng.run_until(|e| e.group(cleanup).settled());
        let stats = &eng.group(cleanup).stats;
        r.failed += stats.failed;
        for (k, v) in &stats.failures {
            *r.failures.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &stats.samples {
            r.failure_samples
                .entry(k.clone())
                .or_default()
                .extend(v.iter().cloned());
        }
    }
    Ok(r)
}
