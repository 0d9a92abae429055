//! `heteronet-bench`: the `make bench-net` driver.
//!
//! Builds its own network namespaces and measures, in one run, 64-byte echo RTT,
//! throughput of 64 KiB writes, idle CPU of the relays and RTT under many
//! concurrent ping-pong streams, for: loopback in one netns, veth between two
//! netns, a socat TCP -> Unix -> TCP relay, a kernel splice(2) relay, the HeteroNet relay (elastic and
//! busy-poll) and the bare ring; and, with the DPU in a QEMU guest, the ring
//! across the ivshmem BAR and the relays across it (`guest.rs`). Prints a
//! table and writes JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Value};

#[path = "heteronet-bench/cpu.rs"]
mod cpu;
#[path = "heteronet-bench/guest.rs"]
mod guest;
#[path = "heteronet-bench/measure.rs"]
mod measure;
#[path = "heteronet-bench/splice.rs"]
mod splice;
#[path = "heteronet-bench/tools.rs"]
mod tools;
#[path = "heteronet-bench/topo.rs"]
mod topo;

use measure::*;
use topo::*;

#[derive(Debug, Parser)]
struct Args {
    /// JSON output file.
    #[arg(long, default_value = "target/bench/net.json")]
    out: PathBuf,
    /// Seconds per RTT measurement.
    #[arg(long, default_value_t = 1.5)]
    rtt_secs: f64,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 2.0)]
    tput_secs: f64,
    /// Seconds of the idle CPU measurement per mode.
    #[arg(long, default_value_t = 10.0)]
    idle_secs: f64,
    /// Seconds per concurrency step.
    #[arg(long, default_value_t = 1.5)]
    scale_secs: f64,
    /// Runtime threads of each relay (passed as `--threads`).
    #[arg(long, default_value_t = 1)]
    relay_threads: usize,
    /// Skip the idle-CPU and concurrency steps (quick A/B runs).
    #[arg(long)]
    quick: bool,
    /// Relay modes to measure (elastic, busy-poll).
    #[arg(long, value_delimiter = ',', default_value = "elastic,busy-poll")]
    modes: Vec<String>,
    /// Request/response round trips of the relay CPU measurement.
    #[arg(long, default_value_t = 20_000)]
    cpu_reqs: usize,
    /// Repetitions of each relay CPU measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    cpu_reps: usize,
    /// Persistent connections of the relay CPU measurement.
    #[arg(long, default_value_t = 4)]
    cpu_conns: usize,
    /// GiB streamed for the relay CPU-per-GiB measurement.
    #[arg(long, default_value_t = 1.0)]
    cpu_gib: f64,
    /// Only the relay CPU measurements (plus veth throughput as reference).
    #[arg(long)]
    cpu_only: bool,
    /// Skip the socat relay.
    #[arg(long)]
    no_socat: bool,
    /// Only loopback, veth and socat (no relay needed).
    #[arg(long)]
    baselines_only: bool,
    /// Skip the QEMU guest paths (ring_pci, relay_pci_elastic).
    #[arg(long)]
    no_guest: bool,
    /// Only the QEMU guest paths.
    #[arg(long)]
    guest_only: bool,
    /// Alternated rounds of the sockperf/iperf3 rows (0: skip them).
    #[arg(long, default_value_t = 3)]
    tools_rounds: usize,
    /// Seconds per sockperf/iperf3 run.
    #[arg(long, default_value_t = 2.0)]
    tools_secs: f64,
    /// Only the sockperf/iperf3 rows.
    #[arg(long)]
    tools_only: bool,
    /// The fast-path library (default: libheterosocket.so next to this binary).
    #[arg(long)]
    preload: Option<PathBuf>,
}

