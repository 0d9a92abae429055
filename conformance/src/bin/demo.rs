//! `heteropod-demo` (`make demo`): one Pod, three containers, run three times through
//! CRI with runtime handler `heteropod`:
//!
//! * `app` (CPU) sends a fixed number of requests to `127.0.0.1:15001`,
//! * `proxy`, an Envoy-like TCP proxy sidecar listening there, forwards each connection
//!   to `127.0.0.1:8080`,
//! * `upstream` (CPU) answers them.
//!
//! `all_cpu` runs everything on the CPU. `split_relay` puts the proxy on the (emulated)
//! DPU with `heteropod.io/placement.proxy: dpu`, so every request crosses the HeteroNet
//! relays twice (app → proxy, proxy → upstream). `split_fastpath` is the same Pod
//! annotated `heteropod.io/fastpath: "true"`: the shim preloads the hetero-socket
//! library into the CPU containers, so the app's connections to the proxy and the
//! proxy's to the upstream take rings of their own instead of the host's kernel TCP and
//! the relays (if the fast path cannot serve the Pod, e.g. across a QEMU guest's BAR,
//! the run is skipped and says why). It prints where each
//! container ran, the CPU used on host and DPU cores per 1,000 requests, latency,
//! throughput, what crossed the relays and the fast path, side by side, and the
//! issue's targets with what bounds them; the figures go to `DEMO_JSON` (default
//! `target/demo/demo.json`). The upstream sits in the Pod so the whole path is
//! Pod-local and every run does the same work; only placement and the fast path differ.

#[path = "demo/measure.rs"]
mod measure;
#[path = "demo/report.rs"]
mod report;
#[path = "demo/run.rs"]
mod run;
#[path = "demo/summary.rs"]
mod summary;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use heteropod_conformance::Ctx;

use run::{Outcome, Settings, Variant};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    let json_path = PathBuf::from(
        std::env::var("DEMO_JSON")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "target/demo/demo.json".into()),
    );
    let ctx = Ctx::new("demo").await?;
    println!(
        "==> handler {}, {} requests over {} keep-alive connections per run; runs: {}",
        ctx.env.handler,
        settings.requests,
        settings.connections,
        Variant::ALL.map(Variant::key).join(", ")
    );
    if !settings.cpu_env.is_empty() {
        let env: Vec<String> = settings
            .cpu_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "==> app and upstream environment (DEMO_CPU_ENV): {}",
            env.join(" ")
        );
    }
    let mut outcomes: Vec<(Variant, Outcome)> = Vec::new();
    for (i, variant) in Variant::ALL.into_iter().enumerate() {
        println!(
            "==> run {}/{}: {} ({})",
            i + 1,
            Variant::ALL.len(),
            variant.label(),
            variant.key()
        );
        let outcome =
            tokio::time::timeout(run::RUN_TIMEOUT, run::run_variant(&ctx, &settings, variant))
                .await
                .unwrap_or_else(|_| {
                    bail!(
                        "{} run timed out after {:?}",
                        variant.label(),
                        run::RUN_TIMEOUT
                    )
                });
        // The Pod goes whatever happened above.
        let cleaned = ctx.cleanup().await;
        let outcome = outcome.with_context(|| format!("{} run", variant.label()))?;
        cleaned.with_context(|| format!("remove the {} Pod", variant.label()))?;
        if let Outcome::Skipped(why) = &outcome {
            println!("==> {}: skipped: {why}", variant.label());
        }
        outcomes.push((variant, outcome));
    }
    println!("==> every Pod stopped and removed");
    println!();
    let done = |v: Variant| {
        outcomes.iter().find_map(|(x, o)| match o {
            Outcome::Done(r) if *x == v => Some(r.as_ref()),
            _ => None,
        })
    };
    let runs: Vec<&run::RunResult> = Variant::ALL.into_iter().filter_map(done).collect();
    report::print_table(&runs);
    report::print_skipped(&outcomes);
    if let (Some(all_cpu), Some(fast)) = (done(Variant::AllCpu), done(Variant::SplitFastpath)) {
        report::print_targets(all_cpu, done(Variant::SplitRelay), fast);
    }
    summary::write(&json_path, &summary::document(&settings, &outcomes))?;
    println!();
    println!("==> figures in {}", json_path.display());
    report::check(&outcomes)
}
