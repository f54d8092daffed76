//! One connection's life: session hello, telemetry stream, heartbeats, acks.
//! Returns when the link fails (the caller backs off and retries) or when
//! the agent is stopping.

use std::time::Duration;

use outpost_proto::v1::agent_message::Kind as AgentKind;
use outpost_proto::v1::server_message::Kind as ServerKind;
use outpost_proto::v1::{
    AgentMessage, ConfigApplied, ConfigUpdate, Heartbeat, Hello, LogBatch, ServerMessage, Settings,
    TelemetryBatch,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::daemon::Agent;
use crate::link::{self, LinkError};

const START_TIMEOUT: Duration = Duration::from_secs(15);
/// On stop, how long to wait for acks of batches already sent.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// Why a connection ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Stopping,
    /// The identity was rotated: reconnect with the new certificate.
    Rotated,
}

/// After a failed rotation attempt, try again this much later.
const ROTATION_RETRY: Duration = Duration::from_secs(30);

pub async fn run_connection(
    agent: &mut Agent,
    signals: &mut crate::daemon::Signals,
) -> Result<End, LinkError> {
    agent.set_link("connecting", None);
    let channel = link::connect(&agent.server, agent.tls.clone()).await?;
    let mut client = link::client(channel);

    let (session_tx, session_rx) = mpsc::channel::<AgentMessage>(8);
    let hello = AgentMessage {
        kind: Some(AgentKind::Hello(Hello {
            facts: Some(agent.collector.facts()),
        })),
    };
    session_tx
        .send(hello)
        .await
        .map_err(|_| LinkError::Protocol("session stream closed before hello".into()))?;
    let mut session_in = client
        .session(ReceiverStream::new(session_rx))
        .await?
        .into_inner();
    let start = match tokio::time::timeout(START_TIMEOUT, session_in.message()).await {
        Ok(Ok(Some(ServerMessage {
            kind: Some(ServerKind::Start(s)),
        }))) => s,
        Ok(Ok(Some(_))) => return Err(LinkError::Protocol("expected a session start".into())),
        Ok(Ok(None)) => return Err(LinkError::Protocol("the server closed the session".into())),
        Ok(Err(status)) => return Err(status.into()),
        Err(_) => return Err(LinkError::Protocol("no session start within 15 s".into())),
    };
    agent.observe_server_time(start.server_time_unix_ms);
    let mut heartbeat_every = DEFAULT_HEARTBEAT;
    if let Some(s) = &start.settings {
        apply_settings(agent, s, &mut heartbeat_every);
    }
    if let Some(c) = &start.config {
        apply_config(agent, c, &mut heartbeat_every, &session_tx).await?;
    }
    agent.on_connected(start.last_telemetry_seq, start.last_log_seq);

    // The outboxes bound what is in flight; the channels only hand over.
    let (telemetry_tx, telemetry_rx) = mpsc::channel::<TelemetryBatch>(8);
    let mut acks = client
        .push_telemetry(ReceiverStream::new(telemetry_rx))
        .await?
        .into_inner();
    let (logs_tx, logs_rx) = mpsc::channel::<LogBatch>(8);
    let mut log_acks = client
        .push_logs(ReceiverStream::new(logs_rx))
        .await?
        .into_inner();
    let mut reported = agent.loss_report();
    send_session(&session_tx, AgentKind::Spool(reported)).await?;
    agent.set_connected();
    tracing::info!(server = %agent.server, device = %agent.device_id, "connected");

    let mut next_heartbeat = Instant::now() + heartbeat_every;
    let due = agent.rotation_due_ms();
    agent.set_next_rotation(due);
    let mut rotate_at = match due {
        Some(due) => {
            let wait =
                Duration::from_millis(u64::try_from(due - agent.clock.now_ms()).unwrap_or(0));
            tracing::debug!(in_secs = wait.as_secs(), "next certificate rotation");
            Instant::now() + wait
        }
        None => Instant::now() + ROTATION_RETRY,
    };
    loop {
        while let Some(batch) = agent.next_telemetry_batch() {
            telemetry_tx
                .send(batch)
                .await
                .map_err(|_| LinkError::Protocol("telemetry stream closed".into()))?;
        }
        while let Some(batch) = agent.next_log_batch() {
            logs_tx
                .send(batch)
                .await
                .map_err(|_| LinkError::Protocol("log stream closed".into()))?;
        }
        let report = agent.loss_report();
        if report != reported {
            send_session(&session_tx, AgentKind::Spool(report)).await?;
            reported = report;
        }
        agent.chores();
        let chore = agent.next_chore();
        let mut lines = Vec::new();
        tokio::select! {
            // The chores run at the top of the next turn.
            _ = crate::daemon::sleep_until(chore) => {}
            cfg = crate::daemon::reloaded(&mut signals.reload) => agent.reload(cfg),
            _ = agent.sample_tick.tick() => {
                agent.take_sample();
                // A heartbeat that would fall due before the next sample goes
                // now, early, with this one: the two share a wake-up (and,
                // at the default 10 s each, every wake-up from then on).
                let now = Instant::now();
                let every = agent.interval();
                if every <= heartbeat_every && next_heartbeat < now + every {
                    heartbeat(&session_tx).await?;
                    next_heartbeat = now + heartbeat_every;
                }
            }
            _ = agent.log_sources.recv(&mut lines) => agent.take_log_lines(lines),
            ack = log_acks.message() => match ack {
                Ok(Some(a)) => agent.on_log_ack(a.acked_seq),
                Ok(None) => return Err(LinkError::Protocol("the server closed the log stream".into())),
                Err(status) => return Err(status.into()),
            },
            _ = tokio::time::sleep_until(rotate_at) => {
                match crate::rotate::rotate(&agent.state, &mut client).await {
                    Ok(()) => {
                        drain(agent, &mut acks, &mut log_acks).await;
                        return Ok(End::Rotated);
                    }
                    Err(e) => {
                        tracing::warn!("certificate rotation failed (retrying in {}s): {e}", ROTATION_RETRY.as_secs());
                        rotate_at = Instant::now() + ROTATION_RETRY;
                    }
                }
            }
            _ = tokio::time::sleep_until(next_heartbeat) => {
                heartbeat(&session_tx).await?;
                next_heartbeat = Instant::now() + heartbeat_every;
            }
            ack = acks.message() => match ack {
                Ok(Some(a)) => {
                    agent.on_ack(a.acked_seq);
                }
                Ok(None) => return Err(LinkError::Protocol("the server closed the telemetry stream".into())),
                Err(status) => return Err(status.into()),
            },
            msg = session_in.message() => match msg {
                Ok(Some(ServerMessage { kind: Some(ServerKind::Settings(s)) })) => {
                    apply_settings(agent, &s, &mut heartbeat_every);
                    next_heartbeat = Instant::now() + heartbeat_every;
                }
                Ok(Some(ServerMessage { kind: Some(ServerKind::Rotate(_)) })) => {
                    tracing::info!("the control plane asks for a key rotation now");
                    rotate_at = Instant::now();
                }
                Ok(Some(ServerMessage { kind: Some(ServerKind::Config(c)) })) => {
                    apply_config(agent, &c, &mut heartbeat_every, &session_tx).await?;
                    next_heartbeat = Instant::now() + heartbeat_every;
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(LinkError::Protocol("the server closed the session".into())),
                Err(status) => return Err(status.into()),
            },
            _ = crate::daemon::stopping(&mut signals.stop) => {
                drain(agent, &mut acks, &mut log_acks).await;
                return Ok(End::Stopping);
            }
        }
    }
}

/// Waits briefly for acks of batches already on the wire, so a clean stop
/// does not make the next start resend them.
async fn drain(
    agent: &mut Agent,
    acks: &mut tonic::Streaming<outpost_proto::v1::TelemetryAck>,
    log_acks: &mut tonic::Streaming<outpost_proto::v1::LogAck>,
) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while !agent.outbox.idle() || !agent.logs.idle() {
        let next = async {
            tokio::select! {
                a = acks.message(), if !agent.outbox.idle() => a.ok().flatten().map(|a| (true, a.acked_seq)),
                a = log_acks.message(), if !agent.logs.idle() => a.ok().flatten().map(|a| (false, a.acked_seq)),
            }
        };
        match tokio::time::timeout_at(deadline, next).await {
            Ok(Some((true, seq))) => agent.on_ack(seq),
            Ok(Some((false, seq))) => agent.on_log_ack(seq),
            _ => break,
        }
    }
    agent.write_status();
}

