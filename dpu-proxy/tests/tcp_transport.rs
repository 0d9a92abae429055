//! The same API over TCP (a DPU reached over the network), authenticated
//! with the node key.
mod common;

use common::*;
use heteropod_dpu_proxy::{client::Stream, AgentClient, DpuAgent, API_VERSION};

#[tokio::test]
async fn agent_serves_over_tcp() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("tcp");
    let key = h.dir.path().join("node.key");
    heteropod_dpu_proxy::auth::AuthKey::generate(&key).unwrap();
    h.config
        .push_str(&format!("[access]\nkey_file = {key:?}\n"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcp = format!("tcp://127.0.0.1:{port}");
    h.extra_args = vec!["--listen".into(), tcp.clone()];
    let _unix = h.start_agent().await;
    let agent = AgentClient::connect_with_key(&tcp, Some(&key))
        .await
        .unwrap();
    assert_eq!(agent.version().await.unwrap().api_version, API_VERSION);
    h.create(&agent, "t1", &["echo", "over-tcp"]).await;
    agent.start("t1", "").await.unwrap();
    assert_eq!(output(&agent, "t1", "", Stream::STDOUT).await, "over-tcp\n");
    assert_eq!(wait_exit(&agent, "t1", "").await, 0);
    agent.delete("t1", "").await.unwrap();
}
