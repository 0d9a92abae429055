//! Users and groups, read-only rootfs, privileged mode, capabilities, masked paths.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use heteropod_conformance::{host, logs, run, wait, ContainerBuilder, Cri, Ctx};

const LOG_WAIT: Duration = Duration::from_secs(20);
const CAP_CHOWN: u64 = 1 << 0;
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// Runs `b` to completion in a fresh Pod and returns (exit code, stdout, stderr).
async fn run_to_exit(
    ctx: &Ctx,
    pod: heteropod_conformance::PodBuilder,
    b: ContainerBuilder,
) -> Result<(i32, String, String)> {
    let cri = ctx.cri();
    let pod = ctx.run_pod(pod).await?;
    let c = ctx.run_container(&pod, b.clone()).await?;
    let st = wait::exited(&cri, &c).await?;
    let name = b.build().metadata.map(|m| m.name).unwrap_or_default();
    // Exited means the log is complete once containerd has flushed it.
    let lines = logs::wait_for(&pod.log_path(&name), "stdout", "END", LOG_WAIT).await?;
    Ok((
        st.exit_code,
        logs::stream_text(&lines, "stdout"),
        logs::stream_text(&lines, "stderr"),
    ))
}

async fn cap_eff(cri: &mut Cri, id: &str) -> Result<u64> {
    let status = cri.exec_ok(id, &["cat", "/proc/1/status"]).await?;
    host::parse_cap_eff(&status).context("no CapEff in /proc/1/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_user_and_group() {
    run("sec-run-as", async |ctx| {
        let b = ctx
            .container("ids")
            .shell("echo uid=$(id -u) gid=$(id -g); echo END")
            .run_as(1000, Some(1234));
        let (code, out, _) = run_to_exit(ctx, ctx.pod(), b).await?;
        ensure!(code == 0, "exit code {code}");
        ensure!(out.contains("uid=1000 gid=1234\n"), "ids {out:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_username_resolves_from_image() {
    run("sec-run-as-name", async |ctx| {
        let b = ctx
            .container("nobody")
            .shell("echo uid=$(id -u); echo END")
            .run_as_username("nobody");
        let (code, out, _) = run_to_exit(ctx, ctx.pod(), b).await?;
        ensure!(code == 0, "exit code {code}");
        ensure!(out.contains("uid=65534\n"), "ids {out:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supplemental_groups_are_added() {
    run("sec-groups", async |ctx| {
        let b = ctx
            .container("groups")
            .shell("echo groups=$(id -G); echo END")
            .run_as(1000, Some(1000))
            .supplemental_groups(&[2000, 3000]);
        let (code, out, _) = run_to_exit(ctx, ctx.pod(), b).await?;
        ensure!(code == 0, "exit code {code}");
        let line = out
            .lines()
            .find(|l| l.starts_with("groups="))
            .context("no groups line")?;
        let groups: Vec<&str> = line
            .trim_start_matches("groups=")
            .split_whitespace()
            .collect();
        ensure!(
            groups.contains(&"2000") && groups.contains(&"3000"),
            "groups {groups:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_as_the_container_user() {
    run("sec-exec-user", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let c = ctx
            .run_container(
                &pod,
                ctx.container("u")
                    .command(&["sleep", "3600"])
                    .run_as(1000, Some(1000)),
            )
            .await?;
        let uid = cri.exec_ok(&c, &["id", "-u"]).await?;
        ensure!(uid.trim() == "1000", "exec uid {uid:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_rejects_writes() {
    run("sec-ro-rootfs", async |ctx| {
        let b = ctx
            .container("ro")
            .shell("touch /written 2>&1; echo rc=$?; echo END")
            .readonly_rootfs();
        let (_, out, _) = run_to_exit(ctx, ctx.pod(), b).await?;
        ensure!(out.contains("Read-only file system"), "output {out:?}");
        ensure!(
            !out.contains("rc=0"),
            "write to a read-only rootfs succeeded: {out:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_container_has_sys_admin_and_can_mount() {
    run("sec-privileged", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod().privileged()).await?;
        let p = ctx
            .run_container(
                &pod,
                ctx.container("priv")
                    .command(&["sleep", "3600"])
                    .privileged(),
            )
            .await?;
        let plain = ctx
            .run_container(&pod, ctx.container("plain").command(&["sleep", "3600"]))
            .await?;

        ensure!(
            cap_eff(&mut cri, &p).await? & CAP_SYS_ADMIN != 0,
            "privileged lacks CAP_SYS_ADMIN"
        );
        ensure!(
            cap_eff(&mut cri, &plain).await? & CAP_SYS_ADMIN == 0,
            "default has CAP_SYS_ADMIN"
        );
        let mount = ["sh", "-c", "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t"];
        let r = cri.exec_sync(&p, &mount, 30).await?;
        ensure!(r.exit_code == 0, "mount in a privileged container: {r:?}");
        let r = cri.exec_sync(&plain, &mount, 30).await?;
        ensure!(
            r.exit_code != 0,
            "mount succeeded in an unprivileged container"
        );
        // Privileged containers see the host's devices and an unmasked /proc.
        let r = cri
            .exec_sync(
                &p,
                &[
                    "sh",
                    "-c",
                    "[ -c /dev/kmsg ] && [ -w /proc/sys/kernel/shm_rmid_forced ]",
                ],
                30,
            )
            .await?;
        ensure!(
            r.exit_code == 0,
            "privileged container lacks host devices or writable /proc/sys"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_can_be_added_and_dropped() {
    run("sec-caps", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let c = ctx
            .run_container(
                &pod,
                ctx.container("caps")
                    .command(&["sleep", "3600"])
                    .capabilities(&["NET_ADMIN"], &["CHOWN"]),
            )
            .await?;
        let none = ctx
            .run_container(
                &pod,
                ctx.container("nocaps")
                    .command(&["sleep", "3600"])
                    .capabilities(&[], &["ALL"]),
            )
            .await?;
        let eff = cap_eff(&mut cri, &c).await?;
        ensure!(eff & CAP_NET_ADMIN != 0, "NET_ADMIN not added: {eff:#x}");
        ensure!(eff & CAP_CHOWN == 0, "CHOWN not dropped: {eff:#x}");
        let r = cri
            .exec_sync(&c, &["sh", "-c", "touch /tmp/f && chown 1000 /tmp/f"], 30)
            .await?;
        ensure!(r.exit_code != 0, "chown worked without CAP_CHOWN");
        let eff = cap_eff(&mut cri, &none).await?;
        ensure!(eff == 0, "drop ALL left {eff:#x}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_masked_and_readonly_paths() {
    run("sec-masked", async |ctx| {
        let mut cri = ctx.cri();
        let (_pod, c) = ctx.pod_with_sleeper(ctx.pod(), "main").await?;
        let mounts = cri.exec_ok(&c, &["cat", "/proc/mounts"]).await?;
        let mounted_at = |p: &str| {
            mounts
                .lines()
                .find(|l| l.split(' ').nth(1) == Some(p))
                .map(str::to_string)
        };
        // (/proc/kcore is absent on some kernels; keys and timer_list exist everywhere.)
        for masked in ["/proc/keys", "/proc/timer_list", "/sys/firmware"] {
            ensure!(
                mounted_at(masked).is_some(),
                "{masked} not masked: {mounts}"
            );
        }
        let sys = mounted_at("/proc/sys").context("/proc/sys not remounted")?;
        ensure!(
            sys.split(' ')
                .nth(3)
                .is_some_and(|o| o.split(',').any(|f| f == "ro")),
            "/proc/sys: {sys}"
        );
        let keys = cri
            .exec_ok(&c, &["sh", "-c", "cat /proc/keys 2>/dev/null | wc -c"])
            .await?;
        ensure!(keys.trim() == "0", "/proc/keys readable: {keys:?} bytes");
        let r = cri
            .exec_sync(
                &c,
                &["sh", "-c", "echo 1 > /proc/sys/kernel/shm_rmid_forced"],
                30,
            )
            .await?;
        ensure!(
            r.exit_code != 0,
            "/proc/sys is writable in an unprivileged container"
        );
        Ok(())
    })
    .await;
}

/// A `Name:\tvalue` field of /proc/1/status inside the container.
async fn status_field(cri: &mut Cri, id: &str, field: &str) -> Result<String> {
    let status = cri.exec_ok(id, &["cat", "/proc/1/status"]).await?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {field} in /proc/1/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_and_no_new_privs_are_applied() {
    run("sec-seccomp", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let confined = ctx
            .container("confined")
            .command(&["sleep", "3600"])
            .seccomp_runtime_default()
            .no_new_privs();
        let confined = ctx.run_container(&pod, confined).await?;
        let plain = ctx
            .run_container(&pod, ctx.container("plain").command(&["sleep", "3600"]))
            .await?;
        // Seccomp mode 2 is a filter; containerd 1.6 leaves an unset profile unconfined.
        let mode = status_field(&mut cri, &confined, "Seccomp").await?;
        ensure!(mode == "2", "Seccomp with RuntimeDefault: {mode:?}");
        let nnp = status_field(&mut cri, &confined, "NoNewPrivs").await?;
        ensure!(nnp == "1", "NoNewPrivs: {nnp:?}");
        let mode = status_field(&mut cri, &plain, "Seccomp").await?;
        ensure!(mode == "0", "Seccomp without a profile: {mode:?}");
        Ok(())
    })
    .await;
}
