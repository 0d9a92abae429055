//! Streaming Exec/Attach through the CRI streaming server over WebSocket.
//!
//! containerd's streaming server (the kubelet `remotecommand` server) accepts WebSocket
//! upgrades besides SPDY. With sub-protocol `v4.channel.k8s.io` every binary frame starts
//! with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 status (a JSON `metav1.Status`),
//! 4 terminal resize (JSON `{"Width":w,"Height":h}`). v4 has no stdin half-close, so
//! commands that read stdin must stop on their own (e.g. after one line).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The channel sub-protocol we speak.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Everything the server sent until the session ended.
#[derive(Debug, Default, Clone)]
pub struct StreamOutput {
    /// Bytes on the stdout channel (the terminal, with a TTY).
    pub stdout: Vec<u8>,
    /// Bytes on the stderr channel.
    pub stderr: Vec<u8>,
    /// Raw status JSON (channel 3), if any was sent.
    pub status: Option<String>,
    /// Bytes the server sent on channel 0 (port-forward data; unused by exec/attach).
    pub channel0: Vec<u8>,
}

impl StreamOutput {
    /// stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Exit code from the status channel: `Success` is 0, `NonZeroExitCode` carries it
    /// in `details.causes[reason=ExitCode].message`.
    pub fn exit_code(&self) -> Result<i32> {
        let raw = self
            .status
            .as_deref()
            .context("no status frame from the streaming server")?;
        parse_exit_code(raw)
    }
}

/// Parses a v4 status frame into an exit code.
pub fn parse_exit_code(raw: &str) -> Result<i32> {
    let v: serde_json::Value =
        serde_json::from_str(raw).with_context(|| format!("status JSON {raw:?}"))?;
    match v.get("status").and_then(|s| s.as_str()) {
        Some("Success") => Ok(0),
        Some("Failure") if v.get("reason").and_then(|r| r.as_str()) == Some("NonZeroExitCode") => {
            let causes = v
                .pointer("/details/causes")
                .and_then(|c| c.as_array())
                .context("NonZeroExitCode without causes")?;
            let code = causes
                .iter()
                .find(|c| c.get("reason").and_then(|r| r.as_str()) == Some("ExitCode"))
                .and_then(|c| c.get("message").and_then(|m| m.as_str()))
                .context("NonZeroExitCode without an ExitCode cause")?;
            code.parse().with_context(|| format!("exit code {code:?}"))
        }
        _ => bail!("stream failed: {raw}"),
    }
}

/// One open Exec or Attach session.
pub struct Session {
    tx: SplitSink<Ws, Message>,
    rx: SplitStream<Ws>,
    out: StreamOutput,
    closed: bool,
}

impl Session {
    /// Opens the URL returned by Exec/Attach (http:// is switched to ws://).
    pub async fn connect(url: &str) -> Result<Self> {
        let ws_url = if let Some(rest) = url.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if url.starts_with("https://") {
            bail!("TLS streaming URLs are not supported: {url}");
        } else {
            url.to_string()
        };
        let mut req = ws_url
            .as_str()
            .into_client_request()
            .context("streaming URL")?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .with_context(|| format!("WebSocket upgrade of {ws_url}"))?;
        let proto = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        if proto != Some(PROTOCOL) {
            bail!("streaming server negotiated {proto:?}, wanted {PROTOCOL}");
        }
        let (tx, rx) = ws.split();
        Ok(Self {
            tx,
            rx,
            out: StreamOutput::default(),
            closed: false,
        })
    }

    /// Writes to the process's stdin.
    pub async fn send_stdin(&mut self, data: &[u8]) -> Result<()> {
        self.send(STDIN, data).await
    }

    /// Resizes the terminal.
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<()> {
        let body = format!("{{\"Width\":{width},\"Height\":{height}}}");
        self.send(RESIZE, body.as_bytes()).await
    }

    /// Output collected so far.
    pub fn output(&self) -> &StreamOutput {
        &self.out
    }

