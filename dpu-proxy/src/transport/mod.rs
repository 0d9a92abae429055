//! Where the agent listens and the client connects, chosen by URL scheme:
//! `unix:///path` (emulated DPU), `tcp://host:port` (a DPU on the network),
//! `vsock://cid:port` (a DPU guest).
mod tcp;
mod unix;

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use ttrpc::r#async::transport::{Listener, Socket};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
    /// `cid:port`.
    Vsock(u32, u32),
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Endpoint> {
        let bad = |why: &str| Error::InvalidArgument(format!("agent address {s:?}: {why}"));
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("unix socket path must be absolute (unix:///path)"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(hp) = s.strip_prefix("tcp://") {
            let (host, port) = hp
                .rsplit_once(':')
                .ok_or_else(|| bad("want tcp://host:port"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad("want tcp://host:port with a port in 0..=65535"));
            }
            return Ok(Endpoint::Tcp(hp.to_string()));
        }
        if let Some(cp) = s.strip_prefix("vsock://") {
            let (cid, port) = cp
                .split_once(':')
                .ok_or_else(|| bad("want vsock://cid:port"))?;
            let cid = cid.parse().map_err(|_| bad("bad vsock cid"))?;
            let port = port.parse().map_err(|_| bad("bad vsock port"))?;
            return Ok(Endpoint::Vsock(cid, port));
        }
        Err(bad("unsupported scheme (want unix://, tcp:// or vsock://)"))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(hp) => write!(f, "tcp://{hp}"),
            Endpoint::Vsock(c, p) => write!(f, "vsock://{c}:{p}"),
        }
    }
}

impl Endpoint {
    /// Connects within `timeout`; any failure is `DpuUnreachable`.
    pub async fn connect(&self, timeout: Duration) -> Result<Socket> {
        let unreachable = |reason: String| Error::DpuUnreachable {
            address: self.to_string(),
            reason,
        };
        let fut = async {
            match self {
                Endpoint::Unix(p) => unix::connect(p).await,
                Endpoint::Tcp(hp) => tcp::connect(hp).await,
                Endpoint::Vsock(..) => Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "vsock goes through ttrpc's own connect",
                )),
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!("no connection within {timeout:?}"))),
        }
    }

    /// Binds a listener (a stale Unix socket file is replaced).
    pub async fn listen(&self) -> Result<Listener> {
        let r = match self {
            Endpoint::Unix(p) => unix::listen(p),
            Endpoint::Tcp(hp) => tcp::listen(hp).await,
            Endpoint::Vsock(..) => Listener::bind(self.to_string()),
        };
        r.map_err(Error::io(format!("listen on {self}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_by_scheme() {
        assert_eq!(
            "unix:///run/a.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/a.sock".into())
        );
        assert_eq!(
            "tcp://127.0.0.1:7000".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:7000".into())
        );
        assert_eq!(
            "tcp://[::1]:7000".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("[::1]:7000".into())
        );
        assert_eq!(
            "vsock://3:1024".parse::<Endpoint>().unwrap(),
            Endpoint::Vsock(3, 1024)
        );
        for s in ["unix:///x", "tcp://h:1", "vsock://3:4"] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_urls_are_invalid_arguments() {
        for s in [
            "",
            "/run/a.sock",
            "unix://rel.sock",
            "tcp://host",
            "tcp://:1",
            "tcp://h:99999",
            "http://h:1",
            "vsock://x:1",
        ] {
            assert!(
                matches!(s.parse::<Endpoint>(), Err(Error::InvalidArgument(_))),
                "{s}"
            );
        }
    }
}
