//! Brute-force resistance for logins.
//!
//! Failures are counted per (user name, client address) and, more loosely,
//! per client address across all names (password spraying). Each failure is
//! answered after a delay that doubles with the count; past a threshold the
//! pair (or address) is locked out for a while. Keying on the pair means a
//! stranger's failures never lock a user out from their own address, and the
//! delay is a timer on the failing connection only, so nobody else waits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

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

/// Failures seen for one key.
#[derive(Debug, Clone, Copy)]
struct Record {
    count: u32,
    last: Instant,
}

/// Most keys remembered per table; past this, forgotten records are pruned
/// so a spray from many addresses cannot grow memory without bound.
const MAX_RECORDS: usize = 100_000;

/// Counts login failures and decides delays and lockouts.
#[derive(Debug)]
pub struct LoginGuard {
    cfg: GuardConfig,
    pairs: HashMap<(String, IpAddr), Record>,
    addrs: HashMap<IpAddr, Record>,
}

/// Why a login may not proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// Time until the lockout ends.
    pub remaining: Duration,
}

impl LoginGuard {
    /// A guard with no failures recorded.
    pub fn new(cfg: GuardConfig) -> LoginGuard {
        LoginGuard {
            cfg,
            pairs: HashMap::new(),
            addrs: HashMap::new(),
        }
    }

    /// Whether `user` may try to log in from `addr` now.
    pub fn check(&self, user: &str, addr: IpAddr, now: Instant) -> Result<(), Locked> {
        let pair = self.pairs.get(&(user.to_string(), addr));
        let by_addr = self.addrs.get(&addr);
        let locked = |rec: Option<&Record>, limit: u32| {
            rec.filter(|r| r.count >= limit)
                .map(|r| (r.last + self.cfg.lockout).saturating_duration_since(now))
                .filter(|d| !d.is_zero())
        };
        match locked(pair, self.cfg.pair_limit).max(locked(by_addr, self.cfg.addr_limit)) {
            Some(remaining) => Err(Locked { remaining }),
            None => Ok(()),
        }
    }

    /// Records a failure and returns how long to wait before answering it.
    pub fn failed(&mut self, user: &str, addr: IpAddr, now: Instant) -> Duration {
        let lockout = self.cfg.lockout;
        let bump = |rec: &mut Record| {
            if now.saturating_duration_since(rec.last) > lockout {
                rec.count = 0;
            }
            rec.count = rec.count.saturating_add(1);
            rec.last = now;
            rec.count
        };
        prune(&mut self.pairs, now, lockout);
        prune(&mut self.addrs, now, lockout);
        let fresh = Record {
            count: 0,
            last: now,
        };
        let count = bump(self.pairs.entry((user.to_string(), addr)).or_insert(fresh));
        bump(self.addrs.entry(addr).or_insert(fresh));
        let doublings = count.saturating_sub(1).min(16);
        (self.cfg.base_delay * (1u32 << doublings)).min(self.cfg.max_delay)
    }

    /// Forgets the pair's failures after a successful login. The address's
    /// count stays: a success on one name must not reset a spray on others.
    pub fn succeeded(&mut self, user: &str, addr: IpAddr) {
        self.pairs.remove(&(user.to_string(), addr));
    }
}

/// Drops forgotten records once a table is at its limit.
fn prune<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Record>, now: Instant, keep: Duration) {
    if map.len() >= MAX_RECORDS {
        map.retain(|_, r| now.saturating_duration_since(r.last) <= keep);
    }
    if map.len() >= MAX_RECORDS {
        // Still full of live records: forget everything rather than grow.
        map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> LoginGuard {
        LoginGuard::new(GuardConfig {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            pair_limit: 3,
            addr_limit: 10,
            lockout: Duration::from_secs(60),
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn delay_doubles_then_locks_the_pair_only() {
        let mut g = guard();
        let t = Instant::now();
        assert_eq!(g.failed("alice", A, t), Duration::from_millis(100));
        assert_eq!(g.failed("alice", A, t), Duration::from_millis(200));
        assert!(g.check("alice", A, t).is_ok());
        assert_eq!(g.failed("alice", A, t), Duration::from_millis(400));
        assert!(g.check("alice", A, t).is_err());
        // Same name from elsewhere, and another name from here, still work.
        assert!(g.check("alice", B, t).is_ok());
        assert!(g.check("bob", A, t).is_ok());
        // The lockout ends.
        assert!(g.check("alice", A, t + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn spraying_many_names_locks_the_address() {
        let mut g = guard();
        let t = Instant::now();
        for i in 0..10 {
            g.failed(&format!("user{i}"), A, t);
        }
        assert!(g.check("fresh", A, t).is_err());
        assert!(g.check("fresh", B, t).is_ok());
    }

    #[test]
    fn success_clears_the_pair() {
        let mut g = guard();
        let t = Instant::now();
        g.failed("alice", A, t);
        g.failed("alice", A, t);
        g.succeeded("alice", A);
        assert_eq!(g.failed("alice", A, t), Duration::from_millis(100));
    }
}
