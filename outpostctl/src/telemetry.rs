//! `telemetry DEVICE`: the live sample stream (Server-Sent Events on
//! `…/{id}/telemetry/stream`), one line per sample. A dropped connection is
//! resumed with `Last-Event-ID` (no sample lost or repeated) after a backoff,
//! as is one the server ends because it is stopping; `event: end` for a
//! deleted device or a revoked key ends the command with exit 0.

use std::pin::pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::StreamExt;
use serde_json::Value;

use crate::api::{Api, Opened};
use crate::cli::{Format, TelemetryArgs};
use crate::error::{Error, Result, describe};
use crate::show;

/// The server sends a keep-alive comment every 15 s; three missed ones mean
/// the connection is dead even if TCP has not noticed.
const IDLE: Duration = Duration::from_secs(45);
/// `end` reasons after which the stream is resumed rather than finished.
const TRANSIENT_ENDS: &[&str] = &["server_stopping", "store_unavailable"];
/// A connection that lived this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);

pub async fn run(api: &Api, args: TelemetryArgs, format: Format) -> Result<()> {
    let segments = [args.device.as_str(), "telemetry", "stream"];
    // Start from the newest stored sample, by number: a connection that
    // drops before the first event then resumes from there too, and
    // nothing committed in between is missed.
    let mut last_seq = match args.after_seq {
        Some(seq) => Some(seq),
        None => {
            let device = api.get(&[args.device.as_str()], &[]).await?;
            Some(device["latest_telemetry"]["seq"].as_u64().unwrap_or(0))
        }
    };
    let mut printer = Printer::new(format);
    let mut backoff = Backoff::default();
    let mut connected_once = false;
    loop {
        let (why, retry_after) = match api.open_stream(&segments, last_seq).await {
            Err(e @ Error::Connection(_)) if connected_once => (e.to_string(), None),
            Err(e) => return Err(e),
            Ok(Opened::Refused { error, retry_after }) => match &error {
                // Rate limited or too many watchers: come back later.
                Error::Server {
                    status: 429 | 503, ..
                } => (error.to_string(), retry_after),
                // A proxy or a restarting control plane, after it worked.
                Error::Server { status: 500.., .. } if connected_once => {
                    (error.to_string(), retry_after)
                }
                _ => return Err(error),
            },
            Ok(Opened::Stream(resp)) => {
                if connected_once {
                    eprintln!("outpostctl: reconnected");
                }
                connected_once = true;
                let opened = Instant::now();
                let outcome = consume(resp, &mut last_seq, &mut printer, &mut backoff).await?;
                if opened.elapsed() >= STABLE {
                    backoff.reset();
                }
                match outcome {
                    Outcome::End(reason) => {
                        eprintln!("outpostctl: stream ended: {}", show::safe(&reason));
                        return Ok(());
                    }
                    Outcome::Dropped(why) => (why, None),
                }
            }
        };
        let delay = retry_after.unwrap_or_else(|| backoff.next());
        eprintln!(
            "outpostctl: {}; reconnecting in {:.1}s",
            show::safe(&why),
            delay.as_secs_f64()
        );
        tokio::time::sleep(delay).await;
    }
}

enum Outcome {
    /// `event: end` with its reason.
    End(String),
    /// The connection broke or closed without `end`.
    Dropped(String),
}

async fn consume(
    resp: reqwest::Response,
    last_seq: &mut Option<u64>,
    printer: &mut Printer,
    backoff: &mut Backoff,
) -> Result<Outcome> {
    // Bytes (keep-alive comments included) must keep coming; the SSE parser
    // below swallows comments, so the idle check sits under it.
    let guarded = futures_util::stream::unfold(resp.bytes_stream(), |mut s| async move {
        match tokio::time::timeout(IDLE, s.next()).await {
            Ok(Some(Ok(b))) => Some((Ok(b), s)),
            Ok(Some(Err(e))) => Some((Err(describe(&e)), s)),
            Ok(None) => None,
            Err(_) => Some((
                Err(format!(
                    "nothing from the server for {}s, not even a keep-alive",
                    IDLE.as_secs()
                )),
                s,
            )),
        }
    });
    let mut events = pin!(guarded.eventsource());
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(EventStreamError::Transport(why)) => return Ok(Outcome::Dropped(why)),
            Err(e) => return Err(Error::Protocol(format!("malformed event stream: {e}"))),
        };
        if let Some(retry) = ev.retry {
            backoff.base(retry);
        }
        match ev.event.as_str() {
            "sample" => {
                let sample: Value = serde_json::from_str(&ev.data).map_err(|e| {
                    Error::Protocol(format!("a sample that is not JSON ({e}): {}", ev.data))
                })?;
                let seq = ev.id.parse::<u64>().ok().or_else(|| sample["seq"].as_u64());
                if let (Some(s), Some(last)) = (seq, *last_seq)
                    && s <= last
                {
                    continue; // already printed (a replay overlapping)
                }
                printer.sample(&sample)?;
                if seq.is_some() {
                    *last_seq = seq;
                }
            }
            "end" => {
                let reason = serde_json::from_str::<Value>(&ev.data)
                    .ok()
                    .and_then(|v| v["reason"].as_str().map(str::to_string))
                    .unwrap_or(ev.data);
                // A control plane stopping (a restart, a rolling update) or
                // losing its store for a moment: come back. Anything else
                // (device_deleted, api_key_revoked) is the end.
                if TRANSIENT_ENDS.contains(&reason.as_str()) {
                    return Ok(Outcome::Dropped(format!(
                        "the server ended the stream: {reason}"
                    )));
                }
                return Ok(Outcome::End(reason));
            }
            _ => {} // event types of later versions
        }
    }
    Ok(Outcome::Dropped("the server closed the stream".into()))
}

