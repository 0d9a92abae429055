//! One fast connection's pump: moves bytes between its rings and its TCP
//! connection, with the token protocol of [`crate::fastpath`] towards the
//! program, awake briefly after work and asleep on the sockets otherwise.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tokio::net::{TcpStream, UnixStream};

use super::spin_budget;
use crate::fastpath::DATA_TOKEN;
use crate::relay::counters::Counters;
use crate::shm::{Consumer, Producer};

/// Why a fast connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub(super) enum Abort {
    #[error("program side: {0}")]
    /// The program went away with data it never read, or the ring was corrupt.
    Program(&'static str),
    /// The TCP side failed or was reset.
    #[error("TCP side: {0}")]
    Tcp(std::io::ErrorKind),
}

/// Moves bytes between one fast connection's rings and its TCP connection.
pub(super) struct Pump {
    conn: UnixStream,
    tcp: TcpStream,
    rx: Consumer,
    tx: Producer,
    /// A record taken from `rx`, not yet all written to TCP.
    out: Vec<u8>,
    out_at: usize,
    /// Bytes read from TCP that did not fit the ring yet.
    inbuf: Vec<u8>,
    in_len: usize,
    /// Tokens owed to the program (its socket buffer was full).
    tokens_owed: usize,
    rx_capacity: u64,
    program_fin: bool,
    program_gone: bool,
    tcp_eof: bool,
    fin_pushed: bool,
}

impl Pump {
    pub(super) fn new(conn: UnixStream, tcp: TcpStream, rx: Consumer, tx: Producer) -> Pump {
        let max = tx.max_record();
        let rx_capacity = rx.capacity();
        Pump {
            conn,
            tcp,
            rx,
            tx,
            out: Vec::new(),
            out_at: 0,
            inbuf: vec![0; max],
            in_len: 0,
            tokens_owed: 0,
            rx_capacity,
            program_fin: false,
            program_gone: false,
            tcp_eof: false,
            fin_pushed: false,
        }
    }

    pub(super) async fn run(mut self, c: &Counters) -> std::result::Result<(), Abort> {
        let r = self.drive(c).await;
        if r.is_err() {
            let _ = self.tcp.set_zero_linger();
        }
        r
    }

    async fn drive(&mut self, c: &Counters) -> std::result::Result<(), Abort> {
        // The spin after work adapts as the library's does: doubled when work
        // comes during it, fitted to the idle time when work comes soon after
        // it, halved when the idle time is long (the program answers slower
        // than any spin), between none and the configured ceiling.
        let ceiling = spin_budget();
        let floor = Duration::ZERO;
        let mut budget = ceiling;
        let mut last_work = Instant::now();
        let mut spinning = false;
        loop {
            let mut progress = self.ring_to_tcp(c)?;
            if !self.program_gone {
                progress |= self.tcp_to_ring(c)?;
            }
            progress |= self.send_tokens()?;
            if self.program_fin && self.fin_pushed && self.out_at == self.out.len() {
                return Ok(());
            }
            if self.program_gone
                && self.out_at == self.out.len()
                && !self
                    .rx
                    .has_data()
                    .map_err(|_| Abort::Program("corrupt ring"))?
            {
                // Its last descriptor closed: as a kernel close, after the data
                // it wrote went out. Dropping the TCP connection sends FIN, or
                // RST where data the program can no longer read arrived.
                return Ok(());
            }
            if progress {
                if spinning {
                    budget = (budget * 2).clamp(floor, ceiling);
                    spinning = false;
                }
                last_work = Instant::now();
                continue;
            }
            if last_work.elapsed() < budget {
                // Elastic: stay awake briefly after work (a reply usually comes
                // within a round trip), offering the core and letting tokio
                // poll the sockets; then sleep.
                spinning = true;
                std::thread::yield_now();
                tokio::task::yield_now().await;
                continue;
            }
            spinning = false;
            self.sleep().await?;
            // Had work come within twice the idle time just seen, a spin that
            // long would have caught it: learn it at once; else halve.
            let idle = last_work.elapsed();
            budget = if idle <= ceiling {
                (idle * 2).clamp(floor, ceiling)
            } else {
                (budget / 2).max(floor)
            };
            last_work = Instant::now();
        }
    }

    /// Ring → TCP; true when something moved.
    fn ring_to_tcp(&mut self, c: &Counters) -> std::result::Result<bool, Abort> {
        let mut moved = false;
        loop {
            if self.out_at == self.out.len() {
                if self.program_fin {
                    break;
                }
                let out = &mut self.out;
                let rec = self
                    .rx
                    .pop_with(|r| {
                        out.resize(r.len(), 0);
                        r.read(0, out)
                    })
                    .map_err(|_| Abort::Program("corrupt ring"))?;
                self.out_at = 0;
                match rec {
                    None => {
                        self.out.clear();
                        break;
                    }
                    Some(0) => {
                        self.program_fin = true;
                        self.out.clear();
                        let _ = self.tcp_shutdown();
                        moved = true;
                        break;
                    }
                    Some(_) => moved = true,
                }
            }
            match self.tcp.try_write(&self.out[self.out_at..]) {
                Ok(n) => {
                    self.out_at += n;
                    Counters::add(&c.fast_bytes_in, n as u64);
                    moved = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Abort::Tcp(e.kind())),
            }
        }
        self.rx.release();
        if moved && self.program_may_write() {
            self.drain_wakeups();
        }
        Ok(moved)
    }

