//! Host-side traffic helpers. Traffic goes only to 127.0.0.0/8 or to Pod IPs on the
//! private CNI bridge (10.77.0.0/16); anything else is refused before connecting.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Subnet of the private containerd's CNI bridge `hp0`.
pub const POD_SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 77, 0, 0), 16);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// True for loopback or an address in [`POD_SUBNET`].
pub fn is_allowed_target(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX << (32 - POD_SUBNET.1);
            v4.is_loopback() || (u32::from(v4) & mask) == u32::from(POD_SUBNET.0)
        }
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// The Pod IP from a sandbox status.
pub fn pod_ip(status: &cri::PodSandboxStatusResponse) -> Result<IpAddr> {
    let ip = status
        .status
        .as_ref()
        .and_then(|s| s.network.as_ref())
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    ip.parse().with_context(|| format!("Pod IP {ip:?}"))
}

/// A TCP port that is free on 127.0.0.1 right now (used as a hostPort).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Plain HTTP/1.0 GET of `/` from `addr`; returns the body.
pub async fn http_get(addr: SocketAddr) -> Result<String> {
    if !is_allowed_target(addr.ip()) {
        bail!("refusing traffic to {addr}: only loopback and Pod IPs are allowed");
    }
    let mut s = timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect {addr}: timeout"))?
        .with_context(|| format!("connect {addr}"))?;
    let req = format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    timeout(IO_TIMEOUT, s.read_to_end(&mut buf))
        .await
        .with_context(|| format!("read {addr}: timeout"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP response from {addr}: {text:?}");
    };
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        bail!("HTTP error from {addr}: {head:?}");
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_targets_are_loopback_and_pod_subnet() {
        assert!(is_allowed_target("127.0.0.1".parse().unwrap()));
        assert!(is_allowed_target("10.77.3.4".parse().unwrap()));
        assert!(!is_allowed_target("10.78.0.1".parse().unwrap()));
        assert!(!is_allowed_target("8.8.8.8".parse().unwrap()));
    }

    #[tokio::test]
    async fn http_get_refuses_outside_targets() {
        let err = http_get("192.0.2.1:80".parse().unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("refusing"));
    }
}
