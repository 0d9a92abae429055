//! The fast-path handshake messages: fixed-size, versioned, parsed without trust.
//!
//! A preloaded program talks to the CPU relay's broker with a [`Request`]:
//! `Connect` (a connection to a listener of the other half), `Listen` (its
//! listener accepts fast connections while this request's socket stays open)
//! or `Claim` (is the connection it just accepted one the relay offered?).
//! The relays talk with the same messages: the broker forwards `Connect` to
//! the DPU relay, and the DPU relay sends `Incoming` for a connection its half
//! made to a fast listener. Every answer is a [`Reply`]; descriptors travel
//! beside it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::{Error, Result};

const REQUEST_MAGIC: &[u8; 4] = b"HFQ2";
const REPLY_MAGIC: &[u8; 4] = b"HFR2";
/// Bytes of an encoded socket address: family, port, 16 address bytes.
const ADDR_LEN: usize = 1 + 2 + 16;
pub const REQUEST_LEN: usize = 4 + 1 + 2 * ADDR_LEN;
pub const REPLY_LEN: usize = 4 + 1 + 4 + 2 * ADDR_LEN + 1;

/// What a program (or the DPU relay) asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A TCP connection to `dest`.
    Connect { dest: SocketAddr },
    /// The sender listens on `addr` and claims what the relay offers it,
    /// for as long as the socket carrying this request stays open.
    Listen { addr: SocketAddr },
    /// The sender accepted a connection from `carrier`: if it is one the
    /// relay made to hand over a fast connection, the answer carries it.
    Claim { carrier: SocketAddr },
    /// The DPU half accepted `peer`'s connection to `dest`, a mirror of a
    /// listener of the CPU half.
    Incoming { dest: SocketAddr, peer: SocketAddr },
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Connected; the descriptors follow the reply.
    Connected,
    /// Not a fast-path destination (or no capacity): use the kernel.
    Pass,
    /// The destination refused or failed, with the errno a kernel connect gives.
    Failed(i32),
}

/// The answer to a [`Request`]: the connection's local and peer addresses as
/// the program should see them (for `Connect`, `peer` is unset), and its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub outcome: Outcome,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub role: Role,
}

/// A fast connection's end: which ring it writes (the other it reads) and
/// what is at the other end: a relay's pump, which watches the rings itself,
/// or another preloaded program, which needs a token for every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Role {
    pub writes_ring1: bool,
    pub peer_is_program: bool,
}

impl Role {
    fn encode(self) -> u8 {
        u8::from(self.writes_ring1) | (u8::from(self.peer_is_program) << 1)
    }

    fn decode(b: u8) -> Result<Role> {
        if b & !3 != 0 {
            return Err(Error::Protocol("fast-path reply role"));
        }
        Ok(Role {
            writes_ring1: b & 1 != 0,
            peer_is_program: b & 2 != 0,
        })
    }
}

fn put_addr(b: &mut [u8], a: Option<SocketAddr>) {
    match a {
        None => b[0] = 0,
        Some(SocketAddr::V4(v4)) => {
            b[0] = 4;
            b[1..3].copy_from_slice(&v4.port().to_be_bytes());
            b[3..7].copy_from_slice(&v4.ip().octets());
        }
        Some(SocketAddr::V6(v6)) => {
            b[0] = 6;
            b[1..3].copy_from_slice(&v6.port().to_be_bytes());
            b[3..19].copy_from_slice(&v6.ip().octets());
        }
    }
}

