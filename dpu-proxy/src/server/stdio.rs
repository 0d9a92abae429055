//! Per-process stdio held by the agent until the client reads it: output is
//! pumped from the pipe into a bounded buffer read by offset (so a lost
//! response is simply read again), input goes straight to the pipe.
use std::{collections::VecDeque, os::fd::OwnedFd, sync::Arc};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::unix::pipe,
    sync::{Mutex, Notify},
};

use crate::error::{Error, Result};

/// Unread output kept per stream; the process blocks on write beyond it.
pub const OUTPUT_BUFFER_BYTES: usize = 1 << 20;
/// Largest chunk one ReadOutput returns.
pub const MAX_READ_CHUNK: usize = 256 << 10;

#[derive(Default)]
struct Buffer {
    /// Stream offset of `data[0]`.
    base: u64,
    data: VecDeque<u8>,
    eof: bool,
}

/// One output stream (stdout or stderr) of a process.
#[derive(Default)]
pub struct Output {
    buf: std::sync::Mutex<Buffer>,
    /// Signals new data, EOF, or freed space.
    changed: Notify,
}

/// What one read returns: data starting at `offset`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub data: Vec<u8>,
    pub eof: bool,
}

impl Output {
    /// A stream that never had (or no longer has) a source.
    pub fn closed() -> Arc<Output> {
        let o = Output::default();
        o.lock().eof = true;
        Arc::new(o)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts copying `fd` into the buffer until EOF.
    pub fn pump(self: &Arc<Self>, fd: OwnedFd) {
        let out = self.clone();
        tokio::spawn(async move {
            // Pipes and terminal masters alike; the executor made them non-blocking.
            let mut rx = match pipe::Receiver::from_owned_fd_unchecked(fd) {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!("stdio pipe: {e}");
                    out.finish();
                    return;
                }
            };
            let mut chunk = vec![0u8; 64 << 10];
            loop {
                out.wait_for_space().await;
                match rx.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.push(&chunk[..n]),
                }
            }
            out.finish();
        });
    }

    async fn wait_for_space(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().data.len() < OUTPUT_BUFFER_BYTES {
                return;
            }
            notified.await;
        }
    }

    pub fn push(&self, bytes: &[u8]) {
        self.lock().data.extend(bytes);
        self.changed.notify_waiters();
    }

    pub fn finish(&self) {
        self.lock().eof = true;
        self.changed.notify_waiters();
    }

    /// Acknowledges everything before `offset` and returns what follows, at
    /// most `max` bytes, waiting until there is data or EOF.
    pub async fn read(&self, offset: u64, max: usize) -> Chunk {
        let max = max.clamp(1, MAX_READ_CHUNK);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(chunk) = self.try_read(offset, max) {
                self.changed.notify_waiters();
                return chunk;
            }
            notified.await;
        }
    }

    fn try_read(&self, offset: u64, max: usize) -> Option<Chunk> {
        let mut b = self.lock();
        let acked = offset.saturating_sub(b.base).min(b.data.len() as u64);
        b.data.drain(..acked as usize);
        b.base += acked;
        if b.data.is_empty() && !b.eof {
            return None;
        }
        let n = b.data.len().min(max);
        Some(Chunk {
            offset: b.base,
            data: b.data.iter().take(n).copied().collect(),
            eof: b.eof && n == b.data.len(),
        })
    }
}

/// The write end of a process's stdin pipe, if it has one.
#[derive(Default)]
pub struct Input {
    tx: Mutex<Option<pipe::Sender>>,
}

impl Input {
    pub async fn set(&self, fd: Option<OwnedFd>) -> Result<()> {
        let tx = fd
            .map(pipe::Sender::from_owned_fd_unchecked)
            .transpose()
            .map_err(Error::io("stdin pipe"))?;
        *self.tx.lock().await = tx;
        Ok(())
    }

    pub async fn write(&self, data: &[u8]) -> Result<usize> {
        let mut tx = self.tx.lock().await;
        let tx = tx.as_mut().ok_or_else(|| {
            Error::FailedPrecondition("stdin is closed or was not requested".into())
        })?;
        tx.write_all(data)
            .await
            .map_err(|e| Error::FailedPrecondition(format!("write stdin: {e}")))?;
        Ok(data.len())
    }

    pub async fn close(&self) {
        self.tx.lock().await.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_by_offset_acknowledges_and_repeats_unacked_data() {
        let sut = Output::default();
        sut.push(b"hello ");
        sut.push(b"world");
        let c = sut.read(0, 5).await;
        assert_eq!((c.offset, &c.data[..], c.eof), (0, &b"hello"[..], false));
        // Same offset again: the response was lost, the data is still there.
        assert_eq!(sut.read(0, 5).await.data, b"hello");
        let c = sut.read(5, 100).await;
        assert_eq!((c.offset, &c.data[..]), (5, &b" world"[..]));
        sut.finish();
        let c = sut.read(11, 100).await;
        assert_eq!((c.offset, c.data.len(), c.eof), (11, 0, true));
    }

    #[tokio::test]
    async fn read_waits_for_data() {
        let sut = Arc::new(Output::default());
        let reader = {
            let s = sut.clone();
            tokio::spawn(async move { s.read(0, 10).await })
        };
        tokio::task::yield_now().await;
        sut.push(b"x");
        assert_eq!(reader.await.unwrap().data, b"x");
    }

    #[tokio::test]
    async fn pipe_output_is_pumped_until_eof() {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .unwrap();
        let sut = Arc::new(Output::default());
        sut.pump(r);
        let mut f = std::fs::File::from(w);
        std::io::Write::write_all(&mut f, b"abc").unwrap();
        drop(f);
        let mut got = Vec::new();
        let mut off = 0;
        loop {
            let c = sut.read(off, 2).await;
            off = c.offset + c.data.len() as u64;
            got.extend(c.data);
            if c.eof {
                break;
            }
        }
        assert_eq!(got, b"abc");
    }
}
