//! Store tests, written against the [`Store`] trait and run on every
//! backend: SQLite (in a temporary directory) always, PostgreSQL when
//! `OUTPOST_TEST_DATABASE_URL` names a server, e.g.
//! `postgres://postgres@127.0.0.1:54329/postgres` (each test then creates a
//! database of its own there, and drops it when it passes). Without the
//! variable the PostgreSQL variants pass without running.
//!
//! Each test `name` below becomes `name::sqlite` and `name::postgres`.
//! The `replicas_*` tests get two stores over the same database, as two
//! control-plane replicas would have, and race them.

use std::future::Future;
use std::sync::Arc;

use super::*;

const PG_ENV: &str = "OUTPOST_TEST_DATABASE_URL";

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `body` with `replicas` stores over one fresh database of `backend`,
/// which holds the workspace `acme`.
async fn run<F, Fut>(backend: Backend, replicas: usize, body: F)
where
    F: FnOnce(Vec<Arc<dyn Store>>) -> Fut,
    Fut: Future<Output = ()>,
{
    let acme = Workspace {
        name: "acme".into(),
        features: vec![],
        created_at: 1,
    };
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let mut stores: Vec<Arc<dyn Store>> = Vec::new();
            for _ in 0..replicas {
                stores.push(Arc::new(SqliteStore::open(dir.path()).await.unwrap()));
            }
            stores[0].create_workspace(&acme).await.unwrap();
            body(stores).await;
        }
        Backend::Postgres => {
            let Some(base) = std::env::var(PG_ENV).ok().filter(|u| !u.is_empty()) else {
                eprintln!("{PG_ENV} is not set: skipping the PostgreSQL run");
                return;
            };
            let url = postgres::fresh_test_database(&base).await;
            let mut pgs = Vec::new();
            for _ in 0..replicas {
                pgs.push(Arc::new(PgStore::connect(&url).await.unwrap()));
            }
            pgs[0].create_workspace(&acme).await.unwrap();
            body(
                pgs.iter()
                    .map(|p| Arc::clone(p) as Arc<dyn Store>)
                    .collect(),
            )
            .await;
            for p in &pgs {
                p.close().await;
            }
            postgres::drop_test_database(&base, &url).await.unwrap();
        }
    }
}

/// `name::sqlite` and `name::postgres` for each `async fn name(Arc<dyn Store>)`.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::run(super::Backend::Sqlite, 1, |mut s| super::$name(s.remove(0))).await
            }
            #[tokio::test]
            async fn postgres() {
                super::run(super::Backend::Postgres, 1, |mut s| super::$name(s.remove(0))).await
            }
        }
    )*};
}

/// As [`store_tests`], for `async fn name(Vec<Arc<dyn Store>>)` given two
/// replicas, on a multi-threaded runtime. Attributes before a name apply to
/// its SQLite variant.
macro_rules! replica_tests {
    ($($(#[$sqlite_attr:meta])* $name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            $(#[$sqlite_attr])*
            async fn sqlite() {
                super::run(super::Backend::Sqlite, 2, super::$name).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::run(super::Backend::Postgres, 2, super::$name).await
            }
        }
    )*};
}

store_tests!(
    telemetry_of_several_devices_commits_together_once_per_seq,
    a_large_group_stores_every_row_once_whatever_its_size,
    telemetry_is_stored_once_per_seq,
    install_id_binds_to_the_first_key_and_retries_revoke_the_unused_cert,
    a_group_of_enrollments_commits_each_and_refuses_only_the_conflicting_one,
    sessions_drive_status_and_a_stale_close_does_not_end_a_new_session,
    heartbeats_batch_move_current_sessions_forward_only,
    session_view_reads_what_a_session_start_tells_at_once,
    session_opens_in_a_group_each_with_its_artifacts_and_event,
    devices_list_in_pages_within_their_workspace,
    duplicate_workspace_is_a_conflict,
    list_filters_by_status_and_type,
    configs_are_versioned_and_applied_versions_recorded,
    delete_hides_the_device_and_revokes_everything,
    patch_records_what_changed,
    reissued_install_id_voids_the_old_one_and_its_binding,
    logs_page_newest_first_with_filters,
    telemetry_buckets_aggregate_per_bucket,
    rollup_tiers_answer_as_raw_samples_do_whatever_the_arrival_order,
    a_late_sample_inside_a_rolled_up_minute_recomputes_it,
    retention_prunes_raw_and_each_tier_by_its_own_cutoff_in_batches,
    deleting_a_device_records_its_decommission_and_revokes_its_certs,
    loss_reports_record_growth_once_and_retention_prunes,
    workspaces_and_api_keys_round_trip,
    a_batch_repeating_a_seq_stores_it_once,
    rotation_supersedes_the_old_cert_until_retired,
    force_reset_revokes_everything_and_issues_a_new_install_id,
    replacing_the_device_key_leaves_one_live_key,
    events_page_both_ways,
    latest_telemetry_is_each_devices_newest_sample,
    every_telemetry_column_round_trips,
    enrollment_state_follows_install_ids_certificates_and_resets,
    list_filters_by_exact_name,
    the_first_ca_fingerprint_recorded_stays,
    audit_entries_filter_page_and_prune,
    enrollment_tokens_spend_bind_and_refuse,
    a_new_install_id_or_a_forced_reset_forgets_token_bindings,
    a_group_of_token_enrollments_refuses_only_those_over_budget,
    labels_are_stored_filtered_and_merged,
    publisher_keys_are_added_once_listed_and_removed,
    artifacts_are_created_once_and_refuse_other_bytes,
    artifact_payload_chunks_make_it_ready_only_when_complete,
    discarded_chunks_leave_the_artifact_awaiting_and_deletes_take_everything,
    rollouts_are_created_read_and_one_is_active_per_artifact,
    rollout_steps_apply_conditionally_and_reports_only_move_forward,
    desired_state_follows_released_waves_and_survives_an_abort,
    deleting_the_released_version_leaves_the_name_out_rather_than_downgrading,
    rollouts_list_in_pages_newest_first_with_device_counts,
    artifacts_signed_by_a_removed_key_are_no_longer_desired,
    a_large_rollout_stores_every_device_in_chunks_or_nothing,
    running_rollouts_tally_their_current_wave_without_loading_devices,
);

replica_tests!(
    replicas_create_one_active_rollout_per_artifact,
    replicas_apply_a_rollout_step_once,
);

replica_tests!(
    replicas_spend_a_token_within_its_budget,
    replicas_bind_an_install_id_to_one_key,
    replicas_number_config_versions_uniquely,
    replicas_serialize_rotations,
    replicas_store_overlapping_batches_once,
    replicas_roll_up_one_devices_samples_as_raw,
    replicas_page_events_without_gaps,
    replicas_page_audit_entries_without_gaps,
);

// Read-then-write transactions racing on one store (SQLite: BEGIN IMMEDIATE).
replica_tests!(
    replicas_record_a_loss_increase_once,
    replicas_record_a_patch_once,
);

fn new_device(id: &str, created_at: i64) -> NewDevice {
    NewDevice {
        id: id.into(),
        workspace: "acme".into(),
        name: format!("dev {id}"),
        description: String::new(),
        device_type: "edge".into(),
        install_id_hash: format!("hash-{id}"),
        install_id_expires_at: i64::MAX,
        workflow_id: None,
        offline_mode: false,
        config: serde_json::json!({"k": id}),
        created_at,
        labels: Default::default(),
    }
}

fn commit(device: &str, key: &str, serial: &str) -> EnrollmentCommit {
    EnrollmentCommit {
        device_id: device.into(),
        key_sha256: key.into(),
        cert: NewCert {
            serial: serial.into(),
            not_before: 0,
            not_after: 10,
        },
        device_api_key: NewApiKey {
            id: format!("k-{serial}"),
            workspace: "acme".into(),
            key_hash: format!("kh-{serial}"),
            scopes: None,
            device_id: Some(device.into()),
            created_at: 1,
        },
        now: 5,
        token: None,
    }
}

fn sample(seq: u64) -> TelemetrySample {
    TelemetrySample {
        seq,
        timestamp: 1000 * seq as i64,
        cpu_percent: seq as f32,
        temperatures: vec![Temperature {
            sensor: "cpu".into(),
            celsius: 40.0,
        }],
        ..Default::default()
    }
}

async fn telemetry_of_several_devices_commits_together_once_per_seq(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    s.create_device(&new_device("d2", 1)).await.unwrap();
    let b = |d: &str, seqs: &[u64]| DeviceSamples {
        device_id: d.into(),
        samples: seqs.iter().map(|&q| sample(q)).collect(),
    };
    let n = s
        .insert_telemetry_many(&[b("d1", &[1, 2]), b("d2", &[1]), b("d1", &[3])], 0)
        .await
        .unwrap();
    assert_eq!(n, 4);
    // Retries (a lost ack) are absorbed per device.
    let n = s
        .insert_telemetry_many(&[b("d2", &[1, 2]), b("d1", &[3, 4])], 0)
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(s.last_telemetry_seq("d1").await.unwrap(), 4);
    assert_eq!(s.last_telemetry_seq("d2").await.unwrap(), 2);
}

async fn a_large_group_stores_every_row_once_whatever_its_size(s: Arc<dyn Store>) {
    // Group sizes around the multi-row statement sizes (SQLite: 256, 64,
    // 16, 4, 1 rows per statement): every row lands once, in order per
    // device, and repeats are skipped wherever they fall.
    for d in ["d1", "d2", "d3"] {
        s.create_device(&new_device(d, 1)).await.unwrap();
    }
    let b = |d: &str, seqs: std::ops::RangeInclusive<u64>| DeviceSamples {
        device_id: d.into(),
        samples: seqs.map(sample).collect(),
    };
    let n = s
        .insert_telemetry_many(&[b("d1", 1..=200), b("d2", 1..=143)], 0)
        .await
        .unwrap();
    assert_eq!(n, 343); // 256 + 64 + 16 + 4 + 3
    let n = s
        .insert_telemetry_many(&[b("d1", 150..=457), b("d3", 1..=1), b("d2", 1..=143)], 0)
        .await
        .unwrap();
    assert_eq!(n, 257 + 1, "only d1's 201..=457 and d3's first are new");
    for (d, last, count) in [("d1", 457, 457), ("d2", 143, 143), ("d3", 1, 1)] {
        assert_eq!(s.last_telemetry_seq(d).await.unwrap(), last);
        let rows = s
            .query_telemetry(&TelemetryQuery {
                device_id: d.into(),
                start: None,
                end: None,
                after_seq: None,
                direction: Direction::Forward,
                limit: 1000,
            })
            .await
            .unwrap();
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=count).collect::<Vec<_>>(), "{d}");
    }
}

async fn latest_telemetry_is_each_devices_newest_sample(s: Arc<dyn Store>) {
    for d in ["d1", "d2", "d3"] {
        s.create_device(&new_device(d, 1)).await.unwrap();
    }
    let b = |d: &str, seqs: &[u64]| DeviceSamples {
        device_id: d.into(),
        samples: seqs.iter().map(|&q| sample(q)).collect(),
    };
    s.insert_telemetry_many(&[b("d1", &[1, 2, 3]), b("d2", &[7])], 0)
        .await
        .unwrap();
    assert!(s.latest_telemetry(&[]).await.unwrap().is_empty());
    let ids: Vec<String> = ["d1", "d2", "d3", "nope"].map(String::from).to_vec();
    let mut latest = s.latest_telemetry(&ids).await.unwrap();
    latest.sort_by(|a, b| a.0.cmp(&b.0));
    let got: Vec<(&str, u64, f32)> = latest
        .iter()
        .map(|(d, t)| (d.as_str(), t.seq, t.cpu_percent))
        .collect();
    // d3 has no samples, `nope` does not exist: both left out.
    assert_eq!(got, [("d1", 3, 3.0), ("d2", 7, 7.0)]);
    assert_eq!(
        latest[0].1.temperatures.len(),
        1,
        "the whole sample is read"
    );
    s.insert_telemetry("d1", &[sample(4)], 0).await.unwrap();
    let latest = s.latest_telemetry(&ids[..1]).await.unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].1.seq, 4);
}

/// A sample whose every field differs from every other (and from the
/// other samples'), so a column stored or read as another shows.
fn distinct_sample(seq: u64) -> TelemetrySample {
    let n = seq * 100;
    TelemetrySample {
        seq,
        timestamp: 1000 * seq as i64,
        cpu_percent: seq as f32 + 0.5,
        memory_used_bytes: n + 1,
        memory_total_bytes: n + 2,
        swap_used_bytes: n + 3,
        swap_total_bytes: n + 4,
        disk_used_bytes: n + 5,
        disk_total_bytes: n + 6,
        network_rx_bytes: n + 7,
        network_tx_bytes: n + 8,
        load_1m: seq as f64 + 0.25,
        load_5m: seq as f64 + 0.375,
        load_15m: seq as f64 + 0.625,
        uptime_secs: n + 9,
        temperatures: vec![Temperature {
            sensor: format!("t{seq}"),
            celsius: 40.5,
        }],
        gpus: vec![GpuSample {
            index: 1,
            name: format!("g{seq}"),
            utilization_percent: 12.5,
            memory_used_bytes: n + 10,
            ..Default::default()
        }],
    }
}

