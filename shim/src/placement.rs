//! Where a container wants to run: a pure function of its annotations and the
//! node policy. Soft wishes (node policy, `auto`) are settled against the DPU's
//! free capacity by `dpu_fit`.

use std::collections::HashMap;

use crate::{
    config::{Config, PlacementDefault},
    error::{Error, Result},
};

pub const OFFLOAD_ANNOTATION: &str = "heteropod.io/offload";
pub const PLACEMENT_PREFIX: &str = "heteropod.io/placement.";
/// Pod-wide placement mode (`auto`); per-container annotations win.
pub const POD_PLACEMENT: &str = "heteropod.io/placement";
/// `infrastructure` or `application`: overrides the node policy's patterns.
pub const ROLE_PREFIX: &str = "heteropod.io/role.";
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

/// What an annotation or the node policy asks for one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Cpu,
    /// `strict`: asked for by the Pod, so a full DPU is an error; otherwise
    /// (node policy) the node config's `when_dpu_full` decides.
    Dpu {
        strict: bool,
    },
    /// The planner decides against the DPU's free capacity; only candidates
    /// (infrastructure, or named `auto` explicitly) may go.
    Auto {
        candidate: bool,
    },
}

/// What a per-container placement annotation says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Explicit {
    Cpu,
    Dpu,
    Auto,
}

