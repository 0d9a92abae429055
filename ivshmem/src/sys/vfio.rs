//! The few VFIO ioctls the guest needs, after `<linux/vfio.h>` (Linux 6.1 UAPI).
//!
//! The libc crate has no VFIO definitions, so the structs are declared here
//! with their sizes asserted against the header. Every VFIO ioctl number is
//! `_IO(';', 100 + n)`: the size is not encoded, `argsz` carries it.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::libc::{c_char, c_int};

use super::fd::adopt_new;

/// `VFIO_API_VERSION`.
pub const API_VERSION: i32 = 0;
/// `VFIO_TYPE1_IOMMU`.
pub const TYPE1_IOMMU: i32 = 1;
/// `VFIO_TYPE1v2_IOMMU`.
pub const TYPE1V2_IOMMU: i32 = 3;
/// `VFIO_NOIOMMU_IOMMU` (`enable_unsafe_noiommu_mode`).
pub const NOIOMMU_IOMMU: i32 = 8;
/// `VFIO_GROUP_FLAGS_VIABLE`.
pub const GROUP_FLAGS_VIABLE: u32 = 1 << 0;
/// `VFIO_DEVICE_FLAGS_PCI`.
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;
/// `VFIO_IRQ_SET_DATA_NONE`.
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// `VFIO_IRQ_SET_DATA_EVENTFD`.
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// `VFIO_PCI_CONFIG_REGION_INDEX`.
pub const PCI_CONFIG_REGION_INDEX: u32 = 7;
/// `VFIO_PCI_MSIX_IRQ_INDEX`.
pub const PCI_MSIX_IRQ_INDEX: u32 = 2;
/// Most eventfds one `VFIO_DEVICE_SET_IRQS` call here carries.
pub const MAX_IRQ_FDS: usize = 256;

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct GroupStatus {
    pub argsz: u32,
    pub flags: u32,
}

/// `struct vfio_device_info`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct DeviceInfo {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
    pub cap_offset: u32,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RegionInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

/// `struct vfio_irq_info`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct IrqInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub count: u32,
}

/// `struct vfio_irq_set` (its flexible `data[]` follows).
#[repr(C)]
#[derive(Debug, Default)]
pub struct IrqSet {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
}

/// `struct vfio_irq_set` with room for [`MAX_IRQ_FDS`] eventfds in `data[]`.
#[repr(C)]
struct IrqSetEventfds {
    head: IrqSet,
    fds: [i32; MAX_IRQ_FDS],
}

const _: () = assert!(std::mem::size_of::<GroupStatus>() == 8);
const _: () = assert!(std::mem::size_of::<DeviceInfo>() == 20);
const _: () = assert!(std::mem::size_of::<RegionInfo>() == 32);
const _: () = assert!(std::mem::size_of::<IrqInfo>() == 16);
const _: () = assert!(std::mem::size_of::<IrqSet>() == 20);
const _: () = assert!(std::mem::offset_of!(IrqSetEventfds, fds) == 20);

mod raw {
    use super::*;
    const T: u8 = b';';
    nix::ioctl_none!(
        /// # Safety
        /// `fd` must be an open VFIO container.
        get_api_version, T, 100
    );
    nix::ioctl_write_int_bad!(
        /// # Safety
        /// `fd` must be an open VFIO container.
        check_extension, nix::request_code_none!(T, 101)
    );
    nix::ioctl_write_int_bad!(
        /// # Safety
        /// `fd` must be an open VFIO container.
        set_iommu, nix::request_code_none!(T, 102)
    );
    nix::ioctl_readwrite_bad!(
        /// # Safety
        /// `data` must point to a valid, writable struct of this type.
        group_get_status, nix::request_code_none!(T, 103), GroupStatus
    );
    nix::ioctl_write_ptr_bad!(
        /// # Safety
        /// `data` must point to a readable container descriptor number.
        group_set_container, nix::request_code_none!(T, 104), c_int
    );
    nix::ioctl_write_ptr_bad!(
        /// # Safety
        /// `data` must point to a NUL-terminated device name.
        group_get_device_fd, nix::request_code_none!(T, 106), c_char
    );
    nix::ioctl_readwrite_bad!(
        /// # Safety
        /// `data` must point to a valid, writable struct of this type.
        device_get_info, nix::request_code_none!(T, 107), DeviceInfo
    );
    nix::ioctl_readwrite_bad!(
        /// # Safety
        /// `data` must point to a valid, writable struct of this type.
        device_get_region_info, nix::request_code_none!(T, 108), RegionInfo
    );
    nix::ioctl_readwrite_bad!(
        /// # Safety
        /// `data` must point to a valid, writable struct of this type.
        device_get_irq_info, nix::request_code_none!(T, 109), IrqInfo
    );
    nix::ioctl_write_ptr_bad!(
        /// # Safety
        /// `data` must point to an `IrqSet` followed by `argsz - 20` data bytes.
        device_set_irqs, nix::request_code_none!(T, 110), IrqSet
    );
}

