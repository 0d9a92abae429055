//! Joining two processes to one region: the creator makes the region and a
//! path Unix socket (works across network namespaces, unlike abstract ones);
//! the opener connects, receives the region and doorbells with SCM_RIGHTS and
//! validates the header. The Unix connection closing means the peer is gone.

mod rendezvous;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};

use crate::error::{Error, Result};
use crate::notify::{eventfd, Bell, Doorbell, NotifyMode, NotifyStats, SpaceFor, Waiter};
use crate::shm::{Consumer, Producer, Region, RegionAddr};

/// Which half of the Pod network this process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Cpu,
    Dpu,
}

impl Side {
    fn code(self) -> u8 {
        match self {
            Side::Cpu => 0,
            Side::Dpu => 1,
        }
    }
}

impl FromStr for Side {
    type Err = Error;
    fn from_str(s: &str) -> Result<Side> {
        match s {
            "cpu" => Ok(Side::Cpu),
            "dpu" => Ok(Side::Dpu),
            _ => Err(Error::Config("side must be cpu or dpu")),
        }
    }
}

/// Builds either end of a link.
#[derive(Debug, Clone)]
pub struct LinkBuilder {
    addr: RegionAddr,
    side: Side,
    mode: NotifyMode,
    rendezvous: Option<PathBuf>,
    ring_bytes: Option<u64>,
}

impl LinkBuilder {
    pub fn new(addr: RegionAddr) -> LinkBuilder {
        LinkBuilder {
            addr,
            side: Side::Cpu,
            mode: NotifyMode::Elastic,
            rendezvous: None,
            ring_bytes: None,
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

    fn socket_path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.rendezvous {
            return Ok(p.clone());
        }
        match &self.addr {
            RegionAddr::Shm(_) => {
                let mut p = self.addr.file_path().unwrap_or_default().into_os_string();
                p.push(".sock");
                Ok(p.into())
            }
            _ => Err(Error::Config(
                "this region backend needs an explicit rendezvous path",
            )),
        }
    }

    /// Creator: makes the region (0600) and binds the rendezvous socket.
    /// Must be called inside a tokio runtime.
    pub fn create(self) -> Result<Listener> {
        let sock = self.socket_path()?;
        let region = Arc::new(Region::create(
            &self.addr,
            self.ring_bytes,
            u32::from(self.side.code()),
        )?);
        if let Some(dir) = sock.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Rendezvous {
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
            listener,
            sock,
            sock_id,
            side: self.side,
            mode: self.mode,
        })
    }

