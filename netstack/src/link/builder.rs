//! Building either end of a link: the rendezvous creator and opener, and the
//! slot (ivshmem) creator and opener.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};

use super::listener::{file_id, ListenerKind};
use super::{rendezvous, slot, Link, Listener, Side};
use crate::error::{Error, Result};
use crate::notify::NotifyMode;
use crate::shm::{Region, RegionAddr};

/// Builds either end of a link.
#[derive(Debug, Clone)]
pub struct LinkBuilder {
    addr: RegionAddr,
    side: Side,
    mode: NotifyMode,
    rendezvous: Option<PathBuf>,
    ring_bytes: Option<u64>,
    /// The guest's (data, space) MSI-X eventfds for a `pci:...@k/n` slot.
    irq_fds: Option<Arc<(OwnedFd, OwnedFd)>>,
    /// The ivshmem peer of an `ivshmem:` opener, kept across reconnects.
    client: Arc<tokio::sync::Mutex<Option<Arc<heteropod_ivshmem::Client>>>>,
}

/// How a builder's two ends meet.
enum Meeting {
    /// The path Unix socket rendezvous.
    Rendezvous,
    /// Through the slot's control block (`ivshmem:`, `pci:...@k/n`).
    Slot,
}

impl LinkBuilder {
    pub fn new(addr: RegionAddr) -> LinkBuilder {
        LinkBuilder {
            addr,
            side: Side::Cpu,
            mode: NotifyMode::Elastic,
            rendezvous: None,
            ring_bytes: None,
            irq_fds: None,
            client: Arc::default(),
        }
    }

    /// The eventfds the guest sleeps on for a `pci:<bdf>/<bar>@k/n` slot: the
    /// MSI-X vectors 2k (data published) and 2k+1 (space freed), from VFIO.
    pub fn irq_fds(mut self, data: OwnedFd, space: OwnedFd) -> Self {
        self.irq_fds = Some(Arc::new((data, space)));
        self
    }

    fn meeting(&self) -> Result<Meeting> {
        match (&self.addr, &self.irq_fds) {
            (RegionAddr::Ivshmem { .. }, None) => Ok(Meeting::Slot),
            (RegionAddr::Ivshmem { .. }, Some(_)) => Err(Error::Config(
                "interrupt eventfds are for a guest pci:...@k/n region, not ivshmem:",
            )),
            (RegionAddr::Window { base, .. }, Some(_)) if matches!(**base, RegionAddr::Pci { .. }) => {
                Ok(Meeting::Slot)
            }
            (RegionAddr::Window { base, .. }, None) if matches!(**base, RegionAddr::Pci { .. }) => {
                Err(Error::Config(
                    "a pci:<bdf>/<bar>@k/n slot needs the interrupt eventfds of its two vectors (--irq-fds DATA,SPACE)",
                ))
            }
            (_, Some(_)) => Err(Error::Config(
                "interrupt eventfds only go with a pci:<bdf>/<bar>@k/n region",
            )),
            _ => Ok(Meeting::Rendezvous),
        }
    }

    /// This side's ivshmem attachment for a slot link.
    async fn port(&self, creator: bool) -> Result<slot::port::Port> {
        use slot::port::{Port, HOST_DATA_VECTOR, HOST_SPACE_VECTOR};
        match &self.addr {
            RegionAddr::Ivshmem { socket, window } => {
                // Creator: the host relay's own vectors 0 and 1. Opener (a host
                // peer standing in for the guest): vectors 2k and 2k+1.
                let (data, space) = if creator {
                    (HOST_DATA_VECTOR, HOST_SPACE_VECTOR)
                } else {
                    (window.data_vector(), window.space_vector())
                };
                let mut cached = self.client.lock().await;
                let client = match cached.as_ref() {
                    Some(c) if c.is_connected() => c.clone(),
                    _ => {
                        let c = slot::join_server(socket, data.max(space) + 1).await?;
                        *cached = Some(c.clone());
                        c
                    }
                };
                Ok(Port::Client {
                    client,
                    data,
                    space,
                })
            }
            RegionAddr::Window { base, .. } => match (&**base, &self.irq_fds) {
                (RegionAddr::Pci { bdf, .. }, Some(fds)) if !creator => {
                    let bar = heteropod_ivshmem::BarDoorbell::open(bdf)?;
                    let fds = fds.clone();
                    Ok(Port::Bar {
                        bar,
                        data: Arc::new(fds.0.try_clone().map_err(Error::Doorbell)?),
                        space: Arc::new(fds.1.try_clone().map_err(Error::Doorbell)?),
                    })
                }
                (RegionAddr::Pci { .. }, _) if creator => Err(Error::Config(
                    "the guest (pci:) side of a slot opens it; the host (ivshmem:) side creates",
                )),
                _ => Err(Error::Config("this region has no ivshmem port")),
            },
            _ => Err(Error::Config("this region has no ivshmem port")),
        }
    }

    pub fn side(mut self, side: Side) -> Self {
        self.side = side;
        self
    }

    pub fn notify(mut self, mode: NotifyMode) -> Self {
        self.mode = mode;
        self
    }

