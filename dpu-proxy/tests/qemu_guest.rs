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

/// What user `nobody` gets back for a raw ttrpc Version request to `port`
/// (the 9th byte of a reply is 2 when the agent answers).
fn raw_version_as_nobody(port: u16) -> Vec<u8> {
    let req =
        r"\x00\x00\x00\x23\x00\x00\x00\x01\x01\x00\x0a\x18heteropod.agent.v1.Agent\x12\x07Version";
    let script = r#"exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; printf "$2" >&3; timeout 8 cat <&3"#;
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["bash", "-c", script, "_", &port.to_string(), req])
        .output()
        .expect("run setpriv bash")
        .stdout
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

    let agent = AgentClient::connect_with_key(&guest.endpoint(), Some(&guest.key()))
        .await
        .unwrap();
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

    // The issue's reproduction: any local user reaches the forwarded port,
    // but an unauthenticated request is not answered.
    progress(t0, "user nobody's raw ttrpc request to the forwarded port");
    let reply = raw_version_as_nobody(guest.port);
    assert!(
        reply.starts_with(b"HPAUTH1\n") && reply.len() == 8 + 32,
        "nobody got more than the challenge: {reply:02x?}"
    );
    let e = AgentClient::connect(&guest.endpoint()).await.err().unwrap();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");

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

    progress(t0, "the guest's agent checks requests against its policy");
    let dir = guest.share().join("bundles/hook");
    bundle(&dir, &rootfs, &["true"]);
    let path = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/sh"}]});
    std::fs::write(&path, spec.to_string()).unwrap();
    let req = heteropod_dpu_proxy::client::CreateContainerRequest {
        id: "hook".into(),
        bundle: dir.display().to_string(),
        ..Default::default()
    };
    let e = agent.create_container(req).await.unwrap_err();
    assert!(
        matches!(&e, Error::PermissionDenied(m) if m.contains("hooks")),
        "{e}"
    );

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