async fn every_telemetry_column_round_trips(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    // 5 rows: on SQLite a 4-row and a 1-row statement.
    let samples: Vec<TelemetrySample> = (1..=5).map(distinct_sample).collect();
    assert_eq!(s.insert_telemetry("d1", &samples, 0).await.unwrap(), 5);
    let got = s
        .query_telemetry(&TelemetryQuery {
            device_id: "d1".into(),
            start: None,
            end: None,
            after_seq: None,
            direction: Direction::Forward,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(got, samples);
    let latest = s.latest_telemetry(&["d1".into()]).await.unwrap();
    assert_eq!(latest, [("d1".to_string(), samples[4].clone())]);
}

async fn telemetry_is_stored_once_per_seq(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    assert_eq!(
        s.insert_telemetry("d1", &[sample(1), sample(2)], 0)
            .await
            .unwrap(),
        2
    );
    // A retry of the same batch plus one new sample stores only the new one.
    assert_eq!(
        s.insert_telemetry("d1", &[sample(1), sample(2), sample(3)], 0)
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.last_telemetry_seq("d1").await.unwrap(), 3);
    let q = TelemetryQuery {
        device_id: "d1".into(),
        start: None,
        end: None,
        after_seq: None,
        direction: Direction::Forward,
        limit: 10,
    };
    let rows = s.query_telemetry(&q).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(rows[0], sample(1), "round-trips every field");
    let back = s
        .query_telemetry(&TelemetryQuery {
            direction: Direction::Backward,
            after_seq: Some(3),
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(back.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 1]);
    let window = s
        .query_telemetry(&TelemetryQuery {
            start: Some(2000),
            end: Some(3000),
            ..q
        })
        .await
        .unwrap();
    assert_eq!(window.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2]);
}

async fn install_id_binds_to_the_first_key_and_retries_revoke_the_unused_cert(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    s.complete_enrollment(&commit("d1", "keyA", "s1"))
        .await
        .unwrap();
    let e = s.find_enrollment("hash-d1").await.unwrap().unwrap();
    assert_eq!(e.bound_key_sha256.as_deref(), Some("keyA"));
    // Same key again (response lost): allowed, and the first cert dies.
    s.complete_enrollment(&commit("d1", "keyA", "s2"))
        .await
        .unwrap();
    assert!(s.get_cert("s1").await.unwrap().unwrap().revoked);
    assert!(!s.get_cert("s2").await.unwrap().unwrap().revoked);
    // The first device key was replaced too.
    assert!(s.find_api_key("kh-s1").await.unwrap().is_none());
    assert!(s.find_api_key("kh-s2").await.unwrap().is_some());
    // Another key: conflict.
    assert!(matches!(
        s.complete_enrollment(&commit("d1", "keyB", "s3")).await,
        Err(StoreError::Conflict(_))
    ));
    // Once spent, even the bound key is refused.
    s.spend_install_id("d1").await.unwrap();
    assert!(matches!(
        s.complete_enrollment(&commit("d1", "keyA", "s4")).await,
        Err(StoreError::Conflict(_))
    ));
}

async fn a_group_of_enrollments_commits_each_and_refuses_only_the_conflicting_one(
    s: Arc<dyn Store>,
) {
    for d in ["d1", "d2", "d3"] {
        s.create_device(&new_device(d, 1)).await.unwrap();
    }
    // d2 is already bound to keyA; its group entry comes with keyB.
    s.complete_enrollment(&commit("d2", "keyA", "s0"))
        .await
        .unwrap();
    let group = [
        commit("d1", "key1", "s1"),
        commit("d2", "keyB", "s2"),
        commit("d3", "key3", "s3"),
        // The same device twice in one group (a retry with the same key):
        // the later one supersedes the earlier, as one after the other.
        commit("d1", "key1", "s4"),
    ];
    let each = s.complete_enrollments(&group).await.unwrap();
    assert_eq!(each.len(), 4);
    assert!(
        each[0].is_ok() && each[2].is_ok() && each[3].is_ok(),
        "{each:?}"
    );
    assert!(matches!(each[1], Err(StoreError::Conflict(_))), "{each:?}");
    // The conflicting one wrote nothing: d2 keeps its key, cert and API key.
    let d2 = s.find_enrollment("hash-d2").await.unwrap().unwrap();
    assert_eq!(d2.bound_key_sha256.as_deref(), Some("keyA"));
    assert!(s.get_cert("s2").await.unwrap().is_none());
    assert!(s.find_api_key("kh-s2").await.unwrap().is_none());
    assert!(!s.get_cert("s0").await.unwrap().unwrap().revoked);
    // The others were stored.
    let d3 = s.find_enrollment("hash-d3").await.unwrap().unwrap();
    assert_eq!(d3.bound_key_sha256.as_deref(), Some("key3"));
    assert!(!s.get_cert("s3").await.unwrap().unwrap().revoked);
    assert!(s.find_api_key("kh-s3").await.unwrap().is_some());
    assert!(s.get_cert("s1").await.unwrap().unwrap().revoked);
    assert!(!s.get_cert("s4").await.unwrap().unwrap().revoked);
    assert!(s.find_api_key("kh-s1").await.unwrap().is_none());
    assert!(s.find_api_key("kh-s4").await.unwrap().is_some());
    assert!(s.complete_enrollments(&[]).await.unwrap().is_empty());
}

async fn sessions_drive_status_and_a_stale_close_does_not_end_a_new_session(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    let now = 1_000_000;
    let dev = s.get_device("acme", "d1").await.unwrap().unwrap();
    assert_eq!(dev.status(now), DeviceStatus::Unknown);
    s.session_opened("d1", "sA", &DeviceFacts::default(), now)
        .await
        .unwrap();
    s.session_opened("d1", "sB", &DeviceFacts::default(), now)
        .await
        .unwrap();
    close_all(&s, &[end("d1", "sA", None)], now).await;
    let dev = s.get_device("acme", "d1").await.unwrap().unwrap();
    assert_eq!(dev.status(now + 1), DeviceStatus::Online);
    assert_eq!(
        dev.status(now + ONLINE_WINDOW_MS),
        DeviceStatus::Offline,
        "silent sessions go offline"
    );
    close_all(&s, &[end("d1", "sB", None)], now).await;
    let dev = s.get_device("acme", "d1").await.unwrap().unwrap();
    assert_eq!(dev.status(now + 1), DeviceStatus::Offline);
}

async fn session_opens_in_a_group_each_with_its_artifacts_and_event(s: Arc<dyn Store>) {
    for id in ["a", "b"] {
        s.create_device(&new_device(id, 1)).await.unwrap();
    }
    let open = |id: &str, installed: Option<Vec<(String, String)>>| SessionOpen {
        device_id: id.into(),
        session_id: format!("s-{id}"),
        facts: DeviceFacts::default(),
        installed,
        retire_superseded: true,
        now: 1_000,
    };
    let each = s
        .sessions_opened(&[
            open("a", Some(vec![("model".into(), "1".into())])),
            open("gone", None),
            open("b", None),
        ])
        .await;
    assert_eq!(each.len(), 3);
    assert!(each[0].is_ok(), "{:?}", each[0]);
    assert!(
        matches!(each[1], Err(StoreError::NotFound)),
        "{:?}",
        each[1]
    );
    assert!(each[2].is_ok(), "{:?}", each[2]);
    for id in ["a", "b"] {
        let dev = s.get_device("acme", id).await.unwrap().unwrap();
        assert_eq!(dev.status(1_001), DeviceStatus::Online, "{id}");
        let events = s.list_events(&all_events(id)).await.unwrap();
        assert_eq!(events.last().map(|e| e.kind.as_str()), Some("connected"));
    }
    assert_eq!(
        s.device_artifacts(&["a".into(), "b".into()]).await.unwrap(),
        vec![("a".to_string(), "model".to_string(), "1".to_string())]
    );
    // A later open with an empty list clears it; `None` leaves it.
    s.sessions_opened(&[open("a", None)]).await;
    assert_eq!(s.device_artifacts(&["a".into()]).await.unwrap().len(), 1);
    s.sessions_opened(&[open("a", Some(vec![]))]).await;
    assert!(s.device_artifacts(&["a".into()]).await.unwrap().is_empty());
}

async fn close_all(s: &Arc<dyn Store>, ends: &[SessionEnd], now: i64) {
    for r in s.sessions_closed(ends, now).await {
        r.unwrap();
    }
}

fn end(device: &str, session: &str, last_heartbeat: Option<i64>) -> SessionEnd {
    SessionEnd {
        device_id: device.into(),
        session_id: session.into(),
        last_heartbeat,
    }
}

fn beat(device: &str, session: &str, at: i64) -> Heartbeat {
    Heartbeat {
        device_id: device.into(),
        session_id: session.into(),
        at,
    }
}

async fn heartbeats_batch_move_current_sessions_forward_only(s: Arc<dyn Store>) {
    // More devices than the largest statement holds, so the batch spans
    // statements of several sizes (256 + 32 + 4 + 4 + 4 + 1).
    let n = 300;
    let ids: Vec<String> = (0..n).map(|i| format!("d{i:03}")).collect();
    for id in &ids {
        s.create_device(&new_device(id, 1)).await.unwrap();
        s.session_opened(id, &format!("s-{id}"), &DeviceFacts::default(), 1_000)
            .await
            .unwrap();
    }
    let mut beats: Vec<Heartbeat> = ids
        .iter()
        .map(|id| beat(id, &format!("s-{id}"), 5_000))
        .collect();
    // A stale session, an unknown device, and an older time: no change.
    beats[0].session_id = "s-gone".into();
    beats.push(beat("no-such-device", "s", 5_000));
    beats[1].at = 500;
    assert_eq!(s.session_heartbeats(&beats).await.unwrap(), n - 2);
    let hb = |id: &str| {
        let s = s.clone();
        let id = id.to_string();
        async move {
            s.get_device("acme", &id)
                .await
                .unwrap()
                .unwrap()
                .last_heartbeat
        }
    };
    assert_eq!(hb("d000").await, Some(1_000), "another session's beat");
    assert_eq!(hb("d001").await, Some(1_000), "never backwards");
    for id in &ids[2..] {
        assert_eq!(hb(id).await, Some(5_000), "{id}");
    }
    // Online by the batched heartbeat, offline after the window.
    let dev = s.get_device("acme", "d299").await.unwrap().unwrap();
    assert_eq!(
        dev.status(5_000 + ONLINE_WINDOW_MS - 1),
        DeviceStatus::Online
    );
    assert_eq!(dev.status(5_000 + ONLINE_WINDOW_MS), DeviceStatus::Offline);
    assert_eq!(s.session_heartbeats(&[]).await.unwrap(), 0);
    // The close records the session's last heartbeat (forward only)…
    close_all(&s, &[end("d002", "s-d002", Some(5_500))], 6_000).await;
    assert_eq!(hb("d002").await, Some(5_500));
    close_all(&s, &[end("d003", "s-d003", Some(10))], 6_000).await;
    assert_eq!(hb("d003").await, Some(5_000), "never backwards");
    close_all(&s, &[end("d004", "s-d004", None)], 6_000).await;
    assert_eq!(hb("d004").await, Some(5_000));
    // …a stale close changes nothing…
    close_all(&s, &[end("d005", "s-other", Some(9_000))], 6_000).await;
    assert_eq!(hb("d005").await, Some(5_000));
    // Several ends in one call: each current session ends with its event;
    // a stale one changes nothing.
    close_all(
        &s,
        &[
            end("d006", "s-d006", Some(5_100)),
            end("d007", "s-d007", None),
            end("d008", "s-stale", None),
        ],
        6_000,
    )
    .await;
    for (id, status) in [
        ("d006", DeviceStatus::Offline),
        ("d007", DeviceStatus::Offline),
        ("d008", DeviceStatus::Online),
    ] {
        let dev = s.get_device("acme", id).await.unwrap().unwrap();
        assert_eq!(dev.status(5_200), status, "{id}");
        let kinds: Vec<String> = s
            .list_events(&all_events(id))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds.last().map(String::as_str) == Some("disconnected"),
            status == DeviceStatus::Offline,
            "{id}: {kinds:?}"
        );
    }
    assert_eq!(hb("d006").await, Some(5_100));
    close_all(&s, &[], 6_000).await;
    // …and after the session closed, a late batch changes nothing.
    assert_eq!(
        s.session_heartbeats(&[beat("d002", "s-d002", 7_000)])
            .await
            .unwrap(),
        0
    );
    assert_eq!(hb("d002").await, Some(5_500));
}

async fn devices_list_in_pages_within_their_workspace(s: Arc<dyn Store>) {
    s.create_workspace(&Workspace {
        name: "other".into(),
        features: vec![],
        created_at: 1,
    })
    .await
    .unwrap();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        s.create_device(&new_device(id, 10 + i as i64))
            .await
            .unwrap();
    }
    let mut foreign = new_device("z", 5);
    foreign.workspace = "other".into();
    s.create_device(&foreign).await.unwrap();
    let first = s
        .list_devices(&DeviceListQuery {
            workspace: "acme".into(),
            after: None,
            limit: 2,
            status: None,
            device_type: None,
            name: None,
            labels: Vec::new(),
            now: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    let rest = s
        .list_devices(&DeviceListQuery {
            workspace: "acme".into(),
            after: Some((first[1].created_at, first[1].id.clone())),
            limit: 2,
            status: None,
            device_type: None,
            name: None,
            labels: Vec::new(),
            now: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        vec!["c"]
    );
    assert!(s.get_device("acme", "z").await.unwrap().is_none());
    assert!(s.set_device_enabled("acme", "a", false).await.unwrap());
    assert!(!s.get_device("acme", "a").await.unwrap().unwrap().enabled);
    assert!(!s.set_device_enabled("acme", "z", false).await.unwrap());
}

async fn duplicate_workspace_is_a_conflict(s: Arc<dyn Store>) {
    let err = s
        .create_workspace(&Workspace {
            name: "acme".into(),
            features: vec![],
            created_at: 2,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)));
}

fn list_query(
    status: Option<DeviceStatus>,
    device_type: Option<&str>,
    now: i64,
) -> DeviceListQuery {
    DeviceListQuery {
        workspace: "acme".into(),
        after: None,
        limit: 100,
        status,
        device_type: device_type.map(String::from),
        name: None,
        labels: Vec::new(),
        now,
    }
}

async fn list_filters_by_status_and_type(s: Arc<dyn Store>) {
    let mut ai = new_device("ai", 1);
    ai.device_type = "ai1".into();
    s.create_device(&ai).await.unwrap();
    s.create_device(&new_device("on", 2)).await.unwrap();
    s.create_device(&new_device("off", 3)).await.unwrap();
    let now = 1_000_000;
    s.session_opened("on", "s1", &DeviceFacts::default(), now)
        .await
        .unwrap();
    s.session_opened("off", "s2", &DeviceFacts::default(), now)
        .await
        .unwrap();
    close_all(&s, &[end("off", "s2", None)], now).await;
    let ids = |v: Vec<Device>| v.into_iter().map(|d| d.id).collect::<Vec<_>>();
    let q = |st, t| list_query(st, t, now + 1);
    assert_eq!(
        ids(s
            .list_devices(&q(Some(DeviceStatus::Online), None))
            .await
            .unwrap()),
        vec!["on"]
    );
    assert_eq!(
        ids(s
            .list_devices(&q(Some(DeviceStatus::Offline), None))
            .await
            .unwrap()),
        vec!["off"]
    );
    assert_eq!(
        ids(s
            .list_devices(&q(Some(DeviceStatus::Unknown), None))
            .await
            .unwrap()),
        vec!["ai"]
    );
    assert_eq!(
        ids(s.list_devices(&q(None, Some("ai1"))).await.unwrap()),
        vec!["ai"]
    );
    assert_eq!(
        ids(s.list_devices(&q(None, Some("edge"))).await.unwrap()),
        vec!["on", "off"]
    );
    // The same filter agrees with Device::status when heartbeats go stale.
    let later = list_query(
        Some(DeviceStatus::Offline),
        None,
        now + ONLINE_WINDOW_MS + 1,
    );
    assert_eq!(
        ids(s.list_devices(&later).await.unwrap()),
        vec!["on", "off"]
    );
}

async fn configs_are_versioned_and_applied_versions_recorded(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    let v1 = s.get_config("d1", None).await.unwrap().unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(v1.config, serde_json::json!({"k": "d1"}));
    let v2 = s
        .put_config(
            "acme",
            "d1",
            &serde_json::json!({"telemetry_interval_secs": 5}),
            10,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(s.get_config("d1", None).await.unwrap().unwrap(), v2);
    assert_eq!(s.get_config("d1", Some(1)).await.unwrap().unwrap(), v1);
    assert!(s.get_config("d1", Some(9)).await.unwrap().is_none());
    let all = s.list_configs("d1", None, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|c| c.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    let older = s.list_configs("d1", Some(2), 10).await.unwrap();
    assert_eq!(older.iter().map(|c| c.version).collect::<Vec<_>>(), vec![1]);
    assert!(
        s.put_config("other", "d1", &serde_json::json!({}), 10)
            .await
            .unwrap()
            .is_none()
    );
    s.config_applied("d1", 2, 11).await.unwrap();
    s.config_applied("d1", 2, 12).await.unwrap(); // repeated ack: one event
    assert_eq!(
        s.get_device("acme", "d1")
            .await
            .unwrap()
            .unwrap()
            .config_applied_version,
        2
    );
    let kinds: Vec<String> = s
        .list_events(&EventQuery {
            device_id: "d1".into(),
            after_id: None,
            direction: Direction::Forward,
            limit: 100,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, vec!["created", "config_changed", "config_applied"]);
}

async fn delete_hides_the_device_and_revokes_everything(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    s.complete_enrollment(&commit("d1", "keyA", "s1"))
        .await
        .unwrap();
    assert!(s.delete_device("acme", "d1", 50).await.unwrap());
    assert!(
        !s.delete_device("acme", "d1", 51).await.unwrap(),
        "already gone"
    );
    assert!(s.get_device("acme", "d1").await.unwrap().is_none());
    assert!(s.device_workspace("d1").await.unwrap().is_none());
    let cert = s.get_cert("s1").await.unwrap().unwrap();
    assert!(cert.revoked && cert.device_deleted);
    assert!(s.find_api_key("kh-s1").await.unwrap().is_none());
    assert!(s.find_enrollment("hash-d1").await.unwrap().is_none());
}

async fn patch_records_what_changed(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    let patch = DevicePatch {
        name: Some("renamed".into()),
        enabled: Some(false),
        ..Default::default()
    };
    let d = s
        .update_device("acme", "d1", &patch, 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.name, "renamed");
    assert!(!d.enabled);
    assert!(
        s.update_device("acme", "nope", &patch, 5)
            .await
            .unwrap()
            .is_none()
    );
    let events = s
        .list_events(&EventQuery {
            device_id: "d1".into(),
            after_id: None,
            direction: Direction::Backward,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(events[0].kind, "disabled");
    assert_eq!(events[1].kind, "updated");
    assert_eq!(events[1].detail["name"]["to"], "renamed");
}

async fn reissued_install_id_voids_the_old_one_and_its_binding(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    s.complete_enrollment(&commit("d1", "keyA", "s1"))
        .await
        .unwrap();
    s.spend_install_id("d1").await.unwrap();
    assert!(
        s.reissue_install_id("acme", "d1", "new-hash", i64::MAX, 9)
            .await
            .unwrap()
    );
    assert!(s.find_enrollment("hash-d1").await.unwrap().is_none());
    let e = s.find_enrollment("new-hash").await.unwrap().unwrap();
    assert!(!e.spent && e.bound_key_sha256.is_none());
    s.complete_enrollment(&commit("d1", "keyB", "s2"))
        .await
        .unwrap();
    assert!(
        s.get_cert("s1").await.unwrap().unwrap().revoked,
        "re-enrollment revokes the old cert"
    );
}

async fn logs_page_newest_first_with_filters(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    let line = |seq: u64, ts: i64, service: &str, severity: &str| LogRecord {
        seq,
        timestamp: ts,
        service: service.into(),
        severity: severity.into(),
        message: format!("line {seq}"),
    };
    let logs = vec![
        line(1, 100, "nginx", "info"),
        line(2, 200, "app", "error"),
        line(3, 200, "app", "warning"),
        line(4, 300, "nginx", "debug"),
    ];
    assert_eq!(s.insert_logs("d1", &logs, 0).await.unwrap(), 4);
    assert_eq!(
        s.insert_logs("d1", &logs[..2], 0).await.unwrap(),
        0,
        "deduped"
    );
    let q = LogQuery {
        device_id: "d1".into(),
        start: None,
        end: None,
        service: None,
        severity: None,
        before: None,
        after_seq: None,
        until_seq: None,
        limit: 10,
    };
    let seqs = |v: Vec<LogRecord>| v.into_iter().map(|l| l.seq).collect::<Vec<_>>();
    assert_eq!(seqs(s.query_logs(&q).await.unwrap()), vec![4, 3, 2, 1]);
    let page2 = LogQuery {
        before: Some((200, 3)),
        ..q.clone()
    };
    assert_eq!(seqs(s.query_logs(&page2).await.unwrap()), vec![2, 1]);
    let warn_up = LogQuery {
        severity: Some("warning".into()),
        ..q.clone()
    };
    assert_eq!(seqs(s.query_logs(&warn_up).await.unwrap()), vec![3, 2]);
    let nginx = LogQuery {
        service: Some("nginx".into()),
        start: Some(150),
        ..q.clone()
    };
    assert_eq!(seqs(s.query_logs(&nginx).await.unwrap()), vec![4]);
    // Followers read forward by seq, whatever the lines' timestamps.
    let follow = LogQuery {
        after_seq: Some(1),
        limit: 2,
        ..q.clone()
    };
    assert_eq!(seqs(s.query_logs(&follow).await.unwrap()), vec![2, 3]);
    let late = vec![line(5, 50, "app", "info")]; // a spooled line, stamped long ago
    s.insert_logs("d1", &late, 0).await.unwrap();
    let follow = LogQuery {
        after_seq: Some(4),
        ..q.clone()
    };
    assert_eq!(seqs(s.query_logs(&follow).await.unwrap()), vec![5]);
    let follow_errors = LogQuery {
        after_seq: Some(0),
        severity: Some("error".into()),
        ..q.clone()
    };
    assert_eq!(seqs(s.query_logs(&follow_errors).await.unwrap()), vec![2]);
    let bounded = LogQuery {
        after_seq: Some(0),
        until_seq: Some(2),
        ..q
    };
    assert_eq!(seqs(s.query_logs(&bounded).await.unwrap()), vec![1, 2]);
}

async fn telemetry_buckets_aggregate_per_bucket(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    let mk = |seq: u64, ts: i64, cpu: f32, rx: u64, temp: f32, gpu: Option<f32>| TelemetrySample {
        seq,
        timestamp: ts,
        cpu_percent: cpu,
        memory_used_bytes: 100 * seq,
        memory_total_bytes: 1000,
        network_rx_bytes: rx,
        temperatures: vec![
            Temperature {
                sensor: "a".into(),
                celsius: temp,
            },
            Temperature {
                sensor: "b".into(),
                celsius: temp - 10.0,
            },
        ],
        gpus: gpu
            .map(|u| {
                vec![GpuSample {
                    utilization_percent: u,
                    memory_used_bytes: 7,
                    ..Default::default()
                }]
            })
            .unwrap_or_default(),
        ..Default::default()
    };
    let samples = vec![
        mk(1, 0, 10.0, 1000, 40.0, Some(50.0)),
        mk(2, 30_000, 30.0, 1500, 45.0, None),
        mk(3, 60_000, 50.0, 2000, 50.0, Some(10.0)),
        mk(4, 200_000, 70.0, 9000, 60.0, None), // outside the window
    ];
    s.insert_telemetry("d1", &samples, 0).await.unwrap();
    let b = s.telemetry_buckets("d1", 0, 120_000, 60_000).await.unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!((b[0].start, b[0].samples), (0, 2));
    assert_eq!(b[0].cpu_percent_avg, 20.0);
    assert_eq!(b[0].cpu_percent_max, 30.0);
    assert_eq!(b[0].memory_used_bytes_avg, 150.0);
    assert_eq!(b[0].network_rx_bytes, 500);
    assert_eq!(b[0].temperature_max_celsius, Some(45.0));
    assert_eq!(
        b[0].gpu_utilization_percent_avg,
        Some(50.0),
        "samples without GPUs do not count"
    );
    assert_eq!((b[1].start, b[1].samples), (60_000, 1));
    assert_eq!(b[1].gpu_memory_used_bytes_avg, Some(7.0));
}

async fn deleting_a_device_records_its_decommission_and_revokes_its_certs(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    s.complete_enrollment(&commit("d1", "key", "serial-1"))
        .await
        .unwrap();
    assert!(s.delete_device("acme", "d1", 50).await.unwrap());
    let events = s
        .list_events(&EventQuery {
            device_id: "d1".into(),
            after_id: None,
            direction: Direction::Forward,
            limit: 100,
        })
        .await
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.last(), Some(&"decommissioned"), "{kinds:?}");
    let cert = s.get_cert("serial-1").await.unwrap().unwrap();
    assert!(cert.revoked && cert.device_deleted);
    assert!(!s.delete_device("acme", "d1", 60).await.unwrap(), "once");
}

async fn loss_reports_record_growth_once_and_retention_prunes(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    let t = |dropped, corrupt| LossTotals {
        telemetry_dropped: dropped,
        logs_dropped: 0,
        corrupt,
        logs_rate_limited: 0,
    };
    assert!(!s.record_loss("d1", "acme", &t(0, 0), 10).await.unwrap());
    assert!(s.record_loss("d1", "acme", &t(7, 1), 11).await.unwrap());
    assert!(
        !s.record_loss("d1", "acme", &t(7, 1), 12).await.unwrap(),
        "same totals"
    );
    assert!(s.record_loss("d1", "acme", &t(9, 1), 13).await.unwrap());
    let q = EventQuery {
        device_id: "d1".into(),
        after_id: None,
        direction: Direction::Forward,
        limit: 100,
    };
    let lost: Vec<_> = s
        .list_events(&q)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "data_lost")
        .collect();
    assert_eq!(lost.len(), 2);
    assert_eq!(lost[0].detail["telemetry_dropped"], 7);
    assert_eq!(lost[0].detail["corrupt"], 1);
    assert_eq!(lost[1].detail["telemetry_dropped"], 2, "the increase");
    assert_eq!(lost[1].detail["totals"]["telemetry_dropped"], 9);

    s.insert_telemetry("d1", &[sample(1), sample(2), sample(3)], 0)
        .await
        .unwrap();
    let line = |seq: u64, ts: i64| LogRecord {
        seq,
        timestamp: ts,
        service: "app".into(),
        severity: "info".into(),
        message: format!("line {seq}"),
    };
    s.insert_logs("d1", &[line(1, 100), line(2, 5000)], 0)
        .await
        .unwrap();
    assert_eq!(s.last_log_seq("d1").await.unwrap(), 2);
    let c = s
        .prune(&Retention {
            telemetry_before: 2500, // samples are at 1000 * seq
            minute_before: 0,
            hour_before: 0,
            logs_before: 1000,
            events_before: 12,
        })
        .await
        .unwrap();
    assert_eq!(
        c,
        PruneCounts {
            telemetry: 2,
            telemetry_1m: 0,
            telemetry_1h: 0,
            logs: 1,
            ..c
        }
    );
    assert_eq!(c.batches, 3, "one statement each for raw, logs, events");
    assert!(c.events >= 2, "created and the first loss report: {c:?}");
    assert_eq!(s.last_telemetry_seq("d1").await.unwrap(), 3);
    assert_eq!(s.last_log_seq("d1").await.unwrap(), 2);
    let left = s.list_events(&q).await.unwrap();
    assert!(left.iter().all(|e| e.timestamp >= 12), "{left:?}");
}

fn events_of(kinds: Vec<Event>) -> Vec<String> {
    kinds.into_iter().map(|e| e.kind).collect()
}

fn all_events(device: &str) -> EventQuery {
    EventQuery {
        device_id: device.into(),
        after_id: None,
        direction: Direction::Forward,
        limit: 10_000,
    }
}

async fn workspaces_and_api_keys_round_trip(s: Arc<dyn Store>) {
    // Byte order, as SQLite sorts TEXT: upper case first.
    for name in ["beta", "Zeta"] {
        s.create_workspace(&Workspace {
            name: name.into(),
            features: vec![],
            created_at: 2,
        })
        .await
        .unwrap();
    }
    let names: Vec<String> = s
        .list_workspaces()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, vec!["Zeta", "acme", "beta"]);
    let features = vec![FEATURE_DEVICE_AIO.to_string()];
    assert!(s.set_workspace_features("acme", &features).await.unwrap());
    assert!(!s.set_workspace_features("nope", &features).await.unwrap());
    let acme = s.get_workspace("acme").await.unwrap().unwrap();
    assert_eq!(
        acme,
        Workspace {
            name: "acme".into(),
            features,
            created_at: 1
        }
    );
    assert!(s.get_workspace("nope").await.unwrap().is_none());

    let key = |id: &str, created_at: i64, scopes: Option<Vec<String>>| NewApiKey {
        id: id.into(),
        workspace: "acme".into(),
        key_hash: format!("hash-{id}"),
        scopes,
        device_id: None,
        created_at,
    };
    s.create_api_key(&key("k1", 10, None)).await.unwrap();
    s.create_api_key(&key("k2", 20, Some(vec!["devices:read".into()])))
        .await
        .unwrap();
    s.create_api_key(&key("K3", 20, Some(vec![])))
        .await
        .unwrap();
    let found = s.find_api_key("hash-k2").await.unwrap().unwrap();
    assert_eq!(
        found,
        ApiKeyRecord {
            id: "k2".into(),
            workspace: "acme".into(),
            scopes: Some(vec!["devices:read".into()]),
            device_id: None,
        }
    );
    assert!(s.revoke_api_key("k1", 30).await.unwrap());
    assert!(
        !s.revoke_api_key("k1", 31).await.unwrap(),
        "already revoked"
    );
    assert!(!s.revoke_api_key("nope", 31).await.unwrap());
    assert!(s.find_api_key("hash-k1").await.unwrap().is_none());
    let listed = s.list_api_keys("acme").await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|k| (k.id.as_str(), k.revoked_at))
            .collect::<Vec<_>>(),
        vec![("K3", None), ("k2", None), ("k1", Some(30))],
        "newest first, then by id"
    );
    assert_eq!(listed[0].scopes, Some(vec![]));
    assert_eq!(listed[2].scopes, None);
    assert!(s.list_api_keys("beta").await.unwrap().is_empty());
}

async fn a_batch_repeating_a_seq_stores_it_once(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    assert_eq!(s.insert_telemetry("d1", &[], 0).await.unwrap(), 0);
    assert_eq!(
        s.insert_telemetry("d1", &[sample(2), sample(1), sample(2)], 0)
            .await
            .unwrap(),
        2
    );
    assert_eq!(s.last_telemetry_seq("d1").await.unwrap(), 2);
    let line = |seq: u64| LogRecord {
        seq,
        timestamp: 10,
        service: "app".into(),
        severity: "bogus".into(), // ranks as info
        message: format!("line {seq}"),
    };
    assert_eq!(s.insert_logs("d1", &[], 0).await.unwrap(), 0);
    assert_eq!(
        s.insert_logs("d1", &[line(5), line(5), line(4)], 0)
            .await
            .unwrap(),
        2
    );
    let info_up = LogQuery {
        device_id: "d1".into(),
        start: None,
        end: None,
        service: None,
        severity: Some("info".into()),
        before: None,
        after_seq: None,
        until_seq: None,
        limit: 10,
    };
    let got = s.query_logs(&info_up).await.unwrap();
    assert_eq!(got, vec![line(5), line(4)]);
    assert_eq!(s.last_log_seq("d1").await.unwrap(), 5);
    assert_eq!(s.last_log_seq("nope").await.unwrap(), 0);
}

fn rotation(device: &str, old: &str, serial: &str, now: i64) -> RotationCommit {
    RotationCommit {
        device_id: device.into(),
        workspace: "acme".into(),
        old_serial: old.into(),
        cert: NewCert {
            serial: serial.into(),
            not_before: now,
            not_after: now + 1000,
        },
        device_api_key: NewApiKey {
            id: format!("k-{serial}"),
            workspace: "acme".into(),
            key_hash: format!("kh-{serial}"),
            scopes: None,
            device_id: Some(device.into()),
            created_at: now,
        },
        revoke_keys_before: now,
        now,
    }
}

async fn rotation_supersedes_the_old_cert_until_retired(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    s.complete_enrollment(&commit("d1", "keyA", "s1"))
        .await
        .unwrap();
    s.spend_install_id("d1").await.unwrap();
    s.rotate_cert(&rotation("d1", "s1", "s2", 100))
        .await
        .unwrap();
    let old = s.get_cert("s1").await.unwrap().unwrap();
    assert_eq!(old.superseded_at, Some(100));
    assert!(!old.revoked, "usable until the new one is used");
    assert!(old.install_spent && old.device_enabled && !old.device_deleted);
    assert_eq!(old.workspace, "acme");
    let new = s.get_cert("s2").await.unwrap().unwrap();
    assert_eq!(new.superseded_at, None);
    assert_eq!(
        s.get_device("acme", "d1")
            .await
            .unwrap()
            .unwrap()
            .cert_expires_at,
        Some(1100)
    );
    assert!(s.find_api_key("kh-s1").await.unwrap().is_none());
    assert!(s.find_api_key("kh-s2").await.unwrap().is_some());
    s.retire_superseded("d1", 150).await.unwrap();
    assert!(s.get_cert("s1").await.unwrap().unwrap().revoked);
    assert!(!s.get_cert("s2").await.unwrap().unwrap().revoked);
    assert!(s.get_cert("nope").await.unwrap().is_none());
    let events = s.list_events(&all_events("d1")).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.kind, "rotated");
    assert_eq!(
        last.detail,
        serde_json::json!({"serial": "s2", "previous_serial": "s1"})
    );
}

async fn force_reset_revokes_everything_and_issues_a_new_install_id(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    s.complete_enrollment(&commit("d1", "keyA", "s1"))
        .await
        .unwrap();
    s.session_opened("d1", "sess", &DeviceFacts::default(), 20)
        .await
        .unwrap();
    assert!(
        !s.force_reset("other", "d1", "h2", i64::MAX, 30)
            .await
            .unwrap()
    );
    assert!(s.force_reset("acme", "d1", "h2", 99, 30).await.unwrap());
    assert!(s.get_cert("s1").await.unwrap().unwrap().revoked);
    assert!(s.find_api_key("kh-s1").await.unwrap().is_none());
    assert!(s.find_enrollment("hash-d1").await.unwrap().is_none());
    let e = s.find_enrollment("h2").await.unwrap().unwrap();
    assert_eq!((e.device_id.as_str(), e.expires_at), ("d1", 99));
    assert!(!e.spent && e.bound_key_sha256.is_none() && e.enabled);
    let dev = s.get_device("acme", "d1").await.unwrap().unwrap();
    assert_eq!(dev.session_id, None, "the session ends");
    let events = s.list_events(&all_events("d1")).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.kind, "revoked");
    assert_eq!(last.detail, serde_json::json!({"forced_reset": true}));
}