// In every wrapper below the ioctl number matches its argument type as declared
// in linux/vfio.h, the argument lives on our stack for the whole call, and a
// wrong kind of descriptor only makes the kernel return ENOTTY/EINVAL.

pub fn get_api_version(container: BorrowedFd<'_>) -> nix::Result<i32> {
    // SAFETY: see above; this ioctl takes no argument.
    unsafe { raw::get_api_version(container.as_raw_fd()) }
}

pub fn check_extension(container: BorrowedFd<'_>, ext: i32) -> nix::Result<bool> {
    // SAFETY: see above; the argument is passed by value.
    unsafe { raw::check_extension(container.as_raw_fd(), ext) }.map(|r| r > 0)
}

pub fn set_iommu(container: BorrowedFd<'_>, kind: i32) -> nix::Result<()> {
    // SAFETY: see above; the argument is passed by value.
    unsafe { raw::set_iommu(container.as_raw_fd(), kind) }.map(drop)
}

pub fn group_status(group: BorrowedFd<'_>) -> nix::Result<GroupStatus> {
    let mut st = GroupStatus {
        argsz: std::mem::size_of::<GroupStatus>() as u32,
        flags: 0,
    };
    // SAFETY: see above; `st` is a valid, writable vfio_group_status.
    unsafe { raw::group_get_status(group.as_raw_fd(), &mut st) }?;
    Ok(st)
}

pub fn group_set_container(group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> nix::Result<()> {
    let fd: c_int = container.as_raw_fd();
    // SAFETY: see above; the kernel reads one int from `&fd`.
    unsafe { raw::group_set_container(group.as_raw_fd(), &fd) }.map(drop)
}

pub fn group_device_fd(group: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    // SAFETY: see above; `name` is NUL-terminated and outlives the call.
    let fd = unsafe { raw::group_get_device_fd(group.as_raw_fd(), name.as_ptr()) }?;
    adopt_new(fd).ok_or(nix::Error::EBADF)
}

pub fn device_info(device: BorrowedFd<'_>) -> nix::Result<DeviceInfo> {
    let mut info = DeviceInfo {
        argsz: std::mem::size_of::<DeviceInfo>() as u32,
        ..Default::default()
    };
    // SAFETY: see above; `info` is a valid, writable vfio_device_info.
    unsafe { raw::device_get_info(device.as_raw_fd(), &mut info) }?;
    Ok(info)
}

pub fn region_info(device: BorrowedFd<'_>, index: u32) -> nix::Result<RegionInfo> {
    let mut info = RegionInfo {
        argsz: std::mem::size_of::<RegionInfo>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: see above; `info` is a valid, writable vfio_region_info.
    unsafe { raw::device_get_region_info(device.as_raw_fd(), &mut info) }?;
    Ok(info)
}

pub fn irq_info(device: BorrowedFd<'_>, index: u32) -> nix::Result<IrqInfo> {
    let mut info = IrqInfo {
        argsz: std::mem::size_of::<IrqInfo>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: see above; `info` is a valid, writable vfio_irq_info.
    unsafe { raw::device_get_irq_info(device.as_raw_fd(), &mut info) }?;
    Ok(info)
}

/// Routes IRQs `0..fds.len()` of `index` to the eventfds; an empty slice
/// disables the index's IRQs again.
pub fn set_irq_eventfds(
    device: BorrowedFd<'_>,
    index: u32,
    fds: &[BorrowedFd<'_>],
) -> nix::Result<()> {
    if fds.len() > MAX_IRQ_FDS {
        return Err(nix::Error::E2BIG);
    }
    let mut set = IrqSetEventfds {
        head: IrqSet {
            argsz: (std::mem::size_of::<IrqSet>() + 4 * fds.len()) as u32,
            flags: if fds.is_empty() {
                IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER
            } else {
                IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER
            },
            index,
            start: 0,
            count: fds.len() as u32,
        },
        fds: [-1; MAX_IRQ_FDS],
    };
    for (slot, fd) in set.fds.iter_mut().zip(fds) {
        *slot = fd.as_raw_fd();
    }
    // SAFETY: see above; `set` is a vfio_irq_set whose data[] holds `count` s32
    // eventfds, all within `argsz` bytes of the struct; the fds stay open (borrowed)
    // for the call, and the kernel takes its own references.
    unsafe { raw::device_set_irqs(device.as_raw_fd(), std::ptr::addr_of!(set).cast()) }.map(drop)
}
