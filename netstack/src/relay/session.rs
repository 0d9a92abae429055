//! The running relay: link + mux, listener watcher, mirrors, connectors.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::{
    Destination, LinkBuilder, LinkSource, Mux, MuxEvent, MuxHandle, MuxStream, Proto, Side,
};

use super::capture::{self, Deliveries, OwnConnects};
use super::control::{Control, ListenerSpec};
use super::counters::{Counters, StatsSocket};
use super::error::{Error, Result};
use super::mirror::{MirrorView, Mirrors, OwnSockets};
use super::setup::Prepared;
use super::sock_diag::SockDiag;
use super::splice::{self, Resettable, SpliceEnd};
use super::{egress, pod_rules, udp};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Resettable for MuxStream {
    fn reset_stream(self) {
        self.reset();
    }

    fn poll_drain_into(
        &mut self,
        cx: &mut std::task::Context<'_>,
        w: &mut tokio::net::TcpStream,
    ) -> std::task::Poll<std::result::Result<usize, crate::mux::DrainError>> {
        MuxStream::poll_drain_into(self, cx, w)
    }
}

/// Shared state of the tasks of one relay.
#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) mux: MuxHandle,
    pub(super) counters: Arc<Counters>,
    pub(super) mirrors: MirrorView,
    pub(super) pod_ip: Option<IpAddr>,
    pub(super) mark: bool,
    /// The fast path's state (links with a rendezvous socket only).
    pub(super) fast: Option<Arc<super::fast::Fast>>,
    /// This relay's outbound connections, to refuse one that comes back.
    pub(super) own_connects: OwnConnects,
    /// Delivery rules for captured connections (the half with the sidecar).
    pub(super) deliveries: Arc<Deliveries>,
}

