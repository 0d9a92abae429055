//! Where a container runs: a pure function of its annotations and the node policy.

use std::collections::HashMap;

use crate::{
    config::Config,
    error::{Error, Result},
};

pub const OFFLOAD_ANNOTATION: &str = "heteropod.io/offload";
pub const PLACEMENT_PREFIX: &str = "heteropod.io/placement.";
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Annotations that group containers into one shim, as containerd-shim-runc-v2 reads them.
pub const GROUP_LABELS: [&str; 2] = ["io.containerd.runc.v2.group", SANDBOX_ID];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    Dpu,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placement::Cpu => "cpu",
            Placement::Dpu => "dpu",
        })
    }
}

/// The Pod-level placement requests, parsed and validated.
#[derive(Debug, Default, PartialEq)]
pub struct PlacementRequests {
    offload: Vec<String>,
    explicit: HashMap<String, Placement>,
}

impl PlacementRequests {
    pub fn parse(annotations: &HashMap<String, String>) -> Result<PlacementRequests> {
        let mut requests = PlacementRequests::default();
        if let Some(list) = annotations.get(OFFLOAD_ANNOTATION) {
            for name in list.split(',').map(str::trim) {
                check_name(name, OFFLOAD_ANNOTATION)?;
                requests.offload.push(name.to_string());
            }
        }
        for (key, value) in annotations {
            let Some(name) = key.strip_prefix(PLACEMENT_PREFIX) else {
                continue;
            };
            check_name(name, key)?;
            let placement = match value.trim() {
                "cpu" => Placement::Cpu,
                "dpu" => Placement::Dpu,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "annotation {key}: {other:?} is not \"cpu\" or \"dpu\""
                    )))
                }
            };
            requests.explicit.insert(name.to_string(), placement);
        }
        Ok(requests)
    }

    /// The annotation's answer for container `name`, if it gives one.
    fn requested(&self, name: &str) -> Option<Placement> {
        self.explicit.get(name).copied().or_else(|| {
            self.offload
                .iter()
                .any(|n| n == name)
                .then_some(Placement::Dpu)
        })
    }
}

/// Container names are DNS-1123 labels in Kubernetes.
fn check_name(name: &str, key: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "annotation {key}: {name:?} is not a valid container name"
        )))
    }
}

/// Decides where the container with these OCI annotations runs.
///
/// The sandbox (pause) container always runs on the CPU: its netns is the CPU half
/// of the Pod network. Malformed placement annotations are rejected even there, so
/// a bad Pod fails at RunPodSandbox rather than at its first container.
pub fn decide(annotations: &HashMap<String, String>, config: &Config) -> Result<Placement> {
    let requests = PlacementRequests::parse(annotations)?;
    if annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox") {
        return Ok(Placement::Cpu);
    }
    let Some(name) = annotations.get(CONTAINER_NAME) else {
        // Not a CRI container (e.g. ctr run): nothing asks for the DPU.
        return Ok(Placement::Cpu);
    };
    if let Some(placement) = requests.requested(name) {
        return Ok(placement);
    }
    if config.dpu.enabled {
        let policy = &config.placement;
        let image = annotations
            .get(IMAGE_NAME)
            .map(String::as_str)
            .unwrap_or("");
        let infra = policy.infra_names.iter().any(|p| glob_match(p, name))
            || policy.infra_images.iter().any(|p| glob_match(p, image));
        if infra {
            return Ok(Placement::Dpu);
        }
    }
    Ok(Placement::Cpu)
}

/// Refuses a DPU placement the Pod's namespaces cannot follow: a container
/// that shares a PID namespace (the Pod's `shareProcessNamespace`, or the host's)
/// would see only half of it. (The Pod IPC namespace every CRI container
/// joins is replaced by a private one on the DPU, see `convert::into_agent`.)
pub fn check_spans(id: &str, placement: Placement, shared_pid_ns: bool) -> Result<()> {
    if placement == Placement::Dpu && shared_pid_ns {
        return Err(Error::FailedPrecondition(format!(
            "container {id} is placed on the DPU but shares a PID namespace \
             (shareProcessNamespace or hostPID), which cannot span the CPU and the DPU; \
             place it on the CPU with {PLACEMENT_PREFIX}<name>: cpu"
        )));
    }
    Ok(())
}

