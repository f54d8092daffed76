//! `watch`: the fleet as a live table, like `top`. A background task lists
//! the devices every `--interval` (each device view carries its latest
//! sample); the screen is redrawn on each answer and on resize. q, Esc or
//! Ctrl-C quit; the terminal is restored however we leave (guard + panic
//! hook). `--once` prints one frame as plain text.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

use crossterm::event::{Event, EventStream, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::style::{Attribute, Color, Print, ResetColor, SetAttribute, SetForegroundColor};
use crossterm::terminal::{self, Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{cursor, execute, queue};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::api::Api;
use crate::cli::{Format, WatchArgs};
use crate::devices::list_all;
use crate::error::{Error, Result};
use crate::show::{self, Table, text};

pub async fn run(api: &Api, args: WatchArgs, format: Format) -> Result<()> {
    if args.once {
        let (devices, pagination) = list_all(api, None, &[]).await?;
        return match format {
            Format::Json => show::json(&json!({"data": devices, "pagination": pagination})),
            Format::Table => {
                let f = frame(api.workspace(), sorted(devices), SystemTime::now(), None);
                show::line(&f.title)?;
                f.table.print()
            }
        };
    }
    if format == Format::Json {
        return Err(Error::Usage(
            "watch draws a table; use --once with --output json".into(),
        ));
    }
    if !std::io::stdout().is_terminal() {
        return Err(Error::Usage(
            "watch needs a terminal; use watch --once for one frame".into(),
        ));
    }

    // The fetcher: one list per interval, answers to the drawing loop.
    let (tx, mut answers) = mpsc::channel::<Result<Vec<Value>>>(1);
    let fetcher = {
        let api = api.clone();
        let every = args.interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let r = list_all(&api, None, &[]).await.map(|(d, _)| sorted(d));
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        })
    };
    let result = screen_loop(api.workspace(), args.interval, &mut answers).await;
    fetcher.abort();
    result
}

async fn screen_loop(
    workspace: &str,
    interval: Duration,
    answers: &mut mpsc::Receiver<Result<Vec<Value>>>,
) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let _screen = Screen::enter()?;
    let mut keys = EventStream::new();
    let mut devices: Option<Vec<Value>> = None;
    let mut problem: Option<String> = None;
    let mut updated: Option<SystemTime> = None;
    draw(
        workspace,
        interval,
        devices.as_deref(),
        updated,
        problem.as_deref(),
    )?;
    loop {
        tokio::select! {
            answer = answers.recv() => match answer {
                Some(Ok(d)) => {
                    devices = Some(d);
                    updated = Some(SystemTime::now());
                    problem = None;
                }
                // A key that no longer works, a workspace that is gone:
                // waiting will not help.
                Some(Err(e @ Error::Server { status: 401 | 403 | 404, .. })) => return Err(e),
                Some(Err(e)) => problem = Some(e.to_string()),
                None => return Ok(()),
            },
            key = keys.next() => match key {
                Some(Ok(Event::Key(k))) if k.kind != KeyEventKind::Release => {
                    let ctrl_c = k.code == KeyCode::Char('c')
                        && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) {
                        return Ok(());
                    }
                    continue;
                }
                Some(Ok(Event::Resize(..))) => {}
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            _ = term.recv() => return Ok(()),
            _ = hangup.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        draw(
            workspace,
            interval,
            devices.as_deref(),
            updated,
            problem.as_deref(),
        )?;
    }
}

/// Raw mode and the alternate screen while it lives.
struct Screen;

impl Screen {
    fn enter() -> Result<Self> {
        terminal::enable_raw_mode()?;
        // From here on, every way out (error, return, panic) restores.
        let screen = Screen;
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            default_hook(info);
        }));
        execute!(std::io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        Ok(screen)
    }
}

