//! The relays' part of the fast path (see [`crate::fastpath`]): the CPU relay's
//! broker, and the DPU relay's server that joins each fast connection's rings
//! to a real TCP connection in its half.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::counters::Counters;
use super::error::{Error, Result};
use super::mirror::canonical;
use super::session::{connect_tcp, Ctx};
use crate::fastpath::fds::{recv_with_fds, send_with_fds};
use crate::fastpath::wire::{Outcome, Reply, Request, REPLY_LEN, REQUEST_LEN};
use crate::fastpath::{BROKER_NAME, DATA_TOKEN, MAX_CONNECTIONS, RING_BYTES};
use crate::shm::{Consumer, Producer, Region, RegionAddr};
use crate::Side;

/// A program or the broker must finish its part of the handshake in this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The broker waits this long for the DPU relay's connect (its own is bounded at 10 s).
const OFFER_TIMEOUT: Duration = Duration::from_secs(12);
/// How long a fast connection's pump stays awake after work before it sleeps
/// (`HETERONET_FAST_SPIN_US`, default 50 µs: a 64-byte round trip through the
/// DPU half's loopback takes 20-40 µs on the 2-core test machines).
fn spin_budget() -> Duration {
    static US: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    Duration::from_micros(*US.get_or_init(|| {
        std::env::var("HETERONET_FAST_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50)
    }))
}

/// Ring bytes per direction of a new fast connection (`HETERONET_FAST_RING_BYTES`
/// overrides [`RING_BYTES`]; rounded to a power of two by the layout).
fn ring_bytes() -> u64 {
    static N: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("HETERONET_FAST_RING_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(RING_BYTES)
    })
}

/// Handshakes the broker serves at once; more wait (a Pod cannot pile up tasks).
const BROKER_CONCURRENCY: usize = 64;

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(context, e)
}

async fn within<T>(
    limit: Duration,
    context: &'static str,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| Error::io(context, std::io::ErrorKind::TimedOut.into()))?
        .map_err(io(context))
}

/// Removes the DPU relay's fast socket when the relay stops.
pub(super) struct FastSocket(Option<PathBuf>);

impl Drop for FastSocket {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Starts this side's part: the broker (CPU) or the fast socket's server (DPU),
/// `fast_socket` being the DPU relay's socket. Failing to start only loses the
/// fast path (programs then use the relay), so it is logged, not fatal.
pub(super) fn start(side: Side, ctx: &Ctx, fast_socket: PathBuf) -> Option<FastSocket> {
    match side {
        Side::Cpu => match bind_broker() {
            Ok(l) => {
                tokio::spawn(broker(l, ctx.clone(), fast_socket));
                Some(FastSocket(None))
            }
            Err(e) => {
                tracing::warn!(error = %e, "fast path off: cannot bind the broker");
                None
            }
        },
        Side::Dpu => {
            let _ = std::fs::remove_file(&fast_socket);
            match UnixListener::bind(&fast_socket) {
                Ok(l) => {
                    tokio::spawn(serve(l, ctx.clone()));
                    Some(FastSocket(Some(fast_socket)))
                }
                Err(e) => {
                    tracing::warn!(path = %fast_socket.display(), error = %e, "fast path off: cannot bind the fast socket");
                    None
                }
            }
        }
    }
}

/// Binds the broker's abstract socket in the current network namespace.
pub(super) fn bind_broker() -> Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(BROKER_NAME)
        .map_err(io("fast-path broker address"))?;
    let l =
        std::os::unix::net::UnixListener::bind_addr(&addr).map_err(io("bind fast-path broker"))?;
    l.set_nonblocking(true).map_err(io("fast-path broker"))?;
    UnixListener::from_std(l).map_err(io("fast-path broker"))
}

/// CPU side: answers programs' requests until the relay stops.
pub(super) async fn broker(listener: UnixListener, ctx: Ctx, dpu_fast: PathBuf) {
    let dpu_fast = Arc::new(dpu_fast);
    let slots = Arc::new(Semaphore::new(BROKER_CONCURRENCY));
    loop {
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "fast-path broker accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (ctx, path) = (ctx.clone(), dpu_fast.clone());
        tokio::spawn(async move {
            if let Err(e) = broker_one(&ctx, conn, &path).await {
                tracing::debug!(error = %e, "fast-path request failed");
            }
            drop(permit);
        });
    }
}

