//! `heteropod-demo`: runs one two-container Pod with runtime handler `heteropod` through
//! CRI, the log agent offloaded to the (emulated) DPU, shows what ran where and that the
//! Pod behaves as one Pod (localhost across the two halves, host to Pod port), then
//! removes it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use heteropod_conformance::{host, logs, net, Ctx};

const APP: &str = "app";
const AGENT: &str = "log-agent";
const APP_PORT: u16 = 8080;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let ctx = Ctx::new("demo").await?;
    let outcome = run(&ctx).await;
    // The Pod goes whatever happened above.
    let cleaned = ctx.cleanup().await;
    outcome?;
    cleaned.context("remove the demo Pod")?;
    println!("==> Pod stopped and removed");
    Ok(())
}

async fn run(ctx: &Ctx) -> Result<()> {
    let host_port = net::free_port()?;
    println!(
        "==> RunPodSandbox (handler {}, port {host_port} -> {APP_PORT})",
        ctx.env.handler
    );
    let pod = ctx
        .run_pod(
            ctx.pod()
                .port(APP_PORT, host_port)
                .hostname("demo")
                .annotation(&format!("heteropod.io/placement.{AGENT}"), "dpu"),
        )
        .await?;
    let status = ctx.cri().pod_status(&pod.id).await?;
    let pod_ip = net::pod_ip(&status)?;

    println!("==> CreateContainer + StartContainer: {APP} (httpd, CPU), {AGENT} (polls the app over localhost, DPU)");
    let app = ctx
        .run_container(
            &pod,
            ctx.container(APP).shell(&format!(
                "mkdir -p /www && echo 'hello from the app container' > /www/index.html && \
                 exec httpd -f -p {APP_PORT} -h /www"
            )),
        )
        .await?;
    let agent = ctx
        .run_container(
            &pod,
            ctx.container(AGENT).shell(&format!(
                "while true; do echo \"agent saw: $(wget -qO- http://127.0.0.1:{APP_PORT}/)\"; sleep 1; done"
            )),
        )
        .await?;

    let seen = logs::wait_for(
        &pod.log_path(AGENT),
        "stdout",
        "hello from the app",
        Duration::from_secs(20),
    )
    .await
    .context("the log agent never reached the app over localhost")?;
    let from_host = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match net::http_get(SocketAddr::from(([127, 0, 0, 1], host_port))).await {
                Ok(body) => return body,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .context("host could not reach the app through the port mapping")?;
    ensure!(
        from_host.contains("hello from the app"),
        "unexpected body {from_host:?}"
    );

    println!();
    println!("Pod {} ({pod_ip})", short(&pod.id));
    let shims = host::shims_of(&pod.id);
    for s in &shims {
        println!(
            "  shim pid {:>7}  {:<32} rss {:>6} KiB",
            s.pid,
            s.program(),
            s.rss_kib
        );
    }
    println!("  container  id             runs on cpuset     state");
    for (name, id) in [(APP, &app), (AGENT, &agent)] {
        let st = ctx.cri().container_status(id).await?;
        println!(
            "  {:<10} {:<14} {:<6}  {:<10} {:?}",
            name,
            short(id),
            runs_on(id),
            cpuset_of(id).unwrap_or_else(|| "-".into()),
            st.state()
        );
    }
    println!();
    println!("what crossed:");
    let agent_lines = logs::stream_text(&seen, "stdout");
    let last = agent_lines.lines().last().unwrap_or_default();
    println!("  {AGENT} -> {APP} over 127.0.0.1:{APP_PORT}: {last:?}");
    println!(
        "  host -> 127.0.0.1:{host_port} -> {pod_ip}:{APP_PORT}: {:?}",
        from_host.trim()
    );
    println!();
    Ok(())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Where a container's processes are, told by its cgroup: the emulated DPU keeps its
/// containers under the `heteropod-dpu` parent.
fn runs_on(id: &str) -> &'static str {
    let on_dpu = host::cgroups_named(id)
        .iter()
        .any(|dir| dir.to_string_lossy().contains("heteropod-dpu"));
    if on_dpu {
        "dpu"
    } else {
        "cpu"
    }
}

/// The CPUs a container may run on, read from its cpuset cgroup.
fn cpuset_of(id: &str) -> Option<String> {
    host::cgroups_named(id)
        .into_iter()
        .map(|dir| dir.join("cpuset.cpus"))
        .chain(
            host::cgroups_named(id)
                .into_iter()
                .map(|dir| dir.join("cpuset.cpus.effective")),
        )
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