async fn replacing_the_device_key_leaves_one_live_key(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    s.complete_enrollment(&commit("d1", "keyA", "s1"))
        .await
        .unwrap();
    let key = NewApiKey {
        id: "fresh".into(),
        workspace: "acme".into(),
        key_hash: "fresh-hash".into(),
        scopes: Some(vec!["device".into()]),
        device_id: Some("d1".into()),
        created_at: 40,
    };
    s.replace_device_key(&key, 40).await.unwrap();
    assert!(s.find_api_key("kh-s1").await.unwrap().is_none());
    let found = s.find_api_key("fresh-hash").await.unwrap().unwrap();
    assert_eq!(found.device_id.as_deref(), Some("d1"));
    let no_device = NewApiKey {
        device_id: None,
        ..key
    };
    assert!(matches!(
        s.replace_device_key(&no_device, 41).await,
        Err(StoreError::Conflict(_))
    ));
    let kinds = events_of(s.list_events(&all_events("d1")).await.unwrap());
    assert_eq!(kinds.last().map(String::as_str), Some("reset"));
}

async fn events_page_both_ways(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    s.create_device(&new_device("d2", 1)).await.unwrap();
    for n in 0..5 {
        s.record_event("d1", "acme", "note", &serde_json::json!({ "n": n }), 10 + n)
            .await
            .unwrap();
    }
    s.session_heartbeats(&[beat("d1", "no-such-session", 99)])
        .await
        .unwrap();
    assert_eq!(
        s.get_device("acme", "d1")
            .await
            .unwrap()
            .unwrap()
            .last_heartbeat,
        None,
        "a heartbeat needs the current session"
    );
    let all = s.list_events(&all_events("d1")).await.unwrap();
    assert_eq!(all.len(), 6, "created + 5");
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(all[3].detail, serde_json::json!({"n": 2}));
    assert_eq!(all[3].timestamp, 12);
    let fwd = EventQuery {
        after_id: Some(all[1].id),
        limit: 2,
        ..all_events("d1")
    };
    assert_eq!(s.list_events(&fwd).await.unwrap(), all[2..4].to_vec());
    let back = EventQuery {
        after_id: Some(all[4].id),
        direction: Direction::Backward,
        limit: 3,
        ..all_events("d1")
    };
    let mut expect = all[1..4].to_vec();
    expect.reverse();
    assert_eq!(s.list_events(&back).await.unwrap(), expect);
    assert_eq!(s.list_events(&all_events("d2")).await.unwrap().len(), 1);
}

