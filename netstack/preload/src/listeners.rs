//! Listening sockets registered with the broker, and the accepts on them
//! that turn out to be fast connections of the Pod's other half.
//!
//! A registration is a Unix connection to the broker, held beside the
//! listening descriptor and closed with it; a child after `fork` shares it.
//! A listener that failed to register still works: its connections from the
//! other half come through the relay.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use heteronet::fastpath::wire::Request;

use crate::broker::{self, Answer};
use crate::real;

static COUNT: AtomicUsize = AtomicUsize::new(0);

fn regs() -> MutexGuard<'static, HashMap<i32, OwnedFd>> {
    static R: OnceLock<Mutex<HashMap<i32, OwnedFd>>> = OnceLock::new();
    R.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

fn is_tcp(fd: i32) -> bool {
    real::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Ok(libc::SOCK_STREAM)
        && matches!(
            real::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL),
            Ok(0) | Ok(libc::IPPROTO_TCP)
        )
}

/// `fd` now listens: register it (once) if it is an IP TCP socket.
pub fn listened(fd: i32) {
    if regs().contains_key(&fd) || !is_tcp(fd) {
        return;
    }
    let Some(addr) = real::sock_addr(fd, false) else {
        return;
    };
    if let Some(reg) = broker::listen(addr) {
        let reg = crate::internal::hide(reg);
        match regs().insert(fd, reg) {
            None => {
                COUNT.fetch_add(1, Ordering::AcqRel);
            }
            Some(old) => crate::internal::release(old.as_raw_fd()),
        }
    }
}

/// `fd` is closed (or replaced): its registration ends with it.
pub fn forget(fd: i32) {
    if COUNT.load(Ordering::Acquire) == 0 {
        return;
    }
    let old = regs().remove(&fd);
    if let Some(reg) = old {
        COUNT.fetch_sub(1, Ordering::AcqRel);
        crate::internal::release(reg.as_raw_fd());
    }
}

/// Registrations of listeners in `first..=last` end (`close_range`).
pub fn forget_within(first: u32, last: u32) {
    if COUNT.load(Ordering::Acquire) == 0 {
        return;
    }
    let fds: Vec<i32> = regs()
        .keys()
        .copied()
        .filter(|&fd| (first..=last).contains(&(fd as u32)))
        .collect();
    for fd in fds {
        forget(fd);
    }
}

fn registered(fd: i32) -> bool {
    COUNT.load(Ordering::Acquire) > 0 && regs().contains_key(&fd)
}

/// `a` in the family of `like` (a v4 address as v4-mapped for a v6 socket).
fn same_family(a: SocketAddr, like: SocketAddr) -> SocketAddr {
    match (a, like, a.ip()) {
        (SocketAddr::V4(v4), SocketAddr::V6(_), _) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        (SocketAddr::V6(v6), SocketAddr::V4(_), IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        _ => a,
    }
}

/// `nfd` was accepted on `listen_fd`. A connection from this socket's own
/// address to a registered listener may be a relay's carrier: if the broker
/// says so, `nfd` becomes the fast connection it stands for, and the peer
/// the program should see is returned.
pub fn accepted(listen_fd: i32, nfd: i32) -> Option<SocketAddr> {
    if !registered(listen_fd) {
        // It listened before its Pod's relays ran (a container started
        // first): register now, so the next connections come fast.
        if broker::may_be_there() {
            listened(listen_fd);
        }
        return None;
    }
    let carrier = real::sock_addr(nfd, true)?;
    let local = real::sock_addr(nfd, false)?;
    if carrier.ip() != local.ip() {
        return None;
    }
    let Answer::Connected {
        sock,
        region,
        local: l,
        peer,
        role,
    } = broker::ask(Request::Claim { carrier })
    else {
        return None;
    };
    let peer = same_family(peer.unwrap_or(carrier), local);
    let l = same_family(l.unwrap_or(local), local);
    broker::install(nfd, sock, region, l, peer, role).ok()?;
    Some(peer)
}
