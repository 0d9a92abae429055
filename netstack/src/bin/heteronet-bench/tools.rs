//! Every path as unmodified tools see it: sockperf ping-pong (64 B, one-way
//! p50/p99) and iperf3 single-stream throughput, with the rounds alternated
//! between paths so a noisy moment hits all of them; medians are reported.
//! The fast path is the elastic relay pair with the client preloaded with
//! libheterosocket.so; with both ends preloaded the servers are too, and the
//! relays only introduce the two programs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::measure::{cpu_ticks, pct, round2, CLK_TCK};
use crate::topo::{relay_pair, Netns, Pair, Proc};

/// Port of the echo server behind the elastic relay pair (idle measurement).
const IDLE_ECHO_PORT: u16 = 7142;

/// One path: where the client runs, where it connects, whether it is preloaded.
pub struct ToolPath {
    pub name: &'static str,
    pub client_ns: String,
    pub sockperf: SocketAddr,
    pub iperf3: SocketAddr,
    pub preload: Option<PathBuf>,
    /// The relay processes this path uses (stopped while other paths run:
    /// busy-poll relays would otherwise spin on the cores the others need).
    pub relays: Vec<u32>,
}

/// What the tool rows need that main does not keep.
pub struct Topology {
    pub paths: Vec<ToolPath>,
    _keep: Vec<Box<dyn std::any::Any>>,
}

/// Starts a server process in `ns`, killed when dropped.
fn server(ns: &Netns, args: &[&str]) -> Result<Proc> {
    server_with(ns, args, None)
}

/// As [`server`], with `preload` in `LD_PRELOAD` when given.
fn server_with(ns: &Netns, args: &[&str], preload: Option<&PathBuf>) -> Result<Proc> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.0]).args(args);
    if let Some(lib) = preload {
        c.env("LD_PRELOAD", lib);
    }
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {args:?}"))?;
    Ok(Proc(child))
}

/// sockperf and iperf3 servers on `port` and `port + 1` in `ns`.
fn servers(ns: &Netns, port: u16) -> Result<Vec<Proc>> {
    servers_with(ns, port, None)
}

fn servers_with(ns: &Netns, port: u16, preload: Option<&PathBuf>) -> Result<Vec<Proc>> {
    let p = port.to_string();
    let q = (port + 1).to_string();
    Ok(vec![
        server_with(
            ns,
            &["sockperf", "sr", "--tcp", "-i", "0.0.0.0", "-p", &p],
            preload,
        )?,
        server_with(ns, &["iperf3", "-s", "-p", &q], preload)?,
    ])
}

/// A socat relay (TCP -> Unix -> TCP) from `from`:listen to `to`:target.
fn socat_relay(from: &Netns, listen: u16, to: &Netns, target: u16, tag: &str) -> Result<Vec<Proc>> {
    let unix = format!(
        "/tmp/heteronet-bench-tools-{tag}-{}.sock",
        std::process::id()
    );
    let _ = std::fs::remove_file(&unix);
    let far = server(
        to,
        &[
            "socat",
            &format!("UNIX-LISTEN:{unix},fork"),
            &format!("TCP:127.0.0.1:{target},nodelay"),
        ],
    )?;
    thread::sleep(Duration::from_millis(200));
    let near = server(
        from,
        &[
            "socat",
            &format!("TCP-LISTEN:{listen},bind=127.0.0.1,fork,reuseaddr,nodelay"),
            &format!("UNIX-CONNECT:{unix}"),
        ],
    )?;
    Ok(vec![far, near])
}

