//! The artifact worker: one task that carries out the [`Plan`]'s actions —
//! downloads over the session link's client (`OpenLink.client`, handed over
//! by the daemon on every connect; no link: a transfer error, retried when
//! the next link is up), installs with the [`Installer`] — and hands
//! [`ArtifactReport`]s and command output lines back to the daemon.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use outpost_proto::v1::device_service_client::DeviceServiceClient;
use outpost_proto::v1::{
    ArtifactChunk, ArtifactReport, DesiredArtifact, FetchArtifactRequest, InstalledArtifact,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::install::{Installer, Step};
use super::plan::{Action, Event, Known, Plan, Report};

pub enum ToWorker {
    Desired(Vec<DesiredArtifact>),
    /// The session link's client (on connect), or none (link down).
    Link(Option<DeviceServiceClient<Channel>>),
}

/// An output line of an artifact's command.
#[derive(Debug, Clone)]
pub struct ArtifactLine {
    pub name: String,
    pub severity: &'static str,
    pub message: String,
    pub timestamp_ms: i64,
}

/// The daemon's side of the worker.
pub struct Handle {
    pub tx: mpsc::UnboundedSender<ToWorker>,
    pub reports: mpsc::Receiver<ArtifactReport>,
    pub lines: mpsc::Receiver<ArtifactLine>,
}

/// Lines buffered towards the log spool at most (more are dropped).
const LINE_QUEUE: usize = 4096;

/// The sink an [`Installer`] writes command output to, and its receiver.
pub fn line_channel() -> (super::install::LineSink, mpsc::Receiver<ArtifactLine>) {
    let (tx, rx) = mpsc::channel(LINE_QUEUE);
    let sink: super::install::LineSink = Arc::new(move |name: &str, severity, message| {
        let _ = tx.try_send(ArtifactLine {
            name: name.to_string(),
            severity,
            message,
            timestamp_ms: crate::clock::system_ms(),
        });
    });
    (sink, rx)
}

/// Recovers interrupted installs, then runs the worker.
pub fn spawn(installer: Installer, lines: mpsc::Receiver<ArtifactLine>) -> Handle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (rtx, reports) = mpsc::channel(256);
    tokio::spawn(run(Arc::new(installer), rx, rtx));
    Handle { tx, reports, lines }
}

fn to_report(r: &Report, installer: &Installer) -> ArtifactReport {
    ArtifactReport {
        name: r.name.clone(),
        version: r.version.clone(),
        rollout_id: r.rollout_id.clone(),
        state: r.state.to_string(),
        error: r.error.clone(),
        bytes_done: r.bytes_done,
        installed: installed(installer),
    }
}

pub fn installed(installer: &Installer) -> Vec<InstalledArtifact> {
    installer
        .installed()
        .into_iter()
        .map(|(name, version)| InstalledArtifact { name, version })
        .collect()
}

