//! Connection limits shared by both listeners (gRPC and REST): how many
//! connections a listener holds, how many one source address holds, how
//! many TLS handshakes one source address has pending, and when a
//! connection that does nothing useful is closed.
//!
//! [`ConnTable`] hands out RAII permits ([`ConnPermit`], [`HandshakePermit`]);
//! [`Activity`] counts the requests (HTTP/2 streams) in flight on one
//! connection and decides, given [`Deadlines`], when it must close;
//! [`GuardedIo`] wraps the connection's socket, holds its permit, and fails
//! its reads once the verdict says so (the HTTP server then drops it).
//! Everything but `GuardedIo` is free of sockets and tested as such.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Connections held at once (handshakes in progress included).
    pub max_connections: usize,
    /// Connections held at once from one source address (an IPv6 peer
    /// counts by its /64).
    pub max_per_ip: usize,
    /// TLS handshakes in progress at once from one source address (gRPC).
    pub max_pending_handshakes_per_ip: usize,
    /// Whether loopback peers are exempt from the per-address caps: on the
    /// control plane's own host, and usually a reverse proxy that all
    /// clients come through (their own limits belong there).
    pub exempt_loopback: bool,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds its `max_connections`.
    ListenerFull,
    /// The source address holds its `max_per_ip`.
    PerIp,
    /// The source address has `max_pending_handshakes_per_ip` handshakes in progress.
    PendingHandshakesPerIp,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::ListenerFull => "listener_full",
            Refused::PerIp => "per_ip",
            Refused::PendingHandshakesPerIp => "pending_handshakes_per_ip",
        }
    }
}

/// The metrics one table keeps current (handles from [`crate::metrics::Metrics`]).
#[derive(Clone)]
pub struct TableMetrics {
    /// The `listener` label of `refused` and `closed`.
    pub listener: &'static str,
    pub open: IntGauge,
    pub peers: IntGauge,
    pub pending_handshakes: IntGauge,
    pub refused: IntCounterVec,
    pub closed: IntCounterVec,
}

impl TableMetrics {
    /// Unregistered metrics, for tests.
    #[cfg(test)]
    pub fn detached() -> Self {
        let gauge = |n: &str| IntGauge::new(n, "test").unwrap();
        let counter = |n: &str| {
            IntCounterVec::new(prometheus::Opts::new(n, "test"), &["listener", "reason"]).unwrap()
        };
        Self {
            listener: "test",
            open: gauge("open"),
            peers: gauge("peers"),
            pending_handshakes: gauge("pending"),
            refused: counter("refused"),
            closed: counter("closed"),
        }
    }

    pub fn closed(&self, reason: &str) -> IntCounter {
        self.closed.with_label_values(&[self.listener, reason])
    }

