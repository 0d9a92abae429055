//! Agent requests built from the shim's view of a container or process.

use std::path::Path;

use heteropod_dpu_proxy::client::{CreateContainerRequest, ExecRequest};
use oci_spec::runtime::{LinuxResources, Process as OciProcess};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    io::Stdio,
};

pub fn create_request(id: &str, bundle: &Path, stdio: &Stdio) -> CreateContainerRequest {
    CreateContainerRequest {
        id: id.to_string(),
        bundle: bundle.display().to_string(),
        stdin: Stdio::path(&stdio.stdin).is_some(),
        terminal: stdio.terminal,
        ..Default::default()
    }
}

pub fn exec_request(
    id: &str,
    exec_id: &str,
    process: &OciProcess,
    stdio: &Stdio,
) -> Result<ExecRequest> {
    Ok(ExecRequest {
        container_id: id.to_string(),
        exec_id: exec_id.to_string(),
        process_json: serde_json::to_vec(process)?,
        stdin: Stdio::path(&stdio.stdin).is_some(),
        terminal: stdio.terminal,
        ..Default::default()
    })
}

pub fn resources_json(resources: &LinuxResources) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(resources)?)
}

/// Rewrites an OCI spec so it can run on the DPU: the CRI joins every
/// container to the sandbox's IPC namespace, which lives on the CPU and cannot
/// span the two units, so an offloaded container gets an IPC namespace of its
/// own. (A shared PID namespace is refused earlier, in placement.) With a
/// Pod network DPU half, the container joins `pod_netns` instead of the CPU half.
pub fn spec_for_dpu(spec: &mut Value, pod_netns: Option<&str>) -> Result<bool> {
    let Some(nss) = spec
        .get_mut("linux")
        .and_then(|l| l.get_mut("namespaces"))
        .and_then(Value::as_array_mut)
    else {
        return Ok(false);
    };
    let mut changed = false;
    if pod_netns == Some(crate::pod_network::HOST_NETNS) {
        // hostNetwork: the DPU's host network, i.e. runc's own (no entry).
        let before = nss.len();
        nss.retain(|ns| ns["type"].as_str() != Some("network"));
        changed = nss.len() != before;
    }
    for ns in nss.iter_mut() {
        let Some(obj) = ns.as_object_mut() else {
            return Err(Error::InvalidArgument(
                "OCI spec: linux.namespaces holds a non-object".into(),
            ));
        };
        let typ = obj
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match typ.as_str() {
            // The sandbox's UTS namespace is a /proc path on the CPU; the
            // container gets its own with the Pod's hostname (set below).
            "ipc" | "uts" if obj.remove("path").is_some() => changed = true,
            "network" if obj.contains_key("path") => {
                if let Some(netns) = pod_netns {
                    if obj.get("path").and_then(Value::as_str) != Some(netns) {
                        obj.insert("path".into(), Value::from(netns));
                        changed = true;
                    }
                }
            }
            _ => {}
        }
    }
    if changed {
        pod_hostname(spec);
    }
    changed |= private_dev_shm(spec);
    Ok(changed)
}

/// The Pod's hostname (CRI puts it in `HOSTNAME`) for a container with a UTS
/// namespace of its own; one the spec names already is kept.
fn pod_hostname(spec: &mut Value) {
    if spec["hostname"].as_str().is_some_and(|h| !h.is_empty()) {
        return;
    }
    let from_env = spec["process"]["env"].as_array().and_then(|env| {
        env.iter()
            .filter_map(Value::as_str)
            .find_map(|e| e.strip_prefix("HOSTNAME="))
            .map(str::to_string)
    });
    if let (Some(name), Some(obj)) = (from_env, spec.as_object_mut()) {
        obj.insert("hostname".into(), Value::from(name));
    }
}

/// The Pod's /dev/shm is a bind of a host tmpfs that cannot span the PUs:
/// the container gets a tmpfs of its own (the size kubelet gives by default).
fn private_dev_shm(spec: &mut Value) -> bool {
    let Some(mounts) = spec["mounts"].as_array_mut() else {
        return false;
    };
    let mut changed = false;
    for m in mounts.iter_mut() {
        if m["destination"] == "/dev/shm" && m["type"] != "tmpfs" {
            *m = serde_json::json!({
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            });
            changed = true;
        }
    }
    changed
}

/// Whether a sysctl lives in a namespace the DPU container does not share
/// with the sandbox (its own IPC namespace, the DPU half's netns), so the
/// Pod's value must be set again there.
fn pod_scoped_on_dpu(key: &str) -> bool {
    key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue.")
        || key.starts_with("net.")
}

