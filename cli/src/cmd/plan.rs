//! `heteropod plan`: read Pod manifests, plan the offload, print a table or JSON.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use heteropod_planner::manifest::Skipped;
use heteropod_planner::plan::DEFAULT_NODE_LIMIT;
use heteropod_planner::quantity::{parse_bytes, parse_cpu_millis};
use heteropod_planner::{
    build_problem, parse_manifests, plan, Dpu, Options, Plan, PodManifest, Resources, RolePolicy,
    Solver,
};
use serde::Serialize;

use crate::config::{NodeConfig, DEFAULT_CONFIG_PATH};
use crate::table;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kubernetes manifests (Pods or workloads with Pod templates; `-` is stdin).
    #[arg(required = true, value_name = "POD.yaml")]
    files: Vec<PathBuf>,
    /// DPU cores, as a Kubernetes quantity ("4", "2500m"); default: `[dpu] cores` of the config.
    #[arg(long, value_name = "QUANTITY")]
    dpu_cores: Option<String>,
    /// DPU memory ("2Gi", "512Mi"); default: `[dpu] memory_mb` of the config.
    #[arg(long, value_name = "QUANTITY")]
    dpu_memory: Option<String>,
    /// Cores the DPU already runs.
    #[arg(long, value_name = "QUANTITY", default_value = "0")]
    used_cores: String,
    /// Memory the DPU already uses.
    #[arg(long, value_name = "QUANTITY", default_value = "0")]
    used_memory: String,
    /// Most Mbit/s allowed between containers on different units (default: no limit).
    #[arg(long, value_name = "MBPS")]
    traffic_budget: Option<u64>,
    /// Branch and bound, the greedy heuristic, or both (exact plan plus the heuristic's gap).
    #[arg(long, value_enum, default_value_t = SolverArg::Exact)]
    solver: SolverArg,
    /// Search nodes the exact solver may visit before returning its best plan so far.
    #[arg(long, default_value_t = DEFAULT_NODE_LIMIT)]
    node_limit: u64,
    /// Extra container-name pattern (`*` wildcard) of infrastructure containers.
    #[arg(long, value_name = "PATTERN")]
    infra_name: Vec<String>,
    /// Extra image pattern (`*` wildcard) of infrastructure containers.
    #[arg(long, value_name = "PATTERN")]
    infra_image: Vec<String>,
    /// Node config to read capacity and patterns from.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SolverArg {
    Exact,
    Heuristic,
    Both,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    #[serde(flatten)]
    plan: &'a Plan,
    skipped: Vec<SkippedJson<'a>>,
}

#[derive(Serialize)]
struct SkippedJson<'a> {
    file: &'a str,
    document: usize,
    kind: &'a str,
}

pub fn run(args: Args) -> Result<()> {
    let config = NodeConfig::load(&args.config)?;
    let dpu = dpu_from(&args, config.as_ref())?;
    let mut policy = RolePolicy::default();
    if let Some(c) = &config {
        policy.infra_names.clone_from(&c.placement.infra_names);
        policy.infra_images.clone_from(&c.placement.infra_images);
    }
    policy.infra_names.extend(args.infra_name.iter().cloned());
    policy.infra_images.extend(args.infra_image.iter().cloned());

    let (pods, skipped) = read_manifests(&args.files)?;
    if pods.is_empty() {
        bail!("no Pods (or Pod templates) in the given manifests");
    }
    let problem = build_problem(&pods, &policy, dpu)?;
    let options = Options {
        solver: match args.solver {
            SolverArg::Exact => Solver::Exact,
            SolverArg::Heuristic => Solver::Heuristic,
            SolverArg::Both => Solver::Both,
        },
        node_limit: args.node_limit,
    };
    let plan = plan(&problem, &options)?;
    if args.json {
        let out = JsonOutput {
            plan: &plan,
            skipped: skipped
                .iter()
                .map(|s| SkippedJson {
                    file: &s.source_name,
                    document: s.document,
                    kind: &s.kind,
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for s in &skipped {
            eprintln!(
                "note: skipped {} document {} (kind {})",
                s.source_name, s.document, s.kind
            );
        }
        print!("{}", table::render(&plan));
    }
    Ok(())
}

/// DPU capacity from the flags, else from the node config.
fn dpu_from(args: &Args, config: Option<&NodeConfig>) -> Result<Dpu> {
    let section = config.map(|c| &c.dpu);
    let cpu_millis = match (&args.dpu_cores, section.and_then(|d| d.cores)) {
        (Some(q), _) => parse_cpu_millis(q).context("--dpu-cores")?,
        (None, Some(cores)) => u64::from(cores) * 1000,
        (None, None) => bail!(missing("--dpu-cores", "cores", &args.config)),
    };
    let memory_bytes = match (&args.dpu_memory, section.and_then(|d| d.memory_mb)) {
        (Some(q), _) => parse_bytes(q).context("--dpu-memory")?,
        (None, Some(mb)) => mb
            .checked_mul(1 << 20)
            .context("[dpu] memory_mb is too large")?,
        (None, None) => bail!(missing("--dpu-memory", "memory_mb", &args.config)),
    };
    Ok(Dpu {
        capacity: Resources {
            cpu_millis,
            memory_bytes,
        },
        used: Resources {
            cpu_millis: parse_cpu_millis(&args.used_cores).context("--used-cores")?,
            memory_bytes: parse_bytes(&args.used_memory).context("--used-memory")?,
        },
        traffic_budget_mbps: args.traffic_budget,
    })
}

fn missing(flag: &str, key: &str, config: &std::path::Path) -> String {
    format!(
        "DPU capacity unknown: pass {flag}, or set [dpu] {key} in {}",
        config.display()
    )
}

fn read_manifests(files: &[PathBuf]) -> Result<(Vec<PodManifest>, Vec<Skipped>)> {
    let mut pods = Vec::new();
    let mut skipped = Vec::new();
    for file in files {
        let (name, text) = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("read stdin")?;
            ("<stdin>".to_string(), text)
        } else {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("read {}", file.display()))?;
            (file.display().to_string(), text)
        };
        let parsed = parse_manifests(&text, &name)?;
        pods.extend(parsed.pods);
        skipped.extend(parsed.skipped);
    }
    Ok((pods, skipped))
}