/// Runs the relay until `shutdown` completes.
pub async fn run(p: Prepared, shutdown: impl Future<Output = ()>) -> Result<()> {
    let cfg = p.cfg.clone();
    let mut builder = LinkBuilder::new(cfg.region.clone())
        .side(cfg.side)
        .notify(cfg.mode);
    if let Some(r) = &cfg.rendezvous {
        builder = builder.rendezvous(r.clone());
    }
    if let Some(fds) = &cfg.irq_fds {
        let dup =
            |f: &std::os::fd::OwnedFd| f.try_clone().map_err(|e| Error::io("dup --irq-fds", e));
        builder = builder.irq_fds(dup(&fds.0)?, dup(&fds.1)?);
    }
    // Fast connections meet beside the rendezvous socket (none for slot links).
    let fast = builder
        .socket_path()
        .ok()
        .map(|p| super::fast::Fast::new(cfg.side, &p));
    // The creator accepts the peer again after it restarts; the opener reconnects by itself.
    let source: LinkSource = if cfg.create {
        builder.bind().await?.into()
    } else {
        builder.into()
    };
    let (mux, mut events) = Mux::start_with(source, cfg.mux);
    let counters = Arc::new(Counters::default());

    let own: OwnSockets = p.own.clone();
    let view = MirrorView::default();
    let ctx = Ctx {
        mux: mux.clone(),
        counters: counters.clone(),
        mirrors: view.clone(),
        pod_ip: cfg.pod_ip,
        mark: p.mark,
        fast: fast.clone(),
        own_connects: OwnConnects::default(),
        deliveries: Arc::new(Deliveries::default()),
    };
    let accept_ctx = ctx.clone();
    let dpu_side = cfg.side == Side::Dpu;
    let on_accept: super::mirror::OnAccept = Arc::new(move |tcp, dest| {
        let ctx = accept_ctx.clone();
        tokio::spawn(async move {
            // A CPU program listening with the library takes it over the ring.
            let tcp = match &ctx.fast {
                Some(f) if dpu_side => {
                    match super::fast::offer_incoming(&ctx, f, tcp, dest).await {
                        Some(tcp) => tcp,
                        None => return,
                    }
                }
                _ => tcp,
            };
            forward_accepted(ctx, tcp, dest).await
        });
    });
    let mut mirrors = Mirrors::new(own.clone(), on_accept, counters.clone(), view);

    if let Some(l) = p.egress {
        let l =
            tokio::net::TcpListener::from_std(l).map_err(|e| Error::io("egress listener", e))?;
        tokio::spawn(egress_loop(ctx.clone(), l));
    }
    for (sock, dest) in p.udp {
        let sock = UdpSocket::from_std(sock).map_err(|e| Error::io("UDP forward", e))?;
        let m = mux.clone();
        let open: udp::OpenFlow<MuxStream> = Arc::new(move || {
            let m = m.clone();
            Box::pin(async move { Ok(m.open(Destination::udp(dest)).await?) })
        });
        tokio::spawn(udp::serve_local(sock, open, counters.clone()));
    }

    let _fast = fast.as_ref().and_then(|f| super::fast::start(f, &ctx));

    // The Pod's own nat rules: sent by the DPU half, loaded by the CPU half.
    let rules_resend = Arc::new(tokio::sync::Notify::new());
    let carried = Arc::new(std::sync::Mutex::new(pod_rules::Carried::default()));
    let (rules_tx, rules_rx) = tokio::sync::watch::channel(None::<Vec<String>>);
    let rules_task = if dpu_side && p.mark {
        tokio::spawn(pod_rules::send(mux.clone(), rules_resend.clone()))
    } else {
        tokio::spawn(pod_rules::load(rules_rx, carried.clone(), counters.clone()))
    };

    let snap_c = counters.clone();
    let snap_m = mux.clone();
    let snapshot: super::counters::Snapshot = Arc::new(
        move || json!({ "relay": snap_c.to_json(), "mux": serde_json::to_value(snap_m.stats()).unwrap_or_default() }),
    );
    let _stats = match &cfg.stats_socket {
        Some(path) => Some(StatsSocket::bind(path, snapshot.clone())?),
        None => None,
    };
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .map_err(|e| Error::io("SIGUSR1 handler", e))?;

    let mut diag = SockDiag::open()?;
    let mut tick = tokio::time::interval(cfg.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sent: Option<BTreeSet<ListenerSpec>> = None;
    tokio::pin!(shutdown);
    tracing::info!(side = ?cfg.side, "relay running");
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = usr1.recv() => tracing::info!(stats = %snapshot(), "counters"),
            _ = tick.tick() => {
                mirrors.retry();
                match local_listeners(&mut diag, &own) {
                    Ok(now) if last_sent.as_ref() != Some(&now) => {
                        let msg = Control::Listeners { set: now.iter().cloned().collect() };
                        if mux.send_control(msg.encode()).await.is_ok() {
                            last_sent = Some(now);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "listing listeners failed"),
                }
            }
            ev = events.next() => match ev {
                None => {
                    tracing::error!("mux ended");
                    break;
                }
                Some(MuxEvent::Control(bytes)) => match Control::decode(&bytes) {
                    Ok(Control::Listeners { set }) => mirrors.apply(&set),
                    Ok(Control::Resync) => {
                        last_sent = None;
                        rules_resend.notify_one();
                    }
                    Ok(Control::PodRules { rules }) if !dpu_side => {
                        let _ = rules_tx.send(Some(rules));
                    }
                    Ok(Control::PodRules { .. }) => {
                        Counters::inc(&counters.control_errors);
                        tracing::warn!("the CPU half sent nat rules; only the DPU half's are carried");
                    }
                    Err(e) => {
                        Counters::inc(&counters.control_errors);
                        tracing::warn!(error = %e, "ignoring control message");
                    }
                },
                Some(MuxEvent::Stream(stream, dest)) => {
                    tokio::spawn(connect_out(ctx.clone(), stream, dest));
                }
                Some(MuxEvent::PeerGone) => {
                    Counters::inc(&counters.peer_gone);
                    tracing::warn!("peer relay gone: streams reset, dropping its mirrors");
                    mirrors.clear();
                    last_sent = None;
                }
                Some(MuxEvent::PeerUp) => {
                    tracing::info!("peer relay up: mirroring again");
                    last_sent = None;
                    rules_resend.notify_one();
                    let _ = mux.send_control(Control::Resync.encode()).await;
                }
            }
        }
    }
    drop(mirrors);
    rules_task.abort();
    let _ = rules_task.await;
    // Removes the carried rules (Drop), like the egress rules below.
    drop(std::mem::take(
        &mut *carried.lock().unwrap_or_else(|e| e.into_inner()),
    ));
    drop(p.rules);
    Ok(())
}

fn local_listeners(diag: &mut SockDiag, own: &OwnSockets) -> Result<BTreeSet<ListenerSpec>> {
    Ok(diag
        .tcp_listeners()?
        .into_iter()
        .filter(|s| !own.contains(s.inode))
        .map(|s| ListenerSpec {
            addr: s.addr,
            v6only: s.v6only,
        })
        .collect())
}

