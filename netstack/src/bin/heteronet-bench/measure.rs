//! Echo/sink server and the RTT, throughput, scale and CPU measurements.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::topo::{in_ns, join};

pub const MSG: usize = 64;
pub const CHUNK: usize = 64 * 1024;
/// USER_HZ is 100 for every Linux ABI the relay runs on.
pub const CLK_TCK: f64 = 100.0;

/// Serves in `ns` on `addr`: first byte 'E' = echo 64-byte messages, 'S' = sink
/// until EOF then reply with the byte count.
pub fn serve(ns: &Path, addr: SocketAddr) -> Result<SocketAddr> {
    join(in_ns(ns, move || {
        let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        let bound = l.local_addr()?;
        thread::spawn(move || {
            for c in l.incoming().flatten() {
                thread::spawn(move || handle(c));
            }
        });
        Ok(bound)
    }))
}

pub fn handle(mut c: TcpStream) -> std::io::Result<()> {
    c.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    c.read_exact(&mut mode)?;
    if matches!(mode[0], b'E' | b'R' | b'D') {
        // 'E': 64-byte pings; 'R': 100-byte requests (the CPU measurement);
        // 'D': like 'R' from a slow upstream that answers after a pause.
        let pause = (mode[0] == b'D').then_some(super::cpu::SLOW_SERVER);
        let mut buf = [0u8; super::cpu::REQ];
        let buf = if mode[0] == b'E' {
            &mut buf[..MSG]
        } else {
            &mut buf[..]
        };
        loop {
            if c.read_exact(buf).is_err() {
                return Ok(());
            }
            if let Some(p) = pause {
                thread::sleep(p);
            }
            c.write_all(buf)?;
        }
    }
    let mut buf = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    c.write_all(&total.to_be_bytes())
}

pub fn connect(addr: SocketAddr, mode: u8) -> Result<TcpStream> {
    let mut c = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    c.set_nodelay(true)?;
    c.write_all(&[mode])?;
    Ok(c)
}

/// One ping-pong: true if the echo came back.
pub fn ping(c: &mut TcpStream, buf: &mut [u8; MSG]) -> bool {
    c.write_all(buf).is_ok() && c.read_exact(buf).is_ok()
}

pub fn rtt_samples(c: &mut TcpStream, secs: f64, stop: Option<&AtomicBool>) -> Result<Vec<f64>> {
    let mut buf = [7u8; MSG];
    for _ in 0..500 {
        if !ping(c, &mut buf) {
            bail!("echo failed during warm-up");
        }
    }
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut v = Vec::with_capacity(50_000);
    while Instant::now() < end && !stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
        let t = Instant::now();
        if !ping(c, &mut buf) {
            bail!("echo failed");
        }
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(v)
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    round2(v[((v.len() as f64 - 1.0) * p).round() as usize])
}

pub struct Path1 {
    pub client_ns: PathBuf,
    pub addr: SocketAddr,
}

pub fn measure_rtt(p: &Path1, secs: f64) -> Result<(f64, f64)> {
    measure_rtt_n(p, secs).map(|(a, b, _)| (a, b))
}

/// RTT p50, p99 and the number of pings measured.
pub fn measure_rtt_n(p: &Path1, secs: f64) -> Result<(f64, f64, usize)> {
    let addr = p.addr;
    let mut v = join(in_ns(&p.client_ns, move || {
        let mut c = connect(addr, b'E')?;
        rtt_samples(&mut c, secs, None)
    }))?;
    let n = v.len();
    Ok((pct(&mut v, 0.5), pct(&mut v, 0.99), n))
}

pub fn measure_tput(p: &Path1, secs: f64) -> Result<f64> {
    measure_tput_n(p, secs).map(|(g, _)| g)
}

/// Throughput in Gbit/s and the number of 64 KiB chunks written.
pub fn measure_tput_n(p: &Path1, secs: f64) -> Result<(f64, u64)> {
    let addr = p.addr;
    join(in_ns(&p.client_ns, move || {
        let mut c = connect(addr, b'S')?;
        let buf = vec![0x5au8; CHUNK];
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut sent: u64 = 0;
        while Instant::now() < end {
            c.write_all(&buf)?;
            sent += CHUNK as u64;
        }
        c.shutdown(std::net::Shutdown::Write)?;
        let mut n = [0u8; 8];
        c.read_exact(&mut n)?;
        let got = u64::from_be_bytes(n);
        if got != sent {
            bail!("sink counted {got} bytes, sent {sent}");
        }
        Ok((
            round2(sent as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9),
            sent / CHUNK as u64,
        ))
    }))
}

/// p99 RTT over `n` concurrent ping-pong streams, and the pings measured.
pub fn measure_scale(p: &Path1, n: usize, secs: f64) -> Result<(f64, usize)> {
    let addr = p.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    for _ in 0..n {
        let stop = stop.clone();
        hs.push(in_ns(&p.client_ns, move || {
            let mut c = connect(addr, b'E')?;
            rtt_samples(&mut c, secs, Some(&stop))
        }));
    }
    let mut all = Vec::new();
    for h in hs {
        all.extend(join(h)?);
    }
    let count = all.len();
    Ok((pct(&mut all, 0.99), count))
}

/// Waits until `addr` accepts connections from `ns` and echoes.
pub fn wait_ready(ns: &Path, addr: SocketAddr) -> Result<()> {
    join(in_ns(ns, move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut c) = connect(addr, b'E') {
                let mut b = [1u8; MSG];
                if ping(&mut c, &mut b) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("{addr} not reachable");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }))
}

pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm field: state is index 0; utime and stime are fields 14 and 15 of stat.
    let ut: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0);
    let st: u64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
    Ok(ut + st)
}

/// Times the threads of `pid` blocked (voluntary context switches: epoll or
/// doorbell sleeps), summed over all its threads. Load-independent, unlike µs.
pub fn sleeps(pid: u32) -> Result<u64> {
    let mut total = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let st = std::fs::read_to_string(t?.path().join("status"))?;
        total += st
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// Rows `path | p50 | p99 | p50/veth | Gbit/s | /veth` for the `names` that
/// have a latency, in that order; a missing throughput shows as `-`.
pub fn print_paths(
    labels: [&str; 6],
    names: &[&str],
    lat: &std::collections::BTreeMap<&str, (f64, f64)>,
    bw: &std::collections::BTreeMap<&str, f64>,
) {
    let veth_p50 = lat.get("veth").map(|x| x.0).unwrap_or(f64::NAN);
    let veth_bw = bw.get("veth").copied().unwrap_or(f64::NAN);
    let [a, b, c, d, e, f] = labels;
    println!("{a:<18} {b:>10} {c:>10} {d:>9} {e:>10} {f:>9}");
    let dash = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    for name in names {
        let Some((p50, p99)) = lat.get(name) else {
            continue;
        };
        let t = bw.get(name).copied();
        println!(
            "{:<18} {:>10.2} {:>10.2} {:>9.2} {:>10} {:>9}",
            name,
            p50,
            p99,
            p50 / veth_p50,
            dash(t),
            dash(t.map(|t| t / veth_bw)),
        );
    }
}
