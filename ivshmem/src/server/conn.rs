//! One peer connection: deliver its queued messages, notice when it goes.

use std::os::fd::AsFd;

use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::peers::Outgoing;
use super::{lock, Table};
use crate::proto;

/// Serves peer `id` until it disconnects, misbehaves or is dropped.
pub(super) async fn serve(
    id: u16,
    stream: UnixStream,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    table: Table,
) {
    let why = loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some((value, fd)) => {
                    let fd = fd.as_ref().map(|f| f.as_fd());
                    if let Err(e) = proto::send(&stream, value, fd).await {
                        break e.to_string();
                    }
                }
                None => break "removed by the server".to_string(),
            },
            ready = stream.readable() => {
                if let Err(e) = ready {
                    break e.to_string();
                }
                let mut buf = [0u8; 64];
                match stream.try_read(&mut buf) {
                    Ok(0) => break "disconnected".to_string(),
                    // The protocol is one way; a client that talks is not a peer.
                    Ok(_) => break "sent data to the server (protocol violation)".to_string(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => break e.to_string(),
                }
            }
        }
    };
    if lock(&table).leave(id) {
        tracing::info!(peer = id, reason = %why, "peer left");
    }
}