async fn broker_one(ctx: &Ctx, mut app: UnixStream, dpu_fast: &Path) -> Result<()> {
    let mut b = [0u8; REQUEST_LEN];
    within(
        HANDSHAKE_TIMEOUT,
        "fast-path request",
        app.read_exact(&mut b),
    )
    .await?;
    let req = Request::decode(&b)?;
    let dest = canonical(req.dest);
    let c = &ctx.counters;
    if !ctx.mirrors.covers(&dest) {
        Counters::inc(&c.fast_passed);
        return reply(&app, Reply::pass(), &[]).await;
    }
    let (answer, fds) = match offer(Request { dest }, dpu_fast).await {
        Ok(v) => v,
        Err(e) => {
            // The program falls back to the kernel, i.e. the relay's mirror.
            tracing::warn!(%dest, error = %e, "fast path unavailable, program uses the relay");
            Counters::inc(&c.fast_passed);
            return reply(&app, Reply::pass(), &[]).await;
        }
    };
    match answer.outcome {
        Outcome::Connected => Counters::inc(&c.fast_connects),
        Outcome::Pass => Counters::inc(&c.fast_passed),
        Outcome::Failed(_) => Counters::inc(&c.fast_failed),
    }
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    reply(&app, answer, &raw).await
}

async fn reply(app: &UnixStream, r: Reply, fds: &[i32]) -> Result<()> {
    let msg = r.encode();
    let sent = within(
        HANDSHAKE_TIMEOUT,
        "fast-path reply",
        app.async_io(Interest::WRITABLE, || send_with_fds(app.as_fd(), &msg, fds)),
    )
    .await?;
    if sent != msg.len() {
        return Err(Error::io(
            "fast-path reply",
            std::io::ErrorKind::WriteZero.into(),
        ));
    }
    Ok(())
}

/// Makes the connection's region and asks the DPU relay to
/// connect. On success returns the program's descriptors: its end of the Unix
/// connection to the DPU relay, and the region.
async fn offer(req: Request, dpu_fast: &Path) -> Result<(Reply, Vec<OwnedFd>)> {
    let region = Region::create(
        &RegionAddr::Memfd,
        Some(ring_bytes()),
        u32::from(Side::Cpu.code()),
    )?;
    let region_fd = region
        .fd()
        .ok_or(Error::io(
            "fast-path region",
            std::io::ErrorKind::NotFound.into(),
        ))?
        .try_clone_to_owned()
        .map_err(io("dup fast-path region"))?;
    let mut conn = within(
        HANDSHAKE_TIMEOUT,
        "connect DPU fast socket",
        UnixStream::connect(dpu_fast),
    )
    .await?;
    let msg = req.encode();
    let fds = [region_fd.as_raw_fd()];
    within(
        HANDSHAKE_TIMEOUT,
        "fast-path offer",
        conn.async_io(Interest::WRITABLE, || {
            send_with_fds(conn.as_fd(), &msg, &fds)
        }),
    )
    .await?;
    let mut b = [0u8; REPLY_LEN];
    within(OFFER_TIMEOUT, "fast-path answer", conn.read_exact(&mut b)).await?;
    let answer = Reply::decode(&b)?;
    if answer.outcome != Outcome::Connected {
        return Ok((answer, Vec::new()));
    }
    let conn = conn.into_std().map_err(io("fast-path connection"))?;
    Ok((answer, vec![OwnedFd::from(conn), region_fd]))
}

/// DPU side: serves fast connections offered through the fast socket.
pub(super) async fn serve(listener: UnixListener, ctx: Ctx) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::warn!(error = %e, "fast socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (ctx, slots) = (ctx.clone(), slots.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_one(&ctx, conn, slots).await {
                tracing::debug!(error = %e, "fast connection ended with an error");
            }
        });
    }
}

fn errno_of(e: &Error) -> i32 {
    match e {
        Error::Io { source, .. } => {
            source
                .raw_os_error()
                .unwrap_or(if source.kind() == std::io::ErrorKind::TimedOut {
                    libc::ETIMEDOUT
                } else {
                    libc::ECONNREFUSED
                })
        }
        _ => libc::ECONNREFUSED,
    }
}

