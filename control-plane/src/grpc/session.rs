//! `Session`: the control stream. Hello first, then heartbeats; the device is
//! online while it lasts.

use std::sync::Arc;
use std::time::Duration;

use outpost_proto::v1::agent_message::Kind as AgentKind;
use outpost_proto::v1::server_message::Kind as ServerKind;
use outpost_proto::v1::{
    AgentMessage, ArtifactSignature, ConfigUpdate, DesiredArtifact, DesiredArtifacts, Hello,
    InstalledArtifact, RotateNow, ServerMessage, SessionStart, Settings,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Status, Streaming};

use crate::AppState;
use crate::live::Push;
use crate::store::{ConfigVersion, now_ms};
use crate::{device_config, ids};

use super::{
    DeviceIdentity, HEARTBEAT_INTERVAL_SECS, TELEMETRY_INTERVAL_SECS, convert, store_status,
};

const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

pub fn start(
    state: Arc<AppState>,
    id: DeviceIdentity,
    inbound: Streaming<AgentMessage>,
) -> ReceiverStream<Result<ServerMessage, Status>> {
    super::spawn_stream(|tx| run(state, id, inbound, tx))
}

async fn run(
    state: Arc<AppState>,
    id: DeviceIdentity,
    mut inbound: Streaming<AgentMessage>,
    tx: mpsc::Sender<Result<ServerMessage, Status>>,
) {
    let hello = match await_hello(&mut inbound, HELLO_TIMEOUT).await {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let installed = installed_artifacts(&hello.installed);
    let facts = match convert::facts(hello.facts) {
        Ok(f) => f,
        Err(why) => {
            tracing::info!(device = %id.device_id, "refused hello: {why}");
            let _ = tx.send(Err(Status::invalid_argument(why))).await;
            return;
        }
    };
    let session_id = ids::new_internal_id();
    // One group-committed write: the session, what runs on the box, and —
    // the current certificate being in use — the retirement of those it
    // replaced. A superseded one in use means the agent lost the
    // certificate a rotation issued (it crashed before saving it): it is
    // asked to rotate again below.
    let open = crate::store::SessionOpen {
        device_id: id.device_id.clone(),
        session_id: session_id.clone(),
        facts: facts.clone(),
        installed: Some(installed),
        retire_superseded: !id.superseded,
        now: now_ms(),
    };
    if let Err(e) = state.session_opener.write(open).await {
        let _ = tx.send(Err(store_status(e))).await;
        return;
    }
    tracing::info!(device = %id.device_id, hostname = %facts.hostname, "device connected");
    let start = match session_start(&state, &id).await {
        Ok(s) => s,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            close(&state, &id, &session_id, None).await;
            return;
        }
    };
    let mut registration = state.live.register(&id.device_id);
    let mut sent = tx.send(Ok(start)).await.is_ok();
    if sent && id.superseded {
        tracing::info!(device = %id.device_id, serial = %id.serial, "session on a superseded certificate: asking the agent to rotate");
        sent = tx.send(Ok(rotate_now())).await.is_ok();
    }
    let mut last_beat = None;
    if sent {
        let mut shutdown = state.shutdown.clone();
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(AgentMessage { kind: Some(AgentKind::Heartbeat(_)) })) => {
                        // Written in the next batch (crate::presence), or
                        // by the close if that comes first.
                        let now = now_ms();
                        last_beat = Some(now);
                        state.presence.beat(&id.device_id, &session_id, now);
                    }
                    Ok(Some(AgentMessage { kind: Some(AgentKind::ConfigApplied(c)) })) => {
                        if let Err(e) = state.store.config_applied(&id.device_id, c.version, now_ms()).await {
                            tracing::warn!(device = %id.device_id, "config ack not recorded: {e}");
                        }
                    }
                    Ok(Some(AgentMessage { kind: Some(AgentKind::Spool(r)) })) => {
                        let totals = crate::store::LossTotals {
                            telemetry_dropped: r.telemetry_dropped,
                            logs_dropped: r.logs_dropped,
                            corrupt: r.corrupt,
                            logs_rate_limited: r.logs_rate_limited,
                        };
                        match state.store.record_loss(&id.device_id, &id.workspace, &totals, now_ms()).await {
                            Ok(true) => tracing::warn!(device = %id.device_id, ?totals, "the agent reports lost data"),
                            Ok(false) => {}
                            Err(e) => tracing::warn!(device = %id.device_id, "loss report not recorded: {e}"),
                        }
                    }
                    Ok(Some(AgentMessage { kind: Some(AgentKind::Artifact(r)) })) => {
                        match artifact_report(r) {
                            Ok(report) => match state.store.record_artifact_report(&id.device_id, &id.workspace, &report, now_ms()).await {
                                Ok(true) => state.rollout_wake.notify_one(),
                                Ok(false) => {}
                                Err(e) => tracing::warn!(device = %id.device_id, "artifact report not recorded: {e}"),
                            },
                            // A bad report is dropped, not answered with a
                            // cut: the agent would reconnect and send it again.
                            Err(why) => tracing::warn!(device = %id.device_id, "artifact report refused: {why}"),
                        }
                    }
                    // Newer agents may send kinds we do not know yet.
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
                Some(push) = registration.inbox.recv() => {
                    let msg = match push {
                        Push::Desired => match desired(&state, &id.device_id).await {
                            Ok(d) => ServerMessage { kind: Some(ServerKind::Desired(d)) },
                            Err(e) => {
                                tracing::warn!(device = %id.device_id, "desired artifacts not read: {e}");
                                continue;
                            }
                        },
                        other => server_message(other),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        break;
                    }
                }
                why = crate::live::cut(&mut registration.cut) => {
                    tracing::info!(device = %id.device_id, ?why, "session cut");
                    let _ = tx.send(Err(super::auth::cut_status(why))).await;
                    break;
                }
                _ = crate::stopping(&mut shutdown) => break,
                _ = tx.closed() => break,
            }
        }
    }
    drop(registration);
    close(&state, &id, &session_id, last_beat).await;
}

