//! From Pod manifests and their `heteropod.io/*` annotations to a `Problem`.
//!
//! | annotation | value | meaning |
//! | --- | --- | --- |
//! | `heteropod.io/offload` | `"a,b"` | these containers go to the DPU (as the shim does) |
//! | `heteropod.io/placement.<c>` | `cpu`, `dpu`, `auto` | pin `<c>`, or let the planner decide; wins over `offload` |
//! | `heteropod.io/placement` | `cpu`, `dpu`, `auto` | the same for every container not named above |
//! | `heteropod.io/role.<c>` | `application`, `infrastructure` | the role of `<c>` |
//! | `heteropod.io/traffic.<a>.<b>` | `"<Mbit/s>"`, an integer | expected traffic between `<a>` and `<b>` (either direction) |
//!
//! Role: the role annotation, else infrastructure when the container is asked
//! for `dpu` or `auto`, else the node policy's name and image patterns
//! (`infra_names`, `infra_images`, `*` wildcards), else application.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::manifest::PodManifest;
use crate::model::{Container, Dpu, Edge, Problem, Request, Role};

pub const OFFLOAD_ANNOTATION: &str = "heteropod.io/offload";
pub const PLACEMENT_ANNOTATION: &str = "heteropod.io/placement";
pub const PLACEMENT_PREFIX: &str = "heteropod.io/placement.";
pub const ROLE_PREFIX: &str = "heteropod.io/role.";
pub const TRAFFIC_PREFIX: &str = "heteropod.io/traffic.";

/// The node's patterns of known infrastructure containers, as in the shim's
/// `[placement]` config section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolePolicy {
    pub infra_names: Vec<String>,
    pub infra_images: Vec<String>,
}

impl RolePolicy {
    pub fn is_infrastructure(&self, name: &str, image: &str) -> bool {
        self.infra_names.iter().any(|p| glob_match(p, name))
            || self.infra_images.iter().any(|p| glob_match(p, image))
    }
}

/// Builds the planning problem for `pods` on a node with this `dpu`.
pub fn build_problem(pods: &[PodManifest], policy: &RolePolicy, dpu: Dpu) -> Result<Problem> {
    let mut problem = Problem {
        dpu,
        ..Problem::default()
    };
    for pod in pods {
        add_pod(&mut problem, pod, policy)?;
    }
    Ok(problem)
}

fn add_pod(problem: &mut Problem, pod: &PodManifest, policy: &RolePolicy) -> Result<()> {
    let bad = |key: &str, message: String| Error::Annotation {
        pod: pod.id.clone(),
        key: key.to_string(),
        message,
    };
    let first = problem.containers.len();
    let index: BTreeMap<&str, usize> = pod
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), first + i))
        .collect();
    let known = |key: &str, name: &str| {
        index
            .get(name)
            .copied()
            .ok_or_else(|| bad(key, format!("the Pod has no container {name:?}")))
    };
    let mut requests: BTreeMap<usize, (Request, String)> = BTreeMap::new();
    let mut roles: BTreeMap<usize, Role> = BTreeMap::new();
    let mut pod_request = None;
    let mut edges = Vec::new();
    if let Some(list) = pod.annotations.get(OFFLOAD_ANNOTATION) {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let i = known(OFFLOAD_ANNOTATION, name)?;
            requests.insert(i, (Request::Dpu, OFFLOAD_ANNOTATION.to_string()));
        }
    }
    for (key, value) in &pod.annotations {
        if key == PLACEMENT_ANNOTATION {
            pod_request = Some(parse_request(value).map_err(|m| bad(key, m))?);
        } else if let Some(name) = key.strip_prefix(PLACEMENT_PREFIX) {
            let request = parse_request(value).map_err(|m| bad(key, m))?;
            requests.insert(known(key, name)?, (request, key.clone()));
        } else if let Some(name) = key.strip_prefix(ROLE_PREFIX) {
            let role = match value.trim() {
                "application" => Role::Application,
                "infrastructure" => Role::Infrastructure,
                other => {
                    return Err(bad(
                        key,
                        format!("{other:?} is not \"application\" or \"infrastructure\""),
                    ))
                }
            };
            roles.insert(known(key, name)?, role);
        } else if let Some(pair) = key.strip_prefix(TRAFFIC_PREFIX) {
            // Container names are DNS labels, so they hold no dot.
            let (a, b) = pair
                .split_once('.')
                .filter(|(a, b)| !a.is_empty() && !b.contains('.'))
                .ok_or_else(|| bad(key, "expected heteropod.io/traffic.<a>.<b>".into()))?;
            let (a, b) = (known(key, a)?, known(key, b)?);
            if a == b {
                return Err(bad(key, "traffic of a container with itself".into()));
            }
            let mbps = value
                .trim()
                .parse::<u64>()
                .map_err(|_| bad(key, format!("{value:?} is not a whole number of Mbit/s")))?;
            edges.push(Edge { a, b, mbps });
        }
    }
    for (offset, c) in pod.containers.iter().enumerate() {
        let i = first + offset;
        let request = requests
            .remove(&i)
            .or_else(|| pod_request.map(|r| (r, PLACEMENT_ANNOTATION.to_string())));
        let role = roles.get(&i).copied().unwrap_or_else(|| {
            let asked = matches!(request, Some((Request::Dpu | Request::Auto, _)));
            if asked || policy.is_infrastructure(&c.name, &c.image) {
                Role::Infrastructure
            } else {
                Role::Application
            }
        });
        problem.containers.push(Container {
            pod: pod.id.clone(),
            name: c.name.clone(),
            image: c.image.clone(),
            cpu_millis: c.cpu_millis,
            memory_bytes: c.memory_bytes,
            role,
            request,
            shares_pid: pod.shares_pid,
        });
    }
    problem.edges.extend(edges);
    Ok(())
}

