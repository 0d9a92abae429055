//! The split Pod network: the CPU half is the sandbox netns CNI made, the DPU
//! half a netns the agent makes with the same Pod IP. One `heteronet` relay
//! per half joins them through a shared region. Set up when the Pod's first
//! container lands on the DPU (Pods without one pay nothing), torn down with
//! the sandbox. With a DPU in a QEMU guest (`[dpu] link = "ivshmem"`) the
//! region is a slot of the guest's ivshmem BAR, leased per Pod.

mod ivshmem_slots;

use std::{
    path::{Path, PathBuf},
    process::Stdio as ProcStdio,
    sync::{Arc, Mutex},
};

use heteropod_dpu_proxy::{client::CreatePodNetworkRequest, AgentClient, DpuAgent};
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use self::ivshmem_slots::SlotLease;
use crate::{
    backend::orphans::{self, Orphan},
    bundle::BundleSpec,
    config::{Config, DpuConfig, LinkKind},
    error::{Error, Result},
    io::remove_quietly,
    placement,
    relay::{RelayCommand, RelaySupervisor},
};

/// Written in the sandbox bundle while the halves exist, so `shim delete`
/// can remove them after the shim died.
const MARKER_FILE: &str = "dpu-pod-network.json";

/// Where the two relays of each Pod meet (the rendezvous socket, and the fast
/// path's sockets beside it): one directory per Pod network with a random
/// name, all in a directory only root may enter. Not `/dev/shm`: there any
/// local user could take a predictable name first, or bind the socket while a
/// relay restarts.
pub const MEET_DIR: &str = "/run/heteropod/pods";
/// The rendezvous socket's name in a Pod's meeting directory.
const RENDEZVOUS_NAME: &str = "link.sock";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Marker {
    endpoint: String,
    /// The node key a network agent wants (empty: none).
    #[serde(default)]
    key_file: String,
    pod_id: String,
    relay_pid: u32,
    region: String,
    /// The rendezvous socket, whose directory goes with the Pod (empty in
    /// markers written before it moved out of /dev/shm, and for ivshmem links).
    #[serde(default)]
    rendezvous: String,
}

/// What the DPU half of one Pod network needs.
#[derive(Debug, Clone, PartialEq)]
pub struct PodNetworkSpec {
    pub pod_id: String,
    /// The sandbox netns (CPU half).
    pub cpu_netns: String,
    /// CIDR form, e.g. `10.77.0.5/16`.
    pub pod_ip: String,
    /// The CPU relay's region.
    pub region: String,
    /// The DPU relay's region: the same for `shm:`, the guest's view of
    /// the BAR slot (`pci:...@k/n`) for an ivshmem link.
    pub agent_region: String,
    /// Empty for an ivshmem link (no Unix socket reaches the guest).
    pub rendezvous: String,
    /// Where the CPU relay serves its counters (JSON).
    pub stats_socket: String,
    /// The Pod's DNS servers (`ip:53`): their UDP is relayed from the DPU half.
    pub udp_forward: Vec<String>,
    /// The host's cores the CPU relay runs on (`[host] cpus`), if the node sets them.
    pub relay_cpus: Option<String>,
}

/// Where the CPU relay of Pod `pod_id` serves its counters (`heteropod status`
/// finds it by the same name).
fn stats_socket_of(pod_id: &str) -> String {
    let short: String = pod_id.chars().take(16).collect();
    format!("/dev/shm/heteropod-{short}.stats.sock")
}

/// 128 bits from the kernel's random source, as hex: a name no one can guess.
fn unpredictable_name() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Makes `dir` (a Pod's meeting directory) and its parent, both 0700 and this
/// process's (root's). An existing parent is taken only if it is ours and
/// nobody else may enter it; the Pod's own directory must not exist yet.
fn make_meet_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let parent = dir
        .parent()
        .ok_or_else(|| std::io::Error::other("meeting directory has no parent"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)?;
    let meta = std::fs::symlink_metadata(parent)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory of this user",
            parent.display()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
    }
    // Not recursive: a directory already there is an error, not a meeting place.
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    // Whatever the umask: only root.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// A Pod's meeting directory: removed (with the sockets in it) when dropped,
/// i.e. once the network is destroyed or its creation failed.
struct MeetDir(PathBuf);

impl Drop for MeetDir {
    fn drop(&mut self) {
        remove_meet_dir(&self.0);
    }
}

/// Removes a meeting directory, only if it is one (inside [`MEET_DIR`]).
fn remove_meet_dir(dir: &Path) {
    if dir.parent() != Some(Path::new(MEET_DIR)) {
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("remove {}: {e}", dir.display());
        }
    }
}