/// Runs `n` copies of `f` at once, alternating between the replicas.
async fn race<T, F, Fut>(stores: &[Arc<dyn Store>], n: usize, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Arc<dyn Store>, usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let tasks: Vec<_> = (0..n)
        .map(|k| tokio::spawn(f(Arc::clone(&stores[k % stores.len()]), k)))
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn replicas_bind_an_install_id_to_one_key(stores: Vec<Arc<dyn Store>>) {
    stores[0].create_device(&new_device("d1", 1)).await.unwrap();
    let results = race(&stores, 8, |s, k| async move {
        s.complete_enrollment(&commit("d1", &format!("key{k}"), &format!("s{k}")))
            .await
    })
    .await;
    let won: Vec<usize> = (0..8).filter(|k| results[*k].is_ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(StoreError::Conflict(_)))),
        "{results:?}"
    );
    let e = stores[1].find_enrollment("hash-d1").await.unwrap().unwrap();
    assert_eq!(e.bound_key_sha256, Some(format!("key{}", won[0])));
    for k in 0..8 {
        let cert = stores[0].get_cert(&format!("s{k}")).await.unwrap();
        let key = stores[0].find_api_key(&format!("kh-s{k}")).await.unwrap();
        assert_eq!(cert.is_some(), k == won[0]);
        assert_eq!(key.is_some(), k == won[0]);
    }
}

async fn replicas_number_config_versions_uniquely(stores: Vec<Arc<dyn Store>>) {
    stores[0].create_device(&new_device("d1", 1)).await.unwrap();
    let results = race(&stores, 10, |s, k| async move {
        s.put_config("acme", "d1", &serde_json::json!({ "k": k }), 10)
            .await
            .unwrap()
            .unwrap()
    })
    .await;
    let mut versions: Vec<u64> = results.iter().map(|c| c.version).collect();
    versions.sort_unstable();
    assert_eq!(versions, (2..=11).collect::<Vec<_>>());
    let stored = stores[1].list_configs("d1", None, 100).await.unwrap();
    assert_eq!(stored.len(), 11);
    for c in &results {
        assert_eq!(
            stores[1].get_config("d1", Some(c.version)).await.unwrap(),
            Some(c.clone())
        );
    }
    let current = stores[0].get_config("d1", None).await.unwrap().unwrap();
    assert_eq!(current.version, 11);
}

async fn replicas_serialize_rotations(stores: Vec<Arc<dyn Store>>) {
    stores[0].create_device(&new_device("d1", 1)).await.unwrap();
    stores[0]
        .complete_enrollment(&commit("d1", "keyA", "s0"))
        .await
        .unwrap();
    stores[0].spend_install_id("d1").await.unwrap();
    race(&stores, 6, |s, k| async move {
        s.rotate_cert(&rotation("d1", "s0", &format!("r{k}"), 100 + k as i64))
            .await
            .unwrap()
    })
    .await;
    // Whatever the order, the result is that of some serial order: one
    // current certificate (the one the device row names), the rest
    // superseded.
    let mut current = Vec::new();
    for serial in ["s0", "r0", "r1", "r2", "r3", "r4", "r5"] {
        let c = stores[1].get_cert(serial).await.unwrap().unwrap();
        assert!(!c.revoked, "{serial}");
        if c.superseded_at.is_none() {
            current.push(serial);
        }
    }
    assert_eq!(current.len(), 1, "{current:?}");
    let k: i64 = current[0][1..].parse().unwrap();
    let dev = stores[1].get_device("acme", "d1").await.unwrap().unwrap();
    assert_eq!(dev.cert_expires_at, Some(100 + k + 1000));
}

async fn replicas_store_overlapping_batches_once(stores: Vec<Arc<dyn Store>>) {
    stores[0].create_device(&new_device("d1", 1)).await.unwrap();
    let ranges = [(1u64, 60u64), (30, 90), (1, 100), (50, 100)];
    let stored = race(&stores, ranges.len(), |s, k| {
        let (from, to) = ranges[k];
        async move {
            let samples: Vec<_> = (from..=to).map(sample).collect();
            let logs: Vec<_> = (from..=to)
                .map(|seq| LogRecord {
                    seq,
                    timestamp: seq as i64,
                    service: "app".into(),
                    severity: "info".into(),
                    message: String::new(),
                })
                .collect();
            (
                s.insert_telemetry("d1", &samples, 0).await.unwrap(),
                s.insert_logs("d1", &logs, 0).await.unwrap(),
            )
        }
    })
    .await;
    assert_eq!(stored.iter().map(|(t, _)| t).sum::<u64>(), 100);
    assert_eq!(stored.iter().map(|(_, l)| l).sum::<u64>(), 100);
    assert_eq!(stores[1].last_telemetry_seq("d1").await.unwrap(), 100);
    assert_eq!(stores[1].last_log_seq("d1").await.unwrap(), 100);
}

async fn replicas_page_events_without_gaps(stores: Vec<Arc<dyn Store>>) {
    stores[0].create_device(&new_device("d1", 1)).await.unwrap();
    const WRITERS: usize = 8;
    const EACH: usize = 25;
    let writers = {
        let stores = stores.clone();
        tokio::spawn(async move {
            race(&stores, WRITERS, |s, w| async move {
                for n in 0..EACH {
                    s.record_event(
                        "d1",
                        "acme",
                        "note",
                        &serde_json::json!({"w": w, "n": n}),
                        5,
                    )
                    .await
                    .unwrap();
                }
            })
            .await
        })
    };
    // A reader following the events forward by id, as a UI tailing them
    // would, must not skip any: ids must become visible in order.
    let reader = &stores[1];
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let done = writers.is_finished();
        let page = reader
            .list_events(&EventQuery {
                device_id: "d1".into(),
                after_id: after,
                direction: Direction::Forward,
                limit: 7,
            })
            .await
            .unwrap();
        if let Some(last) = page.last() {
            after = Some(last.id);
        }
        let empty = page.is_empty();
        seen.extend(page);
        if done && empty {
            break;
        }
    }
    writers.await.unwrap();
    assert_eq!(seen.len(), 1 + WRITERS * EACH, "created + every note");
    let mut ids: Vec<i64> = seen.iter().map(|e| e.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), seen.len());
}

async fn replicas_record_a_loss_increase_once(stores: Vec<Arc<dyn Store>>) {
    stores[0].create_device(&new_device("d1", 1)).await.unwrap();
    let totals = LossTotals {
        telemetry_dropped: 7,
        ..Default::default()
    };
    let recorded = race(&stores, 6, |s, _| async move {
        s.record_loss("d1", "acme", &totals, 10).await.unwrap()
    })
    .await;
    assert_eq!(recorded.iter().filter(|r| **r).count(), 1, "{recorded:?}");
    let kinds = events_of(stores[1].list_events(&all_events("d1")).await.unwrap());
    assert_eq!(kinds, vec!["created", "data_lost"]);
}

async fn replicas_record_a_patch_once(stores: Vec<Arc<dyn Store>>) {
    stores[0].create_device(&new_device("d1", 1)).await.unwrap();
    let patch = DevicePatch {
        enabled: Some(false),
        ..Default::default()
    };
    race(&stores, 6, |s, _| {
        let patch = patch.clone();
        async move {
            let d = s.update_device("acme", "d1", &patch, 10).await.unwrap();
            assert!(!d.unwrap().enabled);
        }
    })
    .await;
    let kinds = events_of(stores[1].list_events(&all_events("d1")).await.unwrap());
    assert_eq!(kinds, vec!["created", "disabled"]);
}

async fn enrollment_state_follows_install_ids_certificates_and_resets(s: Arc<dyn Store>) {
    let mut d = new_device("d1", 1);
    d.install_id_expires_at = 5_000;
    s.create_device(&d).await.unwrap();
    let dev = s.get_device("acme", "d1").await.unwrap().unwrap();
    assert_eq!(dev.awaiting_enrollment_until, Some(5_000));
    assert_eq!(dev.enrollment(4_999), EnrollmentState::Pending);
    assert_eq!(dev.enrollment(5_000), EnrollmentState::InstallIdExpired);
    // A new install ID for a device that never enrolled: pending again.
    assert!(
        s.reissue_install_id("acme", "d1", "hash-new", 9_000, 6_000)
            .await
            .unwrap()
    );
    let dev = s.get_device("acme", "d1").await.unwrap().unwrap();
    assert_eq!(dev.enrollment(6_000), EnrollmentState::Pending);
    // Enrolled (a certificate) even before the first connection spends
    // the install ID.
    let mut c = commit("d1", "keyA", "s1");
    c.cert.not_after = 100_000;
    s.complete_enrollment(&c).await.unwrap();
    let dev = s.get_device("acme", "d1").await.unwrap().unwrap();
    assert_eq!(dev.enrollment(6_000), EnrollmentState::Enrolled);
    s.spend_install_id("d1").await.unwrap();
    // A new install ID while the box holds a good certificate: still
    // enrolled (the box keeps working until it uses the new one).
    assert!(
        s.reissue_install_id("acme", "d1", "hash-2", 9_000, 6_000)
            .await
            .unwrap()
    );
    let dev = s.get_device("acme", "d1").await.unwrap().unwrap();
    assert_eq!(dev.enrollment(6_000), EnrollmentState::Enrolled);
    // Reset by force: the certificate is gone, the box must enroll again.
    assert!(
        s.force_reset("acme", "d1", "hash-3", 20_000, 7_000)
            .await
            .unwrap()
    );
    let dev = s.get_device("acme", "d1").await.unwrap().unwrap();
    assert_eq!(dev.cert_expires_at, None);
    assert_eq!(dev.enrollment(7_000), EnrollmentState::Pending);
    assert_eq!(dev.enrollment(20_000), EnrollmentState::InstallIdExpired);
}

async fn list_filters_by_exact_name(s: Arc<dyn Store>) {
    for (id, name) in [("a", "cam"), ("b", "cam 2"), ("c", "cam")] {
        let mut d = new_device(id, 1);
        d.name = name.into();
        s.create_device(&d).await.unwrap();
    }
    let mut q = list_query(None, None, 0);
    q.name = Some("cam".into());
    let ids: Vec<String> = s
        .list_devices(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["a", "c"]);
    q.name = Some("CAM".into());
    assert!(s.list_devices(&q).await.unwrap().is_empty(), "exact match");
}

async fn the_first_ca_fingerprint_recorded_stays(s: Arc<dyn Store>) {
    assert_eq!(s.ca_fingerprint().await.unwrap(), None);
    assert_eq!(
        s.record_ca_fingerprint("sha256:aa", 1).await.unwrap(),
        "sha256:aa"
    );
    assert_eq!(
        s.record_ca_fingerprint("sha256:bb", 2).await.unwrap(),
        "sha256:aa",
        "a second CA does not replace the first"
    );
    assert_eq!(
        s.ca_fingerprint().await.unwrap().as_deref(),
        Some("sha256:aa")
    );
}

fn audit_entry(ws: Option<&str>, action: &str, ts: i64) -> NewAuditEntry {
    NewAuditEntry {
        timestamp: ts,
        workspace: ws.map(String::from),
        actor: Some("key_1".into()),
        action: action.into(),
        target: Some("d1".into()),
        status: 204,
        request_id: Some(format!("req-{ts}")),
        client_addr: Some("127.0.0.1:5000".into()),
    }
}

async fn audit_entries_filter_page_and_prune(s: Arc<dyn Store>) {
    for ts in 1..=6 {
        let action = if ts % 2 == 0 {
            "deleteDevice"
        } else {
            "createDevice"
        };
        s.insert_audit(&audit_entry(Some("acme"), action, ts * 10))
            .await
            .unwrap();
    }
    s.insert_audit(&audit_entry(Some("other"), "createDevice", 15))
        .await
        .unwrap();
    s.insert_audit(&NewAuditEntry {
        actor: None,
        target: None,
        request_id: None,
        client_addr: None,
        status: 401,
        ..audit_entry(None, "createDevice", 16)
    })
    .await
    .unwrap();
    let q = |direction, after_id, limit| AuditQuery {
        workspace: "acme".into(),
        start: None,
        end: None,
        action: None,
        after_id,
        direction,
        limit,
    };
    let all = s
        .list_audit(&q(Direction::Forward, None, 100))
        .await
        .unwrap();
    assert_eq!(all.len(), 6, "only acme's entries");
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(all[0].entry, audit_entry(Some("acme"), "createDevice", 10));
    // Pages both ways.
    let page = s
        .list_audit(&q(Direction::Forward, Some(all[1].id), 2))
        .await
        .unwrap();
    assert_eq!(page, all[2..4].to_vec());
    let back = s
        .list_audit(&q(Direction::Backward, Some(all[4].id), 3))
        .await
        .unwrap();
    let mut expect = all[1..4].to_vec();
    expect.reverse();
    assert_eq!(back, expect);
    // Filters: time window (start inclusive, end exclusive) and action.
    let filtered = s
        .list_audit(&AuditQuery {
            start: Some(20),
            end: Some(60),
            action: Some("deleteDevice".into()),
            ..q(Direction::Forward, None, 100)
        })
        .await
        .unwrap();
    let times: Vec<i64> = filtered.iter().map(|e| e.entry.timestamp).collect();
    assert_eq!(times, vec![20, 40]);
    // Retention.
    assert_eq!(s.prune_audit(31).await.unwrap(), 5, "10, 15, 16, 20, 30");
    let left = s
        .list_audit(&q(Direction::Forward, None, 100))
        .await
        .unwrap();
    assert_eq!(left, all[3..].to_vec());
    // A key's workspace by id.
    s.create_api_key(&NewApiKey {
        id: "key_w".into(),
        workspace: "acme".into(),
        key_hash: "h".into(),
        scopes: None,
        device_id: None,
        created_at: 1,
    })
    .await
    .unwrap();
    assert_eq!(
        s.api_key_workspace("key_w").await.unwrap().as_deref(),
        Some("acme")
    );
    assert_eq!(s.api_key_workspace("key_none").await.unwrap(), None);
}

/// Two replicas appending audit entries while a reader follows them forward
/// by id: ids become visible in order, so the reader misses none.
async fn replicas_page_audit_entries_without_gaps(stores: Vec<Arc<dyn Store>>) {
    const WRITERS: usize = 8;
    const EACH: usize = 25;
    let writers = {
        let stores = stores.clone();
        tokio::spawn(async move {
            race(&stores, WRITERS, |s, w| async move {
                for n in 0..EACH {
                    let ts = (w * EACH + n) as i64;
                    s.insert_audit(&audit_entry(Some("acme"), "deleteDevice", ts))
                        .await
                        .unwrap();
                }
            })
            .await
        })
    };
    let reader = &stores[1];
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let done = writers.is_finished();
        let page = reader
            .list_audit(&AuditQuery {
                workspace: "acme".into(),
                start: None,
                end: None,
                action: None,
                after_id: after,
                direction: Direction::Forward,
                limit: 7,
            })
            .await
            .unwrap();
        if let Some(last) = page.last() {
            after = Some(last.id);
        }
        let empty = page.is_empty();
        seen.extend(page);
        if done && empty {
            break;
        }
    }
    writers.await.unwrap();
    let mut times: Vec<i64> = seen.iter().map(|e| e.entry.timestamp).collect();
    times.sort();
    assert_eq!(times, (0..(WRITERS * EACH) as i64).collect::<Vec<_>>());
}

fn new_token(id: &str, max_uses: u64, expires_at: Option<i64>) -> NewEnrollmentToken {
    NewEnrollmentToken {
        id: id.into(),
        workspace: "acme".into(),
        token_hash: format!("th-{id}"),
        name: format!("token {id}"),
        max_uses,
        expires_at,
        labels: [("site".to_string(), "berlin".to_string())].into(),
        device_type: "edge".into(),
        created_at: 1,
    }
}

/// A token enrollment of `device` with `key`; `create`: a first use.
fn token_commit(
    token: &str,
    device: &str,
    key: &str,
    serial: &str,
    create: bool,
) -> EnrollmentCommit {
    let mut c = commit(device, key, serial);
    c.token = Some(TokenEnrollment {
        token_id: token.into(),
        create: create.then(|| {
            let mut d = new_device(device, 5);
            d.install_id_hash = String::new();
            d.labels = [("site".to_string(), "berlin".to_string())].into();
            d
        }),
    });
    c
}

