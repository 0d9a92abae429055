//! What the demo measures: CPU time of containers (CRI ContainerStats, the cgroup as a
//! fallback) and of the Pod's host processes (shim, HeteroNet relays), where each runs,
//! and the relays' JSON counters. With the DPU in a QEMU guest
//! (`HETEROPOD_DPU_REMOTE=1`) what runs there is asked of the agent
//! (`heteropod status --json`), and QEMU's own CPU time is measured apart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use heteropod_conformance::{cri, dpu, host, Cri};
use serde_json::Value;
use tokio::io::AsyncReadExt;

/// Linux reports process times in USER_HZ ticks, 100 per second on every architecture
/// the project runs on.
const TICKS_PER_SEC: f64 = 100.0;
const STATS_SOCKET_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a container or process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pu {
    Cpu,
    Dpu,
}

impl Pu {
    pub fn label(self) -> &'static str {
        match self {
            Pu::Cpu => "cpu",
            Pu::Dpu => "dpu",
        }
    }
}

/// The cgroup parent the emulated DPU keeps its containers under (hack/dpu.sh).
pub fn dpu_cgroup_parent() -> String {
    std::env::var("DPU_CGROUP_PARENT")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "heteropod-dpu".into())
}

/// Where a container's processes are: told by its cgroup, or by the agent of a
/// DPU in a guest.
/// `agent` is the guest agent's view (`None` for the emulated DPU).
pub fn container_pu(id: &str, agent: Option<&dpu::AgentView>) -> Pu {
    if let Some(view) = agent {
        return if view.runs_on_dpu(id) {
            Pu::Dpu
        } else {
            Pu::Cpu
        };
    }
    let parent = dpu_cgroup_parent();
    let on_dpu = host::cgroups_named(id)
        .iter()
        .any(|dir| dir.components().any(|c| c.as_os_str() == parent.as_str()));
    if on_dpu {
        Pu::Dpu
    } else {
        Pu::Cpu
    }
}

/// The CPUs a container may run on, from its cpuset cgroup (for a container in
/// a DPU guest: the guest's DPU cores, as its agent reports them).
pub fn container_cpus(id: &str, pu: Pu, agent: Option<&dpu::AgentView>) -> Option<String> {
    if let (Some(view), Pu::Dpu) = (agent, pu) {
        return Some(format!("guest {}", view.cpus));
    }
    host::cgroups_named(id)
        .into_iter()
        .flat_map(|dir| [dir.join("cpuset.cpus"), dir.join("cpuset.cpus.effective")])
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A container's CPU seconds: CRI ContainerStats, or its cpuacct cgroup when the
/// runtime reports nothing. The flag says whether the cgroup was used.
pub async fn container_cpu(cri: &mut Cri, id: &str) -> Result<(f64, bool)> {
    let req = cri::ContainerStatsRequest {
        container_id: id.into(),
    };
    let from_cri = cri
        .runtime
        .container_stats(req)
        .await
        .ok()
        .and_then(|r| r.into_inner().stats)
        .and_then(|s| s.cpu)
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value)
        .filter(|v| *v > 0);
    if let Some(ns) = from_cri {
        return Ok((ns as f64 / 1e9, false));
    }
    let ns = host::cgroups_named(id)
        .into_iter()
        .map(|dir| dir.join("cpuacct.usage"))
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .with_context(|| format!("no CPU usage for container {id} from CRI or its cgroup"))?;
    Ok((ns as f64 / 1e9, true))
}

/// A host process of the Pod that is not a container.
#[derive(Debug, Clone)]
pub struct PodProcess {
    pub name: &'static str,
    pub pid: u32,
    pub pu: Pu,
}

/// The Pod's shim(s) and HeteroNet relays on this host. Relays are found by the
/// shared region (`shm:/heteropod-<first 16 chars of the sandbox id>`) or the
/// counters socket on their command line and belong to the PU their `--side` names.
pub fn pod_processes(pod_id: &str) -> Vec<PodProcess> {
    let mut out: Vec<PodProcess> = host::shims_of(pod_id)
        .into_iter()
        .map(|p| PodProcess {
            name: "shim",
            pid: p.pid,
            pu: Pu::Cpu,
        })
        .collect();
    let region = format!("shm:/heteropod-{}", short16(pod_id));
    let stats = cpu_relay_socket(pod_id).to_string_lossy().into_owned();
    for p in host::processes(|args| {
        args[0].ends_with("heteronet") && args.iter().any(|a| *a == region || *a == stats)
    }) {
        let (name, pu) = match p.flag("--side") {
            Some("dpu") => ("HeteroNet relay, DPU side", Pu::Dpu),
            _ => ("HeteroNet relay, CPU side", Pu::Cpu),
        };
        out.push(PodProcess {
            name,
            pid: p.pid,
            pu,
        });
    }
    out.sort_by_key(|p| (p.name, p.pid));
    out
}

/// CPU seconds (user + system, all threads) of a live process.
pub fn process_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

/// utime + stime from a /proc/PID/stat text, in seconds.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field 14 (utime) and 15 (stime) of proc(5); `rest` starts at field 3.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// The CPUs a process may run on (`Cpus_allowed_list`).
pub fn process_cpus(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|s| s.trim().to_string())
}