    /// Path of the rendezvous Unix socket. Default for `shm:` regions:
    /// the region file's path plus `.sock`.
    pub fn rendezvous(mut self, path: impl Into<PathBuf>) -> Self {
        self.rendezvous = Some(path.into());
        self
    }

    /// Data bytes per direction (rounded up to a power of two; default 4 MiB).
    pub fn ring_bytes(mut self, n: u64) -> Self {
        self.ring_bytes = Some(n);
        self
    }

    /// The rendezvous socket's path: the explicit one, or the default for `shm:`.
    pub fn socket_path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.rendezvous {
            return Ok(p.clone());
        }
        match &self.addr {
            RegionAddr::Shm(_) => {
                let mut p = self.addr.file_path().unwrap_or_default().into_os_string();
                p.push(".sock");
                Ok(p.into())
            }
            RegionAddr::Window { base, window } if matches!(**base, RegionAddr::Shm(_)) => {
                let mut p = self.addr.file_path().unwrap_or_default().into_os_string();
                p.push(format!(".{}.sock", window.index));
                Ok(p.into())
            }
            _ => Err(Error::Config(
                "this region backend needs an explicit rendezvous path",
            )),
        }
    }

    /// Creator, for every region kind: as [`LinkBuilder::create`], and for
    /// `ivshmem:` slots joins the ivshmem server and takes over the slot.
    pub async fn bind(self) -> Result<Listener> {
        match self.meeting()? {
            Meeting::Rendezvous => self.create(),
            Meeting::Slot => {
                if self.rendezvous.is_some() {
                    return Err(Error::Config("a slot link takes no rendezvous socket"));
                }
                let port = self.port(true).await?;
                let creator = slot::Creator::create(&self.addr, port, self.ring_bytes, self.side)?;
                Ok(Listener {
                    region: creator.region().clone(),
                    kind: ListenerKind::Slot(Box::new(creator)),
                    side: self.side,
                    mode: self.mode,
                })
            }
        }
    }

    /// Creator: makes the region (0600) and binds the rendezvous socket.
    /// Must be called inside a tokio runtime. Slot links (`ivshmem:`) need
    /// the async [`LinkBuilder::bind`].
    pub fn create(self) -> Result<Listener> {
        if let Meeting::Slot = self.meeting()? {
            return Err(Error::Config(
                "an ivshmem slot is created with LinkBuilder::bind().await",
            ));
        }
        let sock = self.socket_path()?;
        let region = Arc::new(Region::create(
            &self.addr,
            self.ring_bytes,
            u32::from(self.side.code()),
        )?);
        if let Some(dir) = sock.parent() {
            // A directory made here is the relays' alone (one that exists,
            // such as /dev/shm or the shim's per-Pod one, is left as it is).
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| Error::Rendezvous {
                    context: "create socket directory",
                    source,
                })?;
        }
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).map_err(|source| Error::Rendezvous {
            context: "bind",
            source,
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600));
        }
        let sock_id = file_id(&sock);
        Ok(Listener {
            region,
            kind: ListenerKind::Rendezvous {
                listener,
                sock,
                sock_id,
            },
            side: self.side,
            mode: self.mode,
        })
    }

    /// Opener: connects to the rendezvous socket (or requests the slot),
    /// maps and validates the region.
    pub async fn connect(&self) -> Result<Link> {
        if let Meeting::Slot = self.meeting()? {
            let port = self.port(false).await?;
            return slot::connect(&self.addr, port, self.side, self.mode).await;
        }
        let sock = self.socket_path()?;
        let mut conn = UnixStream::connect(&sock)
            .await
            .map_err(|source| Error::Rendezvous {
                context: "connect",
                source,
            })?;
        rendezvous::check_peer(&conn)?;
        let hello =
            tokio::time::timeout(rendezvous::HANDSHAKE_TIMEOUT, rendezvous::recv_hello(&conn))
                .await
                .map_err(|_| Error::Handshake("timed out waiting for the creator"))??;
        if hello.creator_side == self.side.code() {
            return Err(Error::Handshake("both ends claim the same side"));
        }
        tracing::debug!(creator_addr = %hello.addr, generation = hello.generation, "rendezvous hello");
        let region = match hello.region_fd {
            Some(_) if self.addr.window().is_some() => {
                return Err(Error::Handshake(
                    "a slot window is opened by path, not received",
                ))
            }
            Some(fd) => Region::from_fd(self.addr.clone(), fd)?,
            None => Region::open(&self.addr)?,
        };
        if region.generation() != hello.generation {
            return Err(Error::Handshake(
                "region generation differs from the rendezvous",
            ));
        }
        let region = Arc::new(region);
        let (tx, rx) = super::ring_ends(&region, false)?;
        let [my_data, my_space, peer_data, peer_space] = hello.bells;
        rendezvous::send_ok(&mut conn, self.side.code()).await?;
        Link::new(
            region,
            tx,
            rx,
            [my_data, my_space, peer_data, peer_space],
            conn,
            self.side,
            self.mode,
            false,
        )
    }
}
