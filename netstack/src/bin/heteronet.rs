//! `heteronet`: the relay of one half of a split Pod network.
//!
//! `heteronet --side cpu|dpu --netns PATH --region ADDR [--rendezvous PATH]
//!  [--irq-fds DATA,SPACE] [--mode elastic|busy-poll] [--capture-egress] [--pod-ip IP]
//!  [--stats-socket PATH] [--udp-forward IP:PORT]...`
//!
//! Across an ivshmem BAR: the host (CPU) relay takes `--region ivshmem:<socket>@k/n`,
//! the guest (DPU) relay `--region pci:<bdf>/<bar>@k/n --irq-fds DATA,SPACE` (the
//! inherited VFIO eventfds of MSI-X vectors 2k and 2k+1).
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
    /// Shared region: shm:/heteropod/POD, memfd:, pci:BDF/BAR, dax:/dev/daxX.Y,
    /// ivshmem:SOCKET@K/N (host side of an ivshmem slot), pci:BDF/BAR@K/N (guest side).
    #[arg(long)]
    region: RegionAddr,
    /// Guest side of an ivshmem slot: inherited eventfds of the slot's MSI-X
    /// vectors 2k (data published) and 2k+1 (space freed), as `DATA,SPACE`.
    #[arg(long, value_delimiter = ',', num_args = 1)]
    irq_fds: Vec<i32>,
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
    /// Connections (streams) open at once across the link; the peer's opens
    /// beyond it are refused with a reset.
    #[arg(long, default_value_t = heteronet::MuxConfig::default().max_streams)]
    max_streams: usize,
}

/// Raises the open-file soft limit to the hard limit: every relayed connection
/// costs the relay one or two descriptors.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("getrlimit(RLIMIT_NOFILE): {e}"),
    }
}

type IrqFds = Option<std::sync::Arc<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>>;

/// `--irq-fds DATA,SPACE`: two distinct inherited eventfds, only with a `pci:...@k/n` region.
fn irq_fds(a: &Args) -> Result<IrqFds> {
    let guest_slot = matches!(&a.region, RegionAddr::Window { base, .. }
        if matches!(**base, RegionAddr::Pci { .. }));
    match a.irq_fds.as_slice() {
        [] if guest_slot => anyhow::bail!(
            "--region {} is a guest slot: it needs --irq-fds DATA,SPACE (the VFIO eventfds of \
             MSI-X vectors 2k and 2k+1, inherited from dpu-proxy)",
            a.region
        ),
        [] => Ok(None),
        _ if !guest_slot => anyhow::bail!(
            "--irq-fds only goes with a guest slot region pci:<bdf>/<bar>@<k>/<n> (got --region {})",
            a.region
        ),
        [d, s] if d != s => {
            let adopt = |fd: i32| {
                heteronet::shm::fd::adopt_inherited_eventfd(fd)
                    .with_context(|| format!("--irq-fds: descriptor {fd}"))
            };
            Ok(Some(std::sync::Arc::new((adopt(*d)?, adopt(*s)?))))
        }
        _ => anyhow::bail!("--irq-fds takes two different descriptors: DATA,SPACE"),
    }
}

/// Flags that do not go with a slot region, refused with a clear message.
fn check_region_args(a: &Args) -> Result<()> {
    let slot = matches!(&a.region, RegionAddr::Ivshmem { .. })
        || matches!(&a.region, RegionAddr::Window { base, .. } if matches!(**base, RegionAddr::Pci { .. }));
    if slot && a.rendezvous.is_some() {
        anyhow::bail!(
            "--region {} meets its peer through the slot's control block: drop --rendezvous",
            a.region
        );
    }
    if matches!(&a.region, RegionAddr::Window { base, .. } if matches!(**base, RegionAddr::Pci { .. }))
        && a.create == Some(true)
    {
        anyhow::bail!(
            "the guest (pci:) side of a slot cannot create it: the host (ivshmem:) side does"
        );
    }
    Ok(())
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
    // Adopt inherited descriptors before anything else could own their numbers.
    let irq_fds = irq_fds(&a)?;
    check_region_args(&a)?;
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
        mux: heteronet::MuxConfig {
            max_streams: a.max_streams.max(1),
            ..Default::default()
        },
        create: a.create.unwrap_or(relay::session::default_create(side)),
        irq_fds,
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