/// Matches `text` against `pattern`, where `*` stands for any run of characters.
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn container(name: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut a = annotations(extra);
        a.insert(CONTAINER_TYPE.into(), "container".into());
        a.insert(CONTAINER_NAME.into(), name.into());
        a
    }

    #[test]
    fn containers_without_annotations_run_on_cpu() {
        let sut = decide(&container("app", &[]), &Config::default()).unwrap();
        assert_eq!(sut, Placement::Cpu);
        assert_eq!(
            decide(&HashMap::new(), &Config::default()).unwrap(),
            Placement::Cpu
        );
    }

    #[test]
    fn offload_list_sends_named_containers_to_dpu() {
        let a = [(OFFLOAD_ANNOTATION, "envoy, fluent-bit")];
        assert_eq!(
            decide(&container("envoy", &a), &Config::default()).unwrap(),
            Placement::Dpu
        );
        assert_eq!(
            decide(&container("fluent-bit", &a), &Config::default()).unwrap(),
            Placement::Dpu
        );
        assert_eq!(
            decide(&container("app", &a), &Config::default()).unwrap(),
            Placement::Cpu
        );
    }

    #[test]
    fn explicit_placement_wins_over_offload_list() {
        let a = [
            (OFFLOAD_ANNOTATION, "envoy"),
            ("heteropod.io/placement.envoy", "cpu"),
            ("heteropod.io/placement.app", "dpu"),
        ];
        assert_eq!(
            decide(&container("envoy", &a), &Config::default()).unwrap(),
            Placement::Cpu
        );
        assert_eq!(
            decide(&container("app", &a), &Config::default()).unwrap(),
            Placement::Dpu
        );
    }

    #[test]
    fn sandbox_always_runs_on_cpu() {
        let mut a = annotations(&[(OFFLOAD_ANNOTATION, "pause")]);
        a.insert(CONTAINER_TYPE.into(), "sandbox".into());
        a.insert(CONTAINER_NAME.into(), "pause".into());
        assert_eq!(decide(&a, &Config::default()).unwrap(), Placement::Cpu);
    }

    #[test]
    fn malformed_placement_value_is_invalid_argument() {
        let a = [("heteropod.io/placement.app", "gpu")];
        let err = decide(&container("app", &a), &Config::default()).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(
            err.to_string().contains("heteropod.io/placement.app"),
            "{err}"
        );
    }

    #[test]
    fn malformed_names_are_invalid_argument() {
        for bad in ["", "envoy,,app", "Envoy", "-x", "a b"] {
            let a = [(OFFLOAD_ANNOTATION, bad)];
            let err = decide(&container("app", &a), &Config::default()).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err}");
        }
        let a = [("heteropod.io/placement.", "cpu")];
        assert!(decide(&container("app", &a), &Config::default()).is_err());
    }

    #[test]
    fn malformed_annotations_fail_the_sandbox_too() {
        let mut a = annotations(&[("heteropod.io/placement.app", "maybe")]);
        a.insert(CONTAINER_TYPE.into(), "sandbox".into());
        assert!(decide(&a, &Config::default()).is_err());
    }

    #[test]
    fn node_policy_applies_only_with_a_dpu() {
        let mut config = Config::default();
        config.placement.infra_names = vec!["istio-*".into()];
        config.placement.infra_images = vec!["*/fluent-bit:*".into()];
        let proxy = container("istio-proxy", &[]);
        assert_eq!(decide(&proxy, &config).unwrap(), Placement::Cpu);
        config.dpu.enabled = true;
        assert_eq!(decide(&proxy, &config).unwrap(), Placement::Dpu);
        let logs = container("logs", &[(IMAGE_NAME, "docker.io/fluent/fluent-bit:2.1")]);
        assert_eq!(decide(&logs, &config).unwrap(), Placement::Dpu);
        let pinned = container(
            "istio-proxy",
            &[("heteropod.io/placement.istio-proxy", "cpu")],
        );
        assert_eq!(decide(&pinned, &config).unwrap(), Placement::Cpu);
    }

    #[test]
    fn shared_pid_namespace_on_the_dpu_is_a_clear_error() {
        let err = check_spans("c1", Placement::Dpu, true).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains("PID namespace"), "{err}");
        assert!(check_spans("c1", Placement::Cpu, true).is_ok());
        assert!(check_spans("c1", Placement::Dpu, false).is_ok());
    }

    #[test]
    fn glob_matches_wildcards() {
        assert!(glob_match("envoy", "envoy"));
        assert!(!glob_match("envoy", "envoy2"));
        assert!(glob_match("istio-*", "istio-proxy"));
        assert!(glob_match("*proxy", "istio-proxy"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXbY"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("ab*ba", "aba"));
    }
}