fn parse_request(value: &str) -> std::result::Result<Request, String> {
    match value.trim() {
        "cpu" => Ok(Request::Cpu),
        "dpu" => Ok(Request::Dpu),
        "auto" => Ok(Request::Auto),
        other => Err(format!("{other:?} is not \"cpu\", \"dpu\" or \"auto\"")),
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently stretched to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` swallow one more character and retry.
            star = Some((sp, st + 1));
            pi = sp + 1;
            ti = st + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ContainerManifest;

    fn pod(annotations: &[(&str, &str)], names: &[&str]) -> PodManifest {
        PodManifest {
            id: "p".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            shares_pid: false,
            containers: names
                .iter()
                .map(|n| ContainerManifest {
                    name: n.to_string(),
                    image: format!("registry/{n}:1"),
                    cpu_millis: 100,
                    memory_bytes: 1,
                })
                .collect(),
        }
    }

    fn build(annotations: &[(&str, &str)], names: &[&str], policy: &RolePolicy) -> Result<Problem> {
        build_problem(&[pod(annotations, names)], policy, Dpu::default())
    }

    #[test]
    fn roles_and_requests_follow_the_annotations() {
        let policy = RolePolicy {
            infra_names: vec!["istio-*".into()],
            infra_images: vec!["*/fluent-bit:*".into()],
        };
        let sut = build(
            &[
                ("heteropod.io/offload", "queue, sidecar"),
                ("heteropod.io/placement.sidecar", "cpu"),
                ("heteropod.io/placement.helper", "auto"),
                ("heteropod.io/role.exporter", "infrastructure"),
                ("heteropod.io/role.istio-proxy", "application"),
            ],
            &[
                "app",
                "queue",
                "sidecar",
                "helper",
                "exporter",
                "istio-proxy",
                "fluent-bit",
                "istio-init",
            ],
            &policy,
        )
        .unwrap();
        let got: Vec<(Role, Option<Request>)> = sut
            .containers
            .iter()
            .map(|c| (c.role, c.request.as_ref().map(|r| r.0)))
            .collect();
        use {Request::*, Role::*};
        assert_eq!(
            got,
            [
                (Application, None),
                (Infrastructure, Some(Dpu)),
                (Application, Some(Cpu)),
                (Infrastructure, Some(Auto)),
                (Infrastructure, None),
                (Application, None),
                (Infrastructure, None),
                (Infrastructure, None),
            ]
        );
        assert_eq!(
            sut.containers[2].request.as_ref().unwrap().1,
            "heteropod.io/placement.sidecar"
        );
    }

    #[test]
    fn pod_level_placement_applies_to_unnamed_containers() {
        let sut = build(
            &[
                ("heteropod.io/placement", "auto"),
                ("heteropod.io/placement.b", "cpu"),
            ],
            &["a", "b"],
            &RolePolicy::default(),
        )
        .unwrap();
        assert_eq!(sut.containers[0].request.as_ref().unwrap().0, Request::Auto);
        assert_eq!(sut.containers[1].request.as_ref().unwrap().0, Request::Cpu);
    }

    #[test]
    fn traffic_annotations_become_edges() {
        let pods = [
            pod(&[], &["x"]),
            pod(
                &[("heteropod.io/traffic.app.proxy", " 250 ")],
                &["app", "proxy"],
            ),
        ];
        let sut = build_problem(&pods, &RolePolicy::default(), Dpu::default()).unwrap();
        assert_eq!(
            sut.edges,
            [Edge {
                a: 1,
                b: 2,
                mbps: 250
            }]
        );
    }

    #[test]
    fn bad_annotations_are_clear_errors() {
        for (key, value, want) in [
            ("heteropod.io/offload", "ghost", "no container \"ghost\""),
            (
                "heteropod.io/placement.app",
                "gpu",
                "not \"cpu\", \"dpu\" or \"auto\"",
            ),
            ("heteropod.io/placement", "sometimes", "not \"cpu\""),
            ("heteropod.io/role.app", "sidecar", "not \"application\""),
            (
                "heteropod.io/traffic.app",
                "5",
                "expected heteropod.io/traffic.<a>.<b>",
            ),
            ("heteropod.io/traffic.app.proxy.x", "5", "expected"),
            ("heteropod.io/traffic.app.app", "5", "with itself"),
            (
                "heteropod.io/traffic.app.proxy",
                "fast",
                "not a whole number",
            ),
            ("heteropod.io/traffic.app.proxy", "-5", "not a whole number"),
            (
                "heteropod.io/traffic.app.nope",
                "5",
                "no container \"nope\"",
            ),
        ] {
            let err = build(&[(key, value)], &["app", "proxy"], &RolePolicy::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{key}={value}: {err}");
            assert!(
                err.starts_with(&format!("pod p: annotation {key}")),
                "{err}"
            );
        }
    }

    #[test]
    fn glob_matches_star_runs() {
        for (pattern, text, want) in [
            ("envoy", "envoy", true),
            ("envoy", "envoy2", false),
            ("istio-*", "istio-proxy", true),
            ("istio-*", "istio-", true),
            ("*proxy", "queue-proxy", true),
            ("*/fluent-bit:*", "docker.io/fluent/fluent-bit:2.1", true),
            ("*/fluent-bit:*", "fluent-bit:2.1", false),
            ("a*b*c", "abbbc", true),
            ("a*b*c", "acb", false),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("**a", "ba", true),
        ] {
            assert_eq!(glob_match(pattern, text), want, "{pattern} ~ {text}");
        }
    }
}