async fn heartbeat(tx: &mpsc::Sender<AgentMessage>) -> Result<(), LinkError> {
    let sent_at_unix_ms = crate::enroll::now_ms();
    send_session(tx, AgentKind::Heartbeat(Heartbeat { sent_at_unix_ms })).await
}

async fn send_session(tx: &mpsc::Sender<AgentMessage>, kind: AgentKind) -> Result<(), LinkError> {
    tx.send(AgentMessage { kind: Some(kind) })
        .await
        .map_err(|_| LinkError::Protocol("session stream closed".into()))
}

/// Applies a config version and tells the control plane it runs it.
async fn apply_config(
    agent: &mut Agent,
    c: &ConfigUpdate,
    heartbeat_every: &mut Duration,
    session_tx: &mpsc::Sender<AgentMessage>,
) -> Result<(), LinkError> {
    if let Some(s) = &c.settings {
        apply_settings(agent, s, heartbeat_every);
    }
    tracing::info!(version = c.version, "config applied");
    let ack = AgentMessage {
        kind: Some(AgentKind::ConfigApplied(ConfigApplied {
            version: c.version,
        })),
    };
    session_tx
        .send(ack)
        .await
        .map_err(|_| LinkError::Protocol("session stream closed".into()))
}

/// Server settings win over local ones; 0 ("not set") restores the local value.
fn apply_settings(agent: &mut Agent, s: &Settings, heartbeat_every: &mut Duration) {
    if s.telemetry_interval_secs > 0 {
        agent.set_interval(Duration::from_secs(s.telemetry_interval_secs.into()));
    } else {
        agent.set_interval(agent.local_interval());
    }
    if s.heartbeat_interval_secs > 0 {
        *heartbeat_every = Duration::from_secs(s.heartbeat_interval_secs.into());
    }
}