async fn run(
    installer: Arc<Installer>,
    mut rx: mpsc::UnboundedReceiver<ToWorker>,
    reports: mpsc::Sender<ArtifactReport>,
) {
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    let recovered = installer.recover_all().await;
    for (name, j) in &recovered {
        let (name, j) = (name.clone(), j.clone());
        let k = known.entry(name.clone()).or_default();
        if matches!(j.step, Step::Failed | Step::RolledBack) {
            let r = Report {
                name: name.clone(),
                version: j.version.clone(),
                rollout_id: j.rollout_id.clone(),
                state: if j.step == Step::Failed {
                    "failed"
                } else {
                    "rolled_back"
                },
                error: j.error.clone().unwrap_or_default(),
                bytes_done: 0,
            };
            let _ = reports.try_send(to_report(&r, &installer));
            k.failed.push(r);
        }
    }
    for (name, version) in installer.installed() {
        known.entry(name).or_default().current = Some(version);
    }
    // A rollback that could not switch back again: `current` names a
    // release that did not prove healthy. Nothing counts as installed (the
    // installer refuses until the next start rolls back); the plan knows the
    // failure.
    for (name, j) in recovered {
        if j.step.switched() {
            let r = Report {
                name: name.clone(),
                version: j.version.clone(),
                rollout_id: j.rollout_id.clone(),
                state: "failed",
                error: j.error.clone().unwrap_or_default(),
                bytes_done: 0,
            };
            let _ = reports.try_send(to_report(&r, &installer));
            let k = known.entry(name).or_default();
            k.current = None;
            k.failed.push(r);
        }
    }
    for (name, k) in known.iter_mut() {
        k.current_sha256 = k
            .current
            .as_deref()
            .and_then(|v| installer.kept_sha256(name, v));
    }
    let mut plan = Plan::new(known, rand::random());
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let mut client: Option<DeviceServiceClient<Channel>> = None;
    let mut downloads: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        while let Some(action) = plan.poll_action() {
            match action {
                Action::Report(r) => {
                    tracing::info!(artifact = %r.name, version = %r.version, state = r.state, error = %r.error, "artifact report");
                    if reports.send(to_report(&r, &installer)).await.is_err() {
                        return;
                    }
                }
                Action::Cancel { name, version } => {
                    if let Some(h) = downloads.remove(&name) {
                        h.abort();
                    }
                    tracing::info!(artifact = %name, %version, "download cancelled (another version is wanted)");
                    let _ = std::fs::remove_file(installer.part(&name, &version));
                }
                Action::Fetch { d, download } => {
                    let task = fetch(
                        installer.clone(),
                        client.clone(),
                        d.clone(),
                        download,
                        ev_tx.clone(),
                    );
                    if let Some(old) = downloads.insert(d.name.clone(), tokio::spawn(task)) {
                        old.abort();
                    }
                }
                Action::Install(d) => {
                    downloads.remove(&d.name);
                    let (installer, ev) = (installer.clone(), ev_tx.clone());
                    tokio::spawn(async move {
                        let name = d.name.clone();
                        let stage = |state| {
                            let _ = ev.send(Event::Stage {
                                name: name.clone(),
                                state,
                            });
                        };
                        if let Ok(outcome) = installer.install(&d, stage).await {
                            let _ = ev.send(Event::Installed { name, outcome });
                        }
                    });
                }
            }
        }
        tokio::select! {
            msg = rx.recv() => match msg {
                None => return,
                Some(ToWorker::Desired(list)) => plan.handle(Event::Desired(list), Instant::now()),
                Some(ToWorker::Link(c)) => {
                    let up = c.is_some();
                    client = c;
                    if up {
                        plan.handle(Event::LinkUp, Instant::now());
                    }
                }
            },
            Some(ev) = ev_rx.recv() => plan.handle(ev, Instant::now()),
            _ = crate::driver::sleep_until(plan.poll_timeout()) => plan.handle_timeout(Instant::now()),
        }
    }
}

/// Checks (keys, signature, room), then downloads; tells the plan how it went.
async fn fetch(
    installer: Arc<Installer>,
    client: Option<DeviceServiceClient<Channel>>,
    d: DesiredArtifact,
    id: u64,
    ev: mpsc::UnboundedSender<Event>,
) {
    let name = d.name.clone();
    let checked = installer
        .check(&d)
        .and_then(|m| installer.check_room(&m).map(|()| m))
        .and_then(|m| installer.begin(&d).map(|()| m));
    let m = match checked {
        Ok(m) => m,
        Err(error) => {
            let version = d.version.clone();
            let _ = ev.send(Event::Refused {
                name,
                version,
                download: id,
                error,
            });
            return;
        }
    };
    let Some(mut client) = client else {
        let error = "no link to the control plane".to_string();
        let version = d.version.clone();
        let _ = ev.send(Event::TransferError {
            name,
            version,
            download: id,
            error,
        });
        return;
    };
    let part = installer.part(&d.name, &d.version);
    let progress = |bytes| {
        let _ = ev.send(Event::Progress {
            name: name.clone(),
            version: d.version.clone(),
            download: id,
            bytes,
        });
    };
    let r = download(&mut client, &d.name, &d.version, &part, m.size, progress).await;
    let _ = ev.send(match r {
        Ok(resumed) => Event::Downloaded {
            name,
            version: d.version.clone(),
            resumed,
            download: id,
        },
        Err(error) => Event::TransferError {
            name,
            version: d.version.clone(),
            download: id,
            error,
        },
    });
}

/// Appends the payload from the file's length on to `part` (a resumed
/// download), until it holds `size` bytes. Returns whether part of it was
/// there before.
pub async fn download(
    client: &mut DeviceServiceClient<Channel>,
    name: &str,
    version: &str,
    part: &Path,
    size: u64,
    progress: impl Fn(u64),
) -> Result<bool, String> {
    let (mut f, len) = open_part(part, size).await?;
    if len == size {
        return Ok(len > 0);
    }
    tracing::info!(artifact = %name, %version, from = len, size, "downloading");
    let stream = client
        .fetch_artifact(FetchArtifactRequest {
            name: name.to_string(),
            version: version.to_string(),
            offset: len,
        })
        .await
        .map_err(|s| fetch_error(&s))?
        .into_inner();
    append_chunks(&mut f, len, size, stream, progress)
        .await
        .map(|()| len > 0)
}

/// Opens (creates, 0600) the staging file for appending; a file longer than
/// the payload starts over. Returns it and the bytes it holds.
pub async fn open_part(part: &Path, size: u64) -> Result<(tokio::fs::File, u64), String> {
    let f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(part)
        .await
        .map_err(|e| format!("cannot open {}: {e}", part.display()))?;
    let mut len = f.metadata().await.map_err(|e| e.to_string())?.len();
    if len > size {
        f.set_len(0).await.map_err(|e| e.to_string())?;
        len = 0;
    }
    Ok((f, len))
}

