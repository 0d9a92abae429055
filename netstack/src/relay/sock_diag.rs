//! Listening TCP sockets of the current network namespace, via NETLINK_SOCK_DIAG.
//!
//! A small typed encoder/decoder for `inet_diag_req_v2` / `inet_diag_msg` so no
//! unsafe code is needed: the socket is nix's, the bytes are parsed by hand and
//! every length is checked (the kernel is trusted more than the peer, but a
//! malformed reply still becomes an error, never a panic).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use super::error::{Error, Result};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const INET_DIAG_MSG_LEN: usize = 72;
const INET_DIAG_SKV6ONLY: u16 = 11;
const TCP_LISTEN: u32 = 10;
const IPPROTO_TCP: u8 = 6;

/// One listening socket as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenSocket {
    pub addr: SocketAddr,
    /// IPv6 socket that does not accept IPv4-mapped connections.
    pub v6only: bool,
    pub inode: u64,
    /// Owner (uid) of the listening socket.
    pub uid: u32,
}

/// Netlink socket for repeated dumps.
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl SockDiag {
    pub fn open() -> Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .map_err(|e| Error::Netlink("socket", e))?;
        Ok(Self {
            fd,
            seq: 0,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// All TCP sockets in LISTEN state, IPv4 and IPv6.
    pub fn tcp_listeners(&mut self) -> Result<BTreeSet<ListenSocket>> {
        let mut out = BTreeSet::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            self.dump(family, &mut out)?;
        }
        Ok(out)
    }

    /// The owner (uid) of the TCP socket of this netns whose own addresses are
    /// `local` -> `remote`; `None` when there is no such socket.
    pub fn owner_of(&mut self, local: SocketAddr, remote: SocketAddr) -> Result<Option<u32>> {
        let Some(req) = encode_lookup(self.seq.wrapping_add(1), local, remote) else {
            return Ok(None);
        };
        self.seq = self.seq.wrapping_add(1);
        self.send(&req)?;
        loop {
            let seq = self.seq;
            if let Some(found) = parse_lookup(self.recv()?, seq)? {
                return Ok(found);
            }
        }
    }

    /// One datagram of the reply.
    fn recv(&mut self) -> Result<&[u8]> {
        let n = recv(
            std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            &mut self.buf,
            MsgFlags::empty(),
        )
        .map_err(|e| Error::Netlink("recv", e))?;
        if n == 0 {
            return Err(Error::SockDiagParse("empty netlink reply"));
        }
        Ok(&self.buf[..n])
    }

    fn send(&self, req: &[u8]) -> Result<()> {
        sendto(
            std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            req,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|e| Error::Netlink("sendto", e))?;
        Ok(())
    }

    fn dump(&mut self, family: u8, out: &mut BTreeSet<ListenSocket>) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let req = encode_request(self.seq, family);
        self.send(&req)?;
        loop {
            let seq = self.seq;
            if parse_batch(self.recv()?, seq, out)? {
                return Ok(());
            }
        }
    }
}

fn encode_request(seq: u32, family: u8) -> Vec<u8> {
    let total = NLMSG_HDRLEN + 56;
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&(total as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed sockid (48 bytes).
    b.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    b.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    b.resize(total, 0);
    b
}

/// A request for the one TCP socket with exactly these addresses (any state).
fn encode_lookup(seq: u32, local: SocketAddr, remote: SocketAddr) -> Option<Vec<u8>> {
    let family = match (local, remote) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => libc::AF_INET as u8,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => libc::AF_INET6 as u8,
        _ => return None,
    };
    let total = NLMSG_HDRLEN + 56;
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&(total as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    b.extend_from_slice(&u32::MAX.to_ne_bytes());
    // inet_diag_sockid: sport, dport (big endian), src[16], dst[16], if, cookie.
    b.extend_from_slice(&local.port().to_be_bytes());
    b.extend_from_slice(&remote.port().to_be_bytes());
    for ip in [local.ip(), remote.ip()] {
        let mut a = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => a = v6.octets(),
        }
        b.extend_from_slice(&a);
    }
    b.extend_from_slice(&0u32.to_ne_bytes());
    // INET_DIAG_NOCOOKIE: match by addresses only.
    b.extend_from_slice(&[0xff; 8]);
    debug_assert_eq!(b.len(), total);
    Some(b)
}

/// The reply to [`encode_lookup`]: `Some(Some(uid))` found, `Some(None)` no
/// such socket, `None` not in this datagram.
fn parse_lookup(b: &[u8], seq: u32) -> Result<Option<Option<u32>>> {
    for_each_msg(b, seq, |ty, payload| match ty {
        NLMSG_ERROR => {
            let errno = -(u32_ne(payload, 0)? as i32);
            match errno {
                0 | libc::ENOENT => Ok(Some(None)),
                e => Err(Error::SockDiagErrno(e)),
            }
        }
        SOCK_DIAG_BY_FAMILY => {
            if payload.len() < INET_DIAG_MSG_LEN {
                return Err(Error::SockDiagParse("short inet_diag_msg"));
            }
            Ok(Some(Some(u32_ne(payload, 64)?)))
        }
        _ => Ok(None),
    })
}

