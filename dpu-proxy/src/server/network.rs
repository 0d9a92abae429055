//! The DPU half of a Pod network: a netns named after the Pod under the
//! agent's state dir (loopback up, the Pod IP on a dummy device, or a veth
//! kept inside the netns where `dummy` is missing), and the
//! DPU-side `heteronet` relay, restarted by its owner if it dies. A `pci:`
//! region (the DPU in a guest, rings in the ivshmem BAR) also gets the
//! slot's MSI-X eventfds, see [`vfio`].
mod vfio;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use nix::{mount::MntFlags, sys::signal::Signal, unistd::Pid};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::vfio::{spawn_with_irqs, DeviceIrqs};
use super::{process::proc_start_time, reaper::Reaper};
use crate::{
    error::{Error, Result},
    ids::validate_id,
};

/// Name of the device carrying the Pod IP in the DPU half.
pub const POD_DEVICE: &str = "hp-pod0";
/// Peer of [`POD_DEVICE`] when it has to be a veth.
const POD_PEER: &str = "hp-pod0-peer";
/// Under the state dir: the Pod network namespaces the agent makes (the
/// only ones a container may join by path).
pub const NETNS_DIR: &str = "netns";
const RELAY_RESTART_DELAY: Duration = Duration::from_millis(500);
const RELAY_STOP_GRACE: Duration = Duration::from_secs(3);
/// A relay that does not answer for its counters within this is reported without them.
const RELAY_STATS_TIMEOUT: Duration = Duration::from_secs(1);

/// A Pod network as persisted under `<state>/pods/<pod>.json`, so a
/// restarted agent takes it over (and replaces its relay).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PodRecord {
    pod_id: String,
    netns: PathBuf,
    region: String,
    rendezvous: String,
    pod_ip: String,
    relay_pid: u32,
    relay_start_time: u64,
    /// `ip:port` destinations whose UDP the relay carries (DNS).
    #[serde(default)]
    udp_forward: Vec<String>,
}

impl PodRecord {
    fn save(&self, dir: &Path) {
        let path = dir.join(format!("{}.json", self.pod_id));
        let tmp = path.with_extension("tmp");
        let ok = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|d| super::state::write_private(&tmp, &d))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = ok {
            tracing::warn!(pod = %self.pod_id, "persist pod network: {e}");
        }
    }
}

struct PodNet {
    record: PodRecord,
    relay_pid: Arc<Mutex<u32>>,
    relay_restarts: Arc<AtomicU32>,
    stop: watch::Sender<bool>,
}

/// What [`Networks::list`] tells about one Pod network.
#[derive(Debug, Clone)]
pub struct PodNetInfo {
    pub pod_id: String,
    pub pod_ip: String,
    pub netns: PathBuf,
    pub region: String,
    pub relay_pid: u32,
    pub relay_restarts: u32,
    /// The relay's counters document, empty when it did not answer.
    pub relay_stats_json: String,
}

pub struct Networks {
    dir: PathBuf,
    records: PathBuf,
    relay: Option<PathBuf>,
    reaper: Arc<Reaper>,
    pods: tokio::sync::Mutex<HashMap<String, PodNet>>,
    /// The ivshmem device's interrupts and slots (`pci:` regions only).
    irqs: Arc<DeviceIrqs>,
    /// The DPU's cgroup parent, where relays run.
    cg: super::CgroupParent,
}