/// A stand-in for the DPU relay, run by the agent in the guest: records its
/// arguments and what its `--irq-fds` descriptors are, then reports each
/// interrupt it reads from them into the (writable) share. Its first run
/// exits after both interrupts, so the agent has to restart it.
fn fake_relay(share: &Path) -> String {
    format!(
        r#"#!/bin/sh
netns=""; fds=""
while [ $# -gt 0 ]; do
    case $1 in
    --netns) netns=$2; shift ;;
    --irq-fds) fds=$2; shift ;;
    esac
    shift
done
out={share}/relay-${{netns##*/}}
run=$(( $(cat "$out.runs" 2>/dev/null || echo 0) + 1 ))
echo "$run" >"$out.runs"
data=${{fds%,*}}; space=${{fds#*,}}
echo "$(readlink /proc/$$/fd/$data) $(readlink /proc/$$/fd/$space) $fds" >"$out.fds.$run"
# The eventfds are non-blocking: poll them.
until head -c 8 <&$data >/dev/null 2>&1; do sleep 0.05; done
echo "run $run data" >>"$out.irq"
until head -c 8 <&$space >/dev/null 2>&1; do sleep 0.05; done
echo "run $run space" >>"$out.irq"
[ "$run" = 1 ] && exit 0
exec sleep 100000
"#,
        share = share.display()
    )
}

async fn wait_for_file(path: &Path, needle: &str, guest: &Guest) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            t0.elapsed() < GUEST_TIMEOUT,
            "{} never said {needle:?} (has {text:?})\nconsole:\n{}",
            path.display(),
            guest.console()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod_network(pod: &str, region: &str) -> heteropod_dpu_proxy::client::CreatePodNetworkRequest {
    heteropod_dpu_proxy::client::CreatePodNetworkRequest {
        pod_id: pod.into(),
        pod_ip: "10.88.0.5/24".into(),
        region: region.into(),
        rendezvous: String::new(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pci_pod_networks_get_their_slots_msix_eventfds_from_the_agent() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    if !qemu::IVSHMEM_SERVER.exists() {
        eprintln!(
            "SKIP: {} not built (cargo build --release -p heteropod-ivshmem)",
            qemu::IVSHMEM_SERVER.display()
        );
        return;
    }
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let relay = dir.path().join("fake-relay");
    let probe = Guest::new("pci-probe");
    std::fs::write(&relay, fake_relay(&probe.share())).unwrap();
    std::fs::set_permissions(&relay, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let relay = relay.display().to_string();
    // Same state dir as `probe` (the script names its share), our relay.
    drop(probe);
    let guest = Guest::with_env(
        "pci-probe",
        &[("QEMU_RELAY_BIN", &relay), ("QEMU_SHARE_RW", "1")],
    );
    progress(t0, "building and booting the guest with its ivshmem device");
    guest.must("build");
    guest.must("start");
    let settings = guest.settings();
    assert_eq!(settings["QEMU_IVSHMEM"], "1");
    assert!(
        guest.console().contains("bound to vfio-pci"),
        "console:\n{}",
        guest.console()
    );
    let socket = std::path::PathBuf::from(&settings["QEMU_IVSHMEM_SOCKET"]);
    let slots: u16 = settings["QEMU_IVSHMEM_SLOTS"].parse().unwrap();
    let host = heteropod_ivshmem::Client::connect(&socket, 2 * slots)
        .await
        .unwrap();
    let peers = host.peers();
    let qemu = peers
        .iter()
        .find(|p| p.vectors == usize::from(2 * slots))
        .unwrap_or_else(|| panic!("QEMU is not a peer: {peers:?}"))
        .id;

    let agent = AgentClient::connect_with_key(&guest.endpoint(), Some(&guest.key()))
        .await
        .unwrap();
    let bar = &settings["QEMU_GUEST_BAR"];
    let region = format!("{bar}@3/{slots}");
    progress(t0, &format!("CreatePodNetwork on {region}"));
    let r = agent
        .create_pod_network(pod_network("pod-a", &region))
        .await
        .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", guest.console()));
    assert!(r.relay_pid > 0);
    let out = guest.share().join("relay-pod-a");
    let fds = wait_for_file(&out.with_extension("fds.1"), "eventfd", &guest).await;
    let kinds: Vec<&str> = fds.split_whitespace().take(2).collect();
    assert_eq!(kinds, ["anon_inode:[eventfd]"; 2], "{fds}");

    // Another Pod cannot have the same slot; a free one it can.
    match agent
        .create_pod_network(pod_network("pod-b", &region))
        .await
    {
        Err(Error::AlreadyExists(m)) => assert!(m.contains("pod-a"), "{m}"),
        other => panic!("slot 3 given twice: {other:?}"),
    }
    match agent
        .create_pod_network(pod_network("pod-c", &format!("{bar}@4/{}", slots + 1)))
        .await
    {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("slots"), "{m}"),
        other => panic!("a different slot count accepted: {other:?}"),
    }

    progress(t0, "host rings the guest's vectors 6 and 7 (slot 3)");
    host.ring(qemu, 6).unwrap();
    wait_for_file(&out.with_extension("irq"), "run 1 data", &guest).await;
    host.ring(qemu, 7).unwrap();
    wait_for_file(&out.with_extension("irq"), "run 1 space", &guest).await;
    progress(
        t0,
        "the relay exited: the agent restarts it with the slot's eventfds",
    );
    wait_for_file(&out.with_extension("fds.2"), "eventfd", &guest).await;
    host.ring(qemu, 6).unwrap();
    wait_for_file(&out.with_extension("irq"), "run 2 data", &guest).await;
    let nets = agent.list_pod_networks().await.unwrap();
    assert_eq!(nets.len(), 1, "{nets:?}");
    assert_eq!(nets[0].region, region);
    assert_eq!(nets[0].relay_restarts, 1);

    progress(t0, "DestroyPodNetwork frees the slot");
    agent.destroy_pod_network("pod-a").await.unwrap();
    agent
        .create_pod_network(pod_network("pod-b", &region))
        .await
        .unwrap();
    agent.destroy_pod_network("pod-b").await.unwrap();
    assert!(agent.list_pod_networks().await.unwrap().is_empty());

    progress(t0, "stopping the guest and its ivshmem server");
    drop(agent);
    drop(host);
    guest.must("stop");
    assert!(guest.qemu_pids().is_empty(), "QEMU still runs");
    assert!(!socket.exists(), "{} left", socket.display());
    assert!(
        !Path::new(&settings["QEMU_IVSHMEM_SHM"]).exists(),
        "shared memory file left"
    );
    let needle = socket.display().to_string();
    let servers = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .count();
    assert_eq!(servers, 0, "the ivshmem server still runs");
    progress(t0, "done");
}
