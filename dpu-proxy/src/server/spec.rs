//! Validation and the minimal adaptation of a container's OCI spec for the
//! DPU. The client's bundle is never written: the adapted config.json goes
//! to the agent's own bundle directory with an absolute rootfs path.
use std::path::Path;

use serde_json::{json, Value};

use super::{
    cgroup::{parse_cpuset, CgroupParent, Reservation},
    state::CriIdentity,
};
use crate::error::{Error, Result};

/// A spec ready for runc, what it reserves, and whether it wants a terminal.
#[derive(Debug)]
pub struct Adapted {
    pub spec: Value,
    pub reservation: Reservation,
    pub terminal: bool,
    pub cri: CriIdentity,
}

/// Reads `<bundle>/config.json`; checks it and returns the spec to run.
/// A terminal is made by runc in the container (`terminal` stays as asked;
/// the caller may turn it on) and sent to the agent over a console socket.
pub fn adapt(bundle: &Path, id: &str, parent: &CgroupParent) -> Result<Adapted> {
    let invalid =
        |why: String| Error::InvalidArgument(format!("bundle {}: {why}", bundle.display()));
    if !bundle.is_absolute() {
        return Err(invalid("path must be absolute".into()));
    }
    let config = bundle.join("config.json");
    let data =
        std::fs::read(&config).map_err(|e| invalid(format!("cannot read config.json: {e}")))?;
    let mut spec: Value =
        serde_json::from_slice(&data).map_err(|e| invalid(format!("config.json: {e}")))?;
    if !spec.is_object() {
        return Err(invalid("config.json is not an object".into()));
    }
    let root = spec["root"]["path"]
        .as_str()
        .ok_or_else(|| invalid("root.path is missing".into()))?;
    let root = bundle.join(root);
    if !root.is_dir() {
        return Err(invalid(format!(
            "rootfs {} is not a directory",
            root.display()
        )));
    }
    spec["root"]["path"] = json!(root);
    let terminal = spec["process"]["terminal"].as_bool() == Some(true);
    if !spec["linux"].is_object() {
        spec["linux"] = json!({});
    }
    // Namespaces the DPU cannot share with the host half of the Pod.
    if let Some(nss) = spec["linux"]["namespaces"].as_array() {
        for ns in nss {
            let t = ns["type"].as_str().unwrap_or_default();
            if ns["path"].is_string() && matches!(t, "pid" | "ipc") {
                return Err(Error::FailedPrecondition(format!(
                    "a {t} namespace shared with another container cannot span the CPU and the DPU"
                )));
            }
        }
    }
    let want = parent.path_for(id);
    // Whatever the host side chose (kubepods/...), the DPU's parent it is.
    if let Some(p) = spec["linux"]["cgroupsPath"].as_str().filter(|p| *p != want) {
        tracing::debug!(container = id, "cgroupsPath {p:?} replaced by {want:?}");
    }
    spec["linux"]["cgroupsPath"] = json!(want);
    if !spec["linux"]["resources"].is_object() {
        spec["linux"]["resources"] = json!({});
    }
    let res = &mut spec["linux"]["resources"];
    if !res["cpu"].is_object() {
        res["cpu"] = json!({});
    }
    // A cpuset within the DPU cores is kept; any other (e.g. the host's)
    // becomes the DPU's cores. A malformed one is refused.
    let keep = match res["cpu"]["cpus"].as_str().filter(|s| !s.is_empty()) {
        None => false,
        Some(c) => parse_cpuset(c)?.is_subset(&parent.cores),
    };
    if !keep {
        res["cpu"]["cpus"] = json!(parent.cpus);
    }
    let reservation = reservation_of(res);
    let cri = cri_identity(&spec);
    Ok(Adapted {
        spec,
        reservation,
        terminal,
        cri,
    })
}

