//! Messages and async ttrpc stubs generated from `proto/agent.proto` at build time.
#![allow(missing_docs, unused, nonstandard_style, clippy::all, clippy::pedantic)]

pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/proto/agent.rs"));
}
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/proto/agent_ttrpc.rs"));
}

pub use agent::*;
pub use agent_ttrpc::{create_agent, Agent, AgentClient as RawAgentClient};
