//! Handshake pacing: the server works on at most [`SLOTS`] TLS handshakes
//! at once.
//!
//! Without it, thousands of clients connecting together (or an attacker's
//! flood) have the server answer every ClientHello at once and hold as many
//! half-done handshakes, each with its key shares, transcript and flight in
//! memory. Freed in another order than they were taken, they leave the heap
//! fragmented under the sessions that stay: 8.4 KiB per idle session at
//! N=10,000 instead of 7.9 (`scripts/loadtest.sh --scenarios idle`).
//!
//! A connection whose first bytes have arrived takes a slot; when none is
//! free it waits, its ClientHello left in the kernel's socket buffer, in
//! arrival order. A slot is given back when the handshake ends, when the
//! connection closes, or after [`LEASE`]: a peer that stalls mid-handshake
//! holds a slot that long at most and then goes on without one (the login
//! timeout still ends it), so stalling peers cannot starve the queue, and a
//! link whose round trip is longer than the lease is slowed by nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Handshakes worked on at once: enough to keep a core busy (one takes
/// about 0.3 ms of server CPU), few enough that the flood's half-done
/// handshakes stay a small part of the heap (with 256 slots an idle
/// session cost 8.1 KiB, with 64 and with 16 7.9).
pub const SLOTS: usize = 64;

/// Longest a handshake holds its slot. Even if every handshake stalls,
/// the queue moves at `SLOTS / LEASE` = 640 a second; a staller must open
/// more than that to hold others up, more than it takes to fill the
/// default `--max-conns` (10,000 within the 20 s login timeout: 500 a
/// second) with no pacing at all.
pub const LEASE: Duration = Duration::from_millis(100);

/// Where a connection stands with the pacer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Slot {
    /// Nothing has arrived yet (or the link has no handshake).
    #[default]
    Unasked,
    /// Bytes arrived while every slot was taken: not driven until admitted.
    Waiting,
    /// Its handshake is being worked on.
    Holding,
    /// Its handshake ended, or outlasted its lease: the pacer is done with it.
    Done,
}

/// Finds the slot of a live connection (slab keys are reused, hence the
/// generation).
pub trait SlotTable {
    fn slot(&mut self, key: usize, generation: u64) -> Option<&mut Slot>;
}

/// The slots and the queue for them.
#[derive(Debug, Default)]
pub struct Pacer {
    holding: usize,
    /// Lease ends in admission order (so in time order); entries of
    /// connections that gave their slot back early are skipped.
    leases: VecDeque<(Instant, usize, u64)>,
    /// Connections waiting for a slot, oldest first; entries of closed
    /// connections are skipped, and dropped in bulk by [`Pacer::compact`].
    waiting: VecDeque<(usize, u64)>,
    /// Closed connections whose entries are still in `waiting`.
    stale_waiting: usize,
}

impl Pacer {
    /// Asks for a slot for a connection that has not asked before and
    /// whose first bytes have arrived; returns whether it got one
    /// (otherwise it is queued).
    pub fn ask(&mut self, slot: &mut Slot, key: usize, generation: u64, now: Instant) -> bool {
        debug_assert_eq!(*slot, Slot::Unasked);
        if self.holding < SLOTS && self.waiting.is_empty() {
            self.grant(slot, key, generation, now);
            true
        } else {
            *slot = Slot::Waiting;
            self.waiting.push_back((key, generation));
            false
        }
    }

    fn grant(&mut self, slot: &mut Slot, key: usize, generation: u64, now: Instant) {
        *slot = Slot::Holding;
        self.holding += 1;
        self.leases.push_back((now + LEASE, key, generation));
    }

    /// Gives a connection's slot back (its handshake ended or it closed);
    /// [`Pacer::refill`] then admits the next in line.
    pub fn release(&mut self, slot: &mut Slot) {
        match *slot {
            Slot::Holding => self.holding = self.holding.saturating_sub(1),
            Slot::Waiting => self.stale_waiting += 1,
            Slot::Unasked | Slot::Done => {}
        }
        *slot = Slot::Done;
    }

    /// Ends the leases due at `now` and admits waiting connections into
    /// free slots; each admitted one is pushed to `admitted` to be driven.
    pub fn refill(
        &mut self,
        table: &mut impl SlotTable,
        now: Instant,
        admitted: &mut VecDeque<(usize, u64)>,
    ) {
        while let Some(&(until, key, generation)) = self.leases.front() {
            if until > now {
                break;
            }
            self.leases.pop_front();
            if let Some(slot) = table.slot(key, generation)
                && *slot == Slot::Holding
            {
                self.release(slot);
            }
        }
        while self.holding < SLOTS {
            let Some((key, generation)) = self.waiting.pop_front() else {
                break;
            };
            match table.slot(key, generation) {
                Some(slot) if *slot == Slot::Waiting => {
                    self.grant(slot, key, generation, now);
                    admitted.push_back((key, generation));
                }
                _ => self.stale_waiting = self.stale_waiting.saturating_sub(1),
            }
        }
        self.compact(table);
    }

