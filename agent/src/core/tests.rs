//! The core's rules on simulated time: every instant is `t0` plus an
//! offset, nothing sleeps, nothing touches a socket or a file.

use std::time::Duration;

use outpost_proto::v1::{ConfigUpdate, LogBatch, Sample, Settings, SpoolReport, TelemetryBatch};
use tokio::time::Instant;

use super::*;

const SEC: Duration = Duration::from_secs(1);
const DAY_MS: i64 = 86_400_000;

/// Delivery in memory: records spooled as seqs, a window of batches.
#[derive(Debug, Default)]
struct Mem {
    next_seq: u64,
    /// Spooled and not acked, oldest first.
    pending: Vec<u64>,
    sent_upto: u64,
    /// Last seq of each batch in flight.
    in_flight: Vec<u64>,
    window: usize,
    dropped: u64,
}

impl Mem {
    fn new(window: usize) -> Self {
        Self {
            next_seq: 1,
            window,
            ..Default::default()
        }
    }
    fn push(&mut self) {
        self.pending.push(self.next_seq);
        self.next_seq += 1;
    }
}

impl Delivery for Mem {
    fn on_connected(&mut self, telemetry: u64, _logs: u64, _now: Instant) {
        self.pending.retain(|&s| s > telemetry);
        self.sent_upto = 0;
        self.in_flight.clear();
    }
    fn next_telemetry(&mut self, _now: Instant) -> Option<TelemetryBatch> {
        if self.in_flight.len() >= self.window {
            return None;
        }
        let samples: Vec<Sample> = self
            .pending
            .iter()
            .filter(|&&s| s > self.sent_upto)
            .map(|&seq| Sample {
                seq,
                ..Default::default()
            })
            .collect();
        let last = samples.last()?.seq;
        self.sent_upto = last;
        self.in_flight.push(last);
        Some(TelemetryBatch { samples })
    }
    fn next_logs(&mut self, _now: Instant) -> Option<LogBatch> {
        None
    }
    fn on_telemetry_ack(&mut self, acked: u64, _now: Instant) {
        self.in_flight.retain(|&l| l > acked);
        self.pending.retain(|&s| s > acked);
    }
    fn on_log_ack(&mut self, _acked: u64, _now: Instant) {}
    fn idle(&self) -> bool {
        self.in_flight.is_empty()
    }
    fn loss_report(&self) -> SpoolReport {
        SpoolReport {
            telemetry_dropped: self.dropped,
            ..Default::default()
        }
    }
}

/// A core under test with the simulated clock and the outputs it produced.
struct Sim {
    core: Core<Mem>,
    t0: Instant,
    now: Instant,
    log: Vec<(Duration, Output)>,
}

impl Sim {
    fn new(rules: Rules, interval: Duration) -> Self {
        let t0 = Instant::now();
        Self {
            core: Core::new(
                rules,
                Mem::new(4),
                interval,
                interval,
                Reconnect::with_seed(7),
                0.0,
                t0,
            ),
            t0,
            now: t0,
            log: Vec::new(),
        }
    }

    fn agent() -> Self {
        Self::new(Rules::default(), 10 * SEC)
    }

    /// Collects what the core queued; a sample asked for is spooled at once
    /// (as the driver does).
    fn drain(&mut self) -> Vec<Output> {
        let mut got = Vec::new();
        while let Some(o) = self.core.poll_output() {
            if matches!(o, Output::TakeSample) {
                self.core.delivery_mut().push();
                self.core.handle(Event::Spooled, self.now);
            }
            self.log.push((self.now - self.t0, o.clone()));
            got.push(o);
        }
        got
    }

    fn event(&mut self, e: Event) -> Vec<Output> {
        self.core.handle(e, self.now);
        self.drain()
    }

    /// Runs the timers up to `t0 + at`, wake-up by wake-up, as the driver
    /// would; returns every output with its time.
    fn run_until(&mut self, at: Duration) -> Vec<(Duration, Output)> {
        let end = self.t0 + at;
        let mut got = Vec::new();
        loop {
            self.core.handle_timeout(self.now);
            for o in self.drain() {
                got.push((self.now - self.t0, o));
            }
            match self.core.poll_timeout() {
                Some(t) if t <= end => self.now = t.max(self.now),
                _ => break,
            }
        }
        self.now = end.max(self.now);
        got
    }

