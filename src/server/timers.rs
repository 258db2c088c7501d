//! Connection deadlines: a min-heap with lazy cancellation.
//!
//! A connection keeps its own deadline and moves it freely (activity only
//! writes a field). The heap holds at most a few entries per connection;
//! an entry that pops early is pushed again at the connection's current
//! deadline, and one whose connection is gone (slab keys are reused, hence
//! the generation number) is dropped. Expiry costs O(log n); nothing scans
//! all connections.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// One armed deadline: when, which slab key, which generation.
type Entry = Reverse<(Instant, usize, u64)>;

/// Pending deadlines of all connections.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Entry>,
}

impl Timers {
    /// Arms a deadline for connection `key` of generation `generation`.
    pub fn push(&mut self, at: Instant, key: usize, generation: u64) {
        self.heap.push(Reverse((at, key, generation)));
    }

    /// The earliest armed deadline.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns an entry that is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.push(t0 + Duration::from_secs(3), 1, 0);
        timers.push(t0 + Duration::from_secs(1), 2, 0);
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(t0), None);
        let due = t0 + Duration::from_secs(5);
        assert_eq!(timers.pop_due(due).map(|e| e.1), Some(2));
        assert_eq!(timers.pop_due(due).map(|e| e.1), Some(1));
        assert_eq!(timers.next(), None);
    }
}
