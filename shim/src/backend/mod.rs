//! Where a container's processes actually run. The Task service talks only to
//! this trait; a backend is chosen per container at Create from its placement.

pub mod runc;
mod runc_io;
mod spawner;

use std::{fs::File, path::Path, sync::Arc};

use async_trait::async_trait;
use containerd_shim_protos::{api::Mount, protobuf::well_known_types::any::Any};
use oci_spec::runtime::{LinuxResources, Process as OciProcess};

use crate::{
    error::{Error, Result},
    io::{Console, Stdio},
    options::RuntimeSettings,
    placement::Placement,
};

/// A process the backend created: its pid and the stdio handles the shim keeps.
pub struct Spawned {
    pub pid: u32,
    pub stdin: Option<File>,
    pub console: Option<Console>,
}

/// Called when the container's memory cgroup runs out of memory.
pub type OomCallback = Box<dyn Fn() + Send + Sync>;

pub struct CreateSpec<'a> {
    pub rootfs: &'a [Mount],
    pub stdio: &'a Stdio,
    pub on_oom: OomCallback,
}

/// One container on one processing unit.
#[async_trait]
pub trait Backend: Send + Sync {
    fn placement(&self) -> Placement;
    /// Creates the container (init process created, not started).
    async fn create(&self, spec: CreateSpec<'_>) -> Result<Spawned>;
    async fn start(&self) -> Result<()>;
    /// Creates and starts an additional process in the running container.
    async fn exec(&self, exec_id: &str, process: &OciProcess, stdio: &Stdio) -> Result<Spawned>;
    /// Signals the init process, or every process of the container with `all`.
    async fn kill(&self, signal: u32, all: bool) -> Result<()>;
    async fn kill_exec(&self, pid: u32, signal: u32) -> Result<()>;
    /// Removes the container and everything Create set up. Idempotent.
    async fn delete(&self) -> Result<()>;
    async fn pause(&self) -> Result<()>;
    async fn resume(&self) -> Result<()>;
    async fn pids(&self) -> Result<Vec<u32>>;
    async fn update(&self, resources: &LinuxResources) -> Result<()>;
    /// cgroup metrics packed in an `Any` containerd decodes.
    async fn stats(&self, init_pid: u32) -> Result<Any>;
}

/// Builds the backend for a placement. Only the CPU (runc) backend exists so far;
/// a DPU placement is refused rather than silently run on the CPU.
pub fn for_placement(
    placement: Placement,
    id: &str,
    bundle: &Path,
    settings: &RuntimeSettings,
    namespace: &str,
) -> Result<Arc<dyn Backend>> {
    match placement {
        Placement::Cpu => Ok(Arc::new(runc::RuncBackend::new(id, bundle, settings, namespace)?)),
        Placement::Dpu => Err(Error::FailedPrecondition(format!(
            "DPU backend not available: container {id} is placed on the DPU and this shim cannot run it there"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, options::RuntimeOptions};

    #[test]
    fn dpu_placement_is_failed_precondition_never_cpu() {
        let settings = RuntimeOptions::default().resolve(&Config::default());
        let err = for_placement(Placement::Dpu, "c1", Path::new("/tmp"), &settings, "ns")
            .err()
            .expect("DPU placement must not produce a backend");
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert!(
            err.to_string().contains("DPU backend not available"),
            "{err}"
        );
    }

    #[test]
    fn cpu_placement_gives_the_runc_backend() {
        let settings = RuntimeOptions::default().resolve(&Config::default());
        let sut = for_placement(Placement::Cpu, "c1", Path::new("/tmp"), &settings, "ns").unwrap();
        assert_eq!(sut.placement(), Placement::Cpu);
    }
}
