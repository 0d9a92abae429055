//! `heteropod-conformance-sweep`: removes every Pod the conformance suite or the shim
//! benchmark left behind in the private containerd (found by the suite's label).

use anyhow::{Context, Result};
use clap::Parser;
use heteropod_conformance::{harness, Cri, TestEnv};

/// Remove leftover Pods labelled by the conformance suite.
#[derive(Parser)]
struct Args {
    /// CRI socket (default: CONTAINERD_ADDRESS or /run/heteropod/containerd.sock).
    #[arg(long)]
    endpoint: Option<std::path::PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let endpoint = args
        .endpoint
        .unwrap_or_else(|| TestEnv::from_env().endpoint);
    let mut cri = Cri::connect(&endpoint)
        .await
        .with_context(|| format!("CRI endpoint {}", endpoint.display()))?;
    let n = harness::sweep(&mut cri).await?;
    println!("sweep: removed {n} leftover Pod(s)");
    Ok(())
}
