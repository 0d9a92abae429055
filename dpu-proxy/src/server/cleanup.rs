//! `heteropod-dpu-proxy --cleanup`: removes everything an agent made (for
//! `make down`), with the agent stopped: containers (runc delete --force),
//! relays, Pod netns mounts, the cgroup parent and the state directory.
use std::{path::Path, process::Command};

use nix::{mount::MntFlags, sys::signal::Signal, unistd::Pid};

use super::{process::proc_start_time, Config};

const CONTROLLERS: [&str; 10] = [
    "cpuset", "cpu", "cpuacct", "memory", "pids", "freezer", "devices", "blkio", "net_cls",
    "systemd",
];

/// Best effort: every step runs even if an earlier one failed; returns the
/// problems met.
pub fn cleanup(cfg: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let runc_root = cfg.state_dir.join("runc");
    for e in std::fs::read_dir(&runc_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        let out = Command::new(&cfg.runc)
            .arg("--root")
            .arg(&runc_root)
            .args(["delete", "--force"])
            .arg(e.file_name())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => problems.push(format!(
                "runc delete {:?}: {}",
                e.file_name(),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(err) => problems.push(format!("run {}: {err}", cfg.runc.display())),
        }
    }
    for e in std::fs::read_dir(cfg.state_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let rec = std::fs::read(e.path())
            .ok()
            .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok());
        let pid = rec
            .as_ref()
            .and_then(|r| r["relay_pid"].as_u64())
            .unwrap_or(0) as u32;
        let start = rec.as_ref().and_then(|r| r["relay_start_time"].as_u64());
        if pid != 0 && proc_start_time(pid) == start {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
    for e in std::fs::read_dir(cfg.state_dir.join("netns"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = nix::mount::umount2(&e.path(), MntFlags::MNT_DETACH);
    }
    for c in CONTROLLERS {
        let parent = cfg.cgroup_root.join(c).join(&cfg.cgroup_parent);
        remove_cgroup_tree(&parent, &mut problems);
    }
    if let Err(e) = std::fs::remove_dir_all(&cfg.state_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            problems.push(format!("remove {}: {e}", cfg.state_dir.display()));
        }
    }
    problems
}

fn remove_cgroup_tree(dir: &Path, problems: &mut Vec<String>) {
    if !dir.is_dir() {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            remove_cgroup_tree(&e.path(), problems);
        }
    }
    // Relays live in the parent itself; one just killed may take a moment to exit.
    let mut tries = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) && tries < 40 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => {
                problems.push(format!("remove cgroup {}: {e}", dir.display()));
                return;
            }
        }
    }
}
