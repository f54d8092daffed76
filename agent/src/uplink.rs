//! Telemetry delivery without I/O: sequence numbering, the unacked backlog,
//! batching and the in-flight window. The connection code feeds it events
//! (sample taken, connected, ack received) and sends what it hands out;
//! tests drive it directly with simulated faults.
//!
//! Invariants:
//! - seqs are assigned once, strictly increasing, never reused;
//! - a sample leaves the backlog only when an ack covers it;
//! - after a reconnect everything unacked is sent again, oldest first;
//! - the backlog is bounded: when full, the oldest sample is dropped and
//!   counted (the disk spool replaces this in-memory bound).

use std::collections::VecDeque;

use outpost_proto::v1::{Sample, TelemetryBatch};

#[derive(Debug, Clone)]
pub struct OutboxLimits {
    /// Samples kept while unacknowledged.
    pub capacity: usize,
    /// Samples per batch at most.
    pub max_batch: usize,
    /// Batches sent and not yet acked at most.
    pub max_in_flight: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            capacity: 8640, // a day at the default 10 s interval
            max_batch: 256,
            max_in_flight: 4,
        }
    }
}

#[derive(Debug)]
pub struct Outbox {
    limits: OutboxLimits,
    next_seq: u64,
    /// Unacked samples in seq order (sent or not).
    backlog: VecDeque<Sample>,
    /// Highest seq handed out on the current connection.
    sent_upto: u64,
    /// Last seq of each batch in flight, oldest first.
    in_flight: VecDeque<u64>,
    dropped: u64,
}

impl Outbox {
    pub fn new(next_seq: u64, limits: OutboxLimits) -> Self {
        Self {
            limits,
            next_seq: next_seq.max(1),
            backlog: VecDeque::new(),
            sent_upto: 0,
            in_flight: VecDeque::new(),
            dropped: 0,
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
    pub fn pending(&self) -> usize {
        self.backlog.len()
    }
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Numbers `sample` and queues it. Returns its seq.
    pub fn push(&mut self, mut sample: Sample) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        sample.seq = seq;
        if self.backlog.len() >= self.limits.capacity {
            self.backlog.pop_front();
            self.dropped += 1;
        }
        self.backlog.push_back(sample);
        seq
    }

    /// A new connection: nothing is in flight on it; unacked samples go again.
    /// `server_last_seq` is the highest seq the store already holds: the
    /// counter continues after it so a restored or stale counter never
    /// produces seqs the store would discard as duplicates.
    pub fn on_connected(&mut self, server_last_seq: u64) {
        self.sent_upto = 0;
        self.in_flight.clear();
        if self.next_seq <= server_last_seq {
            self.next_seq = server_last_seq + 1;
        }
    }

    /// The next batch to send, if the window allows and there is anything.
    pub fn next_batch(&mut self) -> Option<TelemetryBatch> {
        if self.in_flight.len() >= self.limits.max_in_flight {
            return None;
        }
        let samples: Vec<Sample> = self
            .backlog
            .iter()
            .filter(|s| s.seq > self.sent_upto)
            .take(self.limits.max_batch)
            .cloned()
            .collect();
        let last = samples.last()?.seq;
        self.sent_upto = last;
        self.in_flight.push_back(last);
        Some(TelemetryBatch { samples })
    }

    /// The store holds every sample up to `acked_seq`.
    pub fn on_ack(&mut self, acked_seq: u64) {
        while self.backlog.front().is_some_and(|s| s.seq <= acked_seq) {
            self.backlog.pop_front();
        }
        while self
            .in_flight
            .front()
            .is_some_and(|&last| last <= acked_seq)
        {
            self.in_flight.pop_front();
        }
    }

    /// Whether everything handed out has been acked.
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample::default()
    }

    fn seqs(b: &TelemetryBatch) -> Vec<u64> {
        b.samples.iter().map(|s| s.seq).collect()
    }

    fn limits(capacity: usize, max_batch: usize, max_in_flight: usize) -> OutboxLimits {
        OutboxLimits {
            capacity,
            max_batch,
            max_in_flight,
        }
    }

    #[test]
    fn numbers_samples_from_the_persisted_counter() {
        let mut o = Outbox::new(41, OutboxLimits::default());
        assert_eq!(o.push(sample()), 41);
        assert_eq!(o.push(sample()), 42);
        assert_eq!(o.next_seq(), 43);
    }

    #[test]
    fn acked_samples_leave_and_unacked_are_resent_after_reconnect() {
        let mut o = Outbox::new(1, limits(100, 2, 8));
        for _ in 0..5 {
            o.push(sample());
        }
        o.on_connected(0);
        let b1 = o.next_batch().unwrap();
        let b2 = o.next_batch().unwrap();
        let b3 = o.next_batch().unwrap();
        assert_eq!(
            (seqs(&b1), seqs(&b2), seqs(&b3)),
            (vec![1, 2], vec![3, 4], vec![5])
        );
        assert!(o.next_batch().is_none(), "nothing left to send");
        o.on_ack(2);
        assert_eq!(o.pending(), 3);
        // The link drops before 3..5 are acked: they go again, in order.
        o.on_connected(2);
        assert_eq!(seqs(&o.next_batch().unwrap()), vec![3, 4]);
        assert_eq!(seqs(&o.next_batch().unwrap()), vec![5]);
        o.on_ack(5);
        assert_eq!(o.pending(), 0);
        assert!(o.idle());
    }

