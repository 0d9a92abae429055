//! A service mesh's capture across the split: connections the Pod's own
//! iptables rules (istio-init, linkerd's proxy-init, a CNI plugin) redirect to
//! a sidecar port that lives in the other half.
//!
//! The half where the rule fired accepts the connection on a mirror; its
//! `SO_ORIGINAL_DST` differs from the address it was accepted on, and the
//! stream carries that original destination. The half with the sidecar
//! connects to the original destination with a per-port mark that one rule in
//! the relay's own chain REDIRECTs to the sidecar's port, so the kernel gives
//! the sidecar the same `SO_ORIGINAL_DST` it would see in one netns.
//!
//! A sidecar's own connections keep their owner (uid) across the split, so
//! the Pod's `-m owner` exclusions hold where they are re-made. A connection
//! the relays re-made that the rules capture again is passed on once more,
//! marked as a round trip: legitimate for a DPU app's egress captured to a
//! DPU sidecar, a loop when it would reach a listener of its own owner (the
//! sidecar capturing itself, under rules without the exclusion): that is
//! refused, never relayed round again.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use nix::unistd::{setfsuid, Uid};
use tokio::net::TcpSocket;

use super::error::{Error, Result};
use super::mirror::canonical;

/// High half of the mark on a delivering socket; the low 16 bits are the port.
const DELIVER_MARK: u32 = 0x4e55_0000;
/// Distinct sidecar ports one relay installs delivery rules for.
pub const MAX_DELIVERY_PORTS: usize = 64;

/// The mark that the delivery rule for `port` matches.
pub fn deliver_mark(port: u16) -> u32 {
    DELIVER_MARK | u32::from(port)
}

/// The delivery rules installed so far (one per sidecar port, bounded).
#[derive(Debug, Default)]
pub struct Deliveries {
    ports: tokio::sync::Mutex<BTreeSet<u16>>,
}

impl Deliveries {
    /// Makes sure connections marked [`deliver_mark`]`(port)` are redirected
    /// to `port`. Needs the relay's egress chain (the half with capture).
    pub async fn ensure(&self, port: u16) -> Result<()> {
        let mut ports = self.ports.lock().await;
        if ports.contains(&port) {
            return Ok(());
        }
        if ports.len() >= MAX_DELIVERY_PORTS {
            return Err(Error::Limit("sidecar ports with captured connections"));
        }
        tokio::task::spawn_blocking(move || {
            super::egress::add_delivery_rule(port, deliver_mark(port))
        })
        .await
        .map_err(|e| Error::io("iptables task", std::io::Error::other(e)))??;
        ports.insert(port);
        Ok(())
    }
}

/// The relay's own outbound TCP connections (local port -> address and the
/// owner it was made for): one accepted on a mirror from such an address went
/// round the relay pair. Tracked from bind, before connect: the mirror may
/// accept the connection before the connecting task runs again.
#[derive(Debug, Clone, Default)]
pub struct OwnConnects(Arc<Mutex<ByPort>>);

/// Bound address and owner of each own connection, by local port.
type ByPort = HashMap<u16, (IpAddr, Option<u32>)>;

impl OwnConnects {
    /// Remembers the bound `local` (its IP may still be unspecified), made for
    /// `owner`, until the returned guard drops.
    pub fn track(&self, local: SocketAddr, owner: Option<u32>) -> ConnectGuard {
        let local = canonical(local);
        self.lock().insert(local.port(), (local.ip(), owner));
        ConnectGuard {
            set: self.clone(),
            port: local.port(),
        }
    }

