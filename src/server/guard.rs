//! Brute-force resistance for logins.
//!
//! Failures are counted per (user name, client) and, more loosely, per
//! client across all names (password spraying); a client is an [`AddrKey`]
//! (an IPv4 address or an IPv6 /64). Each failure is answered after a delay
//! that doubles with the count; past a threshold the pair (or client) is
//! locked out for a while. Keying on the pair means a stranger's failures
//! never lock a user out from their own address, and the delay is a timer
//! on the failing connection only, so nobody else waits.
//!
//! A login is an [`Attempt`] from `LoginStart` (which refuses a locked
//! pair before issuing a challenge) to `LoginProof`, where
//! [`LoginGuard::settle`] checks the lockout again, checks the proof, and
//! counts the outcome, all in one call on the reactor thread. So however
//! many connections hold a challenge at once, at most the limit of proofs
//! is checked per lockout window: each check sees every failure before it.
//! An attempt abandoned before its proof (the connection closes, times out
//! or breaks the protocol) counts as nothing: no password was tried.
//!
//! Memory is bounded: each table holds at most [`MAX_RECORDS`] records.
//! When full, it forgets expired records first, then the oldest record that
//! is not a lockout, and a lockout only when it holds nothing else; so
//! flooding the table from many addresses cannot wipe a target's lockout
//! short of making more than [`MAX_RECORDS`] newer lockouts.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::addr::AddrKey;

/// Tuning of the login guard.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Delay after the first failure; doubles with each further one.
    pub base_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
    /// Failures of one (user, address) pair before it is locked.
    pub pair_limit: u32,
    /// Failures from one address, over all names, before it is locked.
    pub addr_limit: u32,
    /// How long a lockout lasts, and how long failures are remembered.
    pub lockout: Duration,
}

/// Most records per table. A pair record costs a few hundred bytes (the
/// name twice, in the map and in its age index), so both tables together
/// stay within some tens of MB however many addresses an attacker has.
pub const MAX_RECORDS: usize = 100_000;

/// Counts login failures and decides delays and lockouts.
#[derive(Debug)]
pub struct LoginGuard {
    cfg: GuardConfig,
    pairs: Table<(String, AddrKey)>,
    addrs: Table<AddrKey>,
}

/// Why a login may not proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// Time until the lockout ends.
    pub remaining: Duration,
}

/// A login between `LoginStart` and `LoginProof`: whose it is.
#[derive(Debug)]
pub struct Attempt {
    user: String,
    addr: AddrKey,
}

/// What became of a proof handed to [`LoginGuard::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The proof was right; the pair's failures are forgotten.
    Verified,
    /// The proof was wrong; answer after `delay`.
    Failed { delay: Duration },
    /// Locked out meanwhile (by other connections' failures): the proof was
    /// not checked.
    Locked(Locked),
}

impl LoginGuard {
    /// A guard with no failures recorded.
    pub fn new(cfg: GuardConfig) -> LoginGuard {
        LoginGuard {
            pairs: Table::new(cfg.pair_limit, MAX_RECORDS),
            addrs: Table::new(cfg.addr_limit, MAX_RECORDS),
            cfg,
        }
    }

    /// Starts a login of `user` from `ip`, unless that is locked out now.
    pub fn begin(&self, user: &str, ip: IpAddr, now: Instant) -> Result<Attempt, Locked> {
        let attempt = Attempt {
            user: user.to_string(),
            addr: AddrKey::of(ip),
        };
        self.check(&attempt, now)?;
        Ok(attempt)
    }

