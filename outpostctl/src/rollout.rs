//! `outpostctl rollout`: release an artifact version wave by wave and steer
//! the rollout (docs/artifacts.md).

use reqwest::Method;
use serde_json::{Value, json};

use crate::api::Api;
use crate::cli::{Format, Rollout, RolloutCreateArgs};
use crate::error::{Error, Result};
use crate::show::{self, Table};

pub async fn run(api: &Api, cmd: Rollout, format: Format) -> Result<()> {
    match cmd {
        Rollout::Create(args) => create(api, args, format).await,
        Rollout::Get { id } => get(api, &id, format).await,
        Rollout::List { limit } => list(api, limit, format).await,
        Rollout::Pause { id } => act(api, &id, "pause", format).await,
        Rollout::Resume { id } => act(api, &id, "resume", format).await,
        Rollout::Abort { id } => act(api, &id, "abort", format).await,
        Rollout::Approve { id } => act(api, &id, "approve", format).await,
    }
}

/// The request body of `rollout create`.
pub fn create_body(args: &RolloutCreateArgs) -> Value {
    let mut body = json!({
        "artifact": args.artifact,
        "selector": args.selector,
        "waves": args.waves.split(',').map(str::trim).filter(|w| !w.is_empty()).collect::<Vec<_>>(),
        "max_failures": args.max_failures,
        "approve_waves": args.approve_waves,
    });
    if let Some(t) = &args.wave_timeout {
        body["wave_timeout"] = Value::from(t.as_str());
    }
    body
}

async fn create(api: &Api, args: RolloutCreateArgs, format: Format) -> Result<()> {
    let body = create_body(&args);
    let r = api
        .call(Method::POST, &["rollouts"], &[], Some(&body))
        .await?
        .ok_or_else(|| Error::Protocol("an empty answer to rollout create".into()))?;
    match format {
        Format::Json => show::json(&r),
        Format::Table => {
            summary(&r)?;
            // The last line: the id, for scripts.
            show::line(&show::text(&r["id"]))
        }
    }
}

async fn get(api: &Api, id: &str, format: Format) -> Result<()> {
    let r = api.get(&["rollouts", id], &[]).await?;
    match format {
        Format::Json => show::json(&r),
        Format::Table => {
            summary(&r)?;
            show::line("")?;
            devices(&r).print()
        }
    }
}

/// Rollouts per request (the server's largest page).
const MAX_PAGE: u32 = 500;

async fn list(api: &Api, limit: Option<u32>, format: Format) -> Result<()> {
    let (items, pagination) = api.pages(&["rollouts"], &[], limit, MAX_PAGE).await?;
    match format {
        Format::Json => show::json(&json!({"data": items, "pagination": pagination})),
        Format::Table => list_table(&items).print(),
    }
}

async fn act(api: &Api, id: &str, action: &str, format: Format) -> Result<()> {
    let r = api
        .call(
            Method::POST,
            &["rollouts", id, action],
            &[],
            Some(&json!({})),
        )
        .await?
        .ok_or_else(|| Error::Protocol(format!("an empty answer to rollout {action}")))?;
    match format {
        Format::Json => show::json(&r),
        Format::Table => summary(&r),
    }
}

