//! The emulated DPU's cores are the DPU's alone: with `[host] cpus` in the
//! node config (hack/dpu.sh writes every online core but the DPU's, and
//! passes the list as `HETEROPOD_HOST_CPUS`), a split Pod's CPU containers,
//! its sandbox, its shim and its CPU-side relay run on the host's cores, its
//! DPU container and DPU-side relay on the DPU's, and a container that names
//! its own CPUs keeps them. Skipped without a DPU agent on this host, or when
//! the node shares its cores with the DPU.

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use heteropod_conformance::dpu::{self, PLACEMENT_PREFIX};
use heteropod_conformance::{cri, harness, host, run};

/// The CPUs of a cpuset list ("0-2,5").
fn cpus(list: &str) -> Result<BTreeSet<u32>> {
    let mut out = BTreeSet::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi): (u32, u32) = (lo.trim().parse()?, hi.trim().parse()?);
        out.extend(lo..=hi);
    }
    ensure!(!out.is_empty(), "empty cpuset list {list:?}");
    Ok(out)
}

/// `Cpus_allowed_list` of a /proc/.../status text.
fn allowed(status: &str) -> Result<BTreeSet<u32>> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list")?;
    cpus(list)
}

/// Every thread of host process `pid` may run on exactly `want`.
fn threads_on(what: &str, pid: u32, want: &BTreeSet<u32>) -> Result<()> {
    let dir = std::path::PathBuf::from(format!("/proc/{pid}/task"));
    let tasks = std::fs::read_dir(&dir).with_context(|| format!("{what}: list {dir:?}"))?;
    for task in tasks.flatten() {
        let status = harness::read_to_string(&task.path().join("status"))?;
        let got = allowed(&status)?;
        ensure!(
            &got == want,
            "{what} (pid {pid}, thread {:?}) may run on {got:?}, want {want:?}",
            task.file_name()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_side_of_a_split_pod_stays_off_the_dpu_cores() {
    let test = "cpu_side_of_a_split_pod_stays_off_the_dpu_cores";
    if !dpu::enabled(test) {
        return;
    }
    let Some(host_list) = std::env::var("HETEROPOD_HOST_CPUS")
        .ok()
        .filter(|s| !s.trim().is_empty())
    else {
        eprintln!("{test}: skipped: HETEROPOD_HOST_CPUS is not set (the node shares its cores with the DPU)");
        return;
    };
    if dpu::remote() {
        eprintln!("{test}: skipped: the DPU is a QEMU guest, its cores are not this host's");
        return;
    }
    run("dpu-cores", async |ctx| {
        let mut cri = ctx.cri();
        let host_cpus = cpus(&host_list)?;
        let root = std::path::Path::new("/sys/fs/cgroup/cpuset");
        let dpu_cpus = cpus(&harness::read_to_string(
            &root.join(dpu::cgroup_parent()).join("cpuset.cpus"),
        )?)?;
        ensure!(
            host_cpus.is_disjoint(&dpu_cpus),
            "host cores {host_cpus:?} overlap the DPU's {dpu_cpus:?}"
        );
        let online =
            harness::read_to_string(std::path::Path::new("/sys/devices/system/cpu/online"))?;
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .annotation(&format!("{PLACEMENT_PREFIX}app"), "cpu")
                    .annotation(&format!("{PLACEMENT_PREFIX}own"), "cpu")
                    .annotation(&format!("{PLACEMENT_PREFIX}side"), "dpu"),
            )
            .await?;
        let app = ctx
            .run_container(&pod, ctx.container("app").shell("exec sleep 1000"))
            .await?;
        // What the kubelet's CPU manager would send: the container's own CPUs win.
        let own = ctx
            .run_container(
                &pod,
                ctx.container("own").shell("exec sleep 1000").resources(
                    cri::LinuxContainerResources {
                        cpuset_cpus: online.trim().to_string(),
                        ..Default::default()
                    },
                ),
            )
            .await?;
        let side = ctx
            .run_container(&pod, ctx.container("side").shell("exec sleep 1000"))
            .await?;

        // As the containers' own processes see it.
        for (name, id, want) in [
            ("app", &app, &host_cpus),
            ("own", &own, &cpus(&online)?),
            ("side", &side, &dpu_cpus),
        ] {
            let status = cri.exec_ok(id, &["cat", "/proc/1/status"]).await?;
            let got = allowed(&status)?;
            ensure!(
                &got == want,
                "container {name} may run on {got:?}, want {want:?}"
            );
        }
        // The sandbox (pause) container, from its cpuset cgroup.
        let sandbox = host::cgroups_named(&pod.id)
            .into_iter()
            .map(|d| d.join("cpuset.cpus"))
            .find(|p| p.exists())
            .with_context(|| format!("no cpuset cgroup for the sandbox {}", pod.id))?;
        let got = cpus(&harness::read_to_string(&sandbox)?)?;
        ensure!(
            got == host_cpus,
            "the sandbox's cpuset is {got:?}, want {host_cpus:?}"
        );

        let shims = host::shims_of(&pod.id);
        ensure!(!shims.is_empty(), "no shim for Pod {}", pod.id);
        for s in &shims {
            threads_on("the shim", s.pid, &host_cpus)?;
        }
        let region = format!("shm:/heteropod-{}", &pod.id[..16]);
        let relays =
            host::processes(|args| args[0].ends_with("heteronet") && args.contains(&region));
        let side_of = |p: &host::HostProcess| p.flag("--side").unwrap_or("cpu").to_string();
        for (side, want) in [("cpu", &host_cpus), ("dpu", &dpu_cpus)] {
            let relay = relays
                .iter()
                .find(|p| side_of(p) == side)
                .with_context(|| format!("no {side}-side relay for {region} in {relays:?}"))?;
            threads_on(&format!("the {side}-side relay"), relay.pid, want)?;
        }
        Ok(())
    })
    .await;
}
