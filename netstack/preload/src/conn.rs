//! One fast connection: its two rings, the program's Unix socket to the peer,
//! and kernel-like read, write, shutdown and readiness on top of them.
//!
//! Readiness: the peer sends one token byte per record it publishes. A record
//! still (partly) unread keeps its token in the socket, and so does the FIN
//! record for ever, so the program's descriptor is readable exactly while
//! there is something to read, as a kernel socket is. A token that arrives
//! after its record was read is a debt, settled on the next read (at worst a
//! spurious wake-up, which every poll user tolerates).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use heteronet::fastpath::wire::Role;
use heteronet::fastpath::DATA_TOKEN;
use heteronet::shm::{Consumer, Producer, Region, RegionAddr};

use crate::options::Options;
use crate::real;
use crate::spin::spin;
use crate::Errno;

/// Filler bytes per send when making the descriptor unwritable.
static FILLER: [u8; 64 * 1024] = [0; 64 * 1024];

struct Rx {
    ring: Consumer,
    /// A record that did not fit the caller's buffer (or was peeked at).
    staging: Vec<u8>,
    at: usize,
    fin: bool,
    shut: bool,
    /// Tokens of consumed records not received yet.
    debt: usize,
    reset_reported: bool,
}

struct Tx {
    ring: Producer,
    shut: bool,
    /// Tokens for published records not sent yet (the socket was full).
    owed: usize,
}

/// A fast connection, shared by every descriptor that refers to it.
pub struct Conn {
    /// Our own reference to the program's Unix socket (close-on-exec).
    sock: OwnedFd,
    _region: Arc<Region>,
    rx: Mutex<Rx>,
    tx: Mutex<Tx>,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub options: Options,
    /// The peer went away without FIN, or the ring was corrupt.
    reset: AtomicBool,
    /// The other end is a program (not a relay's pump): it learns of every
    /// record by its token, and its filler bytes are told apart from tokens.
    peer_is_program: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    /// Maps the region received from the broker (validating it) and takes
    /// the ring this end writes and the one it reads, as `role` says.
    pub fn open(
        sock: OwnedFd,
        region: OwnedFd,
        local: SocketAddr,
        peer: SocketAddr,
        role: Role,
    ) -> Result<Conn, Errno> {
        let sock = crate::internal::hide(sock);
        let region = crate::internal::hide(region);
        let region_fd = region.as_raw_fd();
        let region = match Region::from_fd(RegionAddr::Memfd, region) {
            Ok(r) => Arc::new(r),
            Err(_) => {
                crate::internal::release(region_fd);
                crate::internal::release(sock.as_raw_fd());
                return Err(libc::ECONNREFUSED);
            }
        };
        let ring = |i| region.ring(i).map_err(|_| libc::ECONNREFUSED);
        let (tx_ring, rx_ring) = if role.writes_ring1 { (1, 0) } else { (0, 1) };
        let rings = ring(tx_ring)
            .and_then(|r| r.acquire_producer().ok_or(libc::ECONNREFUSED))
            .and_then(|tx| {
                Ok((
                    tx,
                    ring(rx_ring)?
                        .acquire_consumer()
                        .ok_or(libc::ECONNREFUSED)?,
                ))
            });
        let (tx, rx) = match rings {
            Ok(v) => v,
            Err(e) => {
                crate::internal::release(region_fd);
                crate::internal::release(sock.as_raw_fd());
                return Err(e);
            }
        };
        Ok(Conn {
            sock,
            _region: region,
            rx: Mutex::new(Rx {
                ring: rx,
                staging: Vec::new(),
                at: 0,
                fin: false,
                shut: false,
                debt: 0,
                reset_reported: false,
            }),
            tx: Mutex::new(Tx {
                ring: tx,
                shut: false,
                owed: 0,
            }),
            local,
            peer,
            options: Options::default(),
            reset: AtomicBool::new(false),
            peer_is_program: role.peer_is_program,
        })
    }

    /// The library's own descriptor of the connection's Unix socket.
    pub fn fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// Whether the program's descriptor is non-blocking (the open file
    /// description is shared by all its descriptors and ours).
    fn nonblocking(&self, flags: i32) -> bool {
        flags & libc::MSG_DONTWAIT != 0
            || real::fcntl_int(self.fd(), libc::F_GETFL, 0).is_ok_and(|f| f & libc::O_NONBLOCK != 0)
    }

    fn mark_reset(&self) {
        self.reset.store(true, Ordering::Release);
    }

    /// Marks the connection reset; the errno to report.
    fn reset_now(&self) -> Errno {
        self.mark_reset();
        libc::ECONNRESET
    }