/// Builds every path: loopback and veth over `veth`, socat and splice relays
/// across it, relay pairs (elastic, busy-poll) and the fast path.
pub fn topology(veth: &Pair, relay_threads: usize, preload: PathBuf) -> Result<Topology> {
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    let mut paths = Vec::new();
    let a = veth.a.0.clone();
    let addr = |ip: &str, port: u16| -> SocketAddr {
        format!("{ip}:{port}").parse().expect("address literal")
    };
    keep.push(Box::new(servers(&veth.a, 7100)?));
    paths.push(ToolPath {
        name: "loopback",
        client_ns: a.clone(),
        sockperf: addr("127.0.0.1", 7100),
        iperf3: addr("127.0.0.1", 7101),
        preload: None,
        relays: Vec::new(),
    });
    keep.push(Box::new(servers(&veth.b, 7110)?));
    paths.push(ToolPath {
        name: "veth",
        client_ns: a.clone(),
        sockperf: addr("10.98.1.2", 7110),
        iperf3: addr("10.98.1.2", 7111),
        preload: None,
        relays: Vec::new(),
    });
    for (listen, target) in [(7120, 7110), (7121, 7111)] {
        keep.push(Box::new(socat_relay(
            &veth.a,
            listen,
            &veth.b,
            target,
            &listen.to_string(),
        )?));
    }
    paths.push(ToolPath {
        name: "relay_socat",
        client_ns: a.clone(),
        sockperf: addr("127.0.0.1", 7120),
        iperf3: addr("127.0.0.1", 7121),
        preload: None,
        relays: Vec::new(),
    });
    for (listen, target) in [(7130, 7110), (7131, 7111)] {
        crate::splice::start(
            &veth.a.path(),
            addr("127.0.0.1", listen),
            &veth.b.path(),
            addr("127.0.0.1", target),
        )?;
    }
    paths.push(ToolPath {
        name: "relay_splice",
        client_ns: a.clone(),
        sockperf: addr("127.0.0.1", 7130),
        iperf3: addr("127.0.0.1", 7131),
        preload: None,
        relays: Vec::new(),
    });
    for (name, tag, mode) in [
        ("relay_elastic", "te", "elastic"),
        ("relay_busypoll", "tp", "busy-poll"),
    ] {
        let rp = relay_pair(tag, mode, relay_threads)?;
        keep.push(Box::new(servers(&rp.pair.b, 7140)?));
        let client_ns = rp.pair.a.0.clone();
        let relays = vec![rp.cpu.0.id(), rp.dpu.0.id()];
        paths.push(ToolPath {
            name,
            client_ns: client_ns.clone(),
            sockperf: addr("127.0.0.1", 7140),
            iperf3: addr("127.0.0.1", 7141),
            preload: None,
            relays: relays.clone(),
        });
        if mode == "elastic" {
            // The idle measurement's echo server (sockperf's serves few idle clients).
            crate::measure::serve(&rp.pair.b.path(), addr("0.0.0.0", IDLE_ECHO_PORT))?;
            paths.push(ToolPath {
                name: "fastpath",
                client_ns: client_ns.clone(),
                sockperf: addr("127.0.0.1", 7140),
                iperf3: addr("127.0.0.1", 7141),
                preload: Some(preload.clone()),
                relays: relays.clone(),
            });
            keep.push(Box::new(servers_with(&rp.pair.b, 7150, Some(&preload))?));
            paths.push(ToolPath {
                name: "fastpath_both",
                client_ns,
                sockperf: addr("127.0.0.1", 7150),
                iperf3: addr("127.0.0.1", 7151),
                preload: Some(preload.clone()),
                relays,
            });
        }
        keep.push(Box::new(rp));
    }
    Ok(Topology { paths, _keep: keep })
}