/// The Pod and container name containerd's CRI plugin put in the annotations.
fn cri_identity(spec: &Value) -> CriIdentity {
    let a = &spec["annotations"];
    let get = |k: &str| a[k].as_str().unwrap_or_default().to_string();
    CriIdentity {
        pod_id: get("io.kubernetes.cri.sandbox-id"),
        name: get("io.kubernetes.cri.container-name"),
    }
}

/// Millicores from the CFS quota/period and bytes from the memory limit.
pub fn reservation_of(resources: &Value) -> Reservation {
    let quota = resources["cpu"]["quota"].as_i64().unwrap_or(0);
    let period = resources["cpu"]["period"]
        .as_u64()
        .unwrap_or(100_000)
        .max(1);
    Reservation {
        millicores: if quota > 0 {
            quota as u64 * 1000 / period
        } else {
            0
        },
        memory_bytes: resources["memory"]["limit"]
            .as_i64()
            .filter(|l| *l > 0)
            .unwrap_or(0) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(spec: Value) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("rootfs")).unwrap();
        std::fs::write(tmp.path().join("config.json"), spec.to_string()).unwrap();
        tmp
    }

    fn parent() -> CgroupParent {
        CgroupParent::new("/sys/fs/cgroup".into(), "dpu".into(), "1", 1 << 30).unwrap()
    }

    #[test]
    fn spec_gets_dpu_cgroup_cpuset_and_absolute_root() {
        let b = bundle(
            json!({"root": {"path": "rootfs"}, "process": {"args": ["sh"]},
            "linux": {"resources": {"cpu": {"quota": 50000, "period": 100000}, "memory": {"limit": 1048576}}}}),
        );
        let Adapted {
            spec: sut,
            reservation: r,
            terminal,
            ..
        } = adapt(b.path(), "c1", &parent()).unwrap();
        assert!(!terminal);
        assert_eq!(sut["linux"]["cgroupsPath"], "/dpu/c1");
        assert_eq!(sut["linux"]["resources"]["cpu"]["cpus"], "1");
        assert_eq!(sut["root"]["path"], json!(b.path().join("rootfs")));
        assert_eq!(
            r,
            Reservation {
                millicores: 500,
                memory_bytes: 1 << 20
            }
        );
    }

    #[test]
    fn bad_bundles_are_invalid_arguments() {
        let p = parent();
        let missing = adapt(Path::new("/nonexistent/bundle"), "c", &p).unwrap_err();
        assert!(matches!(missing, Error::InvalidArgument(_)), "{missing}");
        assert!(matches!(
            adapt(Path::new("rel"), "c", &p),
            Err(Error::InvalidArgument(_))
        ));
        let b = bundle(json!({"root": {"path": "nope"}}));
        assert!(matches!(
            adapt(b.path(), "c", &p),
            Err(Error::InvalidArgument(_))
        ));
        let b = bundle(
            json!({"root": {"path": "rootfs"}, "linux": {"resources": {"cpu": {"cpus": "x"}}}}),
        );
        assert!(matches!(
            adapt(b.path(), "c", &p),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn host_cgroup_and_cpuset_are_replaced_by_the_dpus() {
        let b = bundle(json!({"root": {"path": "rootfs"},
            "linux": {"cgroupsPath": "/kubepods/pod1/c", "resources": {"cpu": {"cpus": "0"}}}}));
        let sut = adapt(b.path(), "c", &parent()).unwrap().spec;
        assert_eq!(sut["linux"]["cgroupsPath"], "/dpu/c");
        assert_eq!(sut["linux"]["resources"]["cpu"]["cpus"], "1");
    }

    #[test]
    fn terminal_is_kept_for_runc_to_make() {
        let b = bundle(json!({"root": {"path": "rootfs"},
            "process": {"args": ["sh"], "terminal": true}}));
        let sut = adapt(b.path(), "c", &parent()).unwrap();
        assert!(sut.terminal);
        assert_eq!(sut.spec["process"]["terminal"], true);
    }

    #[test]
    fn shared_pid_namespace_is_refused_clearly() {
        let b = bundle(json!({"root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}}));
        let e = adapt(b.path(), "c", &parent()).unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
    }
}