/// Devices per state, `3 succeeded, 1 failed`: from `device_counts` (the
/// list has no `devices`), else by counting the devices.
fn tally(r: &Value) -> String {
    let mut counts: Vec<(String, u64)> = Vec::new();
    if let Some(map) = r["device_counts"].as_object() {
        for (state, n) in map {
            let n = n.as_u64().unwrap_or(0);
            if n > 0 {
                counts.push((show::text(&Value::from(state.as_str())), n));
            }
        }
    } else {
        for d in r["devices"].as_array().into_iter().flatten() {
            let s = show::text(&d["state"]);
            match counts.iter_mut().find(|(k, _)| *k == s) {
                Some((_, n)) => *n += 1,
                None => counts.push((s, 1)),
            }
        }
    }
    counts.sort();
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn waves(r: &Value) -> String {
    r["waves"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            format!(
                "{} ({} device(s), {})",
                show::text(&w["spec"]),
                show::text(&w["size"]),
                show::text(&w["state"])
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn summary(r: &Value) -> Result<()> {
    let selector: Vec<String> = r["selector"]
        .as_array()
        .into_iter()
        .flatten()
        .map(show::text)
        .collect();
    show::pairs(&[
        ("id", show::text(&r["id"])),
        ("artifact", show::text(&r["artifact"])),
        ("state", show::text(&r["state"])),
        ("reason", show::text(&r["reason"])),
        ("selector", selector.join(",")),
        ("wave", show::text(&r["current_wave"])),
        ("waves", waves(r)),
        ("max failures", show::text(&r["max_failures"])),
        ("wave timeout", show::text(&r["wave_timeout"])),
        ("approve waves", show::text(&r["approve_waves"])),
        ("devices", tally(r)),
        ("created", show::text(&r["created_at"])),
        ("updated", show::text(&r["updated_at"])),
    ])
}

fn devices(r: &Value) -> Table {
    let mut t = Table::new(vec!["WAVE", "DEVICE", "NAME", "STATE", "UPDATED", "ERROR"]);
    t.right = vec![0];
    for d in r["devices"].as_array().into_iter().flatten() {
        t.rows.push(vec![
            show::text(&d["wave"]),
            show::text(&d["device_id"]),
            show::text(&d["name"]),
            show::text(&d["state"]),
            show::text(&d["updated_at"]),
            show::text(&d["error"]),
        ]);
    }
    t
}

fn list_table(items: &[Value]) -> Table {
    let mut t = Table::new(vec![
        "ID", "ARTIFACT", "STATE", "WAVE", "DEVICES", "CREATED", "REASON",
    ]);
    for r in items {
        let waves = r["waves"].as_array().map_or(0, Vec::len);
        t.rows.push(vec![
            show::text(&r["id"]),
            show::text(&r["artifact"]),
            show::text(&r["state"]),
            format!("{}/{waves}", show::text(&r["current_wave"])),
            tally(r),
            show::text(&r["created_at"]),
            show::text(&r["reason"]),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout() -> Value {
        json!({"id": "ro_1", "artifact": "detector@1.4.0", "state": "paused",
               "reason": "wave 1: 1 failure (max 0): d1: health\u{1b}[2J",
               "selector": ["site=a"], "current_wave": 1, "max_failures": 0,
               "wave_timeout": "10m", "approve_waves": false,
               "waves": [{"index": 1, "spec": "1", "size": 1, "state": "current"},
                         {"index": 2, "spec": "100%", "size": 2, "state": "waiting"}],
               "devices": [
                 {"device_id": "d1", "name": "cam\u{1b}[31m", "wave": 1, "state": "failed", "error": "exit\n1", "updated_at": "t"},
                 {"device_id": "d2", "name": "b", "wave": 2, "state": "pending", "error": null, "updated_at": "t"},
                 {"device_id": "d3", "name": "c", "wave": 2, "state": "pending", "error": null, "updated_at": "t"}]})
    }

    #[test]
    fn tables_escape_what_devices_said() {
        let r = rollout();
        let lines = devices(&r).lines();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[1].contains("cam\\x1b[31m") && lines[1].contains("exit\\n1"),
            "{}",
            lines[1]
        );
        assert!(!lines.concat().contains('\u{1b}'));
        let lines = list_table(std::slice::from_ref(&r)).lines();
        assert!(
            lines[1].contains("1/2") && lines[1].contains("1 failed, 2 pending"),
            "{}",
            lines[1]
        );
        assert!(!lines.concat().contains('\u{1b}'));
        // A listed rollout: counts instead of devices.
        let listed = json!({"id": "ro_2", "artifact": "a@1", "state": "running",
                            "current_wave": 1, "waves": [{"index": 1}],
                            "device_counts": {"pending": 2, "succeeded": 3, "failed": 0,
                                              "rolled_back\u{1b}[2J": 1},
                            "devices_total": 6});
        let lines = list_table(std::slice::from_ref(&listed)).lines();
        assert!(
            lines[1].contains("1/1")
                && lines[1].contains("2 pending, 1 rolled_back\\x1b[2J, 3 succeeded"),
            "{}",
            lines[1]
        );
        assert!(!lines.concat().contains('\u{1b}'));
        assert_eq!(
            waves(&r),
            "1 (1 device(s), current), 100% (2 device(s), waiting)"
        );
    }

    #[test]
    fn create_sends_what_was_asked() {
        let args = RolloutCreateArgs {
            artifact: "detector@1.4.0".into(),
            selector: vec!["site=a".into(), "gpu".into()],
            waves: "1, 25%,100%".into(),
            max_failures: 2,
            wave_timeout: Some("5m".into()),
            approve_waves: true,
        };
        assert_eq!(
            create_body(&args),
            json!({"artifact": "detector@1.4.0", "selector": ["site=a", "gpu"],
                   "waves": ["1", "25%", "100%"], "max_failures": 2,
                   "wave_timeout": "5m", "approve_waves": true})
        );
    }
}