    fn at(&self) -> Duration {
        self.now - self.t0
    }

    /// Connects (the core asks at once) with a certificate of `life_days`
    /// obtained now.
    fn connect(&mut self, life_days: i64) -> Vec<Output> {
        self.run_until(self.at());
        let last = |pred: fn(&Output) -> bool| self.log.iter().rposition(|(_, o)| pred(o));
        let asked = last(is_connect);
        let up = last(|o| {
            matches!(
                o,
                Output::Link {
                    state: LinkState::Connected,
                    ..
                }
            )
        });
        assert!(
            asked.is_some() && asked > up,
            "the core has not asked for a connection: {:?}",
            self.log
        );
        let wall_ms = 1_000_000_000_000;
        self.event(Event::Connected(Started {
            wall_ms,
            cert: Some(CertLife {
                start_ms: wall_ms,
                not_after_ms: wall_ms + life_days * DAY_MS,
            }),
            ..Default::default()
        }))
    }

    fn fail(&mut self, failure: Failure) -> Vec<Output> {
        self.event(Event::LinkFailed {
            failure,
            message: "test".into(),
        })
    }
}

fn times_of(outs: &[(Duration, Output)], pred: impl Fn(&Output) -> bool) -> Vec<Duration> {
    outs.iter()
        .filter(|(_, o)| pred(o))
        .map(|(t, _)| *t)
        .collect()
}

fn secs(s: &[u64]) -> Vec<Duration> {
    s.iter().map(|&x| Duration::from_secs(x)).collect()
}

fn is_hb(o: &Output) -> bool {
    matches!(o, Output::Heartbeat)
}
fn is_sample(o: &Output) -> bool {
    matches!(o, Output::TakeSample)
}
fn is_connect(o: &Output) -> bool {
    matches!(o, Output::Connect)
}

#[test]
fn connects_at_once_and_samples_one_interval_in() {
    let mut s = Sim::agent();
    let first = s.run_until(Duration::ZERO);
    assert!(matches!(
        first[0].1,
        Output::Link {
            state: LinkState::Connecting,
            ..
        }
    ));
    assert!(is_connect(&first[1].1));
    let outs = s.run_until(35 * SEC);
    assert_eq!(
        times_of(&outs, is_sample),
        vec![10 * SEC, 20 * SEC, 30 * SEC],
        "samples go on while the connection attempt is pending"
    );
}

#[test]
fn samples_stay_on_their_grid_when_wake_ups_are_late() {
    let mut s = Sim::new(Rules::default(), Duration::from_millis(100));
    s.connect(7);
    let mut at = Vec::new();
    for _ in 0..50 {
        let due = s.core.poll_timeout().unwrap();
        // Every wake-up 3 ms late, as a busy timer wheel delivers them.
        s.now = due + Duration::from_millis(3);
        s.core.handle_timeout(s.now);
        for o in s.drain() {
            if is_sample(&o) {
                at.push(s.now - s.t0);
            }
        }
    }
    let n = at.len();
    assert!(n >= 45, "{at:?}");
    assert_eq!(
        at[n - 1],
        Duration::from_millis(100 * n as u64 + 3),
        "{at:?}"
    );
    // A loop stalled for a second skips what it missed instead of bursting.
    let due = s.core.poll_timeout().unwrap();
    s.now = due + SEC;
    s.core.handle_timeout(s.now);
    let burst = s.drain().iter().filter(|o| is_sample(o)).count();
    assert_eq!(burst, 1);
    let stalled_at = s.at();
    let outs = s.run_until(stalled_at + Duration::from_millis(150));
    assert_eq!(
        times_of(&outs, is_sample),
        vec![stalled_at + Duration::from_millis(100)]
    );
}

