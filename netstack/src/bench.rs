//! Micro-benchmarks used by the bench-net binary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::link::{LinkBuilder, Side};
use crate::mux::{Destination, Mux, MuxEvent, MuxStream};
use crate::notify::NotifyMode;
use crate::shm::{Consumer, Producer, Region, RegionAddr};

/// Payload of one ping.
pub const RING_MSG: usize = 64;

/// Round-trip times of a 64-byte record bounced over the two rings of a memfd
/// region between two threads that both spin (no doorbells): the bare ring
/// cost. Runs a short warm-up first; returns `iterations` samples.
pub fn ring_rtt(iterations: usize) -> Result<Vec<Duration>> {
    let region = Arc::new(Region::create(&RegionAddr::Memfd, Some(1 << 20), 0)?);
    let busy = || Error::Config("ring busy");
    let mut a_tx = region.ring(0)?.acquire_producer().ok_or_else(busy)?;
    let mut a_rx = region.ring(1)?.acquire_consumer().ok_or_else(busy)?;
    let mut b_tx = region.ring(1)?.acquire_producer().ok_or_else(busy)?;
    let mut b_rx = region.ring(0)?.acquire_consumer().ok_or_else(busy)?;
    let warmup = (iterations / 10).max(100);
    let total = warmup + iterations;
    let echo = std::thread::spawn(move || -> Result<()> {
        let mut buf = [0u8; RING_MSG];
        for _ in 0..total {
            spin_pop(&mut b_rx, &mut buf)?;
            spin_push(&mut b_tx, &buf)?;
        }
        Ok(())
    });
    let mut out = Vec::with_capacity(iterations);
    let mut buf = [0u8; RING_MSG];
    for i in 0..total {
        buf[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let t = Instant::now();
        spin_push(&mut a_tx, &buf)?;
        spin_pop(&mut a_rx, &mut buf)?;
        let d = t.elapsed();
        if u64::from_le_bytes(buf[..8].try_into().unwrap_or_default()) != i as u64 {
            return Err(Error::Protocol("ring bench echo mismatch"));
        }
        if i >= warmup {
            out.push(d);
        }
    }
    echo.join()
        .map_err(|_| Error::Protocol("ring bench echo thread panicked"))??;
    Ok(out)
}

fn spin_push(p: &mut Producer, msg: &[u8]) -> Result<()> {
    spin_push_until(p, msg, None)
}

fn spin_pop(c: &mut Consumer, out: &mut [u8]) -> Result<()> {
    spin_pop_until(c, out, None)
}

/// Spins until the peer answered: gives up at `deadline` (checked every few
/// thousand spins, so the clock costs nothing measurable).
fn spin_push_until(p: &mut Producer, msg: &[u8], deadline: Option<Instant>) -> Result<()> {
    let mut n = 0u32;
    while !p.try_push(&[msg])? {
        n = n.wrapping_add(1);
        if n.is_multiple_of(4096) && deadline.is_some_and(|d| Instant::now() > d) {
            return Err(Error::Handshake("ring peer stopped consuming"));
        }
        std::hint::spin_loop();
    }
    p.publish();
    Ok(())
}

fn spin_pop_until(c: &mut Consumer, out: &mut [u8], deadline: Option<Instant>) -> Result<()> {
    let mut n = 0u32;
    loop {
        if c.pop_with(|r| r.read(0, out))?.is_some() {
            c.release();
            return Ok(());
        }
        n = n.wrapping_add(1);
        if n.is_multiple_of(4096) && deadline.is_some_and(|d| Instant::now() > d) {
            return Err(Error::Handshake("ring peer did not answer in time"));
        }
        std::hint::spin_loop();
    }
}

/// Sequence number that ends [`ring_echo`].
pub const RING_STOP: u64 = u64::MAX;

/// Ping side of a ring ping-pong with another process (e.g. across a PCI
/// BAR), both spinning: `warmup` pings, then timed ones for `run_for`, then
/// [`RING_STOP`]. A peer silent for `patience` is an error, never a hang.
/// Returns the timed round trips; the peer echoed `warmup + len + 1` records.
pub fn ring_ping(
    tx: &mut Producer,
    rx: &mut Consumer,
    warmup: usize,
    run_for: Duration,
    patience: Duration,
) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(1 << 16);
    let mut buf = [0u8; RING_MSG];
    let mut seq = 0u64;
    let mut end = (warmup == 0).then(|| Instant::now() + run_for);
    loop {
        let stop = end.is_some_and(|e| Instant::now() >= e);
        let sent = if stop { RING_STOP } else { seq };
        buf[..8].copy_from_slice(&sent.to_le_bytes());
        let t = Instant::now();
        let deadline = Some(t + patience);
        spin_push_until(tx, &buf, deadline)?;
        spin_pop_until(rx, &mut buf, deadline)?;
        let d = t.elapsed();
        if u64::from_le_bytes(buf[..8].try_into().unwrap_or_default()) != sent {
            return Err(Error::Protocol("ring ping: echo mismatch"));
        }
        if stop {
            return Ok(out);
        }
        if seq as usize >= warmup {
            out.push(d);
        } else if seq as usize + 1 == warmup {
            end = Some(Instant::now() + run_for);
        }
        seq += 1;
    }
}

