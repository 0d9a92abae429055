//! heteropod-dpu-proxy: the HeteroPod agent on the DPU.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use heteropod_dpu_proxy::{
    auth::AuthKey,
    server::{self, Agent, AgentFile, Config},
    transport::Endpoint,
    AgentClient, DpuAgent,
};

/// Runs containers on the DPU cores with runc and serves the agent API.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Listen address (unix:///path, tcp://host:port, vsock://cid:port); repeatable.
    #[arg(
        long = "listen",
        default_value = "unix:///run/heteropod/dpu/agent.sock"
    )]
    listen: Vec<String>,
    /// State directory (container state, runc root, netns, adapted bundles).
    #[arg(long, default_value = server::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// DPU cores as a cpuset list; default: the last online core.
    #[arg(long)]
    cpus: Option<String>,
    /// DPU memory, e.g. 1073741824, 512M or 2G; default: unlimited.
    #[arg(long, default_value = "0")]
    memory: String,
    /// runc binary.
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// cgroup v1 mount root.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// cgroup parent of the DPU's containers.
    #[arg(long, default_value = server::DEFAULT_CGROUP_PARENT)]
    cgroup_parent: String,
    /// The heteronet relay binary; without it no relay is spawned.
    #[arg(long)]
    relay: Option<PathBuf>,
    /// The agent's config file: `[access]` (key file, Unix-socket users) and
    /// `[policy]` (what containers may ask for); absent at the default path:
    /// the defaults.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The node key file; overrides the config's `[access] key_file`.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Do not serve: remove everything an agent with these settings made
    /// (containers, relays, netns, cgroups, state dir). Stop the agent first.
    #[arg(long)]
    cleanup: bool,
    /// Do not serve: write a new node key to PATH (mode 0600; never replaces
    /// a file) for `[access] key_file` here and `[dpu] key_file` in the shim's config.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["cleanup", "ping"])]
    generate_key: Option<PathBuf>,
    /// Do not serve: connect to URL as a client (network transports with the
    /// config's key file) and exit 0 once the agent there answers.
    #[arg(long, value_name = "URL", conflicts_with = "cleanup")]
    ping: Option<String>,
}

fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("invalid size {s:?}"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} too large"))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HETEROPOD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(path) = &args.generate_key {
        AuthKey::generate(path)?;
        return Ok(());
    }
    let mut file = match &args.config {
        Some(p) => AgentFile::load(p, true)?,
        None => AgentFile::load(std::path::Path::new(server::DEFAULT_CONFIG_FILE), false)?,
    };
    if let Some(k) = &args.key_file {
        file.access.key_file = Some(k.clone());
    }
    if let Some(url) = &args.ping {
        let agent = AgentClient::connect_with_key(url, file.access.key_file.as_deref()).await?;
        let v = agent.version().await?;
        println!("{url}: agent {} (API {})", v.agent_version, v.api_version);
        return Ok(());
    }
    let listen = args
        .listen
        .iter()
        .map(|l| l.parse::<Endpoint>())
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = Config {
        listen,
        state_dir: args.state_dir,
        runc: args.runc,
        cgroup_root: args.cgroup_root,
        cgroup_parent: args.cgroup_parent,
        cpus: args.cpus.unwrap_or_else(server::last_core),
        memory_bytes: parse_size(&args.memory)?,
        relay: args.relay,
        access: file.access()?,
        policy: file.policy,
    };
    if args.cleanup {
        let problems = server::cleanup(&cfg);
        for p in &problems {
            tracing::warn!("cleanup: {p}");
        }
        anyhow::ensure!(
            problems.is_empty(),
            "cleanup left {} problem(s)",
            problems.len()
        );
        return Ok(());
    }
    tracing::info!(cpus = %cfg.cpus, memory = cfg.memory_bytes, state = %cfg.state_dir.display(), "starting DPU agent");
    let _agent = Agent::start(cfg).await.context("start the DPU agent")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Containers keep running: a restarted agent adopts them.
    tracing::info!("stopping DPU agent");
    Ok(())
}
