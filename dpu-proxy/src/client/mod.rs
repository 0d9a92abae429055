//! The client library the shim uses to drive a DPU agent.
//!
//! `DpuAgent` is the seam (a hand-written async trait, one method per RPC);
//! `AgentClient` implements it over ttrpc. Every RPC has a named timeout;
//! long polls (`wait`, `read_output`, `wait_events`) use [`NO_TIMEOUT`].
mod agent;
mod stdio;

use std::time::Duration;

pub use agent::{AgentClient, DpuAgent};
pub use stdio::{copy_input, copy_output, EventCursor};

pub use crate::proto::{
    CapacityResponse, ContainerInfo, CreateContainerRequest, CreatePodNetworkRequest,
    CreatePodNetworkResponse, DeleteResponse, Event, EventKind, ExecRequest, PodNetworkInfo,
    ProcessInfo, ReadOutputResponse, StateResponse, StatsResponse, Status, Stream, VersionResponse,
    WaitEventsResponse, WaitResponse,
};

/// No deadline: the call returns when the agent has something to say.
pub const NO_TIMEOUT: Duration = Duration::ZERO;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(5);
pub const CAPACITY_TIMEOUT: Duration = Duration::from_secs(5);
/// Listing Pod networks asks every relay for its counters (1 s each at most).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(30);
/// runc create of a big rootfs can take a while on a slow DPU.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
pub const STATE_TIMEOUT: Duration = Duration::from_secs(10);
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(30);
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(10);
pub const RESIZE_PTY_TIMEOUT: Duration = Duration::from_secs(5);
pub const CLOSE_IO_TIMEOUT: Duration = Duration::from_secs(5);
pub const PIDS_TIMEOUT: Duration = Duration::from_secs(10);
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);
pub const RESUME_TIMEOUT: Duration = Duration::from_secs(10);
pub const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);
pub const STATS_TIMEOUT: Duration = Duration::from_secs(10);
/// A write blocks while the process does not read its stdin.
pub const WRITE_INPUT_TIMEOUT: Duration = Duration::from_secs(60);
pub const POD_NETWORK_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest output chunk asked for per ReadOutput.
pub const READ_CHUNK: u32 = 64 << 10;
/// Largest input chunk per WriteInput.
pub const WRITE_CHUNK: usize = 64 << 10;