/// Echo side of [`ring_ping`]: returns the records echoed, [`RING_STOP`] included.
pub fn ring_echo(tx: &mut Producer, rx: &mut Consumer, patience: Duration) -> Result<u64> {
    let mut buf = [0u8; RING_MSG];
    let mut n = 0u64;
    loop {
        spin_pop_until(rx, &mut buf, Some(Instant::now() + patience))?;
        spin_push_until(tx, &buf, Some(Instant::now() + patience))?;
        n += 1;
        if u64::from_le_bytes(buf[..8].try_into().unwrap_or_default()) == RING_STOP {
            return Ok(n);
        }
    }
}

/// p50 and p99 of samples, in microseconds.
pub fn percentiles_us(samples: &mut [Duration]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    (at(0.5), at(0.99))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    let mut b = if std::env::var_os("HETERONET_BENCH_CURRENT_THREAD").is_some() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    b.enable_all().build().map_err(|e| Error::Rendezvous {
        context: "tokio runtime",
        source: e,
    })
}

/// Runs `client` against a mux pair whose peer side echoes every stream; each
/// side has its own 2-worker runtime on its own thread (like two relays).
fn with_echo_pair<T: Send + 'static>(
    mode: NotifyMode,
    client: impl FnOnce(MuxStream) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>>
        + Send
        + 'static,
) -> Result<T> {
    let dir = std::env::temp_dir().join(format!("heteronet-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let sock = dir.join("rv.sock");
    let b = LinkBuilder::new(RegionAddr::Memfd)
        .notify(mode)
        .rendezvous(&sock);
    let server_rt = runtime()?;
    let listener = {
        let _g = server_rt.enter();
        b.clone().side(Side::Cpu).create()?
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        server_rt.block_on(async move {
            let (_h, mut ev) = Mux::start(listener);
            let echo = async {
                while let Some(e) = ev.next().await {
                    if let MuxEvent::Stream(s, _) = e {
                        tokio::spawn(async move {
                            let (mut r, mut w) = tokio::io::split(s);
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                match r.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if w.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                            let _ = w.shutdown().await;
                        });
                    }
                }
            };
            tokio::select! {
                _ = echo => {}
                _ = stop_rx => {}
            }
        })
    });
    let client_rt = runtime()?;
    let r = client_rt.block_on(async move {
        let (h, _ev) = Mux::start(b.side(Side::Dpu));
        tokio::time::timeout(Duration::from_secs(10), h.connected())
            .await
            .map_err(|_| Error::Handshake("bench peer did not come up"))??;
        let s = h.open(Destination::tcp(([127, 0, 0, 1], 9).into())).await?;
        let r = client(s).await;
        if std::env::var_os("HETERONET_BENCH_DEBUG").is_some() {
            eprintln!("client mux stats: {:?}", h.stats());
        }
        r
    });
    let _ = stop_tx.send(());
    let _ = server.join();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// Round-trip times of `size`-byte messages echoed over one mux stream.
pub fn mux_rtt(iterations: usize, size: usize, mode: NotifyMode) -> Result<Vec<Duration>> {
    with_echo_pair(mode, move |mut s| {
        Box::pin(async move {
            let mut out = Vec::with_capacity(iterations);
            let msg = vec![7u8; size];
            let mut back = vec![0u8; size];
            let warmup = (iterations / 10).max(100);
            for i in 0..warmup + iterations {
                let t = Instant::now();
                s.write_all(&msg).await?;
                s.read_exact(&mut back).await?;
                if i >= warmup {
                    out.push(t.elapsed());
                }
            }
            Ok(out)
        })
    })
}

/// Gbit/s of one stream writing `total` bytes in 64 KiB writes, echoed back.
pub fn mux_throughput(total: usize, mode: NotifyMode) -> Result<f64> {
    with_echo_pair(mode, move |s| {
        Box::pin(async move {
            let (mut r, mut w) = tokio::io::split(s);
            let t = Instant::now();
            let writer = tokio::spawn(async move {
                let buf = vec![1u8; 64 * 1024];
                let mut sent = 0;
                while sent < total {
                    w.write_all(&buf).await?;
                    sent += buf.len();
                }
                w.shutdown().await?;
                Ok::<_, std::io::Error>(())
            });
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0usize;
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            writer
                .await
                .map_err(|_| Error::Protocol("bench writer panicked"))??;
            Ok(got as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e9)
        })
    })
}