/// The session's first message, which must be a hello and come within
/// `limit`. `Ok(None)`: the stream ended or failed first (nobody to answer).
async fn await_hello<S>(inbound: &mut S, limit: Duration) -> Result<Option<Hello>, Status>
where
    S: Stream<Item = Result<AgentMessage, Status>> + Unpin,
{
    match tokio::time::timeout(limit, inbound.next()).await {
        Ok(Some(Ok(AgentMessage {
            kind: Some(AgentKind::Hello(h)),
        }))) => Ok(Some(h)),
        Ok(Some(Ok(_))) => Err(Status::invalid_argument(
            "the first session message must be a hello",
        )),
        Ok(None) | Ok(Some(Err(_))) => Ok(None),
        Err(_) => Err(no_hello(limit)),
    }
}

fn no_hello(limit: Duration) -> Status {
    Status::deadline_exceeded(format!("no hello within {} s", limit.as_secs()))
}

/// The first server message: settings, where the store stands, and the
/// current config.
async fn session_start(state: &AppState, id: &DeviceIdentity) -> Result<ServerMessage, Status> {
    let view = state
        .store
        .session_view(&id.device_id)
        .await
        .map_err(store_status)?;
    let (last_seq, last_log_seq) = (view.last_telemetry_seq, view.last_log_seq);
    let config = view.config.as_ref().map(config_update);
    let desired = desired_message(view.desired);
    Ok(ServerMessage {
        kind: Some(ServerKind::Start(SessionStart {
            desired: Some(desired),
            settings: Some(Settings {
                telemetry_interval_secs: config
                    .as_ref()
                    .and_then(|c| c.settings.as_ref())
                    .map(|s| s.telemetry_interval_secs)
                    .unwrap_or(TELEMETRY_INTERVAL_SECS),
                heartbeat_interval_secs: HEARTBEAT_INTERVAL_SECS,
            }),
            server_time_unix_ms: now_ms(),
            last_telemetry_seq: last_seq,
            last_log_seq,
            config,
        })),
    })
}

/// The wire form of what an operator asked of this session.
fn server_message(push: Push) -> ServerMessage {
    match push {
        Push::Config(c) => ServerMessage {
            kind: Some(ServerKind::Config(config_update(&c))),
        },
        Push::Rotate => rotate_now(),
        // Read from the store by the session loop; an empty list here.
        Push::Desired => ServerMessage {
            kind: Some(ServerKind::Desired(DesiredArtifacts::default())),
        },
    }
}

