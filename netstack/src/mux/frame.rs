//! Mux frames: an 8-byte header (kind, flags, reserved, stream id) and a payload.
//!
//! Frames are decoded from private copies, so any byte pattern is safe to parse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::{Error, Result};

pub const HDR: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Open = 1,
    Data = 2,
    Fin = 3,
    Rst = 4,
    Window = 5,
    Control = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Open,
            2 => Kind::Data,
            3 => Kind::Fin,
            4 => Kind::Rst,
            5 => Kind::Window,
            6 => Kind::Control,
            _ => return None,
        })
    }
}

pub fn header(kind: Kind, stream: u32) -> [u8; HDR] {
    let s = stream.to_le_bytes();
    [kind as u8, 0, 0, 0, s[0], s[1], s[2], s[3]]
}

/// Parses a frame header.
pub fn parse_header(h: &[u8]) -> Result<(Kind, u32)> {
    if h.len() < HDR {
        return Err(Error::Protocol("frame shorter than its header"));
    }
    let kind = Kind::from_u8(h[0]).ok_or(Error::Protocol("unknown frame kind"))?;
    Ok((kind, u32::from_le_bytes([h[4], h[5], h[6], h[7]])))
}

/// Transport protocol of a stream's original destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Where a stream goes: protocol, original destination, optional original source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub src: Option<SocketAddr>,
}

impl Destination {
    pub fn new(proto: Proto, addr: SocketAddr) -> Destination {
        Destination {
            proto,
            addr,
            src: None,
        }
    }

    pub fn tcp(addr: SocketAddr) -> Destination {
        Destination {
            proto: Proto::Tcp,
            addr,
            src: None,
        }
    }

    pub fn udp(addr: SocketAddr) -> Destination {
        Destination {
            proto: Proto::Udp,
            addr,
            src: None,
        }
    }

    pub fn with_src(mut self, src: SocketAddr) -> Destination {
        self.src = Some(src);
        self
    }

    /// Encodes into `out`; returns the used length (at most 40 bytes).
    pub fn encode(&self, out: &mut [u8; 40]) -> usize {
        out[0] = match self.proto {
            Proto::Tcp => 0,
            Proto::Udp => 1,
        };
        out[1] = u8::from(self.src.is_some());
        let mut n = 2;
        n += put_addr(&self.addr, &mut out[n..]);
        if let Some(src) = &self.src {
            n += put_addr(src, &mut out[n..]);
        }
        n
    }

    pub fn decode(b: &[u8]) -> Result<Destination> {
        let bad = Error::Protocol("bad open frame");
        if b.len() < 2 {
            return Err(bad);
        }
        let proto = match b[0] {
            0 => Proto::Tcp,
            1 => Proto::Udp,
            _ => return Err(bad),
        };
        let (addr, used) = get_addr(&b[2..]).ok_or(Error::Protocol("bad open address"))?;
        let src = match b[1] {
            0 => None,
            1 => Some(
                get_addr(&b[2 + used..])
                    .ok_or(Error::Protocol("bad open source"))?
                    .0,
            ),
            _ => return Err(bad),
        };
        Ok(Destination { proto, addr, src })
    }
}

fn put_addr(a: &SocketAddr, out: &mut [u8]) -> usize {
    match a.ip() {
        IpAddr::V4(ip) => {
            out[0] = 4;
            out[1..5].copy_from_slice(&ip.octets());
            out[5..7].copy_from_slice(&a.port().to_le_bytes());
            7
        }
        IpAddr::V6(ip) => {
            out[0] = 6;
            out[1..17].copy_from_slice(&ip.octets());
            out[17..19].copy_from_slice(&a.port().to_le_bytes());
            19
        }
    }
}

fn get_addr(b: &[u8]) -> Option<(SocketAddr, usize)> {
    match *b.first()? {
        4 => {
            let o: [u8; 4] = b.get(1..5)?.try_into().ok()?;
            let p = u16::from_le_bytes(b.get(5..7)?.try_into().ok()?);
            Some((SocketAddr::new(Ipv4Addr::from(o).into(), p), 7))
        }
        6 => {
            let o: [u8; 16] = b.get(1..17)?.try_into().ok()?;
            let p = u16::from_le_bytes(b.get(17..19)?.try_into().ok()?);
            Some((SocketAddr::new(Ipv6Addr::from(o).into(), p), 19))
        }
        _ => None,
    }
}

/// A frame queued for later sending (control path only; data never queues).
#[derive(Debug)]
pub struct QueuedFrame {
    pub hdr: [u8; HDR],
    pub small: [u8; 40],
    pub small_len: u8,
    pub big: Option<Vec<u8>>,
}

impl QueuedFrame {
    pub fn new(kind: Kind, stream: u32) -> QueuedFrame {
        QueuedFrame {
            hdr: header(kind, stream),
            small: [0; 40],
            small_len: 0,
            big: None,
        }
    }

    pub fn window(stream: u32, grant: u32) -> QueuedFrame {
        let mut f = QueuedFrame::new(Kind::Window, stream);
        f.small[..4].copy_from_slice(&grant.to_le_bytes());
        f.small_len = 4;
        f
    }

    pub fn payload(&self) -> &[u8] {
        match &self.big {
            Some(v) => v,
            None => &self.small[..usize::from(self.small_len)],
        }
    }
}

/// Decodes a frame from bytes (header + payload), for fuzzing and tests.
pub fn decode_frame(b: &[u8]) -> Result<(Kind, u32, &[u8])> {
    let (kind, id) = parse_header(b)?;
    let payload = &b[HDR..];
    match kind {
        Kind::Open => {
            Destination::decode(payload)?;
        }
        Kind::Window if payload.len() != 4 => return Err(Error::Protocol("bad window frame")),
        Kind::Fin | Kind::Rst if !payload.is_empty() => {
            return Err(Error::Protocol("unexpected payload"))
        }
        _ => {}
    }
    Ok((kind, id, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_round_trips_v4_v6_with_and_without_source() {
        let cases = [
            Destination::tcp("127.0.0.1:80".parse().unwrap()),
            Destination::udp("[::1]:53".parse().unwrap())
                .with_src("10.0.0.2:5000".parse().unwrap()),
            Destination::tcp("[fe80::1]:1".parse().unwrap()).with_src("[::2]:2".parse().unwrap()),
        ];
        for d in cases {
            let mut b = [0u8; 40];
            let n = d.encode(&mut b);
            assert_eq!(Destination::decode(&b[..n]).unwrap(), d);
        }
    }

    #[test]
    fn truncated_open_frames_are_errors() {
        let d =
            Destination::tcp("[::1]:8080".parse().unwrap()).with_src("[::2]:1".parse().unwrap());
        let mut b = [0u8; 40];
        let n = d.encode(&mut b);
        for cut in 0..n {
            assert!(Destination::decode(&b[..cut]).is_err());
        }
    }
}
