//! `heteropod status`: DPU capacity and use, HeteroPod Pods and where each
//! container runs, and the relay counters of split Pods; a table or JSON.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::config::DEFAULT_CONFIG_PATH;
use crate::status::{self, cri, node, relay, Sources};

/// Where the node's data comes from (shared with `heteropod metrics`).
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Node config whose `[dpu] endpoint` names the DPU agent.
    #[arg(long, value_name = "PATH", env = "HETEROPOD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// DPU agent endpoint (`unix:///path`, `tcp://host:port`, `vsock://cid:port`); overrides the config.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// The node key a network agent (`tcp://`, `vsock://`) wants its clients
    /// to hold; overrides the config's `[dpu] key_file`.
    #[arg(long, value_name = "PATH", env = "HETEROPOD_DPU_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// containerd's CRI socket.
    #[arg(
        long,
        value_name = "PATH",
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/heteropod/containerd.sock"
    )]
    cri_endpoint: String,
    /// Runtime handler of HeteroPod sandboxes.
    #[arg(long, value_name = "NAME", default_value = "heteropod")]
    runtime_handler: String,
    /// Directory of the CPU relays' stats sockets.
    #[arg(long, value_name = "DIR", default_value = relay::DEFAULT_STATS_DIR)]
    relay_stats_dir: PathBuf,
}

impl SourceArgs {
    pub fn sources(&self) -> Result<Sources> {
        let endpoint = match &self.endpoint {
            Some(e) => Some(e.clone()),
            None => node::dpu_endpoint(&self.config)?,
        };
        let key_file = match &self.key_file {
            Some(k) => Some(k.clone()),
            None => node::dpu_key_file(&self.config)?,
        };
        Ok(Sources {
            endpoint,
            key_file,
            cri_socket: cri::socket_path(&self.cri_endpoint),
            runtime_handler: self.runtime_handler.clone(),
            relay_stats_dir: self.relay_stats_dir.clone(),
        })
    }

    pub fn config(&self) -> &PathBuf {
        &self.config
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    sources: SourceArgs,
    /// Show the CPU side (with a warning) when the DPU agent is unreachable
    /// or not configured, instead of failing.
    #[arg(long)]
    allow_missing_dpu: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let src = args.sources.sources()?;
    if src.endpoint.is_none() && !args.allow_missing_dpu {
        bail!(
            "no DPU agent endpoint: {} has no [dpu] endpoint; pass --endpoint URL \
             (or --allow-missing-dpu to show the CPU side only)",
            args.sources.config().display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let snap = rt.block_on(status::gather(&src));
    if let (Some(e), false) = (&snap.dpu.error, args.allow_missing_dpu) {
        bail!("DPU agent: {e} (pass --allow-missing-dpu to show the CPU side only)");
    }
    for w in &snap.warnings {
        eprintln!("warning: {w}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
    } else {
        print!("{}", status::render::render(&snap));
    }
    Ok(())
}
