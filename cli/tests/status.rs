//! `heteropod status` against a real DPU agent with a split Pod: capacity,
//! where the container runs, both relays' counters; containerd absent.
mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_capacity_split_pod_and_both_relays_as_table_and_json() {
    if !can_run() {
        return;
    }
    let node = Node::start("status").await;
    let cpu_pid = node.cpu_relay.id();

    let out = node.heteropod(&["status"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\n{}",
        node.agent_log()
    );
    assert!(
        stderr.contains("warning: containerd CRI at") && stderr.contains("DPU side only"),
        "{stderr}"
    );
    for want in [
        "cores:       1 total",
        "500m reserved",
        "memory:      512Mi total, 64Mi reserved",
        "containers:  1 running on the DPU",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
    let row = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no row {prefix:?} in\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    // POD NAMESPACE ID IP CONTAINER ON STATE (containerd down: no name).
    assert_eq!(
        row("-"),
        [
            "-",
            "-",
            &POD[..13],
            "10.125.0.9",
            "envoy",
            "dpu",
            "running"
        ]
    );
    // POD SIDE PID RESTARTS STREAMS FAST BYTES-TX BYTES-RX SPINS SLEEPS WAKEUPS
    let cpu_row = stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("cpu"))
        .unwrap_or_else(|| panic!("no cpu relay row in\n{stdout}"));
    assert_eq!(
        cpu_row.split_whitespace().collect::<Vec<_>>(),
        [
            &POD[..13],
            "cpu",
            &cpu_pid.to_string(),
            "-",
            "3/8",
            "1/4",
            "2222",
            "1111",
            "66",
            "77",
            "88"
        ]
    );
    let dpu_row: Vec<_> = stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("dpu"))
        .unwrap_or_else(|| panic!("no dpu relay row in\n{stdout}"))
        .split_whitespace()
        .collect();
    assert_eq!(dpu_row[..2], [&POD[..13], "dpu"]);
    assert!(
        dpu_row[2].parse::<u32>().is_ok_and(|p| p > 0),
        "{dpu_row:?}"
    );
    // This fixture's DPU relay reports no fast-path counters: shown as missing.
    assert_eq!(
        dpu_row[3..],
        ["0", "2/7", "-/-", "1111", "2222", "33", "44", "55"]
    );

    let out = node.heteropod(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cap = &doc["dpu"]["capacity"];
    assert_eq!(cap["cores_total"], 1);
    assert_eq!(cap["reserved_millicores"], 500);
    assert_eq!(cap["memory_total_bytes"], 512u64 << 20);
    assert_eq!(cap["memory_reserved_bytes"], 64u64 << 20);
    assert_eq!(cap["running_containers"], 1);
    assert!(cap["cpu_seconds_used"].is_number(), "{cap}");
    assert!(doc["dpu"]["error"].is_null());
    assert!(doc["cri"]["error"].is_string(), "{}", doc["cri"]);
    assert!(!doc["warnings"].as_array().unwrap().is_empty());
    let pod = &doc["pods"][0];
    assert_eq!(pod["id"], POD);
    assert_eq!(pod["split"], true);
    assert_eq!(pod["ip"], "10.125.0.9");
    let c = &pod["containers"][0];
    assert_eq!(
        (&c["id"], &c["name"], &c["runs_on"], &c["state"]),
        (
            &Value::from(CONTAINER),
            &Value::from("envoy"),
            &Value::from("dpu"),
            &Value::from("running")
        )
    );
    let relay = |side: &str| {
        doc["relays"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["side"] == side)
            .unwrap_or_else(|| panic!("no {side} relay in {doc}"))
            .clone()
    };
    let (cpu, dpu) = (relay("cpu"), relay("dpu"));
    assert_eq!(cpu["pod_id"], POD);
    assert_eq!(cpu["pid"], cpu_pid);
    assert_eq!(cpu["counters"]["bytes_tx"], 2222);
    assert_eq!(cpu["counters"]["wakeups"], 88);
    assert_eq!(cpu["counters"]["raw"]["relay"]["connects_ok"], 5);
    assert_eq!(
        (
            &cpu["counters"]["fast_active"],
            &cpu["counters"]["fast_total"]
        ),
        (&Value::from(1), &Value::from(4))
    );
    assert_eq!(dpu["restarts"], 0);
    assert_eq!(dpu["counters"]["streams_active"], 2);
    assert_eq!(dpu["counters"]["spins"], 33);
    assert_eq!(dpu["counters"]["connected"], true);
}

#[test]
fn unreachable_agent_fails_unless_missing_dpu_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}/none.sock", dir.path().display());
    let cri = dir.path().join("no-containerd.sock");
    let run = |extra: &[&str]| {
        Command::new(HETEROPOD)
            .args(["status", "--endpoint", &endpoint, "--cri-endpoint"])
            .arg(&cri)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot reach the agent") && stderr.contains("--allow-missing-dpu"),
        "{stderr}"
    );

    let out = run(&["--allow-missing-dpu", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["dpu"]["error"].is_string());
    assert!(doc["dpu"]["capacity"].is_null());
    assert_eq!(doc["pods"], serde_json::json!([]));

    let out = run(&["--allow-missing-dpu"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("cores:       - total (cpus -), - reserved"),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains("warning: DPU agent"));
}

#[test]
fn no_configured_endpoint_names_the_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[dpu]\nenabled = false\n").unwrap();
    let out = Command::new(HETEROPOD)
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("[dpu] endpoint") && stderr.contains("config.toml"),
        "{stderr}"
    );
}
