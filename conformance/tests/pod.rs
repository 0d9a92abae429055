//! Pod sandbox lifecycle, hostname, DNS, sysctls, and what a removed Pod leaves behind.

use std::collections::HashMap;

use anyhow::{ensure, Context};
use heteropod_conformance::client::is_not_found;
use heteropod_conformance::cri::{self, PodSandboxState};
use heteropod_conformance::env::expect_spans_error;
use heteropod_conformance::{host, net, run, wait};

fn state_filter(state: PodSandboxState) -> cri::PodSandboxFilter {
    cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue {
            state: state as i32,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_run_status_list_stop_remove() {
    run("pod-lifecycle", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .label("tier", "test")
                    .annotation("heteropod.io/note", "hello"),
            )
            .await?;
        let meta = pod.config.metadata.clone().context("metadata")?;

        let st = cri.pod_status(&pod.id).await?;
        let s = st.status.clone().context("no status")?;
        ensure!(s.id == pod.id, "status id {} != {}", s.id, pod.id);
        ensure!(
            s.state == PodSandboxState::SandboxReady as i32,
            "state {}",
            s.state
        );
        ensure!(s.created_at > 0, "created_at not set");
        ensure!(
            s.metadata.as_ref() == Some(&meta),
            "metadata {:?}",
            s.metadata
        );
        ensure!(
            s.labels.get("tier").map(String::as_str) == Some("test"),
            "labels {:?}",
            s.labels
        );
        ensure!(
            s.annotations.get("heteropod.io/note").map(String::as_str) == Some("hello"),
            "annotations {:?}",
            s.annotations
        );
        let ip = net::pod_ip(&st)?;
        ensure!(
            net::is_allowed_target(ip) && !ip.is_loopback(),
            "Pod IP {ip} not on the Pod bridge"
        );

        let by_id = cri
            .list_pods(Some(cri::PodSandboxFilter {
                id: pod.id.clone(),
                ..Default::default()
            }))
            .await?;
        ensure!(
            by_id.len() == 1 && by_id[0].id == pod.id,
            "list by id: {by_id:?}"
        );
        ensure!(
            by_id[0].state == PodSandboxState::SandboxReady as i32,
            "listed state"
        );
        let ready = cri
            .list_pods(Some(state_filter(PodSandboxState::SandboxReady)))
            .await?;
        ensure!(ready.iter().any(|p| p.id == pod.id), "not listed as ready");
        let mut sel = HashMap::new();
        sel.insert("heteropod.io/test".to_string(), "pod-lifecycle".to_string());
        let labelled = cri.list_pods_labelled(sel).await?;
        ensure!(
            labelled.iter().any(|p| p.id == pod.id),
            "not listed by label"
        );

        cri.stop_pod(&pod.id).await?;
        let s = cri.pod_status(&pod.id).await?.status.context("no status")?;
        ensure!(
            s.state == PodSandboxState::SandboxNotready as i32,
            "state after stop {}",
            s.state
        );
        let not_ready = cri
            .list_pods(Some(state_filter(PodSandboxState::SandboxNotready)))
            .await?;
        ensure!(
            not_ready.iter().any(|p| p.id == pod.id),
            "not listed as not ready"
        );
        let ready = cri
            .list_pods(Some(state_filter(PodSandboxState::SandboxReady)))
            .await?;
        ensure!(
            !ready.iter().any(|p| p.id == pod.id),
            "still listed as ready"
        );
        // Stopping twice is allowed.
        cri.stop_pod(&pod.id).await?;

        cri.remove_pod(&pod.id).await?;
        let err = cri
            .pod_status(&pod.id)
            .await
            .expect_err("status of a removed Pod");
        ensure!(is_not_found(&err), "expected NotFound, got {err:#}");
        let all = cri.list_pods(None).await?;
        ensure!(
            !all.iter().any(|p| p.id == pod.id),
            "removed Pod still listed"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_hostname_is_set() {
    run("pod-hostname", async |ctx| {
        let mut cri = ctx.cri();
        let (_pod, c) = ctx
            .pod_with_sleeper(ctx.pod().hostname("hp-conf-host"), "main")
            .await?;
        let out = cri.exec_ok(&c, &["hostname"]).await?;
        ensure!(out.trim() == "hp-conf-host", "hostname {out:?}");
        let etc = cri.exec_ok(&c, &["cat", "/etc/hostname"]).await?;
        ensure!(etc.trim() == "hp-conf-host", "/etc/hostname {etc:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_dns_config_is_written_to_resolv_conf() {
    run("pod-dns", async |ctx| {
        let mut cri = ctx.cri();
        // The server is only written to resolv.conf; nothing resolves through it.
        let b = ctx.pod().dns(
            &["127.0.0.53"],
            &["hp.example", "svc.hp.example"],
            &["ndots:3"],
        );
        let (_pod, c) = ctx.pod_with_sleeper(b, "main").await?;
        let conf = cri.exec_ok(&c, &["cat", "/etc/resolv.conf"]).await?;
        ensure!(
            conf.contains("nameserver 127.0.0.53"),
            "resolv.conf {conf:?}"
        );
        ensure!(
            conf.contains("search hp.example svc.hp.example"),
            "resolv.conf {conf:?}"
        );
        ensure!(conf.contains("options ndots:3"), "resolv.conf {conf:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_sysctls_are_applied() {
    run("pod-sysctls", async |ctx| {
        let mut cri = ctx.cri();
        let b = ctx
            .pod()
            .sysctl("kernel.shm_rmid_forced", "1")
            .sysctl("net.ipv4.ip_unprivileged_port_start", "222");
        let (_pod, c) = ctx.pod_with_sleeper(b, "main").await?;
        let shm = cri
            .exec_ok(&c, &["cat", "/proc/sys/kernel/shm_rmid_forced"])
            .await?;
        ensure!(shm.trim() == "1", "kernel.shm_rmid_forced = {shm:?}");
        let port = cri
            .exec_ok(
                &c,
                &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
            )
            .await?;
        ensure!(
            port.trim() == "222",
            "ip_unprivileged_port_start = {port:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_stop_stops_its_containers() {
    run("pod-stop-containers", async |ctx| {
        let mut cri = ctx.cri();
        let (pod, c) = ctx.pod_with_sleeper(ctx.pod(), "main").await?;
        cri.stop_pod(&pod.id).await?;
        let st = cri.container_status(&c).await?;
        ensure!(
            st.state == cri::ContainerState::ContainerExited as i32,
            "container state after StopPodSandbox: {}",
            st.state
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_remove_leaves_no_process_mount_or_cgroup_behind() {
    run("pod-remove-clean", async |ctx| {
        let mut cri = ctx.cri();
        let (pod, c) = ctx.pod_with_sleeper(ctx.pod(), "main").await?;
        // What a running Pod holds on the host, so the checks below can fail.
        ensure!(
            !host::shims_of(&pod.id).is_empty(),
            "no shim process for the running Pod"
        );
        ensure!(
            !host::cgroups_named(&c).is_empty(),
            "no cgroup for the running container"
        );
        ensure!(
            !host::mounts_mentioning(&pod.id).is_empty(),
            "no mount for the running Pod"
        );

        cri.stop_pod(&pod.id).await?;
        cri.remove_pod(&pod.id).await?;
        let err = cri
            .container_status(&c)
            .await
            .expect_err("status of a container of a removed Pod");
        ensure!(is_not_found(&err), "expected NotFound, got {err:#}");
        ensure!(
            cri.pod_containers(&pod.id).await?.is_empty(),
            "containers still listed"
        );
        // Removing again is a no-op.
        cri.remove_pod(&pod.id).await?;
        wait::until("shim exit", wait::STATE_TIMEOUT, || async {
            let left = host::processes(|args| args.iter().any(|a| a.contains(pod.id.as_str())));
            Ok(left.is_empty().then_some(()))
        })
        .await?;
        for id in [&pod.id, &c] {
            let mounts = host::mounts_mentioning(id);
            ensure!(mounts.is_empty(), "mounts left for {id}: {mounts:?}");
            let cgroups = host::cgroups_named(id);
            ensure!(cgroups.is_empty(), "cgroups left for {id}: {cgroups:?}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_host_network_shares_host_interfaces() {
    run("pod-host-network", async |ctx| {
        let mut cri = ctx.cri();
        let (_pod, c) = ctx
            .pod_with_sleeper(ctx.pod().host_network(), "main")
            .await?;
        let host_dev = std::fs::read_to_string("/proc/net/dev")?;
        let host_if = host_dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next().map(str::trim))
            .find(|i| *i != "lo")
            .context("no host interface besides lo")?
            .to_string();
        let dev = cri.exec_ok(&c, &["cat", "/proc/net/dev"]).await?;
        ensure!(
            dev.contains(&format!("{host_if}:")),
            "host interface {host_if} not visible: {dev}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_run_with_unknown_handler_fails() {
    run("pod-bad-handler", async |ctx| {
        let mut cri = ctx.cri();
        let config = ctx.pod().build();
        let res = cri.run_pod(&config, "no-such-handler").await;
        if let Ok(id) = &res {
            let _ = cri.stop_pod(id).await;
            let _ = cri.remove_pod(id).await;
        }
        ensure!(
            res.is_err(),
            "RunPodSandbox with an unknown handler succeeded"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_reports_ready_and_image_is_present() {
    run("runtime-status", async |ctx| {
        let mut cri = ctx.cri();
        let v = cri.version().await?;
        ensure!(v.runtime_api_version.starts_with("v1"), "runtime API {v:?}");
        let status = cri
            .runtime
            .status(cri::StatusRequest { verbose: false })
            .await?
            .into_inner()
            .status
            .context("no runtime status")?;
        for cond in ["RuntimeReady", "NetworkReady"] {
            let c = status.conditions.iter().find(|c| c.r#type == cond);
            ensure!(
                c.is_some_and(|c| c.status),
                "{cond} not true: {:?}",
                status.conditions
            );
        }
        let img = cri.image_status(&ctx.env.image).await?;
        ensure!(
            img.is_some(),
            "test image {} not in containerd",
            ctx.env.image
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_shared_pid_namespace_shows_other_containers() {
    run("pod-shared-pid", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod().shared_pid()).await?;
        let a = ctx
            .run_container(
                &pod,
                ctx.container("a").command(&["sleep", "3601"]).shared_pid(),
            )
            .await;
        if expect_spans_error("pod_shared_pid_namespace_shows_other_containers", a)?.is_none() {
            return Ok(());
        }
        let b = ctx
            .run_container(
                &pod,
                ctx.container("b").command(&["sleep", "3602"]).shared_pid(),
            )
            .await?;
        let pid1 = cri.exec_ok(&b, &["cat", "/proc/1/cmdline"]).await?;
        ensure!(
            pid1.starts_with("/pause"),
            "PID 1 of a shared namespace: {pid1:?}"
        );
        let ps = cri
            .exec_ok(&b, &["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"])
            .await?;
        ensure!(
            ps.contains("sleep 3601"),
            "container a not visible from b: {ps:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_host_pid_and_ipc_namespaces_are_the_hosts() {
    run("pod-host-pid-ipc", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod().host_pid_ipc()).await?;
        let b = ctx
            .container("main")
            .command(&["sleep", "3600"])
            .host_pid_ipc();
        let c = ctx.run_container(&pod, b).await;
        let Some(c) = expect_spans_error("pod_host_pid_and_ipc_namespaces_are_the_hosts", c)?
        else {
            return Ok(());
        };
        for ns in ["pid", "ipc"] {
            let host_ns = std::fs::read_link(format!("/proc/self/ns/{ns}"))?;
            let inside = cri
                .exec_ok(&c, &["readlink", &format!("/proc/self/ns/{ns}")])
                .await?;
            let host_ns = host_ns.display().to_string();
            ensure!(
                inside.trim() == host_ns,
                "{ns} namespace {inside:?}, host {host_ns:?}"
            );
        }
        Ok(())
    })
    .await;
}