#[test]
fn a_heartbeat_rides_with_the_sample_when_both_are_due_together() {
    let mut s = Sim::agent();
    s.run_until(3 * SEC);
    s.connect(7);
    let outs = s.run_until(60 * SEC);
    let samples = times_of(&outs, is_sample);
    let beats = times_of(&outs, is_hb);
    assert_eq!(samples, secs(&[10, 20, 30, 40, 50, 60]));
    // The heartbeat (due at 13 s) goes early with the 10 s sample, and from
    // then on every heartbeat shares the sample's wake-up.
    assert_eq!(beats, samples, "{outs:?}");
    // Each sample is handed out as a batch at once, until the window of
    // four unacked batches is full; an ack opens it again.
    let sends = times_of(&outs, |o| matches!(o, Output::SendTelemetry(_)));
    assert_eq!(sends, samples[..4]);
    let outs = s.event(Event::TelemetryAck(2));
    let resent: Vec<Vec<u64>> = outs
        .iter()
        .filter_map(|o| match o {
            Output::SendTelemetry(b) => Some(b.samples.iter().map(|x| x.seq).collect()),
            _ => None,
        })
        .collect();
    assert_eq!(resent, vec![vec![5, 6]]);
}

#[test]
fn heartbeats_keep_their_own_period_when_samples_are_rarer() {
    let mut s = Sim::new(Rules::default(), 60 * SEC);
    s.connect(7);
    let outs = s.run_until(65 * SEC);
    assert_eq!(times_of(&outs, is_hb), secs(&[10, 20, 30, 40, 50, 60]));
    // The server's settings move both periods.
    s.event(Event::Server(FromServer::Settings(Settings {
        telemetry_interval_secs: 5,
        heartbeat_interval_secs: 30,
    })));
    let outs = s.run_until(100 * SEC);
    assert_eq!(
        times_of(&outs, is_sample),
        secs(&[70, 75, 80, 85, 90, 95, 100])
    );
    assert_eq!(times_of(&outs, is_hb), vec![95 * SEC], "{outs:?}");
}

#[test]
fn config_updates_are_acknowledged_and_zero_restores_the_local_interval() {
    let mut s = Sim::agent();
    let outs = s.connect(7);
    assert!(!outs.iter().any(|o| matches!(o, Output::ConfigApplied(_))));
    let outs = s.event(Event::Server(FromServer::Config(ConfigUpdate {
        version: 4,
        settings: Some(Settings {
            telemetry_interval_secs: 2,
            heartbeat_interval_secs: 0,
        }),
        ..Default::default()
    })));
    assert!(outs.iter().any(|o| matches!(o, Output::ConfigApplied(4))));
    assert_eq!(s.core.interval(), 2 * SEC);
    s.event(Event::Server(FromServer::Settings(Settings::default())));
    assert_eq!(s.core.interval(), 10 * SEC, "0 = the agent's own interval");
    // A local reload changes the interval only while the server sets none.
    s.event(Event::Reloaded { interval: 30 * SEC });
    assert_eq!(s.core.interval(), 30 * SEC);
    s.event(Event::Server(FromServer::Settings(Settings {
        telemetry_interval_secs: 7,
        heartbeat_interval_secs: 0,
    })));
    s.event(Event::Reloaded { interval: 20 * SEC });
    assert_eq!(s.core.interval(), 7 * SEC, "the server's value wins");
}

#[test]
fn rotates_two_thirds_into_the_certificate_life_and_retries_a_failure() {
    let mut s = Sim::agent();
    let outs = s.connect(3);
    let due = outs.iter().find_map(|o| match o {
        Output::NextRotation(d) => *d,
        _ => None,
    });
    assert_eq!(due, Some(1_000_000_000_000 + 2 * DAY_MS), "jitter 0 = 2/3");
    let two_days = Duration::from_millis(2 * DAY_MS as u64);
    let outs = s.run_until(two_days - SEC);
    assert!(!outs.iter().any(|(_, o)| matches!(o, Output::Rotate { .. })));
    let outs = s.run_until(two_days);
    assert_eq!(
        times_of(&outs, |o| matches!(o, Output::Rotate { new_link: false })),
        vec![two_days]
    );
    // Failed: once more 30 s later, not before.
    s.event(Event::Rotated(Err("busy".into())));
    let outs = s.run_until(two_days + 29 * SEC);
    assert!(!outs.iter().any(|(_, o)| matches!(o, Output::Rotate { .. })));
    let outs = s.run_until(two_days + 30 * SEC);
    assert_eq!(
        times_of(&outs, |o| matches!(o, Output::Rotate { .. })),
        vec![two_days + 30 * SEC]
    );
    // Done: the batches in flight are waited for (up to the drain
    // timeout), then the link is dropped and a new one opened at once with
    // the new identity.
    let outs = s.event(Event::Rotated(Ok(())));
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Disconnect)),
        "waits for acks: {outs:?}"
    );
    let outs = s.event(Event::TelemetryAck(u64::MAX));
    let pos = |pred: fn(&Output) -> bool| outs.iter().position(pred);
    let (d, r) = (
        pos(|o| matches!(o, Output::Disconnect)).unwrap(),
        pos(|o| matches!(o, Output::ReloadIdentity)).unwrap(),
    );
    assert!(d < r, "{outs:?}");
    let outs = s.run_until(s.at());
    assert!(outs.iter().any(|(_, o)| is_connect(o)), "{outs:?}");
}

