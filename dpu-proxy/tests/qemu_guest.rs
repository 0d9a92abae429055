//! The agent in a QEMU guest with its own Debian kernel: built and booted by
//! `hack/qemu/guest.sh`, reached over TCP through QEMU's host forward, running
//! containers with runc on the guest's kernel.
mod qemu;

use std::{path::Path, time::Duration, time::Instant};

use heteropod_dpu_proxy::{
    client::{copy_output, Stream},
    AgentClient, DpuAgent, Error, API_VERSION,
};
use qemu::{bundle, busybox_rootfs, skip_reason, Guest};

/// Generous: under TCG everything in the guest is several times slower.
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);

fn progress(t0: Instant, what: &str) {
    eprintln!("[qemu_guest {:>6.1}s] {what}", t0.elapsed().as_secs_f64());
}

async fn stdout_of(agent: &AgentClient, id: &str) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(
        GUEST_TIMEOUT,
        copy_output(agent, id, "", Stream::STDOUT, &mut buf),
    )
    .await
    .expect("output did not end")
    .unwrap();
    String::from_utf8(buf).unwrap()
}

/// Creates, starts and waits for a container; returns (stdout, exit status).
async fn run(
    agent: &AgentClient,
    guest: &Guest,
    rootfs: &Path,
    id: &str,
    args: &[&str],
) -> (String, u32) {
    let dir = guest.share().join("bundles").join(id);
    bundle(&dir, rootfs, args);
    let req = heteropod_dpu_proxy::client::CreateContainerRequest {
        id: id.into(),
        bundle: dir.display().to_string(),
        ..Default::default()
    };
    let pid = agent.create_container(req).await.unwrap_or_else(|e| {
        panic!(
            "create {id} in the guest: {e}\nconsole:\n{}",
            guest.console()
        )
    });
    assert!(pid > 0);
    agent.start(id, "").await.unwrap();
    let out = stdout_of(agent, id).await;
    let status = tokio::time::timeout(GUEST_TIMEOUT, agent.wait(id, ""))
        .await
        .expect("container did not exit")
        .unwrap()
        .exit_status;
    agent.delete(id, "").await.unwrap();
    match agent.state(id, "").await {
        Err(Error::NotFound(_)) => {}
        other => panic!("{id} still known after delete: {other:?}"),
    }
    (out, status)
}

/// Lazily unmounts a test mount, even on failure (before the guest stops).
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_run_on_the_guest_kernel_over_tcp() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    let t0 = Instant::now();
    let guest = Guest::new("run");
    progress(t0, "building the guest (cached after the first run)");
    guest.must("build");
    let settings = guest.settings();
    let rootfs = guest.share().join("rootfs");
    busybox_rootfs(&rootfs, Path::new(&settings["QEMU_BUSYBOX"]));
    progress(t0, "booting the guest and waiting for the agent");
    guest.must("start");
    let kernel = guest.settings()["QEMU_KERNEL_RELEASE"].clone();
    progress(
        t0,
        &format!("agent up on {} (guest kernel {kernel})", guest.endpoint()),
    );

    let agent = AgentClient::connect(&guest.endpoint()).await.unwrap();
    assert_eq!(agent.version().await.unwrap().api_version, API_VERSION);
    let cap = agent.capacity().await.unwrap();
    assert_eq!(cap.cpus, "0", "the guest's one core");
    assert_eq!(cap.total_cores, 1);
    assert_eq!(
        cap.total_memory_bytes,
        512 << 20,
        "QEMU_DPU_MEMORY reached the agent"
    );
    assert_eq!(cap.running_containers, 0);

    progress(t0, "running `uname -r` in a container in the guest");
    let script = "uname -r; cat /proc/sys/kernel/random/boot_id";
    let (out, status) = run(&agent, &guest, &rootfs, "uname", &["sh", "-c", script]).await;
    assert_eq!(status, 0, "output: {out:?}");
    let mut lines = out.lines();
    let (release, boot_id) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .to_string();
    eprintln!("host kernel {host_release}, container kernel {release}");
    assert_eq!(release, kernel, "the container runs on the guest's kernel");
    // Were the releases equal (a host booted from the same Debian kernel), the
    // boot id still tells the two kernels apart.
    if host_release != kernel {
        assert_ne!(release, host_release);
    }
    assert_ne!(boot_id, host_boot_id(), "a different kernel instance");

    // As containerd does for the shim: the rootfs is a mount made in the
    // bundle after the guest booted, named relative to the bundle.
    progress(t0, "a rootfs mounted into the share after boot; exit codes");
    let mnt = guest.share().join("bundles/exit7/rootfs");
    std::fs::create_dir_all(&mnt).unwrap();
    nix::mount::mount(
        Some(&rootfs),
        &mnt,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let _unmount = Unmount(mnt);
    let relative = Path::new("rootfs");
    let (_, status) = run(&agent, &guest, relative, "exit7", &["sh", "-c", "exit 7"]).await;
    assert_eq!(status, 7);
    assert_eq!(agent.capacity().await.unwrap().running_containers, 0);

    progress(t0, "stopping the guest");
    drop(agent);
    drop(_unmount);
    guest.must("stop");
    assert!(
        guest.qemu_pids().is_empty(),
        "QEMU still runs: {:?}",
        guest.qemu_pids()
    );
    assert!(
        !guest.state.exists(),
        "{} left behind",
        guest.state.display()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", guest.port)).is_err(),
        "the host forward is still open"
    );
    progress(t0, "done");
}