async fn run(reaper: &Reaper, cmd: Command) -> Result<()> {
    let what = format!("{cmd:?}");
    let out = reaper
        .output(cmd, None)
        .await
        .map_err(Error::io(format!("run {what}")))?;
    if out.status != 0 {
        return Err(Error::FailedPrecondition(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

async fn in_netns(reaper: &Reaper, netns: &Path, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display())).args(args);
    run(reaper, cmd).await
}

/// Parses "a.b.c.d/len" (IPv4 or IPv6), or a bare address (host prefix).
/// The address part of a `addr/prefix` Pod IP, as `heteronet --pod-ip` takes it.
fn relay_pod_ip(cidr: &str) -> &str {
    cidr.split_once('/').map_or(cidr, |(addr, _)| addr)
}

pub fn parse_pod_ip(s: &str) -> Result<String> {
    let bad = || Error::InvalidArgument(format!("invalid Pod IP {s:?}, want ADDRESS/PREFIX"));
    let (addr, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = if len.is_empty() {
        max
    } else {
        len.parse().map_err(|_| bad())?
    };
    if len > max {
        return Err(bad());
    }
    Ok(format!("{ip}/{len}"))
}

impl Networks {
    pub fn new(
        state_dir: &Path,
        relay: Option<PathBuf>,
        reaper: Arc<Reaper>,
        cg: super::CgroupParent,
    ) -> Result<Self> {
        let dir = state_dir.join(NETNS_DIR);
        let records = state_dir.join("pods");
        for d in [&dir, &records] {
            super::state::create_private_dir(d)?;
        }
        Ok(Networks {
            dir,
            records,
            relay,
            reaper,
            pods: Default::default(),
            irqs: Arc::default(),
            cg,
        })
    }

    pub fn netns_path(&self, pod_id: &str) -> PathBuf {
        self.dir.join(pod_id)
    }

    /// Creates the Pod's DPU half (idempotent for the same Pod); returns the
    /// netns path and the relay pid (0 without a relay).
    pub async fn create(
        &self,
        pod_id: &str,
        pod_ip: &str,
        region: &str,
        rendezvous: &str,
        udp_forward: &[String],
    ) -> Result<(PathBuf, u32)> {
        validate_id("pod", pod_id)?;
        let ip = parse_pod_ip(pod_ip)?;
        for dest in udp_forward {
            dest.parse::<std::net::SocketAddr>().map_err(|_| {
                Error::InvalidArgument(format!("udp_forward {dest:?} is not an ip:port address"))
            })?;
        }
        let mut pods = self.pods.lock().await;
        if let Some(p) = pods.get(pod_id) {
            return Ok((
                p.record.netns.clone(),
                *p.relay_pid.lock().unwrap_or_else(|e| e.into_inner()),
            ));
        }
        if let Some(slot) = vfio::parse_pci_region(region)? {
            self.irqs.claim(pod_id, &slot)?;
        }
        let netns = self.netns_path(pod_id);
        if let Err(e) = make_netns(&self.reaper, &netns, &ip).await {
            remove_netns(&netns);
            self.irqs.release(pod_id);
            return Err(e);
        }
        let rec = PodRecord {
            pod_id: pod_id.into(),
            netns: netns.clone(),
            region: region.into(),
            rendezvous: rendezvous.into(),
            pod_ip: pod_ip.into(),
            relay_pid: 0,
            relay_start_time: 0,
            udp_forward: udp_forward.to_vec(),
        };
        let pid = match self.register(&mut pods, rec).await {
            Ok(pid) => pid,
            Err(e) => {
                remove_netns(&netns);
                self.irqs.release(pod_id);
                let _ = std::fs::remove_file(self.records.join(format!("{pod_id}.json")));
                return Err(e);
            }
        };
        tracing::info!(pod = pod_id, netns = %netns.display(), relay_pid = pid, "pod network created");
        Ok((netns, pid))
    }

    /// Starts the relay of a Pod network (if configured) and tracks it.
    async fn register(&self, pods: &mut HashMap<String, PodNet>, rec: PodRecord) -> Result<u32> {
        let (stop, stop_rx) = watch::channel(false);
        let relay_pid = Arc::new(Mutex::new(0));
        let relay_restarts = Arc::new(AtomicU32::new(0));
        rec.save(&self.records);
        if let Some(bin) = &self.relay {
            let slots = (relay_pid.clone(), relay_restarts.clone());
            self.supervise(bin.clone(), rec.clone(), slots, stop_rx)
                .await?;
        }
        let pid = *relay_pid.lock().unwrap_or_else(|e| e.into_inner());
        pods.insert(
            rec.pod_id.clone(),
            PodNet {
                record: rec,
                relay_pid,
                relay_restarts,
                stop,
            },
        );
        Ok(pid)
    }

    /// After a restart: Pod networks whose netns is still there are taken
    /// over (their old relay, no longer supervised, is replaced); leftovers
    /// without a record are removed.
    pub async fn restore(&self) {
        let mut pods = self.pods.lock().await;
        for e in std::fs::read_dir(&self.records)
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = e.path();
            let rec = std::fs::read(&path)
                .ok()
                .and_then(|d| serde_json::from_slice::<PodRecord>(&d).ok())
                .filter(|r| {
                    validate_id("pod", &r.pod_id).is_ok() && r.netns == self.netns_path(&r.pod_id)
                });
            let Some(rec) = rec else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if rec.relay_pid != 0 && proc_start_time(rec.relay_pid) == Some(rec.relay_start_time) {
                let _ =
                    nix::sys::signal::kill(Pid::from_raw(rec.relay_pid as i32), Signal::SIGKILL);
            }
            if !is_mounted(&rec.netns) {
                remove_netns(&rec.netns);
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let id = rec.pod_id.clone();
            let claimed = vfio::parse_pci_region(&rec.region)
                .and_then(|slot| slot.map_or(Ok(()), |s| self.irqs.claim(&id, &s)));
            if let Err(e) = claimed {
                tracing::warn!(pod = %id, "restore pod network: {e}");
                continue;
            }
            match self.register(&mut pods, rec).await {
                Ok(pid) => tracing::info!(pod = %id, relay_pid = pid, "pod network restored"),
                Err(e) => tracing::warn!(pod = %id, "restore pod network: {e}"),
            }
        }
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let known = e.file_name().to_str().is_some_and(|n| pods.contains_key(n));
            if !known {
                remove_netns(&e.path());
            }
        }
    }

    /// Spawns the relay and restarts it whenever it dies, until stopped.
    async fn supervise(
        &self,
        bin: PathBuf,
        mut args: PodRecord,
        (pid_slot, restarts): (Arc<Mutex<u32>>, Arc<AtomicU32>),
        mut stop: watch::Receiver<bool>,
    ) -> Result<()> {
        let reaper = self.reaper.clone();
        let records = self.records.clone();
        let stats_socket = self.stats_socket(&args.pod_id);
        let pci = vfio::parse_pci_region(&args.region)?;
        let irqs = self.irqs.clone();
        let cg = self.cg.clone();
        let mut spawn = move || -> Result<(u32, tokio::sync::oneshot::Receiver<i32>)> {
            let mut cmd = Command::new(&bin);
            cmd.args(["--side", "dpu", "--netns"])
                .arg(&args.netns)
                .args(["--region", &args.region]);
            // Links across the BAR have no rendezvous socket.
            if !args.rendezvous.is_empty() {
                cmd.args(["--rendezvous", &args.rendezvous]);
            }
            cmd.args([
                "--capture-egress",
                "--pod-ip",
                // The relay wants the address; the netns device gets the prefix.
                relay_pod_ip(&args.pod_ip),
                "--stats-socket",
            ])
            .arg(&stats_socket)
            .stdin(Stdio::null());
            for dest in &args.udp_forward {
                cmd.args(["--udp-forward", dest]);
            }
            let (child, rx) = match &pci {
                None => reaper.spawn(cmd),
                Some(slot) => spawn_with_irqs(&reaper, &irqs, slot, cmd)?,
            }
            .map_err(Error::io(format!("spawn relay {}", bin.display())))?;
            // On the DPU's cores, not the agent's; a relay left outside still works.
            if let Err(e) = cg.confine(child.id()) {
                tracing::warn!(pid = child.id(), "relay not moved to the DPU cgroup: {e}");
            }
            // Persisted so that a restarted agent can replace this relay.
            args.relay_pid = child.id();
            args.relay_start_time = proc_start_time(child.id()).unwrap_or_default();
            args.save(&records);
            Ok((child.id(), rx))
        };
        let (pid, mut exited) = spawn()?;
        *pid_slot.lock().unwrap_or_else(|e| e.into_inner()) = pid;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    status = &mut exited => {
                        tracing::warn!(status = ?status.ok(), "relay exited; restarting");
                        tokio::time::sleep(RELAY_RESTART_DELAY).await;
                        if *stop.borrow() {
                            return;
                        }
                        match spawn() {
                            Ok((pid, rx)) => {
                                restarts.fetch_add(1, Ordering::Relaxed);
                                *pid_slot.lock().unwrap_or_else(|e| e.into_inner()) = pid;
                                exited = rx;
                            }
                            Err(e) => {
                                tracing::error!("restart relay: {e}");
                                return;
                            }
                        }
                    }
                    _ = stop.changed() => {
                        let pid = *pid_slot.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                        if tokio::time::timeout(RELAY_STOP_GRACE, &mut exited).await.is_err() {
                            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                            let _ = exited.await;
                        }
                        return;
                    }
                }
            }
        });
        Ok(())
    }

    /// Where the relay of a Pod serves its counters.
    fn stats_socket(&self, pod_id: &str) -> PathBuf {
        self.records.join(format!("{pod_id}.stats.sock"))
    }

    /// Every Pod network with its relay's counters, sorted by Pod.
    pub async fn list(&self) -> Vec<PodNetInfo> {
        let snapshot: Vec<_> = {
            let pods = self.pods.lock().await;
            pods.values()
                .map(|p| {
                    let pid = *p.relay_pid.lock().unwrap_or_else(|e| e.into_inner());
                    (
                        p.record.clone(),
                        pid,
                        p.relay_restarts.load(Ordering::Relaxed),
                    )
                })
                .collect()
        };
        let mut out = Vec::with_capacity(snapshot.len());
        for (rec, relay_pid, relay_restarts) in snapshot {
            let relay_stats_json = if relay_pid == 0 {
                String::new()
            } else {
                read_stats(&self.stats_socket(&rec.pod_id)).await
            };
            out.push(PodNetInfo {
                pod_id: rec.pod_id,
                pod_ip: rec.pod_ip,
                netns: rec.netns,
                region: rec.region,
                relay_pid,
                relay_restarts,
                relay_stats_json,
            });
        }
        out.sort_by(|a, b| a.pod_id.cmp(&b.pod_id));
        out
    }

    /// Stops the relay and removes the netns; unknown Pods succeed (idempotent).
    pub async fn destroy(&self, pod_id: &str) -> Result<()> {
        validate_id("pod", pod_id)?;
        let mut pods = self.pods.lock().await;
        if let Some(p) = pods.remove(pod_id) {
            let _ = p.stop.send(true);
            // Wait until the supervisor has reaped the relay.
            p.stop.closed().await;
        }
        self.irqs.release(pod_id);
        let _ = std::fs::remove_file(self.records.join(format!("{pod_id}.json")));
        // A killed relay cannot remove its own socket.
        let _ = std::fs::remove_file(self.stats_socket(pod_id));
        let netns = self.netns_path(pod_id);
        tokio::task::spawn_blocking(move || remove_netns(&netns))
            .await
            .map_err(|e| Error::io("remove netns")(std::io::Error::other(e)))?;
        Ok(())
    }
}

