//! UDP relaying for connected flows (DNS from the DPU half).
//!
//! A forwarded resolver address gets a UDP socket in this half (bound directly
//! for loopback addresses, or an iptables REDIRECT target otherwise). Each client
//! address becomes one mux stream of proto UDP towards the real destination;
//! datagrams travel over it length-prefixed (u16, big endian). The other relay
//! sends them from its half with a connected UDP socket and returns the replies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::counters::Counters;
use super::error::{Error, Result};

/// Largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65507;
/// Concurrent client flows per forwarded address; datagrams of new clients
/// beyond it are dropped (bounded memory whatever the half sends).
pub const MAX_FLOWS: usize = 1024;
/// A flow with no traffic this long is closed.
pub const FLOW_IDLE: Duration = Duration::from_secs(30);

/// Reads one length-prefixed datagram; `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Result<Option<()>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::io("read UDP frame", e)),
    }
    let n = usize::from(u16::from_be_bytes(len));
    if n > MAX_DATAGRAM {
        return Err(Error::UdpFrame(n));
    }
    buf.resize(n, 0);
    r.read_exact(buf)
        .await
        .map_err(|e| Error::io("read UDP frame", e))?;
    Ok(Some(()))
}

/// Writes one datagram as a frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> Result<()> {
    if data.len() > MAX_DATAGRAM {
        return Err(Error::UdpFrame(data.len()));
    }
    let mut frame = Vec::with_capacity(data.len() + 2);
    frame.extend_from_slice(&(data.len() as u16).to_be_bytes());
    frame.extend_from_slice(data);
    w.write_all(&frame)
        .await
        .map_err(|e| Error::io("write UDP frame", e))?;
    w.flush().await.map_err(|e| Error::io("flush UDP frame", e))
}

/// Opens a stream towards the real destination of a flow.
pub type OpenFlow<S> = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<S>> + Send>>
        + Send
        + Sync,
>;

/// Serves one forwarded UDP address: every client gets its own stream.
pub async fn serve_local<S>(sock: UdpSocket, open: OpenFlow<S>, counters: Arc<Counters>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let sock = Arc::new(sock);
    let flows: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>> = Arc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "UDP receive failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        Counters::inc(&counters.udp_datagrams_out);
        let tx = {
            let f = flows.lock().unwrap_or_else(|e| e.into_inner());
            f.get(&client).filter(|t| !t.is_closed()).cloned()
        };
        let tx = match tx {
            Some(t) => t,
            None => {
                if flows.lock().unwrap_or_else(|e| e.into_inner()).len() >= MAX_FLOWS {
                    tracing::debug!(%client, "too many UDP flows, dropping datagram");
                    continue;
                }
                let (t, rx) = mpsc::channel(64);
                flows
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(client, t.clone());
                let (sock, open, flows, counters) =
                    (sock.clone(), open.clone(), flows.clone(), counters.clone());
                tokio::spawn(async move {
                    if let Err(e) = local_flow(sock, client, rx, open, &counters).await {
                        tracing::debug!(%client, error = %e, "UDP flow ended");
                    }
                    flows
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&client);
                });
                t
            }
        };
        // A full queue drops the datagram, as a congested network would.
        let _ = tx.try_send(buf[..n].to_vec());
    }
}

async fn local_flow<S>(
    sock: Arc<UdpSocket>,
    client: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
    open: OpenFlow<S>,
    counters: &Counters,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let stream = open().await?;
    let (mut r, mut w) = tokio::io::split(stream);
    let replies = async {
        let mut buf = Vec::new();
        while read_frame(&mut r, &mut buf).await?.is_some() {
            Counters::inc(&counters.udp_datagrams_in);
            let _ = sock.send_to(&buf, client).await;
        }
        Ok::<(), Error>(())
    };
    let requests = async {
        while let Ok(Some(d)) = tokio::time::timeout(FLOW_IDLE, rx.recv()).await {
            write_frame(&mut w, &d).await?;
        }
        let _ = w.shutdown().await;
        Ok::<(), Error>(())
    };
    tokio::select! {
        r = replies => r,
        r = requests => r,
    }
}

/// The other end: sends the flow's datagrams to `dest` from a connected socket
/// in this half and returns the replies over the stream.
pub async fn serve_remote<S>(stream: S, sock: UdpSocket, counters: Arc<Counters>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let to_dest = async {
        let mut buf = Vec::new();
        while read_frame(&mut r, &mut buf).await?.is_some() {
            Counters::inc(&counters.udp_datagrams_out);
            let _ = sock.send(&buf).await;
        }
        Ok::<(), Error>(())
    };
    let from_dest = async {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            match tokio::time::timeout(FLOW_IDLE, sock.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    Counters::inc(&counters.udp_datagrams_in);
                    write_frame(&mut w, &buf[..n]).await?;
                }
                // ICMP errors (port unreachable) are not fatal for a flow.
                Ok(Err(_)) => continue,
                Err(_) => return Ok::<(), Error>(()),
            }
        }
    };
    tokio::select! {
        r = to_dest => r,
        r = from_dest => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_rejected() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write_frame(&mut a, b"hello").await.unwrap();
        drop(a);
        let mut buf = Vec::new();
        assert!(read_frame(&mut b, &mut buf).await.unwrap().is_some());
        assert_eq!(buf, b"hello");
        assert!(read_frame(&mut b, &mut buf).await.unwrap().is_none());
        let (mut sut, _) = tokio::io::duplex(16);
        assert!(write_frame(&mut sut, &vec![0u8; MAX_DATAGRAM + 1])
            .await
            .is_err());
    }
}
