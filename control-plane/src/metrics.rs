//! The control plane's own Prometheus metrics (ingest, acks, store timings),
//! and the exposition of `/metrics`: these plus the latest value of every
//! device in node_exporter-like names (see `rest/metrics.rs`).
//!
//! Text format 0.0.4 through the `prometheus` crate's encoder.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

/// Ack latency buckets: from a sub-millisecond commit to a congested store.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric the control plane keeps about itself. Cloning a metric
/// shares it (the crate's metrics are reference counted), so a scrape
/// registers clones into a per-scrape registry.
#[derive(Clone)]
pub struct Metrics {
    /// Telemetry samples newly stored (retried duplicates not counted).
    pub samples_ingested: IntCounter,
    /// Log records newly stored.
    pub logs_ingested: IntCounter,
    /// Batches refused or failed, by stream kind.
    pub batches_failed: IntCounterVec,
    /// From a batch's arrival to its ack being sent, by stream kind.
    pub ack_latency: HistogramVec,
    /// Store write timings, by operation.
    pub store_seconds: HistogramVec,
    /// Batches per telemetry group commit.
    pub commit_group_batches: Histogram,
    /// Audit entries by result: stored, failed (store error), rate_limited
    /// (unauthenticated attempts over the limit).
    pub audit_entries: IntCounterVec,
    /// Artifact payload bytes sent to devices (FetchArtifact).
    pub artifact_bytes_served: IntCounter,
    /// FetchArtifact calls refused because every download slot was taken.
    pub artifact_downloads_refused_busy: IntCounter,
    /// FetchArtifact streams in progress on this replica.
    pub artifact_downloads_in_progress: IntGauge,
    /// Connections held, by listener (grpc, rest).
    pub connections_open: IntGaugeVec,
    /// Distinct source addresses (IPv6: /64s) holding connections, by listener.
    pub connection_peers: IntGaugeVec,
    /// The caps, by listener and scope (total, per_ip, pending_handshakes_per_ip).
    pub connection_limits: IntGaugeVec,
    /// Connections refused at accept, by listener and reason.
    pub connections_refused: IntCounterVec,
    /// Connections closed by a deadline, by listener and reason.
    pub connections_closed: IntCounterVec,
    /// TLS handshakes in progress (gRPC).
    pub tls_handshakes_pending: IntGauge,
    /// The process' open-file limit (soft, hard).
    pub open_files_limit: IntGaugeVec,
    /// Devices whose telemetry rollups are still being filled from raw
    /// history older than the tiers (after an upgrade), as this replica's
    /// backfill last counted.
    pub rollup_backfill_pending: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            samples_ingested: IntCounter::new(
                "outpost_samples_ingested_total",
                "Telemetry samples stored (each device seq counted once).",
            )?,
            logs_ingested: IntCounter::new(
                "outpost_log_records_ingested_total",
                "Log records stored (each device seq counted once).",
            )?,
            batches_failed: IntCounterVec::new(
                Opts::new(
                    "outpost_batches_failed_total",
                    "Telemetry/log batches answered with an error instead of an ack.",
                ),
                &["stream"],
            )?,
            ack_latency: HistogramVec::new(
                HistogramOpts::new(
                    "outpost_ack_latency_seconds",
                    "Time from a batch's arrival to its ack (the durable write included).",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["stream"],
            )?,
            store_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "outpost_store_write_seconds",
                    "Duration of store writes: op=telemetry_commit, enrollment_commit (group commits), logs_insert.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["op"],
            )?,
            commit_group_batches: Histogram::with_opts(
                HistogramOpts::new(
                    "outpost_commit_group_batches",
                    "Device batches stored per telemetry group commit.",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
                ]),
            )?,
            audit_entries: IntCounterVec::new(
                Opts::new(
                    "outpost_audit_entries_total",
                    "Audit entries of mutating REST calls: result=stored, failed (store error; the request still succeeded), rate_limited (unauthenticated attempts over the limit), unknown_workspace (unauthenticated attempts on a workspace that does not exist; not stored).",
                ),
                &["result"],
            )?,
            artifact_bytes_served: IntCounter::new(
                "outpost_artifact_bytes_served_total",
                "Artifact payload bytes sent to devices (FetchArtifact).",
            )?,
            artifact_downloads_refused_busy: IntCounter::new(
                "outpost_artifact_downloads_refused_busy_total",
                "Artifact downloads refused with RESOURCE_EXHAUSTED (busy): --max-artifact-downloads were in progress.",
            )?,
            artifact_downloads_in_progress: IntGauge::new(
                "outpost_artifact_downloads_in_progress",
                "Artifact downloads (FetchArtifact streams) in progress on this replica.",
            )?,
            connections_open: IntGaugeVec::new(
                Opts::new(
                    "outpost_connections_open",
                    "Connections held by a listener (listener=grpc, rest), TLS handshakes in progress included.",
                ),
                &["listener"],
            )?,
            connection_peers: IntGaugeVec::new(
                Opts::new(
                    "outpost_connection_peers",
                    "Distinct source addresses (IPv6 by /64) holding connections or handshakes, by listener.",
                ),
                &["listener"],
            )?,
            connection_limits: IntGaugeVec::new(
                Opts::new(
                    "outpost_connection_limit",
                    "Connection caps in force: scope=total (the listener), per_ip, pending_handshakes_per_ip (gRPC TLS handshakes).",
                ),
                &["listener", "scope"],
            )?,
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "outpost_connections_refused_total",
                    "Connections refused at accept: reason=listener_full, per_ip, pending_handshakes_per_ip.",
                ),
                &["listener", "reason"],
            )?,
            connections_closed: IntCounterVec::new(
                Opts::new(
                    "outpost_connections_closed_total",
                    "Connections the control plane closed: reason=client_hello_timeout, handshake_timeout, first_request_timeout, idle_timeout, unauthenticated_lifetime, evicted (by a full listener, to admit a newer connection), write_stall, shutdown.",
                ),
                &["listener", "reason"],
            )?,
            tls_handshakes_pending: IntGauge::new(
                "outpost_tls_handshakes_pending",
                "TLS handshakes in progress on the device (gRPC) listener.",
            )?,
            open_files_limit: IntGaugeVec::new(
                Opts::new(
                    "outpost_open_files_limit",
                    "The process' open-file limit (RLIMIT_NOFILE; kind=soft, hard), the soft one raised to the hard one at start.",
                ),
                &["kind"],
            )?,
            rollup_backfill_pending: IntGauge::new(
                "outpost_telemetry_rollup_backfill_pending_devices",
                "Devices whose 1m/1h telemetry rollups are still being filled from raw history that predates them (after an upgrade); 0 once done. New samples are rolled up in the commit that stores them, so the tiers otherwise never lag.",
            )?,
        })
    }

    /// The collectors to register in a scrape's registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        let mut out: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.samples_ingested.clone()),
            Box::new(self.logs_ingested.clone()),
            Box::new(self.batches_failed.clone()),
            Box::new(self.ack_latency.clone()),
            Box::new(self.store_seconds.clone()),
            Box::new(self.commit_group_batches.clone()),
            Box::new(self.audit_entries.clone()),
            Box::new(self.artifact_bytes_served.clone()),
            Box::new(self.artifact_downloads_refused_busy.clone()),
            Box::new(self.artifact_downloads_in_progress.clone()),
            Box::new(self.connections_open.clone()),
            Box::new(self.connection_peers.clone()),
            Box::new(self.connection_limits.clone()),
            Box::new(self.connections_refused.clone()),
            Box::new(self.connections_closed.clone()),
            Box::new(self.tls_handshakes_pending.clone()),
            Box::new(self.open_files_limit.clone()),
            Box::new(self.rollup_backfill_pending.clone()),
        ];
        // The store counts these itself (it has no handle on the metrics).
        if let Ok(recomputed) = IntCounterVec::new(
            Opts::new(
                "outpost_telemetry_rollup_recomputed_total",
                "Telemetry rollup rows (tier=1m, 1h) recomputed from their source because late samples interleaved with the ones they held (others merge without a read).",
            ),
            &["tier"],
        ) {
            for tier in crate::store::rollup::TIERS {
                recomputed
                    .with_label_values(&[tier.name])
                    .inc_by(crate::store::rollup::recomputed(tier));
            }
            out.push(Box::new(recomputed));
        }
        out
    }

    /// The handles a listener's [`ConnTable`](crate::conn_limits::ConnTable)
    /// keeps current, with its caps published.
    pub fn listener(
        &self,
        listener: &'static str,
        caps: &crate::conn_limits::Caps,
    ) -> crate::conn_limits::TableMetrics {
        let limit = |scope: &str, v: usize| {
            self.connection_limits
                .with_label_values(&[listener, scope])
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        limit("total", caps.max_connections);
        limit("per_ip", caps.max_per_ip);
        if listener == "grpc" {
            limit(
                "pending_handshakes_per_ip",
                caps.max_pending_handshakes_per_ip,
            );
        }
        // Pre-create the label sets so a scrape shows zeros before any refusal.
        for r in ["listener_full", "per_ip", "pending_handshakes_per_ip"] {
            self.connections_refused.with_label_values(&[listener, r]);
        }
        crate::conn_limits::TableMetrics {
            listener,
            open: self.connections_open.with_label_values(&[listener]),
            peers: self.connection_peers.with_label_values(&[listener]),
            pending_handshakes: self.tls_handshakes_pending.clone(),
            refused: self.connections_refused.clone(),
            closed: self.connections_closed.clone(),
        }
    }

    pub fn observe_ack(&self, stream: &str, took: Duration) {
        self.ack_latency
            .with_label_values(&[stream])
            .observe(took.as_secs_f64());
    }

    pub fn observe_store(&self, op: &str, took: Duration) {
        self.store_seconds
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_without_name_clashes_and_encode() {
        let m = Metrics::new().unwrap();
        m.samples_ingested.inc_by(3);
        m.observe_ack("telemetry", Duration::from_millis(3));
        let reg = prometheus::Registry::new();
        for c in m.collectors() {
            reg.register(c).unwrap();
        }
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&reg.gather())
            .unwrap();
        assert!(text.contains("outpost_samples_ingested_total 3"), "{text}");
        for tier in ["1m", "1h"] {
            let line = format!("outpost_telemetry_rollup_recomputed_total{{tier=\"{tier}\"}}");
            assert!(text.contains(&line), "{text}");
        }
        assert!(
            text.contains(
                "outpost_ack_latency_seconds_bucket{stream=\"telemetry\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
    }
}
