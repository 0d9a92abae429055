//! Mirror listeners: the peer half's listening sockets, bound again in this half.
//!
//! Binding the same address and port here makes a later bind of that port by an
//! application of this half fail with EADDRINUSE, as in one netns, and lands
//! connects in the relay, which forwards them to the peer half.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use super::control::ListenerSpec;
use super::counters::Counters;
use super::error::{Error, Result};

/// Inodes of listening sockets the relay itself owns, so the listener watcher
/// never reports them back to the peer (which would mirror its own mirrors).
#[derive(Debug, Clone, Default)]
pub struct OwnSockets(Arc<Mutex<HashSet<u64>>>);

impl OwnSockets {
    pub fn add<F: AsFd>(&self, sock: &F) -> Option<u64> {
        let ino = nix::sys::stat::fstat(sock.as_fd()).ok()?.st_ino;
        self.lock().insert(ino);
        Some(ino)
    }

    pub fn remove(&self, ino: u64) {
        self.lock().remove(&ino);
    }

    pub fn contains(&self, ino: u64) -> bool {
        self.lock().contains(&ino)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Called for every connection accepted on a mirror, with its original
/// destination (the local address it was accepted on).
pub type OnAccept = Arc<dyn Fn(TcpStream, SocketAddr) + Send + Sync>;

struct Active {
    task: JoinHandle<()>,
    inode: Option<u64>,
}

/// The set of mirror listeners of this half.
pub struct Mirrors {
    active: BTreeMap<ListenerSpec, Active>,
    /// Wanted but not bound yet (address busy or not yet configured); retried.
    pending: BTreeSet<ListenerSpec>,
    bound: MirrorView,
    own: OwnSockets,
    on_accept: OnAccept,
    counters: Arc<Counters>,
}

impl Mirrors {
    pub fn new(
        own: OwnSockets,
        on_accept: OnAccept,
        counters: Arc<Counters>,
        bound: MirrorView,
    ) -> Self {
        Self {
            active: BTreeMap::new(),
            pending: BTreeSet::new(),
            bound,
            own,
            on_accept,
            counters,
        }
    }

    /// Converges the mirrors to exactly `want`.
    pub fn apply(&mut self, want: &[ListenerSpec]) {
        let want: BTreeSet<ListenerSpec> = want.iter().cloned().collect();
        let gone: Vec<ListenerSpec> = self
            .active
            .keys()
            .filter(|k| !want.contains(k))
            .cloned()
            .collect();
        for spec in gone {
            self.close(&spec);
        }
        self.pending.retain(|s| want.contains(s));
        for spec in want {
            if !self.active.contains_key(&spec) {
                self.pending.insert(spec);
            }
        }
        self.retry();
    }

    /// Tries to bind the pending mirrors again.
    pub fn retry(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for spec in pending {
            match self.open(&spec) {
                Ok(a) => {
                    tracing::info!(addr = %spec.addr, "mirroring peer listener");
                    self.active.insert(spec, a);
                }
                Err(e) => {
                    tracing::debug!(addr = %spec.addr, error = %e, "mirror not bound yet");
                    self.pending.insert(spec);
                }
            }
        }
        self.publish();
    }

    /// Drops every mirror (the peer is gone).
    pub fn clear(&mut self) {
        let all: Vec<ListenerSpec> = self.active.keys().cloned().collect();
        for spec in all {
            self.close(&spec);
        }
        self.pending.clear();
        self.publish();
    }

    fn close(&mut self, spec: &ListenerSpec) {
        if let Some(a) = self.active.remove(spec) {
            tracing::info!(addr = %spec.addr, "peer listener gone, closing mirror");
            a.task.abort();
            if let Some(ino) = a.inode {
                self.own.remove(ino);
            }
            Counters::dec(&self.counters.mirrors_active);
        }
    }

    fn publish(&self) {
        let mut b = self.bound.0.lock().unwrap_or_else(|e| e.into_inner());
        *b = self.active.keys().map(|s| s.addr).collect();
    }

    fn open(&self, spec: &ListenerSpec) -> Result<Active> {
        let (listener, inode) = bind_listener(spec, &self.own)?;
        let on_accept = self.on_accept.clone();
        let counters = self.counters.clone();
        Counters::inc(&self.counters.mirrors_active);
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, _peer)) => {
                        Counters::inc(&counters.mirror_accepts);
                        match tcp.local_addr() {
                            Ok(dest) => on_accept(tcp, canonical(dest)),
                            Err(e) => {
                                tracing::warn!(error = %e, "accepted socket without local address")
                            }
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept on mirror failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(Active { task, inode })
    }
}

impl Drop for Mirrors {
    fn drop(&mut self) {
        for a in self.active.values() {
            a.task.abort();
        }
    }
}

/// Which addresses this half's mirrors hold.
#[derive(Clone, Default)]
pub struct MirrorView(Arc<Mutex<BTreeSet<SocketAddr>>>);

impl MirrorView {
    /// True when a connect to `dest` in this half would land on one of our own
    /// mirrors (forwarding it would loop between the relays). Only a local
    /// destination (loopback, the Pod IP, the unspecified address) can: a
    /// wildcard mirror of port 8080 does not cover another host's port 8080.
    pub fn covers(&self, dest: &SocketAddr, pod_ip: Option<IpAddr>) -> bool {
        let dest = canonical(*dest);
        let ip = dest.ip();
        let local = ip.is_loopback() || ip.is_unspecified() || Some(ip) == pod_ip;
        let b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        b.iter().any(|m| {
            m.port() == dest.port() && (m.ip() == ip || (m.ip().is_unspecified() && local))
        })
    }
}

/// IPv4-mapped IPv6 addresses become plain IPv4 so the peer connects with v4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// Binds a listening socket like the application's one: same address, port,
/// v6only; SO_REUSEADDR so TIME_WAIT leftovers of a previous relay don't block it.
pub fn bind_listener(spec: &ListenerSpec, own: &OwnSockets) -> Result<(TcpListener, Option<u64>)> {
    let io = |what: &str, e| Error::io(format!("{what} mirror {}", spec.addr), e);
    let sock = match spec.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| io("socket", e))?;
    let inode = own.add(&sock);
    let res = (|| {
        if spec.addr.is_ipv6() {
            setsockopt(&sock, sockopt::Ipv6V6Only, &spec.v6only).map_err(|source| {
                Error::SockOpt {
                    context: "IPV6_V6ONLY",
                    source,
                }
            })?;
        }
        sock.set_reuseaddr(true)
            .map_err(|e| io("SO_REUSEADDR", e))?;
        sock.bind(spec.addr).map_err(|e| io("bind", e))?;
        sock.listen(1024).map_err(|e| io("listen", e))
    })();
    match res {
        Ok(l) => Ok((l, inode)),
        Err(e) => {
            if let Some(ino) = inode {
                own.remove(ino);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_mirror_covers_local_destinations_only() {
        let sut = MirrorView::default();
        sut.0
            .lock()
            .unwrap()
            .insert("0.0.0.0:8080".parse().unwrap());
        let pod_ip: IpAddr = "10.77.0.5".parse().unwrap();
        for local in [
            "127.0.0.1:8080",
            "10.77.0.5:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert!(sut.covers(&local.parse().unwrap(), Some(pod_ip)), "{local}");
        }
        for remote in ["10.77.0.6:8080", "127.0.0.1:8081"] {
            assert!(
                !sut.covers(&remote.parse().unwrap(), Some(pod_ip)),
                "{remote}"
            );
        }
    }
}