impl Args {
    fn cpu(&self) -> cpu::CpuRun {
        cpu::CpuRun {
            reqs: self.cpu_reqs,
            conns: self.cpu_conns,
            gib: self.cpu_gib,
            reps: self.cpu_reps,
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut rtt: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut tput: BTreeMap<&str, f64> = BTreeMap::new();
    let mut idle: BTreeMap<&str, f64> = BTreeMap::new();
    let mut scale: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut notes: Vec<String> = Vec::new();
    // Relay thread sleeps (voluntary context switches, both relays) per
    // 64-byte ping and per 64 KiB chunk.
    let mut sleeps_rtt: BTreeMap<&str, f64> = BTreeMap::new();
    let mut sleeps_tput: BTreeMap<&str, f64> = BTreeMap::new();
    let mut scale_sleeps: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    // Relay CPU (both relay processes): µs per 100-byte request, s per GiB.
    let mut cpu_req: BTreeMap<&str, f64> = BTreeMap::new();
    let mut cpu_gib: BTreeMap<&str, f64> = BTreeMap::new();
    let mut cpu_req1: BTreeMap<&str, f64> = BTreeMap::new();
    let mut cpu_slow: BTreeMap<&str, f64> = BTreeMap::new();

    let veth = veth_pair("v", 1)?;
    if args.tools_only {
        let t = tool_rows(&args, &veth, &mut notes)?;
        tools::print(&t, args.tools_rounds);
        for n in &notes {
            println!("note: {n}");
        }
        let (s, i) = tools::json(&t);
        return write_json(
            &args,
            json!({"sockperf": s, "iperf3": i, "idle_cpu_pct": {"fastpath": t.idle_fastpath}}),
        );
    }
    let srv_b = serve(&veth.b.path(), "0.0.0.0:7000".parse()?)?;
    let _ = serve(&veth.a.path(), "127.0.0.1:7001".parse()?)?;
    let paths: Vec<(&str, Path1)> = vec![
        (
            "loopback",
            Path1 {
                client_ns: veth.a.path(),
                addr: "127.0.0.1:7001".parse()?,
            },
        ),
        (
            "veth",
            Path1 {
                client_ns: veth.a.path(),
                addr: format!("10.98.1.2:{}", srv_b.port()).parse()?,
            },
        ),
    ];
    for (name, p) in &paths {
        if args.guest_only || (args.cpu_only && *name != "veth") {
            continue;
        }
        if !args.cpu_only {
            rtt.insert(name, measure_rtt(p, args.rtt_secs)?);
        }
        tput.insert(name, measure_tput(p, args.tput_secs)?);
        // Concurrent ping-pongs over veth: the kernel's own p99 at each n, the
        // reference for the relays' scale rows.
        if *name == "veth" && !(args.quick || args.cpu_only) {
            for n in [1usize, 8, 64, 256] {
                let (p99, _) = measure_scale(p, n, args.scale_secs)?;
                scale
                    .entry("veth".to_string())
                    .or_default()
                    .insert(n.to_string(), p99);
            }
        }
    }

    // socat: TCP in A -> Unix socket -> TCP to the server on B's loopback.
    if !(args.no_socat || args.guest_only) {
        let unix = format!("/tmp/heteronet-bench-socat-{}.sock", std::process::id());
        let _ = std::fs::remove_file(&unix);
        let _srv = serve(&veth.b.path(), "127.0.0.1:7002".parse()?)?;
        let mk = |ns: &Netns, a: String, b: String| -> Result<Proc> {
            Ok(Proc(
                Command::new("ip")
                    .args(["netns", "exec", &ns.0, "socat", &a, &b])
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("spawn socat")?,
            ))
        };
        let _s1 = mk(
            &veth.b,
            format!("UNIX-LISTEN:{unix},fork"),
            "TCP:127.0.0.1:7002,nodelay".into(),
        )?;
        thread::sleep(Duration::from_millis(200));
        let _s2 = mk(
            &veth.a,
            "TCP-LISTEN:7003,bind=127.0.0.1,fork,reuseaddr,nodelay".into(),
            format!("UNIX-CONNECT:{unix}"),
        )?;
        let p = Path1 {
            client_ns: veth.a.path(),
            addr: "127.0.0.1:7003".parse()?,
        };
        wait_ready(&p.client_ns, p.addr)?;
        let pids = [_s1.0.id(), _s2.0.id()];
        let c = cpu::median_cost(&p, &pids, &args.cpu())?;
        cpu_req.insert("relay_socat", c.per_req);
        cpu_req1.insert("relay_socat", c.per_req_1conn);
        cpu_slow.insert("relay_socat", c.per_req_slow);
        cpu_gib.insert("relay_socat", c.per_gib);
        if !args.cpu_only {
            rtt.insert("relay_socat", measure_rtt(&p, args.rtt_secs)?);
            tput.insert("relay_socat", measure_tput(&p, args.tput_secs)?);
        }
        let _ = std::fs::remove_file(&unix);
    }

    // splice: TCP in A -> pipe -> TCP to the server on B's loopback, no user copy.
    if !(args.guest_only || args.cpu_only) {
        let srv = serve(&veth.b.path(), "127.0.0.1:7004".parse()?)?;
        let p = Path1 {
            client_ns: veth.a.path(),
            addr: "127.0.0.1:7005".parse()?,
        };
        splice::start(&veth.a.path(), p.addr, &veth.b.path(), srv)?;
        wait_ready(&p.client_ns, p.addr)?;
        rtt.insert("relay_splice", measure_rtt(&p, args.rtt_secs)?);
        tput.insert("relay_splice", measure_tput(&p, args.tput_secs)?);
    }

    let relays: &[(&str, &str, &str)] = if args.baselines_only || args.guest_only {
        &[]
    } else {
        &[
            ("relay_elastic", "e", "elastic"),
            ("relay_busypoll", "p", "busy-poll"),
        ]
    };
    for &(name, tag, mode) in relays {
        if !args.modes.iter().any(|m| m == mode) {
            continue;
        }
        let rp = relay_pair(tag, mode, args.relay_threads)?;
        serve(&rp.pair.b.path(), "127.0.0.1:7004".parse()?)?;
        let p = Path1 {
            client_ns: rp.pair.a.path(),
            addr: "127.0.0.1:7004".parse()?,
        };
        wait_ready(&p.client_ns, p.addr)?;
        let pids = [rp.cpu.0.id(), rp.dpu.0.id()];
        let c = cpu::median_cost(&p, &pids, &args.cpu())?;
        cpu_req.insert(name, c.per_req);
        cpu_req1.insert(name, c.per_req_1conn);
        cpu_slow.insert(name, c.per_req_slow);
        cpu_gib.insert(name, c.per_gib);
        if args.cpu_only {
            tput.insert(name, c.gbps);
            continue;
        }
        let s0 = relay_sleeps(&pids)?;
        let (p50, p99, pings) = measure_rtt_n(&p, args.rtt_secs)?;
        let s1 = relay_sleeps(&pids)?;
        rtt.insert(name, (p50, p99));
        let (gbps, chunks) = measure_tput_n(&p, args.tput_secs)?;
        let s2 = relay_sleeps(&pids)?;
        tput.insert(name, gbps);
        // Pings also counted the 500 warm-up ones.
        sleeps_rtt.insert(name, round2((s1 - s0) as f64 / (pings + 500) as f64));
        sleeps_tput.insert(name, round2((s2 - s1) as f64 / chunks.max(1) as f64));
        if args.quick {
            continue;
        }
        // Idle: 100 connections open, nothing sent.
        let conns = join(in_ns(&p.client_ns, move || {
            (0..100)
                .map(|_| connect(p.addr, b'E'))
                .collect::<Result<Vec<_>>>()
        }))?;
        thread::sleep(Duration::from_millis(500));
        let t0: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum::<Result<u64>>()?;
        let start = Instant::now();
        thread::sleep(Duration::from_secs_f64(args.idle_secs));
        let t1: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum::<Result<u64>>()?;
        idle.insert(
            name,
            round2((t1 - t0) as f64 / CLK_TCK / start.elapsed().as_secs_f64() * 100.0),
        );
        drop(conns);
        let key = if mode == "elastic" {
            "elastic"
        } else {
            "busypoll"
        };
        for n in [1usize, 8, 64, 256] {
            let s0 = relay_sleeps(&pids)?;
            let (p99, pings) = measure_scale(
                &Path1 {
                    client_ns: p.client_ns.clone(),
                    addr: p.addr,
                },
                n,
                args.scale_secs,
            )?;
            let per = (relay_sleeps(&pids)? - s0) as f64 / (pings + 500 * n).max(1) as f64;
            scale_sleeps
                .entry(key.to_string())
                .or_default()
                .insert(n.to_string(), round2(per));
            scale
                .entry(key.to_string())
                .or_default()
                .insert(n.to_string(), p99);
        }
    }

    let skip_ring = args.cpu_only || args.guest_only;
    let ring = if skip_ring { Ok(None) } else { ring_rtt() };
    match (skip_ring, ring) {
        (true, _) => {}
        (_, Ok(Some(r))) => {
            rtt.insert("ring", r);
        }
        (_, Ok(None)) => notes.push("ring: no ring round-trip function in this build".into()),
        (_, Err(e)) => notes.push(format!("ring: {e:#}")),
    }

    // The BAR paths: one guest boot; a guest that cannot run is a note.
    let accel = if args.cpu_only || args.baselines_only || args.no_guest {
        Value::Null
    } else {
        guest::measure_into(args.rtt_secs, &mut rtt, &mut notes)
    };

    let tool = if args.tools_rounds == 0 || args.guest_only || args.cpu_only {
        tools::ToolResults::default()
    } else {
        tool_rows(&args, &veth, &mut notes)?
    };

    print_table(&rtt, &tput, &idle, &scale);
    if !tool.sockperf.is_empty() || !tool.iperf3.is_empty() {
        tools::print(&tool, args.tools_rounds);
    }
    guest::print_accel(&accel);
    for (mode, m) in &scale_sleeps {
        let v: Vec<String> = ["1", "8", "64", "256"]
            .iter()
            .map(|n| format!("n={n}: {}", m.get(*n).copied().unwrap_or(f64::NAN)))
            .collect();
        println!("relay sleeps per ping, {mode:<8} {}", v.join(", "));
    }
    for (k, v) in &sleeps_rtt {
        println!(
            "relay sleeps {k:<16} {v:>6.2} per 64 B ping, {:>6.2} per 64 KiB chunk (both relays)",
            sleeps_tput.get(k).copied().unwrap_or(f64::NAN)
        );
    }
    for (k, v) in &cpu_req {
        println!(
            "relay CPU {k:<16} {v:>6.1} us per 100 B req/resp ({} conns; {:>6.1} with 1; {:>6.1} slow server), {:>5.2} s per GiB (both relays)",
            args.cpu_conns,
            cpu_req1.get(k).copied().unwrap_or(f64::NAN),
            cpu_slow.get(k).copied().unwrap_or(f64::NAN),
            cpu_gib.get(k).copied().unwrap_or(f64::NAN)
        );
    }
    for n in &notes {
        println!("note: {n}");
    }
    let mut rtt_us: serde_json::Map<String, Value> = rtt
        .iter()
        .map(|(k, (a, b))| (k.to_string(), json!({"p50": a, "p99": b})))
        .collect();
    for k in ["ring_pci", "relay_pci_elastic"] {
        rtt_us.entry(k).or_insert(Value::Null);
    }
    let (sockperf, iperf3) = tools::json(&tool);
    if let Some(v) = tool.idle_fastpath {
        idle.insert("fastpath", v);
    }
    let doc = json!({
        "sockperf": sockperf,
        "iperf3": iperf3,
        "accel": accel,
        "rtt_us": rtt_us,
        "throughput_gbps": tput,
        "idle_cpu_pct": idle,
        "scale_p99_us": scale,
        "relay_sleeps_per_ping": sleeps_rtt,
        "relay_sleeps_per_64k_chunk": sleeps_tput,
        "scale_relay_sleeps_per_ping": scale_sleeps,
        "cpu_us_per_req": cpu_req,
        "cpu_us_per_req_1conn": cpu_req1,
        "cpu_us_per_req_slow_server": cpu_slow,
        "cpu_s_per_gib": cpu_gib,
    });
    write_json(&args, doc)
}

fn write_json(args: &Args, doc: Value) -> Result<()> {
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&doc)?)?;
    println!("JSON: {}", args.out.display());
    Ok(())
}