    fn tcp_shutdown(&self) -> std::io::Result<()> {
        nix::sys::socket::shutdown(self.tcp.as_raw_fd(), nix::sys::socket::Shutdown::Write)
            .map_err(std::io::Error::from)
    }

    /// TCP → ring; true when something moved.
    fn tcp_to_ring(&mut self, c: &Counters) -> std::result::Result<bool, Abort> {
        let mut pushed = 0usize;
        loop {
            if self.in_len == 0 && !self.tcp_eof {
                match self.tcp.try_read(&mut self.inbuf) {
                    Ok(0) => self.tcp_eof = true,
                    Ok(n) => {
                        self.in_len = n;
                        Counters::add(&c.fast_bytes_out, n as u64);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(Abort::Tcp(e.kind())),
                }
            }
            let rec: &[u8] = if self.in_len > 0 {
                &self.inbuf[..self.in_len]
            } else if self.tcp_eof && !self.fin_pushed {
                &[]
            } else {
                break;
            };
            let fin = rec.is_empty();
            if !self
                .tx
                .try_push(&[rec])
                .map_err(|_| Abort::Program("corrupt ring"))?
            {
                break;
            }
            pushed += 1;
            self.in_len = 0;
            if fin {
                self.fin_pushed = true;
                break;
            }
        }
        if pushed > 0 {
            self.tx.publish();
            self.tokens_owed += pushed;
        }
        Ok(pushed > 0)
    }

    /// One token byte per published record, so the program's descriptor is
    /// readable exactly while records wait.
    fn send_tokens(&mut self) -> std::result::Result<bool, Abort> {
        let mut sent_any = false;
        let buf = [DATA_TOKEN; 256];
        while self.tokens_owed > 0 && !self.program_gone {
            let n = self.tokens_owed.min(buf.len());
            match self.conn.try_write(&buf[..n]) {
                Ok(k) => {
                    self.tokens_owed -= k;
                    sent_any = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // The program is gone; what it left in the ring still goes out.
                Err(_) => self.program_gone = true,
            }
        }
        Ok(sent_any)
    }

    /// Waits for the program (a wake-up byte, or its going away), TCP
    /// readiness, or room for owed tokens.
    async fn sleep(&mut self) -> std::result::Result<(), Abort> {
        // Announce sleeping, then re-check: a record published before the flag
        // was visible rang no bell.
        self.rx.set_sleeping(true);
        let full = self.in_len > 0 || (self.tcp_eof && !self.fin_pushed);
        if full {
            self.tx.set_waiting(true);
        }
        // Ring work this side can do now: a record to take (once the last one
        // went out to TCP), or room for what waits to go in.
        let can_take = self.out_at == self.out.len() && !self.program_fin;
        let ring_ready = (can_take && self.rx.has_data().unwrap_or(true))
            || (full && self.tx.fits(self.in_len).unwrap_or(true));
        if !ring_ready {
            let want_read = self.in_len == 0 && !self.tcp_eof && !self.program_gone;
            let want_write = self.out_at < self.out.len();
            let want_tokens = self.tokens_owed > 0 && !self.program_gone;
            let watch_program = !self.program_gone && self.program_may_write();
            tokio::select! {
                r = self.conn.readable(), if watch_program => {
                    if r.is_ok() {
                        self.drain_wakeups();
                    }
                }
                _ = self.tcp.readable(), if want_read => {}
                _ = self.tcp.writable(), if want_write => {}
                _ = self.conn.writable(), if want_tokens => {}
                // Nothing to wait for cannot happen (the program's end or TCP
                // is always watched); never spin if it does.
                else => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        self.rx.set_sleeping(false);
        if full {
            self.tx.set_waiting(false);
        }
        Ok(())
    }

    /// Whether the program's descriptor should poll writable: its ring is at
    /// most half full. The program makes its descriptor unwritable by filling
    /// its socket buffer when it finds its ring nearly full; reading that
    /// filler (with the wake-up bytes) is what makes it writable again, so it
    /// is read only while there is room, as a kernel socket's send buffer.
    fn program_may_write(&mut self) -> bool {
        self.rx
            .backlog()
            .map(|b| b <= self.rx_capacity / 2)
            .unwrap_or(true)
    }

    fn drain_wakeups(&mut self) {
        let mut buf = [0u8; 256];
        loop {
            match self.conn.try_read(&mut buf) {
                Ok(0) => {
                    self.program_gone = true;
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.program_gone = true;
                    return;
                }
            }
        }
    }
}