/// Walks one datagram of netlink messages, every length checked, calling `f`
/// with the type and payload of each message of request `seq` until it
/// returns `Some`.
fn for_each_msg<T>(
    mut b: &[u8],
    seq: u32,
    mut f: impl FnMut(u16, &[u8]) -> Result<Option<T>>,
) -> Result<Option<T>> {
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_ne(b, 0)? as usize;
        let ty = u16_ne(b, 4)?;
        let mseq = u32_ne(b, 8)?;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(Error::SockDiagParse("bad nlmsg length"));
        }
        if mseq == seq {
            if let Some(v) = f(ty, &b[NLMSG_HDRLEN..len])? {
                return Ok(Some(v));
            }
        }
        let step = (len + 3) & !3;
        b = b.get(step..).unwrap_or(&[]);
    }
    Ok(None)
}

fn u16_ne(b: &[u8], at: usize) -> Result<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_ne_bytes([s[0], s[1]]))
        .ok_or(Error::SockDiagParse("truncated u16"))
}

fn u32_ne(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(Error::SockDiagParse("truncated u32"))
}

/// Parses one datagram of netlink messages; true when NLMSG_DONE was seen.
fn parse_batch(b: &[u8], seq: u32, out: &mut BTreeSet<ListenSocket>) -> Result<bool> {
    let done = for_each_msg(b, seq, |ty, payload| match ty {
        NLMSG_DONE => Ok(Some(())),
        NLMSG_ERROR => {
            let errno = u32_ne(payload, 0)? as i32;
            if errno == 0 {
                return Ok(Some(()));
            }
            Err(Error::SockDiagErrno(-errno))
        }
        SOCK_DIAG_BY_FAMILY => {
            if let Some(s) = parse_msg(payload)? {
                out.insert(s);
            }
            Ok(None)
        }
        _ => Ok(None),
    })?;
    Ok(done.is_some())
}

fn parse_msg(p: &[u8]) -> Result<Option<ListenSocket>> {
    if p.len() < INET_DIAG_MSG_LEN {
        return Err(Error::SockDiagParse("short inet_diag_msg"));
    }
    let family = p[0];
    if u32::from(p[1]) != TCP_LISTEN {
        return Ok(None);
    }
    // sockid starts at 4: sport (be16), dport (be16), src[16], dst[16], if, cookie[2].
    let port = u16::from_be_bytes([p[4], p[5]]);
    let src = &p[8..24];
    let ip = match i32::from(family) {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3])),
        libc::AF_INET6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(src);
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return Ok(None),
    };
    let uid = u32_ne(p, 64)?;
    let inode = u64::from(u32_ne(p, 68)?);
    let mut v6only = false;
    let mut attrs = &p[INET_DIAG_MSG_LEN..];
    while attrs.len() >= 4 {
        let alen = usize::from(u16_ne(attrs, 0)?);
        let aty = u16_ne(attrs, 2)? & 0x3fff;
        if alen < 4 || alen > attrs.len() {
            break;
        }
        if aty == INET_DIAG_SKV6ONLY && alen >= 5 {
            v6only = attrs[4] != 0;
        }
        attrs = attrs.get((alen + 3) & !3..).unwrap_or(&[]);
    }
    Ok(Some(ListenSocket {
        addr: SocketAddr::new(ip, port),
        v6only,
        inode,
        uid,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_72_bytes_with_listen_state() {
        let sut = encode_request(7, libc::AF_INET as u8);
        assert_eq!(sut.len(), 72);
        assert_eq!(u32_ne(&sut, 0).unwrap(), 72);
        assert_eq!(u32_ne(&sut, 20).unwrap(), 1 << TCP_LISTEN);
    }

    #[test]
    fn truncated_reply_is_an_error_not_a_panic() {
        let mut out = BTreeSet::new();
        let mut msg = vec![0u8; 20];
        msg[0..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(parse_batch(&msg, 1, &mut out).is_err());
        msg[0..4].copy_from_slice(&20u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
        assert!(parse_batch(&msg, 1, &mut out).is_err());
    }

    #[test]
    fn finds_the_owner_of_a_connected_socket_and_none_for_a_missing_one() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (local, remote) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        let mut sut = SockDiag::open().unwrap();
        assert_eq!(
            sut.owner_of(local, remote).unwrap(),
            Some(nix::unistd::geteuid().as_raw())
        );
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(sut.owner_of(nobody, remote).unwrap(), None);
        assert_eq!(
            sut.owner_of(local, "[::1]:1".parse().unwrap()).unwrap(),
            None
        );
    }

    #[test]
    fn finds_a_listener_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut sut = SockDiag::open().unwrap();
        let found = sut.tcp_listeners().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert!(
            found.iter().any(|s| s.addr == addr && s.uid == me),
            "{addr} (uid {me}) not in {found:?}"
        );
    }
}
