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
            "ipc" if obj.remove("path").is_some() => changed = true,
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
    Ok(changed)
}

/// Applies [`spec_for_dpu`] to `<bundle>/config.json` in place.
pub fn prepare_bundle(bundle: &Path, pod_netns: Option<&str>) -> Result<()> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(Error::io(format!("read {}", path.display())))?;
    let mut spec: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::InvalidArgument(format!("bundle {}: {e}", path.display())))?;
    if spec_for_dpu(&mut spec, pod_netns)? {
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
