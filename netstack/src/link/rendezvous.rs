//! The rendezvous handshake: the creator sends the region (fd and address) and
//! the four doorbell eventfds with SCM_RIGHTS; the opener validates and replies.

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use crate::error::{Error, Result};
use crate::fastpath::fds::{recv_with_fds, send_with_fds};

const HELLO: &[u8; 4] = b"HNET";
const OK: &[u8; 4] = b"HNOK";
const PROTO_VERSION: u32 = 1;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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
/// The other end of a rendezvous connection must run as this process's user
/// (root, for the relays): the socket's path is not proof of who is behind it
/// (a local user may bind it while a relay restarts), its credentials are.
pub fn check_peer(conn: &UnixStream) -> Result<()> {
    let cred = conn.peer_cred().map_err(|source| Error::Rendezvous {
        context: "peer credentials",
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() != me {
        tracing::warn!(peer_uid = cred.uid(), peer_pid = ?cred.pid(), "rendezvous peer of another user refused");
        return Err(Error::Handshake("the peer runs as another user"));
    }
    Ok(())
}

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
    let sent = conn
        .async_io(Interest::WRITABLE, || {
            send_with_fds(conn.as_fd(), &msg, fds)
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
    let (n, mut fds) = conn
        .async_io(Interest::READABLE, || recv_with_fds(conn.as_fd(), &mut buf))
        .await
        .map_err(io("recvmsg"))?;
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