/// The sockperf/iperf3 rows over their own servers and relays.
fn tool_rows(args: &Args, veth: &Pair, notes: &mut Vec<String>) -> Result<tools::ToolResults> {
    let lib = match &args.preload {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("libheterosocket.so"),
    };
    if !lib.exists() {
        notes.push(format!(
            "fastpath: {} missing (cargo build --release -p heterosocket)",
            lib.display()
        ));
    }
    let t = tools::topology(veth, args.relay_threads, lib)?;
    // Servers and relays up, mirrors made.
    thread::sleep(Duration::from_millis(1500));
    let mut r = tools::measure(&t, args.tools_rounds, args.tools_secs, notes);
    if !args.quick {
        match tools::idle_fastpath(&t, args.idle_secs) {
            Ok(pct) => r.idle_fastpath = Some(pct),
            Err(e) => notes.push(format!("fastpath idle CPU: {e:#}")),
        }
    }
    Ok(r)
}

fn relay_sleeps(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|p| sleeps(*p)).sum()
}

/// Bare ring round trip (both ends spinning), from the library.
fn ring_rtt() -> Result<Option<(f64, f64)>> {
    let mut v = heteronet::bench::ring_rtt(200_000)?;
    let (p50, p99) = heteronet::bench::percentiles_us(&mut v);
    Ok(Some((round2(p50), round2(p99))))
}