impl PodNetworkSpec {
    pub fn new(pod_id: &str, cpu_netns: &str, pod_ip: &str) -> Result<PodNetworkSpec> {
        // Short and unique enough per node; shm names are plain file names.
        let short: String = pod_id.chars().take(16).collect();
        let region = format!("shm:/heteropod-{short}");
        let meet = Path::new(MEET_DIR).join(
            unpredictable_name().map_err(Error::io("read /dev/urandom for a meeting directory"))?,
        );
        Ok(PodNetworkSpec {
            pod_id: pod_id.to_string(),
            cpu_netns: cpu_netns.to_string(),
            pod_ip: pod_ip.to_string(),
            agent_region: region.clone(),
            region,
            rendezvous: meet.join(RENDEZVOUS_NAME).to_string_lossy().into_owned(),
            stats_socket: stats_socket_of(pod_id),
            udp_forward: Vec::new(),
            relay_cpus: None,
        })
    }

    /// The directory the rendezvous socket is in (`None` for an ivshmem link).
    fn meet_dir(&self) -> Option<&Path> {
        Some(Path::new(&self.rendezvous))
            .filter(|p| !p.as_os_str().is_empty())
            .and_then(Path::parent)
    }

    /// The link through BAR slot `lease` of the guest's ivshmem device: the
    /// CPU relay joins the server as a peer, the DPU relay maps the BAR.
    pub fn use_ivshmem(&mut self, dpu: &DpuConfig, lease: &SlotLease) {
        self.region = lease.window(&format!("ivshmem:{}", dpu.ivshmem_socket));
        self.agent_region = lease.window(&dpu.guest_bar);
        self.rendezvous = String::new();
    }
}

/// One Pod's network halves while the sandbox lives.
pub struct PodNetwork {
    pub pod_id: String,
    /// The DPU half's netns; DPU containers join it.
    pub dpu_netns: String,
    relay: Option<RelaySupervisor>,
    agent: AgentClient,
    /// The marker and where it is (the sandbox bundle), once written; kept
    /// up to date with the relay's pid.
    marker: Arc<Mutex<Option<(PathBuf, Marker)>>>,
    orphans_dir: PathBuf,
    /// The BAR slot of an ivshmem link, freed with the network.
    slot: Option<SlotLease>,
    /// Where the relays meet (shm links); last, so it goes after the relays.
    _meet: Option<MeetDir>,
}

fn write_marker(path: &Path, marker: &Marker) {
    let written = serde_json::to_vec(marker)
        .map_err(std::io::Error::other)
        .and_then(|data| std::fs::write(path, data));
    if let Err(e) = written {
        tracing::warn!("write {}: {e}", path.display());
    }
}

