//! `heteropod-dpu-proxy`: the agent that runs a Pod's offloaded containers on
//! the DPU (module `server`, binary `heteropod-dpu-proxy`), and the client
//! library the shim drives it with (module `client`).
//!
//! The API is `proto/agent.proto` (package `heteropod.agent.v1`), served over
//! ttrpc on `unix://`, `tcp://` or `vsock://`. A client session:
//!
//! ```no_run
//! # async fn demo() -> heteropod_dpu_proxy::Result<()> {
//! use heteropod_dpu_proxy::client::{copy_output, CreateContainerRequest, EventCursor, Stream};
//! use heteropod_dpu_proxy::{AgentClient, DpuAgent};
//!
//! let agent = AgentClient::connect("unix:///run/heteropod/dpu/agent.sock").await?;
//! let req = CreateContainerRequest { id: "c1".into(), bundle: "/path/to/bundle".into(), ..Default::default() };
//! agent.create_container(req).await?;
//! // Drain stdout and stderr for as long as the process lives (the agent
//! // buffers 1 MiB per stream, then the process blocks on write).
//! let out = tokio::spawn({
//!     let a = agent.clone();
//!     async move { copy_output(&a, "c1", "", Stream::STDOUT, tokio::io::stdout()).await }
//! });
//! agent.start("c1", "").await?;
//! let exit = agent.wait("c1", "").await?; // long poll, no deadline
//! let _ = out.await;
//! let mut events = EventCursor::default();
//! for e in events.next(&agent).await? { println!("{} exited {}", e.container_id, e.exit_status); }
//! agent.delete("c1", "").await?;
//! # let _ = exit; Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod auth;
pub mod client;
pub mod error;
pub mod ids;
pub mod proto;
pub mod server;
pub mod transport;

pub use client::{AgentClient, DpuAgent};
pub use error::{Error, Result};

/// Version of the agent API this crate speaks; the client checks it on connect.
pub const API_VERSION: u32 = 1;

/// This crate's version, reported by the agent.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
