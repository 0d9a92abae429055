//! The fast path through CRI: a split Pod that asks for it
//! (`heteropod.io/fastpath: "true"`) gets the hetero-socket library
//! bind-mounted read-only into its CPU containers and preloaded (the init
//! process and execs), a connection from the CPU half to a DPU listener (busybox
//! `nc`) is
//! brokered by the CPU relay (its `fast_connects` counter, read from its
//! counters socket), and a Pod that does not ask is left alone.
//! Like tests/split_pod.rs it needs the heteropod handler and a DPU agent
//! (HETEROPOD_DPU) on this host: the node config hack/dpu.sh writes points
//! `[fastpath] library` at the built library, and the test image holds what
//! the library needs (glibc, libgcc_s; hack/images.sh), without which the
//! shim leaves a container alone (shim/src/fastpath.rs unit tests).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use heteropod_conformance::dpu::{self, PLACEMENT_PREFIX};
use heteropod_conformance::{run, wait, Cri};
use tokio::io::AsyncReadExt;

const FASTPATH: &str = "heteropod.io/fastpath";
/// Where the shim mounts the library (shim/src/fastpath.rs).
const MOUNT_POINT: &str = "/.heteropod/libheterosocket.so";
const NET_WAIT: Duration = Duration::from_secs(30);

/// The environment of container `id`'s init process (pid 1 of its PID namespace).
async fn init_env(cri: &mut Cri, id: &str) -> Result<Vec<String>> {
    let out = cri
        .exec_ok(id, &["sh", "-c", "tr '\\0' '\\n' < /proc/1/environ"])
        .await?;
    Ok(out.lines().map(str::to_string).collect())
}

/// `LD_PRELOAD` of container `id`'s init process, if set.
async fn init_preload(cri: &mut Cri, id: &str) -> Result<Option<String>> {
    Ok(init_env(cri, id)
        .await?
        .into_iter()
        .find_map(|e| e.strip_prefix("LD_PRELOAD=").map(str::to_string)))
}

/// Checks that container `id` has the library preloaded and mounted read-only.
async fn assert_injected(cri: &mut Cri, id: &str) -> Result<()> {
    let preload = init_preload(cri, id).await?;
    ensure!(
        preload.as_deref() == Some(MOUNT_POINT),
        "{id}: init's LD_PRELOAD is {preload:?}"
    );
    let exec = cri
        .exec_ok(id, &["sh", "-c", "echo \"$LD_PRELOAD\""])
        .await?;
    ensure!(
        exec.trim() == MOUNT_POINT,
        "{id}: an exec's LD_PRELOAD is {exec:?}"
    );
    // Readable, a shared object (ELF magic), mounted read-only.
    let magic = cri
        .exec_ok(
            id,
            &[
                "sh",
                "-c",
                &format!("test -r {MOUNT_POINT} && head -c 4 {MOUNT_POINT} | tail -c 3"),
            ],
        )
        .await?;
    ensure!(magic == "ELF", "{id}: {MOUNT_POINT} starts with {magic:?}");
    let mounts = cri.exec_ok(id, &["cat", "/proc/self/mounts"]).await?;
    let line = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(MOUNT_POINT))
        .with_context(|| format!("{id}: no mount at {MOUNT_POINT} in {mounts}"))?;
    let options = line.split_whitespace().nth(3).unwrap_or_default();
    ensure!(
        options.split(',').any(|o| o == "ro"),
        "{id}: {MOUNT_POINT} is not read-only: {line}"
    );
    Ok(())
}

