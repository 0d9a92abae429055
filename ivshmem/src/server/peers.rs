//! The server's peer table: id allocation, per-peer eventfds, and the messages
//! each join or leave queues for every connection.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::{mpsc, watch};

use crate::error::{nix as nix_err, Error, Result};
use crate::proto::{PROTOCOL_VERSION, SHM_MESSAGE};
use crate::PeerInfo;

/// A message queued for one connection: value and optional descriptor.
pub type Outgoing = (i64, Option<Arc<OwnedFd>>);

#[derive(Debug)]
struct Peer {
    /// Eventfds for interrupting this peer, one per vector.
    bells: Vec<Arc<OwnedFd>>,
    tx: mpsc::UnboundedSender<Outgoing>,
}

/// All connected peers.
#[derive(Debug)]
pub struct PeerTable {
    vectors: u16,
    shm: Arc<OwnedFd>,
    /// Next id to try; ids are not reused right away, so a peer that rejoins
    /// gets a new one and stale doorbells for its old id hit nobody.
    next: u32,
    peers: BTreeMap<u16, Peer>,
    changes: watch::Sender<u64>,
}

impl PeerTable {
    pub fn new(vectors: u16, shm: OwnedFd) -> PeerTable {
        PeerTable {
            vectors,
            shm: Arc::new(shm),
            next: 0,
            peers: BTreeMap::new(),
            changes: watch::Sender::new(0),
        }
    }

    /// A receiver that changes on every join and leave.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn allocate_id(&mut self) -> Result<u16> {
        for _ in 0..=0xffff_u32 {
            let id = (self.next & 0xffff) as u16;
            self.next = (self.next + 1) & 0xffff;
            if !self.peers.contains_key(&id) {
                return Ok(id);
            }
        }
        Err(Error::PeersExhausted)
    }

    /// Admits a new peer: allocates its id and eventfds, queues its setup
    /// messages on its own channel and its connect notifications to the others.
    pub fn join(&mut self) -> Result<(u16, mpsc::UnboundedReceiver<Outgoing>)> {
        let id = self.allocate_id()?;
        let bells = (0..self.vectors)
            .map(|_| {
                EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                    .map(|e| Arc::new(OwnedFd::from(e)))
            })
            .collect::<nix::Result<Vec<_>>>()
            .map_err(nix_err("create eventfd"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        // Sends on an unbounded channel fail only once the receiver is gone, and
        // then that connection is leaving anyway.
        let _ = tx.send((PROTOCOL_VERSION, None));
        let _ = tx.send((i64::from(id), None));
        let _ = tx.send((SHM_MESSAGE, Some(self.shm.clone())));
        for (&other, peer) in &self.peers {
            for bell in &peer.bells {
                let _ = tx.send((i64::from(other), Some(bell.clone())));
            }
        }
        for bell in &bells {
            let _ = tx.send((i64::from(id), Some(bell.clone())));
        }
        for peer in self.peers.values() {
            for bell in &bells {
                let _ = peer.tx.send((i64::from(id), Some(bell.clone())));
            }
        }
        self.peers.insert(id, Peer { bells, tx });
        self.changes.send_modify(|n| *n += 1);
        Ok((id, rx))
    }

    /// Removes a peer and tells the others; false if it was not there.
    pub fn leave(&mut self, id: u16) -> bool {
        if self.peers.remove(&id).is_none() {
            return false;
        }
        for peer in self.peers.values() {
            let _ = peer.tx.send((i64::from(id), None));
        }
        self.changes.send_modify(|n| *n += 1);
        true
    }

    /// Drops every peer (their connections end when their queues close).
    pub fn clear(&mut self) {
        self.peers.clear();
        self.changes.send_modify(|n| *n += 1);
    }

    pub fn snapshot(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .map(|(&id, p)| PeerInfo {
                id,
                vectors: p.bells.len(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sut(vectors: u16) -> PeerTable {
        let shm = tempfile::tempfile().unwrap();
        PeerTable::new(vectors, OwnedFd::from(shm))
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Vec<(i64, bool)> {
        let mut out = Vec::new();
        while let Ok((v, fd)) = rx.try_recv() {
            out.push((v, fd.is_some()));
        }
        out
    }

    #[test]
    fn setup_messages_follow_the_spec_order() {
        let mut sut = sut(2);
        let (a, mut rx_a) = sut.join().unwrap();
        assert_eq!(a, 0, "the first client gets id 0");
        assert_eq!(
            drain(&mut rx_a),
            [(0, false), (0, false), (-1, true), (0, true), (0, true)]
        );
        let (b, mut rx_b) = sut.join().unwrap();
        assert_eq!(b, 1);
        // version, id, shm, peer a's two vectors, then own two vectors.
        assert_eq!(
            drain(&mut rx_b),
            [
                (0, false),
                (1, false),
                (-1, true),
                (0, true),
                (0, true),
                (1, true),
                (1, true)
            ]
        );
        assert_eq!(drain(&mut rx_a), [(1, true), (1, true)]);
        assert!(sut.leave(b));
        assert_eq!(drain(&mut rx_a), [(1, false)]);
        assert!(!sut.leave(b));
    }

    #[test]
    fn ids_are_not_reused_at_once_and_wrap_around() {
        let mut sut = sut(1);
        let (a, _ra) = sut.join().unwrap();
        sut.leave(a);
        let (b, _rb) = sut.join().unwrap();
        assert_ne!(a, b);
        sut.next = 0xffff;
        let (c, _rc) = sut.join().unwrap();
        assert_eq!(c, 0xffff);
        let (d, _rd) = sut.join().unwrap();
        assert_eq!(d, 0, "wrapped to the free id 0");
        let (e, _re) = sut.join().unwrap();
        assert_eq!(e, 2, "skipped id 1, still in use");
    }
}
