//! The real agent driving real runc: lifecycle, stdio, exec, exit events.
mod common;

use std::time::Duration;

use common::*;
use heteropod_dpu_proxy::{
    client::{EventCursor, EventKind, ExecRequest, Status, Stream},
    DpuAgent,
};
use serde_json::json;

#[tokio::test]
async fn container_streams_output_and_reports_exit() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("life");
    let agent = h.start_agent().await;
    let pid = h
        .create(
            &agent,
            "c1",
            &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
        )
        .await;
    assert!(pid > 0);
    let st = agent.state("c1", "").await.unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::CREATED);
    let listed = agent.list_containers().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (
            listed[0].id.as_str(),
            listed[0].pod_id.as_str(),
            listed[0].name.as_str(),
            listed[0].pid
        ),
        ("c1", TEST_POD, "c1", pid)
    );
    // Long polls in flight together on one connection, started before the process.
    let (out, err, exit, started) = tokio::join!(
        output(&agent, "c1", "", Stream::STDOUT),
        output(&agent, "c1", "", Stream::STDERR),
        agent.wait("c1", ""),
        agent.start("c1", ""),
    );
    assert_eq!(started.unwrap(), pid);
    assert_eq!(out, "hello\n");
    assert_eq!(err, "oops\n");
    let exit = exit.unwrap();
    assert_eq!(exit.exit_status, 3);
    assert!(exit.exited_at_nanos > 0);
    let mut cursor = EventCursor::default();
    let events = tokio::time::timeout(Duration::from_secs(10), cursor.next(&agent))
        .await
        .unwrap()
        .unwrap();
    let e = events
        .iter()
        .find(|e| e.container_id == "c1")
        .expect("exit event");
    assert_eq!(
        (e.kind.enum_value().unwrap(), e.exit_status, e.pid),
        (EventKind::EXIT, 3, pid)
    );

    let del = agent.delete("c1", "").await.unwrap();
    assert_eq!(del.exit_status, 3);
    assert!(!h.runc_root().join("c1").exists(), "runc state left");
    assert!(
        !h.state_dir().join("containers/c1").exists(),
        "agent files left"
    );
    for c in ["cpuset", "memory", "cpuacct", "pids"] {
        assert!(!h.cgroup(c, "c1").exists(), "{c} cgroup left");
    }
    assert!(!pid_alive(pid));
    assert!(agent.list_containers().await.unwrap().is_empty());
    assert!(matches!(
        agent.state("c1", "").await,
        Err(heteropod_dpu_proxy::Error::NotFound(_))
    ));
}

#[tokio::test]
async fn exec_reports_exit_code_and_takes_stdin() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("exec");
    let agent = h.start_agent().await;
    let pid = h.create(&agent, "c2", &["sleep", "1000"]).await;
    agent.start("c2", "").await.unwrap();

    let process = |args: &[&str]| {
        json!({"args": args, "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}})
            .to_string()
            .into_bytes()
    };
    let req = ExecRequest {
        container_id: "c2".into(),
        exec_id: "e1".into(),
        process_json: process(&["sh", "-c", "echo in-exec; exit 7"]),
        ..Default::default()
    };
    agent.exec(req).await.unwrap();
    let epid = agent.start("c2", "e1").await.unwrap();
    assert!(epid > 0 && epid != pid);
    assert_eq!(
        output(&agent, "c2", "e1", Stream::STDOUT).await,
        "in-exec\n"
    );
    assert_eq!(wait_exit(&agent, "c2", "e1").await, 7);
    agent.delete("c2", "e1").await.unwrap();

    let req = ExecRequest {
        container_id: "c2".into(),
        exec_id: "cat".into(),
        process_json: process(&["cat"]),
        stdin: true,
        ..Default::default()
    };
    agent.exec(req).await.unwrap();
    agent.start("c2", "cat").await.unwrap();
    assert_eq!(
        agent
            .write_input("c2", "cat", b"ping\n".to_vec())
            .await
            .unwrap(),
        5
    );
    agent.close_io("c2", "cat").await.unwrap();
    assert_eq!(output(&agent, "c2", "cat", Stream::STDOUT).await, "ping\n");
    assert_eq!(wait_exit(&agent, "c2", "cat").await, 0);

    // A running container cannot be deleted; kill + wait gives the signal status.
    assert!(matches!(
        agent.delete("c2", "").await,
        Err(heteropod_dpu_proxy::Error::FailedPrecondition(_))
    ));
    agent.kill("c2", "", 9, false).await.unwrap();
    assert_eq!(wait_exit(&agent, "c2", "").await, 137);
    agent.delete("c2", "").await.unwrap();
    assert!(!pid_alive(pid));
    assert!(!h.cgroup("cpuset", "c2").exists());
}

#[tokio::test]
async fn bad_input_gets_typed_errors() {
    if !can_run() {
        return;
    }
    use heteropod_dpu_proxy::Error;
    let mut h = Harness::new("bad");
    let agent = h.start_agent().await;
    let bundle = h.bundle("ok", &["true"], json!({}));
    let e = agent
        .create_container(create_req("../evil", &bundle))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let e = agent
        .create_container(create_req("c3", &h.dir.path().join("missing")))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let e = agent.state("nope", "").await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    let e = agent.kill("nope", "", 9, false).await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    agent
        .create_container(create_req("c3", &bundle))
        .await
        .unwrap();
    let e = agent
        .create_container(create_req("c3", &bundle))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
    let e = agent.start("c3", "nope").await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    let bad = ExecRequest {
        container_id: "c3".into(),
        exec_id: "x".into(),
        process_json: b"{".to_vec(),
        ..Default::default()
    };
    assert!(matches!(
        agent.exec(bad).await,
        Err(Error::InvalidArgument(_))
    ));
    // A created container can be deleted; its init goes away.
    agent.delete("c3", "").await.unwrap();
    let e = heteropod_dpu_proxy::AgentClient::connect(&format!(
        "unix://{}/none.sock",
        h.dir.path().display()
    ))
    .await
    .err()
    .unwrap();
    assert!(matches!(e, Error::DpuUnreachable { .. }), "{e}");
}
