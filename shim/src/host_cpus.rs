//! The host's own cores (`[host] cpus`): where CPU-placed containers, the shim
//! and its CPU-side relays run when the node sets cores aside for its DPU, so
//! that those cores serve the DPU alone (an emulated DPU is a cpuset of this
//! host; without this, host work would spill onto it and "host CPU freed"
//! would be shared rather than measured).
//!
//! Containers get the list as `linux.resources.cpu.cpus` in their OCI spec,
//! only when they set none themselves: the kubelet's CPU manager (or the Pod)
//! decides for a container that asks. The shim's threads and its relays are
//! pinned with `sched_setaffinity`; the relays inherit it, runc does not
//! (`sys::affinity`: the container's cpuset decides). Off (empty) by default:
//! a node without dedicated DPU cores leaves everything alone.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use nix::{
    sched::{sched_setaffinity, CpuSet},
    unistd::Pid,
};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Parses a cpuset list (`"0"`, `"0-2,5"`) into its CPU numbers.
pub fn parse(list: &str) -> std::result::Result<BTreeSet<usize>, String> {
    let bad = || format!("{list:?} is not a cpuset list such as \"0\" or \"0-2,5\"");
    let mut out = BTreeSet::new();
    for part in list.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let lo: usize = lo.trim().parse().map_err(|_| bad())?;
        let hi: usize = hi.trim().parse().map_err(|_| bad())?;
        if lo > hi || hi >= CpuSet::count() {
            return Err(bad());
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

/// Sets `linux.resources.cpu.cpus` to `cpus` unless the spec already names
/// CPUs. Returns whether the spec changed.
pub fn edit_spec(spec: &mut Value, cpus: &str) -> Result<bool> {
    let root = spec
        .as_object_mut()
        .ok_or_else(|| Error::InvalidArgument("OCI spec is not a JSON object".into()))?;
    let mut node = root;
    for key in ["linux", "resources", "cpu"] {
        let child = node.entry(key).or_insert_with(|| Value::Object(Map::new()));
        if child.is_null() {
            *child = Value::Object(Map::new());
        }
        node = child
            .as_object_mut()
            .ok_or_else(|| Error::InvalidArgument(format!("OCI spec: {key} is not an object")))?;
    }
    let set = node
        .get("cpus")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.trim().is_empty());
    if set {
        return Ok(false);
    }
    node.insert("cpus".into(), Value::String(cpus.to_string()));
    Ok(true)
}

/// [`edit_spec`] on `<bundle>/config.json`, replaced atomically.
pub fn apply_to_bundle(id: &str, bundle: &Path, cpus: &str) -> Result<()> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(Error::io(format!("read {}", path.display())))?;
    let mut spec: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::InvalidArgument(format!("bundle {}: {e}", path.display())))?;
    if !edit_spec(&mut spec, cpus)? {
        tracing::debug!(
            id,
            "the container names its own CPUs; [host] cpus not applied"
        );
        return Ok(());
    }
    let tmp = bundle.join(".config.json.host-cpus");
    std::fs::write(&tmp, serde_json::to_vec(&spec)?)
        .map_err(Error::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(Error::io(format!("replace {}", path.display())))?;
    tracing::debug!(id, cpus, "container limited to the host's cores");
    Ok(())
}

/// Whether this shim pinned itself ([`pin_process`] of 0 succeeded once).
static SHIM_PINNED: AtomicBool = AtomicBool::new(false);

/// Whether the shim runs pinned to the host's cores, so that runc must be
/// started without that pinning.
pub fn shim_pinned() -> bool {
    SHIM_PINNED.load(Ordering::Relaxed)
}

