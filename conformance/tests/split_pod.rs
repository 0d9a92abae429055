//! One split Pod end to end: traffic both ways between its halves on
//! 127.0.0.1 and on the Pod IP, `auto` placement, and nothing left on either
//! side once it is stopped and removed. Needs the heteropod handler and a
//! DPU agent (HETEROPOD_DPU), like tests/placement.rs. With the DPU in a
//! QEMU guest (HETEROPOD_DPU_REMOTE=1) the DPU side is checked through the
//! agent, and the sidecar must run on the guest's kernel.

use std::time::Duration;

use anyhow::ensure;
use heteropod_conformance::dpu::{self, PLACEMENT_PREFIX};
use heteropod_conformance::{cri, host, net, run};

const NET_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_pod_halves_reach_each_other_on_localhost_and_the_pod_ip() {
    if !dpu::enabled("split_pod_halves_reach_each_other_on_localhost_and_the_pod_ip") {
        return;
    }
    run("split-both-ways", async |ctx| {
        let cri = ctx.cri();
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .annotation(&format!("{PLACEMENT_PREFIX}side"), "dpu")
                    .annotation(&format!("{PLACEMENT_PREFIX}app"), "cpu"),
            )
            .await?;
        let app = ctx
            .run_container(
                &pod,
                ctx.container("app").shell(&dpu::httpd("from-app", "18201")),
            )
            .await?;
        let side = ctx
            .run_container(
                &pod,
                ctx.container("side")
                    .shell(&dpu::httpd("from-side", "18202")),
            )
            .await?;
        ensure!(
            dpu::runs_on_dpu(&side).await? && !dpu::runs_on_dpu(&app).await?,
            "placement not split"
        );
        if dpu::remote() {
            let host = dpu::host_kernel()?;
            let (side_release, side_boot) = dpu::kernel_of(&cri, &side).await?;
            ensure!(
                side_release != host.0 && side_boot != host.1,
                "the sidecar runs on the host's kernel {} (boot id {})",
                host.0,
                host.1
            );
            ensure!(
                dpu::kernel_of(&cri, &app).await? == host,
                "the app is not on the host's kernel"
            );
        }
        let ip = net::pod_ip(&ctx.cri().pod_status(&pod.id).await?)?;
        for host in ["127.0.0.1".to_string(), ip.to_string()] {
            dpu::wget_until(
                &cri,
                &app,
                &format!("http://{host}:18202/"),
                "from-side",
                NET_WAIT,
            )
            .await?;
            dpu::wget_until(
                &cri,
                &side,
                &format!("http://{host}:18201/"),
                "from-app",
                NET_WAIT,
            )
            .await?;
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_placement_offloads_infrastructure_that_frees_cpu_and_fits() {
    if !dpu::enabled("auto_placement_offloads_infrastructure_that_frees_cpu_and_fits") {
        return;
    }
    run("split-auto", async |ctx| {
        let pod = ctx
            .run_pod(ctx.pod().annotation("heteropod.io/placement", "auto"))
            .await?;
        // 200m requested and limited: frees host CPU and fits a 1-core DPU.
        let sized = cri::LinuxContainerResources {
            cpu_shares: 204,
            cpu_period: 100_000,
            cpu_quota: 20_000,
            ..Default::default()
        };
        let sleeper = |name: &str| ctx.container(name).command(&["sleep", "1000"]);
        // Infrastructure by the node policy (hack/dpu.sh: hp-infra-*).
        let infra = ctx
            .run_container(&pod, sleeper("hp-infra-proxy").resources(sized.clone()))
            .await?;
        // No CPU request: moving it frees nothing.
        let unsized_infra = ctx.run_container(&pod, sleeper("hp-infra-idle")).await?;
        // An application stays whatever its size.
        let app = ctx
            .run_container(&pod, sleeper("app").resources(sized))
            .await?;
        ensure!(
            dpu::runs_on_dpu(&infra).await?,
            "hp-infra-proxy was not offloaded"
        );
        ensure!(
            !dpu::runs_on_dpu(&unsized_infra).await?,
            "hp-infra-idle was offloaded"
        );
        ensure!(
            !dpu::runs_on_dpu(&app).await?,
            "the application was offloaded"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_and_removed_split_pod_leaves_nothing_on_either_side() {
    if !dpu::enabled("stopped_and_removed_split_pod_leaves_nothing_on_either_side") {
        return;
    }
    run("split-leaves-nothing", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .annotation(&format!("{PLACEMENT_PREFIX}side"), "dpu"),
            )
            .await?;
        let app = ctx
            .run_container(&pod, ctx.container("app").command(&["sleep", "1000"]))
            .await?;
        let side = ctx
            .run_container(&pod, ctx.container("side").command(&["sleep", "1000"]))
            .await?;
        let short = &pod.id[..16];
        let region = format!("heteropod-{short}");
        ensure!(
            !host::processes(|a| a.iter().any(|x| x.contains(&region))).is_empty(),
            "no relay ran for the split Pod"
        );
        if dpu::remote() {
            let agent = dpu::agent_view().await?;
            ensure!(agent.runs_on_dpu(&side), "the agent does not run {side}");
            ensure!(
                agent.pod_networks.contains(&pod.id),
                "the agent holds no DPU half: {agent:?}"
            );
            ensure!(
                !dpu::ivshmem_slots_of(&pod.id).is_empty(),
                "no ivshmem slot leased for the Pod"
            );
        } else {
            ensure!(
                !host::mounts_mentioning(&pod.id).is_empty(),
                "no DPU half netns"
            );
        }
        for id in [&side, &app] {
            cri.stop_container(id, 0).await?;
            cri.remove_container(id).await?;
        }
        cri.stop_pod(&pod.id).await?;
        cri.remove_pod(&pod.id).await?;
        let relays = host::processes(|a| a.iter().any(|x| x.contains(&region)));
        ensure!(relays.is_empty(), "relays left: {relays:?}");
        let shm: Vec<_> = std::fs::read_dir("/dev/shm")?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(short))
            .map(|e| e.path())
            .collect();
        ensure!(shm.is_empty(), "region files left: {shm:?}");
        let mounts = host::mounts_mentioning(&pod.id);
        ensure!(mounts.is_empty(), "mounts left: {mounts:?}");
        for id in [&side, &app] {
            let cgroups = host::cgroups_named(id);
            ensure!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
            let procs = host::processes(|a| a.iter().any(|x| x.contains(id.as_str())));
            ensure!(procs.is_empty(), "processes left: {procs:?}");
        }
        ensure!(host::shims_of(&pod.id).is_empty(), "shim left");
        if dpu::remote() {
            // The guest's side: containers, netns and relay, as its agent sees them.
            let agent = dpu::agent_view().await?;
            ensure!(!agent.knows_pod(&pod.id), "left on the DPU: {agent:?}");
            let slots = dpu::ivshmem_slots_of(&pod.id);
            ensure!(slots.is_empty(), "ivshmem slots still leased: {slots:?}");
        }
        Ok(())
    })
    .await;
}
