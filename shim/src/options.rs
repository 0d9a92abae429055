//! Runtime options containerd passes with Create (and to `start` on stdin).
//!
//! Two encodings arrive in practice: `containerd.runc.v1.Options` (ctr, or a CRI
//! runtime configured like runc) and CRI's generic `runtimeoptions.v1.Options`
//! (`TypeUrl`, `ConfigPath`, `ConfigBody`) for runtime types CRI does not know.

use std::path::Path;

use containerd_shim_protos::{
    protobuf::{well_known_types::any::Any, CodedInputStream, Message},
    shim::oci::Options as RuncOptions,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    error::{Error, Result},
};

const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
const CRI_OPTIONS: &str = "runtimeoptions.v1.Options";
/// Settings persisted in the bundle so `shim delete` can clean up with them.
const SETTINGS_FILE: &str = "heteropod-options.json";

/// Options as containerd sent them; empty strings mean "not set".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeOptions {
    pub binary_name: String,
    pub root: String,
    pub systemd_cgroup: bool,
    pub config_path: String,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
}

impl RuntimeOptions {
    /// Decodes the options `Any`; `None` or an empty `Any` gives defaults.
    pub fn from_any(any: Option<&Any>) -> Result<RuntimeOptions> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
            return Ok(RuntimeOptions::default());
        };
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        match name {
            RUNC_OPTIONS => {
                let o = RuncOptions::parse_from_bytes(&any.value).map_err(|e| {
                    Error::InvalidArgument(format!("malformed {RUNC_OPTIONS}: {e}"))
                })?;
                Ok(RuntimeOptions {
                    binary_name: o.binary_name,
                    root: o.root,
                    systemd_cgroup: o.systemd_cgroup,
                    config_path: String::new(),
                    no_pivot_root: o.no_pivot_root,
                    no_new_keyring: o.no_new_keyring,
                })
            }
            CRI_OPTIONS => Ok(RuntimeOptions {
                config_path: decode_cri_config_path(&any.value)?,
                ..RuntimeOptions::default()
            }),
            other => Err(Error::InvalidArgument(format!(
                "unknown runtime options type {other:?} (expected {RUNC_OPTIONS} or {CRI_OPTIONS})"
            ))),
        }
    }

    /// Combines these options with the node config; options win.
    pub fn resolve(&self, config: &Config) -> RuntimeSettings {
        let pick =
            |opt: &str, default: &str| if opt.is_empty() { default } else { opt }.to_string();
        RuntimeSettings {
            binary: pick(&self.binary_name, &config.runc.binary),
            root: pick(&self.root, &config.runc.root),
            systemd_cgroup: self.systemd_cgroup || config.runc.systemd_cgroup,
            no_pivot_root: self.no_pivot_root,
            no_new_keyring: self.no_new_keyring,
        }
    }
}

/// Reads field 2 (`config_path`) of `runtimeoptions.v1.Options`, skipping the rest.
fn decode_cri_config_path(bytes: &[u8]) -> Result<String> {
    let malformed = |e: containerd_shim_protos::protobuf::Error| {
        Error::InvalidArgument(format!("malformed {CRI_OPTIONS}: {e}"))
    };
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut config_path = String::new();
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(malformed)? {
        match tag {
            // field 2, wire type 2 (length-delimited)
            18 => config_path = input.read_string().map_err(malformed)?,
            _ => input
                .skip_field(
                    containerd_shim_protos::protobuf::rt::WireType::new(tag & 7).ok_or_else(
                        || {
                            Error::InvalidArgument(format!(
                                "malformed {CRI_OPTIONS}: bad wire type"
                            ))
                        },
                    )?,
                )
                .map_err(malformed)?,
        }
    }
    Ok(config_path)
}

/// What the runc backend runs with, after options and config are combined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeSettings {
    pub binary: String,
    pub root: String,
    pub systemd_cgroup: bool,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
}

impl RuntimeSettings {
    pub fn save(&self, bundle: &Path) -> Result<()> {
        let path = bundle.join(SETTINGS_FILE);
        let text = serde_json::to_vec(self)?;
        std::fs::write(&path, text).map_err(Error::io(format!("write {}", path.display())))
    }

    /// Settings saved at Create; `None` when the bundle has none (Create never ran).
    pub fn load(bundle: &Path) -> Result<Option<RuntimeSettings>> {
        let path = bundle.join(SETTINGS_FILE);
        match std::fs::read(&path) {
            Ok(text) => Ok(Some(serde_json::from_slice(&text)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", path.display()))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::Message;

    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn no_options_give_defaults() {
        assert_eq!(
            RuntimeOptions::from_any(None).unwrap(),
            RuntimeOptions::default()
        );
        assert_eq!(
            RuntimeOptions::from_any(Some(&Any::default())).unwrap(),
            RuntimeOptions::default()
        );
    }

    #[test]
    fn runc_options_are_honoured() {
        let runc = RuncOptions {
            binary_name: "/usr/local/bin/crun".into(),
            root: "/run/alt".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        let sut = RuntimeOptions::from_any(Some(&any(
            "containerd.runc.v1.Options",
            runc.write_to_bytes().unwrap(),
        )))
        .unwrap();
        assert_eq!(sut.binary_name, "/usr/local/bin/crun");
        let settings = sut.resolve(&Config::default());
        assert_eq!(settings.binary, "/usr/local/bin/crun");
        assert_eq!(settings.root, "/run/alt");
        assert!(settings.systemd_cgroup);
    }

    #[test]
    fn cri_options_carry_the_config_path() {
        // type_url = "x" (field 1), config_path (field 2), config_body (field 3)
        let mut bytes = vec![10, 1, b'x', 18, 5];
        bytes.extend_from_slice(b"/a/b1");
        bytes.extend_from_slice(&[26, 2, b'{', b'}']);
        let sut = RuntimeOptions::from_any(Some(&any(
            "type.googleapis.com/runtimeoptions.v1.Options",
            bytes,
        )))
        .unwrap();
        assert_eq!(sut.config_path, "/a/b1");
        let settings = sut.resolve(&Config::default());
        assert_eq!(settings.binary, "runc");
    }

    #[test]
    fn unknown_options_type_is_invalid_argument() {
        let err = RuntimeOptions::from_any(Some(&any("example.com/Bogus", vec![]))).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("Bogus"));
    }

    #[test]
    fn malformed_options_are_invalid_argument() {
        let err =
            RuntimeOptions::from_any(Some(&any("containerd.runc.v1.Options", vec![0xff, 0xff])))
                .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        let err =
            RuntimeOptions::from_any(Some(&any("runtimeoptions.v1.Options", vec![18, 9, b'a'])))
                .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }

    #[test]
    fn settings_round_trip_through_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RuntimeSettings::load(dir.path()).unwrap(), None);
        let sut = RuntimeOptions::default().resolve(&Config::default());
        sut.save(dir.path()).unwrap();
        assert_eq!(RuntimeSettings::load(dir.path()).unwrap(), Some(sut));
    }
}
