//! GPU metrics end to end: an agent reading a Jetson Orin laid out in a fake
//! sysfs tree (`OUTPOST_SYSFS_ROOT`) reports its GPU in the hello and in
//! every sample; the control plane stores it and serves it.

mod common;

use std::path::Path;

use common::*;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn gpu_jetson_metrics_reach_the_device_and_its_telemetry() {
    let sysfs = tempfile::tempdir().unwrap();
    let r = sysfs.path();
    write(
        r,
        "sys/class/devfreq/17000000.ga10b/cur_freq",
        "918000000\n",
    );
    write(
        r,
        "sys/class/devfreq/17000000.ga10b/max_freq",
        "1300500000\n",
    );
    write(r, "sys/class/devfreq/17000000.ga10b/device/load", "421\n");
    write(r, "sys/class/thermal/thermal_zone1/type", "gpu-thermal\n");
    write(r, "sys/class/thermal/thermal_zone1/temp", "48000\n");

    let cp = ControlPlane::start();
    cp.create_workspace("acme", &[]);
    let key = cp.api_key("acme", &[]);
    let (device, install_id) = cp.create_device("acme", &key, "orin").await;
    let state = tempfile::tempdir().unwrap();
    assert!(enroll(&cp, &install_id, state.path()).status.success());
    let _agent = AgentProc::run_env(
        state.path(),
        "300ms",
        // NVML off: on a box with a real GPU it would pair with the fake Jetson.
        &[
            ("OUTPOST_SYSFS_ROOT", r.to_str().unwrap()),
            ("OUTPOST_NVML_LIBRARY", "off"),
        ],
    );
    let samples = wait_until("samples with the GPU", TIMEOUT, || async {
        let s = all_samples(&cp, "acme", &key, &device).await;
        (s.len() >= 2).then_some(s)
    })
    .await;
    let g = &samples[1]["gpus"][0];
    assert_eq!(g["name"], "NVIDIA Orin GPU (ga10b)", "{g}");
    assert!(
        (g["utilization_percent"].as_f64().unwrap() - 42.1).abs() < 0.01,
        "{g}"
    );
    assert_eq!(g["clock_mhz"], 918);
    assert_eq!(g["max_clock_mhz"], 1300);
    assert_eq!(g["temperature_celsius"], 48.0);
    let (_, d) = cp
        .get_json(&format!("/acme/devices/v2/{device}"), &key)
        .await;
    assert!(
        d["hardware"]["gpu"]
            .as_str()
            .is_some_and(|n| n.contains("Orin")),
        "{d}"
    );
    let (status, series) = cp
        .get_json(
            &format!("/acme/devices/v2/{device}/telemetry?time_period=1h"),
            &key,
        )
        .await;
    assert_eq!(status, 200, "{series}");
    // Some bucket averages the GPU's 42.1 %.
    fn find(v: &serde_json::Value, out: &mut Vec<f64>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if k == "gpu_utilization_percent" {
                        out.extend(x.as_f64());
                    }
                    find(x, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| find(x, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    find(&series, &mut found);
    assert!(found.iter().any(|v| (v - 42.1).abs() < 0.01), "{series}");
}
