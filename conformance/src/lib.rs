//! HeteroPod CRI conformance suite: a small CRI client over containerd's Unix socket,
//! fixtures that build Pod and container configs, a per-test harness that always cleans
//! up, and helpers for streaming Exec/Attach, CRI log files and host-to-Pod traffic.
#![forbid(unsafe_code)]

pub mod client;
pub mod dpu;
pub mod env;
pub mod fixtures;
pub mod harness;
pub mod host;
pub mod logs;
pub mod net;
pub mod portforward;
pub mod stream;
pub mod wait;

pub use client::Cri;
pub use env::TestEnv;
pub use fixtures::{ContainerBuilder, PodBuilder};
pub use harness::{run, Ctx, Pod};
/// The CRI v1 types, re-exported so tests need only this crate.
pub use k8s_cri::v1 as cri;
