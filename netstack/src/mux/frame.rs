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

/// Largest encoded [`Destination`]: proto, flags, three v6 addresses, owner.
pub const OPEN_MAX: usize = 64;

const HAS_SRC: u8 = 1;
const HAS_ORIG: u8 = 2;
const HAS_OWNER: u8 = 4;
const ROUND_TRIP: u8 = 8;

/// Where a stream goes: protocol, the address to connect to in the peer half,
/// and what the peer needs to make that connection look like the captured one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    pub proto: Proto,
    pub addr: SocketAddr,
    /// The connecting socket's address, when known.
    pub src: Option<SocketAddr>,
    /// Where the connection was going before the Pod's own iptables rules
    /// redirected it to `addr` (a mesh sidecar's capture port): the peer
    /// delivers it so that the listener's `SO_ORIGINAL_DST` says this.
    pub orig: Option<SocketAddr>,
    /// Owner (uid) of the connecting socket, so the peer's socket matches the
    /// Pod's `-m owner` rules the same way (a sidecar's own traffic).
    pub owner: Option<u32>,
    /// The connection was made by the relay pair itself (re-made for the
    /// other half) and then captured again by the Pod's rules.
    pub round_trip: bool,
}

impl Destination {
    pub fn new(proto: Proto, addr: SocketAddr) -> Destination {
        Destination {
            proto,
            addr,
            src: None,
            orig: None,
            owner: None,
            round_trip: false,
        }
    }

    pub fn tcp(addr: SocketAddr) -> Destination {
        Destination::new(Proto::Tcp, addr)
    }

    pub fn udp(addr: SocketAddr) -> Destination {
        Destination::new(Proto::Udp, addr)
    }

    pub fn with_src(mut self, src: SocketAddr) -> Destination {
        self.src = Some(src);
        self
    }

    pub fn with_orig(mut self, orig: SocketAddr) -> Destination {
        self.orig = Some(orig);
        self
    }

    pub fn with_owner(mut self, uid: u32) -> Destination {
        self.owner = Some(uid);
        self
    }

    pub fn with_round_trip(mut self) -> Destination {
        self.round_trip = true;
        self
    }

    /// Encodes into `out`; returns the used length (at most [`OPEN_MAX`]).
    pub fn encode(&self, out: &mut [u8; OPEN_MAX]) -> usize {
        out[0] = match self.proto {
            Proto::Tcp => 0,
            Proto::Udp => 1,
        };
        let mut flags = 0;
        let mut n = 2;
        n += put_addr(&self.addr, &mut out[n..]);
        if let Some(src) = &self.src {
            flags |= HAS_SRC;
            n += put_addr(src, &mut out[n..]);
        }
        if let Some(orig) = &self.orig {
            flags |= HAS_ORIG;
            n += put_addr(orig, &mut out[n..]);
        }
        if let Some(uid) = self.owner {
            flags |= HAS_OWNER;
            out[n..n + 4].copy_from_slice(&uid.to_le_bytes());
            n += 4;
        }
        if self.round_trip {
            flags |= ROUND_TRIP;
        }
        out[1] = flags;
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
        let flags = b[1];
        if flags & !(HAS_SRC | HAS_ORIG | HAS_OWNER | ROUND_TRIP) != 0 {
            return Err(bad);
        }
        let mut at = 2;
        let mut next = |what: &'static str| -> Result<SocketAddr> {
            let (a, used) =
                get_addr(b.get(at..).unwrap_or_default()).ok_or(Error::Protocol(what))?;
            at += used;
            Ok(a)
        };
        let addr = next("bad open address")?;
        let src = (flags & HAS_SRC != 0)
            .then(|| next("bad open source"))
            .transpose()?;
        let orig = (flags & HAS_ORIG != 0)
            .then(|| next("bad open original destination"))
            .transpose()?;
        let owner = if flags & HAS_OWNER != 0 {
            let w = b.get(at..at + 4).ok_or(Error::Protocol("bad open owner"))?;
            Some(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        } else {
            None
        };
        Ok(Destination {
            proto,
            addr,
            src,
            orig,
            owner,
            round_trip: flags & ROUND_TRIP != 0,
        })
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
            Destination::tcp("[::1]:15001".parse().unwrap())
                .with_src("[::2]:2".parse().unwrap())
                .with_orig("[fd00::9]:8080".parse().unwrap())
                .with_owner(1337)
                .with_round_trip(),
            Destination::tcp("127.0.0.1:15006".parse().unwrap())
                .with_orig("10.88.0.5:8080".parse().unwrap()),
        ];
        for d in cases {
            let mut b = [0u8; OPEN_MAX];
            let n = d.encode(&mut b);
            assert_eq!(Destination::decode(&b[..n]).unwrap(), d);
        }
    }

    #[test]
    fn truncated_open_frames_are_errors() {
        let d = Destination::tcp("[::1]:8080".parse().unwrap())
            .with_src("[::2]:1".parse().unwrap())
            .with_orig("[::3]:2".parse().unwrap())
            .with_owner(7);
        let mut b = [0u8; OPEN_MAX];
        let n = d.encode(&mut b);
        for cut in 0..n {
            assert!(Destination::decode(&b[..cut]).is_err());
        }
    }

    #[test]
    fn unknown_open_flags_are_errors() {
        let mut b = [0u8; OPEN_MAX];
        let n = Destination::tcp("127.0.0.1:1".parse().unwrap()).encode(&mut b);
        b[1] = 16;
        assert!(Destination::decode(&b[..n]).is_err());
    }
}
