//! The rendezvous handshake: the creator sends the region (fd and address) and
//! the four doorbell eventfds with SCM_RIGHTS; the opener validates and replies.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use crate::error::{Error, Result};
use crate::shm::region::adopt_received_fds;

const HELLO: &[u8; 4] = b"HNET";
const OK: &[u8; 4] = b"HNOK";
const PROTO_VERSION: u32 = 1;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_FDS: usize = 5;

/// What the creator tells the opener.
#[derive(Debug)]
pub struct Hello {
    pub generation: u64,
    pub creator_side: u8,
    pub addr: String,
    /// The region fd (shm, memfd), if shared that way.
    pub region_fd: Option<OwnedFd>,
    /// [opener data, opener space, creator data, creator space].
    pub bells: [OwnedFd; 4],
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Rendezvous { context, source }
}

/// Sends the hello; `fds` = optional region fd followed by the four bells.
pub async fn send_hello(
    conn: &UnixStream,
    generation: u64,
    creator_side: u8,
    addr: &str,
    fds: &[RawFd],
    has_region_fd: bool,
) -> Result<()> {
    let mut msg = Vec::with_capacity(24 + addr.len());
    msg.extend_from_slice(HELLO);
    msg.extend_from_slice(&PROTO_VERSION.to_le_bytes());
    msg.extend_from_slice(&generation.to_le_bytes());
    msg.push(creator_side);
    msg.push(u8::from(has_region_fd));
    msg.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    msg.extend_from_slice(addr.as_bytes());
    let iov = [IoSlice::new(&msg)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let sent = conn
        .async_io(Interest::WRITABLE, || {
            socket::sendmsg::<UnixAddr>(conn.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                .map_err(std::io::Error::from)
        })
        .await
        .map_err(io("sendmsg"))?;
    if sent != msg.len() {
        return Err(Error::Handshake("short hello"));
    }
    Ok(())
}

/// Receives and parses the hello.
pub async fn recv_hello(conn: &UnixStream) -> Result<Hello> {
    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, raw) = conn
        .async_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let m = socket::recvmsg::<UnixAddr>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let mut raw = Vec::new();
            for c in m.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    raw.extend(fds);
                }
            }
            Ok((m.bytes, raw))
        })
        .await
        .map_err(io("recvmsg"))?;
    // Own the fds first so every path below closes them.
    let mut fds = adopt_received_fds(&raw);
    let b = &buf[..n];
    if n < 20 || &b[..4] != HELLO {
        return Err(Error::Handshake("not a heteronet rendezvous"));
    }
    let version = u32::from_le_bytes(b[4..8].try_into().unwrap_or_default());
    if version != PROTO_VERSION {
        return Err(Error::Handshake("rendezvous protocol version mismatch"));
    }
    let generation = u64::from_le_bytes(b[8..16].try_into().unwrap_or_default());
    let creator_side = b[16];
    let has_region_fd = b[17] != 0;
    let alen = usize::from(u16::from_le_bytes([b[18], b[19]]));
    let addr = b
        .get(20..20 + alen)
        .and_then(|a| std::str::from_utf8(a).ok())
        .ok_or(Error::Handshake("bad region address"))?
        .to_string();
    let want = 4 + usize::from(has_region_fd);
    if fds.len() != want {
        return Err(Error::Handshake("wrong number of descriptors"));
    }
    let region_fd = has_region_fd.then(|| fds.remove(0));
    let bells: [OwnedFd; 4] = fds
        .try_into()
        .map_err(|_| Error::Handshake("wrong number of descriptors"))?;
    Ok(Hello {
        generation,
        creator_side,
        addr,
        region_fd,
        bells,
    })
}

/// Opener → creator: accepted, with the opener's side.
pub async fn send_ok(conn: &mut UnixStream, side: u8) -> Result<()> {
    conn.write_all(&[OK[0], OK[1], OK[2], OK[3], side])
        .await
        .map_err(io("send ok"))
}

pub async fn recv_ok(conn: &mut UnixStream) -> Result<u8> {
    let mut b = [0u8; 5];
    conn.read_exact(&mut b).await.map_err(io("receive ok"))?;
    if &b[..4] != OK {
        return Err(Error::Handshake("peer refused the region"));
    }
    Ok(b[4])
}