#[test]
fn rotation_jitter_spreads_a_fleet_within_a_tenth_of_the_life() {
    let life = 7 * DAY_MS;
    let mut dues = Vec::new();
    for jitter in [-1.0, -0.5, 0.0, 0.5, 1.0] {
        let mut core = Core::new(
            Rules::default(),
            Mem::new(4),
            10 * SEC,
            10 * SEC,
            Reconnect::with_seed(1),
            jitter,
            Instant::now(),
        );
        let now = Instant::now();
        core.handle_timeout(now);
        core.handle(
            Event::Connected(Started {
                wall_ms: 0,
                cert: Some(CertLife {
                    start_ms: 0,
                    not_after_ms: life,
                }),
                ..Default::default()
            }),
            now,
        );
        while let Some(o) = core.poll_output() {
            if let Output::NextRotation(Some(d)) = o {
                dues.push(d);
            }
        }
    }
    assert_eq!(dues.len(), 5);
    assert!(dues.windows(2).all(|w| w[0] < w[1]), "{dues:?}");
    assert!(dues[4] - dues[0] <= life / 10, "{dues:?}");
    assert_eq!(dues[2], life * 2 / 3);
}

#[test]
fn the_control_plane_can_ask_for_a_rotation_now() {
    let mut s = Sim::agent();
    s.connect(7);
    s.run_until(5 * SEC);
    s.event(Event::Server(FromServer::RotateNow));
    let outs = s.run_until(5 * SEC);
    assert_eq!(
        times_of(&outs, |o| matches!(o, Output::Rotate { new_link: false })),
        vec![5 * SEC]
    );
    // Asked again while that rotation runs: not doubled.
    s.event(Event::Server(FromServer::RotateNow));
    let outs = s.run_until(6 * SEC);
    assert!(!outs.iter().any(|(_, o)| matches!(o, Output::Rotate { .. })));
}

#[test]
fn an_unreadable_certificate_is_retried_on_the_rotation_retry_period() {
    let mut s = Sim::agent();
    s.run_until(Duration::ZERO);
    let outs = s.event(Event::Connected(Started::default()));
    assert!(outs.iter().any(|o| matches!(o, Output::NextRotation(None))));
    let outs = s.run_until(30 * SEC);
    assert_eq!(
        times_of(&outs, |o| matches!(o, Output::Rotate { .. })),
        vec![30 * SEC]
    );
}

#[test]
fn an_expired_certificate_is_rotated_over_a_new_link_then_the_agent_reconnects() {
    let mut s = Sim::agent();
    s.run_until(Duration::ZERO);
    let outs = s.fail(Failure::Expired);
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Rotate { new_link: true })),
        "{outs:?}"
    );
    // While it rotates the core does not reconnect on its own.
    let outs = s.run_until(60 * SEC);
    assert!(!outs.iter().any(|(_, o)| is_connect(o)));
    let outs = s.event(Event::Rotated(Ok(())));
    assert!(outs.iter().any(|o| matches!(o, Output::ReloadIdentity)));
    let outs = s.run_until(s.at());
    assert!(outs.iter().any(|(_, o)| is_connect(o)), "at once: {outs:?}");
}

#[test]
fn a_failed_rotation_of_an_expired_certificate_backs_off() {
    let mut s = Sim::agent();
    s.run_until(Duration::ZERO);
    s.fail(Failure::Expired);
    let outs = s.event(Event::Rotated(Err("refused".into())));
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Link {
            state: LinkState::Disconnected,
            error: Some(_)
        }
    )));
    let outs = s.run_until(s.at() + 3 * SEC);
    let connects = times_of(&outs, is_connect);
    assert_eq!(connects.len(), 1, "{outs:?}");
    assert!(connects[0] >= SEC && connects[0] <= 2 * SEC, "{connects:?}");
}

