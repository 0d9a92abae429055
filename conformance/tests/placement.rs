//! Containers placed on the (emulated) DPU through Pod annotations.
//!
//! These need the heteropod handler and a running DPU agent: they run only
//! when `HETEROPOD_DPU` is set (hack/run-conformance.sh sets it for the
//! heteropod handler when the agent runs) and skip with a message otherwise.
//! With the DPU in a QEMU guest (`HETEROPOD_DPU_REMOTE=1`) what lives on the
//! DPU is checked through the agent and ExecSync instead of this host.

use std::time::Duration;

use anyhow::{ensure, Context};
use heteropod_conformance::client::grpc_code;
use heteropod_conformance::dpu::{self, PLACEMENT_PREFIX};
use heteropod_conformance::stream::{Session, RESIZED_TTY_SCRIPT};
use heteropod_conformance::{env, host, logs, net, run, wait};

const LOG_WAIT: Duration = Duration::from_secs(20);
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpu_container_logs_execs_exits_in_the_dpu_cgroup() {
    if !dpu::enabled("dpu_container_logs_execs_exits_in_the_dpu_cgroup") {
        return;
    }
    run("placement-dpu", async |ctx| {
        let mut cri = ctx.cri();
        let name = "offloaded";
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .annotation(&format!("{PLACEMENT_PREFIX}{name}"), "dpu"),
            )
            .await?;
        // The pause after /tmp/go appears lets the exec that made it finish:
        // when the init exits, the kernel kills what is left in its PID
        // namespace, and a `touch` under TCG can still be exiting (137, seen once).
        let script = "echo hello-from-dpu; echo err-from-dpu >&2; \
                      while [ ! -e /tmp/go ]; do sleep 0.1; done; sleep 1; exit 7";
        let c = ctx
            .run_container(&pod, ctx.container(name).shell(script))
            .await?;

        let lines =
            logs::wait_for(&pod.log_path(name), "stdout", "hello-from-dpu", LOG_WAIT).await?;
        let lines = if logs::stream_text(&lines, "stderr").is_empty() {
            logs::wait_for(&pod.log_path(name), "stderr", "err-from-dpu", LOG_WAIT).await?
        } else {
            lines
        };
        ensure!(
            logs::stream_text(&lines, "stderr") == "err-from-dpu\n",
            "stderr {lines:?}"
        );

        let r = cri
            .exec_sync(&c, &["sh", "-c", "echo exec-out; exit 4"], 30)
            .await?;
        ensure!(r.exit_code == 4, "exec exit code {}", r.exit_code);
        ensure!(r.stdout == b"exec-out\n", "exec stdout {:?}", r.stdout);

        // The processes are in the DPU's cgroup, limited to the DPU's cores.
        let parent = dpu::cgroup_parent();
        let own = format!("/{parent}/{c}");
        let cgroups = cri.exec_ok(&c, &["cat", "/proc/self/cgroup"]).await?;
        let cpuset_line = cgroups
            .lines()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|c| c.split(',').any(|c| c == "cpuset"))
            })
            .with_context(|| format!("no cpuset line in {cgroups:?}"))?;
        ensure!(
            cpuset_line.ends_with(&own),
            "cpuset cgroup {cpuset_line:?}, want {own}"
        );
        let (dpu_cpus, ctr_cpus, procs) = if dpu::remote() {
            // The guest's cgroups: the container's own through ExecSync
            // (runc mounts its cgroup at /sys/fs/cgroup/<controller>), the
            // DPU's cores from the agent.
            let cpus = dpu::agent_view().await?.cpus;
            let own = cri
                .exec_ok(&c, &["cat", "/sys/fs/cgroup/cpuset/cpuset.cpus"])
                .await?;
            let procs = cri
                .exec_ok(&c, &["cat", "/sys/fs/cgroup/cpuset/cgroup.procs"])
                .await?;
            (cpus, own.trim().to_string(), procs.trim().to_string())
        } else {
            let root = std::path::Path::new("/sys/fs/cgroup/cpuset");
            let read = |p: &std::path::Path| -> anyhow::Result<String> {
                Ok(heteropod_conformance::harness::read_to_string(p)?
                    .trim()
                    .to_string())
            };
            (
                read(&root.join(&parent).join("cpuset.cpus"))?,
                read(&root.join(&parent).join(&c).join("cpuset.cpus"))?,
                read(&root.join(&parent).join(&c).join("cgroup.procs"))?,
            )
        };
        ensure!(!dpu_cpus.is_empty(), "DPU cgroup has no cpuset");
        ensure!(
            ctr_cpus == dpu_cpus,
            "container cpuset {ctr_cpus:?}, DPU {dpu_cpus:?}"
        );
        ensure!(!procs.is_empty(), "no process in the DPU cgroup of {c}");

        // Stats come from the DPU's cgroups (the guest's, in a guest).
        wait::until(
            "CPU and memory in ContainerStats",
            wait::STATE_TIMEOUT,
            || {
                let mut cri = cri.clone();
                let c = c.clone();
                async move {
                    let req = heteropod_conformance::cri::ContainerStatsRequest { container_id: c };
                    let s = cri.runtime.container_stats(req).await?.into_inner().stats;
                    let s = s.context("no stats")?;
                    let cpu = s
                        .cpu
                        .and_then(|c| c.usage_core_nano_seconds)
                        .map(|v| v.value);
                    let mem = s.memory.and_then(|m| m.working_set_bytes).map(|v| v.value);
                    Ok((cpu.unwrap_or(0) > 0 && mem.unwrap_or(0) > 0).then_some(()))
                }
            },
        )
        .await?;

        cri.exec_ok(&c, &["touch", "/tmp/go"]).await?;
        let st = wait::exited(&cri, &c).await?;
        ensure!(st.exit_code == 7, "exit code {}", st.exit_code);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pid_namespace_with_an_offloaded_container_is_refused() {
    if !dpu::enabled("shared_pid_namespace_with_an_offloaded_container_is_refused") {
        return;
    }
    run("placement-shared-pid", async |ctx| {
        let name = "offloaded";
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .shared_pid()
                    .annotation(&format!("{PLACEMENT_PREFIX}{name}"), "dpu"),
            )
            .await?;
        // The shim sees the container at StartContainer (CreateTask).
        let err = ctx
            .run_container(&pod, ctx.container(name).shared_pid().command(&["true"]))
            .await
            .err()
            .context("a DPU container sharing the Pod PID namespace started")?;
        let text = format!("{err:#}");
        ensure!(text.contains("PID namespace"), "error {text}");
        ensure!(grpc_code(&err).is_some(), "not a gRPC error: {text}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpu_memory_hog_is_reported_oom_killed() {
    if !dpu::enabled("dpu_memory_hog_is_reported_oom_killed") {
        return;
    }
    run("placement-dpu-oom", async |ctx| {
        let cri = ctx.cri();
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .annotation(&format!("{PLACEMENT_PREFIX}hog"), "dpu"),
            )
            .await?;
        // `tail` keeps the endless "line" of /dev/zero in memory until the limit
        // hits; a second first, to see where it runs while it does.
        let c = ctx
            .run_container(
                &pod,
                ctx.container("hog")
                    .shell("sleep 1; exec tail /dev/zero")
                    .memory_limit(32 << 20),
            )
            .await?;
        dpu::ensure_runs_on(&c, "hog", true).await?;
        wait::oom_killed(&cri, &c).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpu_container_goes_with_a_killed_shim() {
    if !dpu::enabled("dpu_container_goes_with_a_killed_shim") {
        return;
    }
    run("placement-dpu-shim-killed", async |ctx| {
        let cri = ctx.cri();
        let name = "orphan";
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .annotation(&format!("{PLACEMENT_PREFIX}{name}"), "dpu"),
            )
            .await?;
        let c = ctx
            .run_container(&pod, ctx.container(name).shell("exec sleep 1000"))
            .await?;
        let procs = std::path::Path::new("/sys/fs/cgroup/cpuset")
            .join(dpu::cgroup_parent())
            .join(&c)
            .join("cgroup.procs");
        if dpu::remote() {
            ensure!(dpu::runs_on_dpu(&c).await?, "{c} is not on the DPU");
        } else {
            ensure!(procs.exists(), "{} missing", procs.display());
        }
        let shims = host::shims_of(&pod.id);
        ensure!(!shims.is_empty(), "no shim for Pod {}", pod.id);
        for s in &shims {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(s.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )?;
        }
        // containerd runs `shim delete`, which must remove the DPU container too.
        wait::exited(&cri, &c).await?;
        wait::until("the DPU container to go", LOG_WAIT, || {
            let (procs, c) = (procs.clone(), c.clone());
            async move {
                if dpu::remote() {
                    return Ok((!dpu::runs_on_dpu(&c).await?).then_some(()));
                }
                Ok((!procs.exists()).then_some(()))
            }
        })
        .await?;
        // ... and both relays of the Pod network and their shared region
        // (in a guest: the DPU half, as its agent sees it, and the BAR slot).
        let region: String = format!("heteropod-{}", &pod.id[..16]);
        wait::until("the Pod's relays to go", LOG_WAIT, || {
            let (region, pod_id) = (region.clone(), pod.id.clone());
            async move {
                let left = host::processes(|args| args.iter().any(|a| a.contains(&region)));
                let shm = std::path::Path::new("/dev/shm").join(&region);
                let dpu_side_gone = !dpu::remote()
                    || (!dpu::agent_view().await?.knows_pod(&pod_id)
                        && dpu::ivshmem_slots_of(&pod_id).is_empty());
                Ok((left.is_empty() && !shm.exists() && dpu_side_gone).then_some(()))
            }
        })
        .await?;
        Ok(())
    })
    .await;
}

/// A Pod whose `name` container runs `sleep` on the DPU; returns its id.
async fn dpu_sleeper(ctx: &heteropod_conformance::Ctx, name: &str) -> anyhow::Result<String> {
    let pod = ctx
        .run_pod(
            ctx.pod()
                .annotation(&format!("{PLACEMENT_PREFIX}{name}"), "dpu"),
        )
        .await?;
    ctx.run_container(&pod, ctx.container(name).shell("exec sleep 1000"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpu_exec_stream_forwards_stdin() {
    if !dpu::enabled("dpu_exec_stream_forwards_stdin") {
        return;
    }
    run("placement-dpu-stdin", async |ctx| {
        let mut cri = ctx.cri();
        let c = dpu_sleeper(ctx, "side").await?;
        let url = cri
            .exec_url(&c, &["sh", "-c", "read line; echo got:$line"], false, true)
            .await?;
        let mut s = Session::connect(&url).await?;
        s.send_stdin(b"hello-stdin\n").await?;
        let out = s.finish(LOG_WAIT).await?;
        ensure!(
            out.stdout_text() == "got:hello-stdin\n",
            "stdout {:?}",
            out.stdout_text()
        );
        ensure!(out.exit_code()? == 0, "status {:?}", out.status);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpu_exec_stream_with_tty_and_resize() {
    if !dpu::enabled("dpu_exec_stream_with_tty_and_resize") {
        return;
    }
    run("placement-dpu-tty", async |ctx| {
        let mut cri = ctx.cri();
        let c = dpu_sleeper(ctx, "side").await?;
        let url = cri
            .exec_url(&c, &["sh", "-c", RESIZED_TTY_SCRIPT], true, true)
            .await?;
        let mut s = Session::connect(&url).await?;
        s.resize(123, 45).await?;
        s.send_stdin(b"go\n").await?;
        let out = s.finish(LOG_WAIT).await?;
        let text = out.stdout_text();
        ensure!(text.contains("/dev/pts/"), "not a terminal: {text:?}");
        ensure!(
            text.contains("45 123"),
            "terminal size not applied: {text:?}"
        );
        ensure!(out.exit_code()? == 4, "status {:?}", out.status);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpu_container_runs_in_the_dpu_half_with_the_pod_ip() {
    if !dpu::enabled("dpu_container_runs_in_the_dpu_half_with_the_pod_ip") {
        return;
    }
    run("placement-dpu-netns", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .annotation(&format!("{PLACEMENT_PREFIX}side"), "dpu")
                    // Stays on the CPU under a force-offload node too.
                    .annotation(&format!("{PLACEMENT_PREFIX}app"), "cpu"),
            )
            .await?;
        let app = ctx
            .run_container(&pod, ctx.container("app").shell("exec sleep 1000"))
            .await?;
        let side = ctx
            .run_container(&pod, ctx.container("side").shell("exec sleep 1000"))
            .await?;
        let ip = net::pod_ip(&cri.pod_status(&pod.id).await?)?;
        let cpu_ns = cri
            .exec_ok(&app, &["readlink", "/proc/self/ns/net"])
            .await?;
        let dpu_ns = cri
            .exec_ok(&side, &["readlink", "/proc/self/ns/net"])
            .await?;
        ensure!(
            cpu_ns != dpu_ns,
            "DPU container shares the CPU netns {cpu_ns}"
        );
        let addrs = cri.exec_ok(&side, &["ip", "-4", "addr"]).await?;
        ensure!(
            addrs.contains(&format!("inet {ip}/")),
            "Pod IP {ip} not in the DPU half: {addrs}"
        );
        ensure!(addrs.contains("inet 127.0.0.1/8"), "no loopback: {addrs}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_container_reaches_a_dpu_listener_on_localhost() {
    if !dpu::enabled("cpu_container_reaches_a_dpu_listener_on_localhost") {
        return;
    }
    run("placement-dpu-localhost", async |ctx| {
        let cri = ctx.cri();
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
                    .shell(&dpu::httpd("hello-from-dpu-half", "127.0.0.1:18080")),
            )
            .await?;
        dpu::ensure_runs_on(&web, "web", true).await?;
        // Force-offloaded, the unannotated app is on the DPU too.
        dpu::ensure_runs_on(&app, "app", env::force_offload()).await?;
        // The relay mirrors the DPU listener into the CPU half shortly after it binds.
        let url = "http://127.0.0.1:18080/";
        dpu::wget_until(&cri, &app, url, "hello-from-dpu-half", LOG_WAIT).await?;
        Ok(())
    })
    .await;
}

/// A CPU limit no emulated DPU has room for (it has one core).
fn bigger_than_the_dpu() -> heteropod_conformance::cri::LinuxContainerResources {
    heteropod_conformance::cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 800_000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dpu_refuses_a_pinned_container_and_the_node_policy_falls_back_to_cpu() {
    if !dpu::enabled("a_full_dpu_refuses_a_pinned_container_and_the_node_policy_falls_back_to_cpu")
    {
        return;
    }
    run("placement-dpu-full", async |ctx| {
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .annotation(&format!("{PLACEMENT_PREFIX}pinned"), "dpu"),
            )
            .await?;
        // Asked for by the Pod: a clear error, nothing half-made.
        let pinned = ctx
            .run_container(
                &pod,
                ctx.container("pinned")
                    .command(&["sleep", "1000"])
                    .resources(bigger_than_the_dpu()),
            )
            .await;
        let err = pinned
            .err()
            .context("an 8-core container started on a 1-core DPU")?;
        ensure!(format!("{err:#}").contains("DPU full"), "{err:#}");
        // Sent by the node policy (hack/dpu.sh: infra_names = ["hp-infra-*"]):
        // it runs, on the CPU.
        let policy = ctx
            .run_container(
                &pod,
                ctx.container("hp-infra-big")
                    .command(&["sleep", "1000"])
                    .resources(bigger_than_the_dpu()),
            )
            .await?;
        let cgroups = host::cgroups_named(&policy);
        ensure!(!cgroups.is_empty(), "no cgroup for {policy}");
        ensure!(
            !dpu::runs_on_dpu(&policy).await?,
            "fell back nowhere: {cgroups:?}"
        );
        // One that fits goes to the DPU by the same policy.
        let small = ctx
            .run_container(
                &pod,
                ctx.container("hp-infra-small").command(&["sleep", "1000"]),
            )
            .await?;
        ensure!(
            dpu::runs_on_dpu(&small).await?,
            "hp-infra-small is not on the DPU"
        );
        Ok(())
    })
    .await;
}
