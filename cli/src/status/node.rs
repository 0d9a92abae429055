//! The DPU agent endpoint from the node config (`[dpu] endpoint`, the key
//! the shim reads; `config.rs` covers only what `plan` needs).

use std::path::Path;

use anyhow::{Context, Result};

/// `None` when the file is missing or names no endpoint.
pub fn dpu_endpoint(config: &Path) -> Result<Option<String>> {
    dpu_key(config, "endpoint")
}

/// The node key a network agent wants (`[dpu] key_file`); `None` when the
/// file is missing or names none.
pub fn dpu_key_file(config: &Path) -> Result<Option<std::path::PathBuf>> {
    Ok(dpu_key(config, "key_file")?.map(Into::into))
}

/// A non-empty string of the `[dpu]` table.
fn dpu_key(config: &Path, key: &str) -> Result<Option<String>> {
    let text = match std::fs::read_to_string(config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", config.display())),
    };
    let doc: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", config.display(), e.message()))?;
    let value = doc
        .get("dpu")
        .and_then(|d| d.get(key))
        .and_then(|e| e.as_str())
        .filter(|e| !e.is_empty())
        .map(str::to_string);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_endpoint_and_treats_empty_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "[dpu]\nenabled = true\nendpoint = \"unix:///run/x.sock\"\n",
        )
        .unwrap();
        assert_eq!(
            dpu_endpoint(&path).unwrap().as_deref(),
            Some("unix:///run/x.sock")
        );
        assert_eq!(dpu_key_file(&path).unwrap(), None);
        std::fs::write(&path, "[dpu]\nendpoint = \"\"\nkey_file = \"/k\"\n").unwrap();
        assert_eq!(dpu_endpoint(&path).unwrap(), None);
        assert_eq!(dpu_key_file(&path).unwrap(), Some("/k".into()));
        assert_eq!(dpu_endpoint(&dir.path().join("absent")).unwrap(), None);
    }
}
