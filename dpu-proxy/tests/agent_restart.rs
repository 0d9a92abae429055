//! kill -9 of the agent: running containers survive and are adopted;
//! those that died meanwhile are reported exited with a reason.
mod common;

use std::time::Duration;

use common::*;
use heteropod_dpu_proxy::{
    client::{EventCursor, EventKind, Status},
    DpuAgent,
};

#[tokio::test]
async fn restart_keeps_running_containers_and_reports_dead_ones() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("restart");
    let agent = h.start_agent().await;
    let keep = h.create(&agent, "keep", &["sleep", "1000"]).await;
    let lost = h.create(&agent, "lost", &["sleep", "1000"]).await;
    agent.start("keep", "").await.unwrap();
    agent.start("lost", "").await.unwrap();
    // A long poll in flight when the agent dies ends with DpuUnreachable.
    let pending = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.wait("keep", "").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    h.kill_agent();
    let e = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(e, heteropod_dpu_proxy::Error::DpuUnreachable { .. }),
        "{e}"
    );
    let e = agent.state("keep", "").await.unwrap_err();
    assert!(
        matches!(e, heteropod_dpu_proxy::Error::DpuUnreachable { .. }),
        "{e}"
    );
    let e = agent.reconnect().await.unwrap_err();
    assert!(
        matches!(e, heteropod_dpu_proxy::Error::DpuUnreachable { .. }),
        "{e}"
    );
    let old = agent;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lost as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..100 {
        if !pid_alive(lost) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pid_alive(keep), "a container died with the agent");

    let agent = h.start_agent().await;
    // The old client (and its clones) work again after reconnect.
    old.reconnect().await.unwrap();
    assert_eq!(old.state("keep", "").await.unwrap().pid, keep);
    let st = agent.state("keep", "").await.unwrap();
    assert_eq!(
        (st.status.enum_value().unwrap(), st.pid),
        (Status::RUNNING, keep)
    );
    let st = agent.state("lost", "").await.unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::STOPPED);
    assert_ne!(st.exit_status, 0);
    assert!(st.reason.contains("agent"), "reason: {}", st.reason);
    let w = agent.wait("lost", "").await.unwrap();
    assert_eq!(w.exit_status, 255);
    let events = tokio::time::timeout(Duration::from_secs(10), EventCursor::default().next(&agent))
        .await
        .unwrap()
        .unwrap();
    assert!(events
        .iter()
        .any(|e| e.container_id == "lost" && e.kind.enum_value().unwrap() == EventKind::EXIT));

    // The adopted container is still fully manageable.
    agent.kill("keep", "", 9, false).await.unwrap();
    let w = tokio::time::timeout(Duration::from_secs(10), agent.wait("keep", ""))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(w.exit_status, 0);
    assert!(!pid_alive(keep));
    agent.delete("keep", "").await.unwrap();
    agent.delete("lost", "").await.unwrap();
    for id in ["keep", "lost"] {
        assert!(!h.runc_root().join(id).exists(), "runc state of {id} left");
        assert!(!h.cgroup("cpuset", id).exists(), "cgroup of {id} left");
        assert!(!h.state_dir().join("containers").join(id).exists());
    }
}
