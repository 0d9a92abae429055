//! HeteroPod's containerd shim v2: one shim per Pod, each container placed on the
//! CPU (runc) or, later, the DPU, behind one `Backend` trait.
#![deny(unsafe_code)]

pub mod backend;
pub mod bundle;
pub mod cgroup;
pub mod cgroup_v1;
pub mod config;
pub mod container;
pub mod convert;
pub mod dpu_fit;
pub mod error;
pub mod events;
pub mod exits;
pub mod fastpath;
pub mod host_cpus;
pub mod io;
pub mod logging;
pub mod options;
pub mod placement;
pub mod pod_network;
pub mod process;
pub mod relay;
pub mod sandbox;
pub mod service;
pub mod sys;
pub mod task;
mod task_ops;

pub use service::Service;