fn print_table(
    rtt: &BTreeMap<&str, (f64, f64)>,
    tput: &BTreeMap<&str, f64>,
    idle: &BTreeMap<&str, f64>,
    scale: &BTreeMap<String, BTreeMap<String, f64>>,
) {
    println!("64-byte echo round trip (client write -> server echo -> client read), microseconds");
    print_paths(
        [
            "path",
            "RTT p50us",
            "RTT p99us",
            "p50/veth",
            "Gbit/s",
            "tput/veth",
        ],
        &[
            "loopback",
            "veth",
            "relay_socat",
            "relay_splice",
            "relay_elastic",
            "relay_busypoll",
            "ring",
            "ring_pci",
            "relay_pci_elastic",
        ],
        rtt,
        tput,
    );
    if let (Some(e), Some(s)) = (rtt.get("relay_elastic"), rtt.get("relay_socat")) {
        println!("relay_elastic p50 / relay_socat p50 = {:.2}", e.0 / s.0);
    }
    for (k, v) in idle {
        println!("idle CPU {k:<16} {v:>6.2} % of one core (both relays, 100 idle connections)");
    }
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>10}",
        "p99 us", "n=1", "n=8", "n=64", "n=256"
    );
    for (mode, m) in scale {
        let g = |n: &str| m.get(n).map(|x| format!("{x:.1}")).unwrap_or_default();
        println!(
            "{:<10} {:>10} {:>10} {:>10} {:>10}",
            mode,
            g("1"),
            g("8"),
            g("64"),
            g("256")
        );
    }
}