async fn enrollment_tokens_spend_bind_and_refuse(s: Arc<dyn Store>) {
    s.create_enrollment_token(&new_token("t1", 2, None))
        .await
        .unwrap();
    let t = s.find_enrollment_token("th-t1").await.unwrap().unwrap();
    assert_eq!(
        (t.uses, t.max_uses, t.state(10)),
        (0, 2, TokenState::Active)
    );
    assert!(s.find_enrollment_token("th-nope").await.unwrap().is_none());

    // First use: the device exists with the token's labels, bound to the key.
    s.complete_enrollment(&token_commit("t1", "d1", "k1", "s1", true))
        .await
        .unwrap();
    let d = s.get_device("acme", "d1").await.unwrap().unwrap();
    assert_eq!(d.labels.get("site").map(String::as_str), Some("berlin"));
    assert_eq!(
        s.token_binding("t1", "k1").await.unwrap().as_deref(),
        Some("d1")
    );
    assert_eq!(
        s.find_enrollment_token("th-t1")
            .await
            .unwrap()
            .unwrap()
            .uses,
        1
    );
    let events = s
        .list_events(&EventQuery {
            device_id: "d1".into(),
            after_id: None,
            direction: Direction::Forward,
            limit: 10,
        })
        .await
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["created", "enrolled"]);
    assert_eq!(events[1].detail["token_id"], "t1");

    // A retry with the same key: a new cert for the same device, no use.
    s.complete_enrollment(&token_commit("t1", "d1", "k1", "s1b", false))
        .await
        .unwrap();
    assert_eq!(
        s.find_enrollment_token("th-t1")
            .await
            .unwrap()
            .unwrap()
            .uses,
        1
    );
    assert!(s.get_cert("s1").await.unwrap().unwrap().revoked);
    assert!(!s.get_cert("s1b").await.unwrap().unwrap().revoked);
    // A second first use of a bound key (a raced attempt): refused, nothing made.
    let e = s
        .complete_enrollment(&token_commit("t1", "dx", "k1", "sx", true))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    assert!(s.get_device("acme", "dx").await.unwrap().is_none());

    // The budget: the second key gets the last use, the third none.
    s.complete_enrollment(&token_commit("t1", "d2", "k2", "s2", true))
        .await
        .unwrap();
    let e = s
        .complete_enrollment(&token_commit("t1", "d3", "k3", "s3", true))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    assert!(s.get_device("acme", "d3").await.unwrap().is_none());
    assert!(s.get_cert("s3").await.unwrap().is_none());
    let t = s.find_enrollment_token("th-t1").await.unwrap().unwrap();
    assert_eq!((t.uses, t.state(10)), (2, TokenState::Exhausted));

    // Expired and revoked tokens spend nothing.
    s.create_enrollment_token(&new_token("t2", 5, Some(3)))
        .await
        .unwrap();
    let e = s
        .complete_enrollment(&token_commit("t2", "d4", "k4", "s4", true))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    assert_eq!(
        s.find_enrollment_token("th-t2")
            .await
            .unwrap()
            .unwrap()
            .state(5),
        TokenState::Expired
    );
    s.create_enrollment_token(&new_token("t3", 5, None))
        .await
        .unwrap();
    let r = s
        .revoke_enrollment_token("acme", "t3", 4)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.revoked_at, r.state(5)), (Some(4), TokenState::Revoked));
    // Idempotent: the first revocation's time stays.
    let r = s
        .revoke_enrollment_token("acme", "t3", 9)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.revoked_at, Some(4));
    assert!(
        s.revoke_enrollment_token("other", "t3", 9)
            .await
            .unwrap()
            .is_none()
    );
    let e = s
        .complete_enrollment(&token_commit("t3", "d5", "k5", "s5", true))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
    assert!(s.get_device("acme", "d5").await.unwrap().is_none());
    assert!(s.get_device("acme", "d4").await.unwrap().is_none());

    let listed = s.list_enrollment_tokens("acme").await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(s.list_enrollment_tokens("other").await.unwrap().is_empty());
}

async fn a_group_of_token_enrollments_refuses_only_those_over_budget(s: Arc<dyn Store>) {
    s.create_enrollment_token(&new_token("t1", 2, None))
        .await
        .unwrap();
    let group: Vec<EnrollmentCommit> = (0..4)
        .map(|k| {
            token_commit(
                "t1",
                &format!("g{k}"),
                &format!("k{k}"),
                &format!("s{k}"),
                true,
            )
        })
        .collect();
    let each = s.complete_enrollments(&group).await.unwrap();
    let ok: Vec<usize> = (0..4).filter(|k| each[*k].is_ok()).collect();
    assert_eq!(ok.len(), 2, "{each:?}");
    for (k, result) in each.iter().enumerate() {
        let stored = s
            .get_device("acme", &format!("g{k}"))
            .await
            .unwrap()
            .is_some();
        assert_eq!(stored, ok.contains(&k));
        if !ok.contains(&k) {
            assert!(matches!(result, Err(StoreError::Conflict(_))));
            assert!(
                s.token_binding("t1", &format!("k{k}"))
                    .await
                    .unwrap()
                    .is_none()
            );
        }
    }
    assert_eq!(
        s.find_enrollment_token("th-t1")
            .await
            .unwrap()
            .unwrap()
            .uses,
        2
    );
}

async fn labels_are_stored_filtered_and_merged(s: Arc<dyn Store>) {
    use crate::labels::Selector;
    let with = |id: &str, at: i64, l: &[(&str, &str)]| {
        let mut d = new_device(id, at);
        d.labels = l
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        d
    };
    s.create_device(&with("a", 1, &[("site", "berlin"), ("gpu", "")]))
        .await
        .unwrap();
    s.create_device(&with("b", 2, &[("site", "paris")]))
        .await
        .unwrap();
    s.create_device(&with("c", 3, &[])).await.unwrap();
    let ids = |sel: &[&str]| {
        let s = s.clone();
        let mut q = list_query(None, None, 0);
        q.labels = sel.iter().map(|x| Selector::parse(x).unwrap()).collect();
        async move {
            s.list_devices(&q)
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids(&[]).await, ["a", "b", "c"]);
    assert_eq!(ids(&["site"]).await, ["a", "b"]);
    assert_eq!(ids(&["site=paris"]).await, ["b"]);
    assert_eq!(ids(&["site=berlin", "gpu"]).await, ["a"]);
    assert_eq!(ids(&["site=paris", "gpu"]).await, Vec::<String>::new());
    assert_eq!(ids(&["gpu="]).await, ["a"]);

    // Merge patch: set, replace, remove; other keys stay.
    let patch = DevicePatch {
        labels: Some(
            [
                ("site".to_string(), Some("rome".to_string())),
                ("gpu".to_string(), None),
                ("tier".to_string(), Some("1".to_string())),
            ]
            .into(),
        ),
        ..Default::default()
    };
    let d = s
        .update_device("acme", "a", &patch, 5)
        .await
        .unwrap()
        .unwrap();
    let want: crate::labels::Labels = [
        ("site".to_string(), "rome".to_string()),
        ("tier".to_string(), "1".to_string()),
    ]
    .into();
    assert_eq!(d.labels, want);
    assert_eq!(
        s.get_device("acme", "a").await.unwrap().unwrap().labels,
        want
    );
    let events = s
        .list_events(&EventQuery {
            device_id: "a".into(),
            after_id: None,
            direction: Direction::Backward,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(events[0].kind, "updated");
    assert_eq!(events[0].detail["labels"]["to"]["site"], "rome");
    assert_eq!(events[0].detail["labels"]["from"]["site"], "berlin");
    assert_eq!(ids(&["gpu"]).await, Vec::<String>::new());
    assert_eq!(ids(&["site=rome", "tier=1"]).await, ["a"]);

    // Over 32 after the merge: refused, nothing changed.
    let many = DevicePatch {
        labels: Some(
            (0..31)
                .map(|i| (format!("k{i}"), Some(String::new())))
                .collect(),
        ),
        ..Default::default()
    };
    let e = s.update_device("acme", "a", &many, 6).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Invalid(ref m) if m.contains("32")),
        "{e:?}"
    );
    assert_eq!(
        s.get_device("acme", "a").await.unwrap().unwrap().labels,
        want
    );
}

async fn replicas_spend_a_token_within_its_budget(stores: Vec<Arc<dyn Store>>) {
    stores[0]
        .create_enrollment_token(&new_token("t1", 10, None))
        .await
        .unwrap();
    let results = race(&stores, 50, |s, k| async move {
        s.complete_enrollment(&token_commit(
            "t1",
            &format!("r{k}"),
            &format!("key{k}"),
            &format!("s{k}"),
            true,
        ))
        .await
    })
    .await;
    let won: Vec<usize> = (0..50).filter(|k| results[*k].is_ok()).collect();
    assert_eq!(won.len(), 10, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(StoreError::Conflict(_)))),
        "{results:?}"
    );
    let all = stores[1]
        .list_devices(&list_query(None, None, 0))
        .await
        .unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(
        stores[1]
            .find_enrollment_token("th-t1")
            .await
            .unwrap()
            .unwrap()
            .uses,
        10
    );
    for k in 0..50 {
        let bound = stores[0]
            .token_binding("t1", &format!("key{k}"))
            .await
            .unwrap();
        assert_eq!(bound.is_some(), won.contains(&k));
    }
}

async fn a_new_install_id_or_a_forced_reset_forgets_token_bindings(s: Arc<dyn Store>) {
    s.create_enrollment_token(&new_token("t1", 5, None))
        .await
        .unwrap();
    for (d, k) in [("d1", "k1"), ("d2", "k2"), ("d3", "k3")] {
        s.complete_enrollment(&token_commit("t1", d, k, &format!("s-{d}"), true))
            .await
            .unwrap();
    }
    // A forced reset: the old key no longer re-enrolls the device by retry.
    assert!(
        s.force_reset("acme", "d1", "hash-r1", i64::MAX, 10)
            .await
            .unwrap()
    );
    assert_eq!(s.token_binding("t1", "k1").await.unwrap(), None);
    // A new install ID: the same.
    assert!(
        s.reissue_install_id("acme", "d2", "hash-r2", i64::MAX, 10)
            .await
            .unwrap()
    );
    assert_eq!(s.token_binding("t1", "k2").await.unwrap(), None);
    // Others keep theirs (a lost response is still retry-safe).
    assert_eq!(
        s.token_binding("t1", "k3").await.unwrap().as_deref(),
        Some("d3")
    );
}

// ---- artifacts and publisher keys ----

fn artifact(name: &str, version: &str, manifest: &str, size: u64) -> ArtifactRecord {
    ArtifactRecord {
        workspace: "acme".into(),
        name: name.into(),
        version: version.into(),
        manifest_json: manifest.into(),
        public_key: "ed25519:AAAA".into(),
        signature: "sig".into(),
        size,
        sha256: "00".repeat(32),
        state: ARTIFACT_AWAITING_PAYLOAD.into(),
        created_at: 7,
        uploaded_at: None,
    }
}

