//! Copying one TCP connection to and from one mux stream, both directions at
//! once, with half-close and reset carried across.
//!
//! * EOF on one side becomes a shutdown (FIN) of the other side's write half.
//! * A read or write error on the TCP side resets the mux stream.
//! * A read or write error on the mux side (the peer reset it, the region was
//!   corrupt, the peer relay died) resets the TCP connection (SO_LINGER 0).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::mux::DrainError;

/// TCP -> stream buffer: starts small (a request/response connection never
/// needs more, and 1,000 idle connections stay cheap) and doubles whenever a
/// read fills it, up to `MAX_BUF`. Bulk transfers then read 256 KiB per
/// syscall: fewer recv calls and fewer ACKs sent from inside them (the
/// kernel receive path is most of the relay's CPU per byte).
const START_BUF: usize = 16 * 1024;
const MAX_BUF: usize = 256 * 1024;

/// A stream that can be aborted with a reset instead of a clean close.
pub trait Resettable: AsyncRead + AsyncWrite + Unpin {
    fn reset_stream(self);
    /// Writes received bytes straight into `w` (no bounce buffer);
    /// `Ready(Ok(0))` = end of stream.
    fn poll_drain_into(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut TcpStream,
    ) -> Poll<Result<usize, DrainError>>;
}

/// How a spliced connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both directions finished with EOF.
    Closed,
    /// The TCP side failed or was reset; the stream was reset.
    TcpReset,
    /// The stream failed or was reset; the TCP side was reset.
    StreamReset,
}

/// Bytes moved, for counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub to_stream: u64,
    pub to_tcp: u64,
}

enum Fail {
    Tcp,
    Stream,
}

struct Pump {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    done: bool,
    moved: u64,
}

impl Pump {
    fn new() -> Self {
        Self {
            buf: vec![0u8; START_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            done: false,
            moved: 0,
        }
    }

    /// Doubles the buffer, keeping the unsent bytes at its start.
    fn grow(&mut self) {
        let mut bigger = vec![0u8; self.buf.len() * 2].into_boxed_slice();
        let pending = self.end - self.start;
        bigger[..pending].copy_from_slice(&self.buf[self.start..self.end]);
        self.buf = bigger;
        self.start = 0;
        self.end = pending;
    }

    /// Moves bytes from `r` to `w` until both would block or the direction is done.
    /// Errors name the side that failed: `r_fail` for reads, `w_fail` for writes.
    fn poll<R, W>(
        &mut self,
        live: &AtomicU64,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        r_is_tcp: bool,
    ) -> Poll<Result<(), Fail>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (r_fail, w_fail) = if r_is_tcp {
            (Fail::Tcp, Fail::Stream)
        } else {
            (Fail::Stream, Fail::Tcp)
        };
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.start == self.end && !self.eof {
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.eof = true;
                        } else {
                            self.start = 0;
                            self.end = n;
                            if n == self.buf.len() && n < MAX_BUF {
                                self.grow();
                            }
                        }
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(r_fail)),
                    Poll::Pending => {
                        // Push out what an earlier write left buffered in the writer.
                        return match Pin::new(&mut *w).poll_flush(cx) {
                            Poll::Ready(Err(_)) => Poll::Ready(Err(w_fail)),
                            _ => Poll::Pending,
                        };
                    }
                }
            }
            while self.start < self.end {
                match ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[self.start..self.end])) {
                    Ok(0) | Err(_) => return Poll::Ready(Err(w_fail)),
                    Ok(n) => {
                        self.start += n;
                        self.moved += n as u64;
                        live.fetch_add(n as u64, Relaxed);
                    }
                }
            }
            if self.eof {
                if ready!(Pin::new(&mut *w).poll_shutdown(cx)).is_err() {
                    return Poll::Ready(Err(w_fail));
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// The stream -> TCP direction: bytes go from the stream's receive buffer
/// straight into the socket.
#[derive(Default)]
struct Drain {
    eof: bool,
    done: bool,
    moved: u64,
}

impl Drain {
    fn poll<S: Resettable>(
        &mut self,
        live: &AtomicU64,
        cx: &mut Context<'_>,
        stream: &mut S,
        tcp: &mut TcpStream,
    ) -> Poll<Result<(), Fail>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        while !self.eof {
            match ready!(stream.poll_drain_into(cx, tcp)) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.moved += n as u64;
                    live.fetch_add(n as u64, Relaxed);
                }
                Err(DrainError::Stream(_)) => return Poll::Ready(Err(Fail::Stream)),
                Err(DrainError::Writer(_)) => return Poll::Ready(Err(Fail::Tcp)),
            }
        }
        if ready!(Pin::new(&mut *tcp).poll_shutdown(cx)).is_err() {
            return Poll::Ready(Err(Fail::Tcp));
        }
        self.done = true;
        Poll::Ready(Ok(()))
    }
}

/// Relays until both directions are closed or one side fails; bytes moved are
/// added to `to_stream` / `to_tcp` as they go (live counters).
pub async fn splice<S: Resettable>(
    mut tcp: TcpStream,
    mut stream: S,
    to_stream: &AtomicU64,
    to_tcp: &AtomicU64,
) -> (SpliceEnd, Moved) {
    let mut up = Pump::new();
    let mut down = Drain::default();
    let res = poll_fn(|cx| {
        let a = up.poll(to_stream, cx, &mut tcp, &mut stream, true);
        if let Poll::Ready(Err(f)) = a {
            return Poll::Ready(Err(f));
        }
        let b = down.poll(to_tcp, cx, &mut stream, &mut tcp);
        match (a, b) {
            (_, Poll::Ready(Err(f))) => Poll::Ready(Err(f)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await;
    let moved = Moved {
        to_stream: up.moved,
        to_tcp: down.moved,
    };
    let end = match res {
        Ok(()) => SpliceEnd::Closed,
        Err(Fail::Tcp) => {
            stream.reset_stream();
            SpliceEnd::TcpReset
        }
        Err(Fail::Stream) => {
            reset_tcp(tcp);
            SpliceEnd::StreamReset
        }
    };
    (end, moved)
}

/// Closes a TCP connection with RST instead of FIN.
pub fn reset_tcp(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

/// Disables Nagle: the relay forwards what it reads at once.
pub fn tune(tcp: &TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pump_grows_its_buffer_on_bulk_reads_and_keeps_every_byte() {
        let input: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut reader: &[u8] = &input;
        let mut out: Vec<u8> = Vec::new();
        let live = AtomicU64::new(0);
        let mut sut = Pump::new();
        let r = poll_fn(|cx| sut.poll(&live, cx, &mut reader, &mut out, true)).await;
        assert!(r.is_ok());
        assert_eq!(out, input);
        assert_eq!(sut.moved, input.len() as u64);
        assert_eq!(sut.buf.len(), MAX_BUF);
    }
}
