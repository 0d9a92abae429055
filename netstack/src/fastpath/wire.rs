//! The fast-path handshake messages: fixed-size, versioned, parsed without trust.
//!
//! A preloaded program asks the CPU relay's broker for a connection with a
//! [`Request`]; the broker forwards the same request (with the region and the
//! space doorbell) to the DPU relay, which answers with a [`Reply`]; the broker
//! hands that reply (with the connection's descriptors) back to the program.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::{Error, Result};

const REQUEST_MAGIC: &[u8; 4] = b"HFC1";
const REPLY_MAGIC: &[u8; 4] = b"HFR1";
/// Bytes of an encoded socket address: family, port, 16 address bytes.
const ADDR_LEN: usize = 1 + 2 + 16;
pub const REQUEST_LEN: usize = 4 + ADDR_LEN;
pub const REPLY_LEN: usize = 4 + 1 + 4 + ADDR_LEN;

/// A program asks for a TCP connection to `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub dest: SocketAddr,
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

/// The answer to a [`Request`]; `local` is the connection's local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub outcome: Outcome,
    pub local: Option<SocketAddr>,
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
        put_addr(&mut b[4..], Some(self.dest));
        b
    }

    pub fn decode(b: &[u8]) -> Result<Request> {
        if b.len() != REQUEST_LEN || &b[..4] != REQUEST_MAGIC {
            return Err(Error::Protocol("fast-path request header"));
        }
        let dest =
            get_addr(&b[4..])?.ok_or(Error::Protocol("fast-path request without address"))?;
        Ok(Request { dest })
    }
}

impl Reply {
    pub fn pass() -> Reply {
        Reply {
            outcome: Outcome::Pass,
            local: None,
        }
    }

    pub fn failed(errno: i32) -> Reply {
        Reply {
            outcome: Outcome::Failed(errno),
            local: None,
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
        put_addr(&mut b[9..], self.local);
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
            local: get_addr(&b[9..])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply_round_trip() {
        for dest in ["127.0.0.1:8080", "[::1]:443", "10.1.2.3:1"] {
            let sut = Request {
                dest: dest.parse().unwrap(),
            };
            assert_eq!(Request::decode(&sut.encode()).unwrap(), sut);
        }
        for sut in [
            Reply {
                outcome: Outcome::Connected,
                local: Some("127.0.0.1:40000".parse().unwrap()),
            },
            Reply::pass(),
            Reply::failed(libc::ECONNREFUSED),
        ] {
            assert_eq!(Reply::decode(&sut.encode()).unwrap(), sut);
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let mut b = Request {
            dest: "127.0.0.1:1".parse().unwrap(),
        }
        .encode();
        b[4] = 9;
        assert!(Request::decode(&b).is_err());
        assert!(Request::decode(&b[..5]).is_err());
        let mut r = Reply::failed(111).encode();
        r[5..9].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(Reply::decode(&r).is_err());
        r[4] = 7;
        assert!(Reply::decode(&r).is_err());
    }
}
