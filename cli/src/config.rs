//! The parts of the node config (`/etc/heteropod/config.toml`, owned by the
//! shim) that the CLI reads: `[dpu] cores, memory_mb` and `[placement]`
//! patterns. Other keys are the shim's business and are ignored here.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/heteropod/config.toml";

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct NodeConfig {
    pub dpu: DpuSection,
    pub placement: PlacementSection,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct DpuSection {
    pub cores: Option<u32>,
    pub memory_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PlacementSection {
    pub infra_names: Vec<String>,
    pub infra_images: Vec<String>,
}

impl NodeConfig {
    /// Reads `path`; `None` when the file does not exist.
    pub fn load(path: &Path) -> Result<Option<NodeConfig>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let config = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dpu_and_placement_and_ignores_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "log_level = \"info\"\n[runc]\nbinary = \"runc\"\n[dpu]\nenabled = true\ncores = 4\nmemory_mb = 2048\n[placement]\ninfra_names = [\"istio-*\"]\n",
        )
        .unwrap();
        let sut = NodeConfig::load(&path).unwrap().unwrap();
        assert_eq!(sut.dpu.cores, Some(4));
        assert_eq!(sut.dpu.memory_mb, Some(2048));
        assert_eq!(sut.placement.infra_names, ["istio-*"]);
    }

    #[test]
    fn missing_file_is_none_and_bad_toml_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NodeConfig::load(&dir.path().join("absent")).unwrap(), None);
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[dpu]\ncores = \"four\"\n").unwrap();
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("bad.toml"), "{err}");
    }
}