async fn publisher_keys_are_added_once_listed_and_removed(s: Arc<dyn Store>) {
    s.create_workspace(&Workspace {
        name: "other".into(),
        features: vec![],
        created_at: 1,
    })
    .await
    .unwrap();
    assert!(s.add_publisher_key("acme", "ed25519:k1", 10).await.unwrap());
    assert!(!s.add_publisher_key("acme", "ed25519:k1", 11).await.unwrap());
    assert!(s.add_publisher_key("acme", "ed25519:k2", 12).await.unwrap());
    assert!(
        s.add_publisher_key("other", "ed25519:k3", 13)
            .await
            .unwrap()
    );
    let keys = s.list_publisher_keys("acme").await.unwrap();
    assert_eq!(
        keys,
        vec![
            PublisherKeyRecord {
                public_key: "ed25519:k1".into(),
                added_at: 10
            },
            PublisherKeyRecord {
                public_key: "ed25519:k2".into(),
                added_at: 12
            },
        ]
    );
    assert!(s.remove_publisher_key("acme", "ed25519:k1").await.unwrap());
    assert!(!s.remove_publisher_key("acme", "ed25519:k1").await.unwrap());
    assert!(!s.remove_publisher_key("acme", "ed25519:k3").await.unwrap());
    let keys: Vec<_> = s
        .list_publisher_keys("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.public_key)
        .collect();
    assert_eq!(keys, vec!["ed25519:k2".to_string()]);
    assert_eq!(s.list_publisher_keys("other").await.unwrap().len(), 1);
}

async fn artifacts_are_created_once_and_refuse_other_bytes(s: Arc<dyn Store>) {
    let a = artifact("model", "1.0", r#"{"v":1}"#, 10);
    assert!(s.create_artifact(&a).await.unwrap());
    // The same manifest again: retry-safe, nothing changes.
    let mut again = a.clone();
    again.created_at = 99;
    assert!(!s.create_artifact(&again).await.unwrap());
    assert_eq!(
        s.get_artifact("acme", "model", "1.0").await.unwrap(),
        Some(a.clone())
    );
    let other = artifact("model", "1.0", r#"{"v":2}"#, 10);
    assert!(matches!(
        s.create_artifact(&other).await,
        Err(StoreError::Conflict(_))
    ));
    let b = artifact("model", "1.1", r#"{"v":3}"#, 10);
    let c = artifact("alpha", "0.1", r#"{"v":4}"#, 10);
    s.create_artifact(&b).await.unwrap();
    s.create_artifact(&c).await.unwrap();
    let listed: Vec<String> = s
        .list_artifacts("acme")
        .await
        .unwrap()
        .iter()
        .map(|a| format!("{}@{}", a.name, a.version))
        .collect();
    assert_eq!(listed, vec!["alpha@0.1", "model@1.0", "model@1.1"]);
    assert!(s.list_artifacts("nope").await.unwrap().is_empty());
    assert_eq!(s.get_artifact("nope", "model", "1.0").await.unwrap(), None);
}

async fn artifact_payload_chunks_make_it_ready_only_when_complete(s: Arc<dyn Store>) {
    let size = ARTIFACT_CHUNK_SIZE as u64 * 2 + 5;
    s.create_artifact(&artifact("m", "1", "{}", size))
        .await
        .unwrap();
    let chunk0 = vec![1u8; ARTIFACT_CHUNK_SIZE];
    let chunk1 = vec![2u8; ARTIFACT_CHUNK_SIZE];
    let chunk2 = vec![3u8; 5];
    s.put_artifact_chunk("acme", "m", "1", 0, &chunk0)
        .await
        .unwrap();
    s.put_artifact_chunk("acme", "m", "1", 1, &chunk1)
        .await
        .unwrap();
    // Incomplete: refused, still awaiting.
    assert!(matches!(
        s.mark_artifact_ready("acme", "m", "1", 50).await,
        Err(StoreError::Conflict(_))
    ));
    s.put_artifact_chunk("acme", "m", "1", 2, &chunk2)
        .await
        .unwrap();
    s.mark_artifact_ready("acme", "m", "1", 50).await.unwrap();
    let a = s.get_artifact("acme", "m", "1").await.unwrap().unwrap();
    assert_eq!(a.state, ARTIFACT_READY);
    assert_eq!(a.uploaded_at, Some(50));
    assert_eq!(
        s.read_artifact_chunk("acme", "m", "1", 1).await.unwrap(),
        Some(chunk1)
    );
    assert_eq!(
        s.read_artifact_chunk("acme", "m", "1", 2).await.unwrap(),
        Some(chunk2)
    );
    assert_eq!(
        s.read_artifact_chunk("acme", "m", "1", 3).await.unwrap(),
        None
    );
    assert_eq!(
        s.read_artifact_chunk("other", "m", "1", 0).await.unwrap(),
        None
    );
    // Ready: no more writes, no second ready.
    assert!(matches!(
        s.put_artifact_chunk("acme", "m", "1", 0, b"x").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.mark_artifact_ready("acme", "m", "1", 60).await,
        Err(StoreError::Conflict(_))
    ));
    // A discard does not touch a ready payload.
    s.discard_artifact_chunks("acme", "m", "1").await.unwrap();
    assert_eq!(
        s.read_artifact_chunk("acme", "m", "1", 0).await.unwrap(),
        Some(chunk0)
    );
    assert!(matches!(
        s.put_artifact_chunk("acme", "nope", "1", 0, b"x").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.mark_artifact_ready("acme", "nope", "1", 60).await,
        Err(StoreError::NotFound)
    ));
}

async fn discarded_chunks_leave_the_artifact_awaiting_and_deletes_take_everything(
    s: Arc<dyn Store>,
) {
    s.create_artifact(&artifact("m", "1", "{}", 3))
        .await
        .unwrap();
    s.put_artifact_chunk("acme", "m", "1", 0, b"abc")
        .await
        .unwrap();
    s.discard_artifact_chunks("acme", "m", "1").await.unwrap();
    assert_eq!(
        s.read_artifact_chunk("acme", "m", "1", 0).await.unwrap(),
        None
    );
    let a = s.get_artifact("acme", "m", "1").await.unwrap().unwrap();
    assert_eq!(a.state, ARTIFACT_AWAITING_PAYLOAD);
    // Uploaded again, ready, deleted: the chunks go with it.
    s.put_artifact_chunk("acme", "m", "1", 0, b"abc")
        .await
        .unwrap();
    s.mark_artifact_ready("acme", "m", "1", 9).await.unwrap();
    assert!(s.delete_artifact("acme", "m", "1").await.unwrap());
    assert!(!s.delete_artifact("acme", "m", "1").await.unwrap());
    assert_eq!(s.get_artifact("acme", "m", "1").await.unwrap(), None);
    assert_eq!(
        s.read_artifact_chunk("acme", "m", "1", 0).await.unwrap(),
        None
    );
    // The same name@version can be published again after a delete.
    assert!(
        s.create_artifact(&artifact("m", "1", r#"{"new":1}"#, 3))
            .await
            .unwrap()
    );
}

// ---- rollouts ----

use crate::rollout::{DeviceState, RolloutState, Transition};

fn new_rollout(id: &str, version: &str, devices: &[(&str, u32)], created_at: i64) -> NewRollout {
    let waves = devices.iter().map(|(_, w)| *w).max().unwrap_or(0) + 1;
    NewRollout {
        id: id.into(),
        workspace: "acme".into(),
        artifact_name: "model".into(),
        artifact_version: version.into(),
        selector: vec!["site=a".into()],
        waves: (0..waves)
            .map(|w| {
                if w + 1 == waves {
                    "100%".into()
                } else {
                    format!("{}", w + 1)
                }
            })
            .collect(),
        max_failures: 0,
        wave_timeout_ms: 60_000,
        approve_waves: false,
        created_at,
        devices: devices.iter().map(|(d, w)| (d.to_string(), *w)).collect(),
    }
}

async fn rollout_fleet(s: &Arc<dyn Store>, devices: &[&str]) {
    // The key `artifact()` records as the signer's.
    s.add_publisher_key("acme", "ed25519:AAAA", 1)
        .await
        .unwrap();
    for (i, d) in devices.iter().enumerate() {
        s.create_device(&new_device(d, i as i64 + 1)).await.unwrap();
    }
    for v in ["1", "2"] {
        s.create_artifact(&artifact("model", v, &format!("{{\"v\":\"{v}\"}}"), 10))
            .await
            .unwrap();
    }
}

fn step(r: &Rollout, state: RolloutState, wave: u32, now: i64) -> Transition {
    Transition {
        from_state: r.state,
        from_wave: r.current_wave,
        state,
        reason: None,
        current_wave: wave,
        wave_started_at: now,
        accepted_failures: 0,
    }
}

fn report(rollout: &str, version: &str, state: DeviceState) -> ArtifactReport {
    ArtifactReport {
        name: "model".into(),
        version: version.into(),
        rollout_id: rollout.into(),
        state,
        error: state
            .is_failure()
            .then(|| "health check exited 1".to_string()),
        installed: vec![],
    }
}

async fn rollouts_are_created_read_and_one_is_active_per_artifact(s: Arc<dyn Store>) {
    rollout_fleet(&s, &["d1", "d2", "d3"]).await;
    let r1 = new_rollout("ro_1", "1", &[("d2", 0), ("d1", 1), ("d3", 1)], 100);
    s.create_rollout(&r1).await.unwrap();
    let got = s.get_rollout("acme", "ro_1").await.unwrap().unwrap();
    assert_eq!(got.state, RolloutState::Running);
    assert_eq!(
        (got.current_wave, got.wave_started_at, got.accepted_failures),
        (0, 100, 0)
    );
    assert_eq!(got.waves, vec!["1", "100%"]);
    assert_eq!(got.selector, vec!["site=a"]);
    let devs: Vec<(&str, u32, DeviceState)> = got
        .devices
        .iter()
        .map(|d| (d.device_id.as_str(), d.wave, d.state))
        .collect();
    assert_eq!(
        devs,
        vec![
            ("d2", 0, DeviceState::Pending),
            ("d1", 1, DeviceState::Pending),
            ("d3", 1, DeviceState::Pending)
        ]
    );
    assert_eq!(got.devices[0].name, "dev d2");
    assert_eq!(s.get_rollout("other", "ro_1").await.unwrap(), None);
    // Another active rollout of the same artifact name: refused, nothing kept.
    let r2 = new_rollout("ro_2", "2", &[("d1", 0)], 200);
    assert!(matches!(
        s.create_rollout(&r2).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_rollout("acme", "ro_2").await.unwrap(), None);
    // Paused still holds the name; aborted frees it.
    assert!(
        s.apply_rollout_transition("ro_1", &step(&got, RolloutState::Paused, 0, 100), 150)
            .await
            .unwrap()
    );
    assert!(matches!(
        s.create_rollout(&r2).await,
        Err(StoreError::Conflict(_))
    ));
    let paused = s.get_rollout("acme", "ro_1").await.unwrap().unwrap();
    assert!(
        s.apply_rollout_transition("ro_1", &step(&paused, RolloutState::Aborted, 0, 100), 160)
            .await
            .unwrap()
    );
    s.create_rollout(&r2).await.unwrap();
    let listed: Vec<(String, RolloutState)> = s
        .list_rollouts(&RolloutListQuery {
            workspace: "acme".into(),
            before: None,
            limit: 10,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.rollout.id, r.rollout.state))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("ro_2".into(), RolloutState::Running),
            ("ro_1".into(), RolloutState::Aborted)
        ]
    );
    let running: Vec<String> = s
        .running_rollouts()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.rollout.id)
        .collect();
    assert_eq!(running, vec!["ro_2"]);
    let counts = s.rollout_counts().await.unwrap();
    let mut states = counts.rollouts.clone();
    states.sort();
    assert_eq!(states, vec![("aborted".into(), 1), ("running".into(), 1)]);
    assert_eq!(
        counts.devices,
        vec![("ro_2".into(), "model@2".into(), "pending".into(), 1)]
    );
}

async fn rollout_steps_apply_conditionally_and_reports_only_move_forward(s: Arc<dyn Store>) {
    rollout_fleet(&s, &["d1", "d2"]).await;
    s.create_rollout(&new_rollout("ro_1", "1", &[("d1", 0), ("d2", 1)], 100))
        .await
        .unwrap();
    let r = s.get_rollout("acme", "ro_1").await.unwrap().unwrap();
    // A step decided from a stale row does not apply.
    let mut stale = step(&r, RolloutState::Running, 1, 500);
    stale.from_wave = 1;
    assert!(
        !s.apply_rollout_transition("ro_1", &stale, 500)
            .await
            .unwrap()
    );
    let mut stale = step(&r, RolloutState::Running, 1, 500);
    stale.from_state = RolloutState::Paused;
    assert!(
        !s.apply_rollout_transition("ro_1", &stale, 500)
            .await
            .unwrap()
    );

    assert!(
        s.record_artifact_report(
            "d1",
            "acme",
            &report("ro_1", "1", DeviceState::Downloading),
            200
        )
        .await
        .unwrap()
    );
    // Not again, and not backwards.
    assert!(
        !s.record_artifact_report(
            "d1",
            "acme",
            &report("ro_1", "1", DeviceState::Downloading),
            210
        )
        .await
        .unwrap()
    );
    let mut done = report("ro_1", "1", DeviceState::Succeeded);
    done.installed = vec![("model".into(), "1".into()), ("other".into(), "0.1".into())];
    assert!(
        s.record_artifact_report("d1", "acme", &done, 300)
            .await
            .unwrap()
    );
    assert!(
        !s.record_artifact_report(
            "d1",
            "acme",
            &report("ro_1", "1", DeviceState::Verifying),
            310
        )
        .await
        .unwrap()
    );
    assert!(
        !s.record_artifact_report("d1", "acme", &report("ro_1", "1", DeviceState::Failed), 320)
            .await
            .unwrap(),
        "an outcome is final"
    );
    // Another version, another rollout, another device, another workspace: nothing moves.
    assert!(
        !s.record_artifact_report("d2", "acme", &report("ro_1", "2", DeviceState::Failed), 330)
            .await
            .unwrap()
    );
    assert!(
        !s.record_artifact_report("d2", "acme", &report("ro_9", "1", DeviceState::Failed), 330)
            .await
            .unwrap()
    );
    assert!(
        !s.record_artifact_report(
            "d2",
            "other",
            &report("ro_1", "1", DeviceState::Failed),
            330
        )
        .await
        .unwrap()
    );
    // An unknown rollout still records what runs.
    let mut unknown = report("ro_9", "1", DeviceState::Succeeded);
    unknown.installed = vec![("model".into(), "1".into())];
    assert!(
        !s.record_artifact_report("d2", "acme", &unknown, 340)
            .await
            .unwrap()
    );
    let assert_states = |r: &Rollout, want: &[(&str, DeviceState)]| {
        let got: Vec<(&str, DeviceState)> = r
            .devices
            .iter()
            .map(|d| (d.device_id.as_str(), d.state))
            .collect();
        assert_eq!(got, want);
    };
    let r = s.get_rollout("acme", "ro_1").await.unwrap().unwrap();
    assert_states(
        &r,
        &[("d1", DeviceState::Succeeded), ("d2", DeviceState::Pending)],
    );
    assert_eq!(r.devices[0].updated_at, 300);
    let kinds = events_of(s.list_events(&all_events("d1")).await.unwrap());
    assert_eq!(
        kinds
            .iter()
            .filter(|k| k.starts_with("artifact_"))
            .collect::<Vec<_>>(),
        vec!["artifact_installed"]
    );

    // The step to wave 2 applies once.
    let next = step(&r, RolloutState::Running, 1, 400);
    assert!(
        s.apply_rollout_transition("ro_1", &next, 400)
            .await
            .unwrap()
    );
    assert!(
        !s.apply_rollout_transition("ro_1", &next, 400)
            .await
            .unwrap()
    );
    let r = s.get_rollout("acme", "ro_1").await.unwrap().unwrap();
    assert_eq!(
        (r.current_wave, r.wave_started_at, r.updated_at),
        (1, 400, 400)
    );
    assert!(
        s.record_artifact_report(
            "d2",
            "acme",
            &report("ro_1", "1", DeviceState::RolledBack),
            450
        )
        .await
        .unwrap()
    );
    let r = s.get_rollout("acme", "ro_1").await.unwrap().unwrap();
    assert_eq!(r.devices[1].error.as_deref(), Some("health check exited 1"));
    let kinds = events_of(s.list_events(&all_events("d2")).await.unwrap());
    assert!(
        kinds.contains(&"artifact_rolled_back".to_string()),
        "{kinds:?}"
    );

    let mut ran = s
        .device_artifacts(&["d1".into(), "d2".into(), "d9".into()])
        .await
        .unwrap();
    ran.sort();
    assert_eq!(
        ran,
        vec![
            ("d1".into(), "model".into(), "1".into()),
            ("d1".into(), "other".into(), "0.1".into()),
            ("d2".into(), "model".into(), "1".into()),
        ]
    );
    // A hello replaces the list.
    s.set_device_artifacts("d1", &[("model".into(), "0.9".into())], 500)
        .await
        .unwrap();
    assert_eq!(
        s.device_artifacts(&["d1".into()]).await.unwrap(),
        vec![("d1".into(), "model".into(), "0.9".into())]
    );
    assert!(s.device_artifacts(&[]).await.unwrap().is_empty());
}

async fn desired_state_follows_released_waves_and_survives_an_abort(s: Arc<dyn Store>) {
    rollout_fleet(&s, &["d1", "d2", "d3"]).await;
    s.create_rollout(&new_rollout(
        "ro_1",
        "1",
        &[("d1", 0), ("d2", 1), ("d3", 1)],
        100,
    ))
    .await
    .unwrap();
    let versions = |v: Vec<DesiredArtifact>| {
        v.into_iter()
            .map(|d| format!("{}@{}:{}", d.name, d.version, d.rollout_id))
            .collect::<Vec<_>>()
    };
    let d1 = s.desired_artifacts("d1").await.unwrap();
    assert_eq!(versions(d1.clone()), vec!["model@1:ro_1"]);
    assert_eq!(d1[0].manifest_json, r#"{"v":"1"}"#);
    assert_eq!(
        (d1[0].public_key.as_str(), d1[0].signature.as_str()),
        ("ed25519:AAAA", "sig")
    );
    assert!(
        s.desired_artifacts("d2").await.unwrap().is_empty(),
        "wave 2 has not started"
    );
    let r = s.get_rollout("acme", "ro_1").await.unwrap().unwrap();
    assert!(
        s.apply_rollout_transition("ro_1", &step(&r, RolloutState::Running, 1, 200), 200)
            .await
            .unwrap()
    );
    assert_eq!(
        versions(s.desired_artifacts("d2").await.unwrap()),
        vec!["model@1:ro_1"]
    );
    let r = s.get_rollout("acme", "ro_1").await.unwrap().unwrap();
    assert!(
        s.apply_rollout_transition("ro_1", &step(&r, RolloutState::Completed, 1, 200), 300)
            .await
            .unwrap()
    );

    // Version 2: d2 in wave 1, d1 and d3 in wave 2 (not started).
    s.create_rollout(&new_rollout(
        "ro_2",
        "2",
        &[("d2", 0), ("d1", 1), ("d3", 1)],
        400,
    ))
    .await
    .unwrap();
    assert_eq!(
        versions(s.desired_artifacts("d2").await.unwrap()),
        vec!["model@2:ro_2"]
    );
    assert_eq!(
        versions(s.desired_artifacts("d1").await.unwrap()),
        vec!["model@1:ro_1"]
    );
    // d3 started on ro_2 (it was asked by an earlier push): an abort keeps
    // what started, and takes back nothing from the others.
    let r = s.get_rollout("acme", "ro_2").await.unwrap().unwrap();
    assert!(
        s.apply_rollout_transition("ro_2", &step(&r, RolloutState::Running, 1, 500), 500)
            .await
            .unwrap()
    );
    assert!(
        s.record_artifact_report(
            "d3",
            "acme",
            &report("ro_2", "2", DeviceState::Downloading),
            510
        )
        .await
        .unwrap()
    );
    let r = s.get_rollout("acme", "ro_2").await.unwrap().unwrap();
    assert!(
        s.apply_rollout_transition("ro_2", &step(&r, RolloutState::Aborted, 1, 500), 520)
            .await
            .unwrap()
    );
    assert_eq!(
        versions(s.desired_artifacts("d3").await.unwrap()),
        vec!["model@2:ro_2"]
    );
    assert_eq!(
        versions(s.desired_artifacts("d1").await.unwrap()),
        vec!["model@1:ro_1"],
        "pending on an aborted rollout: the older release"
    );
    assert_eq!(
        versions(s.desired_artifacts("d2").await.unwrap()),
        vec!["model@1:ro_1"],
        "its wave of ro_2 started but it never began, and ro_2 is aborted"
    );
    assert!(s.desired_artifacts("d9").await.unwrap().is_empty());
}

async fn session_view_reads_what_a_session_start_tells_at_once(s: Arc<dyn Store>) {
    rollout_fleet(&s, &["d1", "d2"]).await;
    s.create_rollout(&new_rollout("ro_1", "1", &[("d1", 0), ("d2", 1)], 100))
        .await
        .unwrap();
    s.insert_telemetry_many(
        &[DeviceSamples {
            device_id: "d1".into(),
            samples: vec![sample(1), sample(2), sample(7)],
        }],
        0,
    )
    .await
    .unwrap();
    let line = |seq: u64| LogRecord {
        seq,
        timestamp: 10 * seq as i64,
        service: "app".into(),
        severity: "info".into(),
        message: format!("line {seq}"),
    };
    s.insert_logs("d1", &[line(1), line(4)], 0).await.unwrap();
    let v2 = s
        .put_config("acme", "d1", &serde_json::json!({"k": 2}), 10)
        .await
        .unwrap()
        .unwrap();

    let view = s.session_view("d1").await.unwrap();
    assert_eq!((view.last_telemetry_seq, view.last_log_seq), (7, 4));
    assert_eq!(view.config, Some(v2));
    assert_eq!(view.desired, s.desired_artifacts("d1").await.unwrap());
    assert_eq!(
        view.desired.len(),
        1,
        "the first wave released model 1 to d1"
    );

    // Nothing stored yet, its wave not started: the same answers as the
    // single reads give.
    let view = s.session_view("d2").await.unwrap();
    assert_eq!((view.last_telemetry_seq, view.last_log_seq), (0, 0));
    assert_eq!(view.config, s.get_config("d2", None).await.unwrap());
    assert!(view.config.is_some() && view.desired.is_empty());
    let none = s.session_view("nope").await.unwrap();
    assert_eq!(
        (
            none.last_telemetry_seq,
            none.last_log_seq,
            none.config,
            none.desired
        ),
        (0, 0, None, vec![])
    );
}

async fn deleting_the_released_version_leaves_the_name_out_rather_than_downgrading(
    s: Arc<dyn Store>,
) {
    rollout_fleet(&s, &["d1", "d2"]).await;
    s.create_artifact(&artifact("other", "1", "{}", 10))
        .await
        .unwrap();
    let versions = |v: Vec<DesiredArtifact>| {
        v.into_iter()
            .map(|d| format!("{}@{}:{}", d.name, d.version, d.rollout_id))
            .collect::<Vec<_>>()
    };
    let mut created = 100;
    for (id, name, version) in [
        ("ro_1", "model", "1"),
        ("ro_2", "model", "2"),
        ("ro_o", "other", "1"),
    ] {
        let mut new = new_rollout(id, version, &[("d1", 0), ("d2", 0)], created);
        new.artifact_name = name.into();
        s.create_rollout(&new).await.unwrap();
        let r = s.get_rollout("acme", id).await.unwrap().unwrap();
        assert!(
            s.apply_rollout_transition(id, &step(&r, RolloutState::Completed, 0, created), created)
                .await
                .unwrap()
        );
        created += 100;
    }
    assert_eq!(
        versions(s.desired_artifacts("d1").await.unwrap()),
        vec!["model@2:ro_2", "other@1:ro_o"]
    );
    // model@2 (the newest release) goes: model@1 of the older rollout must
    // not come back as desired; the devices keep what they have.
    assert!(s.delete_artifact("acme", "model", "2").await.unwrap());
    for d in ["d1", "d2"] {
        assert_eq!(
            versions(s.desired_artifacts(d).await.unwrap()),
            vec!["other@1:ro_o"],
            "{d}"
        );
    }
    // A new rollout of model@1 releases it again, through its waves.
    s.create_rollout(&new_rollout("ro_3", "1", &[("d1", 0), ("d2", 1)], 1000))
        .await
        .unwrap();
    assert_eq!(
        versions(s.desired_artifacts("d1").await.unwrap()),
        vec!["model@1:ro_3", "other@1:ro_o"]
    );
    assert_eq!(
        versions(s.desired_artifacts("d2").await.unwrap()),
        vec!["other@1:ro_o"],
        "its wave of ro_3 has not started"
    );
}

async fn rollouts_list_in_pages_newest_first_with_device_counts(s: Arc<dyn Store>) {
    rollout_fleet(&s, &["d1", "d2", "d3"]).await;
    // Five rollouts (each aborted, so the next may start); ro_3 and ro_4
    // created at the same millisecond (the id breaks the tie).
    let created = [100, 200, 300, 300, 400];
    for (i, at) in created.iter().enumerate() {
        let id = format!("ro_{i}");
        s.create_rollout(&new_rollout(
            &id,
            "1",
            &[("d1", 0), ("d2", 1), ("d3", 1)],
            *at,
        ))
        .await
        .unwrap();
        let r = s.get_rollout("acme", &id).await.unwrap().unwrap();
        assert!(
            s.apply_rollout_transition(&id, &step(&r, RolloutState::Aborted, 0, *at), *at)
                .await
                .unwrap()
        );
    }
    assert!(
        s.record_artifact_report(
            "d1",
            "acme",
            &report("ro_3", "1", DeviceState::Succeeded),
            500
        )
        .await
        .unwrap()
    );
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = s
            .list_rollouts(&RolloutListQuery {
                workspace: "acme".into(),
                before: before.clone(),
                limit: 2,
            })
            .await
            .unwrap();
        assert!(page.len() <= 2);
        for r in &page {
            assert!(r.rollout.devices.is_empty(), "devices are not loaded");
            let expected = if r.rollout.id == "ro_3" {
                vec![(0, DeviceState::Succeeded, 1), (1, DeviceState::Pending, 2)]
            } else {
                vec![(0, DeviceState::Pending, 1), (1, DeviceState::Pending, 2)]
            };
            assert_eq!(r.counts, expected, "{}", r.rollout.id);
            seen.push(r.rollout.id.clone());
        }
        match page.last() {
            Some(last) if page.len() == 2 => {
                before = Some((last.rollout.created_at, last.rollout.id.clone()))
            }
            _ => break,
        }
    }
    assert_eq!(seen, vec!["ro_4", "ro_3", "ro_2", "ro_1", "ro_0"]);
    // Another workspace's list is empty.
    assert!(
        s.list_rollouts(&RolloutListQuery {
            workspace: "other".into(),
            before: None,
            limit: 50,
        })
        .await
        .unwrap()
        .is_empty()
    );
}

async fn artifacts_signed_by_a_removed_key_are_no_longer_desired(s: Arc<dyn Store>) {
    rollout_fleet(&s, &["d1"]).await;
    let mut other = artifact("other", "1", "{}", 10);
    other.public_key = "ed25519:BBBB".into();
    s.create_artifact(&other).await.unwrap();
    s.add_publisher_key("acme", "ed25519:BBBB", 2)
        .await
        .unwrap();
    // The same key trusted in another workspace does not count.
    s.create_workspace(&Workspace {
        name: "globex".into(),
        features: vec![],
        created_at: 1,
    })
    .await
    .unwrap();
    s.add_publisher_key("globex", "ed25519:AAAA", 3)
        .await
        .unwrap();
    for (id, name, at) in [("ro_m", "model", 100), ("ro_o", "other", 200)] {
        let mut new = new_rollout(id, "1", &[("d1", 0)], at);
        new.artifact_name = name.into();
        s.create_rollout(&new).await.unwrap();
    }
    let names = |v: Vec<DesiredArtifact>| v.into_iter().map(|d| d.name).collect::<Vec<_>>();
    assert_eq!(
        names(s.desired_artifacts("d1").await.unwrap()),
        vec!["model", "other"]
    );
    assert!(
        s.remove_publisher_key("acme", "ed25519:AAAA")
            .await
            .unwrap()
    );
    assert_eq!(
        names(s.desired_artifacts("d1").await.unwrap()),
        vec!["other"]
    );
    // Trusted again: desired again.
    s.add_publisher_key("acme", "ed25519:AAAA", 4)
        .await
        .unwrap();
    assert_eq!(
        names(s.desired_artifacts("d1").await.unwrap()),
        vec!["model", "other"]
    );
}

async fn a_large_rollout_stores_every_device_in_chunks_or_nothing(s: Arc<dyn Store>) {
    // Two full chunks of 500 and one device more.
    let ids: Vec<String> = (0..1001).map(|i| format!("d{i:04}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    rollout_fleet(&s, &refs).await;
    let assigned: Vec<(&str, u32)> = refs
        .iter()
        .enumerate()
        .map(|(i, d)| (*d, u32::from(i >= 10)))
        .collect();
    // One unknown device in the last chunk: nothing of the rollout stays.
    let mut bad = new_rollout("ro_bad", "1", &assigned, 100);
    bad.devices.push(("nope".into(), 1));
    assert!(s.create_rollout(&bad).await.is_err());
    assert_eq!(s.get_rollout("acme", "ro_bad").await.unwrap(), None);

    s.create_rollout(&new_rollout("ro_big", "1", &assigned, 200))
        .await
        .unwrap();
    let r = s.get_rollout("acme", "ro_big").await.unwrap().unwrap();
    assert_eq!(r.devices.len(), 1001);
    let got: Vec<(&str, u32)> = r
        .devices
        .iter()
        .map(|d| (d.device_id.as_str(), d.wave))
        .collect();
    assert_eq!(got, assigned, "every device once, in its wave");
    assert!(
        r.devices
            .iter()
            .all(|d| d.state == DeviceState::Pending && d.updated_at == 200 && d.error.is_none())
    );
}

async fn running_rollouts_tally_their_current_wave_without_loading_devices(s: Arc<dyn Store>) {
    use crate::rollout::WaveTally;
    rollout_fleet(&s, &["d1", "d2", "d3", "d4", "d5"]).await;
    s.create_rollout(&new_rollout(
        "ro_1",
        "1",
        &[("d1", 0), ("d2", 0), ("d3", 0), ("d4", 0), ("d5", 1)],
        100,
    ))
    .await
    .unwrap();
    let tally = |s: Arc<dyn Store>| async move {
        let mut all = s.running_rollouts().await.unwrap();
        assert_eq!(all.len(), 1);
        let r = all.remove(0);
        assert!(r.rollout.devices.is_empty());
        // The same as the rules would count from the loaded devices.
        let full = s.get_rollout("acme", &r.rollout.id).await.unwrap().unwrap();
        assert_eq!(r.wave, full.wave_tally());
        r.wave
    };
    assert_eq!(
        tally(s.clone()).await,
        WaveTally {
            unfinished: 4,
            failures: 0,
            newest_failure: None
        }
    );
    let at = |d: &'static str, state, now| {
        let s = s.clone();
        async move {
            assert!(
                s.record_artifact_report(d, "acme", &report("ro_1", "1", state), now)
                    .await
                    .unwrap()
            );
        }
    };
    at("d1", DeviceState::Succeeded, 200).await;
    at("d2", DeviceState::Installing, 200).await;
    at("d3", DeviceState::Failed, 300).await;
    at("d4", DeviceState::RolledBack, 300).await;
    let t = tally(s.clone()).await;
    assert_eq!((t.unfinished, t.failures), (1, 2));
    // Same time: the smaller device id is named.
    let newest = t.newest_failure.unwrap();
    assert_eq!(
        (newest.device_id.as_str(), newest.state),
        ("d3", DeviceState::Failed)
    );
    assert_eq!(newest.error.as_deref(), Some("health check exited 1"));
    // The next wave: its own tally.
    let r = s.get_rollout("acme", "ro_1").await.unwrap().unwrap();
    assert!(
        s.apply_rollout_transition("ro_1", &step(&r, RolloutState::Running, 1, 400), 400)
            .await
            .unwrap()
    );
    assert_eq!(
        tally(s.clone()).await,
        WaveTally {
            unfinished: 1,
            failures: 0,
            newest_failure: None
        }
    );
    // Not running: not the driver's.
    let r = s.get_rollout("acme", "ro_1").await.unwrap().unwrap();
    assert!(
        s.apply_rollout_transition("ro_1", &step(&r, RolloutState::Paused, 1, 400), 500)
            .await
            .unwrap()
    );
    assert!(s.running_rollouts().await.unwrap().is_empty());
}

async fn replicas_create_one_active_rollout_per_artifact(s: Vec<Arc<dyn Store>>) {
    rollout_fleet(&s[0], &["d1", "d2"]).await;
    for round in 0..5 {
        let a = new_rollout(
            &format!("ro_a{round}"),
            "1",
            &[("d1", 0), ("d2", 0)],
            100 + round,
        );
        let b = new_rollout(
            &format!("ro_b{round}"),
            "2",
            &[("d1", 0), ("d2", 0)],
            100 + round,
        );
        let (ra, rb) = tokio::join!(s[0].create_rollout(&a), s[1].create_rollout(&b));
        let won: Vec<&str> = [(&ra, a.id.as_str()), (&rb, b.id.as_str())]
            .iter()
            .filter(|(r, _)| r.is_ok())
            .map(|(_, id)| *id)
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {ra:?} {rb:?}");
        for r in [&ra, &rb] {
            if let Err(e) = r {
                assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
            }
        }
        let r = s[0].get_rollout("acme", won[0]).await.unwrap().unwrap();
        assert_eq!(r.devices.len(), 2);
        assert!(
            s[0].apply_rollout_transition(won[0], &step(&r, RolloutState::Aborted, 0, 0), 1)
                .await
                .unwrap()
        );
    }
}

async fn replicas_apply_a_rollout_step_once(s: Vec<Arc<dyn Store>>) {
    rollout_fleet(&s[0], &["d1", "d2"]).await;
    s[0].create_rollout(&new_rollout("ro_1", "1", &[("d1", 0), ("d2", 1)], 100))
        .await
        .unwrap();
    let r = s[1].get_rollout("acme", "ro_1").await.unwrap().unwrap();
    let next = step(&r, RolloutState::Running, 1, 500);
    let (a, b) = tokio::join!(
        s[0].apply_rollout_transition("ro_1", &next, 500),
        s[1].apply_rollout_transition("ro_1", &next, 501)
    );
    assert_eq!([a.unwrap(), b.unwrap()].iter().filter(|x| **x).count(), 1);
    let r = s[0].get_rollout("acme", "ro_1").await.unwrap().unwrap();
    assert_eq!(r.current_wave, 1);
}

/// Raw SQL on a store's own pool, for rows no [`Store`] method writes here
/// (the rollouts are the rollout engineer's).
enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Raw {
    /// Runs `sql` with `$1` bound to `arg`.
    async fn exec(&self, sql: &'static str, arg: &str) {
        match self {
            Raw::Sqlite(p) => {
                sqlx::query(sql).bind(arg).execute(p).await.unwrap();
            }
            Raw::Postgres(p) => {
                sqlx::query(sql).bind(arg).execute(p).await.unwrap();
            }
        }
    }
}

async fn deleting_an_artifact_in_use_by_a_rollout_is_refused(s: Arc<dyn Store>, raw: Raw) {
    s.create_artifact(&artifact("m", "1", "{}", 3))
        .await
        .unwrap();
    s.create_artifact(&artifact("m", "2", r#"{"v":2}"#, 3))
        .await
        .unwrap();
    raw.exec(
        "INSERT INTO rollouts (id, workspace, artifact_name, artifact_version, selector, waves, \
         max_failures, wave_timeout_ms, approve_waves, state, current_wave, wave_started_at, \
         created_at, updated_at) \
         VALUES ('r1', 'acme', 'm', '1', '[]', '[\"100%\"]', 0, 600000, false, $1, 0, 0, 1, 1)",
        "running",
    )
    .await;
    for state in ["running", "paused"] {
        raw.exec("UPDATE rollouts SET state = $1 WHERE id = 'r1'", state)
            .await;
        assert!(
            matches!(
                s.delete_artifact("acme", "m", "1").await,
                Err(StoreError::Conflict(_))
            ),
            "{state}"
        );
        assert!(s.get_artifact("acme", "m", "1").await.unwrap().is_some());
    }
    // Another version of the same name is free to go.
    assert!(s.delete_artifact("acme", "m", "2").await.unwrap());
    for state in ["completed", "aborted"] {
        raw.exec("UPDATE rollouts SET state = $1 WHERE id = 'r1'", state)
            .await;
    }
    assert!(s.delete_artifact("acme", "m", "1").await.unwrap());
}

/// As [`store_tests`], for `async fn name(Arc<dyn Store>, Raw)`: a store
/// with workspace `acme` and raw SQL on its pool.
macro_rules! raw_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(dir.path()).await.unwrap();
                store.create_workspace(&acme()).await.unwrap();
                let raw = Raw::Sqlite(store.pool.clone());
                super::$name(Arc::new(store), raw).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(base) = std::env::var(PG_ENV).ok().filter(|u| !u.is_empty()) else {
                    eprintln!("{PG_ENV} is not set: skipping the PostgreSQL run");
                    return;
                };
                let url = postgres::fresh_test_database(&base).await;
                let store = Arc::new(PgStore::connect(&url).await.unwrap());
                store.create_workspace(&acme()).await.unwrap();
                let raw = Raw::Postgres(store.pool.clone());
                super::$name(store.clone(), raw).await;
                store.close().await;
                postgres::drop_test_database(&base, &url).await.unwrap();
            }
        }
    )*};
}

fn acme() -> Workspace {
    Workspace {
        name: "acme".into(),
        features: vec![],
        created_at: 1,
    }
}

raw_tests!(
    deleting_an_artifact_in_use_by_a_rollout_is_refused,
    the_backfill_fills_the_tiers_of_history_from_before_them,
);

/// A device's history as an agent could deliver it: samples at irregular
/// intervals, counters that reset (reboots), a clock that sometimes steps
/// back; delivered in batches where some are late (a spool replayed after
/// newer samples), some repeat samples already sent (a resend after a lost
/// ack) and some repeat a seq inside the batch.
fn messy_history(
    seed: u64,
    start: i64,
    len: usize,
) -> (Vec<TelemetrySample>, Vec<Vec<TelemetrySample>>) {
    use rand::{Rng, SeedableRng, seq::SliceRandom};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut ts, mut rx, mut tx) = (start, 0u64, 0u64);
    let mut samples = Vec::with_capacity(len);
    for k in 0..len as u64 {
        ts += rng.random_range(1_000..90_000);
        if rng.random_bool(0.03) {
            ts -= rng.random_range(0..200_000); // the clock stepped back
        }
        if rng.random_bool(0.04) {
            (rx, tx) = (0, 0); // a reboot
        }
        rx += rng.random_range(0..1_000_000);
        tx += rng.random_range(0..100_000);
        let gpus = if rng.random_bool(0.5) {
            (0..rng.random_range(1..3))
                .map(|g| GpuSample {
                    index: g,
                    utilization_percent: rng.random_range(0..100) as f32,
                    memory_used_bytes: rng.random_range(0..1u64 << 34),
                    ..Default::default()
                })
                .collect()
        } else {
            vec![]
        };
        let temperatures = if rng.random_bool(0.7) {
            vec![Temperature {
                sensor: "cpu".into(),
                celsius: rng.random_range(-20..100) as f32 + 0.5,
            }]
        } else {
            vec![]
        };
        samples.push(TelemetrySample {
            seq: k + 1,
            timestamp: ts,
            cpu_percent: rng.random_range(0..1000) as f32 / 10.0,
            memory_used_bytes: rng.random_range(0..1u64 << 36),
            memory_total_bytes: 1 << 36,
            disk_used_bytes: rng.random_range(0..1u64 << 40),
            disk_total_bytes: rng.random_range(1u64 << 40..1u64 << 41),
            network_rx_bytes: rx,
            network_tx_bytes: tx,
            load_1m: rng.random_range(0..800) as f64 / 100.0,
            temperatures,
            gpus,
            ..Default::default()
        });
    }
    // Batches of consecutive samples, delivered mostly in order; a quarter
    // of them held back and delivered at random later points.
    let mut batches: Vec<Vec<TelemetrySample>> = Vec::new();
    let mut held: Vec<Vec<TelemetrySample>> = Vec::new();
    let mut i = 0;
    while i < samples.len() {
        let n = rng.random_range(1..20).min(samples.len() - i);
        let mut b = samples[i..i + n].to_vec();
        i += n;
        if rng.random_bool(0.2) {
            b.push(b[rng.random_range(0..b.len())].clone()); // a seq twice in a batch
        }
        if rng.random_bool(0.25) {
            held.push(b);
        } else {
            batches.push(b);
        }
        if !held.is_empty() && rng.random_bool(0.2) {
            batches.push(held.swap_remove(rng.random_range(0..held.len())));
        }
        if rng.random_bool(0.1) {
            let sent = &samples[..i];
            let from = rng.random_range(0..sent.len());
            batches.push(sent[from..(from + 5).min(sent.len())].to_vec()); // a resend
        }
    }
    held.shuffle(&mut rng);
    batches.extend(held);
    (samples, batches)
}

/// The bucketed series computed directly from raw samples, the obvious
/// way: what every tier must answer.
fn buckets_from_raw(samples: &[TelemetrySample], bucket_ms: i64) -> Vec<TelemetryBucket> {
    let mut sorted: Vec<&TelemetrySample> = samples.iter().collect();
    sorted.sort_by_key(|s| (s.timestamp.div_euclid(bucket_ms), s.timestamp, s.seq));
    let mut out = Vec::new();
    for group in sorted
        .chunk_by(|a, b| a.timestamp.div_euclid(bucket_ms) == b.timestamp.div_euclid(bucket_ms))
    {
        let n = group.len() as f64;
        let avg = |f: &dyn Fn(&TelemetrySample) -> f64| group.iter().map(|s| f(s)).sum::<f64>() / n;
        let inc = |f: &dyn Fn(&TelemetrySample) -> u64| {
            group
                .windows(2)
                .map(|w| {
                    let (a, b) = (f(w[0]), f(w[1]));
                    if b >= a { b - a } else { b }
                })
                .sum::<u64>()
        };
        let with_gpus: Vec<&&TelemetrySample> =
            group.iter().filter(|s| !s.gpus.is_empty()).collect();
        let gpu_avg = |f: &dyn Fn(&TelemetrySample) -> f64| {
            (!with_gpus.is_empty())
                .then(|| with_gpus.iter().map(|s| f(s)).sum::<f64>() / with_gpus.len() as f64)
        };
        out.push(TelemetryBucket {
            start: group[0].timestamp.div_euclid(bucket_ms) * bucket_ms,
            samples: group.len() as u64,
            cpu_percent_avg: avg(&|s| f64::from(s.cpu_percent)),
            cpu_percent_max: group
                .iter()
                .map(|s| f64::from(s.cpu_percent))
                .fold(f64::MIN, f64::max),
            memory_used_bytes_avg: avg(&|s| s.memory_used_bytes as f64),
            memory_total_bytes: group.iter().map(|s| s.memory_total_bytes).max().unwrap(),
            disk_used_bytes_avg: avg(&|s| s.disk_used_bytes as f64),
            disk_total_bytes: group.iter().map(|s| s.disk_total_bytes).max().unwrap(),
            network_rx_bytes: inc(&|s| s.network_rx_bytes),
            network_tx_bytes: inc(&|s| s.network_tx_bytes),
            load_1m_avg: avg(&|s| s.load_1m),
            temperature_max_celsius: group
                .iter()
                .flat_map(|s| s.temperatures.iter().map(|t| f64::from(t.celsius)))
                .reduce(f64::max),
            gpu_utilization_percent_avg: gpu_avg(&|s| {
                s.gpus
                    .iter()
                    .map(|g| f64::from(g.utilization_percent))
                    .sum::<f64>()
                    / s.gpus.len() as f64
            }),
            gpu_memory_used_bytes_avg: gpu_avg(&|s| {
                s.gpus.iter().map(|g| g.memory_used_bytes as f64).sum()
            }),
        });
    }
    out
}

/// `got` equals `want` but for float rounding (sums taken in another order).
fn assert_buckets_match(got: &[TelemetryBucket], want: &[TelemetryBucket], what: &str) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    let close_opt = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => close(a, b),
        (a, b) => a == b,
    };
    assert_eq!(got.len(), want.len(), "{what}: bucket count");
    for (g, w) in got.iter().zip(want) {
        let exact = (
            g.start,
            g.samples,
            g.memory_total_bytes,
            g.disk_total_bytes,
            g.network_rx_bytes,
            g.network_tx_bytes,
        ) == (
            w.start,
            w.samples,
            w.memory_total_bytes,
            w.disk_total_bytes,
            w.network_rx_bytes,
            w.network_tx_bytes,
        );
        let near = close(g.cpu_percent_avg, w.cpu_percent_avg)
            && close(g.cpu_percent_max, w.cpu_percent_max)
            && close(g.memory_used_bytes_avg, w.memory_used_bytes_avg)
            && close(g.disk_used_bytes_avg, w.disk_used_bytes_avg)
            && close(g.load_1m_avg, w.load_1m_avg)
            && close_opt(g.temperature_max_celsius, w.temperature_max_celsius)
            && close_opt(g.gpu_utilization_percent_avg, w.gpu_utilization_percent_avg)
            && close_opt(g.gpu_memory_used_bytes_avg, w.gpu_memory_used_bytes_avg);
        assert!(
            exact && near,
            "{what}: bucket at {}\n got {g:?}\nwant {w:?}",
            w.start
        );
    }
}

