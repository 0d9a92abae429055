//! Validation and the minimal adaptation of a container's OCI spec for the
//! DPU. The client's bundle is never written: the adapted config.json goes
//! to the agent's own bundle directory with an absolute rootfs path.
use std::path::Path;

use serde_json::{json, Value};

use super::{
    cgroup::{parse_cpuset, CgroupParent, Reservation},
    policy::Policy,
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

/// Where the agent's own things are, which no request may name.
pub struct Own<'a> {
    pub state_dir: &'a Path,
    pub netns_dir: &'a Path,
}

/// Reads `<bundle>/config.json`; checks it against the node's `policy` and
/// returns the spec to run. A terminal is made by runc in the container
/// (`terminal` stays as asked; the caller may turn it on) and sent to the
/// agent over a console socket.
pub fn adapt(
    bundle: &Path,
    id: &str,
    parent: &CgroupParent,
    policy: &Policy,
    own: &Own<'_>,
) -> Result<Adapted> {
    let invalid =
        |why: String| Error::InvalidArgument(format!("bundle {}: {why}", bundle.display()));
    // Before reading anything from it: the bundle must be one the node shares.
    let real_bundle = policy.check_bundle(bundle, own.state_dir)?;
    let config = real_bundle.join("config.json");
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
    let root = real_bundle.join(root);
    if !root.is_dir() {
        return Err(invalid(format!(
            "rootfs {} is not a directory",
            root.display()
        )));
    }
    spec["root"]["path"] = json!(policy.check_rootfs(&root, own.state_dir)?);
    let terminal = spec["process"]["terminal"].as_bool() == Some(true);
    if !spec["linux"].is_object() {
        spec["linux"] = json!({});
    }
    policy.check_spec(&mut spec, own.netns_dir)?;
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
    use std::path::PathBuf;

    use super::*;

    /// A bundle (in its own bundle root) whose spec is `spec` over what
    /// `runc spec` gives (namespaces, masked paths, device rules).
    struct Bundle {
        root: tempfile::TempDir,
    }

    impl Bundle {
        fn new(spec: Value) -> Bundle {
            let root = tempfile::tempdir().unwrap();
            let b = root.path().join("b");
            std::fs::create_dir_all(b.join("rootfs")).unwrap();
            std::fs::create_dir_all(root.path().join("state/netns")).unwrap();
            let mut full = json!({
                "linux": {
                    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                                   {"type": "uts"}, {"type": "mount"}],
                    "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
                    "resources": {"devices": [{"allow": false, "access": "rwm"}]}}});
            merge(&mut full, spec);
            std::fs::write(b.join("config.json"), full.to_string()).unwrap();
            Bundle { root }
        }

        fn path(&self) -> PathBuf {
            self.root.path().join("b")
        }

        fn adapt(&self, id: &str) -> Result<Adapted> {
            let policy = Policy {
                bundle_roots: vec![self.root.path().into()],
                ..Policy::default()
            };
            let state = self.root.path().join("state");
            let own = Own {
                state_dir: &state,
                netns_dir: &state.join("netns"),
            };
            adapt(&self.path(), id, &parent(), &policy, &own)
        }
    }

    fn merge(base: &mut Value, over: Value) {
        match (base, over) {
            (Value::Object(b), Value::Object(o)) => {
                for (k, v) in o {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, o) => *b = o,
        }
    }

    fn parent() -> CgroupParent {
        CgroupParent::new("/sys/fs/cgroup".into(), "dpu".into(), "1", 1 << 30).unwrap()
    }

    #[test]
    fn spec_gets_dpu_cgroup_cpuset_and_absolute_root() {
        let b = Bundle::new(
            json!({"root": {"path": "rootfs"}, "process": {"args": ["sh"]},
            "linux": {"resources": {"cpu": {"quota": 50000, "period": 100000}, "memory": {"limit": 1048576}}}}),
        );
        let Adapted {
            spec: sut,
            reservation: r,
            terminal,
            ..
        } = b.adapt("c1").unwrap();
        assert!(!terminal);
        assert_eq!(sut["linux"]["cgroupsPath"], "/dpu/c1");
        assert_eq!(sut["linux"]["resources"]["cpu"]["cpus"], "1");
        assert_eq!(
            sut["root"]["path"],
            json!(b.path().join("rootfs").canonicalize().unwrap())
        );
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
        let b = Bundle::new(json!({"root": {"path": "rootfs"}}));
        let policy = Policy {
            bundle_roots: vec!["/nonexistent".into(), b.root.path().into()],
            ..Policy::default()
        };
        let own = Own {
            state_dir: Path::new("/nonexistent/state"),
            netns_dir: Path::new("/nonexistent/state/netns"),
        };
        let p = parent();
        let missing = adapt(Path::new("/nonexistent/bundle"), "c", &p, &policy, &own).unwrap_err();
        assert!(matches!(missing, Error::InvalidArgument(_)), "{missing}");
        assert!(matches!(
            adapt(Path::new("rel"), "c", &p, &policy, &own),
            Err(Error::InvalidArgument(_))
        ));
        let b = Bundle::new(json!({"root": {"path": "nope"}}));
        assert!(matches!(b.adapt("c"), Err(Error::InvalidArgument(_))));
        let b = Bundle::new(
            json!({"root": {"path": "rootfs"}, "linux": {"resources": {"cpu": {"cpus": "x"}}}}),
        );
        assert!(matches!(b.adapt("c"), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn a_rootfs_outside_the_bundle_roots_is_refused() {
        let b = Bundle::new(json!({"root": {"path": "/"}}));
        let e = b.adapt("c").unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
    }

    #[test]
    fn host_cgroup_and_cpuset_are_replaced_by_the_dpus() {
        let b = Bundle::new(json!({"root": {"path": "rootfs"},
            "linux": {"cgroupsPath": "/kubepods/pod1/c", "resources": {"cpu": {"cpus": "0"}}}}));
        let sut = b.adapt("c").unwrap().spec;
        assert_eq!(sut["linux"]["cgroupsPath"], "/dpu/c");
        assert_eq!(sut["linux"]["resources"]["cpu"]["cpus"], "1");
    }

    #[test]
    fn terminal_is_kept_for_runc_to_make() {
        let b = Bundle::new(json!({"root": {"path": "rootfs"},
            "process": {"args": ["sh"], "terminal": true}}));
        let sut = b.adapt("c").unwrap();
        assert!(sut.terminal);
        assert_eq!(sut.spec["process"]["terminal"], true);
    }

    #[test]
    fn shared_pid_namespace_is_refused_clearly() {
        let b = Bundle::new(json!({"root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}}));
        let e = b.adapt("c").unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
    }
}