/// The DPU half's netns for a container placed on the DPU, creating both
/// halves with the Pod's first such container. `None` when the container
/// joins no Pod netns (host network) or is not a CRI container.
pub async fn dpu_half(
    slot: &tokio::sync::Mutex<Option<PodNetwork>>,
    spec: &BundleSpec,
    config: &Config,
    sandbox_bundle: Option<PathBuf>,
) -> Result<Option<String>> {
    let (Some(cpu_netns), Some(pod_id)) = (
        spec.netns_path.as_deref(),
        spec.annotations.get(placement::SANDBOX_ID),
    ) else {
        return Ok(None);
    };
    if same_netns(cpu_netns, HOST_NETNS) {
        // A hostNetwork Pod: its DPU containers use the DPU's own host network.
        return Ok(Some(HOST_NETNS.to_string()));
    }
    let mut slot = slot.lock().await;
    if let Some(net) = slot.as_ref() {
        return Ok(Some(net.dpu_netns.clone()));
    }
    let ip = pod_ip(cpu_netns).await?;
    let mut net_spec = PodNetworkSpec::new(pod_id, cpu_netns, &ip)?;
    if let Some(path) = &spec.resolv_conf {
        // Unreadable: the DPU half just has no DNS; the Pod still runs.
        let text = std::fs::read_to_string(path).unwrap_or_default();
        net_spec.udp_forward = dns_servers(&text);
    }
    net_spec.relay_cpus = Some(config.host.cpus.trim().to_string()).filter(|c| !c.is_empty());
    let lease = match config.dpu.link {
        LinkKind::Shm => None,
        LinkKind::Ivshmem => Some(SlotLease::acquire(
            &ivshmem_slots::slots_dir(&config.dpu.ivshmem_socket),
            config.dpu.ivshmem_slots,
            pod_id,
        )?),
    };
    if let Some(lease) = &lease {
        net_spec.use_ivshmem(&config.dpu, lease);
    }
    let net = match PodNetwork::create(&config.dpu, &net_spec, lease.clone()).await {
        Ok(net) => net,
        Err(e) => {
            if let Some(lease) = &lease {
                lease.release();
            }
            return Err(e);
        }
    };
    if let Some(bundle) = sandbox_bundle {
        let marker = Marker {
            endpoint: config.dpu.endpoint.clone(),
            key_file: config.dpu.key_file.clone(),
            pod_id: pod_id.clone(),
            relay_pid: net.relay.as_ref().map_or(0, RelaySupervisor::pid),
            region: net_spec.region.clone(),
            rendezvous: net_spec.rendezvous.clone(),
        };
        let path = bundle.join(MARKER_FILE);
        write_marker(&path, &marker);
        *net.marker.lock().unwrap_or_else(|e| e.into_inner()) = Some((path, marker));
    }
    let netns = net.dpu_netns.clone();
    *slot = Some(net);
    Ok(Some(netns))
}

/// The shim's own network namespace, the host's. As the DPU half of a
/// hostNetwork Pod it means the DPU's host network (see `spec_for_dpu`).
pub const HOST_NETNS: &str = "/proc/self/ns/net";

/// Whether two namespace paths name the same namespace (device and inode).
fn same_netns(a: &str, b: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `shim delete` of a sandbox whose shim died: removes the DPU half and the
/// orphaned CPU relay recorded in its bundle.
pub async fn cleanup(bundle: &Path) -> Result<()> {
    let path = bundle.join(MARKER_FILE);
    let Ok(text) = std::fs::read(&path) else {
        return Ok(());
    };
    let marker: Marker = serde_json::from_slice(&text)?;
    if marker.relay_pid != 0 {
        // Only if the pid still is that relay (pids are reused).
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", marker.relay_pid))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if cmdline.contains(&marker.region) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(marker.relay_pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    // A killed relay cannot remove its region and sockets.
    if let Some(name) = marker.region.strip_prefix("shm:/") {
        let file = Path::new("/dev/shm").join(name);
        remove_quietly(&file);
        remove_quietly(&file.with_extension("sock"));
    }
    remove_quietly(Path::new(&stats_socket_of(&marker.pod_id)));
    if let Some(dir) = Path::new(&marker.rendezvous).parent() {
        remove_meet_dir(dir);
    }
    let lease = ivshmem_slots::lease_of_region(&marker.region, &marker.pod_id);
    let key_file = Some(Path::new(&marker.key_file)).filter(|_| !marker.key_file.is_empty());
    let agent = AgentClient::connect_with_key(&marker.endpoint, key_file).await?;
    match agent.destroy_pod_network(&marker.pod_id).await {
        Ok(()) | Err(heteropod_dpu_proxy::Error::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // After the DPU half: its relay no longer uses the slot.
    if let Some(lease) = lease {
        lease.release();
    }
    remove_quietly(&path);
    Ok(())
}

/// The Pod IP (CIDR) on the first global IPv4 address in `netns`.
pub async fn pod_ip(netns: &str) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "-o", "-4", "addr", "show", "scope", "global"])
        .stdin(ProcStdio::null())
        .output()
        .await
        .map_err(Error::io("run nsenter ip addr"))?;
    if !out.status.success() {
        return Err(Error::FailedPrecondition(format!(
            "cannot read the Pod IP in {netns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_pod_ip(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        Error::FailedPrecondition(format!("the Pod netns {netns} has no IPv4 address"))
    })
}

/// The `nameserver` addresses of a resolv.conf as `ip:53` (at most three,
/// as the resolver uses); anything that is not an IP address is skipped.
fn dns_servers(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|ip| std::net::SocketAddr::new(ip, 53).to_string())
        .take(3)
        .collect()
}

/// First `inet A.B.C.D/N` of `ip -o -4 addr` output.
fn parse_pod_ip(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        words.find(|w| *w == "inet")?;
        words.next().map(str::to_string)
    })
}

