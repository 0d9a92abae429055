//! One message with descriptors attached (SCM_RIGHTS), sent or received without
//! blocking; callers wait for readiness themselves (tokio's `async_io`, or poll).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

use crate::shm::region::adopt_received_fds;

/// Most descriptors any heteronet message carries.
pub const MAX_FDS: usize = 5;

/// Sends `bytes` with `fds` attached; returns the bytes sent.
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsg: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    socket::sendmsg::<UnixAddr>(
        std::os::fd::AsRawFd::as_raw_fd(&sock),
        &iov,
        cmsg,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(std::io::Error::from)
}

/// Receives one message into `buf` and the descriptors attached to it (owned,
/// close-on-exec, at most [`MAX_FDS`]; a message with more is an error after
/// all of them were closed).
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let m = socket::recvmsg::<UnixAddr>(
        std::os::fd::AsRawFd::as_raw_fd(&sock),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let mut raw = Vec::new();
    for c in m.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            raw.extend(fds);
        }
    }
    let truncated = m.flags.contains(MsgFlags::MSG_CTRUNC);
    let bytes = m.bytes;
    // Own them first, so every path closes them.
    let fds = adopt_received_fds(&raw);
    if truncated {
        return Err(std::io::Error::other("too many descriptors in one message"));
    }
    Ok((bytes, fds))
}
