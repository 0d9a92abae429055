//! CPU relay: the broker the Pod's preloaded programs ask, on an abstract
//! Unix socket in the Pod's network namespace.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::{accept_loop, new_region, recv_msg, send_msg, within, Fast, HANDSHAKE_TIMEOUT};
use crate::fastpath::wire::{Outcome, Reply, Request, Role, REPLY_LEN, REQUEST_LEN};
use crate::relay::counters::Counters;
use crate::relay::error::{Error, Result};
use crate::relay::mirror::canonical;
use crate::relay::session::Ctx;
use crate::Side;

/// The broker waits this long for the DPU relay's connect (its own is bounded at 10 s).
const OFFER_TIMEOUT: Duration = Duration::from_secs(12);
/// Requests the broker serves at once; more wait (a Pod cannot pile up tasks).
const BROKER_CONCURRENCY: usize = 64;

/// Answers programs' requests until the relay stops.
pub(super) async fn run(listener: UnixListener, ctx: Ctx, fast: Arc<Fast>) {
    let slots = Arc::new(Semaphore::new(BROKER_CONCURRENCY));
    accept_loop(listener, "fast-path broker", Some(slots), |conn, permit| {
        let (ctx, fast) = (ctx.clone(), fast.clone());
        async move {
            let held = one(&ctx, &fast, conn).await;
            drop(permit);
            match held {
                // A registration lasts as long as the program keeps its socket,
                // outside the handshake budget.
                Ok(Some((conn, id))) => {
                    wait_closed(conn).await;
                    fast.registry.unregister(id);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "fast-path request failed"),
            }
        }
    })
    .await
}

/// Serves one request; a registered listener comes back with its socket.
async fn one(
    ctx: &Ctx,
    fast: &Arc<Fast>,
    mut app: UnixStream,
) -> Result<Option<(UnixStream, u64)>> {
    let mut b = [0u8; REQUEST_LEN];
    within(
        HANDSHAKE_TIMEOUT,
        "fast-path request",
        app.read_exact(&mut b),
    )
    .await?;
    match Request::decode(&b)? {
        Request::Connect { dest } if fast.side == Side::Cpu => {
            connect(ctx, fast, &app, canonical(dest)).await?
        }
        // A DPU program's connects go through the relay (not on the fast path yet).
        Request::Connect { .. } => {
            Counters::inc(&ctx.counters.fast_passed);
            reply(&app, Reply::pass(), &[]).await?
        }
        Request::Listen { addr } => {
            return Ok(fast
                .registry
                .register(fast, canonical(addr), ctx)
                .map(|id| (app, id)))
        }
        Request::Claim { carrier } => claim(ctx, fast, &app, carrier).await?,
        Request::Incoming { .. } => return Err(Error::FastPath("Incoming sent to the broker")),
    }
    Ok(None)
}

async fn wait_closed(mut conn: UnixStream) {
    let mut b = [0u8; 64];
    while let Ok(n) = conn.read(&mut b).await {
        if n == 0 {
            return;
        }
    }
}

async fn reply(app: &UnixStream, r: Reply, fds: &[i32]) -> Result<()> {
    send_msg(app, &r.encode(), fds, "fast-path reply").await
}

/// A program connects to `dest`: a fast connection when a listener of the
/// other half has it.
async fn connect(ctx: &Ctx, fast: &Fast, app: &UnixStream, dest: SocketAddr) -> Result<()> {
    let c = &ctx.counters;
    if !ctx.mirrors.covers(&dest, ctx.pod_ip) {
        Counters::inc(&c.fast_passed);
        return reply(app, Reply::pass(), &[]).await;
    }
    let (answer, fds) = match offer(dest, &fast.dpu_socket).await {
        Ok(v) => v,
        Err(e) => {
            // The program falls back to the kernel, i.e. the relay's mirror.
            tracing::warn!(%dest, error = %e, "fast path unavailable, program uses the relay");
            Counters::inc(&c.fast_passed);
            return reply(app, Reply::pass(), &[]).await;
        }
    };
    match answer.outcome {
        Outcome::Connected => Counters::inc(&c.fast_connects),
        Outcome::Pass => Counters::inc(&c.fast_passed),
        Outcome::Failed(_) => Counters::inc(&c.fast_failed),
    }
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    reply(app, answer, &raw).await
}

/// Makes the connection's region and asks the DPU relay to connect. On
/// success returns the program's descriptors: its end of the Unix connection
/// to the DPU relay, and the region.
async fn offer(dest: SocketAddr, dpu_socket: &Path) -> Result<(Reply, Vec<OwnedFd>)> {
    let region = new_region()?;
    let conn = within(
        HANDSHAKE_TIMEOUT,
        "connect DPU fast socket",
        UnixStream::connect(dpu_socket),
    )
    .await?;
    let msg = Request::Connect { dest }.encode();
    send_msg(&conn, &msg, &[region.as_raw_fd()], "fast-path offer").await?;
    let mut b = [0u8; REPLY_LEN];
    recv_msg(&conn, &mut b, OFFER_TIMEOUT, "fast-path answer").await?;
    let answer = Reply::decode(&b)?;
    if answer.outcome != Outcome::Connected {
        return Ok((answer, Vec::new()));
    }
    let conn = conn
        .into_std()
        .map_err(|e| Error::io("fast-path connection", e))?;
    Ok((answer, vec![OwnedFd::from(conn), region]))
}

/// A program accepted a connection from `carrier`: if the relay made it,
/// the program gets the fast connection it stands for.
async fn claim(ctx: &Ctx, fast: &Fast, app: &UnixStream, carrier: SocketAddr) -> Result<()> {
    let Some(offer) = fast.registry.take(carrier) else {
        return reply(app, Reply::pass(), &[]).await;
    };
    // The opener learns first, so it is ready when the program writes. Its
    // peer is the claiming program; a program opener sees the carrier's
    // address as its own.
    let to_opener = Reply {
        outcome: Outcome::Connected,
        local: offer.opener_is_program.then_some(offer.carrier),
        peer: None,
        role: Role {
            writes_ring1: false,
            peer_is_program: true,
        },
    };
    let region = offer.region.as_raw_fd();
    let told = send_msg(
        &offer.opener,
        &to_opener.encode(),
        &[region],
        "fast-path accept",
    )
    .await;
    if let Err(e) = told {
        offer.finish(false);
        reply(app, Reply::pass(), &[]).await?;
        return Err(e);
    }
    let answer = Reply {
        outcome: Outcome::Connected,
        local: Some(offer.dest),
        peer: Some(offer.peer.unwrap_or(offer.carrier)),
        role: Role {
            writes_ring1: offer.opener_is_program,
            peer_is_program: offer.opener_is_program,
        },
    };
    let sent = reply(app, answer, &[offer.opener.as_raw_fd(), region]).await;
    if sent.is_ok() {
        Counters::inc(&ctx.counters.fast_accepts);
    }
    offer.finish(sent.is_ok());
    sent
}
