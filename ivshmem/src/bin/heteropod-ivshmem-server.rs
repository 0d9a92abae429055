//! `heteropod-ivshmem-server`: the ivshmem server QEMU's ivshmem-doorbell
//! device connects to (Debian ships none).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use heteropod_ivshmem::server::{parse_size, Server, ServerConfig};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(version, about = "ivshmem server for QEMU's ivshmem-doorbell device")]
struct Args {
    /// Unix socket QEMU connects to (-chardev socket,path=...).
    #[arg(long)]
    socket: PathBuf,
    /// Shared memory: a name under /dev/shm, or an absolute path.
    #[arg(long)]
    shm: String,
    /// Shared memory size in bytes (K/M/G suffixes allowed); a power of two.
    #[arg(long, value_parser = size_arg)]
    size: u64,
    /// Interrupt vectors per peer (match QEMU's vectors=).
    #[arg(long, default_value_t = 1)]
    vectors: u32,
    /// Write the server's pid here (removed on exit).
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// Replace an existing shared memory file instead of refusing to start.
    #[arg(long)]
    replace_shm: bool,
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("bad size {s:?}: bytes, or a number with K, M or G"))
}

struct Pidfile(PathBuf);

impl Drop for Pidfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = ServerConfig {
        socket: args.socket,
        shm: args.shm,
        size: args.size,
        vectors: args.vectors,
        replace_shm: args.replace_shm,
    };
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let server = Server::bind(&config).context("starting ivshmem server")?;
    let _pidfile = match args.pidfile {
        Some(p) => {
            std::fs::write(&p, format!("{}\n", std::process::id()))
                .with_context(|| format!("writing pidfile {}", p.display()))?;
            Some(Pidfile(p))
        }
        None => None,
    };
    let shutdown = async {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    };
    server.run(shutdown).await?;
    Ok(())
}
