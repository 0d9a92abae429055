//! The host peer's view of the other peers, updated message by message.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::error::{Error, Result};
use crate::proto::{Message, MAX_PEER_ID, SHM_MESSAGE};
use crate::server::MAX_VECTORS;
use crate::PeerInfo;

/// A change in the set of peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// The first eventfd of a new peer arrived (more may follow, one per vector).
    Joined(u16),
    /// A peer disconnected; its eventfds were closed.
    Left(u16),
    /// The server closed our connection: peers keep working, but joins and
    /// leaves are no longer reported.
    ServerClosed,
}

/// What one message meant.
#[derive(Debug)]
pub enum Applied {
    /// One of our own eventfds (interrupt setup).
    Own(OwnedFd),
    Event(PeerEvent),
    /// A further vector of a known peer, or a message that changed nothing.
    Nothing,
}

/// Other peers' eventfds, by id and vector.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: BTreeMap<u16, Vec<OwnedFd>>,
}

impl PeerTable {
    /// Applies a connect/disconnect/setup message (not the version, id or shm ones).
    pub fn apply(&mut self, own: u16, msg: Message) -> Result<Applied> {
        if msg.value == SHM_MESSAGE {
            return Err(Error::Protocol("shared memory sent twice"));
        }
        if !(0..=MAX_PEER_ID).contains(&msg.value) {
            return Err(Error::Protocol("peer id out of range"));
        }
        let id = msg.value as u16;
        match (id == own, msg.fd) {
            (true, Some(fd)) => Ok(Applied::Own(fd)),
            (true, None) => Err(Error::Protocol("disconnect notification for ourselves")),
            (false, Some(fd)) => {
                let bells = self.peers.entry(id).or_default();
                if bells.len() >= MAX_VECTORS as usize {
                    return Err(Error::Protocol("too many vectors for one peer"));
                }
                bells.push(fd);
                Ok(if bells.len() == 1 {
                    Applied::Event(PeerEvent::Joined(id))
                } else {
                    Applied::Nothing
                })
            }
            (false, None) => Ok(match self.peers.remove(&id) {
                Some(_) => Applied::Event(PeerEvent::Left(id)),
                None => Applied::Nothing,
            }),
        }
    }

    pub fn bell(&self, peer: u16, vector: u16) -> Result<BorrowedFd<'_>> {
        let bells = self.peers.get(&peer).ok_or(Error::NoPeer(peer))?;
        bells
            .get(usize::from(vector))
            .map(|f| f.as_fd())
            .ok_or(Error::NoVector { peer, vector })
    }

    pub fn snapshot(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .map(|(&id, b)| PeerInfo {
                id,
                vectors: b.len(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> Option<OwnedFd> {
        Some(OwnedFd::from(tempfile::tempfile().unwrap()))
    }

    fn msg(value: i64, fd: Option<OwnedFd>) -> Message {
        Message { value, fd }
    }

    #[test]
    fn peers_join_vector_by_vector_and_leave() {
        let mut sut = PeerTable::default();
        let ev = sut.apply(1, msg(0, fd())).unwrap();
        assert!(matches!(ev, Applied::Event(PeerEvent::Joined(0))));
        assert!(matches!(
            sut.apply(1, msg(0, fd())).unwrap(),
            Applied::Nothing
        ));
        assert_eq!(sut.snapshot(), [PeerInfo { id: 0, vectors: 2 }]);
        assert!(sut.bell(0, 1).is_ok());
        assert!(matches!(sut.bell(0, 2), Err(Error::NoVector { .. })));
        assert!(matches!(
            sut.apply(1, msg(1, fd())).unwrap(),
            Applied::Own(_)
        ));
        let ev = sut.apply(1, msg(0, None)).unwrap();
        assert!(matches!(ev, Applied::Event(PeerEvent::Left(0))));
        assert!(matches!(sut.bell(0, 0), Err(Error::NoPeer(0))));
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        let mut sut = PeerTable::default();
        for (v, f) in [
            (-1, fd()),
            (-2, None),
            (65536, fd()),
            (i64::MAX, None),
            (3, None),
        ] {
            assert!(sut.apply(3, msg(v, f)).is_err(), "{v} accepted");
        }
        assert!(sut.snapshot().is_empty());
    }
}
