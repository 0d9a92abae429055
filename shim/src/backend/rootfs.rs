//! The container's root filesystem in its bundle: containerd hands over the
//! mounts, the shim mounts them on `<bundle>/rootfs` for either backend (the
//! emulated DPU reaches the bundle at the same path).

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;

use crate::error::{Error, Result};

pub fn rootfs_of(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

/// Unmounts everything under `<bundle>/rootfs`.
pub async fn clean(bundle: &Path) -> Result<()> {
    let rootfs = rootfs_of(bundle);
    tokio::task::spawn_blocking(move || {
        containerd_shim::mount::umount_recursive(rootfs.to_str(), 0)
    })
    .await
    .map_err(|e| Error::FailedPrecondition(format!("unmount task: {e}")))??;
    Ok(())
}

/// Mounts `mounts` on `<bundle>/rootfs`; on failure nothing stays mounted.
pub async fn mount(bundle: &Path, mounts: &[Mount]) -> Result<()> {
    if mounts.is_empty() {
        return Ok(());
    }
    let rootfs = rootfs_of(bundle);
    containerd_shim::util::mkdir(&rootfs, 0o711).await?;
    for m in mounts {
        if let Err(e) = containerd_shim::util::mount_rootfs(m, &rootfs).await {
            let _ = clean(bundle).await;
            return Err(Error::FailedPrecondition(format!(
                "mount {} ({}) on {}: {e}",
                m.source,
                m.type_,
                rootfs.display()
            )));
        }
    }
    Ok(())
}