/// Reconnect delays: from 0.5 s (or the server's `retry:`) doubling to 30 s,
/// ±20 % jitter so a fleet of watchers does not come back at once.
struct Backoff {
    base: Duration,
    next: Duration,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Default for Backoff {
    fn default() -> Self {
        let base = Duration::from_millis(500);
        Backoff { base, next: base }
    }
}

impl Backoff {
    fn base(&mut self, base: Duration) {
        self.base = base.clamp(Duration::from_millis(100), MAX_BACKOFF);
        self.next = self.next.max(self.base);
    }

    fn reset(&mut self) {
        self.next = self.base;
    }

    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(MAX_BACKOFF);
        // Cheap jitter: the clock's sub-second nanoseconds.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|t| t.subsec_nanos())
            .unwrap_or(0);
        let factor = 0.8 + 0.4 * (nanos % 1000) as f64 / 1000.0;
        d.mul_f64(factor)
    }
}

/// One line per sample; in table mode with network rates from the previous
/// sample.
struct Printer {
    format: Format,
    header: bool,
    previous: Option<Value>,
}

impl Printer {
    fn new(format: Format) -> Self {
        Printer {
            format,
            header: false,
            previous: None,
        }
    }

    fn sample(&mut self, s: &Value) -> Result<()> {
        if self.format == Format::Json {
            return show::json_line(s);
        }
        if !self.header {
            show::line(&row([
                "SEQ", "TIME", "CPU%", "MEM%", "DISK%", "LOAD1", "TEMP", "GPU%", "RX/s", "TX/s",
            ]))?;
            self.header = true;
        }
        let line = sample_row(s, self.previous.as_ref());
        self.previous = Some(s.clone());
        show::line(&line)
    }
}

fn row<S: AsRef<str>>(c: [S; 10]) -> String {
    let c = c.each_ref().map(|s| s.as_ref());
    format!(
        "{:>8}  {:<24}  {:>5}  {:>5}  {:>5}  {:>5}  {:>5}  {:>5}  {:>10}  {:>10}",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]
    )
}

fn sample_row(s: &Value, previous: Option<&Value>) -> String {
    let max_of = |list: &Value, field: &str| {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x[field].as_f64())
            .reduce(f64::max)
    };
    let rate = |field: &str| -> String {
        let Some(p) = previous else { return "-".into() };
        let (Some(t0), Some(t1)) = (show::time(&p["timestamp"]), show::time(&s["timestamp"]))
        else {
            return "-".into();
        };
        let dt = t1
            .duration_since(t0)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        match (p[field].as_u64(), s[field].as_u64()) {
            // A counter that went down: the box rebooted.
            (Some(a), Some(b)) if b >= a && dt > 0.0 => show::bytes(((b - a) as f64 / dt) as u64),
            _ => "-".into(),
        }
    };
    row([
        show::text(&s["seq"]),
        show::text(&s["timestamp"]),
        show::pct(s["cpu_percent"].as_f64()),
        show::pct(show::percent(
            &s["memory_used_bytes"],
            &s["memory_total_bytes"],
        )),
        show::pct(show::percent(&s["disk_used_bytes"], &s["disk_total_bytes"])),
        s["load_average"]["1m"]
            .as_f64()
            .map(|l| format!("{l:.2}"))
            .unwrap_or_else(|| "-".into()),
        max_of(&s["temperatures"], "celsius")
            .map(|t| format!("{t:.0}C"))
            .unwrap_or_else(|| "-".into()),
        show::pct(max_of(&s["gpus"], "utilization_percent")),
        rate("network_rx_bytes"),
        rate("network_tx_bytes"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_show_percentages_and_rates() {
        let a = json!({"seq": 1, "timestamp": "2026-01-01T00:00:00.000Z", "network_rx_bytes": 1000,
            "network_tx_bytes": 0});
        let b = json!({"seq": 2, "timestamp": "2026-01-01T00:00:02.000Z", "cpu_percent": 12.5,
            "memory_used_bytes": 1, "memory_total_bytes": 4, "disk_used_bytes": 0, "disk_total_bytes": 0,
            "load_average": {"1m": 0.5, "5m": 0.1, "15m": 0.0},
            "temperatures": [{"sensor": "a", "celsius": 40.0}, {"sensor": "b", "celsius": 55.2}],
            "gpus": [], "network_rx_bytes": 5096, "network_tx_bytes": 0});
        let cells: Vec<String> = sample_row(&b, Some(&a))
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert_eq!(
            cells,
            [
                "2",
                "2026-01-01T00:00:02.000Z",
                "12.5",
                "25.0",
                "-",
                "0.50",
                "55C",
                "-",
                "2.0",
                "KiB",
                "0",
                "B"
            ]
        );
        assert!(sample_row(&a, None).ends_with("-           -"));
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(first >= Duration::from_millis(400) && first <= Duration::from_millis(600));
        for _ in 0..20 {
            assert!(b.next() <= MAX_BACKOFF.mul_f64(1.2));
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(600));
        b.base(Duration::from_secs(3));
        b.reset();
        assert!(b.next() >= Duration::from_millis(2400));
    }
}
