//! What a container on this DPU may ask for: the node's policy (`[policy]`
//! of the agent's config file) and the checks every CreateContainer, Exec
//! and Update pass before runc sees them. An authenticated client is still
//! not trusted with the node: no hooks, no namespaces the agent did not make,
//! bundles and bind mounts only from the directories the node names,
//! capabilities and devices beyond the defaults only when the node says so.
mod devices;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// containerd's (and Docker's) default capabilities.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
/// Paths of the defaults that keep a root process in a container off the
/// host kernel's knobs: they must stay masked / read-only.
const REQUIRED_MASKED: [&str; 4] = [
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/sys/firmware",
];
const REQUIRED_READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
/// Filesystems that show the container's own namespaces, not host data.
const PSEUDO_FS: [&str; 7] = [
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

/// `[policy]` in the agent's config file; the defaults suit a node with a
/// stock containerd and kubelet.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Bundles, and their rootfs, must be under one of these (containerd's
    /// task directory).
    pub bundle_roots: Vec<PathBuf>,
    /// Bind mounts may come from under these (besides the bundle roots): the
    /// CRI plugin's per-Pod files, the kubelet's volumes.
    pub mount_sources: Vec<PathBuf>,
    /// Host device nodes containers may be given.
    pub devices: Vec<PathBuf>,
    /// Capabilities allowed besides [`DEFAULT_CAPABILITIES`].
    pub capabilities: Vec<String>,
    /// Containers may use the DPU's own network (and UTS) namespace.
    pub host_network: bool,
    /// Privileged containers: any capability and device, unmasked /proc,
    /// writable /sys. Mount sources and namespaces are checked all the same.
    pub privileged: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            bundle_roots: vec!["/run/containerd/io.containerd.runtime.v2.task".into()],
            mount_sources: vec![
                "/var/lib/containerd/io.containerd.grpc.v1.cri".into(),
                "/run/containerd/io.containerd.grpc.v1.cri".into(),
                "/var/lib/kubelet/pods".into(),
            ],
            devices: Vec::new(),
            capabilities: Vec::new(),
            host_network: false,
            privileged: false,
        }
    }
}

fn denied(what: String) -> Error {
    Error::PermissionDenied(what)
}

/// `path` resolved (symlinks and `..`), so prefix checks mean what they say.
fn resolve(path: &Path, what: &str) -> Result<PathBuf> {
    path.canonicalize()
        .map_err(|e| Error::InvalidArgument(format!("{what} {}: {e}", path.display())))
}

/// Directories that exist, resolved; missing ones are left out.
fn resolved_roots(roots: &[PathBuf]) -> Vec<PathBuf> {
    roots.iter().filter_map(|r| r.canonicalize().ok()).collect()
}

fn cap_name(c: &str) -> String {
    let c = c.to_ascii_uppercase();
    if c.starts_with("CAP_") {
        c
    } else {
        format!("CAP_{c}")
    }
}

impl Policy {
    /// Checks the policy itself at start-up: device paths must be device
    /// nodes (a typo must not pass); missing directories are logged.
    pub fn validate(&self) -> Result<()> {
        devices::host_devices(&self.devices)?;
        for d in self.bundle_roots.iter().chain(&self.mount_sources) {
            if !d.is_dir() {
                tracing::warn!(
                    "[policy]: {} does not exist (yet); nothing under it is accepted until it does",
                    d.display()
                );
            }
        }
        Ok(())
    }

