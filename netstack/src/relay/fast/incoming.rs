//! CPU relay: connections the DPU half makes to a listener of a preloaded
//! program of the CPU half, handed over to that program (see
//! [`crate::fastpath`] for the steps).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, UnixListener, UnixStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use super::{accept_loop, new_region, send_msg, within, Fast, HANDSHAKE_TIMEOUT};
use crate::fastpath::wire::{Reply, Request, REQUEST_LEN};
use crate::fastpath::MAX_CONNECTIONS;
use crate::relay::counters::Counters;
use crate::relay::error::{Error, Result};
use crate::relay::mirror::canonical;
use crate::relay::session::Ctx;

/// Registered listeners per Pod; further `Listen` requests are ignored (those
/// listeners then get their connections through the relay).
const MAX_LISTENERS: usize = 256;
/// How long an offer waits for the program to accept its carrier. A listener
/// whose process turns out not to claim (not preloaded) costs the connection
/// this delay, after which it goes through the relay.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);
/// Offers being set up at once.
const CONCURRENCY: usize = 64;

/// A connection waiting for its listener's program to claim it.
pub(super) struct Offer {
    /// The Unix connection to whoever opened it (the DPU relay's pump for a
    /// client of the DPU half, or a preloaded program of the CPU half): the
    /// claiming program's descriptor.
    pub(super) opener: UnixStream,
    /// Whether the opener is a program (then the two talk directly).
    pub(super) opener_is_program: bool,
    pub(super) region: OwnedFd,
    /// The listener's address, the client's (when known) and the carrier's.
    pub(super) dest: SocketAddr,
    pub(super) peer: Option<SocketAddr>,
    pub(super) carrier: SocketAddr,
    done: oneshot::Sender<bool>,
}

impl Offer {
    /// Tells the waiting task whether the program took the connection.
    pub(super) fn finish(self, claimed: bool) {
        let _ = self.done.send(claimed);
    }
}

#[derive(Default)]
struct Inner {
    listeners: HashMap<u64, SocketAddr>,
    next_id: u64,
    /// The accept socket's server, running while a listener is registered.
    server: Option<JoinHandle<()>>,
    /// Offers by their carrier's local address.
    offers: HashMap<SocketAddr, Offer>,
}