    pub fn refused(&self, reason: &str) -> IntCounter {
        self.refused.with_label_values(&[self.listener, reason])
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PerIp {
    conns: usize,
    pending: usize,
}

#[derive(Debug, Default)]
struct TableState {
    total: usize,
    by_ip: HashMap<IpAddr, PerIp>,
    /// Connections that have not made a request yet, oldest first: the
    /// ones a full listener evicts (see [`ConnTable::admit`]).
    unproven: VecDeque<Weak<Activity>>,
}

/// The connections one listener holds, in total and per source address.
pub struct ConnTable {
    caps: Caps,
    state: Mutex<TableState>,
    metrics: TableMetrics,
    /// Cancelled when the server stops: [`ConnTable::drain`].
    draining: tokio_util::sync::CancellationToken,
}

/// The key a peer is counted under: IPv4 (also IPv4-mapped IPv6) as is,
/// other IPv6 by its /64 — one host usually has a whole /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl ConnTable {
    pub fn new(caps: Caps, metrics: TableMetrics) -> Arc<Self> {
        Arc::new(Self {
            caps,
            state: Mutex::new(TableState::default()),
            metrics,
            draining: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// The server is stopping: every connection closes once it has no
    /// request in flight (after [`DRAIN_GRACE`], for the GOAWAY and the
    /// streams' last frames to go out), instead of waiting for its peer to
    /// hang up. Clients reconnect — to the next process — at once.
    pub fn drain(&self) {
        self.draining.cancel();
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    pub fn metrics(&self) -> &TableMetrics {
        &self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, TableState> {
        // The counts stay consistent under a panic elsewhere (each update
        // is one statement), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.caps.exempt_loopback && ip.to_canonical().is_loopback()
    }

    /// Takes a connection slot for a peer at `ip`, or says why not (and
    /// counts the refusal). A full listener first evicts its oldest
    /// connection that has not made a request yet (a flood's, typically:
    /// a real client makes its first request at once), so that a new
    /// client still gets in; it refuses only when every connection has
    /// made one, or when the evicted ones have not closed yet and
    /// [`EVICTION_SLACK`] more are held already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refused> {
        let key = source_key(ip);
        let per_ip = !self.exempt(ip);
        let mut st = self.lock();
        let max = self.caps.max_connections;
        // The per-address cap first: a peer refused anyway evicts no one.
        let refused = if per_ip && st.by_ip.get(&key).map_or(0, |c| c.conns) >= self.caps.max_per_ip
        {
            Some(Refused::PerIp)
        } else if st.total >= max
            && (st.total >= max + (max / EVICTION_SLACK).max(1) || !evict_oldest(&mut st))
        {
            Some(Refused::ListenerFull)
        } else {
            None
        };
        if let Some(r) = refused {
            drop(st);
            self.metrics.refused(r.label()).inc();
            return Err(r);
        }
        st.total += 1;
        st.by_ip.entry(key).or_default().conns += 1;
        self.metrics.open.set(st.total as i64);
        self.metrics.peers.set(st.by_ip.len() as i64);
        Ok(ConnPermit {
            table: self.clone(),
            key,
            per_ip,
        })
    }

    /// Registers a connection that has not made a request yet as one a
    /// full listener may evict.
    pub fn track(&self, activity: &Arc<Activity>) {
        let mut st = self.lock();
        // Entries of connections gone or proven are otherwise dropped only
        // when a full listener evicts: on one that never fills they would
        // pile up with every connection ever accepted. Pruned when they
        // outnumber the open connections (amortised O(1) per connection).
        if st.unproven.len() > 2 * st.total + 64 {
            st.unproven.retain(|w| {
                w.upgrade()
                    .is_some_and(|a| a.request_count() == 0 && !a.evicted())
            });
        }
        st.unproven.push_back(Arc::downgrade(activity));
    }

    /// Entries kept for eviction (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().unproven.len()
    }

    /// Connections held now, and from `ip`'s source key.
    pub fn counts(&self, ip: IpAddr) -> (usize, PerIpCounts) {
        let st = self.lock();
        let c = st.by_ip.get(&source_key(ip)).copied().unwrap_or_default();
        (
            st.total,
            PerIpCounts {
                connections: c.conns,
                pending_handshakes: c.pending,
            },
        )
    }
}

/// How long a draining connection stays open after its last request
/// ended: the GOAWAY handshake (a PING round trip on slow links) and the
/// streams' last frames go out first.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// A full listener admits up to `max_connections / EVICTION_SLACK` more
/// while the connections it evicted for them close.
pub const EVICTION_SLACK: usize = 16;

/// Evicts the oldest tracked connection that has still not made a
/// request; drops the entries of connections that have (they never become
/// evictable again) or are gone. Looks at most at 256 entries.
fn evict_oldest(st: &mut TableState) -> bool {
    for _ in 0..256 {
        let Some(weak) = st.unproven.pop_front() else {
            return false;
        };
        if let Some(a) = weak.upgrade()
            && a.evict_if_unproven()
        {
            return true;
        }
    }
    false
}

/// What one source address holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerIpCounts {
    pub connections: usize,
    pub pending_handshakes: usize,
}

/// One connection's slot: released when dropped.
pub struct ConnPermit {
    table: Arc<ConnTable>,
    key: IpAddr,
    per_ip: bool,
}

impl ConnPermit {
    /// Marks a TLS handshake of this connection as in progress, unless its
    /// source address has its cap of those already (counted as refused).
    pub fn begin_handshake(&self) -> Result<HandshakePermit, Refused> {
        let t = &self.table;
        let mut st = t.lock();
        let entry = st.by_ip.entry(self.key).or_default();
        if self.per_ip && entry.pending >= t.caps.max_pending_handshakes_per_ip {
            drop(st);
            t.metrics
                .refused(Refused::PendingHandshakesPerIp.label())
                .inc();
            return Err(Refused::PendingHandshakesPerIp);
        }
        entry.pending += 1;
        t.metrics.pending_handshakes.inc();
        Ok(HandshakePermit {
            table: t.clone(),
            key: self.key,
        })
    }

    pub fn table(&self) -> &Arc<ConnTable> {
        &self.table
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let t = &self.table;
        let mut st = t.lock();
        st.total = st.total.saturating_sub(1);
        if let Some(c) = st.by_ip.get_mut(&self.key) {
            c.conns = c.conns.saturating_sub(1);
            if c.conns == 0 && c.pending == 0 {
                st.by_ip.remove(&self.key);
            }
        }
        t.metrics.open.set(st.total as i64);
        t.metrics.peers.set(st.by_ip.len() as i64);
    }
}

/// A TLS handshake in progress: released when dropped.
pub struct HandshakePermit {
    table: Arc<ConnTable>,
    key: IpAddr,
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let t = &self.table;
        let mut st = t.lock();
        if let Some(c) = st.by_ip.get_mut(&self.key) {
            c.pending = c.pending.saturating_sub(1);
            if c.conns == 0 && c.pending == 0 {
                st.by_ip.remove(&self.key);
            }
        }
        t.metrics.pending_handshakes.dec();
    }
}

/// When a connection is closed for doing nothing useful.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From accept (gRPC: the end of the TLS handshake) to the first
    /// request (gRPC: the first HTTP/2 stream, so also the preface).
    pub first_request: Duration,
    /// How long a connection may have no request in flight after its last.
    pub idle: Duration,
    /// The longest a connection may live whatever it does (connections
    /// without a client certificate: enrollment only).
    pub lifetime: Option<Duration>,
}

/// Why a connection was closed by its deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    FirstRequestTimeout,
    IdleTimeout,
    Lifetime,
    /// A full listener made room for a new connection.
    Evicted,
    /// The peer read nothing of what was written for the idle timeout.
    WriteStall,
    /// The server is stopping and the connection has nothing in flight.
    Shutdown,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::FirstRequestTimeout => "first_request_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Lifetime => "unauthenticated_lifetime",
            CloseReason::Evicted => "evicted",
            CloseReason::WriteStall => "write_stall",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// The requests in flight on one connection and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Requests begun so far, with [`EVICTED`] set once evicted.
    requests: AtomicU64,
    /// Milliseconds after `start` at which `in_flight` last fell to 0.
    idle_since_ms: AtomicU64,
    /// The connection's task, woken on eviction.
    waker: AtomicWaker,
}

