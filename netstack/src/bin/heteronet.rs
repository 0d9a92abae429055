//! `heteronet`: the relay of one half of a split Pod network.
//!
//! `heteronet --side cpu|dpu --netns PATH --region ADDR [--rendezvous PATH]
//!  [--mode elastic|busy-poll] [--capture-egress] [--pod-ip IP] [--stats-socket PATH]
//!  [--udp-forward IP:PORT]...`
//!
//! The netns is entered and capabilities are dropped before the tokio runtime
//! starts, so every runtime thread lives in the namespace with the reduced set.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use heteronet::relay::{self, RelayConfig};
use heteronet::{NotifyMode, RegionAddr, Side};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SideArg {
    Cpu,
    Dpu,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Elastic,
    BusyPoll,
}

#[derive(Debug, Parser)]
#[command(
    name = "heteronet",
    about = "HeteroNet relay for one half of a split Pod network"
)]
struct Args {
    /// Which half this relay serves (the CPU side creates the region, see --create).
    #[arg(long, value_enum)]
    side: SideArg,
    /// Network namespace to enter (e.g. /run/netns/NAME or /proc/PID/ns/net).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Shared region: shm:/heteropod/POD, memfd:, pci:BDF/BAR, dax:/dev/daxX.Y.
    #[arg(long)]
    region: RegionAddr,
    /// Rendezvous Unix socket path (default: the shm region file path + `.sock`).
    #[arg(long)]
    rendezvous: Option<PathBuf>,
    /// elastic: spin briefly then sleep on the doorbell; busy-poll: always spin (baseline only).
    #[arg(long, value_enum, default_value = "elastic")]
    mode: ModeArg,
    /// Redirect outbound TCP of this half into the relay (DPU side).
    #[arg(long)]
    capture_egress: bool,
    /// The Pod IP: source address of connections leaving this half.
    #[arg(long)]
    pod_ip: Option<IpAddr>,
    /// Serve counters as JSON on this Unix socket.
    #[arg(long)]
    stats_socket: Option<PathBuf>,
    /// Relay UDP sent to this address (e.g. a resolver, 127.0.0.53:53) to the peer half. Repeatable.
    #[arg(long)]
    udp_forward: Vec<SocketAddr>,
    /// Listener poll interval in milliseconds.
    #[arg(long, default_value_t = 150)]
    poll_ms: u64,
    /// Runtime threads: 1 (default) runs everything on one thread, so the ring
    /// waiter, the sockets and the copies never wake each other across threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Create the region on this side (default: cpu creates, dpu connects).
    #[arg(long)]
    create: Option<bool>,
}

/// Raises the open-file soft limit to the hard limit: every relayed connection
/// costs the relay one or two descriptors. (Via util-linux `prlimit`, as the
/// crate has no setrlimit binding without unsafe code.)
fn raise_nofile() {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) else {
        return;
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    let (Some(soft), Some(hard)) = (f.get(3), f.get(4)) else {
        return;
    };
    if soft == hard {
        return;
    }
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status();
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let a = Args::parse();
    raise_nofile();
    let side = match a.side {
        SideArg::Cpu => Side::Cpu,
        SideArg::Dpu => Side::Dpu,
    };
    let cfg = RelayConfig {
        side,
        netns: a.netns,
        region: a.region,
        rendezvous: a.rendezvous,
        mode: match a.mode {
            ModeArg::Elastic => NotifyMode::Elastic,
            ModeArg::BusyPoll => NotifyMode::BusyPoll,
        },
        capture_egress: a.capture_egress,
        pod_ip: a.pod_ip,
        stats_socket: a.stats_socket,
        udp_forward: a.udp_forward,
        poll_interval: Duration::from_millis(a.poll_ms.max(10)),
        create: a.create.unwrap_or(relay::session::default_create(side)),
    };
    // Single-threaded here: setns and capability changes apply to every thread started later.
    let threads = a.threads;
    let prepared = relay::prepare(cfg).context("relay setup")?;
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder.enable_all().build().context("tokio runtime")?;
    rt.block_on(async move {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
            }
            tracing::info!("shutting down");
        };
        relay::run(prepared, shutdown).await
    })
    .context("relay")?;
    Ok(())
}
