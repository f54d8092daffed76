//! `logs DEVICE [--follow]`.
//!
//! The route pages newest first and shows no per-line sequence number, so
//! `--follow` works on timestamps: every poll asks for the lines at or after
//! (newest line printed − `--lookback`) and prints those it has not printed
//! yet. "Printed" is a count per identical line (timestamp, service,
//! severity, message) inside that window, so a line is never printed twice,
//! and a line stored late (after a poll) is still printed if its timestamp
//! is within the lookback of the newest one.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::api::Api;
use crate::cli::{Format, LogsArgs};
use crate::error::{Error, Result};
use crate::show::{self, text};

/// The server's largest logs page.
const MAX_PAGE: u32 = 1000;

pub async fn run(api: &mut Api, args: LogsArgs, format: Format) -> Result<()> {
    if args.follow && args.until.is_some() {
        return Err(Error::Usage(
            "--until and --follow do not go together".into(),
        ));
    }
    let now = SystemTime::now();
    let since = args
        .since
        .as_deref()
        .map(|s| time_arg("--since", s, now))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| time_arg("--until", s, now))
        .transpose()?;
    let mut filters: Vec<(&str, String)> = Vec::new();
    if let Some(s) = args.service {
        filters.push(("service", s));
    }
    if let Some(s) = args.severity {
        filters.push(("severity", s));
    }
    if let Some(t) = until {
        filters.push(("end_time", show::rfc3339(t)));
    }
    let mut first = filters.clone();
    if let Some(t) = since {
        first.push(("start_time", show::rfc3339(t)));
    }
    let segments = [args.device.as_str(), "logs"];
    let (lines, pagination) = api
        .pages(&segments, &first, Some(args.limit), MAX_PAGE)
        .await?;
    if !args.follow {
        return match format {
            Format::Json => show::json(&json!({"data": lines, "pagination": pagination})),
            Format::Table => lines.iter().rev().try_for_each(print_line),
        };
    }

    let emit = |l: &Value| match format {
        Format::Json => show::json_line(l),
        Format::Table => print_line(l),
    };
    let cut_short = pagination["has_more"].as_bool() == Some(true);
    let mut follow = Follow::new(args.lookback, since);
    for l in follow.first(&lines, cut_short) {
        emit(&l)?;
    }
    api.set_patient();
    let mut failing = false;
    loop {
        tokio::time::sleep(args.interval).await;
        let mut query = filters.clone();
        if let Some(t) = follow.window_start() {
            query.push(("start_time", show::rfc3339(t)));
        }
        match api.pages(&segments, &query, None, MAX_PAGE).await {
            Ok((fresh, _)) => {
                if failing {
                    eprintln!("outpostctl: reconnected");
                    failing = false;
                }
                for l in follow.next(fresh) {
                    emit(&l)?;
                }
            }
            // The control plane restarting or a proxy hiccup: keep trying.
            Err(e @ (Error::Connection(_) | Error::Server { status: 500.., .. })) => {
                if !failing {
                    eprintln!(
                        "outpostctl: {e}; retrying every {}",
                        humantime::format_duration(args.interval)
                    );
                    failing = true;
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn print_line(l: &Value) -> Result<()> {
    show::line(&format!(
        "{}  {:<8} {}: {}",
        text(&l["timestamp"]),
        text(&l["severity"]),
        text(&l["service"]),
        l["message"].as_str().unwrap_or("")
    ))
}

/// `--since`/`--until`: unix seconds, a duration ago (`15m`), or RFC 3339.
fn time_arg(flag: &str, raw: &str, now: SystemTime) -> Result<SystemTime> {
    if let Ok(secs) = raw.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_secs(secs));
    }
    if let Ok(ago) = humantime::parse_duration(raw) {
        return Ok(now.checked_sub(ago).unwrap_or(UNIX_EPOCH));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(raw) {
        return Ok(t);
    }
    Err(Error::Usage(format!(
        "{flag} {raw:?}: give RFC 3339 (2026-01-31T12:00:00Z), unix seconds, or a duration ago (15m)"
    )))
}

type Key = (String, String, String, String);

fn key(l: &Value) -> Key {
    let s = |k: &str| l[k].as_str().unwrap_or("").to_string();
    (s("timestamp"), s("service"), s("severity"), s("message"))
}

/// What `--follow` has printed, within the lookback window.
struct Follow {
    lookback: Duration,
    /// The newest timestamp printed.
    newest: Option<SystemTime>,
    /// Nothing older is printed (`--since`, or where the first page stopped).
    floor: Option<SystemTime>,
    /// Lines printed at or after `window_start()`, counted per identity.
    seen: HashMap<Key, usize>,
}

impl Follow {
    fn new(lookback: Duration, since: Option<SystemTime>) -> Self {
        Follow {
            lookback,
            newest: None,
            floor: since,
            seen: HashMap::new(),
        }
    }

    /// Where the next poll starts.
    fn window_start(&self) -> Option<SystemTime> {
        let from_newest = self
            .newest
            .map(|n| n.checked_sub(self.lookback).unwrap_or(UNIX_EPOCH));
        from_newest.max(self.floor)
    }

    /// The first answer (newest first; all of it is printed, oldest first).
    /// When it was cut short by `--limit`, older lines are left out for good.
    fn first(&mut self, lines: &[Value], cut_short: bool) -> Vec<Value> {
        if cut_short && let Some(oldest) = lines.last().and_then(|l| show::time(&l["timestamp"])) {
            // The same millisecond as the oldest line shown may hold lines
            // the limit left out; they stay out.
            self.floor = self.floor.max(Some(oldest + Duration::from_millis(1)));
            for l in lines.iter().rev() {
                *self.seen.entry(key(l)).or_default() += 1;
                self.newest = self.newest.max(show::time(&l["timestamp"]));
            }
            self.prune();
            return lines.iter().rev().cloned().collect();
        }
        self.next(lines.to_vec())
    }

    /// A poll's answer (newest first): the lines not printed yet, oldest
    /// first.
    fn next(&mut self, lines: Vec<Value>) -> Vec<Value> {
        let mut counts: HashMap<Key, usize> = HashMap::new();
        let mut out = Vec::new();
        for l in lines.into_iter().rev() {
            let t = show::time(&l["timestamp"]);
            if t.is_some() && t < self.floor {
                continue;
            }
            let k = key(&l);
            let n = counts.entry(k.clone()).or_default();
            *n += 1;
            if *n > self.seen.get(&k).copied().unwrap_or(0) {
                self.seen.insert(k, *n);
                self.newest = self.newest.max(t);
                out.push(l);
            }
        }
        self.prune();
        out
    }

    /// Forgets lines older than the window: the next poll does not ask for
    /// them.
    fn prune(&mut self) {
        if let Some(start) = self.window_start() {
            self.seen
                .retain(|k, _| humantime::parse_rfc3339_weak(&k.0).is_ok_and(|t| t >= start));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ts: &str, msg: &str) -> Value {
        json!({"timestamp": ts, "service": "app.log", "severity": "info", "message": msg})
    }

    fn msgs(v: &[Value]) -> Vec<&str> {
        v.iter().map(|l| l["message"].as_str().unwrap()).collect()
    }

    #[test]
    fn follow_prints_each_line_once_even_identical_ones() {
        let mut f = Follow::new(Duration::from_secs(30), None);
        let t1 = "2026-01-01T00:00:01.000Z";
        let t2 = "2026-01-01T00:00:02.000Z";
        // Newest first, as the server answers.
        let first = f.first(&[line(t1, "b"), line(t1, "a")], false);
        assert_eq!(msgs(&first), ["a", "b"]);
        assert_eq!(
            f.window_start(),
            humantime::parse_rfc3339("2025-12-31T23:59:31Z").ok()
        );
        // The same two again plus an identical copy of "a" and a newer line.
        let next = f.next(vec![
            line(t2, "c"),
            line(t1, "a"),
            line(t1, "b"),
            line(t1, "a"),
        ]);
        assert_eq!(msgs(&next), ["a", "c"]);
        assert!(
            f.next(vec![
                line(t2, "c"),
                line(t1, "a"),
                line(t1, "b"),
                line(t1, "a")
            ])
            .is_empty()
        );
        // A line stored late with an older timestamp (inside the lookback).
        let late = f.next(vec![
            line(t2, "c"),
            line(t1, "late"),
            line(t1, "a"),
            line(t1, "b"),
            line(t1, "a"),
        ]);
        assert_eq!(msgs(&late), ["late"]);
    }

    #[test]
    fn follow_forgets_lines_outside_the_window() {
        let mut f = Follow::new(Duration::from_secs(10), None);
        f.first(&[line("2026-01-01T00:00:00.000Z", "old")], false);
        let n = f.next(vec![line("2026-01-01T00:01:00.000Z", "new")]);
        assert_eq!(msgs(&n), ["new"]);
        assert_eq!(f.seen.len(), 1);
    }

    #[test]
    fn a_first_page_cut_short_leaves_older_lines_out() {
        let mut f = Follow::new(Duration::from_secs(30), None);
        let t = "2026-01-01T00:00:05.000Z";
        assert_eq!(msgs(&f.first(&[line(t, "newest")], true)), ["newest"]);
        // The poll also sees lines the limit left out: not printed.
        let n = f.next(vec![
            line(t, "newest"),
            line(t, "cut"),
            line("2026-01-01T00:00:01.000Z", "older"),
        ]);
        assert!(n.is_empty(), "{n:?}");
    }

    #[test]
    fn time_arguments() {
        let now = humantime::parse_rfc3339("2026-01-01T01:00:00Z").unwrap();
        let arg = |s: &str| show::rfc3339(time_arg("--since", s, now).unwrap());
        assert_eq!(arg("1700000000"), "2023-11-14T22:13:20.000Z");
        assert_eq!(arg("15m"), "2026-01-01T00:45:00.000Z");
        assert_eq!(arg("2026-01-01T00:00:00Z"), "2026-01-01T00:00:00.000Z");
        assert!(matches!(
            time_arg("--since", "yesterday", now),
            Err(Error::Usage(_))
        ));
    }
}
