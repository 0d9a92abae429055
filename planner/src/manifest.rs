//! Kubernetes manifests (YAML, several documents per file) to Pod descriptions.
//!
//! Kinds read: Pod, and the Pod templates of Deployment, ReplicaSet,
//! StatefulSet, DaemonSet, Job and CronJob (one template stands for one Pod on
//! this node), plus `List` of those. Other kinds are skipped and reported.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_norway::Value;

use crate::error::{Error, Result};
use crate::quantity::{parse_bytes, parse_cpu_millis};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodManifest {
    /// `name`, `namespace/name`, or `kind/name` for a workload template.
    pub id: String,
    pub annotations: BTreeMap<String, String>,
    /// `shareProcessNamespace: true` or `hostPID: true`.
    pub shares_pid: bool,
    /// Regular containers; init containers finish before these start and are not planned.
    pub containers: Vec<ContainerManifest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerManifest {
    pub name: String,
    pub image: String,
    /// CPU request (the limit when no request is given, as Kubernetes defaults it).
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// A document that holds no Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub source_name: String,
    pub document: usize,
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifests {
    pub pods: Vec<PodManifest>,
    pub skipped: Vec<Skipped>,
}

/// Parses every document of `text`; `source_name` (e.g. the file) names it in errors.
pub fn parse_manifests(text: &str, source_name: &str) -> Result<Manifests> {
    let mut out = Manifests::default();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let document_number = index + 1;
        let value = Value::deserialize(document).map_err(|e| Error::Yaml {
            source_name: source_name.to_string(),
            document: document_number,
            message: e.to_string(),
        })?;
        let at = Location {
            source_name,
            document: document_number,
        };
        read_object(value, &at, &mut out)?;
    }
    Ok(out)
}

struct Location<'a> {
    source_name: &'a str,
    document: usize,
}

fn read_object(value: Value, at: &Location, out: &mut Manifests) -> Result<()> {
    if value.is_null() {
        return Ok(()); // an empty document, e.g. after a trailing `---`
    }
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Error::Yaml {
            source_name: at.source_name.to_string(),
            document: at.document,
            message: "not a Kubernetes object: no `kind`".into(),
        })?;
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    let bad = |message: String| Error::Manifest {
        source_name: at.source_name.to_string(),
        document: at.document,
        kind: kind.clone(),
        name: name.clone(),
        message,
    };
    let template = |meta: Option<ObjectMeta>, spec: Option<PodSpec>| {
        let spec = spec.ok_or_else(|| bad("no pod template spec".into()))?;
        let annotations = meta.and_then(|m| m.annotations).unwrap_or_default();
        pod_manifest(format!("{}/{name}", kind.to_lowercase()), annotations, spec).map_err(&bad)
    };
    let pod = match kind.as_str() {
        "Pod" => {
            let pod: Pod = typed(value, &bad)?;
            let id = match pod.metadata.namespace.as_deref() {
                Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
                _ => name.clone(),
            };
            let spec = pod.spec.ok_or_else(|| bad("no spec".into()))?;
            let annotations = pod.metadata.annotations.unwrap_or_default();
            pod_manifest(id, annotations, spec).map_err(&bad)?
        }
        "Deployment" => {
            let t = typed::<Deployment>(value, &bad)?.spec.map(|s| s.template);
            template(t.clone().and_then(|t| t.metadata), t.and_then(|t| t.spec))?
        }
        "ReplicaSet" => {
            let t = typed::<ReplicaSet>(value, &bad)?
                .spec
                .and_then(|s| s.template);
            template(t.clone().and_then(|t| t.metadata), t.and_then(|t| t.spec))?
        }
        "StatefulSet" => {
            let t = typed::<StatefulSet>(value, &bad)?.spec.map(|s| s.template);
            template(t.clone().and_then(|t| t.metadata), t.and_then(|t| t.spec))?
        }
        "DaemonSet" => {
            let t = typed::<DaemonSet>(value, &bad)?.spec.map(|s| s.template);
            template(t.clone().and_then(|t| t.metadata), t.and_then(|t| t.spec))?
        }
        "Job" => {
            let t = typed::<Job>(value, &bad)?.spec.map(|s| s.template);
            template(t.clone().and_then(|t| t.metadata), t.and_then(|t| t.spec))?
        }
        "CronJob" => {
            let t = typed::<CronJob>(value, &bad)?
                .spec
                .and_then(|s| s.job_template.spec)
                .map(|s| s.template);
            template(t.clone().and_then(|t| t.metadata), t.and_then(|t| t.spec))?
        }
        "List" => {
            let items = match value.get("items") {
                Some(Value::Sequence(items)) => items.clone(),
                None | Some(Value::Null) => Vec::new(),
                Some(_) => return Err(bad("`items` is not a list".into())),
            };
            for item in items {
                read_object(item, at, out)?;
            }
            return Ok(());
        }
        _ => {
            out.skipped.push(Skipped {
                source_name: at.source_name.to_string(),
                document: at.document,
                kind,
            });
            return Ok(());
        }
    };
    out.pods.push(pod);
    Ok(())
}

fn typed<T: serde::de::DeserializeOwned>(value: Value, bad: &dyn Fn(String) -> Error) -> Result<T> {
    serde_norway::from_value(value).map_err(|e| bad(e.to_string()))
}

