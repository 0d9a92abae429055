//! `heteropod`: the operator CLI of HeteroPod. One module per subcommand in `cmd/`.

use clap::{Parser, Subcommand};

mod cmd;
mod config;
mod status;
mod table;

#[derive(Debug, Parser)]
#[command(name = "heteropod", version, about = "HeteroPod operator tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Plan which containers of the given Pods to offload to the DPU.
    Plan(cmd::plan::Args),
    /// Show DPU capacity, HeteroPod Pods (where each container runs) and relay counters.
    Status(cmd::status::Args),
    /// Serve the status counters in the Prometheus text format on GET /metrics.
    Metrics(cmd::metrics::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => cmd::plan::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::Metrics(args) => cmd::metrics::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heteropod: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