impl PodNetwork {
    /// Starts the CPU relay (it creates the region), then asks the agent for
    /// the DPU half (which starts the DPU relay).
    /// `slot` is the BAR slot of an ivshmem link (the caller frees it if
    /// this fails).
    pub async fn create(
        dpu: &DpuConfig,
        spec: &PodNetworkSpec,
        slot: Option<SlotLease>,
    ) -> Result<Self> {
        let (endpoint, relay_bin) = (dpu.endpoint.as_str(), dpu.relay.as_str());
        // Before either relay binds or connects there.
        let meet = match spec.meet_dir() {
            Some(dir) => {
                make_meet_dir(dir).map_err(Error::io(format!(
                    "create the relays' meeting directory {}",
                    dir.display()
                )))?;
                Some(MeetDir(dir.to_path_buf()))
            }
            None => None,
        };
        let agent = AgentClient::connect_with_key(endpoint, dpu.key_file())
            .await
            .map_err(|e| {
                Error::FailedPrecondition(format!(
                    "Pod {}: the DPU agent at {endpoint} is unreachable: {e}",
                    spec.pod_id
                ))
            })?;
        let (a, dir) = (agent.clone(), PathBuf::from(&dpu.orphans_dir));
        tokio::spawn(async move { orphans::remove_leftovers(&dir, &a).await });
        let marker: Arc<Mutex<Option<(PathBuf, Marker)>>> = Arc::default();
        let relay = if relay_bin.is_empty() {
            None
        } else {
            let cmd = RelayCommand {
                bin: relay_bin.to_string(),
                args: cpu_relay_args(spec),
                cpus: spec.relay_cpus.clone(),
            };
            let marker = marker.clone();
            // A restarted relay has a new pid; `shim delete` must find it.
            let on_spawn = move |pid| {
                if let Some((path, m)) = marker.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    m.relay_pid = pid;
                    write_marker(path, m);
                }
            };
            Some(RelaySupervisor::start(cmd, on_spawn).await?)
        };
        let req = CreatePodNetworkRequest {
            pod_id: spec.pod_id.clone(),
            pod_ip: spec.pod_ip.clone(),
            region: spec.agent_region.clone(),
            rendezvous: spec.rendezvous.clone(),
            udp_forward: spec.udp_forward.clone(),
            ..Default::default()
        };
        let mut net = PodNetwork {
            pod_id: spec.pod_id.clone(),
            dpu_netns: String::new(),
            relay,
            agent,
            marker,
            orphans_dir: PathBuf::from(&dpu.orphans_dir),
            slot,
            _meet: meet,
        };
        match net.agent.create_pod_network(req).await {
            Ok(r) => {
                tracing::info!(pod = %spec.pod_id, netns = %r.netns_path, dpu_relay = r.relay_pid, "Pod network halves up");
                net.dpu_netns = r.netns_path;
                Ok(net)
            }
            Err(e) => {
                net.stop_relay().await;
                Err(e.into())
            }
        }
    }

    async fn stop_relay(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.stop().await;
        }
    }

    /// The CPU relay's pid (0 without one).
    pub fn relay_pid(&self) -> u32 {
        self.relay.as_ref().map_or(0, RelaySupervisor::pid)
    }

    /// Removes both halves. Errors are logged: the sandbox goes regardless.
    pub async fn destroy(mut self) {
        match self.agent.destroy_pod_network(&self.pod_id).await {
            Ok(()) => {}
            Err(heteropod_dpu_proxy::Error::DpuUnreachable { .. }) => orphans::record(
                &self.orphans_dir,
                &Orphan {
                    endpoint: self.agent.address().to_string(),
                    kind: orphans::Kind::PodNetwork,
                    id: self.pod_id.clone(),
                },
            ),
            Err(e) => tracing::warn!(pod = %self.pod_id, "destroy the DPU half: {e}"),
        }
        self.stop_relay().await;
        if let Some(slot) = self.slot.take() {
            slot.release();
        }
        if let Some((path, _)) = self.marker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            remove_quietly(&path);
        }
    }
}