    /// The bundle directory resolved, if it lies under a bundle root and
    /// outside the agent's own state.
    pub fn check_bundle(&self, bundle: &Path, state_dir: &Path) -> Result<PathBuf> {
        if !bundle.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "bundle {}: path must be absolute",
                bundle.display()
            )));
        }
        let real = resolve(bundle, "bundle")?;
        self.check_under_bundle_roots(&real, "bundle", state_dir)?;
        Ok(real)
    }

    /// The rootfs resolved, under a bundle root like its bundle.
    pub fn check_rootfs(&self, rootfs: &Path, state_dir: &Path) -> Result<PathBuf> {
        let real = resolve(rootfs, "rootfs")?;
        self.check_under_bundle_roots(&real, "rootfs", state_dir)?;
        Ok(real)
    }

    fn check_under_bundle_roots(&self, real: &Path, what: &str, state_dir: &Path) -> Result<()> {
        let roots = resolved_roots(&self.bundle_roots);
        let own = state_dir
            .canonicalize()
            .unwrap_or_else(|_| state_dir.into());
        if real.starts_with(&own) || !roots.iter().any(|r| real.starts_with(r)) {
            return Err(denied(format!(
                "{what} {} is outside the bundle roots this DPU accepts ([policy] bundle_roots: {})",
                real.display(),
                list(&self.bundle_roots)
            )));
        }
        Ok(())
    }

    /// Checks a container's spec and resolves its bind-mount sources in it.
    /// `netns_dir` is where the agent makes Pod network namespaces.
    pub fn check_spec(&self, spec: &mut Value, netns_dir: &Path) -> Result<()> {
        check_hooks(spec)?;
        self.check_namespaces(spec, netns_dir)?;
        self.check_mounts(spec)?;
        if spec["linux"]["seccomp"]["listenerPath"]
            .as_str()
            .is_some_and(|p| !p.is_empty())
        {
            return Err(denied(
                "a seccomp listenerPath would hand a host socket the container's seccomp descriptor".into(),
            ));
        }
        if self.privileged {
            return Ok(());
        }
        self.check_capabilities(&spec["process"])?;
        check_masked(spec)?;
        let allowed = devices::host_devices(&self.devices)?;
        devices::check(spec, &allowed).map_err(|e| denied(format!("{e}; {}", needs_privileged())))
    }

    /// An exec's process: its capabilities.
    pub fn check_process(&self, process: &Value) -> Result<()> {
        if self.privileged {
            return Ok(());
        }
        self.check_capabilities(process)
    }

    /// An update's resources: no device rules (they would widen the cgroup).
    pub fn check_update(&self, resources: &Value) -> Result<()> {
        let has_devices = resources["devices"]
            .as_array()
            .is_some_and(|d| !d.is_empty());
        if has_devices && !self.privileged {
            return Err(denied(format!(
                "an update may not change device rules; {}",
                needs_privileged()
            )));
        }
        Ok(())
    }

    fn check_capabilities(&self, process: &Value) -> Result<()> {
        let extra: Vec<String> = self.capabilities.iter().map(|c| cap_name(c)).collect();
        let caps = &process["capabilities"];
        for set in [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ] {
            for cap in caps[set].as_array().into_iter().flatten() {
                let name = cap_name(cap.as_str().unwrap_or_default());
                if !DEFAULT_CAPABILITIES.contains(&name.as_str()) && !extra.contains(&name) {
                    return Err(denied(format!(
                        "capability {name} ({set}) is not allowed on this DPU ([policy] capabilities); {}",
                        needs_privileged()
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_namespaces(&self, spec: &Value, netns_dir: &Path) -> Result<()> {
        let nss = spec["linux"]["namespaces"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let own_netns = netns_dir.canonicalize().ok();
        let mut have = Vec::new();
        for ns in &nss {
            let t = ns["type"].as_str().unwrap_or_default();
            have.push(t);
            let Some(path) = ns["path"].as_str() else {
                continue;
            };
            match t {
                "pid" | "ipc" => {
                    return Err(Error::FailedPrecondition(format!(
                    "a {t} namespace shared with another container cannot span the CPU and the DPU"
                )))
                }
                "network" => {
                    let made_here = Path::new(path)
                        .canonicalize()
                        .ok()
                        .and_then(|p| p.parent().map(Path::to_path_buf))
                        .is_some_and(|parent| Some(parent) == own_netns);
                    if !made_here {
                        return Err(denied(format!(
                            "network namespace {path} was not made by this agent (a Pod's DPU half); \
                             host namespaces are not allowed"
                        )));
                    }
                }
                _ => {
                    return Err(denied(format!(
                        "joining the {t} namespace {path}: host namespaces are not allowed"
                    )))
                }
            }
        }
        for t in ["pid", "ipc", "mount", "network", "uts"] {
            let host_ok = self.host_network && matches!(t, "network" | "uts");
            if !have.contains(&t) && !host_ok {
                let knob = if matches!(t, "network" | "uts") {
                    " ([policy] host_network)"
                } else {
                    ""
                };
                return Err(denied(format!(
                    "no {t} namespace of its own: it would share the DPU's{knob}"
                )));
            }
        }
        Ok(())
    }

    fn check_mounts(&self, spec: &mut Value) -> Result<()> {
        let mut roots = resolved_roots(&self.bundle_roots);
        roots.extend(resolved_roots(&self.mount_sources));
        let Some(mounts) = spec["mounts"].as_array_mut() else {
            return Ok(());
        };
        for m in mounts {
            let dst = m["destination"].as_str().unwrap_or("?").to_string();
            let typ = m["type"].as_str().unwrap_or_default().to_string();
            let bind = typ == "bind"
                || m["options"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|o| matches!(o.as_str(), Some("bind" | "rbind")));
            if !bind {
                if !PSEUDO_FS.contains(&typ.as_str()) {
                    return Err(denied(format!(
                        "mount of type {typ:?} at {dst}: only bind mounts and {} are allowed",
                        PSEUDO_FS.join(", ")
                    )));
                }
                continue;
            }
            let src = m["source"].as_str().unwrap_or_default();
            if !src.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "bind mount at {dst}: source {src:?} is not an absolute path"
                )));
            }
            let real = resolve(Path::new(src), &format!("bind mount at {dst}: source"))?;
            if !roots.iter().any(|r| real.starts_with(r)) {
                return Err(denied(format!(
                    "bind mount of {src} at {dst}: the source is outside what this DPU shares \
                     ([policy] mount_sources: {})",
                    list(&self.mount_sources)
                )));
            }
            // runc mounts what was checked, not what a symlink says later.
            m["source"] = Value::from(real.display().to_string());
        }
        Ok(())
    }
}

fn needs_privileged() -> &'static str {
    "privileged containers need [policy] privileged = true in the DPU agent's config"
}

fn list(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "none".into();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_hooks(spec: &Value) -> Result<()> {
    let Some(hooks) = spec["hooks"].as_object() else {
        return Ok(());
    };
    let named: Vec<&str> = hooks
        .iter()
        .filter(|(_, v)| v.as_array().is_some_and(|a| !a.is_empty()))
        .map(|(k, _)| k.as_str())
        .collect();
    if !named.is_empty() {
        return Err(denied(format!(
            "OCI hooks ({}) are not accepted: they would run as root on the DPU",
            named.join(", ")
        )));
    }
    Ok(())
}

/// Masked and read-only /proc and /sys paths, /sys and cgroupfs read-only.
fn check_masked(spec: &Value) -> Result<()> {
    let has = |key: &str, path: &str| {
        spec["linux"][key]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p.as_str() == Some(path))
    };
    for p in REQUIRED_MASKED {
        if !has("maskedPaths", p) {
            return Err(denied(format!("{p} is not masked; {}", needs_privileged())));
        }
    }
    for p in REQUIRED_READONLY {
        if !has("readonlyPaths", p) {
            return Err(denied(format!(
                "{p} is not read-only; {}",
                needs_privileged()
            )));
        }
    }
    for m in spec["mounts"].as_array().into_iter().flatten() {
        let typ = m["type"].as_str().unwrap_or_default();
        let ro = m["options"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o.as_str() == Some("ro"));
        if matches!(typ, "sysfs" | "cgroup" | "cgroup2") && !ro {
            return Err(denied(format!(
                "{typ} at {} is writable; {}",
                m["destination"].as_str().unwrap_or("?"),
                needs_privileged()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A tree with a bundle root, a mount source, the agent's state dir with
    /// a netns made there, and a directory nobody allowed.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            let dir = tempfile::tempdir().unwrap();
            for d in ["tasks/b1/rootfs", "cri/pod1", "state/netns", "elsewhere"] {
                std::fs::create_dir_all(dir.path().join(d)).unwrap();
            }
            std::fs::write(dir.path().join("state/netns/pod1"), "").unwrap();
            std::fs::write(dir.path().join("cri/pod1/hosts"), "").unwrap();
            Tree { dir }
        }

        fn p(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn policy(&self) -> Policy {
            Policy {
                bundle_roots: vec![self.p("tasks")],
                mount_sources: vec![self.p("cri")],
                ..Policy::default()
            }
        }

        /// What `runc spec` writes, in the Pod's DPU-half netns.
        fn spec(&self) -> Value {
            json!({
                "process": {"capabilities": {"bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
                                             "effective": ["CAP_KILL"]}},
                "mounts": [
                    {"destination": "/proc", "type": "proc", "source": "proc"},
                    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "ro"]},
                    {"destination": "/etc/hosts", "type": "bind",
                     "source": self.p("cri/pod1/hosts"), "options": ["rbind", "ro"]}],
                "linux": {
                    "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                                   {"type": "network", "path": self.p("state/netns/pod1")}],
                    "maskedPaths": REQUIRED_MASKED, "readonlyPaths": REQUIRED_READONLY,
                    "resources": {"devices": [{"allow": false, "access": "rwm"}]}}
            })
        }

        fn check(&self, policy: &Policy, spec: &mut Value) -> Result<()> {
            policy.check_spec(spec, &self.p("state/netns"))
        }
    }

    fn refused(r: Result<()>, needle: &str) {
        match r {
            Err(Error::PermissionDenied(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("want PermissionDenied mentioning {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn an_ordinary_cri_spec_passes() {
        let t = Tree::new();
        t.check(&t.policy(), &mut t.spec()).unwrap();
    }

    #[test]
    fn bundles_and_rootfs_must_be_under_a_bundle_root() {
        let t = Tree::new();
        let sut = t.policy();
        let state = t.p("state");
        assert_eq!(
            sut.check_bundle(&t.p("tasks/b1"), &state).unwrap(),
            t.p("tasks/b1").canonicalize().unwrap()
        );
        refused(
            sut.check_bundle(&t.p("elsewhere"), &state).map(drop),
            "bundle_roots",
        );
        // `..` and symlinks are resolved before the check.
        let sneaky = t.p("tasks/../elsewhere");
        refused(sut.check_bundle(&sneaky, &state).map(drop), "outside");
        std::os::unix::fs::symlink(t.p("elsewhere"), t.p("tasks/link")).unwrap();
        refused(
            sut.check_rootfs(&t.p("tasks/link"), &state).map(drop),
            "outside",
        );
        // The agent's own state is never a bundle, even under a root.
        let wide = Policy {
            bundle_roots: vec![t.dir.path().into()],
            ..t.policy()
        };
        refused(
            wide.check_bundle(&t.p("state/netns"), &state).map(drop),
            "outside",
        );
        assert!(matches!(
            sut.check_bundle(Path::new("rel"), &state),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn hooks_are_refused() {
        let t = Tree::new();
        let mut spec = t.spec();
        spec["hooks"] = json!({"prestart": [{"path": "/bin/sh"}], "poststop": []});
        refused(t.check(&t.policy(), &mut spec), "prestart");
        let mut empty = t.spec();
        empty["hooks"] = json!({"prestart": []});
        t.check(&t.policy(), &mut empty).unwrap();
    }

    #[test]
    fn host_namespaces_are_refused() {
        let t = Tree::new();
        let host_net = |spec: &mut Value| {
            spec["linux"]["namespaces"][4] = json!({"type": "network", "path": "/proc/1/ns/net"})
        };
        let mut spec = t.spec();
        host_net(&mut spec);
        refused(t.check(&t.policy(), &mut spec), "not made by this agent");
        let mut spec = t.spec();
        spec["linux"]["namespaces"][3] = json!({"type": "mount", "path": "/proc/1/ns/mnt"});
        refused(t.check(&t.policy(), &mut spec), "mount namespace");
        let mut spec = t.spec();
        spec["linux"]["namespaces"][1] = json!({"type": "ipc", "path": "/proc/1/ns/ipc"});
        assert!(matches!(
            t.check(&t.policy(), &mut spec),
            Err(Error::FailedPrecondition(_))
        ));
        // Left out: the DPU's own namespace.
        let mut spec = t.spec();
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .remove(0);
        refused(t.check(&t.policy(), &mut spec), "no pid namespace");
    }

    #[test]
    fn host_network_needs_the_policy() {
        let t = Tree::new();
        let mut spec = t.spec();
        let nss = spec["linux"]["namespaces"].as_array_mut().unwrap();
        nss.retain(|n| !matches!(n["type"].as_str(), Some("network" | "uts")));
        refused(t.check(&t.policy(), &mut spec.clone()), "host_network");
        let sut = Policy {
            host_network: true,
            ..t.policy()
        };
        t.check(&sut, &mut spec).unwrap();
        // A path to another netns is still refused.
        let mut spec = t.spec();
        spec["linux"]["namespaces"][4]["path"] = json!(t.p("elsewhere"));
        refused(t.check(&sut, &mut spec), "not made by this agent");
    }

    #[test]
    fn bind_mounts_come_only_from_allowed_sources_and_are_resolved() {
        let t = Tree::new();
        let mut spec = t.spec();
        spec["mounts"][2]["source"] = json!("/etc");
        refused(t.check(&t.policy(), &mut spec), "mount_sources");
        let mut spec = t.spec();
        spec["mounts"][2] = json!({"destination": "/x", "type": "none",
            "source": t.p("cri/../elsewhere"), "options": ["rbind"]});
        refused(t.check(&t.policy(), &mut spec), "outside");
        let mut spec = t.spec();
        spec["mounts"][2] = json!({"destination": "/x", "type": "ext4", "source": "/dev/sda1"});
        refused(t.check(&t.policy(), &mut spec), "ext4");
        let mut spec = t.spec();
        spec["mounts"][2]["source"] = json!(t.p("cri/pod1/../pod1/hosts"));
        t.check(&t.policy(), &mut spec).unwrap();
        assert_eq!(
            spec["mounts"][2]["source"],
            json!(t.p("cri/pod1/hosts").canonicalize().unwrap())
        );
    }

    #[test]
    fn privileged_specs_need_the_policy() {
        let t = Tree::new();
        let privileged = |spec: &mut Value| {
            spec["process"]["capabilities"]["bounding"] = json!(["CAP_SYS_ADMIN", "CAP_KILL"]);
            spec["linux"]["maskedPaths"] = json!([]);
            spec["linux"]["readonlyPaths"] = json!([]);
            spec["mounts"][1]["options"] = json!(["nosuid"]);
            spec["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
        };
        let mut spec = t.spec();
        privileged(&mut spec);
        refused(t.check(&t.policy(), &mut spec.clone()), "CAP_SYS_ADMIN");
        let sut = Policy {
            privileged: true,
            ..t.policy()
        };
        t.check(&sut, &mut spec).unwrap();
        // Each part alone is refused too.
        for (part, needle) in [
            (json!({"linux": {"maskedPaths": []}}), "/proc/kcore"),
            (
                json!({"linux": {"readonlyPaths": ["/proc/bus"]}}),
                "/proc/fs",
            ),
            (json!({"mounts": 1}), "writable"),
            (json!({"devices": 1}), "device cgroup rule"),
        ] {
            let mut spec = t.spec();
            if part["linux"]["maskedPaths"].is_array() {
                spec["linux"]["maskedPaths"] = part["linux"]["maskedPaths"].clone();
            } else if part["linux"]["readonlyPaths"].is_array() {
                spec["linux"]["readonlyPaths"] = part["linux"]["readonlyPaths"].clone();
            } else if part["mounts"].is_number() {
                spec["mounts"][1]["options"] = json!(["nosuid"]);
            } else {
                spec["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}, {"allow": true, "type": "b", "major": 8, "minor": 0, "access": "rw"}]);
            }
            refused(t.check(&t.policy(), &mut spec), needle);
        }
    }

    #[test]
    fn extra_capabilities_can_be_allowed_one_by_one() {
        let t = Tree::new();
        let process =
            json!({"capabilities": {"effective": ["NET_ADMIN"], "bounding": ["CAP_NET_ADMIN"]}});
        refused(t.policy().check_process(&process), "CAP_NET_ADMIN");
        let sut = Policy {
            capabilities: vec!["net_admin".into()],
            ..t.policy()
        };
        sut.check_process(&process).unwrap();
    }

    #[test]
    fn updates_may_not_widen_devices() {
        let sut = Policy::default();
        sut.check_update(&json!({"memory": {"limit": 1}})).unwrap();
        refused(
            sut.check_update(&json!({"devices": [{"allow": true, "access": "rwm"}]})),
            "device",
        );
    }

    #[test]
    fn a_seccomp_listener_is_refused() {
        let t = Tree::new();
        let mut spec = t.spec();
        spec["linux"]["seccomp"] =
            json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x.sock"});
        refused(t.check(&t.policy(), &mut spec), "listenerPath");
    }
}
