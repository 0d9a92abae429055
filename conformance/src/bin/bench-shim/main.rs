//! `bench-shim`: Pod start/stop latency and shim memory, `heteropod` against `runc`
//! (containerd-shim-runc-v2), interleaved through the same containerd and image.
//! Prints a table and writes JSON (default `target/bench/shim.json`).

mod report;
mod stats;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use heteropod_conformance::fixtures::PodBuilder;
use heteropod_conformance::{harness, host, ContainerBuilder, Cri, TestEnv};

/// Label value marking the benchmark's Pods (for its own clean-up).
const BENCH_TEST: &str = "bench-shim";

/// Start N Pods per handler through CRI, measure, tear them down.
#[derive(Parser, Debug)]
struct Args {
    /// Pods per handler.
    #[arg(long, default_value_t = 20)]
    pods: usize,
    /// Handlers to compare; the first is divided by the second for the ratios.
    #[arg(long, value_delimiter = ',', default_value = "heteropod,runc")]
    handlers: Vec<String>,
    /// CRI socket (default: CONTAINERD_ADDRESS or /run/heteropod/containerd.sock).
    #[arg(long)]
    endpoint: Option<PathBuf>,
    /// Container image (default: HETEROPOD_TEST_IMAGE or the suite's busybox).
    #[arg(long)]
    image: Option<String>,
    /// JSON output path.
    #[arg(long, default_value = "target/bench/shim.json")]
    out: PathBuf,
}

/// Timings of one Pod.
#[derive(Debug, Default, Clone)]
struct PodSample {
    run: Duration,
    create: Duration,
    start: Duration,
    teardown: Duration,
}

/// What one handler produced.
#[derive(Debug, Default)]
struct HandlerRun {
    pods: Vec<(String, PodSample)>,
    /// Resident KiB of each Pod's shim process(es), by Pod id.
    shim_rss_kib: BTreeMap<String, u64>,
    shim_programs: Vec<String>,
}

async fn start_pod(cri: &mut Cri, handler: &str, image: &str) -> Result<(String, PodSample)> {
    let config = PodBuilder::new(BENCH_TEST).build();
    let container = ContainerBuilder::new("sleeper", image)
        .command(&["sleep", "3600"])
        .build();
    let t = Instant::now();
    let id = cri.run_pod(&config, handler).await?;
    let run = t.elapsed();
    let t = Instant::now();
    let cid = match cri.create_container(&id, &container, &config).await {
        Ok(c) => c,
        Err(e) => {
            let _ = harness::remove_pod_fully(cri, &id).await;
            return Err(e);
        }
    };
    let create = t.elapsed();
    let t = Instant::now();
    if let Err(e) = cri.start_container(&cid).await {
        let _ = harness::remove_pod_fully(cri, &id).await;
        return Err(e);
    }
    let start = t.elapsed();
    Ok((
        id,
        PodSample {
            run,
            create,
            start,
            teardown: Duration::ZERO,
        },
    ))
}

async fn teardown(cri: &mut Cri, id: &str) -> Result<Duration> {
    let t = Instant::now();
    cri.stop_pod(id).await?;
    cri.remove_pod(id).await?;
    Ok(t.elapsed())
}

/// Sums the RSS of the shim process(es) serving Pod `id`; also returns their program names.
fn shim_rss(id: &str) -> Option<(u64, Vec<String>)> {
    let shims = host::shims_of(id);
    let programs = shims.iter().map(|p| p.program().to_string()).collect();
    (!shims.is_empty()).then(|| (shims.iter().map(|p| p.rss_kib).sum(), programs))
}

async fn sweep_bench_pods(cri: &mut Cri) -> Result<()> {
    let mut sel = HashMap::new();
    sel.insert("heteropod.io/test".to_string(), BENCH_TEST.to_string());
    for p in cri.list_pods_labelled(sel).await? {
        harness::remove_pod_fully(cri, &p.id).await?;
    }
    Ok(())
}

async fn bench(cri: &mut Cri, args: &Args, image: &str) -> Result<BTreeMap<String, HandlerRun>> {
    let mut runs: BTreeMap<String, HandlerRun> = BTreeMap::new();
    // Warm-up: image unpacked, shim binaries and CNI paged in, for every handler.
    for h in &args.handlers {
        let (id, _) = start_pod(cri, h, image)
            .await
            .with_context(|| format!("warm-up Pod with handler {h}"))?;
        teardown(cri, &id).await?;
        runs.insert(h.clone(), HandlerRun::default());
    }
    for i in 0..args.pods {
        // Alternate the order so neither handler always goes first.
        let mut order = args.handlers.clone();
        if i % 2 == 1 {
            order.reverse();
        }
        for h in &order {
            let (id, sample) = start_pod(cri, h, image)
                .await
                .with_context(|| format!("Pod {i} with handler {h}"))?;
            runs.get_mut(h).expect("handler").pods.push((id, sample));
        }
    }
    // Shim memory while every Pod runs; give the shims a moment to settle first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (h, run) in runs.iter_mut() {
        for (id, _) in &run.pods {
            match shim_rss(id) {
                Some((kib, programs)) => {
                    run.shim_rss_kib.insert(id.clone(), kib);
                    for p in programs {
                        if !run.shim_programs.contains(&p) {
                            run.shim_programs.push(p);
                        }
                    }
                }
                None => eprintln!("warning: no shim process found for Pod {id} (handler {h:?})"),
            }
        }
    }
    for i in 0..args.pods {
        let mut order = args.handlers.clone();
        if i % 2 == 1 {
            order.reverse();
        }
        for h in &order {
            let run = runs.get_mut(h).expect("handler");
            let id = run.pods[i].0.clone();
            run.pods[i].1.teardown = teardown(cri, &id)
                .await
                .with_context(|| format!("teardown of {id}"))?;
        }
    }
    Ok(runs)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.handlers.len() != 2 || args.handlers[0] == args.handlers[1] || args.pods == 0 {
        bail!(
            "need two different handlers and at least one Pod (got {:?}, {})",
            args.handlers,
            args.pods
        );
    }
    let env = TestEnv::from_env();
    let endpoint = args.endpoint.clone().unwrap_or(env.endpoint);
    let image = args.image.clone().unwrap_or(env.image);
    let mut cri = Cri::connect(&endpoint)
        .await
        .with_context(|| format!("CRI endpoint {}", endpoint.display()))?;
    if cri.image_status(&image).await?.is_none() {
        bail!("image {image} is not in containerd (run hack/up.sh)");
    }
    println!(
        "bench-shim: {} Pods per handler ({}), image {image}, endpoint {}",
        args.pods,
        args.handlers.join(" vs "),
        endpoint.display()
    );
    let result = bench(&mut cri, &args, &image).await;
    // Whatever happened, leave no benchmark Pod behind.
    let swept = sweep_bench_pods(&mut cri).await;
    let runs = result?;
    swept?;
    let report = report::Report::new(&args.handlers, args.pods, &runs);
    report.print_table();
    report.write_json(&args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