/// Every period's bucket size the API serves, over the device's whole
/// history, against the raw computation.
async fn assert_tiers_match_raw(
    s: &Arc<dyn Store>,
    device: &str,
    samples: &[TelemetrySample],
    what: &str,
) {
    const DAY: i64 = 86_400_000;
    let lo = samples
        .iter()
        .map(|x| x.timestamp)
        .min()
        .unwrap()
        .div_euclid(DAY)
        * DAY;
    let hi = (samples
        .iter()
        .map(|x| x.timestamp)
        .max()
        .unwrap()
        .div_euclid(DAY)
        + 1)
        * DAY;
    for bucket_ms in [60_000, 300_000, 600_000, 900_000, 3_600_000, DAY] {
        let got = s
            .telemetry_buckets(device, lo, hi, bucket_ms)
            .await
            .unwrap();
        assert_buckets_match(
            &got,
            &buckets_from_raw(samples, bucket_ms),
            &format!("{what}, {bucket_ms} ms"),
        );
    }
    // A window that cuts through the history reads only its buckets.
    let mid = lo + (hi - lo) / 2 / 3_600_000 * 3_600_000;
    let inside: Vec<TelemetrySample> = samples
        .iter()
        .filter(|x| x.timestamp >= mid)
        .cloned()
        .collect();
    let got = s
        .telemetry_buckets(device, mid, hi, 3_600_000)
        .await
        .unwrap();
    assert_buckets_match(
        &got,
        &buckets_from_raw(&inside, 3_600_000),
        &format!("{what}, from the middle"),
    );
}