/// The Pod-level placement requests, parsed and validated.
#[derive(Debug, Default, PartialEq)]
pub struct PlacementRequests {
    offload: Vec<String>,
    explicit: HashMap<String, Explicit>,
    /// `heteropod.io/placement` for the containers not named otherwise.
    pod_mode: Option<Explicit>,
    roles: HashMap<String, bool>,
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
                "cpu" => Explicit::Cpu,
                "dpu" => Explicit::Dpu,
                "auto" => Explicit::Auto,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "annotation {key}: {other:?} is not \"cpu\", \"dpu\" or \"auto\""
                    )))
                }
            };
            requests.explicit.insert(name.to_string(), placement);
        }
        if let Some(mode) = annotations.get(POD_PLACEMENT) {
            requests.pod_mode = match mode.trim() {
                "cpu" => Some(Explicit::Cpu),
                "dpu" => Some(Explicit::Dpu),
                "auto" => Some(Explicit::Auto),
                "" => None,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "annotation {POD_PLACEMENT}: {other:?} is not \"cpu\", \"dpu\" or \"auto\""
                    )))
                }
            };
        }
        for (key, value) in annotations {
            let Some(name) = key.strip_prefix(ROLE_PREFIX) else {
                continue;
            };
            check_name(name, key)?;
            let infra = match value.trim() {
                "infrastructure" | "infra" => true,
                "application" | "app" => false,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "annotation {key}: {other:?} is not \"infrastructure\" or \"application\""
                    )))
                }
            };
            requests.roles.insert(name.to_string(), infra);
        }
        Ok(requests)
    }

    /// The annotations' answer for container `name`, if they give one.
    fn requested(&self, name: &str) -> Option<Intent> {
        match self.explicit.get(name) {
            Some(Explicit::Cpu) => Some(Intent::Cpu),
            Some(Explicit::Dpu) => Some(Intent::Dpu { strict: true }),
            Some(Explicit::Auto) => Some(Intent::Auto { candidate: true }),
            None if self.offload.iter().any(|n| n == name) => Some(Intent::Dpu { strict: true }),
            // `auto` for the whole Pod needs the node policy's roles: see `decide`.
            None => match self.pod_mode {
                Some(Explicit::Cpu) => Some(Intent::Cpu),
                Some(Explicit::Dpu) => Some(Intent::Dpu { strict: true }),
                Some(Explicit::Auto) | None => None,
            },
        }
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
pub fn decide(annotations: &HashMap<String, String>, config: &Config) -> Result<Intent> {
    let requests = PlacementRequests::parse(annotations)?;
    if annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox") {
        return Ok(Intent::Cpu);
    }
    let Some(name) = annotations.get(CONTAINER_NAME) else {
        // Not a CRI container (e.g. ctr run): nothing asks for the DPU.
        return Ok(Intent::Cpu);
    };
    if let Some(intent) = requests.requested(name) {
        return Ok(intent);
    }
    if !config.dpu.enabled {
        return Ok(Intent::Cpu);
    }
    let policy = &config.placement;
    let infra = requests.roles.get(name).copied().unwrap_or_else(|| {
        let image = annotations
            .get(IMAGE_NAME)
            .map(String::as_str)
            .unwrap_or("");
        policy.infra_names.iter().any(|p| glob_match(p, name))
            || policy.infra_images.iter().any(|p| glob_match(p, image))
    });
    Ok(match policy.default {
        _ if requests.pod_mode == Some(Explicit::Auto) => Intent::Auto { candidate: infra },
        PlacementDefault::Auto => Intent::Auto { candidate: infra },
        _ if infra => Intent::Dpu { strict: false },
        PlacementDefault::Dpu => Intent::Dpu { strict: false },
        PlacementDefault::Cpu => Intent::Cpu,
    })
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
        assert_eq!(sut, Intent::Cpu);
        assert_eq!(
            decide(&HashMap::new(), &Config::default()).unwrap(),
            Intent::Cpu
        );
    }

    #[test]
    fn offload_list_sends_named_containers_to_dpu() {
        let a = [(OFFLOAD_ANNOTATION, "envoy, fluent-bit")];
        assert_eq!(
            decide(&container("envoy", &a), &Config::default()).unwrap(),
            Intent::Dpu { strict: true }
        );
        assert_eq!(
            decide(&container("fluent-bit", &a), &Config::default()).unwrap(),
            Intent::Dpu { strict: true }
        );
        assert_eq!(
            decide(&container("app", &a), &Config::default()).unwrap(),
            Intent::Cpu
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
            Intent::Cpu
        );
        assert_eq!(
            decide(&container("app", &a), &Config::default()).unwrap(),
            Intent::Dpu { strict: true }
        );
    }

    #[test]
    fn sandbox_always_runs_on_cpu() {
        let mut a = annotations(&[(OFFLOAD_ANNOTATION, "pause")]);
        a.insert(CONTAINER_TYPE.into(), "sandbox".into());
        a.insert(CONTAINER_NAME.into(), "pause".into());
        assert_eq!(decide(&a, &Config::default()).unwrap(), Intent::Cpu);
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
        assert_eq!(decide(&proxy, &config).unwrap(), Intent::Cpu);
        config.dpu.enabled = true;
        // The node's wish, not the Pod's: a full DPU need not fail it.
        assert_eq!(
            decide(&proxy, &config).unwrap(),
            Intent::Dpu { strict: false }
        );
        let logs = container("logs", &[(IMAGE_NAME, "docker.io/fluent/fluent-bit:2.1")]);
        assert_eq!(
            decide(&logs, &config).unwrap(),
            Intent::Dpu { strict: false }
        );
        // A role annotation overrides the patterns.
        let app_role = container(
            "istio-proxy",
            &[("heteropod.io/role.istio-proxy", "application")],
        );
        assert_eq!(decide(&app_role, &config).unwrap(), Intent::Cpu);
        let pinned = container(
            "istio-proxy",
            &[("heteropod.io/placement.istio-proxy", "cpu")],
        );
        assert_eq!(decide(&pinned, &config).unwrap(), Intent::Cpu);
    }

    #[test]
    fn node_default_sends_the_rest_to_the_dpu() {
        let mut config = Config::default();
        config.dpu.enabled = true;
        config.placement.default = PlacementDefault::Dpu;
        let app = container("app", &[]);
        assert_eq!(
            decide(&app, &config).unwrap(),
            Intent::Dpu { strict: false }
        );
        let pinned = container("app", &[("heteropod.io/placement.app", "cpu")]);
        assert_eq!(decide(&pinned, &config).unwrap(), Intent::Cpu);
        config.dpu.enabled = false;
        assert_eq!(decide(&app, &config).unwrap(), Intent::Cpu);
    }

    #[test]
    fn auto_mode_makes_infrastructure_the_candidates() {
        let mut config = Config::default();
        config.dpu.enabled = true;
        config.placement.infra_names = vec!["envoy".into()];
        let pod_auto = [(POD_PLACEMENT, "auto")];
        assert_eq!(
            decide(&container("envoy", &pod_auto), &config).unwrap(),
            Intent::Auto { candidate: true }
        );
        assert_eq!(
            decide(&container("app", &pod_auto), &config).unwrap(),
            Intent::Auto { candidate: false }
        );
        // Named `auto` explicitly: a candidate whatever its role.
        let named = [("heteropod.io/placement.app", "auto")];
        assert_eq!(
            decide(&container("app", &named), &config).unwrap(),
            Intent::Auto { candidate: true }
        );
        config.placement.default = PlacementDefault::Auto;
        assert_eq!(
            decide(&container("envoy", &[]), &config).unwrap(),
            Intent::Auto { candidate: true }
        );
        // The whole Pod pinned, a named container still wins.
        let pod_dpu = [
            (POD_PLACEMENT, "dpu"),
            ("heteropod.io/placement.app", "cpu"),
        ];
        assert_eq!(
            decide(&container("envoy", &pod_dpu), &config).unwrap(),
            Intent::Dpu { strict: true }
        );
        assert_eq!(
            decide(&container("app", &pod_dpu), &config).unwrap(),
            Intent::Cpu
        );
        let pod_cpu = [(POD_PLACEMENT, "cpu")];
        assert_eq!(
            decide(&container("envoy", &pod_cpu), &config).unwrap(),
            Intent::Cpu
        );
        let bad = [(POD_PLACEMENT, "sometimes")];
        assert!(decide(&container("app", &bad), &config).is_err());
        let bad_role = [("heteropod.io/role.app", "boss")];
        assert!(decide(&container("app", &bad_role), &config).is_err());
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
