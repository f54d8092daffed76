//! Opening a session over a gRPC channel: hello → session start → the
//! telemetry (and log) streams, with everything the control plane sends
//! merged into one stream of [`Inbound`] events. Shared by the agent and the
//! fleet simulator; what to do with a session is [`crate::core`]'s business.

use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use outpost_proto::v1::agent_message::Kind as AgentKind;
use outpost_proto::v1::device_service_client::DeviceServiceClient;
use outpost_proto::v1::server_message::Kind as ServerKind;
use outpost_proto::v1::{
    AgentMessage, DeviceFacts, Hello, InstalledArtifact, LogBatch, ServerMessage, SessionStart,
    TelemetryBatch,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::core::FromServer;
use crate::link::LinkError;

/// How long the control plane may take to answer the hello.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Session messages queued and not yet on the wire at most (heartbeats,
/// config acks, loss reports, artifact reports: a few a minute, a burst of
/// one report per artifact at session start).
const SESSION_QUEUE: usize = 64;

/// Room in the session queue that artifact reports leave free (for
/// heartbeats, config acks and loss reports): a burst of reports waits in the
/// core ([`crate::core::Event::ArtifactDeferred`]) rather than filling the
/// queue and being taken for a dead link.
const SESSION_RESERVE: usize = 8;

/// What arrives on an open link, in arrival order per stream.
#[derive(Debug)]
pub enum Inbound {
    TelemetryAck(u64),
    LogAck(u64),
    Server(FromServer),
    /// A stream failed or was closed: the link is gone.
    Failed(LinkError),
}

/// An open session: its start, the senders of its streams, and what comes
/// back.
pub struct OpenLink {
    pub start: SessionStart,
    /// For RPCs beside the session (key rotation).
    pub client: DeviceServiceClient<Channel>,
    session: mpsc::Sender<AgentMessage>,
    telemetry: mpsc::Sender<TelemetryBatch>,
    logs: Option<mpsc::Sender<LogBatch>>,
    pub inbound: BoxStream<'static, Inbound>,
}

impl OpenLink {
    /// Queues a session message. Fails when the queue is full (the control
    /// plane has stopped reading: the link is as good as gone) or closed.
    pub fn send_session(&self, kind: AgentKind) -> Result<(), LinkError> {
        self.session
            .try_send(AgentMessage { kind: Some(kind) })
            .map_err(|_| LinkError::Protocol("the session stream is not moving".into()))
    }

    /// Whether an artifact report may be queued now: the session queue has
    /// room beyond [`SESSION_RESERVE`].
    pub fn has_room_for_report(&self) -> bool {
        self.session.capacity() > SESSION_RESERVE
    }

    /// Queues a telemetry batch (the delivery window keeps the queue from
    /// filling while the link works).
    pub fn send_telemetry(&self, batch: TelemetryBatch) -> Result<(), LinkError> {
        self.telemetry
            .try_send(batch)
            .map_err(|_| LinkError::Protocol("the telemetry stream is not moving".into()))
    }

    pub fn send_logs(&self, batch: LogBatch) -> Result<(), LinkError> {
        match &self.logs {
            Some(tx) => tx
                .try_send(batch)
                .map_err(|_| LinkError::Protocol("the log stream is not moving".into())),
            None => Err(LinkError::Protocol("this link has no log stream".into())),
        }
    }
}

/// Opens a session on `client`: hello with `facts` and what is `installed`, the control plane's
/// start, then the telemetry stream and (with `logs`) the log stream, each
/// queueing up to `window` batches (the delivery's in-flight bound).
pub async fn open(
    mut client: DeviceServiceClient<Channel>,
    facts: DeviceFacts,
    installed: Vec<InstalledArtifact>,
    logs: bool,
    window: usize,
) -> Result<OpenLink, LinkError> {
    let (session_tx, session_rx) = mpsc::channel::<AgentMessage>(SESSION_QUEUE);
    let hello = AgentMessage {
        kind: Some(AgentKind::Hello(Hello {
            facts: Some(facts),
            installed,
        })),
    };
    session_tx
        .try_send(hello)
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
    let window = window.max(1);
    let (telemetry_tx, telemetry_rx) = mpsc::channel::<TelemetryBatch>(window);
    let acks = client
        .push_telemetry(ReceiverStream::new(telemetry_rx))
        .await?
        .into_inner();
    let mut inbound = vec![
        ended(
            session_in.filter_map(|m| {
                std::future::ready(match m {
                    Ok(m) => from_server(m).map(Inbound::Server),
                    Err(status) => Some(Inbound::Failed(status.into())),
                })
            }),
            "the server closed the session",
        ),
        ended(
            acks.map(|a| match a {
                Ok(a) => Inbound::TelemetryAck(a.acked_seq),
                Err(status) => Inbound::Failed(status.into()),
            }),
            "the server closed the telemetry stream",
        ),
    ];
    let logs_tx = if logs {
        let (tx, rx) = mpsc::channel::<LogBatch>(window);
        let log_acks = client
            .push_logs(ReceiverStream::new(rx))
            .await?
            .into_inner();
        inbound.push(ended(
            log_acks.map(|a| match a {
                Ok(a) => Inbound::LogAck(a.acked_seq),
                Err(status) => Inbound::Failed(status.into()),
            }),
            "the server closed the log stream",
        ));
        Some(tx)
    } else {
        None
    };
    Ok(OpenLink {
        start,
        client,
        session: session_tx,
        telemetry: telemetry_tx,
        logs: logs_tx,
        inbound: stream::select_all(inbound).boxed(),
    })
}

/// A stream of inbound events that says so when it ends.
fn ended(
    s: impl futures_util::Stream<Item = Inbound> + Send + 'static,
    why: &'static str,
) -> BoxStream<'static, Inbound> {
    s.chain(stream::once(async move {
        Inbound::Failed(LinkError::Protocol(why.into()))
    }))
    .boxed()
}

fn from_server(m: ServerMessage) -> Option<FromServer> {
    match m.kind? {
        ServerKind::Settings(s) => Some(FromServer::Settings(s)),
        ServerKind::Config(c) => Some(FromServer::Config(c)),
        ServerKind::Rotate(_) => Some(FromServer::RotateNow),
        ServerKind::Desired(d) => Some(FromServer::Desired(d)),
        // A second start, or a kind this agent does not know yet.
        _ => None,
    }
}
