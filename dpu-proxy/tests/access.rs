//! Who may talk to the agent and what the agent keeps to itself: the real
//! agent binary, real runc.
mod common;

use std::{os::unix::fs::PermissionsExt, path::Path};

use common::*;
use heteropod_dpu_proxy::{client::ExecRequest, DpuAgent, Error};
use serde_json::json;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn spec_and_exec_files_are_readable_by_the_agent_alone() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("private");
    let agent = h.start_agent().await;
    let bundle = h.bundle("p1", &["sleep", "1000"], json!({}));
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    spec["process"]["env"] = json!(["PATH=/bin", "DB_PASSWORD=hunter2"]);
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    agent
        .create_container(create_req("p1", &bundle))
        .await
        .unwrap();
    agent.start("p1", "").await.unwrap();
    let process = json!({"args": ["true"], "cwd": "/", "env": ["TOKEN=s3cret"],
        "user": {"uid": 0, "gid": 0}});
    let req = ExecRequest {
        container_id: "p1".into(),
        exec_id: "e1".into(),
        process_json: process.to_string().into_bytes(),
        ..Default::default()
    };
    agent.exec(req).await.unwrap();

    let state = h.state_dir();
    let dir = state.join("containers/p1");
    assert_eq!(mode(&state), 0o700, "state dir");
    assert_eq!(mode(&state.join("containers")), 0o700);
    assert_eq!(mode(&dir), 0o700, "container dir");
    assert_eq!(mode(&dir.join("bundle")), 0o700, "adapted bundle dir");
    let config = dir.join("bundle/config.json");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("hunter2"));
    assert_eq!(mode(&config), 0o600, "the adapted spec holds the env");
    let exec = dir.join("exec-e1.json");
    assert!(std::fs::read_to_string(&exec).unwrap().contains("s3cret"));
    assert_eq!(mode(&exec), 0o600, "the exec process holds the env");
    assert_eq!(mode(&dir.join("state.json")), 0o600);

    agent.kill("p1", "", 9, false).await.unwrap();
    wait_exit(&agent, "p1", "").await;
    agent.delete("p1", "").await.unwrap();
}

#[tokio::test]
async fn exec_ids_are_validated_by_every_call_that_names_one() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("execid");
    let agent = h.start_agent().await;
    h.create(&agent, "x1", &["sleep", "1000"]).await;
    for bad in ["../x", "a/b", ".hidden", "e 1"] {
        let invalid = |r: Result<(), Error>, call: &str| {
            assert!(
                matches!(r, Err(Error::InvalidArgument(_))),
                "{call} with exec id {bad:?}: {r:?}"
            )
        };
        invalid(agent.state("x1", bad).await.map(drop), "State");
        invalid(agent.start("x1", bad).await.map(drop), "Start");
        invalid(agent.kill("x1", bad, 9, false).await, "Kill");
        invalid(agent.delete("x1", bad).await.map(drop), "Delete");
        invalid(agent.wait("x1", bad).await.map(drop), "Wait");
        invalid(agent.close_io("x1", bad).await, "CloseIO");
        invalid(agent.resize_pty("x1", bad, 80, 24).await, "ResizePty");
        invalid(
            agent.write_input("x1", bad, b"x".to_vec()).await.map(drop),
            "WriteInput",
        );
        let req = ExecRequest {
            container_id: "x1".into(),
            exec_id: bad.into(),
            process_json: br#"{"args":["true"],"cwd":"/"}"#.to_vec(),
            ..Default::default()
        };
        invalid(agent.exec(req).await, "Exec");
    }
    agent.delete("x1", "").await.unwrap();
}