/// The device's desired artifacts, as the wire message.
async fn desired(
    state: &AppState,
    device_id: &str,
) -> Result<DesiredArtifacts, crate::store::StoreError> {
    Ok(desired_message(
        state.store.desired_artifacts(device_id).await?,
    ))
}

fn desired_message(list: Vec<crate::store::DesiredArtifact>) -> DesiredArtifacts {
    DesiredArtifacts {
        artifacts: list
            .into_iter()
            .map(|d| DesiredArtifact {
                name: d.name,
                version: d.version,
                manifest_json: d.manifest_json,
                signature: Some(ArtifactSignature {
                    public_key: d.public_key,
                    signature: d.signature,
                }),
                rollout_id: d.rollout_id,
            })
            .collect(),
    }
}

/// Longest error text kept from a report (longer ones are cut, marked `…`).
pub const MAX_REPORT_ERROR: usize = 1024;
/// Most installed artifacts taken from one message.
const MAX_INSTALLED: usize = 256;
/// Longest rollout id taken from a report (ours are far shorter).
const MAX_ROLLOUT_ID: usize = 64;

/// The valid `installed` entries (a bad one is left out and logged).
fn installed_artifacts(list: &[InstalledArtifact]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for a in list.iter().take(MAX_INSTALLED) {
        match (
            outpost_common::artifact::check_name(&a.name),
            outpost_common::artifact::check_version(&a.version),
        ) {
            (Ok(()), Ok(())) => {
                if !out.iter().any(|(n, _)| *n == a.name) {
                    out.push((a.name.clone(), a.version.clone()));
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("installed artifact left out: {e}");
            }
        }
    }
    out
}

/// Checks an agent's report: name and version as artifacts have them, a
/// known state other than `pending`; the error is kept as data (control
/// characters included) but cut to [`MAX_REPORT_ERROR`] bytes.
fn artifact_report(
    r: outpost_proto::v1::ArtifactReport,
) -> Result<crate::store::ArtifactReport, String> {
    use crate::rollout::DeviceState;
    outpost_common::artifact::check_name(&r.name)?;
    outpost_common::artifact::check_version(&r.version)?;
    let state = DeviceState::parse(&r.state)
        .filter(|s| *s != DeviceState::Pending)
        .ok_or_else(|| format!("unknown artifact state {:?}", truncate(&r.state, 32)))?;
    let error = (!r.error.is_empty()).then(|| truncate(&r.error, MAX_REPORT_ERROR));
    let rollout_id = if r.rollout_id.len() > MAX_ROLLOUT_ID {
        String::new()
    } else {
        r.rollout_id
    };
    Ok(crate::store::ArtifactReport {
        name: r.name,
        version: r.version,
        rollout_id,
        state,
        error,
        installed: installed_artifacts(&r.installed),
    })
}

/// `s` cut to at most `max` bytes on a character boundary, `…` marking a cut.
fn truncate(s: &str, max: usize) -> String {
    let s = &super::convert::storable(s.to_string());
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The wire form of a config version, with the settings derived from it.
fn config_update(config: &ConfigVersion) -> ConfigUpdate {
    ConfigUpdate {
        version: config.version,
        config_json: config.config.to_string(),
        settings: Some(Settings {
            telemetry_interval_secs: device_config::telemetry_interval_secs(&config.config)
                .unwrap_or(0),
            heartbeat_interval_secs: HEARTBEAT_INTERVAL_SECS,
        }),
    }
}

/// The session message that makes an agent rotate its key now.
fn rotate_now() -> ServerMessage {
    ServerMessage {
        kind: Some(ServerKind::Rotate(RotateNow {})),
    }
}

/// Ends the session in the store, with its last heartbeat in the same
/// write (the store then shows when the device was last seen, not the batch
/// before; the pending batch entry is dropped).
async fn close(state: &AppState, id: &DeviceIdentity, session_id: &str, last_beat: Option<i64>) {
    let end = crate::store::SessionEnd {
        device_id: id.device_id.clone(),
        session_id: session_id.to_string(),
        last_heartbeat: last_beat,
    };
    // A failure is logged by the writer; the pending heartbeat then stays
    // for the next batch (the session is still current in the store).
    if state.session_closer.write(end).await {
        state.presence.take(&id.device_id, session_id);
        tracing::info!(device = %id.device_id, "device disconnected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_become_their_wire_messages() {
        let cfg = ConfigVersion {
            version: 3,
            config: serde_json::json!({"telemetry_interval_secs": 5}),
            created_at: 0,
        };
        match server_message(Push::Config(cfg)).kind {
            Some(ServerKind::Config(c)) => {
                assert_eq!(c.version, 3);
                let v: serde_json::Value = serde_json::from_str(&c.config_json).unwrap();
                assert_eq!(v["telemetry_interval_secs"], 5);
                let settings = c.settings.unwrap();
                assert_eq!(settings.telemetry_interval_secs, 5);
                assert_eq!(settings.heartbeat_interval_secs, HEARTBEAT_INTERVAL_SECS);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            server_message(Push::Rotate).kind,
            Some(ServerKind::Rotate(_))
        ));
    }

    #[test]
    fn artifact_reports_are_checked_and_bounded() {
        let ok = outpost_proto::v1::ArtifactReport {
            name: "detector".into(),
            version: "1.4.0".into(),
            rollout_id: "ro_1".into(),
            state: "rolled_back".into(),
            error: format!("line1\n\u{1b}[31m{}", "é".repeat(2000)),
            bytes_done: 0,
            installed: vec![
                InstalledArtifact {
                    name: "detector".into(),
                    version: "1.3.0".into(),
                },
                InstalledArtifact {
                    name: "../x".into(),
                    version: "1".into(),
                },
            ],
        };
        let r = artifact_report(ok.clone()).unwrap();
        assert_eq!(r.state, crate::rollout::DeviceState::RolledBack);
        let err = r.error.unwrap();
        assert!(err.len() <= MAX_REPORT_ERROR && err.ends_with('…'));
        assert!(
            err.starts_with("line1\n\u{1b}[31m"),
            "control characters kept as data"
        );
        assert_eq!(
            r.installed,
            vec![("detector".to_string(), "1.3.0".to_string())]
        );
        for bad in [
            outpost_proto::v1::ArtifactReport {
                name: "../etc".into(),
                ..ok.clone()
            },
            outpost_proto::v1::ArtifactReport {
                version: "a/b".into(),
                ..ok.clone()
            },
            outpost_proto::v1::ArtifactReport {
                state: "done".into(),
                ..ok.clone()
            },
            outpost_proto::v1::ArtifactReport {
                state: "pending".into(),
                ..ok.clone()
            },
        ] {
            assert!(artifact_report(bad).is_err());
        }
        let long_id = outpost_proto::v1::ArtifactReport {
            rollout_id: "r".repeat(65),
            error: String::new(),
            ..ok
        };
        let r = artifact_report(long_id).unwrap();
        assert_eq!((r.rollout_id.as_str(), r.error), ("", None));
    }

    fn msg(kind: AgentKind) -> Result<AgentMessage, Status> {
        Ok(AgentMessage { kind: Some(kind) })
    }

    #[tokio::test]
    async fn a_session_opens_with_a_hello_in_time_or_not_at_all() {
        let hello = msg(AgentKind::Hello(Hello::default()));
        let got = await_hello(&mut tokio_stream::iter([hello]), HELLO_TIMEOUT).await;
        assert_eq!(got.unwrap(), Some(Hello::default()));

        let heartbeat = msg(AgentKind::Heartbeat(Default::default()));
        let err = await_hello(&mut tokio_stream::iter([heartbeat]), HELLO_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        // The stream ends or breaks first: nothing to answer.
        let mut ended = tokio_stream::empty::<Result<AgentMessage, Status>>();
        assert_eq!(await_hello(&mut ended, HELLO_TIMEOUT).await.unwrap(), None);
        let mut broken = tokio_stream::iter([Err(Status::cancelled("gone"))]);
        assert_eq!(await_hello(&mut broken, HELLO_TIMEOUT).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_silent_session_gets_deadline_exceeded_when_its_time_is_up() {
        // The limit is a parameter, so the timeout fires here in
        // milliseconds; the server passes HELLO_TIMEOUT (15 s).
        let limit = Duration::from_millis(30);
        let started = tokio::time::Instant::now();
        let mut silent = tokio_stream::pending::<Result<AgentMessage, Status>>();
        let err = await_hello(&mut silent, limit).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(started.elapsed() >= limit);
        // What the agent is told at the server's limit (unchanged wording).
        assert_eq!(no_hello(HELLO_TIMEOUT).message(), "no hello within 15 s");
    }
}