    fn is_reset(&self) -> bool {
        self.reset.load(Ordering::Acquire)
    }

    /// Tells a sleeping peer to look at the rings.
    fn wake_peer(&self) {
        match real::send_from(self.fd(), &[1], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(_) | Err(libc::EAGAIN) => {}
            Err(_) => self.mark_reset(),
        }
    }

    /// True when the peer closed its end and no token waits.
    fn peer_closed(&self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            real::recv_into(self.fd(), &mut b, libc::MSG_PEEK | libc::MSG_DONTWAIT),
            Ok(0) | Err(libc::ECONNRESET)
        )
    }

    /// Receives the tokens of records already consumed.
    fn settle(&self, rx: &mut Rx) {
        if self.peer_is_program {
            return self.settle_from_program(rx);
        }
        let mut buf = [0u8; 256];
        while rx.debt > 0 {
            let n = rx.debt.min(buf.len());
            match real::recv_into(self.fd(), &mut buf[..n], libc::MSG_DONTWAIT) {
                Ok(0) | Err(_) => return,
                Ok(k) => rx.debt -= k,
            }
        }
    }

    /// As [`Conn::settle`] when the peer is a program: its socket also holds
    /// the filler it sent when its ring was nearly full; that is read (and
    /// dropped) once the ring is half empty, which makes the peer writable.
    fn settle_from_program(&self, rx: &mut Rx) {
        let mut buf = [0u8; 256];
        loop {
            let drain_filler = rx
                .ring
                .backlog()
                .map(|b| b <= rx.ring.capacity() / 2)
                .unwrap_or(true);
            let Ok(n) = real::recv_into(self.fd(), &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
            else {
                return;
            };
            let mut debt = rx.debt;
            let mut take = 0;
            for &b in &buf[..n] {
                if b == DATA_TOKEN {
                    if debt == 0 {
                        break;
                    }
                    debt -= 1;
                } else if !drain_filler {
                    break;
                }
                take += 1;
            }
            if take == 0 {
                return;
            }
            match real::recv_into(self.fd(), &mut buf[..take], libc::MSG_DONTWAIT) {
                Ok(k) => {
                    let tokens = buf[..k].iter().filter(|&&b| b == DATA_TOKEN).count();
                    rx.debt = rx.debt.saturating_sub(tokens);
                    // Stopped short of what waits: the rest stays for later.
                    if k < take || take < n {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Tells a program peer of published records (one token each); what the
    /// socket cannot take now goes with the next call.
    fn send_tokens(&self, tx: &mut Tx) {
        let buf = [DATA_TOKEN; 256];
        while tx.owed > 0 {
            let n = tx.owed.min(buf.len());
            match real::send_from(
                self.fd(),
                &buf[..n],
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            ) {
                Ok(k) => tx.owed -= k,
                Err(libc::EAGAIN) => return,
                Err(_) => {
                    self.mark_reset();
                    return;
                }
            }
        }
    }

    /// After publishing `records`: the peer learns of them.
    fn published(&self, tx: &mut Tx, records: usize) {
        let sleeping = tx.ring.publish();
        if self.peer_is_program {
            tx.owed += records;
            self.send_tokens(tx);
        } else if sleeping {
            self.wake_peer();
        }
    }

    /// Moves what is available (staging first, then records) into `out`.
    fn take(&self, rx: &mut Rx, out: &mut [u8], peek: bool) -> Result<usize, Errno> {
        let mut copied = 0;
        let mut done_records = 0;
        loop {
            if rx.at < rx.staging.len() {
                let n = (out.len() - copied).min(rx.staging.len() - rx.at);
                out[copied..copied + n].copy_from_slice(&rx.staging[rx.at..rx.at + n]);
                copied += n;
                if peek {
                    break;
                }
                rx.at += n;
                if rx.at == rx.staging.len() {
                    // The staged record is read: its token may go now.
                    done_records += 1;
                }
                if copied == out.len() {
                    break;
                }
                continue;
            }
            if rx.fin || copied == out.len() {
                break;
            }
            let room = out.len() - copied;
            let Rx {
                ring, staging, at, ..
            } = rx;
            let popped = ring.pop_with(|r| {
                let len = r.len();
                if len <= room && !peek {
                    r.read(0, &mut out[copied..copied + len]);
                    (len, true)
                } else {
                    staging.clear();
                    staging.resize(len, 0);
                    r.read(0, staging);
                    *at = 0;
                    (len, false)
                }
            });
            match popped {
                Ok(None) => break,
                Ok(Some((0, _))) => {
                    // FIN keeps its token: the descriptor stays readable at EOF.
                    rx.fin = true;
                    rx.staging.clear();
                    rx.at = 0;
                    break;
                }
                Ok(Some((len, true))) => {
                    copied += len;
                    done_records += 1;
                }
                Ok(Some((_, false))) => {}
                Err(_) => {
                    self.mark_reset();
                    return Err(libc::ECONNRESET);
                }
            }
        }
        if done_records > 0 {
            rx.debt += done_records;
            self.settle(rx);
        }
        // A pump waiting for room sleeps on its flag; a program waits for
        // its descriptor to be writable (the filler drained in `settle`).
        if rx.ring.release() && !self.peer_is_program {
            self.wake_peer();
        }
        Ok(copied)
    }

    /// `recv` semantics (MSG_PEEK, MSG_DONTWAIT, MSG_WAITALL).
    pub fn read(&self, out: &mut [u8], flags: i32) -> Result<usize, Errno> {
        if out.is_empty() {
            return Ok(0);
        }
        let peek = flags & libc::MSG_PEEK != 0;
        let waitall = flags & libc::MSG_WAITALL != 0 && !peek;
        let mut rx = lock(&self.rx);
        if rx.shut || rx.reset_reported {
            return Ok(0);
        }
        // After fork, another process may have read from this ring.
        rx.ring.adopt_shared().map_err(|_| self.reset_now())?;
        let mut done = 0;
        let mut woke = false;
        loop {
            done += self.take(&mut rx, &mut out[done..], peek)?;
            if done == out.len() || (done > 0 && !waitall) || rx.fin {
                return Ok(done);
            }
            self.settle(&mut rx);
            if rx.ring.has_data().map_err(|_| libc::ECONNRESET)? {
                continue;
            }
            let nonblock = self.nonblocking(flags);
            // Whether the peer went away costs a system call: asked when this
            // call returns now, or after a wake-up that brought no data (a
            // blocking wait wakes up when the peer goes).
            if self.is_reset() || ((nonblock || woke) && self.peer_closed()) {
                if done > 0 {
                    return Ok(done);
                }
                rx.reset_reported = true;
                self.mark_reset();
                return Err(libc::ECONNRESET);
            }
            if nonblock {
                return if done > 0 {
                    Ok(done)
                } else {
                    Err(libc::EAGAIN)
                };
            }
            self.wait_data(&mut rx)?;
            woke = true;
        }
    }

    /// Blocks until a record or token arrives or the peer goes away.
    fn wait_data(&self, rx: &mut Rx) -> Result<(), Errno> {
        let Err(start) = spin(|| rx.ring.has_data().unwrap_or(true)) else {
            return Ok(());
        };
        let mut pfd = [libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let r = real::poll_fds(&mut pfd, -1).map(|_| ());
        crate::spin::slept(start, r.is_ok());
        r
    }

    /// `send` semantics (MSG_DONTWAIT, MSG_NOSIGNAL); a blocking write sends all.
    pub fn write(&self, buf: &[u8], flags: i32) -> Result<usize, Errno> {
        let nosignal = flags & libc::MSG_NOSIGNAL != 0;
        let mut tx = lock(&self.tx);
        if tx.shut || self.is_reset() {
            return Err(epipe(nosignal));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        // After fork, another process may have written to this ring.
        tx.ring.adopt_shared().map_err(|_| self.reset_now())?;
        if tx.owed > 0 {
            self.send_tokens(&mut tx);
        }
        let max = tx.ring.max_record();
        let mut sent = 0;
        loop {
            let mut pushed = 0;
            while sent < buf.len() {
                let n = max.min(buf.len() - sent);
                match tx.ring.try_push(&[&buf[sent..sent + n]]) {
                    Ok(true) => {
                        sent += n;
                        pushed += 1;
                    }
                    Ok(false) => break,
                    Err(_) => {
                        self.mark_reset();
                        return Err(libc::ECONNRESET);
                    }
                }
            }
            if pushed > 0 {
                self.published(&mut tx, pushed);
                // Nearly full: stop polling writable, as a kernel socket whose
                // send buffer is full (the peer reads the filler when there is room).
                if tx.ring.free_bytes().unwrap_or(0) < tx.ring.capacity() / 4 {
                    self.fill();
                }
            }
            if sent == buf.len() {
                return Ok(sent);
            }
            let nonblock = self.nonblocking(flags);
            if sent > 0 && nonblock {
                return Ok(sent);
            }
            if nonblock {
                self.fill();
                return Err(libc::EAGAIN);
            }
            let need = max.min(buf.len() - sent);
            match self.wait_space(&mut tx, need, None) {
                Ok(true) => {}
                Ok(false) => return Err(libc::EAGAIN),
                Err(e) if sent > 0 => {
                    let _ = e;
                    return Ok(sent);
                }
                Err(_) => return Err(epipe(nosignal)),
            }
        }
    }

    /// Makes the program's descriptor unwritable: fills its socket buffer
    /// with bytes the peer reads (and discards) once the ring is half empty.
    fn fill(&self) {
        for _ in 0..4 {
            let mut pfd = [libc::pollfd {
                fd: self.fd(),
                events: libc::POLLOUT,
                revents: 0,
            }];
            if !matches!(real::poll_fds(&mut pfd, 0), Ok(1)) || pfd[0].revents & libc::POLLOUT == 0
            {
                return;
            }
            match real::send_from(self.fd(), &FILLER, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
                Ok(_) => {}
                Err(libc::EAGAIN) => return,
                Err(_) => {
                    self.mark_reset();
                    return;
                }
            }
        }
    }

    /// Waits for room for a `need`-byte record; `Ok(false)` when `limit` passed.
    fn wait_space(&self, tx: &mut Tx, need: usize, limit: Option<Duration>) -> Result<bool, Errno> {
        let fits = |tx: &mut Tx| tx.ring.fits(need).map_err(|_| libc::ECONNRESET);
        if spin(|| fits(tx).unwrap_or(true)).is_ok() {
            return Ok(true);
        }
        let end = limit.map(|l| Instant::now() + l);
        loop {
            if fits(tx)? {
                return Ok(true);
            }
            self.fill();
            // Room may have come before the filler arrived (then the peer,
            // awake with room, reads it soon): check again, then wait.
            if fits(tx)? {
                return Ok(true);
            }
            let timeout = match end {
                Some(end) => {
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    left.as_millis().max(1) as i32
                }
                None => -1,
            };
            let mut pfd = [libc::pollfd {
                fd: self.fd(),
                events: libc::POLLOUT | libc::POLLRDHUP,
                revents: 0,
            }];
            real::poll_fds(&mut pfd, timeout)?;
            if pfd[0].revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
                self.mark_reset();
                return Err(libc::EPIPE);
            }
        }
    }

    /// `shutdown(how)`: SHUT_WR sends FIN after what was written.
    pub fn shutdown(&self, how: i32) -> Result<(), Errno> {
        if how == libc::SHUT_RD || how == libc::SHUT_RDWR {
            lock(&self.rx).shut = true;
        }
        if how == libc::SHUT_WR || how == libc::SHUT_RDWR {
            let mut tx = lock(&self.tx);
            if tx.shut {
                return Ok(());
            }
            tx.shut = true;
            if self.is_reset() {
                return Err(libc::ENOTCONN);
            }
            loop {
                match tx.ring.try_push(&[]) {
                    Ok(true) => break,
                    Ok(false) => {
                        if !self.wait_space(&mut tx, 0, Some(Duration::from_secs(5)))? {
                            return Err(libc::ETIMEDOUT);
                        }
                    }
                    Err(_) => return Err(libc::ECONNRESET),
                }
            }
            self.published(&mut tx, 1);
        }
        if !(0..=2).contains(&how) {
            return Err(libc::EINVAL);
        }
        Ok(())
    }

    /// Bytes readable without blocking (FIONREAD): the staged record, or the next one.
    pub fn readable_bytes(&self) -> usize {
        let mut rx = lock(&self.rx);
        if rx.at == rx.staging.len() && !rx.fin {
            // Stage the next record; its token stays until it is read.
            let Rx {
                ring, staging, at, ..
            } = &mut *rx;
            if let Ok(Some(_)) = ring.pop_with(|r| {
                staging.clear();
                staging.resize(r.len(), 0);
                r.read(0, staging);
                *at = 0;
            }) {
                if staging.is_empty() {
                    rx.fin = true;
                }
            }
        }
        rx.staging.len() - rx.at
    }

    /// Capacity of one direction (reported as the socket's buffer sizes).
    pub fn buffer_bytes(&self) -> usize {
        lock(&self.tx).ring.capacity() as usize
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Ours to close now (the fields' own drop closes them).
        crate::internal::release(self.sock.as_raw_fd());
        if let Some(fd) = self._region.fd() {
            crate::internal::release(fd.as_raw_fd());
        }
    }
}

fn epipe(nosignal: bool) -> Errno {
    if !nosignal {
        real::raise_sigpipe();
    }
    libc::EPIPE
}