async fn serve_one(ctx: &Ctx, mut conn: UnixStream, slots: Arc<Semaphore>) -> Result<()> {
    let mut b = [0u8; REQUEST_LEN];
    let (n, fds) = within(
        HANDSHAKE_TIMEOUT,
        "fast-path offer",
        conn.async_io(Interest::READABLE, || recv_with_fds(conn.as_fd(), &mut b)),
    )
    .await?;
    let req = Request::decode(&b[..n])?;
    let Ok::<[OwnedFd; 1], _>([region_fd]) = fds.try_into() else {
        return Err(Error::io(
            "fast-path offer",
            std::io::ErrorKind::InvalidData.into(),
        ));
    };
    let c = &ctx.counters;
    let Ok(_permit) = slots.try_acquire_owned() else {
        tracing::warn!("{MAX_CONNECTIONS} fast connections open: further ones use the relay");
        return answer(&mut conn, Reply::pass()).await;
    };
    let dest = canonical(req.dest);
    if ctx.mirrors.covers(&dest) {
        // Our own mirror: the real listener is in the other half, or gone.
        Counters::inc(&c.fast_failed);
        return answer(&mut conn, Reply::failed(libc::ECONNREFUSED)).await;
    }
    let tcp = match connect_tcp(ctx, dest).await {
        Ok(t) => t,
        Err(e) => {
            Counters::inc(&c.fast_failed);
            return answer(&mut conn, Reply::failed(errno_of(&e))).await;
        }
    };
    let region = Arc::new(Region::from_fd(RegionAddr::Memfd, region_fd)?);
    let taken = || Error::io("fast-path ring", std::io::ErrorKind::AlreadyExists.into());
    let rx = region.ring(0)?.acquire_consumer().ok_or_else(taken)?;
    let tx = region.ring(1)?.acquire_producer().ok_or_else(taken)?;
    let local = tcp.local_addr().ok();
    answer(
        &mut conn,
        Reply {
            outcome: Outcome::Connected,
            local,
        },
    )
    .await?;
    Counters::inc(&c.fast_connects);
    Counters::inc(&c.fast_active);
    let end = Pump::new(conn, tcp, rx, tx).run(c).await;
    Counters::dec(&c.fast_active);
    if end.is_err() {
        Counters::inc(&c.fast_reset);
    }
    match end {
        Ok(()) => tracing::debug!(%dest, "fast connection closed"),
        Err(e) => tracing::debug!(%dest, error = %e, "fast connection reset"),
    }
    Ok(())
}

async fn answer(conn: &mut UnixStream, r: Reply) -> Result<()> {
    within(
        HANDSHAKE_TIMEOUT,
        "fast-path answer",
        conn.write_all(&r.encode()),
    )
    .await
}

/// Why a fast connection ended abnormally.
#[derive(Debug, thiserror::Error)]
enum Abort {
    #[error("program side: {0}")]
    /// The program went away with data it never read, or the ring was corrupt.
    Program(&'static str),
    /// The TCP side failed or was reset.
    #[error("TCP side: {0}")]
    Tcp(std::io::ErrorKind),
}

/// Moves bytes between one fast connection's rings and its TCP connection.
struct Pump {
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
    fn new(conn: UnixStream, tcp: TcpStream, rx: Consumer, tx: Producer) -> Pump {
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

    async fn run(mut self, c: &Counters) -> std::result::Result<(), Abort> {
        let r = self.drive(c).await;
        if r.is_err() {
            let _ = self.tcp.set_zero_linger();
        }
        r
    }

    async fn drive(&mut self, c: &Counters) -> std::result::Result<(), Abort> {
        let budget = spin_budget();
        let mut last_work = Instant::now();
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
                last_work = Instant::now();
                continue;
            }
            if last_work.elapsed() < budget {
                // Elastic: stay awake briefly after work (a reply usually comes
                // within a round trip), offering the core and letting tokio
                // poll the sockets; then sleep.
                std::thread::yield_now();
                tokio::task::yield_now().await;
                continue;
            }
            self.sleep().await?;
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
