//! DPU relay: each fast connection joined to a real TCP connection in this
//! half, whether a program of the CPU half connected (through the fast
//! socket) or this half connected to a CPU program's fast listener.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::OwnedSemaphorePermit;

use super::incoming;
use super::pump::Pump;
use super::{accept_loop, errno_of, recv_msg, within, Fast, HANDSHAKE_TIMEOUT};
use crate::fastpath::wire::{Outcome, Reply, Request, Role, REPLY_LEN, REQUEST_LEN};
use crate::fastpath::MAX_CONNECTIONS;
use crate::relay::counters::Counters;
use crate::relay::error::{Error, Result};
use crate::relay::mirror::canonical;
use crate::relay::session::{connect_tcp, Ctx};
use crate::shm::{Region, RegionAddr};

/// The CPU relay needs up to its connect (5 s) and the program's claim (5 s).
const INCOMING_TIMEOUT: Duration = Duration::from_secs(12);

/// Serves connects offered through the fast socket until the relay stops
/// (their pumps are bounded by the relay's slots).
pub(super) async fn run(listener: UnixListener, ctx: Ctx, fast: Arc<Fast>) {
    accept_loop(listener, "fast socket", None, |conn, _| {
        let (ctx, fast) = (ctx.clone(), fast.clone());
        async move {
            if let Err(e) = connect(&ctx, &fast, conn).await {
                tracing::debug!(error = %e, "fast connection ended with an error");
            }
        }
    })
    .await
}

fn invalid(context: &'static str) -> Error {
    Error::io(context, std::io::ErrorKind::InvalidData.into())
}

/// A program of the CPU half connects: connect to the listener here.
async fn connect(ctx: &Ctx, fast: &Fast, mut conn: UnixStream) -> Result<()> {
    let mut b = [0u8; REQUEST_LEN];
    let fds = recv_msg(&conn, &mut b, HANDSHAKE_TIMEOUT, "fast-path offer").await?;
    let Request::Connect { dest } = Request::decode(&b)? else {
        return Err(Error::FastPath("expected Connect"));
    };
    let Ok::<[OwnedFd; 1], _>([region]) = fds.try_into() else {
        return Err(invalid("fast-path offer"));
    };
    let c = &ctx.counters;
    let Ok(permit) = fast.slots.clone().try_acquire_owned() else {
        tracing::warn!("{MAX_CONNECTIONS} fast connections open: further ones use the relay");
        return answer(&mut conn, Reply::pass()).await;
    };
    let dest = canonical(dest);
    if ctx.mirrors.covers(&dest, ctx.pod_ip) {
        // Our own mirror: the real listener is in the other half, or gone.
        Counters::inc(&c.fast_failed);
        return answer(&mut conn, Reply::failed(libc::ECONNREFUSED)).await;
    }
    let (mut conn, mut region) = (conn, region);
    if fast.registry.listening(dest) {
        // A program here listens with the library: the two programs talk
        // directly, this relay only introduces them.
        let offered = incoming::hand_over(ctx, fast, conn, true, region, dest, None).await?;
        match offered {
            None => return Ok(()),
            Some((c, r)) => (conn, region) = (c, r),
        }
    }
    let tcp = match connect_tcp(ctx, dest).await {
        Ok(t) => t,
        Err(e) => {
            Counters::inc(&c.fast_failed);
            return answer(&mut conn, Reply::failed(errno_of(&e))).await;
        }
    };
    let reply = Reply {
        outcome: Outcome::Connected,
        local: tcp.local_addr().ok(),
        peer: None,
        role: Role::default(),
    };
    answer(&mut conn, reply).await?;
    Counters::inc(&c.fast_connects);
    pump(ctx, conn, tcp, region, dest, permit).await
}

async fn answer(conn: &mut UnixStream, r: Reply) -> Result<()> {
    within(
        HANDSHAKE_TIMEOUT,
        "fast-path answer",
        conn.write_all(&r.encode()),
    )
    .await
}

/// A mirror here accepted `tcp` for `dest`: if a program of the CPU half
/// listens there with the library, it takes the connection over the ring.
/// Gives `tcp` back when not (the caller relays it as any other).
pub(crate) async fn offer_incoming(
    ctx: &Ctx,
    fast: &Fast,
    tcp: TcpStream,
    dest: SocketAddr,
) -> Option<TcpStream> {
    // No accept socket: no CPU program listens with the library.
    let Ok(conn) = UnixStream::connect(&fast.cpu_socket).await else {
        return Some(tcp);
    };
    let Ok(permit) = fast.slots.clone().try_acquire_owned() else {
        return Some(tcp);
    };
    let Ok(peer) = tcp.peer_addr() else {
        return Some(tcp);
    };
    match ask_cpu(conn, dest, peer).await {
        Ok(Some((conn, region))) => {
            if let Err(e) = pump(ctx, conn, tcp, region, dest, permit).await {
                tracing::debug!(%dest, error = %e, "fast accepted connection failed");
            }
            None
        }
        Ok(None) => Some(tcp),
        Err(e) => {
            tracing::debug!(%dest, error = %e, "fast accept unavailable, using the relay");
            Some(tcp)
        }
    }
}

async fn ask_cpu(
    mut conn: UnixStream,
    dest: SocketAddr,
    peer: SocketAddr,
) -> Result<Option<(UnixStream, OwnedFd)>> {
    let msg = Request::Incoming { dest, peer }.encode();
    within(
        HANDSHAKE_TIMEOUT,
        "fast-path incoming",
        conn.write_all(&msg),
    )
    .await?;
    let mut b = [0u8; REPLY_LEN];
    let fds = recv_msg(&conn, &mut b, INCOMING_TIMEOUT, "fast-path accept").await?;
    match Reply::decode(&b)?.outcome {
        Outcome::Connected => match <[OwnedFd; 1]>::try_from(fds) {
            Ok([region]) => Ok(Some((conn, region))),
            Err(_) => Err(invalid("fast-path accept")),
        },
        _ => Ok(None),
    }
}

/// Runs one fast connection until it ends: ring 0 carries the program's
/// bytes to `tcp`, ring 1 the reverse.
async fn pump(
    ctx: &Ctx,
    conn: UnixStream,
    tcp: TcpStream,
    region: OwnedFd,
    dest: SocketAddr,
    _permit: OwnedSemaphorePermit,
) -> Result<()> {
    let c = &ctx.counters;
    let region = Arc::new(Region::from_fd(RegionAddr::Memfd, region)?);
    let taken = || Error::io("fast-path ring", std::io::ErrorKind::AlreadyExists.into());
    let rx = region.ring(0)?.acquire_consumer().ok_or_else(taken)?;
    let tx = region.ring(1)?.acquire_producer().ok_or_else(taken)?;
    Counters::inc(&c.fast_active);
    let end = Pump::new(conn, tcp, rx, tx).run(c).await;
    Counters::dec(&c.fast_active);
    match end {
        Ok(()) => tracing::debug!(%dest, "fast connection closed"),
        Err(e) => {
            Counters::inc(&c.fast_reset);
            tracing::debug!(%dest, error = %e, "fast connection reset");
        }
    }
    Ok(())
}
