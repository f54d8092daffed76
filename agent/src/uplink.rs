//! Delivery over one stream (telemetry or logs) without network I/O:
//! sequence numbering, the in-flight window and acks, over the disk
//! [`Spool`] that holds every record until it is acknowledged. The
//! connection code feeds it events (record taken, connected, ack received)
//! and sends what it hands out; tests drive it directly with simulated faults.
//!
//! Invariants:
//! - seqs are assigned once, strictly increasing, never reused;
//! - a record leaves the spool only when an ack covers it (or the spool's
//!   bound drops it, counted);
//! - after a reconnect everything unacked is sent again, oldest first.

use std::collections::VecDeque;
use std::path::Path;

use crate::spool::{Spool, SpoolError, SpoolOptions};

#[derive(Debug, Clone)]
pub struct OutboxLimits {
    /// Records per batch at most.
    pub max_batch: usize,
    /// Payload bytes per batch at most (below the wire's message limit).
    pub max_batch_bytes: usize,
    /// Batches sent and not yet acked at most.
    pub max_in_flight: usize,
}

impl OutboxLimits {
    pub fn telemetry() -> Self {
        Self {
            max_batch: 256,
            max_batch_bytes: outpost_proto::MAX_MESSAGE_BYTES / 2,
            max_in_flight: 4,
        }
    }
    pub fn logs() -> Self {
        Self {
            max_batch: 512,
            max_batch_bytes: outpost_proto::MAX_MESSAGE_BYTES / 2,
            max_in_flight: 4,
        }
    }
}

/// A batch handed out: (seq, payload) in seq order.
pub use crate::spool::Records;

#[derive(Debug)]
pub struct Outbox {
    limits: OutboxLimits,
    spool: Spool,
    /// Highest seq handed out on the current connection.
    sent_upto: u64,
    /// Last seq of each batch in flight, oldest first.
    in_flight: VecDeque<u64>,
}

impl Outbox {
    pub fn open(
        dir: &Path,
        opts: SpoolOptions,
        seq_floor: u64,
        limits: OutboxLimits,
    ) -> Result<Self, SpoolError> {
        Ok(Self {
            limits,
            spool: Spool::open(dir, opts, seq_floor)?,
            sent_upto: 0,
            in_flight: VecDeque::new(),
        })
    }

