//! `--cleanup` (for `make down`) removes everything a killed agent left.
mod common;

use std::process::Command;

use common::*;
use heteropod_dpu_proxy::{client::CreatePodNetworkRequest, DpuAgent};

#[tokio::test]
async fn cleanup_after_a_crash_leaves_nothing() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("cleanup");
    let agent = h.start_agent().await;
    let pid = h.create(&agent, "left", &["sleep", "1000"]).await;
    agent.start("left", "").await.unwrap();
    let req = CreatePodNetworkRequest {
        pod_id: "p".into(),
        pod_ip: "10.124.0.2/24".into(),
        ..Default::default()
    };
    let netns = agent.create_pod_network(req).await.unwrap().netns_path;
    h.kill_agent();

    let out = Command::new(AGENT)
        .arg("--cleanup")
        .arg("--state-dir")
        .arg(h.state_dir())
        .args(["--cgroup-parent", &h.parent])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!pid_alive(pid), "container still running");
    assert!(!h.state_dir().exists(), "state dir left");
    for c in ["cpuset", "memory", "cpuacct", "pids", "freezer"] {
        assert!(!h.cgroup(c, "").exists(), "{c} cgroup parent left");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&netns), "netns still mounted");
}