async fn rollup_tiers_answer_as_raw_samples_do_whatever_the_arrival_order(s: Arc<dyn Store>) {
    // An idle neighbour whose samples share each commit group.
    s.create_device(&new_device("other", 1)).await.unwrap();
    for seed in 1..=4u64 {
        let device = format!("p{seed}");
        s.create_device(&new_device(&device, 1)).await.unwrap();
        let start = 1_700_000_000_000 + seed as i64 * 7_777_777;
        let (samples, batches) = messy_history(seed, start, 400);
        for (k, b) in batches.iter().enumerate() {
            if k % 2 == 0 {
                s.insert_telemetry(&device, b, 0).await.unwrap();
            } else {
                let other = TelemetrySample {
                    seq: (seed << 20) + k as u64,
                    timestamp: b[0].timestamp,
                    ..Default::default()
                };
                let group = [
                    DeviceSamples {
                        device_id: "other".into(),
                        samples: vec![other],
                    },
                    DeviceSamples {
                        device_id: device.clone(),
                        samples: b.clone(),
                    },
                ];
                s.insert_telemetry_many(&group, 0).await.unwrap();
            }
        }
        assert_tiers_match_raw(&s, &device, &samples, &format!("seed {seed}")).await;
    }
}

async fn a_late_sample_inside_a_rolled_up_minute_recomputes_it(s: Arc<dyn Store>) {
    s.create_device(&new_device("d1", 1)).await.unwrap();
    let mk = |seq: u64, ts: i64, rx: u64| TelemetrySample {
        seq,
        timestamp: ts,
        network_rx_bytes: rx,
        ..Default::default()
    };
    // Minute 0 holds samples at 10 s and 50 s; then the one at 30 s arrives
    // (it was in a spool), with a counter reset between them.
    let early = [mk(1, 10_000, 100), mk(3, 50_000, 500)];
    s.insert_telemetry("d1", &early, 0).await.unwrap();
    // (The recompute counter is process-wide, shared with tests running
    // alongside: the answer below is what shows the recompute.)
    let late = [mk(2, 30_000, 50)];
    s.insert_telemetry("d1", &late, 0).await.unwrap();
    let b = s.telemetry_buckets("d1", 0, 60_000, 60_000).await.unwrap();
    // 100 → 50 is a reset (+50), 50 → 500 (+450).
    assert_eq!((b[0].samples, b[0].network_rx_bytes), (3, 500));
    let all = [early.to_vec(), late.to_vec()].concat();
    assert_tiers_match_raw(&s, "d1", &all, "late").await;
}

async fn replicas_roll_up_one_devices_samples_as_raw(stores: Vec<Arc<dyn Store>>) {
    // Two replicas store interleaving batches of one device at once (a
    // reconnect to the other replica while the first still commits).
    stores[0].create_device(&new_device("d1", 1)).await.unwrap();
    let (samples, batches) = messy_history(42, 1_700_000_000_000, 600);
    let mut tasks = Vec::new();
    for (r, store) in stores.iter().enumerate() {
        let store = store.clone();
        let mine: Vec<Vec<TelemetrySample>> = batches.iter().skip(r).step_by(2).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for b in mine {
                store.insert_telemetry("d1", &b, 0).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_tiers_match_raw(&stores[1], "d1", &samples, "two replicas").await;
}

/// The upgrade: raw history with no tier rows, listed for the backfill as
/// the migration lists it.
async fn forget_tiers(raw: &Raw, device: &str) {
    raw.exec("DELETE FROM telemetry_1m WHERE device_id = $1", device)
        .await;
    raw.exec("DELETE FROM telemetry_1h WHERE device_id = $1", device)
        .await;
    raw.exec(
        "INSERT INTO telemetry_rollup_backfill (device_id, next_ts, until_ts) \
         SELECT device_id, MIN(ts), MAX(ts) FROM telemetry WHERE device_id = $1 \
         GROUP BY device_id",
        device,
    )
    .await;
}

async fn the_backfill_fills_the_tiers_of_history_from_before_them(s: Arc<dyn Store>, raw: Raw) {
    let start = 1_700_000_000_000;
    let mut histories = Vec::new();
    for (k, device) in ["b1", "b2"].into_iter().enumerate() {
        s.create_device(&new_device(device, 1)).await.unwrap();
        let (samples, batches) = messy_history(11 + k as u64, start, 1500 / (k + 1));
        for b in &batches {
            s.insert_telemetry(device, b, 0).await.unwrap();
        }
        forget_tiers(&raw, device).await;
        histories.push(samples);
    }
    assert_eq!(s.rollup_backfill_pending().await.unwrap(), 2);
    // Retention leaves the raw history alone until the tiers hold it.
    let pruned = s
        .prune(&Retention {
            telemetry_before: start + 30 * 86_400_000,
            minute_before: 0,
            hour_before: 0,
            logs_before: 0,
            events_before: 0,
        })
        .await
        .unwrap();
    assert_eq!(pruned.telemetry, 0);
    assert!(
        s.telemetry_buckets("b1", start, start + 30 * 86_400_000, 3_600_000)
            .await
            .unwrap()
            .is_empty(),
        "before the backfill the tiers know nothing of it"
    );
    // One step, then ingest goes on: a new sample, and a late one that
    // lands in history not yet filled.
    let first = s.rollup_backfill_step().await.unwrap().unwrap();
    assert_eq!((first.device_id.as_str(), first.finished), ("b1", false));
    let b1 = &mut histories[0];
    let newest = b1.iter().map(|x| x.timestamp).max().unwrap();
    let seq = b1.iter().map(|x| x.seq).max().unwrap();
    let late = TelemetrySample {
        seq: seq + 1,
        timestamp: (start + newest) / 2 + 17,
        network_rx_bytes: 5,
        ..b1[0].clone()
    };
    let new = TelemetrySample {
        seq: seq + 2,
        timestamp: newest + 60_000,
        ..b1[b1.len() - 1].clone()
    };
    s.insert_telemetry("b1", &[late.clone(), new.clone()], 0)
        .await
        .unwrap();
    b1.extend([late, new]);
    let mut steps = vec![first];
    while let Some(step) = s.rollup_backfill_step().await.unwrap() {
        steps.push(step);
        assert!(steps.len() < 100, "the backfill ends");
    }
    let done: Vec<&str> = steps
        .iter()
        .filter(|x| x.finished)
        .map(|x| x.device_id.as_str())
        .collect();
    assert_eq!(done, ["b1", "b2"]);
    assert!(steps.len() > 3, "in chunks: {steps:?}");
    let rolled: u64 = steps.iter().map(|x| x.samples).sum();
    assert!(rolled >= (histories[0].len() + histories[1].len() - 2) as u64);
    assert_eq!(s.rollup_backfill_pending().await.unwrap(), 0);
    for (device, samples) in ["b1", "b2"].iter().zip(&histories) {
        assert_tiers_match_raw(&s, device, samples, "after the backfill").await;
    }
}

async fn retention_prunes_raw_and_each_tier_by_its_own_cutoff_in_batches(s: Arc<dyn Store>) {
    const MIN: i64 = 60_000;
    const HOUR: i64 = 3_600_000;
    s.create_device(&new_device("d1", 1)).await.unwrap();
    // One sample a minute for 5000 minutes: more rows past each cut-off
    // than one batch deletes.
    let t0 = 1_700_000_000_000 / HOUR * HOUR;
    let all: Vec<TelemetrySample> = (0..5000u64)
        .map(|k| TelemetrySample {
            seq: k + 1,
            timestamp: t0 + k as i64 * MIN,
            network_rx_bytes: k * 10,
            ..Default::default()
        })
        .collect();
    for b in all.chunks(1000) {
        s.insert_telemetry("d1", b, 0).await.unwrap();
    }
    let (hour_cut, minute_cut, raw_cut) = (t0 + 20 * HOUR, t0 + 40 * HOUR, t0 + 4500 * MIN);
    let cut = Retention {
        telemetry_before: raw_cut,
        minute_before: minute_cut,
        hour_before: hour_cut,
        logs_before: 0,
        events_before: 0,
    };
    let c = s.prune(&cut).await.unwrap();
    assert_eq!(
        (c.telemetry, c.telemetry_1m, c.telemetry_1h),
        (4500, 2400, 20)
    );
    let batches = |rows: u64| rows.div_ceil(PRUNE_BATCH as u64);
    assert_eq!(
        c.batches,
        batches(4500) + batches(2400) + batches(20),
        "at most PRUNE_BATCH rows per statement"
    );
    assert!(c.longest_batch > std::time::Duration::ZERO, "{c:?}");
    let left = s
        .query_telemetry(&TelemetryQuery {
            device_id: "d1".into(),
            start: None,
            end: None,
            after_seq: None,
            direction: Direction::Forward,
            limit: 10_000,
        })
        .await
        .unwrap();
    assert_eq!(left.len(), 500);
    assert_eq!(left[0].timestamp, raw_cut);
    let end = t0 + 5000 * MIN;
    let hours = s.telemetry_buckets("d1", t0, end, HOUR).await.unwrap();
    assert_eq!(hours[0].start, hour_cut, "hours outlive minutes and raw");
    assert_eq!(hours.len(), 84 - 20);
    assert_eq!(hours[0].samples, 60);
    assert_eq!(hours[0].network_rx_bytes, 59 * 10);
    let minutes = s.telemetry_buckets("d1", t0, end, 5 * MIN).await.unwrap();
    assert_eq!(minutes[0].start, minute_cut, "minutes outlive raw");
    assert_eq!(minutes.len(), (5000 - 2400) / 5);
    // Pruning again finds nothing.
    let again = s.prune(&cut).await.unwrap();
    assert_eq!(again, PruneCounts::default());
}