impl Activity {
    pub fn new(start: Instant) -> Arc<Self> {
        Arc::new(Self {
            start,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            waker: AtomicWaker::new(),
        })
    }

    /// Marks the connection evicted unless it has made a request (one
    /// atomic step with [`Activity::begin`]'s count); whether it did.
    fn evict_if_unproven(&self) -> bool {
        let done = self
            .requests
            .compare_exchange(0, EVICTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if done {
            self.waker.wake();
        }
        done
    }

    fn evicted(&self) -> bool {
        self.requests.load(Ordering::SeqCst) & EVICTED != 0
    }

    /// Requests begun so far.
    fn request_count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst) & !EVICTED
    }

    /// A request (stream) starts; it is in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// How long nothing has been in flight (`None` while something is).
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = if self.request_count() == 0 {
            self.start
        } else {
            self.start + Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst))
        };
        Some(now.saturating_duration_since(since))
    }

    /// `Ok(when to look again)` or `Err(why it must close now)`.
    pub fn verdict(&self, now: Instant, d: &Deadlines) -> Result<Instant, CloseReason> {
        if self.evicted() {
            return Err(CloseReason::Evicted);
        }
        let age = now.saturating_duration_since(self.start);
        let end_of_life = d.lifetime.map(|l| self.start + l);
        if let Some(l) = d.lifetime
            && age >= l
        {
            return Err(CloseReason::Lifetime);
        }
        let next = if self.in_flight.load(Ordering::SeqCst) > 0 {
            now + d.idle
        } else {
            let (since, limit, reason) = if self.request_count() == 0 {
                (
                    self.start,
                    d.first_request,
                    CloseReason::FirstRequestTimeout,
                )
            } else {
                let ms = self.idle_since_ms.load(Ordering::SeqCst);
                (
                    self.start + Duration::from_millis(ms),
                    d.idle,
                    CloseReason::IdleTimeout,
                )
            };
            if now.saturating_duration_since(since) >= limit {
                return Err(reason);
            }
            since + limit
        };
        Ok(end_of_life.map_or(next, |e| e.min(next)))
    }
}

