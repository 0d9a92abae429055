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

use super::control::{Control, ListenerSpec};
use super::counters::{Counters, StatsSocket};
use super::error::{Error, Result};
use super::mirror::{MirrorView, Mirrors, OwnSockets};
use super::setup::Prepared;
use super::sock_diag::SockDiag;
use super::splice::{self, Resettable, SpliceEnd};
use super::{egress, udp};

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
            forward(ctx, tcp, dest).await
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
                    Ok(Control::Resync) => last_sent = None,
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
                    let _ = mux.send_control(Control::Resync.encode()).await;
                }
            }
        }
    }
    drop(mirrors);
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

/// A connection accepted on a mirror or captured egress: open a stream to the
/// peer half and relay.
async fn forward(ctx: Ctx, tcp: TcpStream, dest: SocketAddr) {
    let _ = splice::tune(&tcp);
    let d = match tcp.peer_addr() {
        Ok(src) => Destination::tcp(dest).with_src(src),
        Err(_) => Destination::tcp(dest),
    };
    match ctx.mux.open(d).await {
        Ok(stream) => run_splice(&ctx, tcp, stream).await,
        Err(e) => {
            tracing::debug!(%dest, error = %e, "opening stream failed");
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
                        tokio::spawn(forward(ctx.clone(), tcp, dest));
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
    if ctx.mirrors.covers(&addr) {
        // Our own mirror holds that address: the real listener is gone.
        tracing::debug!(%addr, "destination is a mirror of the peer, refusing");
        Counters::inc(&ctx.counters.connects_failed);
        stream.reset();
        return;
    }
    match dest.proto {
        Proto::Tcp => match connect_tcp(&ctx, addr).await {
            Ok(tcp) => {
                Counters::inc(&ctx.counters.connects_ok);
                run_splice(&ctx, tcp, stream).await;
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "connect failed");
                Counters::inc(&ctx.counters.connects_failed);
                stream.reset();
            }
        },
        Proto::Udp => match udp_socket(&ctx, addr).await {
            Ok(sock) => {
                if let Err(e) = udp::serve_remote(stream, sock, ctx.counters.clone()).await {
                    tracing::debug!(%addr, error = %e, "UDP flow ended");
                }
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "UDP socket failed");
                stream.reset();
            }
        },
    }
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

pub(super) async fn connect_tcp(ctx: &Ctx, addr: SocketAddr) -> Result<TcpStream> {
    let io = |e| Error::io(format!("connect {addr}"), e);
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(io)?;
    if ctx.mark {
        egress::mark_socket(&sock)?;
    }
    if let Some(src) = source_for(ctx, addr) {
        sock.bind(src).map_err(io)?;
    }
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr))
        .await
        .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
        .map_err(io)?;
    let _ = splice::tune(&tcp);
    Ok(tcp)
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
