//! What a container is configured with: env, args, working dir, mounts, terminal.

use anyhow::{ensure, Context};
use heteropod_conformance::{logs, run, wait};

use crate::LOG_WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_gets_env_args_and_working_dir() {
    run("ctr-env-args", async |ctx| {
        let cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let b = ctx
            .container("envargs")
            .command(&["sh", "-c"])
            .args(&["echo \"$GREETING|$0|$1|$(pwd)\"", "alpha", "beta gamma"])
            .env("GREETING", "hello world")
            .working_dir("/tmp/hp-workdir");
        let id = ctx.run_container(&pod, b).await?;
        let st = wait::exited(&cri, &id).await?;
        ensure!(st.exit_code == 0, "exit code {}", st.exit_code);
        let lines = logs::wait_for(&pod.log_path("envargs"), "stdout", "hello", LOG_WAIT).await?;
        let out = logs::stream_text(&lines, "stdout");
        ensure!(
            out == "hello world|alpha|beta gamma|/tmp/hp-workdir\n",
            "output {out:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_image_env_is_kept() {
    run("ctr-image-env", async |ctx| {
        let mut cri = ctx.cri();
        let (_pod, c) = ctx.pod_with_sleeper(ctx.pod(), "main").await?;
        let env = cri.exec_ok(&c, &["env"]).await?;
        ensure!(
            env.lines()
                .any(|l| l.starts_with("PATH=") && l.contains("/bin")),
            "env {env:?}"
        );
        ensure!(
            env.lines().any(|l| l.starts_with("HOSTNAME=")),
            "HOSTNAME missing: {env:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_bind_mount_is_read_write() {
    run("ctr-bind-rw", async |ctx| {
        let cri = ctx.cri();
        let dir = ctx.tempdir("bind-rw")?;
        std::fs::write(dir.join("from-host"), "host-data\n")?;
        let pod = ctx.run_pod(ctx.pod()).await?;
        let b = ctx
            .container("rw")
            .shell("cat /mnt/data/from-host && echo container-data > /mnt/data/from-container")
            .mount(&dir.display().to_string(), "/mnt/data", false);
        let id = ctx.run_container(&pod, b).await?;
        let st = wait::exited(&cri, &id).await?;
        ensure!(st.exit_code == 0, "exit code {}", st.exit_code);
        logs::wait_for(&pod.log_path("rw"), "stdout", "host-data", LOG_WAIT).await?;
        let written = std::fs::read_to_string(dir.join("from-container"))
            .context("file written in the container")?;
        ensure!(written == "container-data\n", "host sees {written:?}");
        ensure!(
            st.mounts
                .iter()
                .any(|m| m.container_path == "/mnt/data" && !m.readonly),
            "status mounts {:?}",
            st.mounts
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_readonly_bind_mount_rejects_writes() {
    run("ctr-bind-ro", async |ctx| {
        let cri = ctx.cri();
        let dir = ctx.tempdir("bind-ro")?;
        std::fs::write(dir.join("from-host"), "host-data\n")?;
        let pod = ctx.run_pod(ctx.pod()).await?;
        let b = ctx
            .container("ro")
            .shell("cat /mnt/ro/from-host; touch /mnt/ro/new")
            .mount(&dir.display().to_string(), "/mnt/ro", true);
        let id = ctx.run_container(&pod, b).await?;
        let st = wait::exited(&cri, &id).await?;
        ensure!(st.exit_code != 0, "write to a read-only mount succeeded");
        // stdout and stderr reach the log through separate copies: wait for each.
        logs::wait_for(
            &pod.log_path("ro"),
            "stderr",
            "Read-only file system",
            LOG_WAIT,
        )
        .await?;
        logs::wait_for(&pod.log_path("ro"), "stdout", "host-data", LOG_WAIT)
            .await
            .context("the read-only mount could not be read")?;
        ensure!(!dir.join("new").exists(), "file appeared on the host");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_with_tty_sees_a_terminal() {
    run("ctr-tty", async |ctx| {
        let cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let id = ctx
            .run_container(
                &pod,
                ctx.container("tty")
                    .shell("tty; [ -t 1 ] && echo is-a-tty")
                    .tty(),
            )
            .await?;
        let st = wait::exited(&cri, &id).await?;
        ensure!(st.exit_code == 0, "exit code {}", st.exit_code);
        let lines = logs::wait_for(&pod.log_path("tty"), "stdout", "is-a-tty", LOG_WAIT).await?;
        ensure!(
            logs::stream_text(&lines, "stdout").contains("/dev/pts/"),
            "tty output {lines:?}"
        );
        Ok(())
    })
    .await;
}
