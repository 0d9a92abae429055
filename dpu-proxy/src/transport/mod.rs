//! Where the agent listens and the client connects, chosen by URL scheme:
//! `unix:///path` (emulated DPU), `tcp://host:port` (a DPU on the network),
//! `vsock://cid:port` (a DPU guest). Who may connect: Unix peers by their
//! uid, network peers by the node key (see [`Access`]).
mod gate;
mod tcp;
mod unix;

use std::{fmt, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use ttrpc::r#async::transport::{Listener, Socket};

use crate::{
    auth::{agent_handshake, client_handshake, AuthError, AuthKey},
    error::{Error, Result},
};

/// Who may use the agent. Unix sockets: root, the agent's own user and
/// `allow_uids` (SO_PEERCRED). Network transports: clients holding `key`;
/// without a key the agent serves none.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub key: Option<Arc<AuthKey>>,
    pub allow_uids: Vec<u32>,
}

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
    /// Whether this transport crosses a network (and so needs the node key).
    pub fn is_network(&self) -> bool {
        !matches!(self, Endpoint::Unix(_))
    }

    /// Connects within `timeout`, authenticating network transports with
    /// `key`. Failing to reach the agent is `DpuUnreachable`; reaching
    /// something that does not prove it holds the key, or refuses ours, is
    /// `Unauthenticated`.
    pub async fn connect(&self, timeout: Duration, key: Option<&AuthKey>) -> Result<Socket> {
        let address = self.to_string();
        let key = match (self.is_network(), key) {
            (true, None) => {
                return Err(Error::InvalidArgument(format!(
                    "{address}: the agent authenticates network clients; name the node's key file \
                     ([dpu] key_file)"
                )))
            }
            (_, key) => key,
        };
        let fut = async {
            match (self, key) {
                (Endpoint::Unix(p), _) => unix::connect(p).await.map_err(AuthError::Io),
                (Endpoint::Tcp(hp), Some(key)) => tcp::connect(hp, key).await,
                (Endpoint::Vsock(..), Some(key)) => {
                    let mut s = Socket::connect(&address).await?;
                    client_handshake(&mut s, key).await?;
                    Ok(Socket::new(s))
                }
                (_, None) => unreachable!("network endpoints have a key here"),
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(AuthError::Io(e))) => Err(Error::DpuUnreachable {
                address,
                reason: e.to_string(),
            }),
            Ok(Err(e)) => Err(Error::Unauthenticated {
                address,
                reason: e.to_string(),
            }),
            Err(_) => Err(Error::DpuUnreachable {
                address,
                reason: format!("no connection within {timeout:?}"),
            }),
        }
    }

    /// Binds a listener (a stale Unix socket file is replaced). Network
    /// transports without a key in `access` are refused: the agent never
    /// serves an unauthenticated remote transport.
    pub async fn listen(&self, access: &Access) -> Result<Listener> {
        let key = match (self.is_network(), &access.key) {
            (true, None) => {
                return Err(Error::InvalidArgument(format!(
                    "listen on {self}: a network listener needs the node key ([access] key_file); \
                     the agent serves no unauthenticated network transport"
                )))
            }
            (_, key) => key.clone(),
        };
        let r = match (self, key) {
            (Endpoint::Unix(p), _) => unix::listen(p, access.allow_uids.clone()),
            (Endpoint::Tcp(hp), Some(key)) => tcp::listen(hp, key).await,
            (Endpoint::Vsock(..), Some(key)) => {
                Listener::bind(self.to_string()).map(|l| authenticated(l, self.to_string(), key))
            }
            (_, None) => unreachable!("network endpoints have a key here"),
        };
        r.map_err(Error::io(format!("listen on {self}")))
    }
}

/// A listener whose connections are served only after the key handshake
/// (vsock: ttrpc accepts them, we authenticate).
fn authenticated(mut inner: Listener, address: String, key: Arc<AuthKey>) -> Listener {
    use futures::StreamExt;
    let (gate, served) = gate::Gate::new(address);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = gate.closed() => return,
                a = inner.next() => a,
            };
            match accepted {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(gate::ACCEPT_BACKOFF).await;
                }
                Some(Ok(mut s)) => {
                    let key = key.clone();
                    gate.admit("vsock peer".into(), async move {
                        agent_handshake(&mut s, &key)
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok(Socket::new(s))
                    });
                }
            }
        }
    });
    served
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