    pub fn next_seq(&self) -> u64 {
        self.spool.next_seq()
    }
    /// Records kept and not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.spool.pending()
    }
    pub fn dropped(&self) -> u64 {
        self.spool.ledger().dropped
    }
    pub fn corrupt(&self) -> u64 {
        self.spool.ledger().corrupt
    }
    pub fn acked(&self) -> u64 {
        self.spool.ledger().released
    }

    /// Spools one record; `encode` gets its seq. Returns the seq.
    pub fn push_with(&mut self, encode: impl FnOnce(u64) -> Vec<u8>) -> Result<u64, SpoolError> {
        let seq = self.spool.next_seq();
        self.spool.append(&[encode(seq)])?;
        Ok(seq)
    }

    /// Spools several records at once (one write, one fsync).
    pub fn push_all(
        &mut self,
        encode: impl FnMut(u64) -> Option<Vec<u8>>,
    ) -> Result<u64, SpoolError> {
        let mut encode = encode;
        let mut next = self.spool.next_seq();
        let mut payloads = Vec::new();
        while let Some(p) = encode(next) {
            payloads.push(p);
            next += 1;
        }
        self.spool.append(&payloads)?;
        Ok(payloads.len() as u64)
    }

    /// A new connection: nothing is in flight on it; unacked records go
    /// again. `server_last_seq` is the highest seq the store already holds:
    /// those need not go again, and the counter continues after it so a
    /// restored or stale counter never produces seqs the store would discard.
    pub fn on_connected(&mut self, server_last_seq: u64) -> Result<(), SpoolError> {
        self.sent_upto = 0;
        self.in_flight.clear();
        self.spool.raise_next_seq(server_last_seq + 1);
        self.spool.connected(server_last_seq)?;
        self.spool.release(server_last_seq)
    }

    /// The next batch to send, if the window allows and there is anything.
    pub fn next_batch(&mut self) -> Result<Option<Records>, SpoolError> {
        if self.in_flight.len() >= self.limits.max_in_flight {
            return Ok(None);
        }
        let records = self.spool.read_after(
            self.sent_upto,
            self.limits.max_batch,
            self.limits.max_batch_bytes,
        )?;
        let Some(&(last, _)) = records.last() else {
            return Ok(None);
        };
        self.sent_upto = last;
        self.spool.mark_sent(last);
        self.in_flight.push_back(last);
        Ok(Some(records))
    }

    /// The store holds every record up to `acked_seq`.
    pub fn on_ack(&mut self, acked_seq: u64) -> Result<(), SpoolError> {
        while self
            .in_flight
            .front()
            .is_some_and(|&last| last <= acked_seq)
        {
            self.in_flight.pop_front();
        }
        self.spool.release(acked_seq)
    }

    /// Every record kept with a seq above `seq` (start-up recovery).
    pub fn peek_after(&mut self, seq: u64) -> Records {
        self.spool
            .read_after(seq, usize::MAX, usize::MAX)
            .inspect_err(|e| tracing::error!("cannot read the spool: {e}"))
            .unwrap_or_default()
    }

    /// Whether everything handed out has been acked.
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Forces spooled records to disk if the fsync policy's interval is due.
    pub fn sync_if_due(&mut self) -> Result<(), SpoolError> {
        self.spool.sync_if_due(false)
    }

    /// When [`Outbox::sync_if_due`] will next have a sync to do, if ever.
    pub fn sync_due(&self) -> Option<std::time::Instant> {
        self.spool.sync_due()
    }

    /// Clean stop: flush the spool.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        self.spool.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Fsync;

    /// An outbox in a temp dir; payloads are the seq's bytes.
    fn outbox(dir: &tempfile::TempDir, floor: u64, capacity: u64, lim: OutboxLimits) -> Outbox {
        let opts = SpoolOptions {
            max_bytes: capacity,
            segment_bytes: 4096,
            fsync: Fsync::Never,
        };
        Outbox::open(dir.path(), opts, floor, lim).unwrap()
    }

    fn push(o: &mut Outbox) -> u64 {
        o.push_with(|seq| seq.to_le_bytes().to_vec()).unwrap()
    }

    fn seqs(b: &Records) -> Vec<u64> {
        b.iter().map(|r| r.0).collect()
    }

    fn next(o: &mut Outbox) -> Option<Records> {
        o.next_batch().unwrap()
    }

    fn limits(max_batch: usize, max_in_flight: usize) -> OutboxLimits {
        OutboxLimits {
            max_batch,
            max_batch_bytes: 1 << 20,
            max_in_flight,
        }
    }

    const BIG: u64 = 1 << 30;

    #[test]
    fn numbers_records_from_the_persisted_counter() {
        let d = tempfile::tempdir().unwrap();
        let mut o = outbox(&d, 41, BIG, OutboxLimits::telemetry());
        assert_eq!(push(&mut o), 41);
        assert_eq!(push(&mut o), 42);
        assert_eq!(o.next_seq(), 43);
        drop(o);
        let o = outbox(&d, 1, BIG, OutboxLimits::telemetry());
        assert_eq!(o.next_seq(), 43, "the spool remembers");
        assert_eq!(o.pending(), 2);
    }

    #[test]
    fn acked_records_leave_and_unacked_are_resent_after_reconnect() {
        let d = tempfile::tempdir().unwrap();
        let mut o = outbox(&d, 1, BIG, limits(2, 8));
        for _ in 0..5 {
            push(&mut o);
        }
        o.on_connected(0).unwrap();
        let b1 = next(&mut o).unwrap();
        let b2 = next(&mut o).unwrap();
        let b3 = next(&mut o).unwrap();
        assert_eq!(
            (seqs(&b1), seqs(&b2), seqs(&b3)),
            (vec![1, 2], vec![3, 4], vec![5])
        );
        assert_eq!(b2[0].1, 3u64.to_le_bytes().to_vec());
        assert!(next(&mut o).is_none(), "nothing left to send");
        o.on_ack(2).unwrap();
        assert_eq!(o.pending(), 3);
        // The link drops before 3..5 are acked: they go again, in order.
        o.on_connected(2).unwrap();
        assert_eq!(seqs(&next(&mut o).unwrap()), vec![3, 4]);
        assert_eq!(seqs(&next(&mut o).unwrap()), vec![5]);
        o.on_ack(5).unwrap();
        assert_eq!(o.pending(), 0);
        assert!(o.idle());
    }

    #[test]
    fn window_limits_batches_in_flight_and_backlog_batches_bigger() {
        let d = tempfile::tempdir().unwrap();
        let mut o = outbox(&d, 1, BIG, limits(50, 1));
        o.on_connected(0).unwrap();
        push(&mut o);
        let first = next(&mut o).unwrap();
        assert_eq!(seqs(&first), vec![1]);
        // A slow store: records pile up while the first batch is unacked.
        for _ in 0..30 {
            push(&mut o);
        }
        assert!(next(&mut o).is_none(), "window full");
        o.on_ack(1).unwrap();
        let big = next(&mut o).unwrap();
        assert_eq!(big.len(), 30, "the backlog goes out as one batch");
    }

    #[test]
    fn full_spool_drops_oldest_and_counts() {
        let d = tempfile::tempdir().unwrap();
        // 32-byte records; segments of 4 KiB hold 128; 2 segments fit.
        let mut o = Outbox::open(
            d.path(),
            SpoolOptions {
                max_bytes: 8192,
                segment_bytes: 4096,
                fsync: Fsync::Never,
            },
            1,
            limits(10_000, 4),
        )
        .unwrap();
        for _ in 0..1000 {
            push(&mut o);
        }
        o.on_connected(0).unwrap();
        let mut kept = Vec::new();
        while let Some(b) = next(&mut o) {
            kept.extend(seqs(&b));
        }
        assert_eq!(kept.len() as u64 + o.dropped(), 1000);
        assert_eq!(*kept.last().unwrap(), 1000, "the newest are kept");
        assert!(kept.windows(2).all(|w| w[1] == w[0] + 1));
    }

    /// Records dropped for room while on the wire count as dropped only if
    /// no ack covers them.
    #[test]
    fn records_dropped_in_flight_count_only_when_not_acked() {
        for acked in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let opts = SpoolOptions {
                max_bytes: 8192,
                segment_bytes: 4096,
                fsync: Fsync::Never,
            };
            let mut o = Outbox::open(d.path(), opts, 1, limits(100, 1)).unwrap();
            for _ in 0..50 {
                push(&mut o);
            }
            o.on_connected(0).unwrap();
            let sent = next(&mut o).unwrap();
            assert_eq!(seqs(&sent), (1..=50).collect::<Vec<_>>());
            // The link is slow; the spool overflows and drops the oldest,
            // which are the 50 on the wire.
            for _ in 0..300 {
                push(&mut o);
            }
            let lost_unsent = o.dropped();
            if acked {
                o.on_ack(50).unwrap();
                o.on_connected(50).unwrap();
                assert_eq!(o.dropped(), lost_unsent, "the 50 were stored");
            } else {
                // The connection broke; the store holds only 1..=20.
                o.on_connected(20).unwrap();
                assert_eq!(o.dropped(), lost_unsent + 30);
            }
            let mut kept = Vec::new();
            while let Some(b) = next(&mut o) {
                kept.extend(seqs(&b));
                o.on_ack(*kept.last().unwrap()).unwrap();
            }
            let stored = if acked { 50 } else { 20 };
            assert_eq!(
                stored + kept.len() as u64 + o.dropped(),
                350,
                "acked={acked}"
            );
        }
    }

    #[test]
    fn stale_counter_continues_after_the_store() {
        let d = tempfile::tempdir().unwrap();
        let mut o = outbox(&d, 5, BIG, OutboxLimits::telemetry());
        o.on_connected(100).unwrap();
        assert_eq!(push(&mut o), 101);
        // A counter ahead of the store is kept.
        let d = tempfile::tempdir().unwrap();
        let mut o = outbox(&d, 500, BIG, OutboxLimits::telemetry());
        o.on_connected(100).unwrap();
        assert_eq!(push(&mut o), 500);
    }

    #[test]
    fn duplicate_and_stale_acks_are_harmless() {
        let d = tempfile::tempdir().unwrap();
        let mut o = outbox(&d, 1, BIG, limits(1, 8));
        for _ in 0..3 {
            push(&mut o);
        }
        o.on_connected(0).unwrap();
        while next(&mut o).is_some() {}
        o.on_ack(2).unwrap();
        o.on_ack(2).unwrap();
        o.on_ack(1).unwrap();
        assert_eq!(o.pending(), 1);
        assert!(!o.idle());
        o.on_ack(3).unwrap();
        assert!(o.idle());
    }

    /// Model test: a simulated link that drops at random (losing batches in
    /// flight and acks on their way back) and an agent that crashes at
    /// random (reopening its spool), while records keep coming. Within a
    /// connection the server sees seqs ascending; after the link comes back
    /// and drains, every record has reached the server (duplicates on the
    /// wire are expected: the store absorbs them).
    #[test]
    fn simulated_flaky_link_and_crashes_lose_nothing_and_keep_order() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        use std::collections::{BTreeSet, VecDeque};

        struct Server {
            stored: BTreeSet<u64>,
            last_on_connection: u64,
        }
        impl Server {
            fn receive(&mut self, b: Records, acks: &mut VecDeque<u64>) {
                for (seq, payload) in &b {
                    assert_eq!(payload, &seq.to_le_bytes().to_vec());
                    assert!(
                        *seq > self.last_on_connection,
                        "out of order on one connection"
                    );
                    self.last_on_connection = *seq;
                    self.stored.insert(*seq);
                }
                acks.push_back(self.last_on_connection);
            }
            fn last_stored(&self) -> u64 {
                self.stored.last().copied().unwrap_or(0)
            }
        }

        for seed in 0..150u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let lim = limits(rng.random_range(1..8), rng.random_range(1..4));
            let d = tempfile::tempdir().unwrap();
            let mut o = outbox(&d, 1, BIG, lim.clone());
            let mut server = Server {
                stored: BTreeSet::new(),
                last_on_connection: 0,
            };
            let mut to_server: VecDeque<Records> = VecDeque::new();
            let mut to_agent: VecDeque<u64> = VecDeque::new();
            let mut connected = false;
            let mut pushed = 0u64;
            for _ in 0..300 {
                match rng.random_range(0..11) {
                    0..=2 => {
                        push(&mut o);
                        pushed += 1;
                    }
                    3 if !connected => {
                        o.on_connected(server.last_stored()).unwrap();
                        server.last_on_connection = 0;
                        connected = true;
                    }
                    4 | 5 if connected => {
                        while let Some(b) = next(&mut o) {
                            to_server.push_back(b);
                        }
                    }
                    6 | 7 if connected => {
                        if let Some(b) = to_server.pop_front() {
                            server.receive(b, &mut to_agent);
                        }
                    }
                    8 if connected => {
                        if let Some(a) = to_agent.pop_front() {
                            o.on_ack(a).unwrap();
                        }
                    }
                    9 => {
                        // The link drops: whatever was on the wire is gone.
                        connected = false;
                        to_server.clear();
                        to_agent.clear();
                    }
                    10 => {
                        // The agent crashes and restarts.
                        connected = false;
                        to_server.clear();
                        to_agent.clear();
                        drop(o);
                        o = outbox(&d, 1, BIG, lim.clone());
                    }
                    _ => {}
                }
            }
            // The link comes back and stays up until everything is acked.
            to_server.clear();
            to_agent.clear();
            o.on_connected(server.last_stored()).unwrap();
            server.last_on_connection = 0;
            while o.pending() > 0 {
                while let Some(b) = next(&mut o) {
                    to_server.push_back(b);
                }
                let b = to_server
                    .pop_front()
                    .expect("progress while records are pending");
                server.receive(b, &mut to_agent);
                o.on_ack(to_agent.pop_front().unwrap()).unwrap();
            }
            let want: BTreeSet<u64> = (1..=pushed).collect();
            assert_eq!(server.stored, want, "seed {seed}: every record arrived");
            assert_eq!(o.dropped(), 0);
            assert!(o.idle());
        }
    }
}
