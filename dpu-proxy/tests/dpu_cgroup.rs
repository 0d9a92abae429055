//! Containers really run in the DPU cgroup on the DPU cores; capacity and
//! stats reflect them; a container that does not fit is refused.
mod common;

use common::*;
use heteropod_dpu_proxy::{client::Status, DpuAgent, Error};
use serde_json::json;

fn read(p: std::path::PathBuf) -> String {
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

#[tokio::test]
async fn container_runs_in_dpu_cgroup_on_dpu_cores() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("cg");
    let agent = h.start_agent().await;
    let cap = agent.capacity().await.unwrap();
    assert_eq!((cap.cpus.as_str(), cap.total_cores), (h.cpus.as_str(), 1));
    assert_eq!(cap.total_memory_bytes, 512 << 20);
    assert_eq!((cap.reserved_memory_bytes, cap.running_containers), (0, 0));

    let res = json!({"memory": {"limit": 64 << 20}, "cpu": {"quota": 50000, "period": 100000}});
    let bundle = h.bundle("big", &["sleep", "1000"], res);
    let pid = agent
        .create_container(create_req("big", &bundle))
        .await
        .unwrap();
    agent.start("big", "").await.unwrap();

    // The process is in the container's cgroup below the DPU parent.
    let procs = read(h.cgroup("cpuset", "big").join("cgroup.procs"));
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "pid {pid} not in {procs}"
    );
    let cgroup_of = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroup_of.contains(&format!(":cpuset:/{}/big", h.parent)),
        "{cgroup_of}"
    );
    assert_eq!(read(h.cgroup("cpuset", "").join("cpuset.cpus")), h.cpus);
    assert_eq!(read(h.cgroup("cpuset", "big").join("cpuset.cpus")), h.cpus);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let allowed = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap();
    assert_eq!(allowed.split_whitespace().nth(1).unwrap(), h.cpus);
    assert_eq!(
        read(h.cgroup("memory", "").join("memory.limit_in_bytes")),
        (512u64 << 20).to_string()
    );

    let cap = agent.capacity().await.unwrap();
    assert_eq!(
        (cap.reserved_memory_bytes, cap.reserved_millicores),
        (64 << 20, 500)
    );
    assert_eq!(cap.running_containers, 1);
    assert!(cap.used_memory_bytes > 0);
    let stats = agent.stats("big").await.unwrap();
    assert_eq!(stats.memory_limit_bytes, 64 << 20);
    assert!(stats.memory_usage_bytes > 0 && stats.pids_current >= 1);
    let pids = agent.pids("big").await.unwrap();
    assert!(pids.iter().any(|p| p.pid == pid), "{pids:?}");

    // More memory than is left, or more cpu: DPU full, nothing created.
    let res = json!({"memory": {"limit": 500 << 20}});
    let e = agent
        .create_container(create_req("toobig", &h.bundle("toobig", &["true"], res)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DpuFull(_)), "{e}");
    let res = json!({"cpu": {"quota": 60000, "period": 100000}});
    let e = agent
        .create_container(create_req("toobusy", &h.bundle("toobusy", &["true"], res)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DpuFull(_)), "{e}");
    assert!(!h.cgroup("cpuset", "toobig").exists() && !h.runc_root().join("toobig").exists());
    // A host cpuset in the spec is replaced by the DPU cores.
    let res = json!({"cpu": {"cpus": "0-64"}});
    let hostcpus = h.bundle("hostcpus", &["true"], res);
    agent
        .create_container(create_req("hostcpus", &hostcpus))
        .await
        .unwrap();
    assert_eq!(
        read(h.cgroup("cpuset", "hostcpus").join("cpuset.cpus")),
        h.cpus
    );
    agent.delete("hostcpus", "").await.unwrap();

    agent.pause("big").await.unwrap();
    assert_eq!(
        agent
            .state("big", "")
            .await
            .unwrap()
            .status
            .enum_value()
            .unwrap(),
        Status::PAUSED
    );
    agent.resume("big").await.unwrap();
    assert_eq!(
        agent
            .state("big", "")
            .await
            .unwrap()
            .status
            .enum_value()
            .unwrap(),
        Status::RUNNING
    );
    agent
        .update(
            "big",
            json!({"memory": {"limit": 32 << 20}})
                .to_string()
                .into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        read(h.cgroup("memory", "big").join("memory.limit_in_bytes")),
        (32u64 << 20).to_string()
    );

    // sleep is pid 1 of its namespace and ignores SIGTERM: SIGKILL it.
    agent.kill("big", "", 9, false).await.unwrap();
    assert_eq!(wait_exit(&agent, "big", "").await, 128 + 9);
    assert_eq!(agent.capacity().await.unwrap().reserved_memory_bytes, 0);
    agent.delete("big", "").await.unwrap();
    assert!(!h.cgroup("cpuset", "big").exists() && !h.cgroup("memory", "big").exists());
    assert!(!pid_alive(pid));
}

#[tokio::test]
async fn oom_kill_is_reported_before_the_exit() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("oom");
    let agent = h.start_agent().await;
    let res = json!({"memory": {"limit": 16 << 20}});
    let bundle = h.bundle(
        "hog",
        &["sh", "-c", "a=x; while :; do a=\"$a$a\"; done"],
        res,
    );
    agent
        .create_container(create_req("hog", &bundle))
        .await
        .unwrap();
    agent.start("hog", "").await.unwrap();
    assert_eq!(wait_exit(&agent, "hog", "").await, 137);
    let events = heteropod_dpu_proxy::client::EventCursor::default()
        .next(&agent)
        .await
        .unwrap();
    let kinds: Vec<_> = events
        .iter()
        .filter(|e| e.container_id == "hog")
        .map(|e| e.kind.enum_value().unwrap())
        .collect();
    use heteropod_dpu_proxy::client::EventKind;
    assert_eq!(kinds, [EventKind::OOM, EventKind::EXIT]);
    assert_eq!(agent.stats("hog").await.unwrap().oom_kills, 1);
    agent.delete("hog", "").await.unwrap();
}
