//! A host-side ivshmem peer (what QEMU's `ivshmem-client` is): it receives its
//! id, the shared memory and everyone's eventfds, rings other peers and gets
//! rung on its own eventfds.

mod table;

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::error::{io, nix as nix_err, Error, Result};
use crate::proto::{self, Message, MAX_PEER_ID, PROTOCOL_VERSION, SHM_MESSAGE};
use crate::sys::shm::SharedMemory;
use crate::PeerInfo;
pub use table::PeerEvent;
use table::{Applied, PeerTable};

/// How long the server may take to send the setup messages.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Shared {
    peers: Mutex<PeerTable>,
    changes: watch::Sender<u64>,
    events: broadcast::Sender<PeerEvent>,
}

impl Shared {
    fn peers(&self) -> MutexGuard<'_, PeerTable> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connected host peer.
#[derive(Debug)]
pub struct Client {
    id: u16,
    shm_file: File,
    shm: SharedMemory,
    own: Vec<OwnedFd>,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
}

async fn recv_required(stream: &UnixStream) -> Result<Message> {
    proto::recv(stream).await?.ok_or(Error::ServerClosed)
}

impl Client {
    /// Connects to the server at `socket` and completes the setup, expecting
    /// `vectors` interrupt vectors of our own (like QEMU's `vectors=`).
    pub async fn connect(socket: &Path, vectors: u16) -> Result<Client> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(io(format!("connect {}", socket.display())))?;
        let setup = tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::setup(&stream, vectors))
            .await
            .map_err(|_| {
                Error::Timeout("the server's setup messages (fewer vectors than asked?)")
            })??;
        let (id, shm_fd, own, table) = setup;
        let shm_file = File::from(shm_fd);
        let shm = SharedMemory::map(&shm_file)?;
        let shared = Arc::new(Shared {
            peers: Mutex::new(table),
            changes: watch::Sender::new(0),
            events: broadcast::channel(256).0,
        });
        let reader = tokio::spawn(read_updates(id, stream, shared.clone()));
        tracing::debug!(
            peer = id,
            vectors,
            size = shm.len(),
            "connected to ivshmem server"
        );
        Ok(Client {
            id,
            shm_file,
            shm,
            own,
            shared,
            reader,
        })
    }

    async fn setup(
        stream: &UnixStream,
        vectors: u16,
    ) -> Result<(u16, OwnedFd, Vec<OwnedFd>, PeerTable)> {
        let version = recv_required(stream).await?;
        if version.fd.is_some() {
            return Err(Error::Protocol("descriptor with the version message"));
        }
        if version.value != PROTOCOL_VERSION {
            return Err(Error::Version(version.value));
        }
        let id = recv_required(stream).await?;
        if id.fd.is_some() || !(0..=MAX_PEER_ID).contains(&id.value) {
            return Err(Error::Protocol("bad id message"));
        }
        let id = id.value as u16;
        let mut table = PeerTable::default();
        let mut shm = None;
        let mut own = Vec::new();
        while shm.is_none() || own.len() < usize::from(vectors) {
            let msg = recv_required(stream).await?;
            if msg.value == SHM_MESSAGE {
                if shm.is_some() {
                    return Err(Error::Protocol("shared memory sent twice"));
                }
                let fd = msg
                    .fd
                    .ok_or(Error::Protocol("shared memory without descriptor"))?;
                shm = Some(fd);
                continue;
            }
            if let Applied::Own(fd) = table.apply(id, msg)? {
                own.push(fd);
            }
        }
        let shm = shm.ok_or(Error::Protocol("no shared memory"))?;
        Ok((id, shm, own, table))
    }

    /// Our peer id (what others put in the doorbell's high 16 bits).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Our own interrupt vectors.
    pub fn vectors(&self) -> usize {
        self.own.len()
    }

    /// The shared memory, mapped.
    pub fn shm(&self) -> &SharedMemory {
        &self.shm
    }

    /// A new descriptor for the shared memory (to map it elsewhere).
    pub fn shm_fd(&self) -> Result<OwnedFd> {
        self.shm_file
            .as_fd()
            .try_clone_to_owned()
            .map_err(io("dup shared memory fd"))
    }

    /// Our eventfd for `vector`: readable when a peer rings it.
    pub fn bell(&self, vector: u16) -> Result<BorrowedFd<'_>> {
        self.own
            .get(usize::from(vector))
            .map(|f| f.as_fd())
            .ok_or(Error::NoVector {
                peer: self.id,
                vector,
            })
    }

    /// A duplicate of [`Client::bell`], e.g. for `heteronet::notify::Doorbell`.
    pub fn bell_fd(&self, vector: u16) -> Result<OwnedFd> {
        self.bell(vector)?
            .try_clone_to_owned()
            .map_err(io("dup eventfd"))
    }

    /// Consumes pending rings of `vector`; returns how many were pending.
    pub fn drain(&self, vector: u16) -> Result<u64> {
        let mut buf = [0u8; 8];
        match nix::unistd::read(self.bell(vector)?, &mut buf) {
            Ok(_) => Ok(u64::from_ne_bytes(buf)),
            Err(nix::errno::Errno::EAGAIN) => Ok(0),
            Err(e) => Err(nix_err("read eventfd")(e)),
        }
    }

    /// Interrupts `peer` on `vector` (an MSI-X vector if the peer is a guest).
    pub fn ring(&self, peer: u16, vector: u16) -> Result<()> {
        let peers = self.shared.peers();
        let fd = peers.bell(peer, vector)?;
        match nix::unistd::write(fd, &1u64.to_ne_bytes()) {
            // A full counter already means "rung".
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => Ok(()),
            Err(e) => Err(nix_err("write eventfd")(e)),
        }
    }

    /// A duplicate of `peer`'s eventfd for `vector`, e.g. for `heteronet::notify::Bell`.
    pub fn peer_bell_fd(&self, peer: u16, vector: u16) -> Result<OwnedFd> {
        self.shared
            .peers()
            .bell(peer, vector)?
            .try_clone_to_owned()
            .map_err(io("dup eventfd"))
    }

    /// Whether the connection to the server is still up (joins and leaves
    /// are still reported).
    pub fn is_connected(&self) -> bool {
        !self.reader.is_finished()
    }

    /// The other peers and how many vectors each has sent so far.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.shared.peers().snapshot()
    }

    /// Joins and leaves from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.shared.events.subscribe()
    }

    /// Waits until `f` accepts the peer list, at most `timeout`.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&[PeerInfo]) -> Option<T>,
    ) -> Result<T> {
        let mut rx = self.shared.changes.subscribe();
        let wait = async {
            loop {
                rx.borrow_and_update();
                if let Some(t) = f(&self.peers()) {
                    return Ok(t);
                }
                if rx.changed().await.is_err() {
                    return Err(Error::ServerClosed);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::Timeout("peers"))?
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Closing the connection is how a peer leaves.
        self.reader.abort();
    }
}

/// Applies connect/disconnect notifications until the server goes away.
async fn read_updates(own: u16, stream: UnixStream, shared: Arc<Shared>) {
    loop {
        let msg = match proto::recv(&stream).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e @ Error::Protocol(_)) => {
                tracing::warn!(peer = own, error = %e, "ignoring ivshmem message");
                continue;
            }
            Err(e) => {
                tracing::warn!(peer = own, error = %e, "ivshmem connection failed");
                break;
            }
        };
        let applied = shared.peers().apply(own, msg);
        match applied {
            Ok(Applied::Event(ev)) => {
                tracing::debug!(peer = own, event = ?ev, "peer change");
                let _ = shared.events.send(ev);
            }
            // An own vector beyond those asked for: closed, as the spec says.
            Ok(Applied::Own(_)) | Ok(Applied::Nothing) => {}
            Err(e) => tracing::warn!(peer = own, error = %e, "ignoring ivshmem message"),
        }
        shared.changes.send_modify(|n| *n += 1);
    }
    tracing::info!(peer = own, "ivshmem server closed the connection");
    let _ = shared.events.send(PeerEvent::ServerClosed);
    shared.changes.send_modify(|n| *n += 1);
}