fn client(p: &ToolPath, args: &[String]) -> Result<String> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &p.client_ns, "timeout", "-s", "KILL", "60"]);
    c.args(args);
    if let Some(lib) = &p.preload {
        c.env("LD_PRELOAD", lib);
    }
    let out = c.stdin(Stdio::null()).output().context("run client")?;
    if !out.status.success() {
        bail!(
            "{}: {args:?}: {:?} {}",
            p.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One sockperf ping-pong run: one-way (p50, p99) in µs.
fn sockperf(p: &ToolPath, secs: f64) -> Result<(f64, f64)> {
    let args: Vec<String> = [
        "sockperf",
        "pp",
        "--tcp",
        "-i",
        &p.sockperf.ip().to_string(),
        "-p",
        &p.sockperf.port().to_string(),
        "-m",
        "64",
        "-t",
        &format!("{}", secs.ceil() as u64),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = client(p, &args)?;
    let pick = |label: &str| -> Option<f64> {
        out.lines()
            .find(|l| l.contains(label))
            .and_then(|l| l.rsplit('=').next())
            .and_then(|v| v.trim().parse().ok())
    };
    match (pick("percentile 50.000"), pick("percentile 99.000")) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("{}: no percentiles in sockperf output: {out}", p.name),
    }
}

/// One iperf3 run: received Gbit/s.
fn iperf3(p: &ToolPath, secs: f64) -> Result<f64> {
    let args: Vec<String> = [
        "iperf3",
        "-c",
        &p.iperf3.ip().to_string(),
        "-p",
        &p.iperf3.port().to_string(),
        "-t",
        &format!("{}", secs.ceil() as u64),
        "-J",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = client(p, &args)?;
    let v: Value =
        serde_json::from_str(&out).with_context(|| format!("{}: iperf3 JSON", p.name))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .with_context(|| format!("{}: no throughput in iperf3 output", p.name))
}

/// Results: sockperf one-way (p50, p99) µs and iperf3 Gbit/s per path (medians).
#[derive(Default)]
pub struct ToolResults {
    pub sockperf: BTreeMap<&'static str, (f64, f64)>,
    pub iperf3: BTreeMap<&'static str, f64>,
    /// CPU of the CPU-side and DPU-side relay (% of one core) during sockperf.
    pub relay_cpu: BTreeMap<&'static str, (f64, f64)>,
    /// Both relays' CPU, % of a core, with 100 idle fast connections.
    pub idle_fastpath: Option<f64>,
}

/// Lets only `active`'s relays run (SIGCONT), stopping every other path's.
fn only_relays_of(t: &Topology, active: &ToolPath) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for p in &t.paths {
        for &pid in &p.relays {
            if !active.relays.contains(&pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGSTOP);
            }
        }
    }
    for &pid in &active.relays {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
    }
}

/// Runs `rounds` rounds, each path once per round, for both tools.
pub fn measure(t: &Topology, rounds: usize, secs: f64, notes: &mut Vec<String>) -> ToolResults {
    let mut lat: BTreeMap<&'static str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut bw: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut relay_cpu: BTreeMap<&'static str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for round in 0..rounds.max(1) {
        eprintln!(
            "bench-net: sockperf and iperf3, round {}/{}",
            round + 1,
            rounds.max(1)
        );
        for p in &t.paths {
            only_relays_of(t, p);
            let ticks = |i: usize| p.relays.get(i).and_then(|pid| cpu_ticks(*pid).ok());
            let before = (ticks(0), ticks(1), std::time::Instant::now());
            match sockperf(p, secs) {
                Ok((a, b)) => {
                    let e = lat.entry(p.name).or_default();
                    e.0.push(a);
                    e.1.push(b);
                    // Each relay's CPU while the ping-pong ran, % of one core.
                    let wall = before.2.elapsed().as_secs_f64();
                    let pct_of = |b: Option<u64>, a: Option<u64>| {
                        b.zip(a)
                            .map(|(b, a)| (a - b) as f64 / CLK_TCK / wall * 100.0)
                    };
                    if let (Some(h), Some(d)) =
                        (pct_of(before.0, ticks(0)), pct_of(before.1, ticks(1)))
                    {
                        let e = relay_cpu.entry(p.name).or_default();
                        e.0.push(h);
                        e.1.push(d);
                    }
                }
                Err(e) => notes.push(format!("sockperf {}: {e:#}", p.name)),
            }
        }
        for p in &t.paths {
            only_relays_of(t, p);
            match iperf3(p, secs) {
                Ok(g) => bw.entry(p.name).or_default().push(g),
                Err(e) => notes.push(format!("iperf3 {}: {e:#}", p.name)),
            }
        }
    }
    // Everything runs again for teardown.
    for p in &t.paths {
        for &pid in &p.relays {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }
    let mut r = ToolResults::default();
    for (k, (mut a, mut b)) in lat {
        r.sockperf
            .insert(k, (round2(pct(&mut a, 0.5)), round2(pct(&mut b, 0.5))));
    }
    for (k, mut v) in bw {
        r.iperf3.insert(k, round2(pct(&mut v, 0.5)));
    }
    for (k, (mut h, mut d)) in relay_cpu {
        r.relay_cpu
            .insert(k, (round2(pct(&mut h, 0.5)), round2(pct(&mut d, 0.5))));
    }
    r
}

/// CPU of both relays (% of one core) while a preloaded program holds 100
/// idle fast connections for `secs` seconds.
pub fn idle_fastpath(t: &Topology, secs: f64) -> Result<f64> {
    let p = t
        .paths
        .iter()
        .find(|p| p.name == "fastpath")
        .context("no fastpath row")?;
    only_relays_of(t, p);
    let script = format!(
        "import socket, sys, time\n\
         c = [socket.create_connection(('{ip}', {port})) for _ in range(100)]\n\
         print('ready', flush=True)\n\
         time.sleep({hold})\n",
        ip = p.sockperf.ip(),
        port = IDLE_ECHO_PORT,
        hold = secs + 10.0,
    );
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &p.client_ns, "python3", "-c", &script]);
    if let Some(lib) = &p.preload {
        c.env("LD_PRELOAD", lib);
    }
    let mut child = Proc(
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("start idle client")?,
    );
    let mut line = String::new();
    let out = child.0.stdout.take().context("client stdout")?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
    if line.trim() != "ready" {
        bail!("idle client did not connect");
    }
    thread::sleep(Duration::from_millis(500));
    let ticks = || -> Result<u64> { p.relays.iter().map(|pid| cpu_ticks(*pid)).sum() };
    let t0 = ticks()?;
    let start = std::time::Instant::now();
    thread::sleep(Duration::from_secs_f64(secs));
    let used = (ticks()? - t0) as f64 / CLK_TCK;
    Ok(round2(used / start.elapsed().as_secs_f64() * 100.0))
}

