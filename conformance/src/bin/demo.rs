//! `heteropod-demo` (`make demo`): one Pod, three containers, run twice through CRI with
//! runtime handler `heteropod`:
//!
//! * `app` (CPU) sends a fixed number of requests to `127.0.0.1:15001`,
//! * `proxy`, an Envoy-like TCP proxy sidecar listening there, forwards each connection
//!   to `127.0.0.1:8080`,
//! * `upstream` (CPU) answers them.
//!
//! The "split" run puts the proxy on the (emulated) DPU with
//! `heteropod.io/placement.proxy: dpu`, so every request crosses the HeteroNet relay
//! twice (app → proxy, proxy → upstream); the "all-CPU" run is the same Pod with the
//! proxy on the CPU. It prints where each container ran, the CPU seconds used on host
//! and DPU cores, requests served and latency, and what crossed the relay, side by side.
//! The upstream sits in the Pod so the whole path is Pod-local and both runs do the
//! same work; only the sidecar's placement differs.

#[path = "demo/measure.rs"]
mod measure;
#[path = "demo/report.rs"]
mod report;
#[path = "demo/run.rs"]
mod run;

use anyhow::{bail, Context, Result};
use heteropod_conformance::Ctx;

use run::{Settings, Variant};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    let ctx = Ctx::new("demo").await?;
    println!(
        "==> handler {}, {} requests over {} keep-alive connections per run",
        ctx.env.handler, settings.requests, settings.connections
    );
    let mut results = Vec::new();
    for variant in [Variant::Split, Variant::AllCpu] {
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
        let result = outcome.with_context(|| format!("{} run", variant.label()))?;
        cleaned.with_context(|| format!("remove the {} Pod", variant.label()))?;
        results.push(result);
    }
    println!("==> both Pods stopped and removed");
    println!();
    report::print_table(&results[0], &results[1]);
    report::check(&results)
}
