//! The DPU's cgroup parent (cgroup v1): cpuset limited to the DPU cores and a
//! memory limit; containers go below it as `/<parent>/<id>`. Also the
//! accounting of what running containers reserve.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Controllers the agent creates its parent in (runc adds the rest).
const CONTROLLERS: [&str; 7] = [
    "cpuset", "cpu", "cpuacct", "memory", "pids", "freezer", "devices",
];

/// What a container's limits take from the DPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub millicores: u64,
    pub memory_bytes: u64,
}

impl std::ops::Add for Reservation {
    type Output = Reservation;
    fn add(self, o: Reservation) -> Reservation {
        Reservation {
            millicores: self.millicores + o.millicores,
            memory_bytes: self.memory_bytes + o.memory_bytes,
        }
    }
}

/// Parses a cpuset list ("0-2,5").
pub fn parse_cpuset(s: &str) -> Result<BTreeSet<u32>> {
    let bad = || Error::InvalidArgument(format!("invalid cpuset {s:?}"));
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u32 = a.trim().parse().map_err(|_| bad())?;
        let b: u32 = b.trim().parse().map_err(|_| bad())?;
        if a > b || b - a > 4096 {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// The DPU's totals and where its cgroups live.
#[derive(Debug, Clone)]
pub struct CgroupParent {
    pub root: PathBuf,
    pub name: String,
    pub cpus: String,
    pub cores: BTreeSet<u32>,
    pub memory_bytes: u64,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn write(p: &Path, v: &str) -> Result<()> {
    std::fs::write(p, v).map_err(Error::io(format!("write {v:?} to {}", p.display())))
}

/// Container usage from its cgroups.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Usage {
    pub memory_usage: u64,
    pub memory_max_usage: u64,
    pub memory_limit: u64,
    pub memory_failcnt: u64,
    pub cpu_nanos: u64,
    pub pids: u64,
    pub oom_kills: u64,
}

impl CgroupParent {
    pub fn new(root: PathBuf, name: String, cpus: &str, memory_bytes: u64) -> Result<Self> {
        let cores = parse_cpuset(cpus)?;
        if name.is_empty() || name.split('/').any(|c| c.is_empty() || c == "..") {
            return Err(Error::InvalidArgument(format!(
                "invalid cgroup parent {name:?}"
            )));
        }
        Ok(CgroupParent {
            root,
            name,
            cpus: cpus.trim().into(),
            cores,
            memory_bytes,
        })
    }

    fn dir(&self, controller: &str, id: Option<&str>) -> PathBuf {
        let d = self.root.join(controller).join(&self.name);
        id.map(|i| d.join(i)).unwrap_or(d)
    }

    /// cgroupsPath for a container's spec.
    pub fn path_for(&self, id: &str) -> String {
        format!("/{}/{id}", self.name)
    }

    /// Creates the parent and applies the DPU's cpuset and memory limit.
    pub fn setup(&self) -> Result<()> {
        for c in CONTROLLERS {
            if self.root.join(c).is_dir() {
                let d = self.dir(c, None);
                std::fs::create_dir_all(&d)
                    .map_err(Error::io(format!("create {}", d.display())))?;
            }
        }
        let cpuset = self.dir("cpuset", None);
        // A fresh cpuset cgroup has empty mems; it needs the root's.
        let mems = std::fs::read_to_string(self.root.join("cpuset/cpuset.mems"))
            .unwrap_or_else(|_| "0".into());
        write(&cpuset.join("cpuset.mems"), mems.trim())?;
        write(&cpuset.join("cpuset.cpus"), &self.cpus)?;
        if self.memory_bytes > 0 {
            write(
                &self.dir("memory", None).join("memory.limit_in_bytes"),
                &self.memory_bytes.to_string(),
            )?;
        }
        Ok(())
    }

    /// Moves process `pid` (all its threads) into the parent itself: DPU-side
    /// relays then run on the DPU's cores and count against its memory and
    /// CPU, like its containers.
    pub fn confine(&self, pid: u32) -> Result<()> {
        for c in ["cpuset", "cpu", "cpuacct", "memory"] {
            let d = self.dir(c, None);
            if d.is_dir() {
                write(&d.join("cgroup.procs"), &pid.to_string())?;
            }
        }
        Ok(())
    }

    /// Removes the parent (only succeeds when no container cgroup is left).
    pub fn teardown(&self) {
        for c in CONTROLLERS {
            let _ = std::fs::remove_dir(self.dir(c, None));
        }
    }

    /// Removes cgroups runc left behind for `id` (runc delete normally does).
    pub fn remove(&self, id: &str) {
        for c in CONTROLLERS {
            let _ = std::fs::remove_dir(self.dir(c, Some(id)));
        }
    }

    /// True if any controller still has a cgroup for `id`.
    pub fn exists(&self, id: &str) -> bool {
        CONTROLLERS.iter().any(|c| self.dir(c, Some(id)).exists())
    }

    /// Usage of one container (`Some(id)`) or of the whole DPU (`None`).
    pub fn usage(&self, id: Option<&str>) -> Usage {
        let mem = self.dir("memory", id);
        let oom_kills = std::fs::read_to_string(mem.join("memory.oom_control"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|v| v.trim().parse().ok())
                })
            })
            .unwrap_or_default();
        Usage {
            memory_usage: read_u64(&mem.join("memory.usage_in_bytes")).unwrap_or_default(),
            memory_max_usage: read_u64(&mem.join("memory.max_usage_in_bytes")).unwrap_or_default(),
            memory_limit: read_u64(&mem.join("memory.limit_in_bytes")).unwrap_or_default(),
            memory_failcnt: read_u64(&mem.join("memory.failcnt")).unwrap_or_default(),
            cpu_nanos: read_u64(&self.dir("cpuacct", id).join("cpuacct.usage")).unwrap_or_default(),
            pids: read_u64(&self.dir("pids", id).join("pids.current")).unwrap_or_default(),
            oom_kills,
        }
    }

    /// Pids in a container's cpuset cgroup (used by tests and checks).
    pub fn procs(&self, id: &str) -> Vec<u32> {
        std::fs::read_to_string(self.dir("cpuset", Some(id)).join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuset_lists_parse() {
        assert_eq!(
            parse_cpuset("1").unwrap().into_iter().collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(parse_cpuset("0-2,5").unwrap().len(), 4);
        for bad in ["", "a", "3-1", "1-", ",", "0-99999"] {
            assert!(parse_cpuset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parent_name_cannot_escape_the_hierarchy() {
        for bad in ["", "../x", "a//b", "/a"] {
            assert!(
                CgroupParent::new("/sys/fs/cgroup".into(), bad.into(), "0", 0).is_err(),
                "{bad}"
            );
        }
        let sut =
            CgroupParent::new("/sys/fs/cgroup".into(), "heteropod-dpu".into(), "1", 0).unwrap();
        assert_eq!(sut.path_for("c1"), "/heteropod-dpu/c1");
    }

    #[test]
    fn usage_of_a_missing_cgroup_is_zero() {
        let tmp = tempfile::tempdir().unwrap();
        let sut = CgroupParent::new(tmp.path().into(), "p".into(), "0", 0).unwrap();
        assert_eq!(sut.usage(Some("nope")), Usage::default());
    }
}
