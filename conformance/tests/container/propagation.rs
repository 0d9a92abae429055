//! Mount propagation of bind mounts: private, host-to-container, bidirectional.

use anyhow::ensure;
use heteropod_conformance::cri::MountPropagation;
use heteropod_conformance::{run, wait, Ctx, Pod};

/// Starts a sleeper with the shared host dir at /mnt/prop using `propagation`.
async fn sleeper_with(
    ctx: &Ctx,
    pod: &Pod,
    name: &str,
    dir: &str,
    propagation: MountPropagation,
    privileged: bool,
) -> anyhow::Result<String> {
    let mut b = ctx
        .container(name)
        .command(&["sleep", "3600"])
        .mount_propagation(dir, "/mnt/prop", propagation);
    if privileged {
        b = b.privileged();
    }
    ctx.run_container(pod, b).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mounts_propagate_only_to_non_private_mounts() {
    run("ctr-propagation-in", async |ctx| {
        let mut cri = ctx.cri();
        let dir = ctx.shared_mount_dir("prop-in")?;
        let d = dir.display().to_string();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let private = sleeper_with(
            ctx,
            &pod,
            "private",
            &d,
            MountPropagation::PropagationPrivate,
            false,
        )
        .await?;
        let slave = sleeper_with(
            ctx,
            &pod,
            "slave",
            &d,
            MountPropagation::PropagationHostToContainer,
            false,
        )
        .await?;
        // Mounted on the host after both containers started.
        ctx.host_tmpfs(&dir.join("late"))?;
        std::fs::write(dir.join("late").join("file"), "from-host\n")?;
        let got = cri.exec_ok(&slave, &["cat", "/mnt/prop/late/file"]).await?;
        ensure!(got == "from-host\n", "HostToContainer mount sees {got:?}");
        let r = cri
            .exec_sync(&private, &["cat", "/mnt/prop/late/file"], 30)
            .await?;
        ensure!(r.exit_code != 0, "a private mount saw a later host mount");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_mounts_propagate_to_the_host() {
    run("ctr-propagation-out", async |ctx| {
        let mut cri = ctx.cri();
        let dir = ctx.shared_mount_dir("prop-out")?;
        let d = dir.display().to_string();
        let pod = ctx.run_pod(ctx.pod().privileged()).await?;
        let c = sleeper_with(ctx, &pod, "bidi", &d, MountPropagation::PropagationBidirectional, true).await?;
        let script = "mkdir -p /mnt/prop/fromc && mount -t tmpfs none /mnt/prop/fromc && echo from-container > /mnt/prop/fromc/file";
        cri.exec_ok(&c, &["sh", "-c", script]).await?;
        let file = dir.join("fromc").join("file");
        let got = wait::until("container mount on the host", wait::STATE_TIMEOUT, || async {
            Ok(std::fs::read_to_string(&file).ok())
        })
        .await?;
        ensure!(got == "from-container\n", "host sees {got:?}");
        Ok(())
    })
    .await;
}
