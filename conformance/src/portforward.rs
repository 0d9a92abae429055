//! PortForward through the CRI streaming server over WebSocket.
//!
//! With `v4.channel.k8s.io` each forwarded port gets two channels: data (2n) and error
//! (2n+1). The server first writes the port number (2 bytes, little endian) on both;
//! after that, channel 2n carries the TCP stream in both directions.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::stream::Session;

const PREFIX: usize = 2;

/// A port-forward session for one port.
pub struct PortForward {
    session: Session,
    port: u16,
}

impl PortForward {
    /// Opens the URL returned by PortForward for `port` (passed as the `port` query).
    pub async fn connect(url: &str, port: u16) -> Result<Self> {
        let sep = if url.contains('?') { '&' } else { '?' };
        let session = Session::connect(&format!("{url}{sep}port={port}")).await?;
        Ok(Self { session, port })
    }

    /// Writes bytes to the forwarded TCP connection.
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        self.session.send_channel(0, data).await
    }

    /// Bytes received from the forwarded connection (after the port prefix).
    pub fn data(&self) -> &[u8] {
        self.session
            .output()
            .channel0
            .get(PREFIX..)
            .unwrap_or_default()
    }

    /// Error text from the server (after the port prefix).
    pub fn error(&self) -> String {
        let raw = &self.session.output().stdout;
        String::from_utf8_lossy(raw.get(PREFIX..).unwrap_or_default()).into_owned()
    }

    /// Reads until the received data contains `needle`; fails on a server error.
    pub async fn read_until(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let port = self.port;
        let res = self
            .session
            .read_until_with(needle, timeout, |out| {
                let data = out.channel0.get(PREFIX..).unwrap_or_default();
                let err = out.stdout.len() > PREFIX;
                err || String::from_utf8_lossy(data).contains(needle)
            })
            .await;
        let err = self.error();
        if !err.is_empty() {
            bail!("port-forward to {port} failed: {err}");
        }
        res
    }

    /// Checks the server announced the port we asked for.
    pub fn announced_port(&self) -> Option<u16> {
        let d = &self.session.output().channel0;
        (d.len() >= PREFIX).then(|| u16::from_le_bytes([d[0], d[1]]))
    }

    /// Closes the session.
    pub async fn close(self) -> Result<()> {
        self.session.close().await.map(|_| ())
    }
}