/// The JSON a relay writes on its stats socket; empty if it does not answer
/// in time or sends something that is not a JSON object.
async fn read_stats(socket: &Path) -> String {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut s = tokio::net::UnixStream::connect(socket).await?;
        let mut buf = Vec::new();
        // Bounded: the relay is not trusted to stop writing.
        (&mut s).take(1 << 20).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(RELAY_STATS_TIMEOUT, read).await {
        Ok(Ok(buf)) => match serde_json::from_slice::<serde_json::Value>(&buf) {
            Ok(v) if v.is_object() => v.to_string(),
            _ => String::new(),
        },
        _ => String::new(),
    }
}

fn is_mounted(path: &Path) -> bool {
    let Some(p) = path.to_str() else { return false };
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p))
}

async fn make_netns(reaper: &Reaper, netns: &Path, ip: &str) -> Result<()> {
    std::fs::write(netns, b"").map_err(Error::io(format!("create {}", netns.display())))?;
    let mut unshare = Command::new("unshare");
    unshare
        .arg(format!("--net={}", netns.display()))
        .arg("true");
    run(reaper, unshare).await?;
    in_netns(reaper, netns, &["ip", "link", "set", "lo", "up"]).await?;
    // A dummy device where the kernel has the module; else a veth pair kept
    // inside the netns (these test machines cannot load `dummy`).
    if in_netns(
        reaper,
        netns,
        &["ip", "link", "add", POD_DEVICE, "type", "dummy"],
    )
    .await
    .is_err()
    {
        in_netns(
            reaper,
            netns,
            &[
                "ip", "link", "add", POD_DEVICE, "type", "veth", "peer", "name", POD_PEER,
            ],
        )
        .await?;
        in_netns(reaper, netns, &["ip", "link", "set", POD_PEER, "up"]).await?;
    }
    in_netns(reaper, netns, &["ip", "addr", "add", ip, "dev", POD_DEVICE]).await?;
    in_netns(reaper, netns, &["ip", "link", "set", POD_DEVICE, "up"]).await?;
    // Every destination routes (to the device, where nothing answers), so a
    // connect outside the Pod subnet reaches nat OUTPUT, where the relay
    // captures it, instead of failing with ENETUNREACH.
    in_netns(
        reaper,
        netns,
        &["ip", "route", "add", "default", "dev", POD_DEVICE],
    )
    .await
}

fn remove_netns(netns: &Path) {
    let _ = nix::mount::umount2(netns, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(netns);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_gets_the_bare_pod_address() {
        assert_eq!(relay_pod_ip("10.77.0.5/16"), "10.77.0.5");
        assert_eq!(relay_pod_ip("fd00::5/64"), "fd00::5");
        assert_eq!(relay_pod_ip("10.77.0.5"), "10.77.0.5");
    }

    #[test]
    fn pod_ips_parse_with_or_without_prefix() {
        assert_eq!(parse_pod_ip("10.77.0.5/16").unwrap(), "10.77.0.5/16");
        assert_eq!(parse_pod_ip("10.77.0.5").unwrap(), "10.77.0.5/32");
        assert_eq!(parse_pod_ip("fd00::5/64").unwrap(), "fd00::5/64");
        for bad in [
            "",
            "10.77.0.5/33",
            "x/1",
            "10.77.0.5/-1",
            "10.77.0.5; rm -rf /",
        ] {
            assert!(parse_pod_ip(bad).is_err(), "{bad}");
        }
    }
}
