//! TTY containers: the agent's pseudo-terminal on stdio, input and output
//! through it, resizing.
mod common;

use common::*;
use heteropod_dpu_proxy::{
    client::{CreateContainerRequest, ExecRequest, Stream},
    DpuAgent,
};
use serde_json::json;

#[tokio::test]
async fn terminal_container_reads_input_and_sees_its_size() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("tty");
    let agent = h.start_agent().await;
    let script = "[ -t 0 ] && [ -t 1 ] && echo tty-yes; read line; stty size; echo got-$line";
    let bundle = h.bundle_with("t", &["sh", "-c", script], json!({}), true);
    let req = CreateContainerRequest {
        id: "t".into(),
        bundle: bundle.display().to_string(),
        stdin: true,
        terminal: true,
        ..Default::default()
    };
    agent.create_container(req).await.unwrap();
    agent.resize_pty("t", "", 100, 30).await.unwrap();
    agent.start("t", "").await.unwrap();
    agent
        .write_input("t", "", b"hello\n".to_vec())
        .await
        .unwrap();
    let out = output(&agent, "t", "", Stream::STDOUT).await;
    assert!(out.contains("tty-yes"), "{out:?}");
    assert!(out.contains("30 100"), "{out:?}");
    assert!(out.contains("got-hello"), "{out:?}");
    // stderr is merged into the terminal.
    assert_eq!(output(&agent, "t", "", Stream::STDERR).await, "");
    assert_eq!(wait_exit(&agent, "t", "").await, 0);
    agent.delete("t", "").await.unwrap();

    // A terminal exec in a plain container; a plain process cannot be resized.
    h.create(&agent, "p", &["sleep", "1000"]).await;
    agent.start("p", "").await.unwrap();
    let process = json!({"args": ["sh", "-c", "[ -t 1 ] && echo exec-tty"], "cwd": "/", "terminal": true,
        "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}});
    let req = ExecRequest {
        container_id: "p".into(),
        exec_id: "e".into(),
        process_json: process.to_string().into_bytes(),
        terminal: true,
        ..Default::default()
    };
    agent.exec(req).await.unwrap();
    agent.start("p", "e").await.unwrap();
    assert!(output(&agent, "p", "e", Stream::STDOUT)
        .await
        .contains("exec-tty"));
    assert_eq!(wait_exit(&agent, "p", "e").await, 0);
    let e = agent.resize_pty("p", "", 80, 24).await.unwrap_err();
    assert!(
        matches!(e, heteropod_dpu_proxy::Error::FailedPrecondition(_)),
        "{e}"
    );
    agent.kill("p", "", 9, false).await.unwrap();
    wait_exit(&agent, "p", "").await;
    agent.delete("p", "").await.unwrap();
}