pub fn short16(id: &str) -> &str {
    &id[..id.len().min(16)]
}

/// The CPU-side relay's counters socket (served by the relay the shim starts).
pub fn cpu_relay_socket(pod_id: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/heteropod-{}.stats.sock", short16(pod_id)))
}

/// The QEMU running the DPU guest (its pid file under `QEMU_STATE`), whose host CPU
/// time is what emulating the DPU costs here.
pub fn qemu_pid() -> Option<u32> {
    let state = std::env::var("QEMU_STATE").ok().filter(|s| !s.is_empty())?;
    std::fs::read_to_string(Path::new(&state).join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The DPU-side relay's counters: from its socket under the agent's state directory,
/// or, for a DPU in a guest, as the agent reports them (`heteropod status --json`).
pub async fn dpu_relay_counters(pod_id: &str) -> Option<Value> {
    if !dpu::remote() {
        return relay_counters(dpu_relay_socket(pod_id).as_deref()).await;
    }
    let doc = dpu::status_json().await.ok()?;
    doc["relays"]
        .as_array()?
        .iter()
        .find(|r| r["side"] == "dpu" && r["pod_id"] == pod_id)
        .and_then(|r| r["counters"].get("raw"))
        .filter(|v| v.is_object())
        .cloned()
}

/// The DPU-side relay's counters socket, somewhere under the agent's state directory.
pub fn dpu_relay_socket(pod_id: &str) -> Option<PathBuf> {
    let state = std::env::var("DPU_STATE_DIR").ok().unwrap_or_else(|| {
        let base = std::env::var("HETEROPOD_STATE").unwrap_or_else(|_| "/run/heteropod".into());
        format!("{base}/dpu")
    });
    find_file(Path::new(&state), &format!("{pod_id}.stats.sock"), 4)
}

fn find_file(dir: &Path, name: &str, depth: u32) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut subdirs = Vec::new();
    for e in entries.flatten() {
        if e.file_name() == name {
            return Some(e.path());
        }
        if depth > 0 && e.file_type().is_ok_and(|t| t.is_dir()) {
            subdirs.push(e.path());
        }
    }
    subdirs
        .into_iter()
        .find_map(|d| find_file(&d, name, depth - 1))
}

/// Reads one JSON document from a relay's counters socket; `None` when there is no
/// socket or it does not answer with JSON (the demo then prints "-").
pub async fn relay_counters(path: Option<&Path>) -> Option<Value> {
    let path = path?;
    let read = async {
        let mut conn = tokio::net::UnixStream::connect(path).await.ok()?;
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).await.ok()?;
        serde_json::from_slice::<Value>(&buf).ok()
    };
    tokio::time::timeout(STATS_SOCKET_TIMEOUT, read)
        .await
        .ok()
        .flatten()
}

/// Counter `key` of a relay document: `{"relay": {...}, "mux": {...}}` or flat.
pub fn counter(doc: &Value, section: &str, key: &str) -> Option<u64> {
    doc.get(section)
        .and_then(|s| s.get(key))
        .or_else(|| doc.get(key))
        .and_then(Value::as_u64)
}

/// `after - before` of one relay counter; `None` without both documents or the key.
pub fn delta(pair: Option<&(Value, Value)>, section: &str, key: &str) -> Option<u64> {
    let (b, a) = pair?;
    Some(counter(a, section, key)?.saturating_sub(counter(b, section, key).unwrap_or(0)))
}

/// How many CPUs a cpuset list names ("0-2,5": 4; "guest 0": 1, as a remote
/// DPU's row shows it).
pub fn cpu_count(list: &str) -> Option<usize> {
    let list = list.trim().trim_start_matches("guest").trim();
    let mut n = 0;
    for part in list.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi): (usize, usize) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
        n += hi.checked_sub(lo)? + 1;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_reads_utime_and_stime_after_the_name() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(cpu_count("0-2,5"), Some(4));
        assert_eq!(cpu_count("1"), Some(1));
        assert_eq!(cpu_count("guest 0"), Some(1));
        assert_eq!(cpu_count("-"), None);
        assert_eq!(cpu_count("3-1"), None);
    }

    #[test]
    fn deltas_need_both_documents() {
        let b = serde_json::json!({"relay": {"fast_connects": 2}});
        let a = serde_json::json!({"relay": {"fast_connects": 6}});
        let pair = (b, a);
        assert_eq!(delta(Some(&pair), "relay", "fast_connects"), Some(4));
        assert_eq!(delta(Some(&pair), "relay", "fast_accepts"), None);
        assert_eq!(delta(None, "relay", "fast_connects"), None);
    }

    #[test]
    fn counters_are_read_nested_or_flat() {
        let doc: Value = serde_json::json!({"relay": {"connects_ok": 3}, "bytes": 7});
        assert_eq!(counter(&doc, "relay", "connects_ok"), Some(3));
        assert_eq!(counter(&doc, "mux", "bytes"), Some(7));
        assert_eq!(counter(&doc, "mux", "nope"), None);
    }
}
