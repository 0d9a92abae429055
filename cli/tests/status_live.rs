//! `heteropod status` against the private node of `hack/up.sh`: containerd,
//! the heteropod shim and the emulated DPU with real relays. A Pod with one
//! container on each side shows up with both placements and both relays.
//! Runs only with `HETEROPOD_DPU` set (as the conformance DPU tests).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context};
use heteropod_conformance::run;
use serde_json::Value;

const HETEROPOD: &str = env!("CARGO_BIN_EXE_heteropod");

fn dpu_enabled() -> bool {
    let on = std::env::var("HETEROPOD_DPU").is_ok_and(|v| !v.is_empty() && v != "0");
    if !on {
        eprintln!("skipped: HETEROPOD_DPU is not set (no private node with a DPU agent)");
    }
    on
}

/// The node config hack/up.sh writes (hack/lib.sh `HETEROPOD_CONFIG`).
fn node_config() -> PathBuf {
    std::env::var("HETEROPOD_CONFIG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let state = std::env::var("HETEROPOD_STATE").unwrap_or("/run/heteropod".into());
            format!("{state}/etc/heteropod/config.toml")
        })
        .into()
}

fn status(cri: &std::path::Path) -> anyhow::Result<Value> {
    let out = Command::new(HETEROPOD)
        .args(["status", "--json", "--config"])
        .arg(node_config())
        .arg("--cri-endpoint")
        .arg(cri)
        .output()?;
    ensure!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_split_pod_shows_each_container_side_and_both_relays() {
    if !dpu_enabled() {
        return;
    }
    run("status-live", async |ctx| {
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .annotation("heteropod.io/placement.sidecar", "dpu"),
            )
            .await?;
        let sleeper = |name| ctx.container(name).command(&["sleep", "3600"]);
        let app = ctx.run_container(&pod, sleeper("app")).await?;
        let sidecar = ctx.run_container(&pod, sleeper("sidecar")).await?;

        // The relays come up beside the first DPU container; poll until both
        // have served counters once.
        let mut doc = Value::Null;
        for _ in 0..100 {
            doc = status(&ctx.env.endpoint)?;
            let relays = doc["relays"].as_array().cloned().unwrap_or_default();
            let ready = relays
                .iter()
                .filter(|r| r["pod_id"] == pod.id.as_str() && r["counters"].is_object())
                .count();
            if ready == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(doc["cri"]["error"].is_null(), "CRI: {}", doc["cri"]);
        let p = doc["pods"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == pod.id.as_str()))
            .with_context(|| format!("Pod {} missing: {doc:#}", pod.id))?;
        let meta = pod.config.metadata.clone().unwrap_or_default();
        ensure!(p["name"] == meta.name.as_str() && p["namespace"] == meta.namespace.as_str());
        ensure!(p["split"] == true && p["ip"].is_string(), "{p:#}");
        let side_of = |id: &str| {
            p["containers"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["id"] == id))
                .map(|c| (c["runs_on"].clone(), c["state"].clone()))
        };
        ensure!(
            side_of(&app) == Some(("cpu".into(), "running".into())),
            "app: {p:#}"
        );
        ensure!(
            side_of(&sidecar) == Some(("dpu".into(), "running".into())),
            "sidecar: {p:#}"
        );
        for side in ["cpu", "dpu"] {
            let r = doc["relays"]
                .as_array()
                .and_then(|rs| {
                    rs.iter()
                        .find(|r| r["pod_id"] == pod.id.as_str() && r["side"] == side)
                })
                .with_context(|| format!("no {side} relay: {doc:#}"))?;
            ensure!(r["pid"].as_u64().is_some_and(|p| p > 0), "{r:#}");
            ensure!(r["counters"]["streams_total"].is_u64(), "{r:#}");
            ensure!(r["counters"]["wakeups"].is_u64(), "{r:#}");
        }
        let table = Command::new(HETEROPOD)
            .args(["status", "--config"])
            .arg(node_config())
            .arg("--cri-endpoint")
            .arg(&ctx.env.endpoint)
            .output()?;
        eprintln!("{}", String::from_utf8_lossy(&table.stdout));
        Ok(())
    })
    .await;
}
