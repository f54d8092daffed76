//! `logs DEVICE [--follow]`.
//!
//! `--follow` prints the newest lines, then asks for the lines stored after
//! the highest `seq` seen (`after_seq`, oldest first) and moves on to the
//! server's `last_seq` (past lines the filters skipped): a line is printed
//! once, and a line stored late — spooled on a box while it was offline,
//! stamped long ago — still comes (unless `--since` excludes it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::api::Api;
use crate::cli::{Format, LogsArgs};
use crate::error::{Error, Result};
use crate::show::{self, text};

/// The server's largest logs page.
const MAX_PAGE: u32 = 1000;

pub async fn run(api: &mut Api, mut args: LogsArgs, format: Format) -> Result<()> {
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
    // By name too; after the arguments are checked (a usage error asks
    // nothing of the server).
    args.device = api.device_id(&args.device).await?;
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
    let _ = pagination;
    // Oldest first on screen; the follower continues after the highest seq.
    let mut after = lines
        .iter()
        .filter_map(|l| l["seq"].as_u64())
        .max()
        .unwrap_or(0);
    for l in lines.iter().rev() {
        emit(l)?;
    }
    api.set_patient();
    let mut failing = false;
    let mut wait = true;
    loop {
        if wait {
            tokio::time::sleep(args.interval).await;
        }
        let mut query = filters.clone();
        if let Some(t) = since {
            query.push(("start_time", show::rfc3339(t)));
        }
        query.push(("after_seq", after.to_string()));
        match api.pages(&segments, &query, Some(MAX_PAGE), MAX_PAGE).await {
            Ok((fresh, page)) => {
                if failing {
                    eprintln!("outpostctl: reconnected");
                    failing = false;
                }
                for l in &fresh {
                    after = after.max(l["seq"].as_u64().unwrap_or(after));
                    emit(l)?;
                }
                // Past the lines the filters skipped as well.
                if let Some(high) = page["last_seq"].as_u64() {
                    after = after.max(high);
                }
                // A backlog: read on at once.
                wait = page["has_more"].as_bool() != Some(true);
            }
            // The control plane restarting or a proxy hiccup: keep trying.
            Err(e @ (Error::Connection(_) | Error::Server { status: 500.., .. })) => {
                wait = true;
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
        show::safe(l["message"].as_str().unwrap_or(""))
    ))
}

/// `--since`/`--until`: unix seconds, a duration ago (`15m`), or RFC 3339.
pub(crate) fn time_arg(flag: &str, raw: &str, now: SystemTime) -> Result<SystemTime> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
