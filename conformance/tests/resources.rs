//! Resource limits at create and through UpdateContainerResources, container stats,
//! and the OOM-killed reason.

use anyhow::{ensure, Context, Result};
use heteropod_conformance::cri::{self, ContainerState};
use heteropod_conformance::{run, wait, Cri};

const MIB: i64 = 1024 * 1024;

/// Reads a cgroup value from inside the container: cgroup v1 file, else the v2 one.
async fn cgroup_value(cri: &mut Cri, id: &str, v1: &str, v2: &str) -> Result<String> {
    let script = format!("cat /sys/fs/cgroup/{v1} 2>/dev/null || cat /sys/fs/cgroup/{v2}");
    Ok(cri
        .exec_ok(id, &["sh", "-c", &script])
        .await?
        .trim()
        .to_string())
}

async fn memory_limit(cri: &mut Cri, id: &str) -> Result<i64> {
    let v = cgroup_value(cri, id, "memory/memory.limit_in_bytes", "memory.max").await?;
    v.parse().with_context(|| format!("memory limit {v:?}"))
}

/// (quota, period) in microseconds.
async fn cpu_quota(cri: &mut Cri, id: &str) -> Result<(i64, i64)> {
    let v1 = "cpu/cpu.cfs_quota_us 2>/dev/null && cat /sys/fs/cgroup/cpu/cpu.cfs_period_us";
    let v = cgroup_value(cri, id, v1, "cpu.max").await?;
    let mut it = v.split_whitespace();
    let (Some(q), Some(p)) = (it.next(), it.next()) else {
        anyhow::bail!("cpu quota {v:?}");
    };
    Ok((q.parse()?, p.parse()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_at_create_are_applied() {
    run("res-create", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let res = cri::LinuxContainerResources {
            memory_limit_in_bytes: 256 * MIB,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            ..Default::default()
        };
        let c = ctx
            .run_container(
                &pod,
                ctx.container("limited")
                    .command(&["sleep", "3600"])
                    .resources(res),
            )
            .await?;
        ensure!(
            memory_limit(&mut cri, &c).await? == 256 * MIB,
            "memory limit not applied"
        );
        ensure!(
            cpu_quota(&mut cri, &c).await? == (50_000, 100_000),
            "cpu quota not applied"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_container_resources_changes_cgroup_limits() {
    run("res-update", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let c = ctx
            .run_container(
                &pod,
                ctx.container("main")
                    .command(&["sleep", "3600"])
                    .memory_limit(256 * MIB),
            )
            .await?;
        ensure!(
            memory_limit(&mut cri, &c).await? == 256 * MIB,
            "initial memory limit"
        );
        let update = cri::LinuxContainerResources {
            memory_limit_in_bytes: 128 * MIB,
            cpu_period: 100_000,
            cpu_quota: 20_000,
            cpu_shares: 256,
            ..Default::default()
        };
        cri.runtime
            .update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: c.clone(),
                linux: Some(update),
                ..Default::default()
            })
            .await
            .context("UpdateContainerResources")?;
        let mem = memory_limit(&mut cri, &c).await?;
        ensure!(mem == 128 * MIB, "memory limit after update {mem}");
        let cpu = cpu_quota(&mut cri, &c).await?;
        ensure!(cpu == (20_000, 100_000), "cpu quota after update {cpu:?}");
        let st = cri.container_status(&c).await?;
        ensure!(
            st.state == ContainerState::ContainerRunning as i32,
            "state after update {}",
            st.state
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_stats_report_cpu_and_memory() {
    run("res-stats", async |ctx| {
        let cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        // Burn a little CPU and touch some memory, then idle.
        let script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 3600";
        let busy = ctx
            .run_container(&pod, ctx.container("busy").shell(script))
            .await?;
        let idle = ctx
            .run_container(&pod, ctx.container("idle").command(&["sleep", "3600"]))
            .await?;

        let stats = wait::until(
            "non-zero CPU usage in ContainerStats",
            wait::STATE_TIMEOUT,
            || {
                let mut cri = cri.clone();
                let busy = busy.clone();
                async move {
                    let s = cri
                        .runtime
                        .container_stats(cri::ContainerStatsRequest { container_id: busy })
                        .await?
                        .into_inner()
                        .stats
                        .context("no stats")?;
                    let cpu = s
                        .cpu
                        .as_ref()
                        .and_then(|c| c.usage_core_nano_seconds)
                        .map(|v| v.value);
                    ensure!(cpu.unwrap_or(0) > 0, "no CPU usage yet: {s:?}");
                    Ok(Some(s))
                }
            },
        )
        .await?;
        let attrs = stats.attributes.as_ref().context("no attributes")?;
        ensure!(attrs.id == busy, "stats for {} not {busy}", attrs.id);
        ensure!(
            attrs.metadata.as_ref().map(|m| m.name.as_str()) == Some("busy"),
            "metadata {attrs:?}"
        );
        let cpu = stats.cpu.as_ref().context("no cpu")?;
        ensure!(cpu.timestamp > 0, "cpu timestamp");
        let mem = stats.memory.as_ref().context("no memory")?;
        let ws = mem.working_set_bytes.map(|v| v.value).unwrap_or(0);
        ensure!(ws > 0 && mem.timestamp > 0, "memory stats {mem:?}");

        let mut cri = cri.clone();
        let listed = cri
            .runtime
            .list_container_stats(cri::ListContainerStatsRequest {
                filter: Some(cri::ContainerStatsFilter {
                    pod_sandbox_id: pod.id.clone(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .stats;
        let mut ids: Vec<_> = listed
            .iter()
            .filter_map(|s| s.attributes.as_ref().map(|a| a.id.clone()))
            .collect();
        ids.sort();
        let mut want = vec![busy.clone(), idle.clone()];
        want.sort();
        ensure!(
            ids == want,
            "ListContainerStats by Pod: {ids:?}, want {want:?}"
        );
        let one = cri
            .runtime
            .list_container_stats(cri::ListContainerStatsRequest {
                filter: Some(cri::ContainerStatsFilter {
                    id: idle.clone(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .stats;
        ensure!(one.len() == 1, "ListContainerStats by id: {one:?}");
        ensure!(
            one[0].memory.is_some() && one[0].cpu.is_some(),
            "stats by id lack cpu/memory: {one:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_oom_killed() {
    run("res-oom", async |ctx| {
        let cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        // `tail` keeps the endless "line" of /dev/zero in memory until the limit hits.
        let c = ctx
            .run_container(
                &pod,
                ctx.container("hog")
                    .command(&["tail", "/dev/zero"])
                    .memory_limit(32 * MIB),
            )
            .await?;
        wait::oom_killed(&cri, &c).await
    })
    .await;
}
