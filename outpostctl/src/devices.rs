//! `devices list|get|create|delete` and `reset`.

use std::time::SystemTime;

use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::api::Api;
use crate::cli::{Devices, Format, ListArgs};
use crate::error::{Error, Result};
use crate::show::{self, Table, text};

/// The server's largest page.
const MAX_PAGE: u32 = 500;

pub async fn run(api: &Api, cmd: Devices, format: Format) -> Result<()> {
    match cmd {
        Devices::List(args) => list(api, args, format).await,
        Devices::Get { device } => {
            let device = api.device_id(&device).await?;
            let d = api.get(&[&device], &[]).await?;
            match format {
                Format::Json => show::json(&d),
                Format::Table => show::pairs(&detail(&d, SystemTime::now())),
            }
        }
        Devices::Create {
            name,
            device_type,
            description,
            workflow_id,
            offline_mode,
            source_device,
        } => {
            let mut body = Map::new();
            body.insert("device_name".into(), json!(name));
            let optional = [
                ("device_type", device_type),
                ("description", description),
                ("workflow_id", workflow_id),
                ("sourceDeviceId", source_device),
            ];
            for (k, v) in optional {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            if offline_mode {
                body.insert("offline_mode".into(), json!(true));
            }
            let created = api
                .call(Method::POST, &[], &[], Some(&Value::Object(body)))
                .await?
                .ok_or_else(|| Error::Protocol("create answered without a body".into()))?;
            match format {
                Format::Json => show::json(&created),
                Format::Table => {
                    let mut p = vec![
                        ("device id", text(&created["deviceId"])),
                        ("install id", text(&created["installId"])),
                        ("install id expires", text(&created["installIdExpiresAt"])),
                        ("ca fingerprint", text(&created["caFingerprint"])),
                        ("server", text(&created["serverUrl"])),
                        ("install command", text(&created["installCommand"])),
                    ];
                    if let Some(qr) = created["offlineProvisioningQrPayload"].as_str() {
                        p.push(("offline QR payload", qr.to_string()));
                    }
                    show::pairs(&p)
                }
            }
        }
        Devices::Delete { device } => delete(api, &device, format).await,
        Devices::InstallId { device } => {
            let device = api.device_id(&device).await?;
            let t = api
                .call(Method::POST, &[&device, "install-id"], &[], None)
                .await?
                .ok_or_else(|| Error::Protocol("install-id answered without a body".into()))?;
            match format {
                Format::Json => show::json(&t),
                Format::Table => show::pairs(&[
                    ("device id", text(&t["deviceId"])),
                    ("install id", text(&t["installId"])),
                    ("install id expires", text(&t["installIdExpiresAt"])),
                    ("install command", text(&t["installCommand"])),
                ]),
            }
        }
    }
}

/// `devices list` (also `ls`).
pub async fn list(api: &Api, args: ListArgs, format: Format) -> Result<()> {
    let mut filters = Vec::new();
    if let Some(s) = args.status {
        filters.push(("status", s));
    }
    if let Some(t) = args.device_type {
        filters.push(("type", t));
    }
    if let Some(n) = args.name {
        filters.push(("name", n));
    }
    for l in args.labels {
        filters.push(("label", l));
    }
    let (devices, pagination) = api.pages(&[], &filters, args.limit, args.page_size).await?;
    match format {
        Format::Json => show::json(&json!({"data": devices, "pagination": pagination})),
        Format::Table => list_table(&devices, SystemTime::now()).print(),
    }
}

/// `devices delete` (also `rm`).
pub async fn delete(api: &Api, device: &str, format: Format) -> Result<()> {
    let device = api.device_id(device).await?;
    api.call(Method::DELETE, &[&device], &[], None).await?;
    match format {
        Format::Json => show::json_line(&json!({"deleted": device})),
        Format::Table => show::line(&format!("deleted {device}")),
    }
}

/// `reset DEVICE [--force]`. The answer holds a fresh *device* API key:
/// handing it out is what the route is for, so it is printed.
pub async fn reset(api: &Api, device: &str, force: bool, format: Format) -> Result<()> {
    let device = api.device_id(device).await?;
    let device = device.as_str();
    let query = if force {
        vec![("force", "true".to_string())]
    } else {
        Vec::new()
    };
    let t = api
        .call(
            Method::POST,
            &[device, "connections", "reset"],
            &query,
            None,
        )
        .await?
        .ok_or_else(|| Error::Protocol("reset answered without a body".into()))?;
    match format {
        Format::Json => show::json(&t),
        Format::Table => {
            let mut p = vec![
                ("device id", text(&t["deviceId"])),
                ("device api key", text(&t["apiKey"])),
                ("rotation requested", text(&t["rotationRequested"])),
            ];
            if t.get("installId").is_some() {
                p.push(("install id", text(&t["installId"])));
                p.push(("install id expires", text(&t["installIdExpiresAt"])));
                p.push(("install command", text(&t["installCommand"])));
            }
            show::pairs(&p)
        }
    }
}

/// Every device (or the first `limit`), walking the pages; returns them with
/// the last page's `pagination`.
pub async fn list_all(
    api: &Api,
    limit: Option<u32>,
    filters: &[(&str, String)],
) -> Result<(Vec<Value>, Value)> {
    api.pages(&[], filters, limit, MAX_PAGE).await
}

fn list_table(devices: &[Value], now: SystemTime) -> Table {
    let mut t = Table::new(vec![
        "NAME",
        "ID",
        "TYPE",
        "STATUS",
        "HEARTBEAT",
        "AGENT",
        "CERT EXPIRES",
    ]);
    for d in devices {
        t.rows.push(vec![
            text(&d["name"]),
            text(&d["id"]),
            text(&d["type"]),
            status(d),
            show::ago(&d["last_heartbeat"], now),
            text(&d["agent_version"]),
            show::until(&d["certificate_expires_at"], now),
        ]);
    }
    t
}

/// The RFDM status, or where the device is in its enrollment while it has
/// not enrolled (`pending`, `install ID expired`); `disabled` wins.
fn status(d: &Value) -> String {
    if d["enabled"] == Value::Bool(false) {
        return "disabled".into();
    }
    match d["enrollment"].as_str() {
        Some("pending") => "pending".into(),
        Some("install_id_expired") => "install ID expired".into(),
        _ => text(&d["status"]),
    }
}

fn detail(d: &Value, now: SystemTime) -> Vec<(&'static str, String)> {
    let hw = &d["hardware"];
    let mb = |v: &Value| match v.as_u64() {
        Some(n) => show::bytes(n * 1024 * 1024),
        None => "-".into(),
    };
    let with_age = |v: &Value, rel: String| match v.as_str() {
        Some(t) => format!("{t} ({rel})"),
        None => rel,
    };
    let mut p = vec![
        ("id", text(&d["id"])),
        ("name", text(&d["name"])),
        ("description", text(&d["description"])),
        ("type", text(&d["type"])),
        ("status", status(d)),
        ("enabled", text(&d["enabled"])),
        (
            "last heartbeat",
            with_age(&d["last_heartbeat"], show::ago(&d["last_heartbeat"], now)),
        ),
        ("hostname", text(&d["hostname"])),
        ("platform", platform(d)),
        ("architecture", text(&d["architecture"])),
        ("agent version", text(&d["agent_version"])),
        ("processor", text(&hw["processor"])),
        ("gpu", text(&hw["gpu"])),
        ("memory", mb(&hw["total_memory_mb"])),
        ("disk", mb(&hw["total_disk_space_mb"])),
        (
            "certificate expires",
            with_age(
                &d["certificate_expires_at"],
                show::until(&d["certificate_expires_at"], now),
            ),
        ),
        (
            "config version",
            format!(
                "{} (applied {})",
                text(&d["config_version"]),
                text(&d["config_applied_version"])
            ),
        ),
        ("workflow id", text(&d["workflow_id"])),
        ("offline mode", text(&d["offline_mode"])),
        ("created", text(&d["created_at"])),
    ];
    if d["install_id_expires_at"].is_string() {
        p.push((
            "install id expires",
            with_age(
                &d["install_id_expires_at"],
                show::until(&d["install_id_expires_at"], now),
            ),
        ));
    }
    if let Some(labels) = d["labels"].as_object().filter(|l| !l.is_empty()) {
        let mut l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect();
        l.sort();
        p.push(("labels", l.join(", ")));
    }
    if let Some(tags) = d["tags"].as_array().filter(|t| !t.is_empty()) {
        let tags: Vec<String> = tags.iter().map(text).collect();
        p.push(("tags", tags.join(", ")));
    }
    let s = &d["latest_telemetry"];
    if s.is_object() {
        p.push((
            "latest sample",
            format!(
                "seq {} at {}: cpu {}%, memory {}%, disk {}%, load {}",
                text(&s["seq"]),
                text(&s["timestamp"]),
                show::pct(s["cpu_percent"].as_f64()),
                show::pct(show::percent(
                    &s["memory_used_bytes"],
                    &s["memory_total_bytes"]
                )),
                show::pct(show::percent(&s["disk_used_bytes"], &s["disk_total_bytes"])),
                s["load_average"]["1m"]
                    .as_f64()
                    .map(|l| format!("{l:.2}"))
                    .unwrap_or_else(|| "-".into()),
            ),
        ));
    }
    p
}

/// `Debian GNU/Linux 12 (kernel 6.1.0)`, leaving out what is unknown.
fn platform(d: &Value) -> String {
    let parts: Vec<&str> = ["platform", "platform_version"]
        .iter()
        .filter_map(|k| d[*k].as_str().filter(|s| !s.is_empty()))
        .collect();
    let mut p = if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    };
    if let Some(k) = d["platform_release"].as_str().filter(|s| !s.is_empty()) {
        p.push_str(&format!(" (kernel {k})"));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_rows_show_age_and_expiry() {
        let now = humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let t = list_table(
            &[
                json!({"name":"cam","id":"abc","type":"edge","status":"online",
                "last_heartbeat":"2025-12-31T23:59:55.000Z","agent_version":"0.1.0",
                "certificate_expires_at":"2026-01-08T00:00:00.000Z"}),
            ],
            now,
        );
        assert_eq!(
            t.rows[0],
            vec!["cam", "abc", "edge", "online", "5s ago", "0.1.0", "in 7d0h"]
        );
    }

    #[test]
    fn status_says_disabled_and_pending() {
        let d = json!({"status":"online","enabled":false,"enrollment":"enrolled"});
        assert_eq!(status(&d), "disabled");
        let d = json!({"status":"unknown","enabled":true,"enrollment":"install_id_expired"});
        assert_eq!(status(&d), "install ID expired");
        let d = json!({"status":"offline","enabled":true,"enrollment":"enrolled"});
        assert_eq!(status(&d), "offline");
    }

    #[test]
    fn detail_lists_labels_sorted() {
        let d = json!({"labels":{"site":"berlin","app":"cam"}});
        let p = detail(&d, SystemTime::now());
        let (_, v) = p.iter().find(|(k, _)| *k == "labels").unwrap();
        assert_eq!(v, "app=cam, site=berlin");
    }

    #[test]
    fn detail_shows_the_latest_sample_when_there_is_one() {
        let now = SystemTime::now();
        let d = json!({"id":"abc","latest_telemetry":{"seq":7,"timestamp":"t","cpu_percent":12.5,
            "memory_used_bytes":1,"memory_total_bytes":4,"disk_used_bytes":1,"disk_total_bytes":2,
            "load_average":{"1m":0.5}}});
        let p = detail(&d, now);
        let (_, v) = p.iter().find(|(k, _)| *k == "latest sample").unwrap();
        assert_eq!(
            v,
            "seq 7 at t: cpu 12.5%, memory 25.0%, disk 50.0%, load 0.50"
        );
        assert!(
            !detail(&json!({"latest_telemetry":null}), now)
                .iter()
                .any(|(k, _)| *k == "latest sample")
        );
    }
}
