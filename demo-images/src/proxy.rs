//! The Envoy-like TCP proxy: every downstream connection gets its own upstream
//! connection and bytes are copied both ways until each side closes (half-closes are
//! passed on). Counters are kept live, like Envoy's `downstream_cx_*` stats.
//!
//! The upstream is either a fixed address (an addressed proxy) or, as a mesh sidecar
//! behind the Pod's capture rules, where each connection was going before the rules
//! redirected it (`SO_ORIGINAL_DST`, as Envoy's `original_dst` listener filter reads it).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BUF: usize = 16 * 1024;

/// Where a downstream connection's upstream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Always this address.
    Fixed(SocketAddr),
    /// The connection's original destination (outbound capture).
    Original,
    /// 127.0.0.1 at the original destination's port: inbound capture, for the
    /// app in the same Pod.
    OriginalPortLocal,
}

impl std::str::FromStr for Upstream {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "original" => Ok(Upstream::Original),
            "original-local" => Ok(Upstream::OriginalPortLocal),
            addr => addr.parse().map(Upstream::Fixed),
        }
    }
}

impl Upstream {
    /// The address to connect to for `down`.
    pub fn resolve(&self, down: &TcpStream) -> std::io::Result<SocketAddr> {
        match self {
            Upstream::Fixed(a) => Ok(*a),
            Upstream::Original => original_dst(down),
            Upstream::OriginalPortLocal => {
                original_dst(down).map(|o| SocketAddr::from(([127, 0, 0, 1], o.port())))
            }
        }
    }
}

/// Where a redirected connection was going (IPv4 `SO_ORIGINAL_DST`).
fn original_dst(down: &TcpStream) -> std::io::Result<SocketAddr> {
    let sin = nix::sys::socket::getsockopt(down, nix::sys::socket::sockopt::OriginalDst)
        .map_err(std::io::Error::from)?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
    Ok(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
}

/// Live proxy counters.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    pub upstream_connect_failed: AtomicU64,
    pub bytes_downstream_to_upstream: AtomicU64,
    pub bytes_upstream_to_downstream: AtomicU64,
}

impl ProxyStats {
    /// The counters as one JSON object.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"connections_total\":{},\"connections_active\":{},\"upstream_connect_failed\":{},\
             \"bytes_downstream_to_upstream\":{},\"bytes_upstream_to_downstream\":{}}}",
            self.connections_total.load(Relaxed),
            self.connections_active.load(Relaxed),
            self.upstream_connect_failed.load(Relaxed),
            self.bytes_downstream_to_upstream.load(Relaxed),
            self.bytes_upstream_to_downstream.load(Relaxed),
        )
    }
}

/// Proxies every connection accepted on `listener` to `upstream`, forever; `log` gets
/// one line per finished connection (with the totals so far).
pub fn serve(
    listener: TcpListener,
    upstream: Upstream,
    stats: Arc<ProxyStats>,
    log: impl Fn(String) + Send + Sync + 'static,
) -> std::io::Result<()> {
    let log = Arc::new(log);
    loop {
        let (down, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        };
        let (stats, log) = (stats.clone(), log.clone());
        std::thread::spawn(move || {
            stats.connections_total.fetch_add(1, Relaxed);
            stats.connections_active.fetch_add(1, Relaxed);
            let target = upstream.resolve(&down);
            let outcome = match &target {
                Ok(to) => proxy_conn(down, *to, &stats),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            stats.connections_active.fetch_sub(1, Relaxed);
            let what = match outcome {
                Ok((up, down)) => format!("closed, {up} bytes up, {down} bytes down"),
                Err(e) => format!("failed: {e}"),
            };
            let to = target.map_or_else(|e| format!("(no upstream: {e})"), |t| t.to_string());
            log(format!(
                "proxy: {peer} -> {to} {what}; totals {}",
                stats.to_json()
            ));
        });
    }
}

/// Joins one downstream connection to a new upstream connection; returns the bytes
/// copied each way.
fn proxy_conn(
    down: TcpStream,
    upstream: SocketAddr,
    stats: &ProxyStats,
) -> std::io::Result<(u64, u64)> {
    let up = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT).inspect_err(|_| {
        stats.upstream_connect_failed.fetch_add(1, Relaxed);
    })?;
    // Request/response traffic: small writes must leave at once.
    down.set_nodelay(true)?;
    up.set_nodelay(true)?;
    let (down2, up2) = (down.try_clone()?, up.try_clone()?);
    std::thread::scope(|s| {
        let back = s.spawn(|| copy(up2, down2, &stats.bytes_upstream_to_downstream));
        let forth = copy(down, up, &stats.bytes_downstream_to_upstream);
        let back = back.join().unwrap_or(0);
        Ok((forth, back))
    })
}

/// Copies `from` to `to` until EOF or an error, counting bytes live; passes EOF on as a
/// half-close and an error as a full close of both sockets.
fn copy(mut from: TcpStream, mut to: TcpStream, counter: &AtomicU64) -> u64 {
    let mut buf = vec![0u8; BUF];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return total;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
        counter.fetch_add(n as u64, Relaxed);
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_parse_as_modes_or_addresses() {
        assert_eq!("original".parse(), Ok(Upstream::Original));
        assert_eq!("original-local".parse(), Ok(Upstream::OriginalPortLocal));
        assert_eq!(
            "10.0.0.1:80".parse(),
            Ok(Upstream::Fixed("10.0.0.1:80".parse().unwrap()))
        );
        assert!("nowhere".parse::<Upstream>().is_err());
    }

    #[test]
    fn a_connection_nobody_redirected_goes_where_it_was_sent() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (down, _) = l.accept().unwrap();
        // Conntrack answers with the connection's own destination (ENOENT
        // where conntrack is not loaded).
        match Upstream::Original.resolve(&down) {
            Ok(a) => assert_eq!(a, l.local_addr().unwrap()),
            Err(e) => assert_eq!(e.raw_os_error(), Some(nix::libc::ENOENT)),
        }
        let fixed: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(Upstream::Fixed(fixed).resolve(&down).unwrap(), fixed);
    }
}
