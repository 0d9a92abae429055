//! The DPU agent endpoint from the node config (`[dpu] endpoint`, the key
//! the shim reads; `config.rs` covers only what `plan` needs).

use std::path::Path;

use anyhow::{Context, Result};

/// `None` when the file is missing or names no endpoint.
pub fn dpu_endpoint(config: &Path) -> Result<Option<String>> {
    let text = match std::fs::read_to_string(config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", config.display())),
    };
    let doc: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", config.display(), e.message()))?;
    let endpoint = doc
        .get("dpu")
        .and_then(|d| d.get("endpoint"))
        .and_then(|e| e.as_str())
        .filter(|e| !e.is_empty())
        .map(str::to_string);
    Ok(endpoint)
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
        std::fs::write(&path, "[dpu]\nendpoint = \"\"\n").unwrap();
        assert_eq!(dpu_endpoint(&path).unwrap(), None);
        assert_eq!(dpu_endpoint(&dir.path().join("absent")).unwrap(), None);
    }
}
