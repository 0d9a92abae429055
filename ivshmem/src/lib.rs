//! ivshmem-doorbell for HeteroPod.
//!
//! QEMU's `ivshmem-doorbell` device gives a guest a PCI BAR backed by host
//! shared memory, plus interrupts between the peers attached to the same
//! ivshmem server. Debian ships no server, so this crate provides:
//!
//! * [`server`]: the server (`heteropod-ivshmem-server`), QEMU 7.2's protocol;
//! * [`client`]: a host peer that maps the memory and rings/gets rung by peers;
//! * [`guest`]: the guest side, ringing through BAR0's doorbell register and
//!   receiving MSI-X interrupts as eventfds through vfio-pci.
//!
//! All `unsafe` code is in [`sys`].

#![deny(unsafe_code)]

pub mod client;
mod error;
pub mod guest;
pub mod proto;
pub mod server;
#[allow(unsafe_code)]
pub mod sys;

pub use client::{Client, PeerEvent};
pub use error::{Error, Result};
pub use guest::bar::{BarDoorbell, RegisterBell};
pub use guest::vfio::VfioInterrupts;
pub use server::{Server, ServerConfig, ServerHandle};
pub use sys::shm::SharedMemory;

/// One peer as seen by the server or another peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: u16,
    /// Eventfds (interrupt vectors) known for it.
    pub vectors: usize,
}