#[test]
fn expired_past_the_grace_window_ends_the_agent() {
    let mut s = Sim::agent();
    s.run_until(Duration::ZERO);
    let outs = s.fail(Failure::ExpiredBeyondGrace);
    assert!(matches!(
        outs.last(),
        Some(Output::Exit(Exit::CredentialsExpired))
    ));
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Link {
            state: LinkState::Expired,
            ..
        }
    )));
    assert_eq!(s.core.poll_timeout(), None, "done: no more wake-ups");
    assert!(s.run_until(60 * SEC).is_empty());
}

#[test]
fn a_decommissioned_device_wipes_its_credentials_and_ends() {
    let mut s = Sim::agent();
    s.connect(7);
    let outs = s.fail(Failure::Decommissioned);
    let wipe = outs
        .iter()
        .position(|o| matches!(o, Output::WipeCredentials));
    let exit = outs
        .iter()
        .position(|o| matches!(o, Output::Exit(Exit::Decommissioned)));
    assert!(wipe.is_some() && exit.is_some() && wipe < exit, "{outs:?}");
}

#[test]
fn stop_waits_for_outstanding_acks_then_ends() {
    let mut s = Sim::agent();
    s.connect(7);
    s.run_until(20 * SEC);
    assert!(!s.core.delivery().idle(), "two samples in flight");
    let outs = s.event(Event::Stop);
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Exit(_))),
        "{outs:?}"
    );
    // Acks still count while draining.
    let outs = s.event(Event::TelemetryAck(1));
    assert!(!outs.iter().any(|o| matches!(o, Output::Exit(_))));
    s.now += 100 * Duration::from_millis(1);
    let outs = s.event(Event::TelemetryAck(2));
    assert!(
        matches!(outs.last(), Some(Output::Exit(Exit::Stopped))),
        "{outs:?}"
    );
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Link {
            state: LinkState::Stopped,
            ..
        }
    )));
}

#[test]
fn no_sample_is_taken_while_stopping() {
    let mut s = Sim::new(Rules::default(), SEC);
    s.connect(7);
    s.run_until(3 * SEC);
    s.event(Event::Stop);
    let outs = s.run_until(5 * SEC + 900 * Duration::from_millis(1));
    assert!(!outs.iter().any(|(_, o)| is_sample(o)), "{outs:?}");
    assert!(!outs.iter().any(|(_, o)| matches!(o, Output::Exit(_))));
}

#[test]
fn stop_gives_up_on_acks_after_the_drain_timeout() {
    let mut s = Sim::agent();
    s.connect(7);
    s.run_until(10 * SEC);
    s.event(Event::Stop);
    let outs = s.run_until(12 * SEC + 999 * Duration::from_millis(1));
    assert!(!outs.iter().any(|(_, o)| matches!(o, Output::Exit(_))));
    let outs = s.run_until(13 * SEC);
    assert_eq!(
        times_of(&outs, |o| matches!(o, Output::Exit(Exit::Stopped))),
        vec![13 * SEC]
    );
}

#[test]
fn stop_without_a_link_or_anything_in_flight_ends_at_once() {
    let mut s = Sim::agent();
    s.run_until(Duration::ZERO);
    let outs = s.event(Event::Stop);
    assert!(matches!(outs.last(), Some(Output::Exit(Exit::Stopped))));
    let mut s = Sim::agent();
    s.connect(7);
    let outs = s.event(Event::Stop);
    assert!(matches!(outs.last(), Some(Output::Exit(Exit::Stopped))));
}

#[test]
fn a_link_lost_while_draining_ends_the_stop() {
    let mut s = Sim::agent();
    s.connect(7);
    s.run_until(10 * SEC);
    s.event(Event::Stop);
    let outs = s.fail(Failure::Transient);
    assert!(matches!(outs.last(), Some(Output::Exit(Exit::Stopped))));
}

