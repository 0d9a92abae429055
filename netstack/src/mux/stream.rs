//! One multiplexed stream: AsyncRead + AsyncWrite with per-stream credit.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{header, Kind, QueuedFrame};
use super::shared::{inc, Shared};

#[derive(Debug)]
pub(crate) struct Inner {
    /// Received, not yet read bytes (at most one window).
    pub rx: BytesMut,
    pub rx_eof: bool,
    pub reset: bool,
    pub rx_waker: Option<Waker>,
    /// Bytes read by the application and not yet granted back to the peer.
    pub unacked: u32,
    /// Bytes we may still send.
    pub credit: u64,
    pub tx_closed: bool,
    pub tx_waker: Option<Waker>,
}

#[derive(Debug)]
pub(crate) struct StreamState {
    pub id: u32,
    pub epoch: u64,
    inner: Mutex<Inner>,
}

impl StreamState {
    pub fn new(id: u32, epoch: u64, window: u32) -> Arc<StreamState> {
        Arc::new(StreamState {
            id,
            epoch,
            inner: Mutex::new(Inner {
                rx: BytesMut::new(),
                rx_eof: false,
                reset: false,
                rx_waker: None,
                unacked: 0,
                credit: u64::from(window),
                tx_closed: false,
                tx_waker: None,
            }),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the stream reset and wakes both directions.
    pub fn set_reset(&self) {
        let (r, w) = {
            let mut i = self.lock();
            i.reset = true;
            (i.rx_waker.take(), i.tx_waker.take())
        };
        r.into_iter().chain(w).for_each(Waker::wake);
    }
}

/// A stream over the mux.
///
/// * `poll_shutdown` sends FIN (half-close); reads then still work.
/// * [`MuxStream::reset`] sends RST; the peer's reads and writes fail with
///   `ConnectionReset`.
/// * Dropping behaves like `close()` on a TCP socket: FIN if not yet sent, and
///   the stream is forgotten (later data from the peer is answered with RST).
/// * Reads fail with `ConnectionReset` after a peer reset, a peer loss, or a
///   corrupted region.
#[derive(Debug)]
pub struct MuxStream {
    st: Arc<StreamState>,
    shared: Arc<Shared>,
}

impl MuxStream {
    pub(crate) fn new(st: Arc<StreamState>, shared: Arc<Shared>) -> MuxStream {
        MuxStream { st, shared }
    }

    /// The stream id (odd when opened by the region creator, even otherwise).
    pub fn id(&self) -> u32 {
        self.st.id
    }

    /// Aborts the stream: sends RST and frees it.
    pub fn reset(self) {
        let already = {
            let mut i = self.st.lock();
            std::mem::replace(&mut i.reset, true)
        };
        if !already {
            self.shared
                .send_ctl(self.st.epoch, QueuedFrame::new(Kind::Rst, self.st.id));
        }
        self.st.set_reset();
        // Drop then only removes the stream.
    }

    fn reset_error() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, "mux stream reset")
    }

    /// Writes received bytes straight from the stream's buffer into `w`,
    /// saving the copy through a caller buffer that `poll_read` needs (the
    /// relay's bulk path). `Ready(Ok(0))` = end of stream.
    pub fn poll_drain_into<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<Result<usize, DrainError>> {
        let mut i = self.st.lock();
        if i.rx.is_empty() {
            if i.reset {
                return Poll::Ready(Err(DrainError::Stream(Self::reset_error())));
            }
            if i.rx_eof {
                return Poll::Ready(Ok(0));
            }
            i.rx_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        match Pin::new(w).poll_write(cx, &i.rx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(DrainError::Writer(e))),
            Poll::Ready(Ok(0)) => {
                Poll::Ready(Err(DrainError::Writer(io::ErrorKind::WriteZero.into())))
            }
            Poll::Ready(Ok(n)) => {
                i.rx.advance(n);
                self.consumed(i, n);
                Poll::Ready(Ok(n))
            }
        }
    }

    /// Counts `n` bytes as read and grants credit back once a quarter window
    /// was consumed.
    fn consumed(&self, mut i: MutexGuard<'_, Inner>, n: usize) {
        i.unacked += n as u32;
        let window = self.shared.config.window;
        if i.unacked >= window / 4 && !i.reset && !i.rx_eof {
            let grant = std::mem::take(&mut i.unacked);
            drop(i);
            self.shared
                .send_ctl(self.st.epoch, QueuedFrame::window(self.st.id, grant));
        }
    }
}

/// Why [`MuxStream::poll_drain_into`] failed.
#[derive(Debug)]
pub enum DrainError {
    /// The stream was reset (by the peer, a peer loss or corruption).
    Stream(io::Error),
    /// Writing into the destination failed.
    Writer(io::Error),
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut i = this.st.lock();
        if !i.rx.is_empty() {
            let n = i.rx.len().min(buf.remaining());
            buf.put_slice(&i.rx[..n]);
            i.rx.advance(n);
            this.consumed(i, n);
            return Poll::Ready(Ok(()));
        }
        if i.reset {
            return Poll::Ready(Err(Self::reset_error()));
        }
        if i.rx_eof {
            return Poll::Ready(Ok(()));
        }
        i.rx_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let credit = {
            let mut i = this.st.lock();
            if i.reset {
                return Poll::Ready(Err(Self::reset_error()));
            }
            if i.tx_closed {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            if i.credit == 0 {
                i.tx_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            i.credit
        };
        let len = buf.len().min(credit as usize);
        let hdr = header(Kind::Data, this.st.id);
        match this
            .shared
            .poll_send(Some(cx), this.st.epoch, &hdr, &buf[..len])
        {
            Poll::Ready(Ok(n)) => {
                this.st.lock().credit -= n as u64;
                inc(&this.shared.counters.bytes_tx, n as u64);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => {
                this.st.set_reset();
                Poll::Ready(Err(e.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Every write is published at once.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        {
            let i = this.st.lock();
            if i.tx_closed {
                return Poll::Ready(Ok(()));
            }
            if i.reset {
                return Poll::Ready(Err(Self::reset_error()));
            }
        }
        let hdr = header(Kind::Fin, this.st.id);
        match this.shared.poll_send(Some(cx), this.st.epoch, &hdr, &[]) {
            Poll::Ready(Ok(_)) => {
                let both = {
                    let mut i = this.st.lock();
                    i.tx_closed = true;
                    i.rx_eof
                };
                if both {
                    this.shared.remove_stream(this.st.id);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                this.st.set_reset();
                Poll::Ready(Err(e.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        let send_fin = {
            let mut i = self.st.lock();
            let fin = !i.reset && !i.tx_closed;
            i.tx_closed = true;
            fin
        };
        if send_fin {
            self.shared
                .send_ctl(self.st.epoch, QueuedFrame::new(Kind::Fin, self.st.id));
        }
        self.shared.remove_stream(self.st.id);
    }
}
