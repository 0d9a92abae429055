//! Slots of the ivshmem BAR (docs/ivshmem-link.md): each split Pod of a DPU in a
//! guest gets one window of the BAR. Shims of different Pods share no
//! memory, so a slot is leased by creating `ivshmem-slots/<k>` beside the
//! server socket with `O_EXCL`; the file holds the Pod id and is removed
//! when the Pod network goes (or by `shim delete` after a crash).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// Directory of the slot leases for the server at `socket`.
pub fn slots_dir(socket: &str) -> PathBuf {
    Path::new(socket)
        .parent()
        .unwrap_or(Path::new("/"))
        .join("ivshmem-slots")
}

/// One leased slot, freed by [`SlotLease::release`] (not on drop: a shim
/// that dies keeps it until `shim delete` runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLease {
    pub slot: u16,
    pub slots: u16,
    path: PathBuf,
    pod_id: String,
}

impl SlotLease {
    /// Leases the first free slot of `slots` for `pod_id`; a slot this Pod
    /// already holds is taken again.
    pub fn acquire(dir: &Path, slots: u16, pod_id: &str) -> Result<SlotLease> {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let mut holders = Vec::new();
        for slot in 0..slots {
            let path = dir.join(slot.to_string());
            let lease = SlotLease {
                slot,
                slots,
                path: path.clone(),
                pod_id: pod_id.to_string(),
            };
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            match created {
                Ok(mut f) => {
                    if let Err(e) = f.write_all(pod_id.as_bytes()) {
                        let _ = std::fs::remove_file(&path);
                        return Err(Error::io(format!("write {}", path.display()))(e));
                    }
                    return Ok(lease);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    if holder == pod_id {
                        return Ok(lease);
                    }
                    holders.push(format!("{slot}: {holder}"));
                }
                Err(e) => return Err(Error::io(format!("create {}", path.display()))(e)),
            }
        }
        Err(Error::FailedPrecondition(format!(
            "Pod {pod_id}: every ivshmem slot of the DPU guest is in use ({slots} slots, \
             leases in {}: {}); raise QEMU_IVSHMEM_SLOTS and [dpu] ivshmem_slots",
            dir.display(),
            holders.join(", ")
        )))
    }

    /// The lease file, if it still names `pod_id` (for `shim delete`).
    pub fn find(dir: &Path, slot: u16, slots: u16, pod_id: &str) -> Option<SlotLease> {
        let path = dir.join(slot.to_string());
        let holder = std::fs::read_to_string(&path).ok()?;
        (holder == pod_id).then(|| SlotLease {
            slot,
            slots,
            path,
            pod_id: pod_id.to_string(),
        })
    }

    /// `<prefix>@<slot>/<slots>`, the slot window of a region address.
    pub fn window(&self, prefix: &str) -> String {
        format!("{prefix}@{}/{}", self.slot, self.slots)
    }

    /// Frees the slot, unless another Pod holds it by now.
    pub fn release(&self) {
        let holder = std::fs::read_to_string(&self.path).unwrap_or_default();
        if holder == self.pod_id {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!("free ivshmem slot {}: {e}", self.path.display());
            }
        }
    }
}

/// The lease an `ivshmem:<socket>@k/n` region names, if `pod_id` still
/// holds it (`shim delete` of a Pod whose shim died).
pub fn lease_of_region(region: &str, pod_id: &str) -> Option<SlotLease> {
    let rest = region.strip_prefix("ivshmem:")?;
    let (socket, _) = rest.rsplit_once('@')?;
    let (slot, slots) = parse_window(rest)?;
    SlotLease::find(&slots_dir(socket), slot, slots, pod_id)
}

/// The `(slot, slots)` of a region address ending in `@k/n`.
pub fn parse_window(region: &str) -> Option<(u16, u16)> {
    let (_, window) = region.rsplit_once('@')?;
    let (k, n) = window.split_once('/')?;
    let (k, n) = (k.parse().ok()?, n.parse().ok()?);
    (k < n).then_some((k, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_exclusive_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let a = SlotLease::acquire(dir.path(), 2, "pod-a").unwrap();
        let b = SlotLease::acquire(dir.path(), 2, "pod-b").unwrap();
        assert_eq!((a.slot, b.slot), (0, 1));
        assert_eq!(a.window("pci:0000:00:04.0/2"), "pci:0000:00:04.0/2@0/2");
        let full = SlotLease::acquire(dir.path(), 2, "pod-c").unwrap_err();
        let text = full.to_string();
        assert!(
            text.contains("0: pod-a") && text.contains("1: pod-b"),
            "{text}"
        );
        a.release();
        let c = SlotLease::acquire(dir.path(), 2, "pod-c").unwrap();
        assert_eq!(c.slot, 0);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("0")).unwrap(),
            "pod-c"
        );
    }

    #[test]
    fn the_same_pod_gets_its_slot_again() {
        let dir = tempfile::tempdir().unwrap();
        let first = SlotLease::acquire(dir.path(), 4, "pod-a").unwrap();
        let again = SlotLease::acquire(dir.path(), 4, "pod-a").unwrap();
        assert_eq!(first, again);
    }

    #[test]
    fn release_leaves_another_pods_lease_alone() {
        let dir = tempfile::tempdir().unwrap();
        let a = SlotLease::acquire(dir.path(), 1, "pod-a").unwrap();
        a.release();
        let b = SlotLease::acquire(dir.path(), 1, "pod-b").unwrap();
        a.release();
        assert!(dir.path().join("0").exists(), "pod-b's lease removed");
        assert_eq!(SlotLease::find(dir.path(), 0, 1, "pod-b"), Some(b));
        assert_eq!(SlotLease::find(dir.path(), 0, 1, "pod-a"), None);
    }

    #[test]
    fn windows_parse_from_region_addresses() {
        assert_eq!(
            parse_window("ivshmem:/run/x/ivshmem.sock@3/8"),
            Some((3, 8))
        );
        assert_eq!(parse_window("shm:/heteropod-x"), None);
        assert_eq!(parse_window("ivshmem:/s@8/8"), None);
        assert_eq!(parse_window("ivshmem:/s@x/8"), None);
        assert_eq!(
            slots_dir("/run/hp/qemu/ivshmem.sock"),
            Path::new("/run/hp/qemu/ivshmem-slots")
        );
    }
}
