//! CPU cost of the relays: CPU seconds (user + system, from /proc) of every
//! relay process and its children per request/response and per GiB streamed.
//! Less noisy than latency, but a spinning relay's CPU still follows the load
//! of the box (it spins while its peer waits for a core), so each measurement
//! is repeated and the median reported.

use std::io::{Read, Write};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::measure::{connect, round2, Path1, CHUNK, CLK_TCK};
use super::topo::{in_ns, join};

/// Think time of the slow-upstream server: with it every relay hop sits idle
/// for a while between request and response, as behind a real proxy.
pub const SLOW_SERVER: std::time::Duration = std::time::Duration::from_micros(100);

/// Request and response size of the CPU measurement.
pub const REQ: usize = 100;

/// CPU ticks (utime + stime + reaped children) of `pid` and of its live
/// children (a forking relay like socat serves each connection in a child).
fn tree_ticks(pid: u32) -> Result<u64> {
    let mut total = ticks(pid)?;
    let kids =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for k in kids
        .split_whitespace()
        .filter_map(|k| k.parse::<u32>().ok())
    {
        // A child that just exited is counted by its parent once reaped.
        total += tree_ticks(k).unwrap_or(0);
    }
    Ok(total)
}

fn ticks(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14..=17 of stat (utime, stime, cutime, cstime); index 0 is field 3.
    Ok(f.iter()
        .skip(11)
        .take(4)
        .filter_map(|x| x.parse::<u64>().ok())
        .sum())
}

/// CPU seconds used so far by `pids` and their children.
pub fn cpu_secs(pids: &[u32]) -> Result<f64> {
    let t: u64 = pids.iter().map(|p| tree_ticks(*p)).sum::<Result<u64>>()?;
    Ok(t as f64 / CLK_TCK)
}

/// Microseconds of relay CPU per 100-byte request/response, over `reqs`
/// round trips spread on `conns` persistent connections driven at once.
pub fn cpu_per_req(p: &Path1, pids: &[u32], reqs: usize, conns: usize, mode: u8) -> Result<f64> {
    let addr = p.addr;
    let n_conns = conns.max(1);
    let conns = (0..n_conns)
        .map(|_| join(in_ns(&p.client_ns, move || connect(addr, mode))))
        .collect::<Result<Vec<_>>>()?;
    let per = reqs.div_ceil(n_conns);
    // Warm up (children forked, buffers sized) outside the measured window.
    let conns = drive(conns, 200)?;
    let c0 = cpu_secs(pids)?;
    let conns = drive(conns, per)?;
    let c1 = cpu_secs(pids)?;
    drop(conns);
    Ok(round2((c1 - c0) * 1e6 / (per * n_conns) as f64))
}

fn drive(conns: Vec<std::net::TcpStream>, n: usize) -> Result<Vec<std::net::TcpStream>> {
    let hs: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || -> Result<std::net::TcpStream> {
                let mut buf = [0x42u8; REQ];
                for _ in 0..n {
                    c.write_all(&buf)?;
                    c.read_exact(&mut buf)?;
                }
                Ok(c)
            })
        })
        .collect();
    hs.into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("request thread panicked"))?
        })
        .collect()
}

/// Relay CPU seconds per GiB streamed one way in 64 KiB writes, and Gbit/s.
pub fn cpu_per_gib(p: &Path1, pids: &[u32], gib: f64) -> Result<(f64, f64)> {
    let addr = p.addr;
    let pids = pids.to_vec();
    let bytes = ((gib * (1u64 << 30) as f64) as u64).div_ceil(CHUNK as u64) * CHUNK as u64;
    join(in_ns(&p.client_ns, move || {
        let mut c = connect(addr, b'S')?;
        let buf = vec![0x5au8; CHUNK];
        // One chunk first so a forking relay has its child.
        c.write_all(&buf)?;
        let c0 = cpu_secs(&pids)?;
        let start = Instant::now();
        let mut sent = CHUNK as u64;
        while sent < bytes + CHUNK as u64 {
            c.write_all(&buf)?;
            sent += CHUNK as u64;
        }
        c.shutdown(std::net::Shutdown::Write)?;
        let mut n = [0u8; 8];
        c.read_exact(&mut n)?;
        let secs = start.elapsed().as_secs_f64();
        let c1 = cpu_secs(&pids)?;
        if u64::from_be_bytes(n) != sent {
            bail!("sink counted {} bytes, sent {sent}", u64::from_be_bytes(n));
        }
        let gib_sent = (sent - CHUNK as u64) as f64 / (1u64 << 30) as f64;
        Ok((
            round2((c1 - c0) / gib_sent),
            round2((sent - CHUNK as u64) as f64 * 8.0 / secs / 1e9),
        ))
    }))
}

/// What one CPU measurement does.
pub struct CpuRun {
    pub reqs: usize,
    pub conns: usize,
    pub gib: f64,
    pub reps: usize,
}

/// Medians over the repetitions of one CPU measurement.
pub struct Cost {
    /// µs per request with `conns` connections.
    pub per_req: f64,
    /// µs per request with one connection (each hop waits a whole round
    /// trip between requests: what spinning costs).
    pub per_req_1conn: f64,
    /// µs per request with `conns` connections to a slow upstream.
    pub per_req_slow: f64,
    pub per_gib: f64,
    pub gbps: f64,
}

/// Runs the CPU measurement `run.reps` times and takes the medians.
pub fn median_cost(p: &Path1, pids: &[u32], run: &CpuRun) -> Result<Cost> {
    let (mut req, mut one, mut slow) = (Vec::new(), Vec::new(), Vec::new());
    let (mut gib, mut gbps) = (Vec::new(), Vec::new());
    for _ in 0..run.reps.max(1) {
        req.push(cpu_per_req(p, pids, run.reqs, run.conns, b'R')?);
        one.push(cpu_per_req(p, pids, run.reqs / 2, 1, b'R')?);
        slow.push(cpu_per_req(p, pids, run.reqs / 2, run.conns, b'D')?);
        let (g, t) = cpu_per_gib(p, pids, run.gib)?;
        gib.push(g);
        gbps.push(t);
    }
    Ok(Cost {
        per_req: median(&mut req),
        per_req_1conn: median(&mut one),
        per_req_slow: median(&mut slow),
        per_gib: median(&mut gib),
        gbps: median(&mut gbps),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
