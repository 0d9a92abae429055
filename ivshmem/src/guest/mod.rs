//! The guest side of ivshmem-doorbell: ring peers through BAR0's doorbell
//! register, receive MSI-X interrupts as eventfds through vfio-pci.

pub mod bar;
pub mod sysfs;
pub mod vfio;
