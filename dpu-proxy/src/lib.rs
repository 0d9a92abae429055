//! `heteropod-dpu-proxy`: the agent that runs a Pod's offloaded containers on the DPU.
//!
//! Not built yet: the shim currently refuses DPU placements with a clear
//! FailedPrecondition error. The agent, its ttrpc API and the client library
//! the shim uses arrive with the DPU backend (see README, "Known limits").
#![forbid(unsafe_code)]

/// Version of the agent API this crate will speak; the shim checks it on connect.
pub const API_VERSION: u32 = 1;
