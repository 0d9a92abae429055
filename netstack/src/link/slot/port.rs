//! How one side of a slot link reaches the other ivshmem peer: which eventfds
//! it sleeps on, how it rings the peer, and how peer ids read from the slot
//! are checked before use.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use heteropod_ivshmem::{BarDoorbell, Client};

use crate::error::{Error, Result};
use crate::notify::{Bell, Doorbell};

/// The host peer's vectors the guest rings: 0 = data published, 1 = space freed.
pub const HOST_DATA_VECTOR: u16 = 0;
pub const HOST_SPACE_VECTOR: u16 = 1;

/// This side's ivshmem attachment.
#[derive(Debug, Clone)]
pub enum Port {
    /// A host peer of the ivshmem server: sleeps on its own vectors `data`
    /// and `space`, rings other peers by writing their eventfds.
    Client {
        client: Arc<Client>,
        data: u16,
        space: u16,
    },
    /// The guest: rings through BAR0's doorbell register and sleeps on the
    /// MSI-X eventfds of its slot's two vectors (from VFIO, via `--irq-fds`).
    Bar {
        bar: BarDoorbell,
        data: Arc<OwnedFd>,
        space: Arc<OwnedFd>,
    },
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone().map_err(Error::Doorbell)
}

impl Port {
    /// Our ivshmem peer id (the server's id for a client, IVPosition in the guest).
    pub fn own_id(&self) -> Result<u16> {
        match self {
            Port::Client { client, .. } => Ok(client.id()),
            Port::Bar { bar, .. } => Ok(bar.own_id()?),
        }
    }

    /// New (data, space) doorbells to sleep on, with stale rings drained.
    pub fn doorbells(&self) -> Result<(Doorbell, Doorbell)> {
        let (data, space) = match self {
            Port::Client {
                client,
                data,
                space,
            } => (client.bell_fd(*data)?, client.bell_fd(*space)?),
            Port::Bar { data, space, .. } => (dup(data)?, dup(space)?),
        };
        let (data, space) = (Doorbell::new(data)?, Doorbell::new(space)?);
        data.drain();
        space.drain();
        Ok((data, space))
    }

    /// Checks a peer id read from the slot: in range, not ours, and (where the
    /// server tells us) a live peer with more than `max_vector` vectors.
    pub fn check_peer(&self, raw: u64, max_vector: u16) -> Result<u16> {
        let id = u16::try_from(raw)
            .map_err(|_| Error::Slot(format!("peer id {raw} in the slot is out of range")))?;
        if id == self.own_id()? {
            return Err(Error::Slot(format!(
                "peer id {id} in the slot is our own id"
            )));
        }
        if let Port::Client { client, .. } = self {
            let known = client
                .peers()
                .iter()
                .any(|p| p.id == id && p.vectors > usize::from(max_vector));
            if !known {
                return Err(Error::Slot(format!(
                    "peer id {id} in the slot is not an ivshmem peer with {} vectors",
                    u32::from(max_vector) + 1
                )));
            }
        }
        Ok(id)
    }

    /// A bell that interrupts `peer` on `vector`.
    pub fn bell(&self, peer: u16, vector: u16) -> Result<Bell> {
        match self {
            Port::Client { client, .. } => Ok(Bell::new(client.peer_bell_fd(peer, vector)?)),
            Port::Bar { bar, .. } => Ok(Bell::register(bar.bell(peer, vector))),
        }
    }
}