/// The tools' table, with ratios to veth.
pub fn print(r: &ToolResults, rounds: usize) {
    println!(
        "unmodified tools, median of {rounds} alternated rounds: sockperf ping-pong 64 B (one-way), iperf3 one stream"
    );
    crate::measure::print_paths(
        ["path", "p50 us", "p99 us", "p50/veth", "Gbit/s", "bw/veth"],
        &[
            "loopback",
            "veth",
            "relay_socat",
            "relay_splice",
            "relay_elastic",
            "relay_busypoll",
            "fastpath",
            "fastpath_both",
        ],
        &r.sockperf,
        &r.iperf3,
    );
    for (k, (h, d)) in &r.relay_cpu {
        println!(
            "relay CPU during sockperf, {k:<16} CPU side {h:>6.1} %, DPU side {d:>6.1} % of one core"
        );
    }
    if let Some(v) = r.idle_fastpath {
        println!(
            "idle CPU fastpath: {v:.2} % of one core (both relays, 100 idle fast connections)"
        );
    }
}

/// The JSON of the tool rows: `sockperf.<path>.{p50_us,p99_us}`, `iperf3.<path>.gbps`.
pub fn json(r: &ToolResults) -> (Value, Value) {
    let s: serde_json::Map<String, Value> = r
        .sockperf
        .iter()
        .map(|(k, (a, b))| {
            let mut v = serde_json::json!({"p50_us": a, "p99_us": b});
            if let Some((h, d)) = r.relay_cpu.get(k) {
                v["relay_cpu_pct"] = serde_json::json!({"cpu_side": h, "dpu_side": d});
            }
            (k.to_string(), v)
        })
        .collect();
    let i: serde_json::Map<String, Value> = r
        .iperf3
        .iter()
        .map(|(k, g)| (k.to_string(), serde_json::json!({"gbps": g})))
        .collect();
    (Value::Object(s), Value::Object(i))
}