/// A connection accepted on a mirror. One that the Pod's own rules
/// redirected there carries its original destination; one from this relay's
/// own outbound sockets went round the relay pair and says so (and for whom
/// it was made), for the peer to refuse a loop.
async fn forward_accepted(ctx: Ctx, tcp: TcpStream, dest: SocketAddr) {
    let peer = tcp.peer_addr().ok();
    let mut d = Destination::tcp(dest);
    if let Some(p) = peer {
        d = d.with_src(p);
        if let Some(owner) = ctx.own_connects.made_for(&p) {
            d = d.with_round_trip();
            if let Some(uid) = owner {
                d = d.with_owner(uid);
            }
        }
    }
    if let Ok(orig) = egress::original_dst(&tcp) {
        let orig = super::mirror::canonical(orig);
        if orig != dest {
            Counters::inc(&ctx.counters.captured);
            d = d.with_orig(orig);
        }
    }
    forward(ctx, tcp, d).await
}

/// A connection of this half captured by the relay's own egress rule: the
/// peer re-makes it with the same owner, so the Pod's owner rules hold.
async fn forward_egress(ctx: Ctx, tcp: TcpStream, dest: SocketAddr) {
    let mut d = Destination::tcp(dest);
    if let Ok(src) = tcp.peer_addr() {
        d = d.with_src(src);
        match super::sock_diag::SockDiag::open().and_then(|mut s| s.owner_of(src, dest)) {
            Ok(Some(uid)) => d = d.with_owner(uid),
            Ok(None) => tracing::debug!(%src, %dest, "captured socket not found"),
            Err(e) => tracing::debug!(error = %e, "owner of a captured socket"),
        }
    }
    forward(ctx, tcp, d).await
}

/// Opens a stream to the peer half for `tcp` and relays.
async fn forward(ctx: Ctx, tcp: TcpStream, d: Destination) {
    let _ = splice::tune(&tcp);
    match ctx.mux.open(d).await {
        Ok(stream) => run_splice(&ctx, tcp, stream).await,
        Err(e) => {
            tracing::debug!(dest = %d.addr, error = %e, "opening stream failed");
            splice::reset_tcp(tcp);
        }
    }
}

async fn run_splice(ctx: &Ctx, tcp: TcpStream, stream: MuxStream) {
    let c = &ctx.counters;
    Counters::inc(&c.splices_active);
    let (end, moved) =
        splice::splice(tcp, stream, &c.bytes_tcp_to_stream, &c.bytes_stream_to_tcp).await;
    Counters::dec(&c.splices_active);
    if end != SpliceEnd::Closed {
        Counters::inc(&c.splices_reset);
    }
    tracing::debug!(
        ?end,
        up = moved.to_stream,
        down = moved.to_tcp,
        "connection ended"
    );
}

