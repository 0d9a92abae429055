//! The BAR paths, with the DPU in a QEMU guest (the harness of
//! `tests/guest_slot.rs`, one boot for both):
//! * `ring_pci`: a bare ring ping-pong between this process, on the host's
//!   view of slot 0 (the ivshmem server's shared memory file), and
//!   `examples/guest_slot ring` on the guest's BAR2 window; both spin.
//! * `relay_pci_elastic`: 64-byte echo from a client in a host netns through
//!   the CPU relay (`ivshmem:<socket>@1/n`), slot 1 of the BAR, the DPU relay
//!   in the guest (`pci:` + `--irq-fds`, started by `examples/guest_relay`)
//!   to an echo server in the guest.
//!
//! Both are timed on the host. When QEMU cannot run, [`run`] says why and
//! measures nothing.

#[path = "../../../tests/guest_common/mod.rs"]
mod guest_common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use guest_common::*;
use heteronet::shm::Region;
use heteronet::RegionAddr;

use super::measure::{pct, MSG};
use super::topo::{in_ns, join, Netns, Proc};

/// Slot of the bare ring ping-pong (the relays use `guest_common::SLOT`).
const RING_SLOT: u32 = 0;
/// The guest's echo server, mirrored into the host netns by the relays.
const PORT: u16 = 7005;
const WARMUP: usize = 500;

pub struct GuestRun {
    pub accel: &'static str,
    /// (p50, p99) in microseconds.
    pub ring_pci: Result<(f64, f64)>,
    pub relay_pci_elastic: Result<(f64, f64)>,
}

/// Runs [`run`] and puts what it measured into `rtt` and why not into
/// `notes`; returns the accelerator, JSON null when no guest ran.
pub fn measure_into(
    secs: f64,
    rtt: &mut BTreeMap<&str, (f64, f64)>,
    notes: &mut Vec<String>,
) -> serde_json::Value {
    match run(secs) {
        Ok(g) => {
            for (name, r) in [
                ("ring_pci", g.ring_pci),
                ("relay_pci_elastic", g.relay_pci_elastic),
            ] {
                match r {
                    Ok(x) => {
                        rtt.insert(name, x);
                    }
                    Err(e) => notes.push(format!("{name}: {e:#}")),
                }
            }
            serde_json::json!(g.accel)
        }
        Err(e) => {
            notes.push(format!("ring_pci, relay_pci_elastic: no QEMU guest: {e:#}"));
            serde_json::Value::Null
        }
    }
}

/// The line under the table that says what the guest numbers are worth.
pub fn print_accel(accel: &serde_json::Value) {
    let Some(a) = accel.as_str() else {
        return;
    };
    let what = if a == "tcg" {
        "TCG emulates the guest CPU: these numbers bound, not measure, what a DPU or CXL hardware does."
    } else {
        "a KVM guest behind an emulated PCI device: closer to, still not, a DPU."
    };
    println!("note: ring_pci, relay_pci_elastic: DPU in a QEMU guest, accel {a}; {what}");
}

/// Removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Boots the guest once and measures both paths for about `secs` each.
/// Err: the guest could not run at all (the reason).
pub fn run(secs: f64) -> Result<GuestRun> {
    let dir =
        TempDir(std::env::temp_dir().join(format!("heteronet-bench-guest-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0)?;
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("bench binary has no directory")?;
    let inp = inputs(&dir.0, &RELAY_MODULES, bin.join("examples")).map_err(|e| anyhow!(e))?;
    let relay = bin.join("heteronet");
    let programs = [
        (inp.examples.join("guest_slot"), "guest_slot"),
        (inp.examples.join("guest_relay"), "guest_relay"),
        (relay.clone(), "heteronet"),
    ];
    // The ring first (it ends on the stop record), then the relay.
    let script = format!(
        "/guest_slot ring {BDF} {RING_SLOT} {SLOTS}\n\
         RUST_LOG=error /guest_relay {BDF} {SLOT} {SLOTS} {PORT} /heteronet"
    );
    let initrd = build_guest(&dir.0, &inp, &programs, &script).map_err(|e| anyhow!(e))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let _rt = rt.enter();
    let (socket, _stop) = server(&dir.0).map_err(|e| anyhow!(e))?;

    // The host end of the ring slot: created before the guest looks for it.
    let shm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.0.join("shm"))
        .context("open the ivshmem server's memory")?;
    let ring_addr: RegionAddr = format!("ivshmem:{}@{RING_SLOT}/{SLOTS}", socket.display())
        .parse()
        .map_err(|e| anyhow!("{e}"))?;
    let region = Arc::new(Region::create_in(&ring_addr, shm, None, 0)?);

    // The CPU relay of the relay slot, in a netns of its own.
    let ns = Netns::new(format!("hnb-pci-{}", std::process::id()))?;
    let cpu = Proc(
        Command::new(&relay)
            .args(["--side", "cpu", "--netns"])
            .arg(ns.path())
            .arg("--region")
            .arg(format!("ivshmem:{}@{SLOT}/{SLOTS}", socket.display()))
            .args(["--poll-ms", "100"])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {}", relay.display()))?,
    );

    let (qemu, rx) = boot(&socket, &inp, &initrd).map_err(|e| anyhow!(e))?;
    let mut tail: Vec<String> = Vec::new();
    let ring_pci = ring_pci(&region, &rx, &mut tail, secs);
    // A guest that never got to the ring may not boot at all: do not wait
    // the whole boot time twice.
    let boot_left = if ring_pci.is_ok() {
        BOOT
    } else {
        Duration::from_secs(30)
    };
    let relay_pci_elastic = relay_pci(&ns.path(), &rx, &mut tail, secs, boot_left);
    if ring_pci.is_err() || relay_pci_elastic.is_err() {
        eprintln!("guest console (last lines):\n{}", tail.join("\n"));
    }
    drop(qemu);
    drop(cpu);
    Ok(GuestRun {
        accel: inp.accel,
        ring_pci,
        relay_pci_elastic,
    })
}

/// Keeps the last console lines for an error report.
fn keep(tail: &mut Vec<String>) -> impl FnMut(&str) + '_ {
    move |l| {
        tail.push(l.to_string());
        if tail.len() > 40 {
            tail.remove(0);
        }
    }
}

fn line(
    rx: &mpsc::Receiver<String>,
    tail: &mut Vec<String>,
    prefix: &str,
    within: Duration,
) -> Result<String> {
    wait_line(rx, prefix, within, &mut keep(tail)).map_err(|e| anyhow!(e))
}

/// `GUEST-JSON {...}` lines until one satisfies `pred`.
fn guest_json(
    rx: &mpsc::Receiver<String>,
    tail: &mut Vec<String>,
    within: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let l = line(rx, tail, "GUEST-JSON ", left)?;
        let v: serde_json::Value = serde_json::from_str(&l["GUEST-JSON ".len()..])
            .with_context(|| format!("guest printed bad JSON: {l}"))?;
        if pred(&v) {
            return Ok(v);
        }
    }
}

