//! Receiving ivshmem MSI-X interrupts in the guest as eventfds, through vfio-pci.
//!
//! Only interrupts go through VFIO: BAR0 and BAR2 stay mapped through sysfs
//! (`resourceN`). Touching the BARs through the VFIO device fd would make
//! vfio-pci claim them, and a strict-devmem kernel then refuses sysfs mappings.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::sysfs;
use crate::error::{io, nix as nix_err, Error, Result};
use crate::sys::vfio as raw;

/// PCI command register offset in config space, and its bus-master bit.
pub const PCI_COMMAND: u64 = 4;
pub const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// The command register with bus mastering on: MSI-X messages are memory
/// writes by the device, and without it no interrupt arrives.
pub fn with_bus_master(command: u16) -> u16 {
    command | PCI_COMMAND_MASTER
}

fn vfio(op: &'static str) -> impl FnOnce(nix::Error) -> Error {
    move |source| Error::Vfio { op, source }
}

/// MSI-X vectors of one ivshmem device routed to eventfds.
#[derive(Debug)]
pub struct VfioInterrupts {
    // Field order is drop order: the device before its group and container.
    device: OwnedFd,
    eventfds: Vec<OwnedFd>,
    _group: File,
    _container: File,
}

fn open_rw(path: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(format!("open {path}")))
}

impl VfioInterrupts {
    /// Binds `bdf` to vfio-pci and routes MSI-X vectors `0..vectors` to new
    /// eventfds. Needs the vfio-pci module and an IOMMU (or no-IOMMU mode).
    pub fn open(bdf: &str, vectors: u32) -> Result<VfioInterrupts> {
        sysfs::check_ivshmem(bdf)?;
        sysfs::bind_vfio(bdf)?;
        let (group_path, noiommu) = sysfs::vfio_group_path(bdf)?;

        let container = open_rw("/dev/vfio/vfio")?;
        let version = raw::get_api_version(container.as_fd()).map_err(vfio("GET_API_VERSION"))?;
        if version != raw::API_VERSION {
            return Err(Error::VfioUnsupported("unknown VFIO API version"));
        }
        let group = open_rw(&group_path.to_string_lossy())?;
        let status = raw::group_status(group.as_fd()).map_err(vfio("GROUP_GET_STATUS"))?;
        if status.flags & raw::GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::VfioUnsupported(
                "IOMMU group not viable (bind every device in it to vfio-pci)",
            ));
        }
        raw::group_set_container(group.as_fd(), container.as_fd())
            .map_err(vfio("GROUP_SET_CONTAINER"))?;
        let iommu = Self::pick_iommu(container.as_fd(), noiommu)?;
        raw::set_iommu(container.as_fd(), iommu).map_err(vfio("SET_IOMMU"))?;

        let name = CString::new(bdf).map_err(|_| Error::BadBdf(bdf.to_string()))?;
        let device = raw::group_device_fd(group.as_fd(), &name).map_err(vfio("GET_DEVICE_FD"))?;
        let info = raw::device_info(device.as_fd()).map_err(vfio("GET_INFO"))?;
        if info.flags & raw::DEVICE_FLAGS_PCI == 0 || info.num_irqs <= raw::PCI_MSIX_IRQ_INDEX {
            return Err(Error::VfioUnsupported("not a vfio-pci device with MSI-X"));
        }
        let msix =
            raw::irq_info(device.as_fd(), raw::PCI_MSIX_IRQ_INDEX).map_err(vfio("GET_IRQ_INFO"))?;
        if msix.count < vectors || vectors as usize > raw::MAX_IRQ_FDS || vectors == 0 {
            return Err(Error::TooFewMsix {
                have: msix.count,
                want: vectors,
            });
        }
        Self::enable_bus_master(device.as_fd())?;
        let eventfds = (0..vectors)
            .map(|_| {
                EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                    .map(OwnedFd::from)
            })
            .collect::<nix::Result<Vec<_>>>()
            .map_err(nix_err("create eventfd"))?;
        let borrowed: Vec<BorrowedFd<'_>> = eventfds.iter().map(|f| f.as_fd()).collect();
        raw::set_irq_eventfds(device.as_fd(), raw::PCI_MSIX_IRQ_INDEX, &borrowed)
            .map_err(vfio("SET_IRQS"))?;
        tracing::info!(bdf, vectors, iommu, "MSI-X vectors routed to eventfds");
        Ok(VfioInterrupts {
            device,
            eventfds,
            _group: group,
            _container: container,
        })
    }

    fn pick_iommu(container: BorrowedFd<'_>, noiommu: bool) -> Result<i32> {
        let candidates: &[i32] = if noiommu {
            &[raw::NOIOMMU_IOMMU]
        } else {
            &[raw::TYPE1V2_IOMMU, raw::TYPE1_IOMMU]
        };
        for &kind in candidates {
            if raw::check_extension(container, kind).map_err(vfio("CHECK_EXTENSION"))? {
                return Ok(kind);
            }
        }
        Err(Error::VfioUnsupported(
            "no usable IOMMU type (type1 or no-IOMMU)",
        ))
    }

    /// Sets the bus-master bit through the VFIO config-space region.
    fn enable_bus_master(device: BorrowedFd<'_>) -> Result<()> {
        let cfg = raw::region_info(device, raw::PCI_CONFIG_REGION_INDEX)
            .map_err(vfio("GET_REGION_INFO(config)"))?;
        if cfg.size < PCI_COMMAND + 2 {
            return Err(Error::VfioUnsupported("config space region too small"));
        }
        let at = i64::try_from(cfg.offset + PCI_COMMAND)
            .map_err(|_| Error::VfioUnsupported("config space offset"))?;
        let mut word = [0u8; 2];
        nix::sys::uio::pread(device, &mut word, at).map_err(vfio("read PCI command"))?;
        let command = u16::from_le_bytes(word);
        let wanted = with_bus_master(command);
        if wanted != command {
            nix::sys::uio::pwrite(device, &wanted.to_le_bytes(), at)
                .map_err(vfio("write PCI command"))?;
        }
        Ok(())
    }

    /// Vectors routed.
    pub fn vectors(&self) -> usize {
        self.eventfds.len()
    }

    /// The eventfd that becomes readable when `vector` fires.
    pub fn bell(&self, vector: u16) -> Result<BorrowedFd<'_>> {
        self.eventfds
            .get(usize::from(vector))
            .map(|f| f.as_fd())
            .ok_or(Error::NoVector { peer: 0, vector })
    }

    /// A duplicate of [`VfioInterrupts::bell`], e.g. for `heteronet::notify::Doorbell`.
    pub fn bell_fd(&self, vector: u16) -> Result<OwnedFd> {
        self.bell(vector)?
            .try_clone_to_owned()
            .map_err(io("dup eventfd"))
    }
}

impl Drop for VfioInterrupts {
    fn drop(&mut self) {
        if let Err(e) = raw::set_irq_eventfds(self.device.as_fd(), raw::PCI_MSIX_IRQ_INDEX, &[]) {
            tracing::warn!(error = %e, "disabling MSI-X");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_master_is_bit_two_and_other_bits_are_kept() {
        assert_eq!(with_bus_master(0x0000), 0x0004);
        assert_eq!(with_bus_master(0x0403), 0x0407);
        assert_eq!(with_bus_master(0x0006), 0x0006);
    }

    #[test]
    fn opening_a_missing_device_fails_cleanly() {
        assert!(matches!(
            VfioInterrupts::open("bad", 1),
            Err(Error::BadBdf(_))
        ));
        assert!(VfioInterrupts::open("0000:ff:1f.7", 1).is_err());
    }
}
