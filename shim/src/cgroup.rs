//! Host cgroup helpers for locally run containers: metrics and OOM notification.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use containerd_shim_protos::protobuf::{well_known_types::any::Any, Message};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::error::{Error, Result};

const V1_METRICS: &str = "io.containerd.cgroups.v1.Metrics";
const V2_METRICS: &str = "io.containerd.cgroups.v2.Metrics";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// True on a unified (v2-only) hierarchy.
pub fn is_unified() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// Collects the metrics of the cgroup `pid` is in, packed the way containerd decodes them.
pub async fn metrics(pid: u32) -> Result<Any> {
    tokio::task::spawn_blocking(move || {
        let (type_url, value) = if is_unified() {
            let cg = containerd_shim::cgroup::get_cgroup(pid)?;
            let m = containerd_shim::cgroup::collect_metrics_v2(&cg)?;
            (V2_METRICS, m.write_to_bytes()?)
        } else {
            (
                V1_METRICS,
                crate::cgroup_v1::metrics(pid)?.write_to_bytes()?,
            )
        };
        Ok(Any {
            type_url: type_url.to_string(),
            value,
            ..Default::default()
        })
    })
    .await
    .map_err(|e| Error::FailedPrecondition(format!("metrics task: {e}")))?
}

/// The v1 memory cgroup directory of `pid`, from `/proc/<pid>/cgroup`.
fn memory_dir_v1(pid: u32) -> Result<PathBuf> {
    let proc_path = format!("/proc/{pid}/cgroup");
    let text =
        std::fs::read_to_string(&proc_path).map_err(Error::io(format!("read {proc_path}")))?;
    crate::cgroup_v1::controller_dir(&text, "memory")
        .ok_or_else(|| Error::FailedPrecondition(format!("process {pid} has no v1 memory cgroup")))
}

/// Calls `on_oom` each time the memory cgroup of `pid` hits its limit (cgroup v1
/// `memory.oom_control` eventfd). Stops when the cgroup is removed.
pub fn watch_oom(pid: u32, on_oom: Box<dyn Fn() + Send + Sync>) -> Result<()> {
    if is_unified() {
        // cgroup v2 reports OOM kills in memory.events; not watched yet.
        return Ok(());
    }
    let dir = memory_dir_v1(pid)?;
    let control_path = dir.join("memory.oom_control");
    let control =
        File::open(&control_path).map_err(Error::io(format!("open {}", control_path.display())))?;
    let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    let registration = format!("{} {}", efd.as_raw_fd(), control.as_raw_fd());
    let event_control = dir.join("cgroup.event_control");
    std::fs::write(&event_control, registration)
        .map_err(Error::io(format!("write {}", event_control.display())))?;
    let efd = crate::sys::fd::async_fd(efd)?;
    tokio::spawn(async move {
        let _control = control;
        loop {
            let Ok(mut guard) = efd.readable().await else {
                return;
            };
            match guard.try_io(|fd| fd.get_ref().read().map_err(std::io::Error::from)) {
                Ok(Ok(_)) => {
                    // The eventfd also fires when the cgroup goes away.
                    if !control_path.exists() {
                        return;
                    }
                    on_oom();
                }
                Ok(Err(_)) => return,
                Err(_would_block) => continue,
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_of_this_process_decode_as_containerd_types() {
        let sut = metrics(std::process::id()).await.unwrap();
        if is_unified() {
            assert_eq!(sut.type_url, V2_METRICS);
        } else {
            assert_eq!(sut.type_url, V1_METRICS);
            let m = containerd_shim_protos::cgroups::metrics::Metrics::parse_from_bytes(&sut.value)
                .unwrap();
            assert!(m.memory.is_some());
        }
    }
}
