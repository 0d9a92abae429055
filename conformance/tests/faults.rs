//! Faults under running split Pods: the DPU agent killed with SIGKILL (with
//! the DPU in a QEMU guest, QEMU itself), a HeteroNet relay killed. They
//! disturb every other DPU test, so they run only when `HETEROPOD_FAULTS` is
//! set: hack/run-conformance.sh runs them in a pass of their own, one at a
//! time, after the suite.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{ensure, Context, Result};
use heteropod_conformance::dpu::{self, PLACEMENT_PREFIX};
use heteropod_conformance::{client::Cri, host, logs, run, wait, Ctx, Pod};
use k8s_cri::v1 as cri;

/// The shim waits `lost_after_secs` (10 in hack/dpu.sh) before it gives up on the agent.
const LOST_WAIT: Duration = Duration::from_secs(60);
const NET_WAIT: Duration = Duration::from_secs(30);
const PORT: u16 = 18090;

fn faults_enabled(test: &str) -> bool {
    let on = std::env::var("HETEROPOD_FAULTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!(
            "{test}: skipped: HETEROPOD_FAULTS is not set (hack/run-conformance.sh runs it alone)"
        );
    }
    on
}

/// hack/dpu-agent.sh with the suite's environment (it finds the agent from it).
fn dpu_agent(action: &str) -> Result<()> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hack/dpu-agent.sh");
    let out = Command::new(&script)
        .arg(action)
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} {action}: {}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Starts the agent again when a test that killed it fails half-way.
struct RestartAgent;

impl Drop for RestartAgent {
    fn drop(&mut self) {
        if let Err(e) = dpu_agent("start") {
            eprintln!("restart the DPU agent: {e:#}");
        }
    }
}

/// A split Pod: `app` (sleeps) on the CPU, `web` (httpd on 127.0.0.1) on the DPU.
async fn split_pod(ctx: &Ctx, body: &str) -> Result<(Pod, String, String)> {
    let pod = ctx
        .run_pod(
            ctx.pod()
                .annotation(&format!("{PLACEMENT_PREFIX}web"), "dpu"),
        )
        .await?;
    let app = ctx
        .run_container(&pod, ctx.container("app").shell("exec sleep 1000"))
        .await?;
    let web = ctx
        .run_container(
            &pod,
            ctx.container("web")
                .shell(&dpu::httpd(body, &format!("127.0.0.1:{PORT}"))),
        )
        .await?;
    Ok((pod, app, web))
}

/// Waits until the CPU container gets `body` from the DPU listener over localhost.
async fn reaches_web(cri: &Cri, app: &str, body: &str) -> Result<()> {
    let url = format!("http://127.0.0.1:{PORT}/");
    dpu::wget_until(cri, app, &url, body, NET_WAIT).await
}

/// The Pod's relay on `side` (`cpu` or `dpu`) on this host: its region (a
/// `shm:` file) or its counters socket is named after the Pod.
fn relay_pid(pod_id: &str, side: &str) -> Option<u32> {
    let tag = format!("heteropod-{}", &pod_id[..16.min(pod_id.len())]);
    let region = format!("shm:/{tag}");
    let stats = format!("/dev/shm/{tag}.stats.sock");
    host::processes(|args| {
        args[0].ends_with("heteronet")
            && args.windows(2).any(|w| w[0] == "--side" && w[1] == side)
            && args.iter().any(|a| *a == region || *a == stats)
    })
    .first()
    .map(|p| p.pid)
}

fn kill9(pid: u32) -> Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .with_context(|| format!("kill {pid}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_dpu_agent_reports_dpu_containers_exited_and_recovers() {
    if !faults_enabled("killed_dpu_agent_reports_dpu_containers_exited_and_recovers") {
        return;
    }
    run("fault-agent-killed", async |ctx| {
        let cri = ctx.cri();
        let (pod, app, web) = split_pod(ctx, "before-the-fault").await?;
        reaches_web(&cri, &app, "before-the-fault").await?;

        let _restart = RestartAgent;
        dpu_agent("kill")?;
        let st = wait::container_state(&cri, &web, cri::ContainerState::ContainerExited, LOST_WAIT)
            .await?;
        ensure!(st.exit_code != 0, "DPU container exited with 0");
        let lines = logs::wait_for(
            &pod.log_path("web"),
            "stderr",
            "heteropod: reported exited",
            LOST_WAIT,
        )
        .await
        .context("no reason in the DPU container's log")?;
        let why = logs::stream_text(&lines, "stderr");
        ensure!(why.contains("unreachable"), "reason {why:?}");
        let st = cri.clone().container_status(&app).await?;
        ensure!(
            st.state == cri::ContainerState::ContainerRunning as i32,
            "the CPU container did not keep running: {:?}",
            st.state()
        );

        // The Pod goes cleanly while the DPU is still away.
        ctx.cleanup()
            .await
            .context("remove the Pod while the agent is down")?;
        ensure!(
            host::shims_of(&pod.id).is_empty(),
            "shim left after the Pod was removed"
        );

        // Back again: new split Pods work, and what the first Pod left on the
        // DPU is removed by the shim that reaches the agent next.
        dpu_agent("start")?;
        let (_pod2, app2, _web2) = split_pod(ctx, "after-the-restart").await?;
        reaches_web(&cri, &app2, "after-the-restart").await?;
        wait::until("the first Pod's DPU container removed", NET_WAIT, || {
            let web = web.clone();
            async move {
                let gone = if dpu::remote() {
                    !dpu::agent_view().await?.runs_on_dpu(&web)
                } else {
                    host::cgroups_named(&web).is_empty()
                };
                Ok(gone.then_some(()))
            }
        })
        .await?;
        wait::until("the first Pod's DPU relay removed", NET_WAIT, || {
            let id = pod.id.clone();
            async move {
                let gone = if dpu::remote() {
                    !dpu::agent_view().await?.knows_pod(&id)
                } else {
                    relay_pid(&id, "dpu").is_none()
                };
                Ok(gone.then_some(()))
            }
        })
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_relays_are_restarted_by_their_owners() {
    if !faults_enabled("killed_relays_are_restarted_by_their_owners") {
        return;
    }
    run("fault-relay-killed", async |ctx| {
        let cri = ctx.cri();
        let (pod, app, _web) = split_pod(ctx, "relayed").await?;
        reaches_web(&cri, &app, "relayed").await?;
        // The CPU relay belongs to the shim, the DPU relay to the agent. A
        // DPU in a guest keeps its relay out of this host's reach: there only
        // the CPU side is killed (the guest's relay then sees its peer go).
        let sides: &[&str] = if dpu::remote() {
            &["cpu"]
        } else {
            &["cpu", "dpu"]
        };
        for &side in sides {
            let old = relay_pid(&pod.id, side).with_context(|| format!("no {side} relay"))?;
            kill9(old)?;
            let new = wait::until(&format!("a new {side} relay"), NET_WAIT, || {
                let id = pod.id.clone();
                async move { Ok(relay_pid(&id, side).filter(|p| *p != old)) }
            })
            .await?;
            ensure!(new != old);
            reaches_web(&cri, &app, "relayed")
                .await
                .with_context(|| format!("after the {side} relay was killed"))?;
        }
        Ok(())
    })
    .await;
}
