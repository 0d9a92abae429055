//! Asking the CPU relay's broker: for a fast connection (connect), to hear of
//! connections for a listener (listen), and for the connection an accepted
//! carrier stands for (accept).

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heteronet::fastpath::fds::recv_with_fds;
use heteronet::fastpath::wire::{Outcome, Reply, Request, Role, REPLY_LEN};
use heteronet::fastpath::BROKER_NAME;

use crate::Errno;

/// Longest wait for the broker's answer (it waits up to 12 s for the DPU side).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// After finding no broker, connects go straight to the kernel for this long.
const NO_BROKER_FOR: Duration = Duration::from_secs(1);

/// What the broker answered.
#[derive(Debug)]
pub enum Answer {
    /// Use the kernel (not a destination of the other half, or no broker).
    Pass,
    /// The connect fails with this errno.
    Failed(Errno),
    /// A fast connection: the Unix socket to the peer, and the region.
    Connected {
        sock: OwnedFd,
        region: OwnedFd,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
        role: Role,
    },
}

static NO_BROKER_UNTIL_MS: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether a broker may be there (none was found in the last second).
pub fn may_be_there() -> bool {
    now_ms() >= NO_BROKER_UNTIL_MS.load(Ordering::Relaxed)
}

/// Sends `req` to the broker; `None` when there is none to talk to.
fn send(req: Request) -> Option<UnixStream> {
    if now_ms() < NO_BROKER_UNTIL_MS.load(Ordering::Relaxed) {
        return None;
    }
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(BROKER_NAME).ok()?;
    let mut s = match UnixStream::connect_addr(&addr) {
        Ok(s) => s,
        Err(_) => {
            NO_BROKER_UNTIL_MS.store(
                now_ms() + NO_BROKER_FOR.as_millis() as u64,
                Ordering::Relaxed,
            );
            return None;
        }
    };
    s.write_all(&req.encode()).ok()?;
    Some(s)
}

/// Registers a listener on `addr`: the registration lasts while the returned
/// socket stays open. `None`: no broker (the listener gets the relay's connections).
pub fn listen(addr: SocketAddr) -> Option<OwnedFd> {
    send(Request::Listen { addr }).map(OwnedFd::from)
}

/// Asks what `req` (a connect or a claim) gets. Any trouble talking to the
/// broker means `Pass`: the program then uses the kernel (and the relay).
pub fn ask(req: Request) -> Answer {
    let Some(s) = send(req) else {
        return Answer::Pass;
    };
    let mut pfd = [libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    if !matches!(
        crate::real::poll_fds(&mut pfd, ANSWER_TIMEOUT.as_millis() as i32),
        Ok(1)
    ) {
        return Answer::Pass;
    }
    let mut b = [0u8; REPLY_LEN];
    let Ok((n, fds)) = recv_with_fds(s.as_fd(), &mut b) else {
        return Answer::Pass;
    };
    let Ok(reply) = Reply::decode(&b[..n]) else {
        return Answer::Pass;
    };
    match reply.outcome {
        Outcome::Pass => Answer::Pass,
        Outcome::Failed(e) => Answer::Failed(e),
        Outcome::Connected => match <[OwnedFd; 2]>::try_from(fds) {
            Ok([sock, region]) => Answer::Connected {
                sock,
                region,
                local: reply.local,
                peer: reply.peer,
                role: reply.role,
            },
            Err(_) => Answer::Pass,
        },
    }
}

/// Connects `fd` (an unconnected TCP socket of the program) to `dest` on the
/// fast path. `None`: not a fast destination, connect through the kernel.
pub fn connect_fast(fd: i32, dest: SocketAddr) -> Option<Result<(), Errno>> {
    let (sock, region, local, role) = match ask(Request::Connect { dest }) {
        Answer::Pass => return None,
        Answer::Failed(e) => return Some(Err(e)),
        Answer::Connected {
            sock,
            region,
            local,
            role,
            ..
        } => (sock, region, local, role),
    };
    let unspecified = match dest {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let nonblocking = match install(fd, sock, region, local.unwrap_or(unspecified), dest, role) {
        Ok(nb) => nb,
        Err(e) => return Some(Err(e)),
    };
    if nonblocking {
        // As the kernel does for TCP: done in the background, SO_ERROR says 0.
        Some(Err(libc::EINPROGRESS))
    } else {
        Some(Ok(()))
    }
}

/// Makes the program's descriptor `fd` the fast connection's Unix socket,
/// keeping its number, its close-on-exec flag and its blocking mode (the
/// latter is returned).
pub fn install(
    fd: i32,
    sock: OwnedFd,
    region: OwnedFd,
    local: SocketAddr,
    peer: SocketAddr,
    role: Role,
) -> Result<bool, Errno> {
    use crate::real;
    let status = real::fcntl_int(fd, libc::F_GETFL, 0)?;
    let fd_flags = real::fcntl_int(fd, libc::F_GETFD, 0)?;
    let conn = crate::conn::Conn::open(sock, region, local, peer, role)?;
    let raw = conn.fd();
    real::fcntl_int(raw, libc::F_SETFL, status & libc::O_NONBLOCK)?;
    let cloexec = if fd_flags & libc::FD_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    real::dup_onto(raw, fd, cloexec)?;
    crate::table::insert(fd, std::sync::Arc::new(conn));
    Ok(status & libc::O_NONBLOCK != 0)
}