/// Gives the container the Pod's IPC and network sysctls (CRI sets them on
/// the sandbox only, whose namespaces a DPU container does not join); a
/// value the container sets itself wins. Returns whether anything changed.
pub fn add_pod_sysctls(spec: &mut Value, sandbox_spec: &Value) -> bool {
    let Some(pod) = sandbox_spec["linux"]["sysctl"].as_object() else {
        return false;
    };
    let wanted: Vec<_> = pod
        .iter()
        .filter(|(k, v)| pod_scoped_on_dpu(k) && v.is_string())
        .collect();
    if wanted.is_empty() || !spec.is_object() {
        return false;
    }
    if !spec["linux"].is_object() {
        spec["linux"] = Value::Object(Default::default());
    }
    if !spec["linux"]["sysctl"].is_object() {
        spec["linux"]["sysctl"] = Value::Object(Default::default());
    }
    let Some(own) = spec["linux"]["sysctl"].as_object_mut() else {
        return false;
    };
    let mut changed = false;
    for (k, v) in wanted {
        if !own.contains_key(k) {
            own.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    changed
}

/// Applies [`spec_for_dpu`] and [`add_pod_sysctls`] to `<bundle>/config.json`
/// in place; the sandbox's spec is found beside the bundle (containerd keeps
/// one directory per task, named by id).
pub fn prepare_bundle(bundle: &Path, pod_netns: Option<&str>) -> Result<()> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(Error::io(format!("read {}", path.display())))?;
    let mut spec: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::InvalidArgument(format!("bundle {}: {e}", path.display())))?;
    let mut changed = spec_for_dpu(&mut spec, pod_netns)?;
    let sandbox = spec["annotations"][crate::placement::SANDBOX_ID]
        .as_str()
        .zip(bundle.parent())
        .and_then(|(id, dir)| std::fs::read(dir.join(id).join("config.json")).ok())
        .and_then(|d| serde_json::from_slice::<Value>(&d).ok());
    if let Some(sandbox) = sandbox {
        changed |= add_pod_sysctls(&mut spec, &sandbox);
    }
    if changed {
        std::fs::write(&path, serde_json::to_vec(&spec)?)
            .map_err(Error::io(format!("write {}", path.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_ipc_namespace_becomes_private_and_others_stay() {
        let mut sut = json!({"linux": {"namespaces": [
            {"type": "ipc", "path": "/proc/1/ns/ipc"},
            {"type": "network", "path": "/var/run/netns/x"},
            {"type": "pid"}]}});
        assert!(spec_for_dpu(&mut sut, None).unwrap());
        let nss = sut["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(nss[0], json!({"type": "ipc"}));
        assert_eq!(nss[1]["path"], "/var/run/netns/x");
        assert!(
            !spec_for_dpu(&mut sut, None).unwrap(),
            "second pass changes nothing"
        );
        assert!(!spec_for_dpu(&mut json!({}), None).unwrap());
    }

    #[test]
    fn dpu_containers_join_the_dpu_half_of_the_pod_network() {
        let mut sut = json!({"linux": {"namespaces": [
            {"type": "network", "path": "/var/run/netns/cpu-half"}]}});
        assert!(spec_for_dpu(&mut sut, Some("/run/dpu/netns/pod1")).unwrap());
        assert_eq!(sut["linux"]["namespaces"][0]["path"], "/run/dpu/netns/pod1");
        // Host-network containers (no path) are left alone.
        let mut host = json!({"linux": {"namespaces": [{"type": "pid"}]}});
        assert!(!spec_for_dpu(&mut host, Some("/x")).unwrap());
        // The host's netns joined by path becomes the DPU's host network.
        let mut host = json!({"linux": {"namespaces": [
            {"type": "network", "path": "/proc/42/ns/net"}, {"type": "pid"}]}});
        let host_netns = Some(crate::pod_network::HOST_NETNS);
        assert!(spec_for_dpu(&mut host, host_netns).unwrap());
        assert_eq!(host["linux"]["namespaces"], json!([{"type": "pid"}]));
    }

    #[test]
    fn pod_uts_and_dev_shm_become_the_containers_own() {
        let mut sut = json!({
            "process": {"env": ["PATH=/bin", "HOSTNAME=web-0"]},
            "linux": {"namespaces": [{"type": "uts", "path": "/proc/9/ns/uts"}]},
            "mounts": [{"destination": "/dev/shm", "type": "bind",
                        "source": "/run/sandboxes/x/shm", "options": ["rbind"]},
                       {"destination": "/etc/hosts", "type": "bind", "source": "/h"}]});
        assert!(spec_for_dpu(&mut sut, None).unwrap());
        assert_eq!(sut["linux"]["namespaces"][0], json!({"type": "uts"}));
        assert_eq!(sut["hostname"], "web-0");
        assert_eq!(sut["mounts"][0]["type"], "tmpfs");
        assert_eq!(sut["mounts"][1]["source"], "/h");
        assert!(
            !spec_for_dpu(&mut sut, None).unwrap(),
            "second pass changes nothing"
        );
    }

    #[test]
    fn pod_ipc_and_net_sysctls_follow_the_container_to_the_dpu() {
        let sandbox = json!({"linux": {"sysctl": {
            "kernel.shm_rmid_forced": "1",
            "net.ipv4.ip_unprivileged_port_start": "222",
            "kernel.domainname": "x",
            "net.core.somaxconn": "64"}}});
        let mut sut = json!({"linux": {"sysctl": {"net.core.somaxconn": "128"}}});
        assert!(add_pod_sysctls(&mut sut, &sandbox));
        assert_eq!(
            sut["linux"]["sysctl"],
            json!({"kernel.shm_rmid_forced": "1",
                   "net.ipv4.ip_unprivileged_port_start": "222",
                   "net.core.somaxconn": "128"})
        );
        assert!(
            !add_pod_sysctls(&mut sut, &sandbox),
            "second pass changes nothing"
        );
        let mut bare = json!({});
        assert!(add_pod_sysctls(&mut bare, &sandbox));
        assert!(!add_pod_sysctls(&mut json!({}), &json!({})));
    }

    #[test]
    fn malformed_namespaces_are_invalid_argument() {
        let mut sut = json!({"linux": {"namespaces": [3]}});
        assert!(matches!(
            spec_for_dpu(&mut sut, None),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn requests_carry_stdio_flags() {
        let stdio = Stdio {
            stdin: "/tmp/in".into(),
            terminal: true,
            ..Default::default()
        };
        let sut = create_request("c1", Path::new("/b"), &stdio);
        assert!(sut.stdin && sut.terminal);
        assert_eq!(sut.bundle, "/b");
        let sut = create_request("c1", Path::new("/b"), &Stdio::default());
        assert!(!sut.stdin && !sut.terminal);
    }
}