    /// `Some(owner)` when `peer` is one of the relay's own outbound sockets.
    pub fn made_for(&self, peer: &SocketAddr) -> Option<Option<u32>> {
        let peer = canonical(*peer);
        let map = self.lock();
        let (ip, owner) = map.get(&peer.port())?;
        (ip.is_unspecified() || *ip == peer.ip()).then_some(*owner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ByPort> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a round-trip stream owned by `owner` (none: the relay's, root)
/// would reach a listener of `listener_uid`: the capture of a proxy's own
/// connection into its own port.
pub fn is_loop(owner: Option<u32>, listener_uid: Option<u32>) -> bool {
    listener_uid.is_some_and(|l| l == owner.unwrap_or(0))
}

/// Forgets one tracked connection when dropped.
#[derive(Debug)]
pub struct ConnectGuard {
    set: OwnConnects,
    port: u16,
}

impl Drop for ConnectGuard {
    fn drop(&mut self) {
        self.set.lock().remove(&self.port);
    }
}

/// A TCP socket owned by `owner` as `-m owner` sees it. xt_owner matches the
/// socket file's fsuid, taken at socket(); this thread's fsuid is switched for
/// that call only (setfsuid is per thread and needs CAP_SETUID). Without the
/// capability the socket stays root's, and the loop guard catches what that
/// breaks.
pub fn tcp_socket(v4: bool, owner: Option<u32>) -> std::io::Result<TcpSocket> {
    let new = || {
        if v4 {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
    };
    let Some(uid) = owner.filter(|&u| u != 0) else {
        return new();
    };
    let before = setfsuid(Uid::from_raw(uid));
    let sock = new();
    let during = setfsuid(before);
    if during.as_raw() != uid {
        tracing::warn!(
            uid,
            "cannot take the socket owner's fsuid: the socket is the relay's"
        );
    }
    sock
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_marks_keep_the_port_and_never_equal_the_relay_mark() {
        assert_eq!(deliver_mark(15001) & 0xffff, 15001);
        for port in [0, 1, 15001, u16::MAX] {
            assert_ne!(deliver_mark(port), super::super::egress::RELAY_MARK);
        }
    }

    #[test]
    fn own_connects_are_forgotten_when_their_guard_drops() {
        let sut = OwnConnects::default();
        let a: SocketAddr = "10.88.0.5:40000".parse().unwrap();
        let g = sut.track(a, Some(1337));
        assert_eq!(sut.made_for(&a), Some(Some(1337)));
        assert_eq!(
            sut.made_for(&"[::ffff:10.88.0.5]:40000".parse().unwrap()),
            Some(Some(1337))
        );
        assert_eq!(sut.made_for(&"10.88.0.6:40000".parse().unwrap()), None);
        drop(g);
        assert_eq!(sut.made_for(&a), None);
        // Bound to the wildcard: any local address of that port.
        let _g = sut.track("0.0.0.0:40001".parse().unwrap(), None);
        assert_eq!(
            sut.made_for(&"127.0.0.1:40001".parse().unwrap()),
            Some(None)
        );
    }

    #[test]
    fn a_loop_is_a_round_trip_into_a_listener_of_the_same_owner() {
        assert!(is_loop(Some(1337), Some(1337)));
        assert!(is_loop(None, Some(0)));
        assert!(!is_loop(Some(0), Some(1337)));
        assert!(!is_loop(Some(1337), None));
    }

    #[test]
    fn a_socket_made_for_an_owner_is_that_owners() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: needs root (CAP_SETUID) to take another fsuid");
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let sock = tcp_socket(true, Some(1337)).unwrap();
            let c = sock.connect(l.local_addr().unwrap()).await.unwrap();
            let mut diag = super::super::sock_diag::SockDiag::open().unwrap();
            let owner = diag
                .owner_of(c.local_addr().unwrap(), c.peer_addr().unwrap())
                .unwrap();
            assert_eq!(owner, Some(1337));
        });
        // The thread's own fsuid is back: a new file is root's.
        let f = tempfile_owner();
        assert_eq!(f, 0);
    }

    fn tempfile_owner() -> u32 {
        use std::os::unix::fs::MetadataExt;
        let path = std::env::temp_dir().join(format!("hp-capture-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let uid = std::fs::metadata(&path).unwrap().uid();
        let _ = std::fs::remove_file(&path);
        uid
    }
}