    /// Ends a login at its proof: checks the lockout again, then runs
    /// `verify` (true when the proof is right) and counts its outcome.
    pub fn settle(
        &mut self,
        attempt: Attempt,
        now: Instant,
        verify: impl FnOnce() -> bool,
    ) -> Verdict {
        if let Err(locked) = self.check(&attempt, now) {
            return Verdict::Locked(locked);
        }
        let addr = attempt.addr;
        let pair = (attempt.user, addr);
        if verify() {
            // The address's count stays: a success on one name must not
            // reset a spray on others.
            self.pairs.remove(&pair);
            return Verdict::Verified;
        }
        let window = self.cfg.lockout;
        let count = self.pairs.fail(pair, now, window);
        self.addrs.fail(addr, now, window);
        Verdict::Failed {
            delay: self.delay(count),
        }
    }

    /// The delay after the `count`th failure in a row.
    fn delay(&self, count: u32) -> Duration {
        let doublings = count.saturating_sub(1).min(16);
        self.cfg
            .base_delay
            .checked_mul(1 << doublings)
            .unwrap_or(self.cfg.max_delay)
            .min(self.cfg.max_delay)
    }

    fn check(&self, attempt: &Attempt, now: Instant) -> Result<(), Locked> {
        let window = self.cfg.lockout;
        let pair = self
            .pairs
            .locked((attempt.user.clone(), attempt.addr), now, window);
        let by_addr = self.addrs.locked(attempt.addr, now, window);
        match pair.max(by_addr) {
            Some(remaining) => Err(Locked { remaining }),
            None => Ok(()),
        }
    }
}

/// Failures seen for one key.
#[derive(Debug, Clone, Copy)]
struct Record {
    count: u32,
    last: Instant,
    /// Position in the table's age index.
    seq: u64,
}

impl Record {
    fn expired(&self, now: Instant, window: Duration) -> bool {
        now.saturating_duration_since(self.last) > window
    }
}

/// Records by key, with their age order kept in two indexes (records below
/// the limit, and lockouts), so that expiring and evicting the oldest are
/// O(log n) and nothing is ever scanned.
#[derive(Debug)]
struct Table<K> {
    limit: u32,
    capacity: usize,
    records: HashMap<K, Record>,
    counting: BTreeMap<u64, K>,
    locked: BTreeMap<u64, K>,
    next_seq: u64,
}

