//! Where a container's processes actually run. The Task service talks only to
//! this trait; a backend is chosen per container at Create from its placement.

pub mod dpu;
pub mod orphans;
mod rootfs;
pub mod runc;
mod runc_io;
pub(crate) mod spawner;

use std::{fs::File, future::Future, path::Path, pin::Pin, sync::Arc};

use async_trait::async_trait;
use containerd_shim_protos::{api::Mount, protobuf::well_known_types::any::Any};
use oci_spec::runtime::{LinuxResources, Process as OciProcess};

use crate::{
    config::Config,
    error::{Error, Result},
    io::{Console, Stdio},
    options::RuntimeSettings,
    placement::Placement,
    process::Exit,
};

/// Resolves to a process's exit, for backends whose processes the shim's own
/// reaper never sees (the DPU's).
pub type ExitFuture = Pin<Box<dyn Future<Output = Exit> + Send>>;

/// A process the backend created: its pid and the stdio handles the shim keeps.
pub struct Spawned {
    pub pid: u32,
    pub stdin: Option<File>,
    pub console: Option<Console>,
    /// `None`: the process is the shim's child and its exit comes from the reaper.
    pub exit: Option<ExitFuture>,
}

/// Called when the container's memory cgroup runs out of memory.
pub type OomCallback = Box<dyn Fn() + Send + Sync>;

pub struct CreateSpec<'a> {
    pub rootfs: &'a [Mount],
    pub stdio: &'a Stdio,
    pub on_oom: OomCallback,
    /// The netns of the Pod's network half on this unit, when it differs from
    /// the one in the spec (the DPU half).
    pub pod_netns: Option<&'a str>,
    /// The fast-path library to preload once the rootfs is mounted, if the
    /// image can load it (CPU containers only, see `fastpath`).
    pub fastpath: Option<&'a crate::fastpath::Request>,
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
    /// Forgets a finished exec (the backend may keep its record until then).
    async fn delete_exec(&self, _exec_id: &str) -> Result<()> {
        Ok(())
    }
    /// Resizes a terminal the backend owns; `false` when the shim's own
    /// console (if any) is the terminal.
    async fn resize_pty(&self, _exec_id: &str, _width: u32, _height: u32) -> Result<bool> {
        Ok(false)
    }
}

/// Builds the backend for a placement. A DPU placement needs `[dpu] enabled`
/// and a reachable agent; it is never run on the CPU instead.
pub async fn for_placement(
    placement: Placement,
    id: &str,
    bundle: &Path,
    settings: &RuntimeSettings,
    config: &Config,
    namespace: &str,
) -> Result<Arc<dyn Backend>> {
    match placement {
        Placement::Cpu => Ok(Arc::new(runc::RuncBackend::new(id, bundle, settings, namespace)?)),
        Placement::Dpu if !config.dpu.enabled => Err(Error::FailedPrecondition(format!(
            "container {id} is placed on the DPU but this node has no DPU ([dpu] enabled = false in the node config)"
        ))),
        Placement::Dpu => Ok(Arc::new(
            dpu::DpuBackend::connect(id, bundle, &config.dpu).await?,
        )),
    }
}

/// `shim delete`: removes what a shim that died left behind for container
/// `id`, on whichever unit it ran.
pub async fn cleanup(id: &str, bundle: &Path, namespace: &str) -> Result<()> {
    if dpu::cleanup(id, bundle).await? {
        return Ok(());
    }
    runc::cleanup(id, bundle, namespace).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, options::RuntimeOptions};

    async fn backend_for(placement: Placement, config: &Config) -> Result<Arc<dyn Backend>> {
        let settings = RuntimeOptions::default().resolve(config);
        for_placement(placement, "c1", Path::new("/tmp"), &settings, config, "ns").await
    }

    #[tokio::test]
    async fn dpu_placement_without_a_dpu_is_failed_precondition_never_cpu() {
        let err = backend_for(Placement::Dpu, &Config::default())
            .await
            .err()
            .expect("DPU placement must not produce a backend");
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains("[dpu] enabled"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_dpu_is_failed_precondition_naming_the_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = format!("unix://{}/absent.sock", dir.path().display());
        let mut config = Config::default();
        config.dpu.enabled = true;
        config.dpu.endpoint = endpoint.clone();
        let err = backend_for(Placement::Dpu, &config)
            .await
            .err()
            .expect("an unreachable DPU must not produce a backend");
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains(&endpoint), "{err}");
    }

    #[tokio::test]
    async fn cpu_placement_gives_the_runc_backend() {
        let sut = backend_for(Placement::Cpu, &Config::default())
            .await
            .unwrap();
        assert_eq!(sut.placement(), Placement::Cpu);
    }
}
