//! Joining two processes to one region: the creator makes the region and a
//! path Unix socket (works across network namespaces, unlike abstract ones);
//! the opener connects, receives the region and doorbells with SCM_RIGHTS and
//! validates the header. The Unix connection closing means the peer is gone.

mod builder;
mod listener;
mod rendezvous;
pub mod slot;

use std::os::fd::OwnedFd;
use std::str::FromStr;
use std::sync::Arc;

use tokio::net::UnixStream;

pub use builder::LinkBuilder;
pub use listener::Listener;

use crate::error::{Error, Result};
use crate::notify::{Bell, Doorbell, NotifyMode, NotifyStats, SpaceFor, Waiter};
use crate::shm::{Consumer, Producer, Region};

/// Which half of the Pod network this process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Cpu,
    Dpu,
}

impl Side {
    pub(crate) fn code(self) -> u8 {
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

/// What tells a link that its peer is gone.
#[derive(Debug)]
pub(crate) enum Liveness {
    /// The rendezvous connection closing.
    Rendezvous(UnixStream),
    /// Epochs and heartbeats in the slot's control block.
    Slot(slot::monitor::Monitor),
}

impl Liveness {
    pub(crate) async fn gone(&self) {
        match self {
            Liveness::Rendezvous(conn) => peer_gone(conn).await,
            Liveness::Slot(m) => m.gone().await,
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
    pub(crate) liveness: Liveness,
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
        Ok(Link::assemble(
            region,
            tx,
            rx,
            (
                Doorbell::new(my_data)?,
                Doorbell::new(my_space)?,
                Bell::new(peer_data),
                Bell::new(peer_space),
            ),
            Liveness::Rendezvous(conn),
            side,
            mode,
            is_creator,
        ))
    }

    /// `bells`: (our data, our space, peer data, peer space).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        region: Arc<Region>,
        tx: Producer,
        rx: Consumer,
        bells: (Doorbell, Doorbell, Bell, Bell),
        liveness: Liveness,
        side: Side,
        mode: NotifyMode,
        is_creator: bool,
    ) -> Link {
        let (data_bell, space_bell, peer_data_bell, peer_space_bell) = bells;
        let generation = region.generation();
        Link {
            region,
            tx,
            rx,
            data_bell,
            space_bell,
            peer_data_bell,
            peer_space_bell,
            liveness,
            side,
            mode,
            is_creator,
            generation,
            stats: Arc::default(),
        }
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

    /// Resolves when the peer closed the rendezvous connection (or, for a
    /// slot link, stopped its heartbeat or detached).
    pub async fn peer_gone(&self) {
        self.liveness.gone().await
    }
}

/// This side's ends of a region's two rings: the creator produces into ring 0
/// and consumes ring 1, the opener the other way round.
pub(crate) fn ring_ends(region: &Arc<Region>, creator: bool) -> Result<(Producer, Consumer)> {
    let (tx, rx) = if creator { (0, 1) } else { (1, 0) };
    let busy = || Error::Config("ring busy");
    let tx = region.ring(tx)?.acquire_producer().ok_or_else(busy)?;
    let rx = region.ring(rx)?.acquire_consumer().ok_or_else(busy)?;
    Ok((tx, rx))
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