/// Appends chunks that must start at `len` and continue without a gap, up
/// to `size` bytes.
pub async fn append_chunks(
    f: &mut tokio::fs::File,
    mut len: u64,
    size: u64,
    mut stream: impl futures_util::Stream<Item = Result<ArtifactChunk, tonic::Status>> + Unpin,
    progress: impl Fn(u64),
) -> Result<(), String> {
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| fetch_error(&s))?;
        if chunk.offset != len {
            return Err(format!("a chunk at {}, expected {len}", chunk.offset));
        }
        if len + chunk.data.len() as u64 > size {
            f.set_len(0).await.map_err(|e| e.to_string())?;
            return Err(format!(
                "the payload runs past its {size} bytes; starting over"
            ));
        }
        f.write_all(&chunk.data).await.map_err(|e| e.to_string())?;
        let before = len;
        len += chunk.data.len() as u64;
        if before < size / 2 && len >= size / 2 {
            // What was written reaches the file before a test's crash.
            f.flush().await.map_err(|e| e.to_string())?;
            crate::failpoint::hit(super::install::DOWNLOAD_HALF);
        }
        progress(len);
    }
    f.sync_all().await.map_err(|e| e.to_string())?;
    if len != size {
        return Err(format!("the stream ended at {len} of {size} bytes"));
    }
    Ok(())
}

fn fetch_error(s: &tonic::Status) -> String {
    let busy = s
        .metadata()
        .get(outpost_proto::reason::METADATA_KEY)
        .is_some_and(|v| v.as_bytes() == outpost_proto::reason::BUSY.as_bytes());
    if busy {
        "the control plane is busy".into()
    } else {
        format!("{:?}: {}", s.code(), s.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn chunk(offset: u64, data: &[u8]) -> Result<ArtifactChunk, tonic::Status> {
        Ok(ArtifactChunk {
            offset,
            data: data.to_vec(),
        })
    }

    #[tokio::test]
    async fn a_download_resumes_from_the_bytes_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("det@1.part");
        // A first try: cut after 4 bytes (the link dropped).
        let (mut f, len) = open_part(&part, 10).await.unwrap();
        assert_eq!(len, 0);
        let cut = stream::iter(vec![
            chunk(0, b"0123"),
            Err(tonic::Status::unavailable("link dropped")),
        ]);
        let err = append_chunks(&mut f, len, 10, cut, |_| {})
            .await
            .unwrap_err();
        assert!(err.contains("link dropped"), "{err}");
        drop(f);
        // The retry asks from the file's length and completes it.
        let (mut f, len) = open_part(&part, 10).await.unwrap();
        assert_eq!(len, 4);
        let seen = std::sync::Mutex::new(Vec::new());
        let rest = stream::iter(vec![chunk(4, b"456"), chunk(7, b"789")]);
        append_chunks(&mut f, len, 10, rest, |n| seen.lock().unwrap().push(n))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&part).unwrap(), b"0123456789");
        assert_eq!(*seen.lock().unwrap(), [7, 10]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&part).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn gaps_overruns_short_streams_and_busy_are_transfer_errors() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("det@1.part");
        let (mut f, _) = open_part(&part, 10).await.unwrap();
        let gap = stream::iter(vec![chunk(2, b"23")]);
        let err = append_chunks(&mut f, 0, 10, gap, |_| {}).await.unwrap_err();
        assert!(err.contains("a chunk at 2, expected 0"), "{err}");
        let short = stream::iter(vec![chunk(0, b"0123")]);
        let err = append_chunks(&mut f, 0, 10, short, |_| {})
            .await
            .unwrap_err();
        assert!(err.contains("ended at 4 of 10"), "{err}");
        let over = stream::iter(vec![chunk(4, b"45678901234")]);
        let err = append_chunks(&mut f, 4, 10, over, |_| {})
            .await
            .unwrap_err();
        assert!(err.contains("starting over"), "{err}");
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 0);
        let mut busy = tonic::Status::resource_exhausted("shedding");
        busy.metadata_mut().insert(
            outpost_proto::reason::METADATA_KEY,
            outpost_proto::reason::BUSY.parse().unwrap(),
        );
        let err = append_chunks(&mut f, 0, 10, stream::iter(vec![Err(busy)]), |_| {})
            .await
            .unwrap_err();
        assert_eq!(err, "the control plane is busy");
        // A staging file longer than the payload starts over.
        std::fs::write(&part, b"0123456789ABC").unwrap();
        let (_, len) = open_part(&part, 10).await.unwrap();
        assert_eq!(len, 0);
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 0);
    }
}