#[test]
fn reconnects_back_off_and_a_healthy_session_resets_the_backoff() {
    let mut s = Sim::agent();
    let mut connects = vec![Duration::ZERO];
    s.run_until(Duration::ZERO);
    // Five failed attempts in a row: delays grow.
    for _ in 0..5 {
        s.fail(Failure::Transient);
        let outs = s.run_until(s.at() + 200 * SEC);
        let c = times_of(&outs, is_connect);
        assert_eq!(c.len(), 1, "{outs:?}");
        connects.push(c[0]);
        s.now = s.t0 + c[0];
    }
    let delays: Vec<Duration> = connects.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(delays[0] >= SEC && delays[0] <= 2 * SEC, "{delays:?}");
    assert!(delays[4] >= 16 * SEC, "grows: {delays:?}");
    // A session that lives a minute, then fails: back to the first step.
    s.connect(7);
    s.run_until(s.at() + 61 * SEC);
    let lost_at = s.at();
    s.fail(Failure::Transient);
    let outs = s.run_until(lost_at + 200 * SEC);
    let c = times_of(&outs, is_connect);
    assert!(
        c[0] - lost_at >= SEC && c[0] - lost_at <= 2 * SEC,
        "reset: {c:?} after {lost_at:?}"
    );
    // A short session does not reset it.
    s.now = s.t0 + c[0];
    s.connect(7);
    s.run_until(s.at() + 5 * SEC);
    let lost_at = s.at();
    s.fail(Failure::Transient);
    let outs = s.run_until(lost_at + 200 * SEC);
    let c = times_of(&outs, is_connect);
    assert!(
        c[0] - lost_at >= 2 * SEC,
        "kept growing: {c:?} after {lost_at:?}"
    );
}

#[test]
fn after_a_healthy_session_the_first_attempts_stay_short() {
    let mut s = Sim::agent();
    s.connect(7);
    s.run_until(61 * SEC);
    // The control plane restarts: refused a few times in a row.
    s.fail(Failure::Transient);
    let mut last = s.at();
    let mut gaps = Vec::new();
    for _ in 0..crate::backoff::QUICK_RETRIES {
        let outs = s.run_until(last + 200 * SEC);
        let c = times_of(&outs, is_connect);
        assert_eq!(c.len(), 1, "{outs:?}");
        gaps.push(c[0] - last);
        s.now = s.t0 + c[0];
        last = s.at();
        s.fail(Failure::Transient);
    }
    assert!(
        gaps.iter()
            .all(|g| *g >= SEC && *g <= crate::backoff::QUICK_MAX),
        "{gaps:?}"
    );
    // Then the schedule backs off again.
    let mut more = Vec::new();
    for _ in 0..6 {
        let outs = s.run_until(last + 200 * SEC);
        let c = times_of(&outs, is_connect);
        more.push(c[0] - last);
        s.now = s.t0 + c[0];
        last = s.at();
        s.fail(Failure::Transient);
    }
    assert!(more[5] > crate::backoff::QUICK_MAX, "{more:?}");
}

#[test]
fn without_reconnect_a_lost_link_ends_the_core() {
    let rules = Rules {
        reconnect: false,
        ..Rules::default()
    };
    let mut s = Sim::new(rules, SEC);
    s.connect(7);
    let outs = s.fail(Failure::Transient);
    assert!(matches!(outs.last(), Some(Output::Exit(Exit::LinkLost))));
}