/// The CPU relay's `fast_connects` for Pod `pod_id`, once it reports: read
/// from its counters socket, which the shim names after the sandbox id (the
/// socket `heteropod status` reads).
async fn fast_connects(pod_id: &str) -> Result<u64> {
    let short: String = pod_id.chars().take(16).collect();
    let path = format!("/dev/shm/heteropod-{short}.stats.sock");
    wait::until("the CPU relay's counters", NET_WAIT, || {
        let path = path.clone();
        async move {
            let mut conn = tokio::net::UnixStream::connect(&path)
                .await
                .with_context(|| format!("connect {path}"))?;
            let mut doc = Vec::new();
            conn.read_to_end(&mut doc).await?;
            let doc: serde_json::Value =
                serde_json::from_slice(&doc).with_context(|| format!("counters from {path}"))?;
            Ok(doc["relay"]["fast_connects"].as_u64())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_pod_that_asks_for_the_fast_path_gets_it_in_its_cpu_containers() {
    let test = "a_split_pod_that_asks_for_the_fast_path_gets_it_in_its_cpu_containers";
    if !dpu::enabled(test) {
        return;
    }
    if dpu::remote() {
        eprintln!("{test}: skipped: the fast path is configured for the emulated DPU only");
        return;
    }
    run("split-fastpath", async |ctx| {
        const PORT: u16 = 18231;
        let mut cri = ctx.cri();
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .annotation(FASTPATH, "true")
                    .annotation(&format!("{PLACEMENT_PREFIX}side"), "dpu")
                    .annotation(&format!("{PLACEMENT_PREFIX}app"), "cpu")
                    .annotation(&format!("{PLACEMENT_PREFIX}ro"), "cpu"),
            )
            .await?;
        let side = ctx
            .run_container(
                &pod,
                ctx.container("side")
                    .shell(&dpu::httpd("fast-from-side", &PORT.to_string())),
            )
            .await?;
        let app = ctx
            .run_container(&pod, ctx.container("app").shell("exec sleep 1000"))
            .await?;
        let ro = ctx
            .run_container(
                &pod,
                ctx.container("ro")
                    .readonly_rootfs()
                    .shell("exec sleep 1000"),
            )
            .await?;
        ensure!(
            dpu::runs_on_dpu(&side).await? && !dpu::runs_on_dpu(&app).await?,
            "placement not split"
        );
        assert_injected(&mut cri, &app).await?;
        assert_injected(&mut cri, &ro).await?;
        let side_preload = init_preload(&mut cri, &side).await?;
        ensure!(
            side_preload.is_none(),
            "the DPU container got LD_PRELOAD {side_preload:?}"
        );

        // A connection from the CPU half to the DPU listener takes the ring.
        let before = fast_connects(&pod.id).await?;
        // busybox nc (dynamically linked, so it loads the library); busybox
        // wget is not used: it hangs on a fast connection (left to the library).
        let request = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 {PORT}");
        let body = wait::until("the DPU listener from the CPU half", NET_WAIT, || {
            let (mut cri, app, request) = (cri.clone(), app.clone(), request.clone());
            async move {
                let r = cri.exec_sync(&app, &["sh", "-c", &request], 10).await?;
                let out = String::from_utf8_lossy(&r.stdout).into_owned();
                Ok((r.exit_code == 0 && out.contains("fast-from-side")).then_some(out))
            }
        })
        .await?;
        ensure!(body.ends_with("fast-from-side\n"), "reply {body:?}");
        let after = fast_connects(&pod.id).await?;
        ensure!(
            after > before,
            "the CPU relay brokered no fast connection (fast_connects {before} -> {after})"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_pod_that_does_not_ask_has_no_preload() {
    if !dpu::enabled("a_split_pod_that_does_not_ask_has_no_preload") {
        return;
    }
    run("split-no-fastpath", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .annotation(&format!("{PLACEMENT_PREFIX}side"), "dpu")
                    .annotation(&format!("{PLACEMENT_PREFIX}app"), "cpu"),
            )
            .await?;
        ctx.run_container(&pod, ctx.container("side").shell("exec sleep 1000"))
            .await?;
        let app = ctx
            .run_container(&pod, ctx.container("app").shell("exec sleep 1000"))
            .await?;
        let preload = init_preload(&mut cri, &app).await?;
        ensure!(
            preload.is_none(),
            "LD_PRELOAD {preload:?} without the annotation"
        );
        let exec = cri
            .exec_ok(&app, &["sh", "-c", "echo \"$LD_PRELOAD\""])
            .await?;
        ensure!(exec.trim().is_empty(), "an exec's LD_PRELOAD is {exec:?}");
        let mounted = cri
            .exec_sync(&app, &["test", "-e", MOUNT_POINT], 30)
            .await?
            .exit_code
            == 0;
        ensure!(!mounted, "{MOUNT_POINT} exists without the annotation");
        Ok(())
    })
    .await;
}