async fn egress_loop(ctx: Ctx, l: tokio::net::TcpListener) {
    loop {
        match l.accept().await {
            Ok((tcp, _)) => {
                Counters::inc(&ctx.counters.egress_accepts);
                match egress::original_dst(&tcp) {
                    Ok(dest) => {
                        tokio::spawn(forward_egress(ctx.clone(), tcp, dest));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "captured connection without original destination");
                        splice::reset_tcp(tcp);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "egress accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A stream from the peer: connect to its destination in this half.
async fn connect_out(ctx: Ctx, stream: MuxStream, dest: Destination) {
    let addr = dest.addr;
    if ctx.mirrors.covers(&addr, ctx.pod_ip) {
        // Our own mirror holds that address: the real listener is gone.
        tracing::debug!(%addr, "destination is a mirror of the peer, refusing");
        Counters::inc(&ctx.counters.connects_failed);
        stream.reset();
        return;
    }
    let connected = match (dest.proto, dest.orig) {
        (Proto::Tcp, Some(orig)) => deliver(&ctx, addr, orig, &dest).await,
        (Proto::Tcp, None) => connect_owned(&ctx, addr, dest.owner).await,
        (Proto::Udp, _) => return connect_udp(ctx, stream, addr).await,
    };
    match connected {
        Ok((tcp, _own)) => {
            Counters::inc(&ctx.counters.connects_ok);
            run_splice(&ctx, tcp, stream).await;
        }
        Err(e) => {
            tracing::debug!(%addr, orig = ?dest.orig, error = %e, "connect failed");
            Counters::inc(&ctx.counters.connects_failed);
            stream.reset();
        }
    }
}

async fn connect_udp(ctx: Ctx, stream: MuxStream, addr: SocketAddr) {
    match udp_socket(&ctx, addr).await {
        Ok(sock) => {
            if let Err(e) = udp::serve_remote(stream, sock, ctx.counters.clone()).await {
                tracing::debug!(%addr, error = %e, "UDP flow ended");
            }
        }
        Err(e) => {
            tracing::debug!(%addr, error = %e, "UDP socket failed");
            stream.reset();
        }
    }
}

/// A captured connection for local listener `to` (the sidecar's capture
/// port): connect to its original destination, marked so that the delivery
/// rule redirects it to `to`.
async fn deliver(
    ctx: &Ctx,
    to: SocketAddr,
    orig: SocketAddr,
    dest: &Destination,
) -> Result<(TcpStream, capture::ConnectGuard)> {
    if dest.round_trip {
        let port = to.port();
        let listener = super::sock_diag::SockDiag::open()
            .and_then(|mut d| d.tcp_listeners())
            .map(|set| {
                set.into_iter()
                    .find(|l| l.addr.port() == port)
                    .map(|l| l.uid)
            })?;
        if capture::is_loop(dest.owner, listener) {
            Counters::inc(&ctx.counters.loops_refused);
            tracing::error!(
                %orig,
                port,
                owner = dest.owner.unwrap_or(0),
                "the Pod's rules capture this port's own connections back to it (no owner \
                 exclusion for it): refusing the loop"
            );
            return Err(Error::Limit(
                "a connection captured back to its own listener",
            ));
        }
    }
    ctx.deliveries.ensure(to.port()).await?;
    Counters::inc(&ctx.counters.captured);
    let io = |e| Error::io(format!("deliver {orig} to port {}", to.port()), e);
    let sock = capture::tcp_socket(orig.is_ipv4(), None).map_err(io)?;
    egress::set_mark(&sock, capture::deliver_mark(to.port()))?;
    connect_sock(ctx, sock, orig, None).await
}

async fn connect_owned(
    ctx: &Ctx,
    addr: SocketAddr,
    owner: Option<u32>,
) -> Result<(TcpStream, capture::ConnectGuard)> {
    let sock = capture::tcp_socket(addr.is_ipv4(), owner)
        .map_err(|e| Error::io(format!("connect {addr}"), e))?;
    if ctx.mark {
        egress::mark_socket(&sock)?;
    }
    connect_sock(ctx, sock, addr, owner).await
}

/// Binds the Pod IP for non-local destinations, connects with a timeout and
/// tracks the connection as the relay's own while it lives.
async fn connect_sock(
    ctx: &Ctx,
    sock: TcpSocket,
    addr: SocketAddr,
    owner: Option<u32>,
) -> Result<(TcpStream, capture::ConnectGuard)> {
    let io = |e| Error::io(format!("connect {addr}"), e);
    // Bound first, so the port is known (and tracked) before the SYN leaves.
    let src = source_for(ctx, addr).unwrap_or_else(|| match addr {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    });
    sock.bind(src).map_err(io)?;
    let guard = ctx
        .own_connects
        .track(sock.local_addr().map_err(io)?, owner);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr))
        .await
        .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
        .map_err(io)?;
    let _ = splice::tune(&tcp);
    Ok((tcp, guard))
}

/// Local address for an outbound socket: the Pod IP for non-local destinations.
fn source_for(ctx: &Ctx, addr: SocketAddr) -> Option<SocketAddr> {
    match ctx.pod_ip {
        Some(ip) if !addr.ip().is_loopback() && ip.is_ipv4() == addr.is_ipv4() => {
            Some(SocketAddr::new(ip, 0))
        }
        _ => None,
    }
}

/// An outbound connection for the fast path's server side.
pub(super) async fn connect_tcp(ctx: &Ctx, addr: SocketAddr) -> Result<TcpStream> {
    // The fast path hands the socket over; it is not a relay splice to track.
    connect_owned(ctx, addr, None).await.map(|(tcp, _)| tcp)
}

async fn udp_socket(ctx: &Ctx, addr: SocketAddr) -> Result<UdpSocket> {
    let io = |e| Error::io(format!("UDP to {addr}"), e);
    let local = source_for(ctx, addr).unwrap_or(match addr {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap_or(addr),
        SocketAddr::V6(_) => "[::]:0".parse().unwrap_or(addr),
    });
    let sock = UdpSocket::bind(local).await.map_err(io)?;
    if ctx.mark {
        egress::mark_socket(&sock)?;
    }
    sock.connect(addr).await.map_err(io)?;
    Ok(sock)
}

/// Which side creates the region unless told otherwise.
pub fn default_create(side: Side) -> bool {
    matches!(side, Side::Cpu)
}