#[test]
fn everything_unacked_is_sent_again_on_the_next_link() {
    let mut s = Sim::agent();
    s.connect(7);
    s.run_until(30 * SEC);
    s.event(Event::TelemetryAck(1));
    s.fail(Failure::Transient);
    // Two samples spooled while down are not handed out.
    let outs = s.run_until(31 * SEC);
    assert!(
        !outs
            .iter()
            .any(|(_, o)| matches!(o, Output::SendTelemetry(_)))
    );
    s.run_until(60 * SEC);
    let outs = s.event(Event::Connected(Started {
        last_telemetry_seq: 1,
        cert: None,
        ..Default::default()
    }));
    let sent: Vec<u64> = outs
        .iter()
        .filter_map(|o| match o {
            Output::SendTelemetry(b) => Some(b.samples.iter().map(|x| x.seq)),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(sent, vec![2, 3, 4, 5, 6]);
}

#[test]
fn loss_reports_go_at_each_session_start_and_when_totals_grow() {
    let mut s = Sim::agent();
    let outs = s.connect(7);
    assert_eq!(
        outs.iter()
            .filter(|o| matches!(o, Output::LossReport(_)))
            .count(),
        1
    );
    let outs = s.run_until(10 * SEC);
    assert!(!outs.iter().any(|(_, o)| matches!(o, Output::LossReport(_))));
    s.core.delivery_mut().dropped = 3;
    let outs = s.run_until(20 * SEC);
    let reports: Vec<u64> = outs
        .iter()
        .filter_map(|(_, o)| match o {
            Output::LossReport(r) => Some(r.telemetry_dropped),
            _ => None,
        })
        .collect();
    assert_eq!(reports, vec![3]);
}

#[test]
fn status_changes_settle_into_one_write() {
    let mut s = Sim::agent();
    s.connect(7);
    let outs = s.run_until(10 * SEC);
    assert!(!outs.iter().any(|(_, o)| matches!(o, Output::WriteStatus)));
    // The sample at 10 s and its ack 5 ms later: one write, 500 ms after
    // the first change.
    s.now += Duration::from_millis(5);
    s.event(Event::TelemetryAck(1));
    let outs = s.run_until(11 * SEC);
    assert_eq!(
        times_of(&outs, |o| matches!(o, Output::WriteStatus)),
        vec![10 * SEC + Duration::from_millis(500)]
    );
    // A link change is written at once and resets the settle timer.
    s.fail(Failure::Transient);
    assert!(
        s.log
            .iter()
            .any(|(t, o)| *t == 11 * SEC && matches!(o, Output::Link { .. }))
    );
}

#[test]
fn status_writes_are_at_most_one_a_second() {
    let rules = Rules::default();
    let mut s = Sim::new(rules, Duration::from_millis(100));
    s.connect(7);
    let outs = s.run_until(5 * SEC);
    let writes = times_of(&outs, |o| matches!(o, Output::WriteStatus));
    assert!(writes.len() <= 5 && writes.len() >= 4, "{writes:?}");
    assert!(writes.windows(2).all(|w| w[1] - w[0] >= SEC), "{writes:?}");
}

#[test]
fn an_idle_disconnected_core_wakes_only_for_samples_and_the_retry() {
    let mut s = Sim::new(Rules::default(), 60 * SEC);
    s.run_until(Duration::ZERO);
    s.fail(Failure::Transient);
    // Fail every attempt: the wake-ups are samples and reconnect attempts.
    let mut wakes = 0;
    while s.at() < 600 * SEC {
        let Some(t) = s.core.poll_timeout() else {
            break;
        };
        s.now = t;
        s.core.handle_timeout(t);
        wakes += 1;
        for o in s.drain() {
            if is_connect(&o) {
                s.fail(Failure::Transient);
            }
        }
    }
    // 10 samples, about 12 attempts (the backoff grows to 60 s), and the
    // status writes of the samples: well under a hundred wake-ups.
    assert!(wakes < 50, "{wakes} wake-ups in 10 minutes");
}

fn desired(names: &[&str]) -> DesiredArtifacts {
    DesiredArtifacts {
        artifacts: names
            .iter()
            .map(|n| outpost_proto::v1::DesiredArtifact {
                name: n.to_string(),
                version: "1.0".into(),
                ..Default::default()
            })
            .collect(),
    }
}

fn artifact_report(name: &str, state: &str) -> ArtifactReport {
    ArtifactReport {
        name: name.into(),
        version: "1.0".into(),
        state: state.into(),
        ..Default::default()
    }
}

fn sent_artifacts(outs: &[Output]) -> Vec<(String, String)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::SendArtifact(r) => Some((r.name.clone(), r.state.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn artifact_reports_go_out_while_connected_and_the_latest_is_resent_on_reconnect() {
    let mut s = Sim::agent();
    // Before any link: kept, not sent.
    let outs = s.event(Event::ArtifactReport(artifact_report("det", "failed")));
    assert!(sent_artifacts(&outs).is_empty());
    let outs = s.connect(30);
    assert_eq!(sent_artifacts(&outs), [("det".into(), "failed".into())]);
    let outs = s.event(Event::Server(FromServer::Desired(desired(&["det", "cam"]))));
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Desired(d) if d.artifacts.len() == 2))
    );
    for (name, state) in [
        ("det", "downloading"),
        ("det", "succeeded"),
        ("cam", "installing"),
    ] {
        let outs = s.event(Event::ArtifactReport(artifact_report(name, state)));
        assert_eq!(sent_artifacts(&outs), [(name.into(), state.into())]);
    }
    s.fail(Failure::Transient);
    let outs = s.event(Event::ArtifactReport(artifact_report("cam", "verifying")));
    assert!(sent_artifacts(&outs).is_empty(), "no link: kept for later");
    s.now += 120 * SEC;
    let outs = s.connect(30);
    assert_eq!(
        sent_artifacts(&outs),
        [
            ("cam".into(), "verifying".into()),
            ("det".into(), "succeeded".into())
        ],
        "the latest of each, once"
    );
    // No longer desired: not resent.
    s.event(Event::Server(FromServer::Desired(desired(&["cam"]))));
    s.fail(Failure::Transient);
    s.now += 240 * SEC;
    let outs = s.connect(30);
    assert_eq!(sent_artifacts(&outs), [("cam".into(), "verifying".into())]);
    // A session start's desired set reaches the worker before the resend.
    s.fail(Failure::Transient);
    s.now += 480 * SEC;
    s.run_until(s.at());
    let outs = s.event(Event::Connected(Started {
        desired: Some(desired(&[])),
        ..Default::default()
    }));
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Desired(d) if d.artifacts.is_empty()))
    );
    assert!(
        sent_artifacts(&outs).is_empty(),
        "nothing desired, nothing resent"
    );
}