    /// Drops the entries of connections the pacer is done with once they
    /// are half of either queue, so the waiting queue stays within the
    /// open connections and the leases within twice the slots, however
    /// fast connections come and go.
    fn compact(&mut self, table: &mut impl SlotTable) {
        let mut is = |key, generation, wanted| {
            table
                .slot(key, generation)
                .is_some_and(|slot| *slot == wanted)
        };
        if self.stale_waiting * 2 > self.waiting.len() {
            self.waiting
                .retain(|&(key, generation)| is(key, generation, Slot::Waiting));
            self.stale_waiting = 0;
        }
        if self.leases.len() > 2 * SLOTS {
            self.leases
                .retain(|&(_, key, generation)| is(key, generation, Slot::Holding));
        }
    }

    /// When the next lease ends, if anyone waits for it.
    pub fn next_expiry(&self) -> Option<Instant> {
        if self.waiting.is_empty() {
            return None;
        }
        self.leases.front().map(|&(until, _, _)| until)
    }

    /// Slots taken now.
    #[cfg(test)]
    fn holding(&self) -> usize {
        self.holding
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Connections by key, all of generation 0.
    #[derive(Default)]
    struct Table(HashMap<usize, Slot>);

    impl SlotTable for Table {
        fn slot(&mut self, key: usize, generation: u64) -> Option<&mut Slot> {
            (generation == 0).then_some(())?;
            self.0.get_mut(&key)
        }
    }

    impl Table {
        fn ask(&mut self, pacer: &mut Pacer, key: usize, now: Instant) -> bool {
            let slot = self.0.entry(key).or_default();
            pacer.ask(slot, key, 0, now)
        }
    }

    fn full(pacer: &mut Pacer, table: &mut Table, now: Instant) {
        for key in 0..SLOTS {
            assert!(table.ask(pacer, key, now));
        }
    }

    #[test]
    fn past_the_slots_connections_wait_in_arrival_order() {
        let (mut pacer, mut table, now) = (Pacer::default(), Table::default(), Instant::now());
        full(&mut pacer, &mut table, now);
        assert!(!table.ask(&mut pacer, 1000, now));
        assert!(!table.ask(&mut pacer, 1001, now));
        assert_eq!(table.0[&1000], Slot::Waiting);

        let mut admitted = VecDeque::new();
        for key in [0, 1] {
            let slot = table.0.get_mut(&key).unwrap();
            pacer.release(slot);
        }
        pacer.refill(&mut table, now, &mut admitted);
        assert_eq!(admitted, [(1000, 0), (1001, 0)]);
        assert_eq!(table.0[&1001], Slot::Holding);
        assert_eq!(pacer.holding(), SLOTS);
    }

    #[test]
    fn a_stalled_handshake_holds_its_slot_for_the_lease_only() {
        let (mut pacer, mut table, now) = (Pacer::default(), Table::default(), Instant::now());
        full(&mut pacer, &mut table, now);
        assert!(!table.ask(&mut pacer, 1000, now));
        assert_eq!(pacer.next_expiry(), Some(now + LEASE));

        let mut admitted = VecDeque::new();
        pacer.refill(&mut table, now + LEASE / 2, &mut admitted);
        assert!(admitted.is_empty(), "nobody's lease has ended yet");
        pacer.refill(&mut table, now + LEASE, &mut admitted);
        assert_eq!(admitted, [(1000, 0)]);
        assert_eq!(
            table.0[&0],
            Slot::Done,
            "the staller goes on without a slot"
        );
        assert_eq!(pacer.holding(), 1);
    }

    #[test]
    fn closed_waiters_are_skipped_and_forgotten() {
        let (mut pacer, mut table, now) = (Pacer::default(), Table::default(), Instant::now());
        full(&mut pacer, &mut table, now);
        for key in 1000..1010 {
            assert!(!table.ask(&mut pacer, key, now));
        }
        for key in 1000..1009 {
            let mut slot = table.0.remove(&key).unwrap();
            pacer.release(&mut slot);
        }
        let mut admitted = VecDeque::new();
        pacer.refill(&mut table, now, &mut admitted);
        assert!(admitted.is_empty());
        assert_eq!(pacer.waiting.len(), 1, "compacted to the one still open");

        let slot = table.0.get_mut(&5).unwrap();
        pacer.release(slot);
        pacer.refill(&mut table, now, &mut admitted);
        assert_eq!(admitted, [(1009, 0)]);
    }

    #[test]
    fn leases_given_back_early_do_not_pile_up() {
        let (mut pacer, mut table, now) = (Pacer::default(), Table::default(), Instant::now());
        let mut admitted = VecDeque::new();
        for key in 0..10 * SLOTS {
            assert!(table.ask(&mut pacer, key, now));
            let slot = table.0.get_mut(&key).unwrap();
            pacer.release(slot);
            pacer.refill(&mut table, now, &mut admitted);
        }
        assert!(pacer.leases.len() <= 2 * SLOTS);
        assert_eq!(pacer.holding(), 0);
        pacer.refill(&mut table, now + LEASE, &mut admitted);
        assert!(pacer.leases.is_empty(), "ended leases are dropped");
    }
}