/// The CPU relay's command line (an ivshmem link has no rendezvous).
fn cpu_relay_args(spec: &PodNetworkSpec) -> Vec<String> {
    let ip = spec.pod_ip.split('/').next().unwrap_or_default();
    let mut args = vec![
        ("--side", "cpu"),
        ("--netns", &spec.cpu_netns),
        ("--region", &spec.region),
    ];
    if !spec.rendezvous.is_empty() {
        args.push(("--rendezvous", &spec.rendezvous));
    }
    args.extend([("--pod-ip", ip), ("--stats-socket", &spec.stats_socket)]);
    args.iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_netns_is_recognised_by_inode() {
        assert!(same_netns(HOST_NETNS, HOST_NETNS));
        assert!(!same_netns("/proc/self/ns/net", "/proc/self/ns/ipc"));
        assert!(!same_netns("/nonexistent", HOST_NETNS));
    }

    #[test]
    fn dns_servers_come_from_nameserver_lines() {
        let text = "search svc.local\nnameserver 10.77.0.1\nnameserver fd00::1\n\
                    nameserver not-an-ip\n# nameserver 1.1.1.1\noptions ndots:5\n";
        assert_eq!(dns_servers(text), vec!["10.77.0.1:53", "[fd00::1]:53"]);
        assert!(dns_servers("").is_empty());
    }

    #[test]
    fn pod_ip_is_the_first_inet_address() {
        let text = "2: eth0    inet 10.77.0.5/16 brd 10.77.255.255 scope global eth0\\       valid_lft forever\n\
                    3: eth1    inet 10.1.0.2/24 scope global eth1\n";
        assert_eq!(parse_pod_ip(text).as_deref(), Some("10.77.0.5/16"));
        assert_eq!(parse_pod_ip(""), None);
    }

    #[test]
    fn spec_names_are_plain_shm_names() {
        let sut =
            PodNetworkSpec::new("0123456789abcdef0123", "/run/netns/x", "10.0.0.1/8").unwrap();
        assert_eq!(sut.region, "shm:/heteropod-0123456789abcdef");
        assert_eq!(sut.agent_region, sut.region);
        assert!(cpu_relay_args(&sut).contains(&"--rendezvous".to_string()));
    }

    #[test]
    fn the_relays_meet_in_a_random_directory_under_the_root_only_one() {
        let a = PodNetworkSpec::new("0123456789abcdef0123", "/run/netns/x", "10.0.0.1/8").unwrap();
        let b = PodNetworkSpec::new("0123456789abcdef0123", "/run/netns/x", "10.0.0.1/8").unwrap();
        for sut in [&a, &b] {
            let dir = sut.meet_dir().unwrap();
            assert_eq!(
                dir.parent(),
                Some(Path::new(MEET_DIR)),
                "{}",
                sut.rendezvous
            );
            let name = dir.file_name().unwrap().to_str().unwrap();
            assert!(
                name.len() == 32 && name.chars().all(|c| c.is_ascii_hexdigit()),
                "{name}"
            );
            assert!(
                !name.contains("0123456789abcdef"),
                "the Pod id is guessable: {name}"
            );
        }
        assert_ne!(
            a.rendezvous, b.rendezvous,
            "the same Pod got the same directory twice"
        );
    }

    /// Runs python `script` as user nobody; its stdout, trimmed.
    fn as_nobody(script: &str) -> String {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            // Debian's: a PATH entry of root's (pyenv) is not nobody's to run.
            .args(["/usr/bin/python3", "-c", script])
            .output()
            .expect("setpriv");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "python as nobody: {err}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn a_meeting_directory_is_roots_alone_and_goes_with_the_network() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: needs root (to be another user than nobody)");
            return;
        }
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let spec = PodNetworkSpec::new("0123456789abcdef0123", "", "").unwrap();
        let dir = spec.meet_dir().unwrap().to_path_buf();
        make_meet_dir(&dir).unwrap();
        let guard = MeetDir(dir.clone());
        for d in [dir.as_path(), Path::new(MEET_DIR)] {
            let meta = std::fs::metadata(d).unwrap();
            assert_eq!(meta.mode() & 0o7777, 0o700, "{}", d.display());
            assert_eq!(meta.uid(), 0, "{}", d.display());
        }
        let _listener = std::os::unix::net::UnixListener::bind(&spec.rendezvous).unwrap();
        // Even with the socket's own mode wide open, nobody can reach it or
        // bind one beside it (where the fast path's sockets go).
        std::fs::set_permissions(&spec.rendezvous, std::fs::Permissions::from_mode(0o777)).unwrap();
        let script = format!(
            r#"
import socket
for what, path in (("connect", {sock:?}), ("bind", {fast:?})):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        getattr(s, what)(path)
        print(what, "ok")
    except PermissionError:
        print(what, "refused")
"#,
            sock = spec.rendezvous,
            fast = dir.join("link.sock.fast").display().to_string(),
        );
        assert_eq!(as_nobody(&script), "connect refused\nbind refused");
        // A second network cannot be handed the same directory.
        assert!(make_meet_dir(&dir).is_err());
        drop(guard);
        assert!(!dir.exists(), "meeting directory left");
    }

    #[tokio::test]
    async fn shim_delete_removes_a_dead_shims_meeting_directory() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: needs root ({MEET_DIR})");
            return;
        }
        let spec = PodNetworkSpec::new("0123456789abcdef0123", "", "").unwrap();
        let dir = spec.meet_dir().unwrap().to_path_buf();
        make_meet_dir(&dir).unwrap();
        let bundle = tempfile::tempdir().unwrap();
        let marker = Marker {
            endpoint: "unix:///nonexistent/agent.sock".into(),
            key_file: String::new(),
            pod_id: spec.pod_id.clone(),
            relay_pid: 0,
            region: spec.region.clone(),
            rendezvous: spec.rendezvous.clone(),
        };
        write_marker(&bundle.path().join(MARKER_FILE), &marker);
        // The agent is unreachable here; what is on this host goes first anyway.
        let _ = cleanup(bundle.path()).await;
        assert!(!dir.exists(), "meeting directory left");
    }

    #[test]
    fn a_lax_meeting_parent_is_tightened_and_a_strangers_refused() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("pods");
        std::fs::create_dir(&parent).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        make_meet_dir(&parent.join("a")).unwrap();
        let mode = std::fs::metadata(&parent).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        if nix::unistd::geteuid().is_root() {
            // A parent another user made (or could make) is not used.
            std::os::unix::fs::chown(&parent, Some(65534), None).unwrap();
            assert!(make_meet_dir(&parent.join("b")).is_err());
        }
    }

    #[test]
    fn an_ivshmem_link_uses_the_leased_slot_on_both_sides() {
        let dir = tempfile::tempdir().unwrap();
        let dpu = DpuConfig {
            link: LinkKind::Ivshmem,
            ivshmem_socket: "/run/hp/qemu/ivshmem.sock".into(),
            ..Default::default()
        };
        SlotLease::acquire(dir.path(), 8, "other-pod").unwrap();
        let lease = SlotLease::acquire(dir.path(), 8, "pod").unwrap();
        let mut sut = PodNetworkSpec::new("pod", "/run/netns/x", "10.0.0.1/8").unwrap();
        sut.use_ivshmem(&dpu, &lease);
        assert_eq!(sut.region, "ivshmem:/run/hp/qemu/ivshmem.sock@1/8");
        assert_eq!(sut.agent_region, "pci:0000:00:04.0/2@1/8");
        assert_eq!(sut.rendezvous, "");
        let args = cpu_relay_args(&sut);
        assert!(!args.contains(&"--rendezvous".to_string()), "{args:?}");
        let at = args.iter().position(|a| a == "--region").unwrap();
        assert_eq!(args[at + 1], sut.region);
    }

    #[test]
    fn shim_delete_finds_the_lease_of_an_ivshmem_marker() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ivshmem.sock");
        let slots = ivshmem_slots::slots_dir(socket.to_str().unwrap());
        let lease = SlotLease::acquire(&slots, 8, "pod").unwrap();
        let marker = Marker {
            endpoint: "tcp://127.0.0.1:1".into(),
            key_file: String::new(),
            pod_id: "pod".into(),
            relay_pid: 0,
            region: lease.window(&format!("ivshmem:{}", socket.display())),
            rendezvous: String::new(),
        };
        let found = ivshmem_slots::lease_of_region(&marker.region, &marker.pod_id);
        assert_eq!(found, Some(lease));
        assert_eq!(
            ivshmem_slots::lease_of_region("shm:/heteropod-pod", "pod"),
            None
        );
    }
}
