//! cgroup v1 metrics, read straight from cgroupfs into containerd's v1 types.
//!
//! (The shim crate's v1 collector parses v2 `cpu.stat` keys and leaves CPU usage
//! at zero on v1, so CRI stats showed no CPU; this reader follows runc's v1 files.)

use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat, Throttle,
};

use crate::error::{Error, Result};

const ROOT: &str = "/sys/fs/cgroup";
/// USER_HZ: cpuacct.stat counts in clock ticks.
const TICK_NS: u64 = 10_000_000;

/// Directory of `controller` for a process, from the text of `/proc/<pid>/cgroup`.
pub fn controller_dir(proc_cgroup: &str, controller: &str) -> Option<PathBuf> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let mut names = controllers.split(',');
        names.any(|c| c == controller).then(|| {
            Path::new(ROOT)
                .join(controllers)
                .join(path.trim_start_matches('/'))
        })
    })
}

fn read_u64(dir: &Path, file: &str) -> u64 {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn read_pairs(dir: &Path, file: &str) -> Vec<(String, u64)> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn entry(dir: &Path, prefix: &str) -> MemoryEntry {
    MemoryEntry {
        usage: read_u64(dir, &format!("{prefix}.usage_in_bytes")),
        limit: read_u64(dir, &format!("{prefix}.limit_in_bytes")),
        max: read_u64(dir, &format!("{prefix}.max_usage_in_bytes")),
        failcnt: read_u64(dir, &format!("{prefix}.failcnt")),
        ..Default::default()
    }
}

fn cpu(cpuacct: &Path, cpu: Option<&Path>) -> CPUStat {
    let mut usage = CPUUsage {
        total: read_u64(cpuacct, "cpuacct.usage"),
        per_cpu: std::fs::read_to_string(cpuacct.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect(),
        ..Default::default()
    };
    for (k, v) in read_pairs(cpuacct, "cpuacct.stat") {
        match k.as_str() {
            "user" => usage.user = v.saturating_mul(TICK_NS),
            "system" => usage.kernel = v.saturating_mul(TICK_NS),
            _ => {}
        }
    }
    let mut throttling = Throttle::default();
    if let Some(cpu) = cpu {
        for (k, v) in read_pairs(cpu, "cpu.stat") {
            match k.as_str() {
                "nr_periods" => throttling.periods = v,
                "nr_throttled" => throttling.throttled_periods = v,
                "throttled_time" => throttling.throttled_time = v,
                _ => {}
            }
        }
    }
    CPUStat {
        usage: Some(usage).into(),
        throttling: Some(throttling).into(),
        ..Default::default()
    }
}

fn memory(dir: &Path) -> (MemoryStat, MemoryOomControl) {
    let mut m = MemoryStat::default();
    for (k, v) in read_pairs(dir, "memory.stat") {
        let field = match k.as_str() {
            "cache" => &mut m.cache,
            "rss" => &mut m.rss,
            "rss_huge" => &mut m.rss_huge,
            "mapped_file" => &mut m.mapped_file,
            "dirty" => &mut m.dirty,
            "writeback" => &mut m.writeback,
            "pgpgin" => &mut m.pg_pg_in,
            "pgpgout" => &mut m.pg_pg_out,
            "pgfault" => &mut m.pg_fault,
            "pgmajfault" => &mut m.pg_maj_fault,
            "inactive_anon" => &mut m.inactive_anon,
            "active_anon" => &mut m.active_anon,
            "inactive_file" => &mut m.inactive_file,
            "active_file" => &mut m.active_file,
            "unevictable" => &mut m.unevictable,
            "hierarchical_memory_limit" => &mut m.hierarchical_memory_limit,
            "hierarchical_memsw_limit" => &mut m.hierarchical_swap_limit,
            "total_cache" => &mut m.total_cache,
            "total_rss" => &mut m.total_rss,
            "total_rss_huge" => &mut m.total_rss_huge,
            "total_mapped_file" => &mut m.total_mapped_file,
            "total_dirty" => &mut m.total_dirty,
            "total_writeback" => &mut m.total_writeback,
            "total_pgpgin" => &mut m.total_pg_pg_in,
            "total_pgpgout" => &mut m.total_pg_pg_out,
            "total_pgfault" => &mut m.total_pg_fault,
            "total_pgmajfault" => &mut m.total_pg_maj_fault,
            "total_inactive_anon" => &mut m.total_inactive_anon,
            "total_active_anon" => &mut m.total_active_anon,
            "total_inactive_file" => &mut m.total_inactive_file,
            "total_active_file" => &mut m.total_active_file,
            "total_unevictable" => &mut m.total_unevictable,
            _ => continue,
        };
        *field = v;
    }
    m.usage = Some(entry(dir, "memory")).into();
    m.swap = Some(entry(dir, "memory.memsw")).into();
    m.kernel = Some(entry(dir, "memory.kmem")).into();
    m.kernel_tcp = Some(entry(dir, "memory.kmem.tcp")).into();
    let mut oom = MemoryOomControl::default();
    for (k, v) in read_pairs(dir, "memory.oom_control") {
        match k.as_str() {
            "oom_kill_disable" => oom.oom_kill_disable = v,
            "under_oom" => oom.under_oom = v,
            "oom_kill" => oom.oom_kill = v,
            _ => {}
        }
    }
    (m, oom)
}

/// Metrics of the v1 cgroups `pid` is in.
pub fn metrics(pid: u32) -> Result<Metrics> {
    let path = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::NotFound(format!("process {pid} is gone, no cgroup to read ({e})")))?;
    let mut metrics = Metrics::default();
    if let Some(cpuacct) = controller_dir(&text, "cpuacct") {
        let cpu_dir = controller_dir(&text, "cpu");
        metrics.cpu = Some(cpu(&cpuacct, cpu_dir.as_deref())).into();
    }
    if let Some(dir) = controller_dir(&text, "memory") {
        let (m, oom) = memory(&dir);
        metrics.memory = Some(m).into();
        metrics.memory_oom_control = Some(oom).into();
    }
    if let Some(dir) = controller_dir(&text, "pids") {
        let limit = std::fs::read_to_string(dir.join("pids.max"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        metrics.pids = Some(PidsStat {
            current: read_u64(&dir, "pids.current"),
            limit,
            ..Default::default()
        })
        .into();
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_dirs_follow_the_mount_name() {
        let text = "12:pids:/a\n5:cpu,cpuacct:/b/c\n4:memory:/kubepods/pod1/c1\n0::/\n";
        assert_eq!(
            controller_dir(text, "memory").unwrap(),
            Path::new("/sys/fs/cgroup/memory/kubepods/pod1/c1")
        );
        assert_eq!(
            controller_dir(text, "cpuacct").unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct/b/c")
        );
        assert_eq!(controller_dir("0::/x\n", "memory"), None);
    }

    #[test]
    fn metrics_of_a_gone_process_are_not_found() {
        assert!(matches!(metrics(u32::MAX), Err(Error::NotFound(_))));
    }

    #[test]
    fn metrics_of_this_process_have_cpu_usage_on_v1() {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            return; // unified hierarchy: v1 files absent
        }
        let sut = metrics(std::process::id()).unwrap();
        assert!(sut.cpu.usage.total > 0);
        assert!(sut.memory.usage.usage > 0);
    }
}