fn get_addr(b: &[u8]) -> Result<Option<SocketAddr>> {
    let port = u16::from_be_bytes([b[1], b[2]]);
    let ip = match b[0] {
        0 => return Ok(None),
        4 => IpAddr::V4(Ipv4Addr::new(b[3], b[4], b[5], b[6])),
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[3..19]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(Error::Protocol("fast-path address family")),
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(REQUEST_MAGIC);
        let (kind, a, c) = match *self {
            Request::Connect { dest } => (1u8, dest, None),
            Request::Listen { addr } => (2, addr, None),
            Request::Claim { carrier } => (3, carrier, None),
            Request::Incoming { dest, peer } => (4, dest, Some(peer)),
        };
        b[4] = kind;
        put_addr(&mut b[5..5 + ADDR_LEN], Some(a));
        put_addr(&mut b[5 + ADDR_LEN..], c);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Request> {
        if b.len() != REQUEST_LEN || &b[..4] != REQUEST_MAGIC {
            return Err(Error::Protocol("fast-path request header"));
        }
        let missing = Error::Protocol("fast-path request without address");
        let a = get_addr(&b[5..5 + ADDR_LEN])?.ok_or(missing)?;
        let c = get_addr(&b[5 + ADDR_LEN..])?;
        Ok(match (b[4], c) {
            (1, None) => Request::Connect { dest: a },
            (2, None) => Request::Listen { addr: a },
            (3, None) => Request::Claim { carrier: a },
            (4, Some(peer)) => Request::Incoming { dest: a, peer },
            _ => return Err(Error::Protocol("fast-path request kind")),
        })
    }
}

impl Reply {
    pub fn pass() -> Reply {
        Reply {
            outcome: Outcome::Pass,
            local: None,
            peer: None,
            role: Role::default(),
        }
    }

    pub fn failed(errno: i32) -> Reply {
        Reply {
            outcome: Outcome::Failed(errno),
            local: None,
            peer: None,
            role: Role::default(),
        }
    }

    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut b = [0u8; REPLY_LEN];
        b[..4].copy_from_slice(REPLY_MAGIC);
        let (code, errno) = match self.outcome {
            Outcome::Connected => (0u8, 0i32),
            Outcome::Pass => (1, 0),
            Outcome::Failed(e) => (2, e),
        };
        b[4] = code;
        b[5..9].copy_from_slice(&errno.to_le_bytes());
        put_addr(&mut b[9..9 + ADDR_LEN], self.local);
        put_addr(&mut b[9 + ADDR_LEN..9 + 2 * ADDR_LEN], self.peer);
        b[REPLY_LEN - 1] = self.role.encode();
        b
    }

    pub fn decode(b: &[u8]) -> Result<Reply> {
        if b.len() != REPLY_LEN || &b[..4] != REPLY_MAGIC {
            return Err(Error::Protocol("fast-path reply header"));
        }
        let errno = i32::from_le_bytes([b[5], b[6], b[7], b[8]]);
        let outcome = match b[4] {
            0 => Outcome::Connected,
            1 => Outcome::Pass,
            // Only errno values a connect can report, so a peer cannot make the
            // program see something absurd (0, negative, or out of range).
            2 if (1..4096).contains(&errno) => Outcome::Failed(errno),
            _ => return Err(Error::Protocol("fast-path reply outcome")),
        };
        Ok(Reply {
            outcome,
            local: get_addr(&b[9..9 + ADDR_LEN])?,
            peer: get_addr(&b[9 + ADDR_LEN..9 + 2 * ADDR_LEN])?,
            role: Role::decode(b[REPLY_LEN - 1])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply_round_trip() {
        for dest in ["127.0.0.1:8080", "[::1]:443", "10.1.2.3:1"] {
            let dest = dest.parse().unwrap();
            let peer = "10.9.8.7:40000".parse().unwrap();
            for sut in [
                Request::Connect { dest },
                Request::Listen { addr: dest },
                Request::Claim { carrier: dest },
                Request::Incoming { dest, peer },
            ] {
                assert_eq!(Request::decode(&sut.encode()).unwrap(), sut);
            }
        }
        for sut in [
            Reply {
                outcome: Outcome::Connected,
                local: Some("127.0.0.1:40000".parse().unwrap()),
                peer: Some("[::1]:5".parse().unwrap()),
                role: Role {
                    writes_ring1: true,
                    peer_is_program: true,
                },
            },
            Reply::pass(),
            Reply::failed(libc::ECONNREFUSED),
        ] {
            assert_eq!(Reply::decode(&sut.encode()).unwrap(), sut);
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let good = Request::Connect {
            dest: "127.0.0.1:1".parse().unwrap(),
        }
        .encode();
        let mut b = good;
        b[5] = 9;
        assert!(Request::decode(&b).is_err(), "address family");
        let mut b = good;
        b[4] = 4;
        assert!(Request::decode(&b).is_err(), "Incoming without its peer");
        b[4] = 0;
        assert!(Request::decode(&b).is_err(), "kind");
        assert!(Request::decode(&good[..5]).is_err(), "length");
        let mut r = Reply::failed(111).encode();
        r[5..9].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(Reply::decode(&r).is_err());
        r[4] = 7;
        assert!(Reply::decode(&r).is_err());
        let mut r = Reply::pass().encode();
        r[REPLY_LEN - 1] = 4;
        assert!(Reply::decode(&r).is_err(), "role");
    }
}
