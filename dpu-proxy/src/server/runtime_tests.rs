//! Service logic over the fake executor: no root, runc or cgroups needed.
use std::{path::Path, sync::Arc, time::Duration};

use serde_json::json;

use super::{
    cgroup::CgroupParent,
    events::{EventKind, EventLog},
    fake::FakeExecutor,
    policy::Policy,
    process::Status,
    runtime::Runtime,
};
use crate::error::Error;

struct Fixture {
    dir: tempfile::TempDir,
    fake: Arc<FakeExecutor>,
    sut: Arc<Runtime>,
}

fn runtime(dir: &Path, fake: Arc<FakeExecutor>) -> Arc<Runtime> {
    // A cgroup root with nothing in it: usage reads as zero.
    let cg = CgroupParent::new(dir.join("cgroup"), "dpu".into(), "0-1", 100 << 20).unwrap();
    let policy = Policy {
        bundle_roots: vec![dir.join("bundles")],
        ..Policy::default()
    };
    Runtime::new(
        &dir.join("state"),
        fake,
        cg,
        Arc::new(EventLog::new("t".into())),
        policy,
    )
    .unwrap()
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeExecutor::default());
        let sut = runtime(dir.path(), fake.clone());
        Fixture { dir, fake, sut }
    }

    fn bundle(&self, id: &str, mut resources: serde_json::Value) -> String {
        resources["devices"] = json!([{"allow": false, "access": "rwm"}]);
        let b = self.dir.path().join("bundles").join(id);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        // What `runc spec` gives, so the node's policy lets it through.
        let spec = json!({"root": {"path": "rootfs"}, "process": {"args": ["x"]}, "linux": {
            "resources": resources,
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]}});
        std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
        b.display().to_string()
    }
}

async fn wait(rt: &Runtime, id: &str, exec: &str) -> u32 {
    tokio::time::timeout(Duration::from_secs(5), rt.wait(id, exec))
        .await
        .unwrap()
        .unwrap()
        .status
}

#[tokio::test]
async fn lifecycle_create_start_kill_wait_delete() {
    let f = Fixture::new();
    let pid = f
        .sut
        .create("c1", &f.bundle("c1", json!({})), false, false)
        .await
        .unwrap();
    assert_eq!(f.sut.get("c1").unwrap().init.status(), Status::Created);
    assert_eq!(f.sut.start("c1", "").await.unwrap(), pid);
    assert!(matches!(
        f.sut.start("c1", "").await,
        Err(Error::FailedPrecondition(_))
    ));
    assert!(matches!(
        f.sut.delete("c1", "").await,
        Err(Error::FailedPrecondition(_))
    ));
    f.sut.kill("c1", "", 9, false).await.unwrap();
    assert_eq!(wait(&f.sut, "c1", "").await, 137);
    let events = f.sut.events.wait(0, "t").await;
    assert_eq!(
        (events[0].kind.clone(), events[0].exit_status),
        (EventKind::Exit, 137)
    );
    assert!(matches!(
        f.sut.kill("c1", "", 9, false).await,
        Err(Error::NotFound(_))
    ));
    f.sut.delete("c1", "").await.unwrap();
    assert!(matches!(f.sut.get("c1"), Err(Error::NotFound(_))));
    assert!(!f.dir.path().join("state/containers/c1").exists());
    let calls = f.fake.calls.lock().unwrap().clone();
    assert_eq!(calls, ["create c1", "start c1", "kill c1 9", "delete c1"]);
}

#[tokio::test]
async fn capacity_is_reserved_while_running_and_released_on_exit() {
    let f = Fixture::new();
    let big = json!({"memory": {"limit": 80 << 20}, "cpu": {"quota": 150000, "period": 100000}});
    f.sut
        .create("a", &f.bundle("a", big), false, false)
        .await
        .unwrap();
    let cap = f.sut.capacity();
    assert_eq!(
        (
            cap.total_cores,
            cap.reserved.millicores,
            cap.reserved.memory_bytes
        ),
        (2, 1500, 80 << 20)
    );
    let e = f
        .sut
        .create(
            "b",
            &f.bundle("b", json!({"memory": {"limit": 30 << 20}})),
            false,
            false,
        )
        .await;
    assert!(matches!(e, Err(Error::DpuFull(_))), "{e:?}");
    let e = f
        .sut
        .create(
            "c",
            &f.bundle("c", json!({"cpu": {"quota": 60000, "period": 100000}})),
            false,
            false,
        )
        .await;
    assert!(matches!(e, Err(Error::DpuFull(_))), "{e:?}");
    assert!(f
        .fake
        .calls
        .lock()
        .unwrap()
        .iter()
        .all(|c| !c.ends_with(" b") && !c.ends_with(" c")));
    f.sut.kill("a", "", 9, false).await.unwrap();
    wait(&f.sut, "a", "").await;
    assert_eq!(f.sut.capacity().reserved, Default::default());
    f.sut
        .create(
            "b",
            &f.bundle("b", json!({"memory": {"limit": 30 << 20}})),
            false,
            false,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn execs_are_registered_then_started_and_need_a_running_container() {
    let f = Fixture::new();
    f.sut
        .create("c", &f.bundle("c", json!({})), false, false)
        .await
        .unwrap();
    let spec = br#"{"args": ["sh"]}"#;
    f.sut.exec("c", "e1", spec, false, false).await.unwrap();
    assert!(matches!(
        f.sut.exec("c", "e1", spec, false, false).await,
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        f.sut.start("c", "e1").await,
        Err(Error::FailedPrecondition(_))
    ));
    f.sut.start("c", "").await.unwrap();
    let epid = f.sut.start("c", "e1").await.unwrap();
    f.fake.exit(epid, 7);
    assert_eq!(wait(&f.sut, "c", "e1").await, 7);
    f.sut.delete("c", "e1").await.unwrap();
    assert!(matches!(
        f.sut.wait("c", "e1").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        f.sut.exec("c", "bad/id", spec, false, false).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        f.sut.exec("c", "e2", b"{}", false, false).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn restore_keeps_live_processes_and_reports_dead_ones() {
    let f = Fixture::new();
    // "live" reports a pid that really is alive (this test process).
    *f.fake.create_pid.lock().unwrap() = Some(std::process::id());
    f.sut
        .create("live", &f.bundle("live", json!({})), false, false)
        .await
        .unwrap();
    f.sut.start("live", "").await.unwrap();
    *f.fake.create_pid.lock().unwrap() = None;
    f.sut
        .create("dead", &f.bundle("dead", json!({})), false, false)
        .await
        .unwrap();
    f.sut.start("dead", "").await.unwrap();

    let again = runtime(f.dir.path(), f.fake.clone());
    again.restore().await;
    assert_eq!(again.get("live").unwrap().init.status(), Status::Running);
    // The fake's pids do not exist: "dead" died while the agent was away.
    let dead = again.get("dead").unwrap().init.exit().unwrap();
    assert_eq!(dead.status, 255);
    assert!(dead.reason.contains("agent"), "{}", dead.reason);
    let events = again.events.wait(0, "t").await;
    assert!(events
        .iter()
        .any(|e| e.container_id == "dead" && e.kind == EventKind::Exit));
    assert!(events.iter().all(|e| e.container_id != "live"));
}