/// The bit of [`Activity`]'s request count that marks an eviction.
const EVICTED: u64 = 1 << 63;

/// A request in flight (see [`Activity::begin`]).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // Recorded before the count falls, so a verdict that sees 0 in
        // flight sees this time (or a later one).
        let ms = Instant::now()
            .saturating_duration_since(a.start)
            .as_millis();
        a.idle_since_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::SeqCst);
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until it
/// has been sent or dropped.
pub struct TrackedBody<B> {
    inner: B,
    _in_flight: Option<InFlight>,
}

impl<B> TrackedBody<B> {
    pub fn new(inner: B, in_flight: Option<InFlight>) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket with its permit and deadlines: once
/// [`Activity::verdict`] says close, every read and write fails, so the
/// HTTP server ends the connection (and the permit is released with it).
pub struct GuardedIo<IO> {
    io: IO,
    activity: Arc<Activity>,
    deadlines: Deadlines,
    timer: Pin<Box<Sleep>>,
    /// Armed while a write waits on the peer: a request stays "in flight"
    /// until its response is written, so a peer that never reads would
    /// otherwise hold its connection (and a slot) forever.
    stall: Option<Pin<Box<Sleep>>>,
    closed: Option<CloseReason>,
    metrics: TableMetrics,
    /// Resolves when the listener drains ([`ConnTable::drain`]).
    draining: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    drain_seen: bool,
    _permit: ConnPermit,
    _registration: Option<Box<dyn Send + Sync>>,
}

impl<IO> GuardedIo<IO> {
    /// `registration` is dropped with the connection (e.g. an entry that
    /// lets requests find `activity`).
    pub fn new(
        io: IO,
        permit: ConnPermit,
        activity: Arc<Activity>,
        deadlines: Deadlines,
        registration: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        // Whatever comes first: the first request's deadline or the end of
        // life (a verdict on a fresh connection is never "close").
        let first = activity
            .verdict(activity.start, &deadlines)
            .unwrap_or(activity.start);
        let metrics = permit.table().metrics().clone();
        permit.table().track(&activity);
        let draining = Box::pin(permit.table().draining.clone().cancelled_owned());
        Self {
            draining,
            drain_seen: false,
            io,
            activity,
            deadlines,
            timer: Box::pin(tokio::time::sleep_until(first)),
            stall: None,
            closed: None,
            metrics,
            _permit: permit,
            _registration: registration,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        loop {
            if let Some(reason) = self.closed {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    reason.label(),
                ));
            }
            self.activity.waker.register(cx.waker());
            if !self.drain_seen && self.draining.as_mut().poll(cx).is_ready() {
                self.drain_seen = true;
                self.timer.as_mut().reset(Instant::now() + DRAIN_GRACE);
            }
            let evicted = self.activity.evicted();
            if !evicted && self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let now = Instant::now();
            // Draining: closed once nothing has been in flight for the
            // grace (a stream's last frames are written after its body
            // ends, so not the instant the count falls to 0).
            let verdict = if self.drain_seen && self.activity.idle_for(now) >= Some(DRAIN_GRACE) {
                Err(CloseReason::Shutdown)
            } else {
                self.activity.verdict(now, &self.deadlines)
            };
            match verdict {
                // Draining, a request still in flight: look again soon.
                Ok(next) if self.drain_seen => {
                    self.timer.as_mut().reset(next.min(now + DRAIN_GRACE))
                }
                Ok(next) => self.timer.as_mut().reset(next),
                Err(reason) => {
                    tracing::debug!(reason = reason.label(), "closing connection");
                    self.metrics.closed(reason.label()).inc();
                    self.closed = Some(reason);
                }
            }
        }
    }
}

