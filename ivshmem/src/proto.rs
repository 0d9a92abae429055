//! The ivshmem client-server wire protocol (QEMU `docs/specs/ivshmem-spec.rst`).
//!
//! One way, server to client: every message is one little-endian `i64`,
//! optionally with one descriptor attached with SCM_RIGHTS. On connect:
//! version (0), the client's id, `-1` with the shared memory fd, then one
//! message per vector for every other peer (its id + eventfd), then the
//! client's own id once per vector with its eventfds. Afterwards: a peer id with
//! an fd is a connect (one message per vector), without one a disconnect.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::error::{Error, Result};
use crate::sys::fd::adopt_received;

/// The only protocol version (QEMU >= 2.5).
pub const PROTOCOL_VERSION: i64 = 0;
/// The message value that carries the shared memory fd.
pub const SHM_MESSAGE: i64 = -1;
/// Peer ids are 16 bits: the doorbell register has no room for more.
pub const MAX_PEER_ID: i64 = 0xffff;

/// One received message.
#[derive(Debug)]
pub struct Message {
    pub value: i64,
    pub fd: Option<OwnedFd>,
}

/// Sends one message; fails with EAGAIN when the socket is full.
pub fn try_send(sock: RawFd, value: i64, fd: Option<BorrowedFd<'_>>) -> nix::Result<()> {
    let bytes = value.to_le_bytes();
    let iov = [IoSlice::new(&bytes)];
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage<'_>> = raw.iter().map(|r| ControlMessage::ScmRights(r)).collect();
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    let sent = socket::sendmsg::<UnixAddr>(sock, &iov, &cmsgs, flags, None)?;
    if sent != bytes.len() {
        // A stream socket accepts all 8 bytes or none once it has any room; a
        // short write would desynchronise the peer, so treat it as fatal.
        return Err(nix::Error::EIO);
    }
    Ok(())
}

/// Sends one message, waiting for room in the socket.
pub async fn send(stream: &UnixStream, value: i64, fd: Option<BorrowedFd<'_>>) -> Result<()> {
    stream
        .async_io(Interest::WRITABLE, || {
            try_send(stream.as_raw_fd(), value, fd).map_err(std::io::Error::from)
        })
        .await
        .map_err(crate::error::io("send ivshmem message"))
}

/// Receives one message; `None` at a clean end of stream.
///
/// Reads at most the 8 bytes still missing from the current message, as QEMU
/// does, so a descriptor is never attributed to the wrong message.
pub async fn recv(stream: &UnixStream) -> Result<Option<Message>> {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    let mut fds: Vec<OwnedFd> = Vec::new();
    while filled < buf.len() {
        let (n, got) = stream
            .async_io(Interest::READABLE, || {
                recv_some(stream.as_raw_fd(), &mut buf[filled..]).map_err(std::io::Error::from)
            })
            .await
            .map_err(crate::error::io("receive ivshmem message"))?;
        let got = got?;
        fds.extend(got);
        if n == 0 {
            return if filled == 0 && fds.is_empty() {
                Ok(None)
            } else {
                Err(Error::Protocol("connection closed inside a message"))
            };
        }
        filled += n;
    }
    if fds.len() > 1 {
        // Extra descriptors are closed here (dropped): one per message is the protocol.
        return Err(Error::Protocol("more than one descriptor with a message"));
    }
    Ok(Some(Message {
        value: i64::from_le_bytes(buf),
        fd: fds.pop(),
    }))
}

/// One `recvmsg`: bytes read and the descriptors that came with them (already
/// owned, so every error path closes them).
fn recv_some(sock: RawFd, buf: &mut [u8]) -> nix::Result<(usize, Result<Vec<OwnedFd>>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<UnixAddr>(
        sock,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let mut raw = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            raw.extend(fds);
        }
    }
    let fds = adopt_received(&raw);
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let n = msg.bytes;
    if truncated {
        return Ok((
            n,
            Err(Error::Protocol("too many descriptors with a message")),
        ));
    }
    Ok((n, Ok(fds)))
}
