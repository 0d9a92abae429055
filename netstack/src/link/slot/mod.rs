//! Slot links: a region that is one slot window of an ivshmem BAR, joined
//! without a Unix socket (the host and the guest share none).
//!
//! The CPU side (host, `ivshmem:<socket>@k/n`) creates: it joins the ivshmem
//! server as a peer, writes the header into its window and accepts openers.
//! The DPU side (guest, `pci:<bdf>/<bar>@k/n` + its two MSI-X eventfds) opens:
//! it writes a request (epoch, peer id, slot) into the control block, the
//! creator re-initialises the rings, bumps the generation and acknowledges the
//! epoch. Heartbeats and epochs ([`monitor`]) then stand in for the Unix
//! connection: a peer gone ends the link exactly as a closed rendezvous does.

pub mod control;
pub mod monitor;
pub mod port;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::{Rec, Word, STATE_ATTACHED, STATE_NONE, STATE_REQUESTING};
use monitor::{Monitor, Role};
use port::{Port, HOST_DATA_VECTOR, HOST_SPACE_VECTOR};

use super::{Link, Liveness, Side};
use crate::error::{Error, Result};
use crate::notify::NotifyMode;
use crate::shm::{Region, RegionAddr, Window};

/// How often the creator looks for requests and the opener for the answer.
const POLL: Duration = Duration::from_millis(10);
/// How long a request that fails the checks is retried before it is refused.
const REFUSE_AFTER: Duration = Duration::from_secs(1);
/// How long an opener waits for a creator to acknowledge its request.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// Joins the ivshmem server at `socket` as a host peer owning `vectors` vectors.
pub async fn join_server(
    socket: &std::path::Path,
    vectors: u16,
) -> Result<Arc<heteropod_ivshmem::Client>> {
    heteropod_ivshmem::Client::connect(socket, vectors)
        .await
        .map(Arc::new)
        .map_err(|source| Error::IvshmemServer {
            socket: socket.display().to_string(),
            source,
        })
}

fn window_of(addr: &RegionAddr) -> Result<Window> {
    addr.window()
        .ok_or(Error::Config("a slot link needs a @k/n slot window"))
}

/// The region's file: the ivshmem server's memory for `ivshmem:`, else the address's own.
fn region_file(addr: &RegionAddr, port: &Port) -> Result<Option<File>> {
    match (addr, port) {
        (RegionAddr::Ivshmem { .. }, Port::Client { client, .. }) => {
            Ok(Some(File::from(client.shm_fd()?)))
        }
        (RegionAddr::Ivshmem { .. }, Port::Bar { .. }) => Err(Error::Config(
            "an ivshmem: region is the host's; the guest uses pci:<bdf>/<bar>@k/n",
        )),
        _ => Ok(None),
    }
}

fn map(addr: &RegionAddr, port: &Port) -> Result<Region> {
    match region_file(addr, port)? {
        Some(f) => Region::open_in(addr, f),
        None => Region::open(addr),
    }
}

/// The creator's state between links.
#[derive(Debug)]
pub struct Creator {
    region: Arc<Region>,
    port: Port,
    window: Window,
    socket: PathBuf,
    /// The opener epoch accepted last: never accepted twice.
    last: u64,
    /// Our record's values, re-published while waiting (healing scribbles).
    epoch: u64,
    peer_id: u16,
}

impl Creator {
    /// Takes over the slot: writes the header and our record (the opener's
    /// record is left alone, so an opener already waiting gets accepted).
    pub fn create(
        addr: &RegionAddr,
        port: Port,
        ring_bytes: Option<u64>,
        side: Side,
    ) -> Result<Creator> {
        let window = window_of(addr)?;
        let region = match region_file(addr, &port)? {
            Some(f) => Region::create_in(addr, f, ring_bytes, u32::from(side.code()))?,
            None => Region::create(addr, ring_bytes, u32::from(side.code()))?,
        };
        control::set(&region, Rec::Creator, Word::Epoch, 0)?;
        let socket = match addr {
            RegionAddr::Ivshmem { socket, .. } => socket.clone(),
            _ => PathBuf::new(),
        };
        let port_id = port.own_id()?;
        tracing::info!(%addr, peer = port_id, "slot created");
        let creator = Creator {
            region: Arc::new(region),
            port,
            window,
            socket,
            last: 0,
            epoch: control::new_epoch(),
            peer_id: port_id,
        };
        creator.publish()?;
        Ok(creator)
    }