/// The driver's side of the session queue in the test below: reports that
/// find room are queued, the others are handed back as the driver does.
fn feed(
    s: &mut Sim,
    outs: Vec<Output>,
    queue: &mut std::collections::VecDeque<(String, String)>,
    room: usize,
) {
    let mut work: std::collections::VecDeque<Output> = outs.into();
    while let Some(o) = work.pop_front() {
        assert!(
            !matches!(o, Output::Disconnect),
            "a burst of reports never drops the link"
        );
        if let Output::SendArtifact(r) = o {
            if queue.len() < room {
                queue.push_back((r.name, r.state));
            } else {
                work.extend(s.event(Event::ArtifactDeferred(r.name)));
            }
        }
    }
}

#[test]
fn a_burst_of_artifact_reports_waits_for_room_in_the_session_queue() {
    let mut s = Sim::agent();
    let names: Vec<String> = (0..150).map(|i| format!("a{i:03}")).collect();
    for n in &names {
        s.event(Event::ArtifactReport(artifact_report(n, "failed")));
    }
    // Room for 20 reports; the control plane reads 10 every 250 ms.
    let mut queue = std::collections::VecDeque::new();
    let mut sent: Vec<(String, String)> = Vec::new();
    let outs = s.connect(30);
    feed(&mut s, outs, &mut queue, 20);
    assert_eq!(queue.len(), 20);
    // Newer reports meanwhile: one for a name still waiting (its latest
    // goes, once), one for a new name (behind those waiting).
    let outs = s.event(Event::ArtifactReport(artifact_report(
        "a149",
        "rolled_back",
    )));
    assert!(
        sent_artifacts(&outs).is_empty(),
        "not ahead of those waiting"
    );
    let outs = s.event(Event::ArtifactReport(artifact_report("new", "succeeded")));
    assert!(sent_artifacts(&outs).is_empty());
    let start = s.at();
    while sent.len() < names.len() + 1 {
        assert!(s.at() - start < 60 * SEC, "stuck: {} sent", sent.len());
        for _ in 0..10 {
            if let Some(r) = queue.pop_front() {
                sent.push(r);
            }
        }
        let outs: Vec<Output> = s
            .run_until(s.at() + ARTIFACT_RETRY)
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        feed(&mut s, outs, &mut queue, 20);
    }
    assert!(queue.is_empty());
    // Each name once, in order, with its latest state.
    let mut want: Vec<(String, String)> = names
        .iter()
        .map(|n| (n.clone(), "failed".to_string()))
        .collect();
    want[149].1 = "rolled_back".into();
    want.push(("new".into(), "succeeded".into()));
    assert_eq!(sent, want);
    // Nothing waits any more: the core wakes for its own timers only.
    let outs = s.run_until(s.at() + 10 * SEC);
    assert!(
        outs.iter()
            .all(|(_, o)| !matches!(o, Output::SendArtifact(_)))
    );
}
