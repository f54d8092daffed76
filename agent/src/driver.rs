//! The one loop that owns the I/O around a [`Core`]: the link (which may be
//! absent), the connection attempt and the rotation in progress, the timer,
//! and the host's own inputs. It feeds the core events with the time they
//! happened and carries out the core's outputs; every decision is the core's.
//!
//! A [`Host`] is what differs between the agent (collector, disk spools, log
//! sources, state directory, status file; `daemon.rs`) and the fleet
//! simulator (synthetic samples, in-memory delivery, counters).

use std::future::Future;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use outpost_proto::v1::agent_message::Kind as AgentKind;
use outpost_proto::v1::device_service_client::DeviceServiceClient;
use outpost_proto::v1::{ConfigApplied, Heartbeat, SessionStart};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::core::{Core, Delivery, Event, Exit, Failure, Output, Started};
use crate::link::{self, LinkError};
use crate::session::{Inbound, OpenLink};

/// What the driver needs from the program around it.
pub trait Host {
    type Delivery: Delivery;
    /// The host's own inputs (log lines, a reloaded configuration, stop).
    type Input;
    type Error;

    /// Starts a connection attempt: connect, then [`crate::session::open`].
    fn connect(&mut self) -> BoxFuture<'static, Result<OpenLink, LinkError>>;
    /// What a session start means for the core (the host may persist the
    /// control plane's time first).
    fn started(&mut self, start: &SessionStart) -> Started;
    /// Starts a key rotation over `client`, or over a connection of its own.
    fn rotate(
        &mut self,
        client: Option<DeviceServiceClient<Channel>>,
    ) -> BoxFuture<'static, Result<(), String>>;
    /// Reads a sample into the delivery's spool.
    fn take_sample(&mut self, delivery: &mut Self::Delivery);
    /// Waits for the host's next input (cancel-safe).
    fn next_input(&mut self) -> impl Future<Output = Self::Input> + Send;
    /// Handles an input, usually by spooling and telling the core.
    fn on_input(&mut self, input: Self::Input, core: &mut Core<Self::Delivery>, now: Instant);
    /// Carries out the outputs that touch only the host (status, identity).
    fn on_output(&mut self, output: &Output, delivery: &Self::Delivery) -> Result<(), Self::Error>;
    /// A session link opened (its client, for RPCs beside the session such
    /// as artifact downloads) or closed (`None`).
    fn link_changed(&mut self, _client: Option<&DeviceServiceClient<Channel>>) {}
    /// Housekeeping of every turn (watchdog stamp, spool sync)…
    fn chores(&mut self, _delivery: &mut Self::Delivery) {}
    /// …and when a turn is needed for it at the latest.
    fn next_chore(&self, _delivery: &Self::Delivery) -> Option<Instant> {
        None
    }
}

/// What a failed link means for the core.
pub fn classify(e: &LinkError) -> Failure {
    if e.reason() == Some(outpost_proto::reason::EXPIRED) {
        Failure::Expired
    } else if link::is_expired_beyond_grace(e) {
        Failure::ExpiredBeyondGrace
    } else if e.reason() == Some(outpost_proto::reason::DECOMMISSIONED) {
        Failure::Decommissioned
    } else {
        Failure::Transient
    }
}

fn failed(e: &LinkError) -> Event {
    Event::LinkFailed {
        failure: classify(e),
        message: e.to_string(),
    }
}