impl<IO> GuardedIo<IO> {
    /// Passes a write's outcome on, closing the connection when writes
    /// have waited on the peer for the idle timeout.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        res: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if res.is_ready() {
            self.stall = None;
            return res;
        }
        let idle = self.deadlines.idle;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if stall.as_mut().poll(cx).is_ready() {
            let reason = CloseReason::WriteStall;
            tracing::debug!(reason = reason.label(), "closing connection");
            self.metrics.closed(reason.label()).inc();
            self.closed = Some(reason);
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                reason.label(),
            )));
        }
        Poll::Pending
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for GuardedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for GuardedIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        let res = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch_write(cx, res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        let res = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch_write(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let res = Pin::new(&mut self.io).poll_flush(cx);
        self.watch_write(cx, res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Raises the soft open-file limit to the hard one and returns both
/// (after the change), or `None` where the platform has no such limit.
pub fn raise_nofile_limit() -> Option<(u64, u64)> {
    let (soft, hard) = rlimit::Resource::NOFILE.get().ok()?;
    if soft < hard
        && let Err(e) = rlimit::Resource::NOFILE.set(hard, hard)
    {
        tracing::warn!(soft, hard, "cannot raise the open-file limit: {e}");
    }
    rlimit::Resource::NOFILE.get().ok()
}

/// File descriptors kept for everything but connections (database, CA
/// files, artifact and log files, outgoing connections).
pub const RESERVED_FDS: u64 = 512;

/// Lowers the two listeners' connection caps so that together they stay
/// below the open-file limit `nofile` (REST keeps at most a quarter of
/// what is left after [`RESERVED_FDS`]). Returns the (gRPC, REST) caps.
pub fn fit_to_fd_limit(grpc: usize, rest: usize, nofile: u64) -> (usize, usize) {
    let avail = usize::try_from(nofile.saturating_sub(RESERVED_FDS))
        .unwrap_or(usize::MAX)
        .max(2);
    let rest = rest.min((avail / 4).max(1));
    let grpc = grpc.min(avail - rest).max(1);
    (grpc, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(max: usize, per_ip: usize, pending: usize) -> Caps {
        Caps {
            max_connections: max,
            max_per_ip: per_ip,
            max_pending_handshakes_per_ip: pending,
            exempt_loopback: false,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_listener_closes_each_connection_once_nothing_is_in_flight() {
        use tokio::io::AsyncReadExt;
        let m = TableMetrics::detached();
        let t = ConnTable::new(caps(8, 8, 8), m.clone());
        let d = Deadlines {
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            lifetime: None,
        };
        let conn = || {
            let (server, client) = tokio::io::duplex(64);
            let activity = Activity::new(Instant::now());
            let permit = t.admit(ip("10.0.0.1")).unwrap();
            let io = GuardedIo::new(server, permit, activity.clone(), d, None);
            (io, client, activity)
        };
        let (mut idle, _c1, a1) = conn();
        let (mut busy, _c2, a2) = conn();
        drop(a1.begin()); // a request made and finished
        let stream = a2.begin(); // a stream still open
        let mut buf = [0u8; 8];
        let still_open = |r: Result<std::io::Result<usize>, _>| r.is_err();
        assert!(still_open(
            tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await
        ));
        t.drain();
        let started = Instant::now();
        let err = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(err.to_string(), "shutdown");
        assert_eq!(started.elapsed(), DRAIN_GRACE, "closed after the grace");
        assert_eq!(m.closed("shutdown").get(), 1);
        // The busy one stays while its stream lives, and closes after.
        assert!(still_open(
            tokio::time::timeout(Duration::from_secs(3), busy.read(&mut buf)).await
        ));
        drop(stream);
        let err = busy.read(&mut buf).await.unwrap_err();
        assert_eq!(err.to_string(), "shutdown");
        assert_eq!(m.closed("shutdown").get(), 2);
    }

    #[test]
    fn the_listener_cap_and_the_per_ip_cap_refuse_and_permits_give_back() {
        let m = TableMetrics::detached();
        let t = ConnTable::new(caps(3, 2, 8), m.clone());
        let a1 = t.admit(ip("10.0.0.1")).unwrap();
        let _a2 = t.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(t.admit(ip("10.0.0.1")).err(), Some(Refused::PerIp));
        let _b1 = t.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(t.admit(ip("10.0.0.3")).err(), Some(Refused::ListenerFull));
        assert_eq!(m.open.get(), 3);
        assert_eq!(m.peers.get(), 2);
        assert_eq!(m.refused("per_ip").get(), 1);
        assert_eq!(m.refused("listener_full").get(), 1);
        drop(a1);
        assert_eq!(m.open.get(), 2);
        let _c = t.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(t.counts(ip("10.0.0.1")).0, 3);
        assert_eq!(t.counts(ip("10.0.0.1")).1.connections, 1);
    }

    /// Found in review: a peer refused by its address's cap still evicted
    /// someone from a full listener.
    #[test]
    fn a_peer_refused_by_its_cap_evicts_no_one() {
        let t = ConnTable::new(caps(2, 1, 8), TableMetrics::detached());
        let now = Instant::now();
        let d = Deadlines {
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            lifetime: None,
        };
        let _pa = t.admit(ip("10.0.0.1")).unwrap();
        let _pb = t.admit(ip("10.0.0.2")).unwrap();
        let (a, b) = (Activity::new(now), Activity::new(now));
        t.track(&a);
        t.track(&b);
        assert_eq!(t.admit(ip("10.0.0.1")).err(), Some(Refused::PerIp));
        assert!(a.verdict(now, &d).is_ok() && b.verdict(now, &d).is_ok());
        // Another address still gets in by evicting the oldest.
        let _pc = t.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(a.verdict(now, &d), Err(CloseReason::Evicted));
    }

    /// Found in review: every accepted connection left its entry behind on
    /// a listener that never filled.
    #[test]
    fn entries_of_closed_connections_do_not_pile_up() {
        let t = ConnTable::new(caps(1000, 1000, 8), TableMetrics::detached());
        let now = Instant::now();
        for i in 0..10_000u32 {
            let _permit = t
                .admit(ip(&format!("10.0.{}.{}", i / 250, i % 250)))
                .unwrap();
            let a = Activity::new(now);
            t.track(&a);
            if i % 2 == 0 {
                drop(a.begin()); // proven: never evictable again
            }
        }
        assert!(t.tracked() <= 64 + 2, "{} entries kept", t.tracked());
        // Live, unproven connections stay evictable.
        let live: Vec<_> = (0..100).map(|_| Activity::new(now)).collect();
        let _permits: Vec<_> = (0..100)
            .map(|i| t.admit(ip(&format!("10.1.0.{i}"))).unwrap())
            .collect();
        for a in &live {
            t.track(a);
        }
        for _ in 0..1000 {
            let gone = Activity::new(now);
            t.track(&gone);
        }
        assert!(
            t.tracked() >= 100 && t.tracked() <= 2 * 100 + 64 + 1,
            "{}",
            t.tracked()
        );
    }

    #[test]
    fn a_full_listener_evicts_its_oldest_connection_without_a_request() {
        let t = ConnTable::new(caps(3, 10, 8), TableMetrics::detached());
        let now = Instant::now();
        let d = Deadlines {
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            lifetime: None,
        };
        let (p1, p2, p3) = (
            t.admit(ip("10.0.0.1")).unwrap(),
            t.admit(ip("10.0.0.2")).unwrap(),
            t.admit(ip("10.0.0.3")).unwrap(),
        );
        let (a1, a2, a3) = (Activity::new(now), Activity::new(now), Activity::new(now));
        for a in [&a1, &a2, &a3] {
            t.track(a);
        }
        // The oldest has made a request: the next oldest goes.
        let _busy = a1.begin();
        let p4 = t.admit(ip("10.0.0.4")).unwrap();
        assert_eq!(a1.verdict(now, &d), Ok(now + Duration::from_secs(60)));
        assert_eq!(a2.verdict(now, &d), Err(CloseReason::Evicted));
        assert!(a3.verdict(now, &d).is_ok());
        // Until it closes the listener holds one more than its cap; the
        // slack (at least 1) is used up, so the next is refused.
        assert_eq!(t.admit(ip("10.0.0.5")).err(), Some(Refused::ListenerFull));
        drop(p2);
        let _p5 = t.admit(ip("10.0.0.5")).unwrap();
        assert_eq!(a3.verdict(now, &d), Err(CloseReason::Evicted));
        // Nothing left to evict: refused.
        drop((p1, p3, p4));
        let t = ConnTable::new(caps(1, 10, 8), TableMetrics::detached());
        let _p = t.admit(ip("10.0.0.1")).unwrap();
        let a = Activity::new(now);
        t.track(&a);
        let _g = a.begin();
        assert_eq!(t.admit(ip("10.0.0.2")).err(), Some(Refused::ListenerFull));
    }

    #[test]
    fn pending_handshakes_are_capped_per_ip() {
        let t = ConnTable::new(caps(100, 100, 2), TableMetrics::detached());
        let c: Vec<_> = (0..4).map(|_| t.admit(ip("10.0.0.1")).unwrap()).collect();
        let h1 = c[0].begin_handshake().unwrap();
        let _h2 = c[1].begin_handshake().unwrap();
        assert_eq!(
            c[2].begin_handshake().err(),
            Some(Refused::PendingHandshakesPerIp)
        );
        let other = t.admit(ip("10.0.0.2")).unwrap();
        let _h3 = other.begin_handshake().unwrap();
        assert_eq!(t.metrics().pending_handshakes.get(), 3);
        drop(h1);
        let _h4 = c[3].begin_handshake().unwrap();
        assert_eq!(t.counts(ip("10.0.0.1")).1.pending_handshakes, 2);
    }

    #[test]
    fn ipv6_peers_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let t = ConnTable::new(caps(100, 1, 8), TableMetrics::detached());
        let _a = t.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(t.admit(ip("2001:db8:1:2::99")).err(), Some(Refused::PerIp));
        let _b = t.admit(ip("2001:db8:1:3::1")).unwrap();
        let _c = t.admit(ip("192.0.2.7")).unwrap();
        assert_eq!(t.admit(ip("::ffff:192.0.2.7")).err(), Some(Refused::PerIp));
    }

    #[test]
    fn loopback_is_exempt_from_per_ip_caps_only_when_configured() {
        let mut c = caps(4, 1, 1);
        c.exempt_loopback = true;
        let t = ConnTable::new(c, TableMetrics::detached());
        let held: Vec<_> = (0..4).map(|_| t.admit(ip("127.0.0.1")).unwrap()).collect();
        let _hs: Vec<_> = held.iter().map(|p| p.begin_handshake().unwrap()).collect();
        assert_eq!(t.admit(ip("::1")).err(), Some(Refused::ListenerFull));
        let t = ConnTable::new(caps(4, 1, 1), TableMetrics::detached());
        let _a = t.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(t.admit(ip("127.0.0.1")).err(), Some(Refused::PerIp));
    }

    #[test]
    fn verdicts_follow_first_request_idle_and_lifetime() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let d = Deadlines {
            first_request: s(5),
            idle: s(30),
            lifetime: None,
        };
        let a = Activity::new(t0);
        assert_eq!(a.verdict(t0 + s(1), &d), Ok(t0 + s(5)));
        assert_eq!(
            a.verdict(t0 + s(5), &d),
            Err(CloseReason::FirstRequestTimeout)
        );
        let g = a.begin();
        assert_eq!(a.verdict(t0 + s(100), &d), Ok(t0 + s(130)));
        drop(g);
        // Idle from the moment the request ended (now, in real time).
        let ended = Instant::now();
        let next = a.verdict(ended, &d).unwrap();
        assert!(next >= ended + s(29) && next <= ended + s(31), "{next:?}");
        assert_eq!(a.verdict(ended + s(31), &d), Err(CloseReason::IdleTimeout));
        let d = Deadlines {
            lifetime: Some(s(60)),
            ..d
        };
        let a = Activity::new(t0);
        let _g = a.begin();
        assert_eq!(a.verdict(t0 + s(50), &d), Ok(t0 + s(60)));
        assert_eq!(a.verdict(t0 + s(60), &d), Err(CloseReason::Lifetime));
    }

    #[test]
    fn caps_fit_below_the_fd_limit() {
        assert_eq!(fit_to_fd_limit(50_000, 4096, 1 << 20), (50_000, 4096));
        let (g, r) = fit_to_fd_limit(50_000, 4096, 1024);
        assert_eq!((g, r), (384, 128));
        assert!(g + r + RESERVED_FDS as usize <= 1024);
        assert_eq!(fit_to_fd_limit(50_000, 4096, 10), (1, 1));
    }
}