fn pod_manifest(
    id: String,
    annotations: BTreeMap<String, String>,
    spec: PodSpec,
) -> std::result::Result<PodManifest, String> {
    let shares_pid = spec.share_process_namespace == Some(true) || spec.host_pid == Some(true);
    let containers = spec
        .containers
        .iter()
        .map(container_manifest)
        .collect::<std::result::Result<Vec<_>, String>>()?;
    if containers.is_empty() {
        return Err("no containers".into());
    }
    Ok(PodManifest {
        id,
        annotations,
        shares_pid,
        containers,
    })
}

fn container_manifest(c: &Container) -> std::result::Result<ContainerManifest, String> {
    let resources = c.resources.as_ref();
    let requests = resources.and_then(|r| r.requests.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    let quantity = |resource: &str| {
        requests
            .and_then(|m| m.get(resource))
            .or_else(|| limits.and_then(|m| m.get(resource)))
            .map(|q| q.0.as_str())
    };
    let cpu_millis = match quantity("cpu") {
        Some(q) => parse_cpu_millis(q).map_err(|e| format!("container {}: cpu: {e}", c.name))?,
        None => 0,
    };
    let memory_bytes = match quantity("memory") {
        Some(q) => parse_bytes(q).map_err(|e| format!("container {}: memory: {e}", c.name))?,
        None => 0,
    };
    Ok(ContainerManifest {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        cpu_millis,
        memory_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  annotations:
    heteropod.io/offload: proxy
spec:
  containers:
    - name: app
      image: app:1
      resources:
        requests: {cpu: 500m, memory: 256Mi}
    - name: proxy
      image: envoy:1
      resources:
        limits: {cpu: "0.25", memory: 1G}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata:
      labels: {app: api}
      annotations: {heteropod.io/placement.agent: auto}
    spec:
      shareProcessNamespace: true
      containers:
        - {name: api, image: api:1}
        - name: agent
          image: agent:1
          resources: {requests: {cpu: "1"}}
"#;

    #[test]
    fn several_documents_and_kinds_are_read() {
        let sut = parse_manifests(MULTI, "multi.yaml").unwrap();
        assert_eq!(sut.pods.len(), 2);
        let web = &sut.pods[0];
        assert_eq!(web.id, "shop/web");
        assert_eq!(web.annotations["heteropod.io/offload"], "proxy");
        assert!(!web.shares_pid);
        assert_eq!(web.containers[0].cpu_millis, 500);
        assert_eq!(web.containers[0].memory_bytes, 256 << 20);
        // Limits stand in for missing requests, as Kubernetes defaults them.
        assert_eq!(web.containers[1].cpu_millis, 250);
        assert_eq!(web.containers[1].memory_bytes, 1_000_000_000);
        let api = &sut.pods[1];
        assert_eq!(api.id, "deployment/api");
        assert!(api.shares_pid);
        assert_eq!(api.containers[0].cpu_millis, 0);
        assert_eq!(api.containers[1].cpu_millis, 1000);
        assert_eq!(
            sut.skipped,
            [Skipped {
                source_name: "multi.yaml".into(),
                document: 2,
                kind: "Service".into()
            }]
        );
    }

    #[test]
    fn lists_and_workload_kinds_are_read() {
        let text = r#"
apiVersion: v1
kind: List
items:
  - apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: exporter}
    spec:
      selector: {matchLabels: {a: b}}
      template:
        spec:
          hostPID: true
          containers: [{name: node-exporter, image: ne:1}]
  - apiVersion: batch/v1
    kind: CronJob
    metadata: {name: backup}
    spec:
      schedule: "* * * * *"
      jobTemplate:
        spec:
          template:
            spec:
              restartPolicy: Never
              containers: [{name: backup, image: b:1}]
"#;
        let sut = parse_manifests(text, "list.yaml").unwrap();
        let ids: Vec<&str> = sut.pods.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["daemonset/exporter", "cronjob/backup"]);
        assert!(sut.pods[0].shares_pid);
    }

    #[test]
    fn bad_yaml_names_the_document() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n---\nkind: [unclosed\n";
        let err = parse_manifests(text, "bad.yaml").unwrap_err();
        assert!(matches!(err, Error::Yaml { document: 2, .. }), "{err}");
        assert!(
            err.to_string().starts_with("bad.yaml, document 2:"),
            "{err}"
        );
    }

    #[test]
    fn bad_quantity_names_the_container() {
        let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
    - name: c
      resources: {requests: {memory: 12 parsecs}}
"#;
        let err = parse_manifests(text, "q.yaml").unwrap_err().to_string();
        assert!(err.contains("q.yaml, document 1 (Pod p)"), "{err}");
        assert!(
            err.contains("container c: memory: invalid quantity \"12 parsecs\""),
            "{err}"
        );
    }

    #[test]
    fn malformed_objects_are_clear_errors() {
        for (text, want) in [
            ("just a string", "no `kind`"),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
                "no spec",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n",
                "no containers",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n",
                "(Pod p)",
            ),
            ("apiVersion: v1\nkind: List\nitems: 3\n", "not a list"),
        ] {
            let err = parse_manifests(text, "m.yaml").unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn empty_input_has_no_pods() {
        assert_eq!(parse_manifests("", "e").unwrap(), Manifests::default());
        assert_eq!(
            parse_manifests("---\n---\n", "e").unwrap(),
            Manifests::default()
        );
    }
}