fn restore() {
    let _ = execute!(std::io::stdout(), cursor::Show, LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

fn sorted(mut devices: Vec<Value>) -> Vec<Value> {
    let key = |d: &Value| {
        (
            d["name"].as_str().unwrap_or("").to_lowercase(),
            d["id"].as_str().unwrap_or("").to_string(),
        )
    };
    devices.sort_by_key(key);
    devices
}

struct Frame {
    title: String,
    table: Table,
}

const STATUS_COLUMN: usize = 2;

/// The title line and the table, as text (no colours).
fn frame(
    workspace: &str,
    devices: Vec<Value>,
    now: SystemTime,
    interval: Option<Duration>,
) -> Frame {
    let count = |s: &str| devices.iter().filter(|d| d["status"] == s).count();
    let mut title = format!(
        "outpostctl watch: workspace {workspace}, {} device{} ({} online, {} offline, {} unknown) at {}",
        devices.len(),
        if devices.len() == 1 { "" } else { "s" },
        count("online"),
        count("offline"),
        count("unknown"),
        humantime::format_rfc3339_seconds(now),
    );
    if let Some(i) = interval {
        title.push_str(&format!(
            ", every {}; q quits",
            humantime::format_duration(i)
        ));
    }
    let mut table = Table::new(vec![
        "NAME",
        "ID",
        "STATUS",
        "HEARTBEAT",
        "CPU%",
        "MEM%",
        "DISK%",
        "AGENT",
        "CERT EXPIRES",
    ]);
    table.right = vec![4, 5, 6];
    for d in &devices {
        let s = &d["latest_telemetry"];
        table.rows.push(vec![
            text(&d["name"]),
            text(&d["id"]),
            text(&d["status"]),
            show::ago(&d["last_heartbeat"], now),
            show::pct(s["cpu_percent"].as_f64()),
            show::pct(show::percent(
                &s["memory_used_bytes"],
                &s["memory_total_bytes"],
            )),
            show::pct(show::percent(&s["disk_used_bytes"], &s["disk_total_bytes"])),
            text(&d["agent_version"]),
            show::until(&d["certificate_expires_at"], now),
        ]);
    }
    Frame { title, table }
}

fn draw(
    workspace: &str,
    interval: Duration,
    devices: Option<&[Value]>,
    updated: Option<SystemTime>,
    problem: Option<&str>,
) -> Result<()> {
    // A terminal that reports no size (some ptys) gets the classic one.
    let (width, height) = match terminal::size()? {
        (0, _) | (_, 0) => (80, 24),
        (w, h) => (w as usize, h as usize),
    };
    let fit = |s: &str| -> String { s.chars().take(width).collect() };
    let mut out = std::io::stdout().lock();
    // Each line is overwritten and its rest cleared, then everything below
    // the last one: no blank frame between two (no flicker).
    queue!(out, cursor::MoveTo(0, 0))?;
    let Some(devices) = devices else {
        let msg = problem.unwrap_or("listing devices…");
        queue!(
            out,
            Print(fit(&format!("outpostctl watch: {msg}"))),
            Clear(ClearType::UntilNewLine),
            cursor::MoveTo(0, 1),
            Clear(ClearType::FromCursorDown)
        )?;
        out.flush()?;
        return Ok(());
    };
    let f = frame(
        workspace,
        devices.to_vec(),
        updated.unwrap_or_else(SystemTime::now),
        Some(interval),
    );
    queue!(
        out,
        SetAttribute(Attribute::Bold),
        Print(fit(&f.title)),
        SetAttribute(Attribute::Reset),
        Clear(ClearType::UntilNewLine)
    )?;
    let mut y = 1u16;
    if let Some(p) = problem {
        queue!(
            out,
            cursor::MoveTo(0, y),
            SetForegroundColor(Color::Red),
            Print(fit(&format!("{p} (showing the last answer)"))),
            ResetColor,
            Clear(ClearType::UntilNewLine)
        )?;
        y += 1;
    }
    let lines = f.table.lines();
    let status_at = f.table.offsets().get(STATUS_COLUMN).copied().unwrap_or(0);
    let room = height.saturating_sub(y as usize);
    let shown = if lines.len() > room {
        room.saturating_sub(1)
    } else {
        lines.len()
    };
    for (i, l) in lines.iter().take(shown).enumerate() {
        queue!(out, cursor::MoveTo(0, y))?;
        if i == 0 {
            queue!(
                out,
                SetAttribute(Attribute::Reverse),
                Print(fit(&format!("{l:<width$}"))),
                SetAttribute(Attribute::Reset)
            )?;
        } else {
            queue!(out, Print(fit(l)), Clear(ClearType::UntilNewLine))?;
            // Colour the status cell over the plain text.
            if let Some(status) = f.table.rows[i - 1].get(STATUS_COLUMN)
                && status_at + status.chars().count() <= width
            {
                let color = match status.as_str() {
                    "online" => Color::Green,
                    "offline" => Color::Red,
                    _ => Color::Yellow,
                };
                queue!(
                    out,
                    cursor::MoveTo(status_at as u16, y),
                    SetForegroundColor(color),
                    Print(status),
                    ResetColor
                )?;
            }
        }
        y += 1;
    }
    if shown < lines.len() {
        queue!(
            out,
            cursor::MoveTo(0, y),
            Print(fit(&format!(
                "… {} more devices (a taller terminal shows them)",
                lines.len() - shown
            ))),
            Clear(ClearType::UntilNewLine)
        )?;
        y += 1;
    }
    if (y as usize) < height {
        queue!(out, cursor::MoveTo(0, y), Clear(ClearType::FromCursorDown))?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_shows_the_latest_sample_and_counts() {
        let now = humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let devices = sorted(vec![
            json!({"name": "b-cam", "id": "2", "status": "offline", "latest_telemetry": null}),
            json!({"name": "A-gate", "id": "1", "status": "online",
                "last_heartbeat": "2025-12-31T23:59:58.000Z", "agent_version": "0.1.0",
                "certificate_expires_at": "2026-01-07T00:00:00.000Z",
                "latest_telemetry": {"cpu_percent": 7.25, "memory_used_bytes": 1, "memory_total_bytes": 2,
                    "disk_used_bytes": 3, "disk_total_bytes": 4}}),
        ]);
        let f = frame("acme", devices, now, None);
        assert_eq!(
            f.title,
            "outpostctl watch: workspace acme, 2 devices (1 online, 1 offline, 0 unknown) at 2026-01-01T00:00:00Z"
        );
        let lines = f.table.lines();
        let cells: Vec<Vec<&str>> = lines
            .iter()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            cells[1],
            [
                "A-gate", "1", "online", "2s", "ago", "7.2", "50.0", "75.0", "0.1.0", "in", "6d0h"
            ]
        );
        assert_eq!(
            cells[2],
            ["b-cam", "2", "offline", "never", "-", "-", "-", "-", "-"]
        );
    }
}