    #[test]
    fn window_limits_batches_in_flight_and_backlog_batches_bigger() {
        let mut o = Outbox::new(1, limits(1000, 50, 1));
        o.on_connected(0);
        o.push(sample());
        let first = o.next_batch().unwrap();
        assert_eq!(seqs(&first), vec![1]);
        // A slow store: samples pile up while the first batch is unacked.
        for _ in 0..30 {
            o.push(sample());
        }
        assert!(o.next_batch().is_none(), "window full");
        o.on_ack(1);
        let big = o.next_batch().unwrap();
        assert_eq!(big.samples.len(), 30, "the backlog goes out as one batch");
    }

    #[test]
    fn full_backlog_drops_oldest_and_counts() {
        let mut o = Outbox::new(1, limits(3, 10, 4));
        for _ in 0..5 {
            o.push(sample());
        }
        assert_eq!(o.dropped(), 2);
        o.on_connected(0);
        assert_eq!(seqs(&o.next_batch().unwrap()), vec![3, 4, 5]);
    }

    #[test]
    fn stale_counter_continues_after_the_store() {
        let mut o = Outbox::new(5, OutboxLimits::default());
        o.on_connected(100);
        assert_eq!(o.push(sample()), 101);
        // A counter ahead of the store is kept.
        let mut o = Outbox::new(500, OutboxLimits::default());
        o.on_connected(100);
        assert_eq!(o.push(sample()), 500);
    }

    #[test]
    fn duplicate_and_stale_acks_are_harmless() {
        let mut o = Outbox::new(1, limits(100, 1, 8));
        for _ in 0..3 {
            o.push(sample());
        }
        o.on_connected(0);
        while o.next_batch().is_some() {}
        o.on_ack(2);
        o.on_ack(2);
        o.on_ack(1);
        assert_eq!(o.pending(), 1);
        assert!(!o.idle());
        o.on_ack(3);
        assert!(o.idle());
    }

    /// Model test: a simulated link that drops at random (losing batches in
    /// flight and acks on their way back) while samples keep coming. Within a
    /// connection the server sees seqs ascending; after the link comes back
    /// and drains, every sample has reached the server (duplicates on the
    /// wire are expected: the store absorbs them).
    #[test]
    fn simulated_flaky_link_loses_nothing_and_keeps_order() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        use std::collections::{BTreeSet, VecDeque};

        struct Server {
            stored: BTreeSet<u64>,
            last_on_connection: u64,
        }
        impl Server {
            fn receive(&mut self, b: TelemetryBatch, acks: &mut VecDeque<u64>) {
                for s in &b.samples {
                    assert!(
                        s.seq > self.last_on_connection,
                        "out of order on one connection"
                    );
                    self.last_on_connection = s.seq;
                    self.stored.insert(s.seq);
                }
                acks.push_back(self.last_on_connection);
            }
            fn last_stored(&self) -> u64 {
                self.stored.last().copied().unwrap_or(0)
            }
        }

        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let lim = limits(100_000, rng.random_range(1..8), rng.random_range(1..4));
            let mut o = Outbox::new(1, lim);
            let mut server = Server {
                stored: BTreeSet::new(),
                last_on_connection: 0,
            };
            let mut to_server: VecDeque<TelemetryBatch> = VecDeque::new();
            let mut to_agent: VecDeque<u64> = VecDeque::new();
            let mut connected = false;
            let mut pushed = 0u64;
            for _ in 0..400 {
                match rng.random_range(0..10) {
                    0..=2 => {
                        o.push(sample());
                        pushed += 1;
                    }
                    3 if !connected => {
                        o.on_connected(server.last_stored());
                        server.last_on_connection = 0;
                        connected = true;
                    }
                    4 | 5 if connected => {
                        while let Some(b) = o.next_batch() {
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
                            o.on_ack(a);
                        }
                    }
                    9 => {
                        // The link drops: whatever was on the wire is gone.
                        connected = false;
                        to_server.clear();
                        to_agent.clear();
                    }
                    _ => {}
                }
            }
            // The link comes back and stays up until everything is acked.
            to_server.clear();
            to_agent.clear();
            o.on_connected(server.last_stored());
            server.last_on_connection = 0;
            while o.pending() > 0 {
                while let Some(b) = o.next_batch() {
                    to_server.push_back(b);
                }
                let b = to_server
                    .pop_front()
                    .expect("progress while samples are pending");
                server.receive(b, &mut to_agent);
                o.on_ack(to_agent.pop_front().unwrap());
            }
            let want: BTreeSet<u64> = (1..=pushed).collect();
            assert_eq!(server.stored, want, "seed {seed}: every sample arrived");
            assert_eq!(o.dropped(), 0);
            assert!(o.idle());
        }
    }
}
