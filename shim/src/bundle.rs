//! The parts of a bundle's `config.json` the shim itself needs.
//!
//! Only annotations, namespaces and the resolv.conf mount are read (the OCI runtime validates the rest
//! and reports its own errors); skipping the full spec keeps each Create cheap.

use std::{collections::HashMap, path::Path};

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Default, Deserialize)]
struct RawSpec {
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    linux: Option<RawLinux>,
    #[serde(default)]
    mounts: Option<Vec<RawMount>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawMount {
    #[serde(default)]
    destination: String,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawLinux {
    #[serde(default)]
    namespaces: Option<Vec<RawNamespace>>,
    #[serde(default)]
    resources: Option<RawResources>,
}

#[derive(Debug, Default, Deserialize)]
struct RawResources {
    #[serde(default)]
    cpu: Option<RawCpu>,
    #[serde(default)]
    memory: Option<RawMemory>,
}

#[derive(Debug, Default, Deserialize)]
struct RawCpu {
    shares: Option<u64>,
    quota: Option<i64>,
    period: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawMemory {
    limit: Option<i64>,
}

/// What a container asks of a processing unit, from its spec's resources.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// The CPU request, from `cpu.shares` (kubelet: millicores * 1024 / 1000).
    pub request_millis: u64,
    /// The CPU limit, from the CFS quota and period (what the DPU reserves).
    pub limit_millis: u64,
    /// The memory limit in bytes (0: none).
    pub memory_bytes: u64,
}

impl RawResources {
    fn demand(&self) -> Demand {
        let cpu = self.cpu.as_ref();
        // Shares of 2 are kubelet's "no request".
        let request_millis = cpu
            .and_then(|c| c.shares)
            .filter(|s| *s > 2)
            .map_or(0, |s| s.saturating_mul(1000) / 1024);
        let limit_millis = cpu
            .and_then(|c| {
                Some((
                    c.quota.filter(|q| *q > 0)? as u64,
                    c.period.unwrap_or(100_000),
                ))
            })
            .map_or(0, |(q, p)| q.saturating_mul(1000) / p.max(1));
        let memory_bytes = self
            .memory
            .as_ref()
            .and_then(|m| m.limit)
            .filter(|l| *l > 0)
            .map_or(0, |l| l as u64);
        Demand {
            request_millis,
            limit_millis,
            memory_bytes,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RawNamespace {
    #[serde(rename = "type")]
    typ: String,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Debug, Default, PartialEq)]
pub struct BundleSpec {
    pub annotations: HashMap<String, String>,
    /// No own PID namespace (none listed, or one joined by path): the
    /// container's processes do not die with its init.
    pub shared_pid_ns: bool,
    /// The network namespace the container joins (the Pod's), if any.
    pub netns_path: Option<String>,
    /// Host file mounted at /etc/resolv.conf (CRI writes one per Pod).
    pub resolv_conf: Option<String>,
    pub demand: Demand,
}

impl BundleSpec {
    pub fn parse(text: &str, origin: &str) -> Result<BundleSpec> {
        let raw: RawSpec = serde_json::from_str(text).map_err(|e| {
            Error::InvalidArgument(format!("bundle {origin}: malformed OCI spec: {e}"))
        })?;
        let demand = raw
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .map(RawResources::demand)
            .unwrap_or_default();
        let namespaces = raw.linux.and_then(|l| l.namespaces).unwrap_or_default();
        let own_pid_ns = namespaces
            .iter()
            .any(|n| n.typ == "pid" && n.path.is_none());
        let netns_path = namespaces
            .iter()
            .find(|n| n.typ == "network")
            .and_then(|n| n.path.clone());
        let resolv_conf = raw
            .mounts
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.destination == "/etc/resolv.conf")
            .and_then(|m| m.source);
        Ok(BundleSpec {
            annotations: raw.annotations.unwrap_or_default(),
            shared_pid_ns: !own_pid_ns,
            netns_path,
            resolv_conf,
            demand,
        })
    }

    pub fn read(bundle: &Path) -> Result<BundleSpec> {
        let path = bundle.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::InvalidArgument(format!("bundle {}: {e}", path.display())))?;
        BundleSpec::parse(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_namespace_is_not_shared() {
        let sut = BundleSpec::parse(r#"{"linux":{"namespaces":[{"type":"pid"}]}}"#, "t").unwrap();
        assert!(!sut.shared_pid_ns);
    }

    #[test]
    fn joined_or_missing_pid_namespace_is_shared() {
        let joined = BundleSpec::parse(
            r#"{"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#,
            "t",
        )
        .unwrap();
        assert!(joined.shared_pid_ns);
        let none = BundleSpec::parse(r#"{"ociVersion":"1.0.2"}"#, "t").unwrap();
        assert!(none.shared_pid_ns);
    }

    #[test]
    fn demand_comes_from_shares_quota_and_memory_limit() {
        let sut = BundleSpec::parse(
            r#"{"linux":{"resources":{"cpu":{"shares":256,"quota":50000,"period":100000},
                "memory":{"limit":134217728}}}}"#,
            "t",
        )
        .unwrap();
        assert_eq!(
            sut.demand,
            Demand {
                request_millis: 250,
                limit_millis: 500,
                memory_bytes: 128 << 20
            }
        );
        let none = BundleSpec::parse(
            r#"{"linux":{"resources":{"cpu":{"shares":2,"quota":-1}}}}"#,
            "t",
        )
        .unwrap();
        assert_eq!(none.demand, Demand::default());
    }

    #[test]
    fn resolv_conf_mount_is_found() {
        let sut = BundleSpec::parse(
            r#"{"mounts":[{"destination":"/etc/hosts","source":"/h"},
                {"destination":"/etc/resolv.conf","source":"/var/lib/x/resolv.conf"}]}"#,
            "t",
        )
        .unwrap();
        assert_eq!(sut.resolv_conf.as_deref(), Some("/var/lib/x/resolv.conf"));
        assert_eq!(BundleSpec::parse("{}", "t").unwrap().resolv_conf, None);
    }

    #[test]
    fn annotations_are_read() {
        let sut = BundleSpec::parse(r#"{"annotations":{"a":"b"},"process":{"args":["x"]}}"#, "t")
            .unwrap();
        assert_eq!(sut.annotations.get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn malformed_or_missing_bundle_is_invalid_argument() {
        let err = BundleSpec::parse("{not json", "cfg").unwrap_err();
        assert!(err.to_string().contains("malformed OCI spec"), "{err}");
        let err = BundleSpec::parse(r#"{"annotations":[1]}"#, "cfg").unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            BundleSpec::read(dir.path()),
            Err(Error::InvalidArgument(_))
        ));
    }
}