    /// Writes our record (no opener acknowledged): epoch last, so an opener
    /// that sees it sees the rest.
    fn publish(&self) -> Result<()> {
        let r = &self.region;
        control::set(r, Rec::Creator, Word::AckOrState, 0)?;
        control::set(r, Rec::Creator, Word::PeerId, u64::from(self.peer_id))?;
        control::set(
            r,
            Rec::Creator,
            Word::Slot,
            control::encode_slot(self.window),
        )?;
        control::set(r, Rec::Creator, Word::Epoch, self.epoch)
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Waits for an opener's request and attaches it.
    pub async fn accept(&mut self, side: Side, mode: NotifyMode) -> Result<Link> {
        let r = self.region.clone();
        let mut polls = 0u32;
        let mut candidate: Option<(u64, u64)> = None;
        // A request that fails the checks is retried briefly (our peer table
        // may not know a peer that just joined yet), then refused for good.
        let mut failing: Option<(u64, Instant)> = None;
        loop {
            let epoch = control::get(&r, Rec::Opener, Word::Epoch)?;
            let state = control::get(&r, Rec::Opener, Word::AckOrState)?;
            let hb = control::get(&r, Rec::Opener, Word::Heartbeat)?;
            if state != STATE_REQUESTING || epoch == 0 || epoch == self.last {
                candidate = None;
            } else {
                match candidate {
                    // A live opener bumps its heartbeat while it waits; a
                    // stale request of a dead one never moves.
                    Some((e, h)) if e == epoch && h != hb => match self.attach(epoch, side, mode) {
                        Ok(link) => return Ok(link),
                        Err(err) => {
                            let since = match failing {
                                Some((f, t)) if f == epoch => t,
                                _ => {
                                    tracing::debug!(error = %err, "slot request not acceptable yet");
                                    failing = Some((epoch, Instant::now()));
                                    Instant::now()
                                }
                            };
                            if since.elapsed() > REFUSE_AFTER {
                                tracing::warn!(error = %err, "refusing slot request");
                                self.last = epoch;
                                candidate = None;
                            }
                        }
                    },
                    Some((e, _)) if e == epoch => {}
                    _ => candidate = Some((epoch, hb)),
                }
            }
            // Re-publish our record now and then: garbage written over it
            // must not lock openers out for good.
            if polls == 0 {
                self.publish()?;
                polls = 100;
            }
            polls -= 1;
            tokio::time::sleep(POLL).await;
        }
    }

    fn attach(&mut self, epoch: u64, side: Side, mode: NotifyMode) -> Result<Link> {
        let r = &self.region;
        let slot = control::get(r, Rec::Opener, Word::Slot)?;
        if slot != control::encode_slot(self.window) {
            return Err(Error::Slot(format!(
                "the opener uses slot {}, this side {}",
                control::describe_slot(slot),
                self.window
            )));
        }
        let (dv, sv) = (self.window.data_vector(), self.window.space_vector());
        let peer = self
            .port
            .check_peer(control::get(r, Rec::Opener, Word::PeerId)?, dv.max(sv))?;
        let generation = r.reinit();
        let link = finish(
            r,
            &self.port,
            (peer, dv, sv),
            Role::Creator {
                opener_epoch: epoch,
            },
            side,
            mode,
        )?;
        self.last = epoch;
        control::set(r, Rec::Creator, Word::AckOrState, epoch)?;
        tracing::info!(peer, generation, "slot opener attached");
        Ok(link)
    }
}

/// What both roles end with once the handshake is done: bells to the peer's
/// `(peer, data vector, space vector)`, our own doorbells, the two ring ends
/// and a monitor watching the slot as `role`.
fn finish(
    region: &Arc<Region>,
    port: &Port,
    (peer, data_vector, space_vector): (u16, u16, u16),
    role: Role,
    side: Side,
    mode: NotifyMode,
) -> Result<Link> {
    let peer_data = port.bell(peer, data_vector)?;
    let peer_space = port.bell(peer, space_vector)?;
    let (data, space) = port.doorbells()?;
    let is_creator = matches!(role, Role::Creator { .. });
    let (tx, rx) = super::ring_ends(region, is_creator)?;
    let monitor =
        Monitor::start(region.clone(), role, port.clone(), peer).map_err(Error::Doorbell)?;
    Ok(Link::assemble(
        region.clone(),
        tx,
        rx,
        (data, space, peer_data, peer_space),
        Liveness::Slot(monitor),
        side,
        mode,
        is_creator,
    ))
}

impl Drop for Creator {
    fn drop(&mut self) {
        // Tell an attached or waiting opener at once.
        let r = &self.region;
        let _ = control::set(r, Rec::Creator, Word::AckOrState, 0);
        let _ = control::set(r, Rec::Creator, Word::Epoch, 0);
    }
}

/// Opener: requests the slot and waits for the creator's acknowledgement.
pub async fn connect(addr: &RegionAddr, port: Port, side: Side, mode: NotifyMode) -> Result<Link> {
    let window = window_of(addr)?;
    let probe = Arc::new(map(addr, &port)?);
    if probe.header().creator_side == u32::from(side.code()) {
        return Err(Error::Handshake("both ends claim the same side"));
    }
    let r = &probe;
    let slot = control::get(r, Rec::Creator, Word::Slot)?;
    if slot != control::encode_slot(window) {
        return Err(Error::Slot(format!(
            "the creator uses slot {}, this side {window}",
            control::describe_slot(slot)
        )));
    }
    let creator_epoch = control::get(r, Rec::Creator, Word::Epoch)?;
    if creator_epoch == 0 {
        return Err(Error::Slot("no creator attached to the slot".into()));
    }
    let creator = port.check_peer(
        control::get(r, Rec::Creator, Word::PeerId)?,
        HOST_SPACE_VECTOR,
    )?;
    let ours = control::new_epoch();
    control::set(r, Rec::Opener, Word::AckOrState, STATE_NONE)?;
    control::set(r, Rec::Opener, Word::PeerId, u64::from(port.own_id()?))?;
    control::set(r, Rec::Opener, Word::Slot, control::encode_slot(window))?;
    control::set(r, Rec::Opener, Word::Epoch, ours)?;
    control::set(r, Rec::Opener, Word::AckOrState, STATE_REQUESTING)?;
    let give_up = || {
        let _ = control::set(r, Rec::Opener, Word::AckOrState, STATE_NONE);
        let _ = control::set(r, Rec::Opener, Word::Epoch, 0);
    };
    let deadline = Instant::now() + ACK_TIMEOUT;
    while control::get(r, Rec::Creator, Word::AckOrState)? != ours {
        if Instant::now() >= deadline {
            give_up();
            return Err(Error::Slot(format!(
                "no live creator acknowledged the request within {ACK_TIMEOUT:?}"
            )));
        }
        control::beat(r, Rec::Opener)?;
        tokio::time::sleep(POLL).await;
    }
    if control::get(r, Rec::Creator, Word::Epoch)? != creator_epoch {
        give_up();
        return Err(Error::Slot(
            "the creator restarted during the handshake".into(),
        ));
    }
    // The creator re-initialised the slot before acknowledging: map it afresh
    // so the header (layout, generation) is the one now in force.
    let region = match map(addr, &port) {
        Ok(reg) => Arc::new(reg),
        Err(e) => {
            give_up();
            return Err(e);
        }
    };
    let generation = region.generation();
    let link = finish(
        &region,
        &port,
        (creator, HOST_DATA_VECTOR, HOST_SPACE_VECTOR),
        Role::Opener {
            creator_epoch,
            ours,
            generation,
        },
        side,
        mode,
    );
    let link = match link {
        Ok(l) => l,
        Err(e) => {
            give_up();
            return Err(e);
        }
    };
    control::set(r, Rec::Opener, Word::AckOrState, STATE_ATTACHED)?;
    tracing::info!(creator, generation, "slot attached");
    Ok(link)
}