fn ring_pci(
    region: &Arc<Region>,
    rx: &mpsc::Receiver<String>,
    tail: &mut Vec<String>,
    secs: f64,
) -> Result<(f64, f64)> {
    let busy = || anyhow!("ring already in use");
    let mut tx = region.ring(0)?.acquire_producer().ok_or_else(busy)?;
    let mut back = region.ring(1)?.acquire_consumer().ok_or_else(busy)?;
    line(rx, tail, "GUEST-RING-READY", BOOT)?;
    let mut v = heteronet::bench::ring_ping(
        &mut tx,
        &mut back,
        WARMUP,
        Duration::from_secs_f64(secs),
        Duration::from_secs(10),
    )?;
    let doc = guest_json(rx, tail, Duration::from_secs(30), |v| {
        v.get("ring_pci").is_some()
    })?;
    let echoed = doc["ring_pci"]["echoed"].as_u64();
    if echoed != Some((WARMUP + v.len() + 1) as u64) {
        bail!(
            "guest echoed {echoed:?} records, we sent {}",
            WARMUP + v.len() + 1
        );
    }
    let (p50, p99) = heteronet::bench::percentiles_us(&mut v);
    Ok((super::measure::round2(p50), super::measure::round2(p99)))
}

/// One 64-byte ping-pong on `c`.
fn ping(c: &mut TcpStream, buf: &mut [u8; MSG]) -> std::io::Result<()> {
    c.write_all(buf)?;
    c.read_exact(buf)
}

fn relay_pci(
    ns: &Path,
    rx: &mpsc::Receiver<String>,
    tail: &mut Vec<String>,
    secs: f64,
    boot: Duration,
) -> Result<(f64, f64)> {
    line(rx, tail, "GUEST-RELAY", boot)?;
    let addr: SocketAddr = ([127, 0, 0, 1], PORT).into();
    let (mut v, sent) = join(in_ns(ns, move || {
        // Until the relays have mirrored the guest's listener and echo.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [7u8; MSG];
        let mut c = loop {
            let attempt =
                TcpStream::connect_timeout(&addr, Duration::from_secs(5)).and_then(|mut c| {
                    c.set_nodelay(true)?;
                    c.set_read_timeout(Some(Duration::from_secs(30)))?;
                    ping(&mut c, &mut buf).map(|_| c)
                });
            match attempt {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => bail!("no echo through the relays: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        };
        for _ in 0..WARMUP {
            ping(&mut c, &mut buf)?;
        }
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut v = Vec::with_capacity(1 << 14);
        while Instant::now() < end {
            let t = Instant::now();
            ping(&mut c, &mut buf)?;
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let sent = ((1 + WARMUP + v.len()) * MSG) as u64;
        Ok((v, sent))
    }))?;
    // The guest's echo reports each connection it served; ours echoed all.
    guest_json(rx, tail, Duration::from_secs(30), |d| {
        d["echo"]["bytes"].as_u64() == Some(sent)
    })
    .context("the guest's echo server never reported our connection")?;
    Ok((pct(&mut v, 0.5), pct(&mut v, 0.99)))
}
