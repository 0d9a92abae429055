//! Terminals, OOM kills and a shim that dies: the real shim binary against real runc.

mod common;

use common::{can_run, create_req, ctx, id_req, Harness};
use containerd_shim_protos::api;
use tokio::{io::AsyncReadExt, net::unix::pipe};

#[tokio::test]
async fn terminal_output_and_resize() {
    if !can_run() {
        return;
    }
    let h = Harness::new("tty").await;
    let bundle = h.bundle("t1", &["sh", "-c", "tty; sleep 0.3"], &[], true);
    let address = h.start_shim("t1", &bundle);
    let sut = h.client(&address).await;
    let stdout = h.fifo("t1-stdout");
    let mut reader = pipe::OpenOptions::new().open_receiver(&stdout).unwrap();
    let mut req = create_req(&h, "t1", &bundle, &stdout);
    req.terminal = true;
    sut.create(ctx(), &req).await.unwrap();
    sut.resize_pty(
        ctx(),
        &id_req(|r: &mut api::ResizePtyRequest| {
            r.id = "t1".into();
            r.width = 100;
            r.height = 30;
        }),
    )
    .await
    .unwrap();
    sut.start(
        ctx(),
        &id_req(|r: &mut api::StartRequest| r.id = "t1".into()),
    )
    .await
    .unwrap();
    let w = sut
        .wait(
            ctx(),
            &id_req(|r: &mut api::WaitRequest| r.id = "t1".into()),
        )
        .await
        .unwrap();
    assert_eq!(w.exit_status, 0);
    let mut out = String::new();
    reader.read_to_string(&mut out).await.unwrap();
    assert!(out.contains("/dev/pts/"), "tty output {out:?}");
    sut.delete(
        ctx(),
        &id_req(|r: &mut api::DeleteRequest| r.id = "t1".into()),
    )
    .await
    .unwrap();
    sut.shutdown(ctx(), &api::ShutdownRequest::default())
        .await
        .unwrap();
    assert!(h.shims_exited().await);
}

#[tokio::test]
async fn shim_delete_cleans_up_after_a_dead_shim() {
    if !can_run() {
        return;
    }
    let h = Harness::new("dead").await;
    let bundle = h.bundle("d1", &["sleep", "1000"], &[], false);
    let address = h.start_shim("d1", &bundle);
    let sut = h.client(&address).await;
    sut.create(ctx(), &create_req(&h, "d1", &bundle, ""))
        .await
        .unwrap();
    sut.start(
        ctx(),
        &id_req(|r: &mut api::StartRequest| r.id = "d1".into()),
    )
    .await
    .unwrap();
    let shim_pid = sut
        .connect(ctx(), &api::ConnectRequest::default())
        .await
        .unwrap()
        .shim_pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(h.shims_exited().await);
    let resp = h.delete_shim("d1", &bundle);
    assert_eq!(resp.exit_status, 137);
    assert!(
        h.runc_containers().is_empty(),
        "shim delete left {:?}",
        h.runc_containers()
    );
}

#[tokio::test]
async fn memory_hog_gets_an_oom_event_and_exit_137() {
    if !can_run() {
        return;
    }
    let h = Harness::new("oom").await;
    let bundle = h.bundle(
        "hog",
        &["sh", "-c", "x=a; while true; do x=$x$x; done"],
        &[],
        false,
    );
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["linux"]["resources"]["memory"] =
        serde_json::json!({"limit": 16 * 1024 * 1024, "swap": 16 * 1024 * 1024});
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let address = h.start_shim("hog", &bundle);
    let sut = h.client(&address).await;
    sut.create(ctx(), &create_req(&h, "hog", &bundle, ""))
        .await
        .unwrap();
    sut.start(
        ctx(),
        &id_req(|r: &mut api::StartRequest| r.id = "hog".into()),
    )
    .await
    .unwrap();
    let w = sut
        .wait(
            ctx(),
            &id_req(|r: &mut api::WaitRequest| r.id = "hog".into()),
        )
        .await
        .unwrap();
    assert_eq!(w.exit_status, 137, "killed by the OOM killer");
    sut.delete(
        ctx(),
        &id_req(|r: &mut api::DeleteRequest| r.id = "hog".into()),
    )
    .await
    .unwrap();
    sut.shutdown(ctx(), &api::ShutdownRequest::default())
        .await
        .unwrap();
    assert!(h.shims_exited().await);
    if !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert!(
            h.topics().iter().any(|t| t == "/tasks/oom"),
            "no /tasks/oom in {:?}",
            h.topics()
        );
    }
}
