//! The agent's config file (`/etc/heteropod/dpu-agent.toml`): who may use
//! the agent (`[access]`) and what containers may ask for (`[policy]`).
//! Unknown keys are an error, so a typo never silently widens anything.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::policy::Policy;
use crate::{
    auth::AuthKey,
    error::{Error, Result},
    transport::Access,
};

pub const DEFAULT_CONFIG_FILE: &str = "/etc/heteropod/dpu-agent.toml";

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentFile {
    pub access: AccessConfig,
    pub policy: Policy,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// The node key (0600, root's): network listeners need it, and network
    /// clients must prove they hold it.
    pub key_file: Option<PathBuf>,
    /// Users besides root (and the agent's own) who may use the Unix socket.
    pub allow_uids: Vec<u32>,
}

impl AgentFile {
    /// Reads `path`; a missing file is the defaults only when `required` is
    /// false (the default path).
    pub fn load(path: &Path, required: bool) -> Result<AgentFile> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(AgentFile::default())
            }
            Err(e) => return Err(Error::io(format!("read {}", path.display()))(e)),
        };
        toml::from_str(&text)
            .map_err(|e| Error::InvalidArgument(format!("{}: {}", path.display(), e.message())))
    }

    /// The access rules with the key read (a bad key file stops the agent).
    pub fn access(&self) -> Result<Access> {
        let key = match &self.access.key_file {
            Some(p) => Some(std::sync::Arc::new(
                AuthKey::load(p).map_err(|e| Error::InvalidArgument(e.to_string()))?,
            )),
            None => None,
        };
        Ok(Access {
            key,
            allow_uids: self.access.allow_uids.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_access_and_policy_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "[access]\nallow_uids = [1000]\n[policy]\nprivileged = true\nmount_sources = [\"/srv\"]\n",
        )
        .unwrap();
        let sut = AgentFile::load(&path, true).unwrap();
        assert_eq!(sut.access.allow_uids, [1000]);
        assert!(sut.policy.privileged);
        assert_eq!(sut.policy.mount_sources, [PathBuf::from("/srv")]);
        assert_eq!(sut.policy.bundle_roots, Policy::default().bundle_roots);
        std::fs::write(&path, "[policy]\nprivilegd = true\n").unwrap();
        let e = AgentFile::load(&path, true).unwrap_err().to_string();
        assert!(e.contains("privilegd"), "{e}");
        let absent = dir.path().join("absent.toml");
        assert_eq!(
            AgentFile::load(&absent, false).unwrap(),
            AgentFile::default()
        );
        assert!(AgentFile::load(&absent, true).is_err());
    }
}