impl<K: Clone + Eq + Hash> Table<K> {
    fn new(limit: u32, capacity: usize) -> Table<K> {
        Table {
            limit,
            capacity,
            records: HashMap::new(),
            counting: BTreeMap::new(),
            locked: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// How long `key` stays locked, if it is locked now.
    fn locked(&self, key: K, now: Instant, window: Duration) -> Option<Duration> {
        let rec = self.records.get(&key)?;
        if rec.count < self.limit || rec.expired(now, window) {
            return None;
        }
        let remaining = rec
            .last
            .checked_add(window)
            .map_or(window, |end| end.saturating_duration_since(now));
        Some(remaining).filter(|d| !d.is_zero())
    }

    /// Counts a failure of `key`; returns its failures in the window.
    fn fail(&mut self, key: K, now: Instant, window: Duration) -> u32 {
        self.expire(now, window);
        let count = match self.unindex(&key) {
            Some(rec) if !rec.expired(now, window) => rec.count.saturating_add(1),
            Some(_) => 1,
            None => {
                if self.records.len() >= self.capacity {
                    self.evict_oldest();
                }
                1
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.index(seq, count, key.clone());
        self.records.insert(
            key,
            Record {
                count,
                last: now,
                seq,
            },
        );
        count
    }

    /// Forgets `key`.
    fn remove(&mut self, key: &K) {
        if self.unindex(key).is_some() {
            self.records.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.records.len()
    }

    fn index(&mut self, seq: u64, count: u32, key: K) {
        if count >= self.limit {
            self.locked.insert(seq, key);
        } else {
            self.counting.insert(seq, key);
        }
    }

    /// Takes `key` out of its age index; returns its record (still in the
    /// map, to be replaced or removed by the caller).
    fn unindex(&mut self, key: &K) -> Option<Record> {
        let rec = *self.records.get(key)?;
        if self.counting.remove(&rec.seq).is_none() {
            self.locked.remove(&rec.seq);
        }
        Some(rec)
    }

    /// Drops expired records from the old end of both indexes. Each record
    /// is dropped once, so this is amortised O(log n) per failure.
    fn expire(&mut self, now: Instant, window: Duration) {
        for index in [&mut self.counting, &mut self.locked] {
            while let Some(entry) = index.first_entry() {
                let stale = self
                    .records
                    .get(entry.get())
                    .is_none_or(|r| r.expired(now, window));
                if !stale {
                    break;
                }
                let key = entry.remove();
                self.records.remove(&key);
            }
        }
    }

    /// Forgets the oldest record that is not a lockout, or else the oldest
    /// lockout.
    fn evict_oldest(&mut self) {
        let oldest = match self.counting.pop_first() {
            Some(entry) => Some(entry),
            None => self.locked.pop_first(),
        };
        if let Some((_, key)) = oldest {
            self.records.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn guard() -> LoginGuard {
        LoginGuard::new(GuardConfig {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            pair_limit: 3,
            addr_limit: 10,
            lockout: Duration::from_secs(60),
        })
    }

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    /// A whole login with a wrong proof: the delay, or why it was refused.
    fn fail(g: &mut LoginGuard, user: &str, ip: IpAddr, t: Instant) -> Result<Duration, Locked> {
        let attempt = g.begin(user, ip, t)?;
        match g.settle(attempt, t, || false) {
            Verdict::Failed { delay } => Ok(delay),
            Verdict::Locked(locked) => Err(locked),
            Verdict::Verified => panic!("a wrong proof verified"),
        }
    }

    #[test]
    fn delay_doubles_then_locks_the_pair_only() {
        let mut g = guard();
        let t = Instant::now();
        assert_eq!(fail(&mut g, "alice", A, t), Ok(Duration::from_millis(100)));
        assert_eq!(fail(&mut g, "alice", A, t), Ok(Duration::from_millis(200)));
        assert!(g.begin("alice", A, t).is_ok());
        assert_eq!(fail(&mut g, "alice", A, t), Ok(Duration::from_millis(400)));
        assert_eq!(
            g.begin("alice", A, t).unwrap_err(),
            Locked {
                remaining: Duration::from_secs(60)
            }
        );
        // Same name from elsewhere, and another name from here, still work.
        assert!(g.begin("alice", B, t).is_ok());
        assert!(g.begin("bob", A, t).is_ok());
        // The lockout ends, and the count starts over.
        let later = t + Duration::from_secs(61);
        assert!(g.begin("alice", A, later).is_ok());
        assert_eq!(
            fail(&mut g, "alice", A, later),
            Ok(Duration::from_millis(100))
        );
    }

    #[test]
    fn huge_delays_saturate_at_the_maximum() {
        let mut g = LoginGuard::new(GuardConfig {
            base_delay: Duration::MAX,
            max_delay: Duration::MAX,
            pair_limit: 100,
            addr_limit: 100,
            lockout: Duration::MAX,
        });
        let t = Instant::now();
        for _ in 0..20 {
            assert_eq!(fail(&mut g, "alice", A, t), Ok(Duration::MAX));
        }
    }

    #[test]
    fn spraying_many_names_locks_the_address() {
        let mut g = guard();
        let t = Instant::now();
        for i in 0..10 {
            fail(&mut g, &format!("user{i}"), A, t).unwrap();
        }
        assert!(g.begin("fresh", A, t).is_err());
        assert!(g.begin("fresh", B, t).is_ok());
    }

    #[test]
    fn success_clears_the_pair() {
        let mut g = guard();
        let t = Instant::now();
        fail(&mut g, "alice", A, t).unwrap();
        fail(&mut g, "alice", A, t).unwrap();
        let attempt = g.begin("alice", A, t).unwrap();
        assert_eq!(g.settle(attempt, t, || true), Verdict::Verified);
        assert_eq!(fail(&mut g, "alice", A, t), Ok(Duration::from_millis(100)));
    }

    #[test]
    fn parallel_attempts_check_at_most_the_limit_of_proofs() {
        let mut g = guard();
        let t = Instant::now();
        // Thirty connections all get a challenge before any proof arrives.
        let attempts: Vec<Attempt> = (0..30).map(|_| g.begin("alice", A, t).unwrap()).collect();
        let checked = Cell::new(0);
        let verdicts: Vec<Verdict> = attempts
            .into_iter()
            .map(|a| {
                g.settle(a, t, || {
                    checked.set(checked.get() + 1);
                    false
                })
            })
            .collect();
        assert_eq!(checked.get(), 3, "{verdicts:?}");
        let locked = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Locked(_)))
            .count();
        assert_eq!(locked, 27);

        // The same across names from one address: at most the address limit.
        let mut g = guard();
        let attempts: Vec<Attempt> = (0..30)
            .map(|i| g.begin(&format!("user{i}"), B, t).unwrap())
            .collect();
        checked.set(0);
        for a in attempts {
            g.settle(a, t, || {
                checked.set(checked.get() + 1);
                false
            });
        }
        assert_eq!(checked.get(), 10);
    }

    #[test]
    fn a_flood_of_other_records_keeps_the_targets_lockout() {
        let mut g = guard();
        let t = Instant::now();
        for _ in 0..3 {
            fail(&mut g, "alice", A, t).unwrap();
        }
        assert!(g.begin("alice", A, t).is_err());
        // An attacker with many addresses fills both tables and more.
        for i in 0..(MAX_RECORDS as u32 + 1000) {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
            fail(&mut g, "alice", ip, t).unwrap();
        }
        assert!(g.pairs.len() <= MAX_RECORDS);
        assert!(g.addrs.len() <= MAX_RECORDS);
        assert!(
            g.begin("alice", A, t).is_err(),
            "the flood wiped the lockout"
        );
    }

    #[test]
    fn a_full_table_forgets_the_oldest_record() {
        let mut g = guard();
        let t = Instant::now();
        fail(&mut g, "bob", A, t).unwrap();
        fail(&mut g, "bob", A, t).unwrap();
        let ip = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
        for i in 0..MAX_RECORDS as u32 {
            fail(&mut g, "carol", ip(i), t).unwrap();
        }
        assert_eq!(g.pairs.len(), MAX_RECORDS);
        // Bob's record was the oldest: forgotten, so he counts from one.
        assert_eq!(fail(&mut g, "bob", A, t), Ok(Duration::from_millis(100)));
        // The newest records are still there.
        let newest = ip(MAX_RECORDS as u32 - 1);
        assert_eq!(
            fail(&mut g, "carol", newest, t),
            Ok(Duration::from_millis(200))
        );
    }

    #[test]
    fn expired_records_are_forgotten_first() {
        let mut g = guard();
        let t = Instant::now();
        for i in 0..1000u32 {
            fail(&mut g, "x", IpAddr::V4(Ipv4Addr::from(i)), t).unwrap();
        }
        let later = t + Duration::from_secs(61);
        fail(&mut g, "x", A, later).unwrap();
        assert_eq!(g.pairs.len(), 1);
        assert_eq!(g.addrs.len(), 1);
    }

    #[test]
    fn ipv6_failures_count_per_64() {
        let mut g = guard();
        let t = Instant::now();
        let host = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
        // Three addresses of one /64 are one client.
        for i in 1..=3 {
            fail(&mut g, "alice", host(i), t).unwrap();
        }
        assert!(g.begin("alice", host(99), t).is_err());
        let next_net = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert!(g.begin("alice", next_net, t).is_ok());
        // Spraying names from many addresses of one /64 locks the /64.
        for i in 0..7 {
            fail(&mut g, &format!("u{i}"), host(1000 + i), t).unwrap();
        }
        assert!(g.begin("fresh", host(5000), t).is_err());
        assert!(g.begin("fresh", next_net, t).is_ok());
    }
}