/// The CPU half's fast listeners and the offers waiting for them.
pub(super) struct Registry {
    /// The accept socket (bound while a listener is registered, so the DPU
    /// relay asks only when someone can say yes).
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl Registry {
    pub(super) fn new(path: PathBuf) -> Registry {
        Registry {
            path,
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a listener on `addr`; `None` when the registry is full or
    /// the accept socket cannot be bound.
    pub(super) fn register(&self, fast: &Arc<Fast>, addr: SocketAddr, ctx: &Ctx) -> Option<u64> {
        let mut inner = self.inner();
        if inner.listeners.len() >= MAX_LISTENERS {
            tracing::warn!(%addr, "{MAX_LISTENERS} fast listeners registered: this one uses the relay");
            return None;
        }
        // Only the CPU relay takes offers from its peer; the DPU relay offers
        // connects from the CPU half to its own listeners itself.
        if inner.server.is_none() && fast.side == crate::Side::Cpu {
            match self.bind() {
                Ok(l) => inner.server = Some(tokio::spawn(serve(l, ctx.clone(), fast.clone()))),
                Err(e) => {
                    tracing::warn!(error = %e, "fast accepts off: cannot bind the accept socket");
                    return None;
                }
            }
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.listeners.insert(id, addr);
        tracing::debug!(%addr, "fast listener registered");
        Some(id)
    }

    fn bind(&self) -> Result<UnixListener> {
        let _ = std::fs::remove_file(&self.path);
        let l = UnixListener::bind(&self.path).map_err(|e| Error::io("bind accept socket", e))?;
        // Only root (the DPU relay) may offer connections.
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("chmod accept socket", e))?;
        Ok(l)
    }

    pub(super) fn unregister(&self, id: u64) {
        let mut inner = self.inner();
        inner.listeners.remove(&id);
        if inner.listeners.is_empty() {
            if let Some(server) = inner.server.take() {
                server.abort();
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    /// Whether a registered listener takes connections to `dest`.
    pub(super) fn listening(&self, dest: SocketAddr) -> bool {
        self.inner()
            .listeners
            .values()
            .any(|a| a.port() == dest.port() && (a.ip().is_unspecified() || a.ip() == dest.ip()))
    }

    /// Files an offer; gives it back when too many wait.
    fn put(&self, carrier: SocketAddr, offer: Offer) -> std::result::Result<(), Box<Offer>> {
        let mut inner = self.inner();
        if inner.offers.len() >= MAX_CONNECTIONS {
            return Err(Box::new(offer));
        }
        inner.offers.insert(carrier, offer);
        Ok(())
    }

    /// Takes the offer whose carrier is `carrier` (each is taken once).
    pub(super) fn take(&self, carrier: SocketAddr) -> Option<Offer> {
        self.inner().offers.remove(&canonical(carrier))
    }
}

/// Serves the accept socket: one offer per connection from the DPU relay.
async fn serve(listener: UnixListener, ctx: Ctx, fast: Arc<Fast>) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    accept_loop(listener, "accept socket", Some(slots), |dpu, permit| {
        let (ctx, fast) = (ctx.clone(), fast.clone());
        async move {
            if let Err(e) = offer(&ctx, &fast, dpu).await {
                tracing::debug!(error = %e, "fast accept failed");
            }
            drop(permit);
        }
    })
    .await
}

async fn pass(dpu: &UnixStream) -> Result<()> {
    send_msg(dpu, &Reply::pass().encode(), &[], "fast-path accept").await
}

/// One connection of the DPU half (an `Incoming` on the accept socket).
async fn offer(ctx: &Ctx, fast: &Fast, mut dpu: UnixStream) -> Result<()> {
    let mut b = [0u8; REQUEST_LEN];
    within(
        HANDSHAKE_TIMEOUT,
        "fast-path incoming",
        dpu.read_exact(&mut b),
    )
    .await?;
    let Request::Incoming { dest, peer } = Request::decode(&b)? else {
        return Err(Error::FastPath("expected Incoming"));
    };
    let dest = canonical(dest);
    if !fast.registry.listening(dest) {
        return pass(&dpu).await;
    }
    let region = new_region()?;
    match hand_over(ctx, fast, dpu, false, region, dest, Some(peer)).await? {
        Some((dpu, _)) => pass(&dpu).await,
        None => Ok(()),
    }
}

/// Offers a connection to the program listening on `dest` through a
/// carrier connection, and waits until it claims it. Unclaimed, the opener's
/// Unix connection and the region come back.
pub(super) async fn hand_over(
    ctx: &Ctx,
    fast: &Fast,
    opener: UnixStream,
    opener_is_program: bool,
    region: OwnedFd,
    dest: SocketAddr,
    peer: Option<SocketAddr>,
) -> Result<Option<(UnixStream, OwnedFd)>> {
    let c = &ctx.counters;
    let io = |e| Error::io(format!("carrier to {dest}"), e);
    let sock = if dest.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(io)?;
    sock.bind(SocketAddr::new(dest.ip(), 0)).map_err(io)?;
    let carrier = canonical(sock.local_addr().map_err(io)?);
    let (done, claimed) = oneshot::channel();
    let o = Offer {
        opener,
        opener_is_program,
        region,
        dest,
        peer,
        carrier,
        done,
    };
    if let Err(o) = fast.registry.put(carrier, o) {
        Counters::inc(&c.fast_passed);
        return Ok(Some((o.opener, o.region)));
    }
    // The carrier lives until the program has claimed what it stands for;
    // then it goes with a reset (no TIME_WAIT left per connection).
    let claimed = match tokio::time::timeout(HANDSHAKE_TIMEOUT, sock.connect(dest)).await {
        Ok(Ok(tcp)) => {
            let r = tokio::time::timeout(CLAIM_TIMEOUT, claimed).await;
            let _ = tcp.set_zero_linger();
            matches!(r, Ok(Ok(true)))
        }
        _ => false,
    };
    if claimed {
        tracing::debug!(%dest, ?peer, "fast connection handed to its listener");
        return Ok(None);
    }
    // Not claimed: the relay carries this connection. A claim racing with
    // this finds nothing and the program keeps the (closed) carrier.
    match fast.registry.take(carrier) {
        Some(o) => {
            Counters::inc(&c.fast_passed);
            tracing::debug!(%dest, "fast offer not claimed: through the relay");
            Ok(Some((o.opener, o.region)))
        }
        None => Ok(None),
    }
}
