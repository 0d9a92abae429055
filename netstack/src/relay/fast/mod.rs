//! The relays' part of the fast path (see [`crate::fastpath`]):
//! * [`broker`] (CPU relay) answers the Pod's preloaded programs: connects,
//!   listener registrations and claims;
//! * [`incoming`] (CPU relay) hands a connection that the DPU half made to a
//!   registered listener over to the program that accepts it;
//! * [`serve`] (DPU relay) joins each fast connection to a real TCP connection
//!   in its half, whichever side opened it;
//! * [`pump`] moves one connection's bytes between its rings and TCP.

mod broker;
mod incoming;
mod pump;
mod serve;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{Error, Result};
use super::session::Ctx;
use crate::fastpath::fds::{recv_with_fds, send_with_fds};
use crate::fastpath::{BROKER_NAME, MAX_CONNECTIONS, RING_BYTES};
use crate::shm::{Region, RegionAddr};
use crate::Side;

pub(super) use serve::offer_incoming;

/// A program or a relay must finish its part of a handshake in this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a fast connection's pump stays awake after work before it sleeps
/// (`HETERONET_FAST_SPIN_US`, default 50 µs: a 64-byte round trip through the
/// DPU half's loopback takes 20-40 µs on the 2-core test machines).
fn spin_budget() -> Duration {
    static US: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    Duration::from_micros(*US.get_or_init(|| {
        std::env::var("HETERONET_FAST_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50)
    }))
}

/// Ring bytes per direction of a new fast connection (`HETERONET_FAST_RING_BYTES`
/// overrides [`RING_BYTES`]; rounded to a power of two by the layout).
fn ring_bytes() -> u64 {
    static N: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("HETERONET_FAST_RING_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(RING_BYTES)
    })
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(context, e)
}

async fn within<T>(
    limit: Duration,
    context: &'static str,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| Error::io(context, std::io::ErrorKind::TimedOut.into()))?
        .map_err(io(context))
}

/// A new connection's region (a sealed memfd with its two rings laid out);
/// only its descriptor is kept: the relay that makes it never maps it again.
fn new_region() -> Result<OwnedFd> {
    let region = Region::create(
        &RegionAddr::Memfd,
        Some(ring_bytes()),
        u32::from(Side::Cpu.code()),
    )?;
    region
        .fd()
        .ok_or(Error::io(
            "fast-path region",
            std::io::ErrorKind::NotFound.into(),
        ))?
        .try_clone_to_owned()
        .map_err(io("dup fast-path region"))
}

/// One relay's fast-path state, shared by its tasks.
pub(super) struct Fast {
    side: Side,
    /// The DPU relay's socket: connects from the CPU half arrive there.
    dpu_socket: PathBuf,
    /// The CPU relay's socket, bound while a program of the CPU half listens
    /// with the library: connections to such a listener are offered there.
    cpu_socket: PathBuf,
    /// CPU side: the registered listeners and the offers waiting for a claim.
    registry: incoming::Registry,
    /// DPU side: pumps running (bounded by [`MAX_CONNECTIONS`]).
    slots: Arc<Semaphore>,
}

impl Fast {
    /// The fast-path state of a relay whose link meets at `rendezvous`.
    pub(super) fn new(side: Side, rendezvous: &Path) -> Arc<Fast> {
        let cpu_socket = crate::fastpath::accept_socket_path(rendezvous);
        Arc::new(Fast {
            side,
            dpu_socket: crate::fastpath::fast_socket_path(rendezvous),
            registry: incoming::Registry::new(cpu_socket.clone()),
            cpu_socket,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        })
    }
}

/// Removes this relay's sockets when it stops.
pub(super) struct Sockets(Vec<PathBuf>);

impl Drop for Sockets {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Starts this side's part: the broker (CPU) or the fast socket's server
/// (DPU). Failing to start only loses the fast path (programs then use the
/// relay), so it is logged, not fatal.
pub(super) fn start(fast: &Arc<Fast>, ctx: &Ctx) -> Option<Sockets> {
    // Each half's programs find their relay's broker in their own netns.
    let broker = match bind_broker() {
        Ok(l) => {
            tokio::spawn(broker::run(l, ctx.clone(), fast.clone()));
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "fast path off for this half's programs: cannot bind the broker");
            false
        }
    };
    match fast.side {
        Side::Cpu => broker.then(|| Sockets(vec![fast.cpu_socket.clone()])),
        Side::Dpu => {
            let path = &fast.dpu_socket;
            let _ = std::fs::remove_file(path);
            // Only root (the CPU relay) may offer connections.
            let bound = UnixListener::bind(path).and_then(|l| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                Ok(l)
            });
            match bound {
                Ok(l) => {
                    tokio::spawn(serve::run(l, ctx.clone(), fast.clone()));
                    Some(Sockets(vec![path.clone()]))
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "fast path off: cannot bind the fast socket");
                    None
                }
            }
        }
    }
}

/// Binds the broker's abstract socket in the current network namespace.
pub(super) fn bind_broker() -> Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(BROKER_NAME)
        .map_err(io("fast-path broker address"))?;
    let l =
        std::os::unix::net::UnixListener::bind_addr(&addr).map_err(io("bind fast-path broker"))?;
    l.set_nonblocking(true).map_err(io("fast-path broker"))?;
    UnixListener::from_std(l).map_err(io("fast-path broker"))
}

/// The errno a kernel connect would report for `e`.
fn errno_of(e: &Error) -> i32 {
    match e {
        Error::Io { source, .. } => {
            source
                .raw_os_error()
                .unwrap_or(if source.kind() == std::io::ErrorKind::TimedOut {
                    libc::ETIMEDOUT
                } else {
                    libc::ECONNREFUSED
                })
        }
        _ => libc::ECONNREFUSED,
    }
}

/// Accepts on `listener` until the relay stops, spawning `each` for every
/// connection. With `slots`, at most that many run at once (`each` holds the
/// permit for as long as it counts); without, each is bounded elsewhere.
async fn accept_loop<F, Fut>(
    listener: UnixListener,
    what: &'static str,
    slots: Option<Arc<Semaphore>>,
    each: F,
) where
    F: Fn(UnixStream, Option<OwnedSemaphorePermit>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::warn!(error = %e, socket = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match &slots {
            Some(s) => match s.clone().acquire_owned().await {
                Ok(p) => Some(p),
                Err(_) => return,
            },
            None => None,
        };
        tokio::spawn(each(conn, permit));
    }
}

/// Sends one handshake message with `fds` beside it.
async fn send_msg(conn: &UnixStream, msg: &[u8], fds: &[i32], context: &'static str) -> Result<()> {
    let sent = within(
        HANDSHAKE_TIMEOUT,
        context,
        conn.async_io(Interest::WRITABLE, || send_with_fds(conn.as_fd(), msg, fds)),
    )
    .await?;
    if sent != msg.len() {
        return Err(Error::io(context, std::io::ErrorKind::WriteZero.into()));
    }
    Ok(())
}

/// Receives one handshake message of `buf.len()` bytes and the descriptors
/// beside it, waiting at most `limit`.
async fn recv_msg(
    conn: &UnixStream,
    buf: &mut [u8],
    limit: Duration,
    context: &'static str,
) -> Result<Vec<OwnedFd>> {
    let (n, fds) = within(
        limit,
        context,
        conn.async_io(Interest::READABLE, || recv_with_fds(conn.as_fd(), buf)),
    )
    .await?;
    if n != buf.len() {
        return Err(Error::io(context, std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(fds)
}