/// Runs `core` until it exits. `first`: a link already open, used for the
/// core's first connection (the simulator opens every device's link
/// before any of them streams).
pub async fn drive<H: Host>(
    core: &mut Core<H::Delivery>,
    host: &mut H,
    mut first: Option<OpenLink>,
) -> Result<Exit, H::Error> {
    let mut link: Option<OpenLink> = None;
    let mut connecting: Option<BoxFuture<'static, Result<OpenLink, LinkError>>> = None;
    let mut rotating: Option<BoxFuture<'static, Result<(), String>>> = None;
    // One timer, moved when the deadline moves (not a new one per turn: a
    // simulated fleet turns this loop hundreds of thousands of times a second).
    let timer = tokio::time::sleep(std::time::Duration::ZERO);
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        core.handle_timeout(Instant::now());
        while let Some(out) = core.poll_output() {
            let now = Instant::now();
            match out {
                Output::Connect => match first.take() {
                    Some(l) => {
                        let started = host.started(&l.start);
                        host.link_changed(Some(&l.client));
                        link = Some(l);
                        core.handle(Event::Connected(started), now);
                    }
                    None => connecting = Some(host.connect()),
                },
                Output::Disconnect => {
                    if link.take().is_some() {
                        host.link_changed(None);
                    }
                    connecting = None;
                }
                Output::SendTelemetry(batch) => {
                    if let Some(l) = &link
                        && let Err(e) = l.send_telemetry(batch)
                    {
                        core.handle(failed(&e), now);
                    }
                }
                Output::SendLogs(batch) => {
                    if let Some(l) = &link
                        && let Err(e) = l.send_logs(batch)
                    {
                        core.handle(failed(&e), now);
                    }
                }
                Output::Heartbeat => {
                    let sent_at_unix_ms = crate::clock::system_ms();
                    send_session(
                        core,
                        &link,
                        AgentKind::Heartbeat(Heartbeat { sent_at_unix_ms }),
                    );
                }
                Output::ConfigApplied(version) => {
                    send_session(
                        core,
                        &link,
                        AgentKind::ConfigApplied(ConfigApplied { version }),
                    );
                }
                Output::LossReport(report) => {
                    send_session(core, &link, AgentKind::Spool(report));
                }
                Output::SendArtifact(report) => match &link {
                    // A full queue of our own reports is no dead link: the
                    // core sends the report again when there is room.
                    Some(l) if !l.has_room_for_report() => {
                        core.handle(Event::ArtifactDeferred(report.name), now);
                    }
                    _ => send_session(core, &link, AgentKind::Artifact(report)),
                },
                Output::TakeSample => {
                    host.take_sample(core.delivery_mut());
                    core.handle(Event::Spooled, now);
                }
                Output::Rotate { new_link } => {
                    let client = if new_link {
                        None
                    } else {
                        link.as_ref().map(|l| l.client.clone())
                    };
                    rotating = Some(host.rotate(client));
                }
                Output::Exit(exit) => {
                    host.on_output(&Output::Exit(exit), core.delivery())?;
                    return Ok(exit);
                }
                other => host.on_output(&other, core.delivery())?,
            }
        }
        host.chores(core.delivery_mut());
        let wake = [core.poll_timeout(), host.next_chore(core.delivery())]
            .into_iter()
            .flatten()
            .min();
        if wake != armed {
            if let Some(at) = wake {
                timer.as_mut().reset(at);
            }
            armed = wake;
        }
        tokio::select! {
            _ = &mut timer, if armed.is_some() => armed = None,
            r = optional(&mut connecting) => {
                connecting = None;
                let now = Instant::now();
                match r {
                    Ok(l) => {
                        let started = host.started(&l.start);
                        host.link_changed(Some(&l.client));
                        link = Some(l);
                        core.handle(Event::Connected(started), now);
                    }
                    Err(e) => core.handle(failed(&e), now),
                }
            }
            ev = next_inbound(&mut link) => {
                let now = Instant::now();
                match ev {
                    Inbound::TelemetryAck(seq) => core.handle(Event::TelemetryAck(seq), now),
                    Inbound::LogAck(seq) => core.handle(Event::LogAck(seq), now),
                    Inbound::Server(m) => core.handle(Event::Server(m), now),
                    Inbound::Failed(e) => {
                        link = None;
                        host.link_changed(None);
                        core.handle(failed(&e), now);
                    }
                }
            }
            r = optional(&mut rotating) => {
                rotating = None;
                core.handle(Event::Rotated(r), Instant::now());
            }
            input = host.next_input() => host.on_input(input, core, Instant::now()),
        }
    }
}

fn send_session<D: Delivery>(core: &mut Core<D>, link: &Option<OpenLink>, kind: AgentKind) {
    if let Some(l) = link
        && let Err(e) = l.send_session(kind)
    {
        core.handle(failed(&e), Instant::now());
    }
}

/// Sleeps until `at` (forever when `None`).
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The future's output; pending forever while there is none.
async fn optional<T>(f: &mut Option<BoxFuture<'static, T>>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The link's next inbound event; pending forever without a link.
async fn next_inbound(link: &mut Option<OpenLink>) -> Inbound {
    match link {
        Some(l) => match l.inbound.next().await {
            Some(ev) => ev,
            // Every stream ends with a Failed event first; this is only
            // reached if the merged stream is polled past it.
            None => Inbound::Failed(LinkError::Protocol("the link closed".into())),
        },
        None => std::future::pending().await,
    }
}
