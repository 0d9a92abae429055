//! TCP transport (a DPU reached over the network, or the QEMU guest's
//! forward on the host's loopback). Always authenticated: both ends prove
//! they hold the node key before ttrpc starts (see `crate::auth`).
use std::{io, sync::Arc};

use tokio::net::{TcpListener, TcpStream};
use ttrpc::r#async::transport::{Listener, Socket};

use super::gate::{Gate, ACCEPT_BACKOFF};
use crate::auth::{agent_handshake, client_handshake, AuthError, AuthKey};

/// Connects and authenticates.
pub async fn connect(host_port: &str, key: &AuthKey) -> Result<Socket, AuthError> {
    let mut s = TcpStream::connect(host_port).await?;
    // Small request/response messages: do not wait to coalesce them.
    s.set_nodelay(true)?;
    client_handshake(&mut s, key).await?;
    Ok(Socket::from(s))
}

pub async fn listen(host_port: &str, key: Arc<AuthKey>) -> io::Result<Listener> {
    let listener = TcpListener::bind(host_port).await?;
    let (gate, served) = Gate::new(format!("tcp://{host_port}"));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = gate.closed() => return,
                a = listener.accept() => a,
            };
            let (mut stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let key = key.clone();
            gate.admit(peer.to_string(), async move {
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                agent_handshake(&mut stream, &key)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Socket::from(stream))
            });
        }
    });
    Ok(served)
}
