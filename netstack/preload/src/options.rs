//! Socket addresses as the C structures' bytes, and the socket options a fast
//! connection answers itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Mutex;

/// Parses a `sockaddr_in` / `sockaddr_in6` given as bytes; `None` for other families.
pub fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes([*b.first()?, *b.get(1)?]));
    match family {
        libc::AF_INET if b.len() >= 16 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        libc::AF_INET6 if b.len() >= 28 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let flow = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[8..24]);
            let scope = u32::from_ne_bytes([b[24], b[25], b[26], b[27]]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(o),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// The bytes of the C structure for `a` (16 for IPv4, 28 for IPv6).
pub fn sockaddr_bytes(a: SocketAddr) -> Vec<u8> {
    match a {
        SocketAddr::V4(v4) => {
            let mut b = vec![0u8; 16];
            b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&v4.port().to_be_bytes());
            b[4..8].copy_from_slice(&v4.ip().octets());
            b
        }
        SocketAddr::V6(v6) => {
            let mut b = vec![0u8; 28];
            b[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&v6.port().to_be_bytes());
            b[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
            b[8..24].copy_from_slice(&v6.ip().octets());
            b[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
            b
        }
    }
}

/// Integer options set by the program, answered back on get (a fast
/// connection has no kernel socket to hold them).
#[derive(Debug, Default)]
pub struct Options(Mutex<Vec<(i32, i32, i32)>>);

impl Options {
    pub fn set(&self, level: i32, name: i32, value: i32) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = v.iter_mut().find(|(l, n, _)| *l == level && *n == name) {
            e.2 = value;
        } else if v.len() < 64 {
            // Bounded: a program sets a handful of distinct options.
            v.push((level, name, value));
        }
    }

    pub fn get(&self, level: i32, name: i32) -> Option<i32> {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .find(|(l, n, _)| *l == level && *n == name)
            .map(|e| e.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddrs_round_trip() {
        for a in ["127.0.0.1:8080", "[::1]:443", "10.1.2.3:1"] {
            let sut: SocketAddr = a.parse().unwrap();
            assert_eq!(parse_sockaddr(&sockaddr_bytes(sut)), Some(sut));
        }
        assert_eq!(parse_sockaddr(&[1, 0, 0, 0]), None);
        assert_eq!(
            parse_sockaddr(&sockaddr_bytes("[::1]:1".parse().unwrap())[..20]),
            None
        );
    }

    #[test]
    fn options_remember_the_last_value() {
        let sut = Options::default();
        assert_eq!(sut.get(6, 1), None);
        sut.set(6, 1, 1);
        sut.set(6, 1, 0);
        assert_eq!(sut.get(6, 1), Some(0));
    }
}