    /// Opener: connects to the rendezvous socket, maps and validates the region.
    pub async fn connect(&self) -> Result<Link> {
        let sock = self.socket_path()?;
        let mut conn = UnixStream::connect(&sock)
            .await
            .map_err(|source| Error::Rendezvous {
                context: "connect",
                source,
            })?;
        let hello =
            tokio::time::timeout(rendezvous::HANDSHAKE_TIMEOUT, rendezvous::recv_hello(&conn))
                .await
                .map_err(|_| Error::Handshake("timed out waiting for the creator"))??;
        if hello.creator_side == self.side.code() {
            return Err(Error::Handshake("both ends claim the same side"));
        }
        tracing::debug!(creator_addr = %hello.addr, generation = hello.generation, "rendezvous hello");
        let region = match hello.region_fd {
            Some(fd) => Region::from_fd(self.addr.clone(), fd)?,
            None => Region::open(&self.addr)?,
        };
        if region.generation() != hello.generation {
            return Err(Error::Handshake(
                "region generation differs from the rendezvous",
            ));
        }
        let region = Arc::new(region);
        let tx = region
            .ring(1)?
            .acquire_producer()
            .ok_or(Error::Config("ring busy"))?;
        let rx = region
            .ring(0)?
            .acquire_consumer()
            .ok_or(Error::Config("ring busy"))?;
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

/// The creator's end: owns the region and accepts one peer at a time.
#[derive(Debug)]
pub struct Listener {
    region: Arc<Region>,
    listener: UnixListener,
    sock: PathBuf,
    /// (dev, inode) of our socket file, so drop never removes a successor's.
    sock_id: Option<(u64, u64)>,
    side: Side,
    mode: NotifyMode,
}

impl Listener {
    /// Waits for a peer. Before each peer the rings are reset and the
    /// generation bumped, so a restarted peer starts clean. Drop the previous
    /// [`Link`] first. Failed handshakes are logged and skipped.
    pub async fn accept(&mut self) -> Result<Link> {
        loop {
            let (conn, _) = self
                .listener
                .accept()
                .await
                .map_err(|source| Error::Rendezvous {
                    context: "accept",
                    source,
                })?;
            match tokio::time::timeout(rendezvous::HANDSHAKE_TIMEOUT, self.handshake(conn)).await {
                Ok(Ok(link)) => return Ok(link),
                Ok(Err(e)) => tracing::warn!(error = %e, "rendezvous handshake failed"),
                Err(_) => tracing::warn!("rendezvous handshake timed out"),
            }
        }
    }

    async fn handshake(&self, mut conn: UnixStream) -> Result<Link> {
        let generation = self.region.reinit();
        let tx = self
            .region
            .ring(0)?
            .acquire_producer()
            .ok_or(Error::Config("ring busy"))?;
        let rx = self
            .region
            .ring(1)?
            .acquire_consumer()
            .ok_or(Error::Config("ring busy"))?;
        let bells = [eventfd()?, eventfd()?, eventfd()?, eventfd()?];
        let mut raw = Vec::with_capacity(5);
        let region_fd = match self.region.addr() {
            RegionAddr::Shm(_) | RegionAddr::Memfd => self.region.fd().map(|f| f.as_raw_fd()),
            _ => None,
        };
        raw.extend(region_fd);
        raw.extend(bells.iter().map(|b| b.as_fd().as_raw_fd()));
        rendezvous::send_hello(
            &conn,
            generation,
            self.side.code(),
            &self.region.addr().to_string(),
            &raw,
            region_fd.is_some(),
        )
        .await?;
        let peer_side = rendezvous::recv_ok(&mut conn).await?;
        if peer_side == self.side.code() {
            return Err(Error::Handshake("both ends claim the same side"));
        }
        // Our view: we wait on the creator bells and ring the opener's.
        let [opener_data, opener_space, creator_data, creator_space] = bells;
        Link::new(
            self.region.clone(),
            tx,
            rx,
            [creator_data, creator_space, opener_data, opener_space],
            conn,
            self.side,
            self.mode,
            true,
        )
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    pub fn rendezvous_path(&self) -> &Path {
        &self.sock
    }

    pub fn side(&self) -> Side {
        self.side
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.sock_id.is_some() && file_id(&self.sock) == self.sock_id {
            let _ = std::fs::remove_file(&self.sock);
        }
    }
}

/// One side's attachment to a region: tx ring, rx ring, doorbells, peer liveness.
#[derive(Debug)]
pub struct Link {
    pub(crate) region: Arc<Region>,
    pub(crate) tx: Producer,
    pub(crate) rx: Consumer,
    /// Rung by the peer when it published into our rx ring while we slept.
    pub(crate) data_bell: Doorbell,
    /// Rung by the peer when it freed space in our tx ring while we waited.
    pub(crate) space_bell: Doorbell,
    pub(crate) peer_data_bell: Bell,
    pub(crate) peer_space_bell: Bell,
    pub(crate) conn: UnixStream,
    side: Side,
    pub(crate) mode: NotifyMode,
    pub(crate) is_creator: bool,
    pub(crate) generation: u64,
    pub(crate) stats: Arc<NotifyStats>,
}

impl Link {
    #[allow(clippy::too_many_arguments)]
    fn new(
        region: Arc<Region>,
        tx: Producer,
        rx: Consumer,
        bells: [OwnedFd; 4],
        conn: UnixStream,
        side: Side,
        mode: NotifyMode,
        is_creator: bool,
    ) -> Result<Link> {
        let [my_data, my_space, peer_data, peer_space] = bells;
        let generation = region.generation();
        Ok(Link {
            region,
            tx,
            rx,
            data_bell: Doorbell::new(my_data)?,
            space_bell: Doorbell::new(my_space)?,
            peer_data_bell: Bell::new(peer_data),
            peer_space_bell: Bell::new(peer_space),
            conn,
            side,
            mode,
            is_creator,
            generation,
            stats: Arc::default(),
        })
    }

    pub fn side(&self) -> Side {
        self.side
    }

    pub fn mode(&self) -> NotifyMode {
        self.mode
    }

    pub fn is_creator(&self) -> bool {
        self.is_creator
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    pub fn stats(&self) -> &Arc<NotifyStats> {
        &self.stats
    }

    /// Sends one record (waiting for space as configured) and publishes it.
    /// A simple record API for tools and benchmarks; the Mux drives links itself.
    pub async fn send(&mut self, parts: &[&[u8]], waiter: &mut Waiter) -> Result<()> {
        loop {
            if self.tx.try_push(parts)? {
                if self.tx.publish() {
                    NotifyStats::add(&self.stats.doorbells);
                    self.peer_data_bell.ring()?;
                }
                return Ok(());
            }
            let len = parts.iter().map(|p| p.len()).sum();
            waiter
                .wait(&mut SpaceFor(&mut self.tx, len), &self.space_bell)
                .await?;
        }
    }

    /// Receives one record into `out` (cleared first), waiting as configured.
    pub async fn recv(&mut self, out: &mut Vec<u8>, waiter: &mut Waiter) -> Result<()> {
        loop {
            let got = self.rx.pop_with(|r| {
                out.clear();
                out.resize(r.len(), 0);
                r.read(0, out);
            })?;
            if got.is_some() {
                if self.rx.release() {
                    NotifyStats::add(&self.stats.doorbells);
                    self.peer_space_bell.ring()?;
                }
                return Ok(());
            }
            waiter.wait(&mut self.rx, &self.data_bell).await?;
        }
    }

    /// A waiter using this link's mode and counters.
    pub fn waiter(&self) -> Waiter {
        Waiter::new(self.mode, self.stats.clone())
    }

    /// Resolves when the peer closed the rendezvous connection.
    pub async fn peer_gone(&self) {
        peer_gone(&self.conn).await
    }
}

pub(crate) async fn peer_gone(conn: &UnixStream) {
    let mut buf = [0u8; 64];
    loop {
        if conn.readable().await.is_err() {
            return;
        }
        match conn.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

/// Where a [`crate::Mux`] gets its links from.
#[derive(Debug)]
pub enum LinkSource {
    /// Creator: accept a peer, and again after it goes away.
    Listener(Listener),
    /// Opener: connect, and reconnect (with back-off) after the creator goes away.
    Connect(LinkBuilder),
    /// A single link; the mux ends its events after it goes away.
    Link(Box<Link>),
}

impl From<Listener> for LinkSource {
    fn from(l: Listener) -> Self {
        LinkSource::Listener(l)
    }
}

impl From<LinkBuilder> for LinkSource {
    fn from(b: LinkBuilder) -> Self {
        LinkSource::Connect(b)
    }
}

impl From<Link> for LinkSource {
    fn from(l: Link) -> Self {
        LinkSource::Link(Box::new(l))
    }
}
