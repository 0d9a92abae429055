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
}

impl BundleSpec {
    pub fn parse(text: &str, origin: &str) -> Result<BundleSpec> {
        let raw: RawSpec = serde_json::from_str(text).map_err(|e| {
            Error::InvalidArgument(format!("bundle {origin}: malformed OCI spec: {e}"))
        })?;
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
