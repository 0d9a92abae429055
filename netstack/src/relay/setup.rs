//! Relay setup that must happen while the process is single-threaded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use crate::{NotifyMode, RegionAddr, Side};

use super::egress::{EgressRules, UdpRedirect};
use super::error::{Error, Result};
use super::mirror::OwnSockets;

/// Everything the relay is told on its command line.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub side: Side,
    pub netns: Option<PathBuf>,
    pub region: RegionAddr,
    /// Rendezvous socket; default: the region file path + `.sock`.
    pub rendezvous: Option<PathBuf>,
    pub mode: NotifyMode,
    pub capture_egress: bool,
    pub pod_ip: Option<IpAddr>,
    pub stats_socket: Option<PathBuf>,
    /// UDP destinations (resolvers) whose datagrams are relayed to the peer half.
    pub udp_forward: Vec<SocketAddr>,
    pub poll_interval: Duration,
    /// Whether this side creates the region (default: the CPU side does).
    pub create: bool,
    /// The guest's (data, space) MSI-X eventfds for a `pci:<bdf>/<bar>@k/n` slot.
    pub irq_fds: Option<std::sync::Arc<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>>,
    /// Bounds on what the peer can make this relay hold (streams, queues).
    pub mux: crate::MuxConfig,
}

/// Sockets and rules made before the runtime; consumed by [`super::run`].
pub struct Prepared {
    pub cfg: RelayConfig,
    pub egress: Option<std::net::TcpListener>,
    pub udp: Vec<(std::net::UdpSocket, SocketAddr)>,
    pub rules: Option<EgressRules>,
    pub own: OwnSockets,
    /// Sockets the relay opens are marked so capture skips them.
    pub mark: bool,
}

/// Enters the netns, binds capture sockets, installs iptables rules and drops
/// capabilities. Call before any thread (tokio runtime) is started.
pub fn prepare(cfg: RelayConfig) -> Result<Prepared> {
    if let Some(ns) = &cfg.netns {
        super::netns::enter(ns)?;
    }
    let own = OwnSockets::default();
    let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let egress = if cfg.capture_egress {
        let l = std::net::TcpListener::bind(loopback)
            .map_err(|e| Error::io("bind egress listener", e))?;
        l.set_nonblocking(true)
            .map_err(|e| Error::io("egress listener", e))?;
        own.add(&l);
        Some(l)
    } else {
        None
    };
    let mut udp = Vec::new();
    let mut redirects = Vec::new();
    for dest in &cfg.udp_forward {
        let bind_to = if dest.ip().is_loopback() {
            *dest
        } else {
            loopback
        };
        let s = std::net::UdpSocket::bind(bind_to)
            .map_err(|e| Error::io(format!("bind UDP forward {dest}"), e))?;
        s.set_nonblocking(true)
            .map_err(|e| Error::io("UDP forward socket", e))?;
        if !dest.ip().is_loopback() {
            let SocketAddr::V4(d4) = dest else {
                return Err(Error::io(
                    format!("UDP forward {dest}"),
                    std::io::ErrorKind::Unsupported.into(),
                ));
            };
            let port = s
                .local_addr()
                .map_err(|e| Error::io("UDP forward socket", e))?
                .port();
            redirects.push(UdpRedirect {
                dest: SocketAddrV4::new(*d4.ip(), d4.port()),
                to_port: port,
            });
        }
        udp.push((s, *dest));
    }
    let needs_rules = egress.is_some() || !redirects.is_empty();
    let rules = if needs_rules {
        let port = match &egress {
            Some(l) => Some(
                l.local_addr()
                    .map_err(|e| Error::io("egress listener", e))?
                    .port(),
            ),
            None => None,
        };
        Some(EgressRules::install(port, &redirects)?)
    } else {
        None
    };
    // The CPU half re-makes the DPU half's egress and loads its nat rules.
    let cpu = cfg.side == Side::Cpu;
    super::caps::drop_all_but(&super::caps::needed(needs_rules || cpu, cpu))?;
    Ok(Prepared {
        cfg,
        egress,
        udp,
        rules,
        own,
        mark: needs_rules,
    })
}