/// Pins every thread of process `pid` (0: this process) to `cpus`. Threads
/// started later inherit it from the thread that starts them.
pub fn pin_process(pid: u32, cpus: &str) -> Result<()> {
    let set = cpu_set(cpus)?;
    let dir = if pid == 0 {
        "/proc/self/task".to_string()
    } else {
        format!("/proc/{pid}/task")
    };
    let tasks = std::fs::read_dir(&dir).map_err(Error::io(format!("list {dir}")))?;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        match sched_setaffinity(Pid::from_raw(tid), &set) {
            // A thread that ended meanwhile needs no pinning.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                return Err(Error::io(format!("sched_setaffinity({tid}, {cpus})"))(
                    e.into(),
                ))
            }
        }
    }
    if pid == 0 {
        SHIM_PINNED.store(true, Ordering::Relaxed);
    }
    Ok(())
}

fn cpu_set(cpus: &str) -> Result<CpuSet> {
    let list = parse(cpus).map_err(Error::InvalidArgument)?;
    let mut set = CpuSet::new();
    for cpu in list {
        set.set(cpu)
            .map_err(|e| Error::InvalidArgument(format!("cpu {cpu}: {e}")))?;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cpuset_lists_parse() {
        let sut = parse("0-2,5").unwrap();
        assert_eq!(sut.into_iter().collect::<Vec<_>>(), [0, 1, 2, 5]);
        assert_eq!(parse(" 1 ").unwrap().len(), 1);
        for bad in ["", "a", "2-1", "0,", "-1", "1-", "100000"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_spec_without_cpus_gets_the_host_cpus() {
        let mut sut = json!({"ociVersion": "1.0.2", "process": {"args": ["sh"]}});
        assert!(edit_spec(&mut sut, "0").unwrap());
        assert_eq!(sut["linux"]["resources"]["cpu"]["cpus"], "0");
        // Idempotent: the second pass sees CPUs set.
        assert!(!edit_spec(&mut sut, "0").unwrap());

        let mut sut = json!({"linux": {"resources": {"cpu": {"shares": 2, "cpus": ""}}}});
        assert!(edit_spec(&mut sut, "0-1").unwrap());
        assert_eq!(sut["linux"]["resources"]["cpu"]["cpus"], "0-1");
        assert_eq!(sut["linux"]["resources"]["cpu"]["shares"], 2);

        let mut sut = json!({"linux": {"resources": null}});
        assert!(edit_spec(&mut sut, "0").unwrap());
        assert_eq!(sut["linux"]["resources"]["cpu"]["cpus"], "0");
    }

    #[test]
    fn a_container_that_names_its_cpus_keeps_them() {
        let mut sut = json!({"linux": {"resources": {"cpu": {"cpus": "1"}}}});
        assert!(!edit_spec(&mut sut, "0").unwrap());
        assert_eq!(sut["linux"]["resources"]["cpu"]["cpus"], "1");
    }

    #[test]
    fn a_malformed_spec_is_an_error() {
        assert!(edit_spec(&mut json!([]), "0").is_err());
        assert!(edit_spec(&mut json!({"linux": 3}), "0").is_err());
    }

    #[test]
    fn the_bundle_is_edited_in_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"linux":{}}"#).unwrap();
        apply_to_bundle("c", dir.path(), "0").unwrap();
        let spec: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(spec["linux"]["resources"]["cpu"]["cpus"], "0");
        assert!(apply_to_bundle("c", &dir.path().join("absent"), "0").is_err());
    }

    #[test]
    fn a_process_is_pinned_on_every_thread() {
        // A real child with a second thread, pinned to one CPU it may use.
        let allowed = nix::sched::sched_getaffinity(Pid::from_raw(0)).unwrap();
        let cpu = (0..CpuSet::count())
            .find(|c| allowed.is_set(*c).unwrap_or(false))
            .unwrap();
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import threading,time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"])
            .spawn()
            .expect("python3 (hack/install-deps.sh installs it)");
        let pid = child.id();
        let tasks = || -> Vec<_> {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .flatten()
                .collect()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tasks().len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        pin_process(pid, &cpu.to_string()).unwrap();
        let tasks = tasks();
        assert!(tasks.len() >= 2, "the child has {} threads", tasks.len());
        for t in tasks {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap();
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap();
            assert_eq!(line.trim(), cpu.to_string());
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(pin_process(1, "not-a-list").is_err());
    }
}