    /// Reads until stdout or stderr contains `needle`.
    pub async fn read_until(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        self.read_until_with(needle, timeout, |out| {
            out.stdout_text().contains(needle) || out.stderr_text().contains(needle)
        })
        .await
    }

    /// Reads until `done` holds for the output so far; `what` names it in errors.
    pub async fn read_until_with(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&StreamOutput) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.out) {
                return Ok(());
            }
            if self.closed {
                bail!("stream closed before {what:?}: {:?}", self.out);
            }
            match timeout_at(deadline, self.read_one()).await {
                Ok(r) => r?,
                Err(_) => bail!("timed out waiting for {what:?}: {:?}", self.out),
            }
        }
    }

    /// Sends raw bytes on `channel` (port-forward data goes on channel 0).
    pub async fn send_channel(&mut self, channel: u8, data: &[u8]) -> Result<()> {
        self.send(channel, data).await
    }

    /// Reads until the server closes the stream (the process ended).
    pub async fn finish(mut self, timeout: Duration) -> Result<StreamOutput> {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            match timeout_at(deadline, self.read_one()).await {
                Ok(r) => r?,
                Err(_) => bail!("stream not closed after {timeout:?}: {:?}", self.out),
            }
        }
        Ok(self.out)
    }

    /// Closes our side (detaches) and returns what was read.
    pub async fn close(mut self) -> Result<StreamOutput> {
        if !self.closed {
            let _ = self.tx.send(Message::Close(None)).await;
        }
        Ok(self.out)
    }

    async fn send(&mut self, channel: u8, data: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(channel);
        frame.extend_from_slice(data);
        self.tx
            .send(Message::Binary(frame.into()))
            .await
            .context("WebSocket send")
    }

    async fn read_one(&mut self) -> Result<()> {
        match self.rx.next().await {
            None | Some(Ok(Message::Close(_))) => self.closed = true,
            Some(Ok(Message::Binary(data))) => self.dispatch(&data),
            Some(Ok(_)) => {}
            // The server may drop TCP right after its last frame.
            Some(Err(e)) if self.out.status.is_some() => {
                tracing::debug!("stream ended after status: {e}");
                self.closed = true;
            }
            Some(Err(e)) => return Err(e).context("WebSocket receive"),
        }
        Ok(())
    }

    fn dispatch(&mut self, data: &[u8]) {
        // A frame with only the channel byte announces the channel; ignore it.
        let Some((&channel, payload)) = data.split_first() else {
            return;
        };
        match channel {
            STDIN => self.out.channel0.extend_from_slice(payload),
            STDOUT => self.out.stdout.extend_from_slice(payload),
            STDERR => self.out.stderr.extend_from_slice(payload),
            STATUS if !payload.is_empty() => {
                let s = self.out.status.get_or_insert_with(String::new);
                s.push_str(&String::from_utf8_lossy(payload));
            }
            _ => {}
        }
    }
}

/// Waits for a line on stdin, prints its tty and its size, exits 4. CRI does
/// not order a resize against stdin (containerd sends it after starting the
/// process, on its own stream), so the size is read until it is set (at most
/// 5 s, ending as soon as it is). Busybox `stty size` on a terminal with no
/// size yet prints an error and still exits 0, so the loop looks for digits.
pub const RESIZED_TTY_SCRIPT: &str = "read go; tty; i=0; while [ $i -lt 25 ]; do \
     s=$(stty size 2>/dev/null); case \"$s\" in [1-9]*' '[1-9]*) break;; esac; \
     i=$((i+1)); sleep 0.2; done; echo \"$s\"; exit 4";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_exit_code_reads_success_and_failure() {
        assert_eq!(
            parse_exit_code(r#"{"metadata":{},"status":"Success"}"#).unwrap(),
            0
        );
        let failure = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(parse_exit_code(failure).unwrap(), 3);
    }

    #[test]
    fn parse_exit_code_reports_other_failures() {
        let err = parse_exit_code(r#"{"status":"Failure","message":"boom"}"#).unwrap_err();
        assert!(err.to_string().contains("boom"));
    }
}
