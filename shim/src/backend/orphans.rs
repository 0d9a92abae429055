//! DPU leftovers: containers and Pod network halves a shim could not remove
//! because the agent did not answer. Each is a small file; whichever shim
//! next reaches that agent removes them there, then the file.

use std::path::{Path, PathBuf};

use heteropod_dpu_proxy::{AgentClient, DpuAgent, Error as AgentError};
use serde::{Deserialize, Serialize};

use crate::io::remove_quietly;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Container,
    PodNetwork,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    /// The agent's address as the client spells it ([`AgentClient::address`]).
    pub endpoint: String,
    pub kind: Kind,
    pub id: String,
}

fn file_of(dir: &Path, o: &Orphan) -> PathBuf {
    let kind = match o.kind {
        Kind::Container => "container",
        Kind::PodNetwork => "pod-network",
    };
    dir.join(format!("{kind}-{}.json", o.id))
}

/// Records a leftover; logged, never fatal (the caller is already on an error path).
pub fn record(dir: &Path, orphan: &Orphan) {
    let path = file_of(dir, orphan);
    let written = std::fs::create_dir_all(dir)
        .and_then(|_| serde_json::to_vec(orphan).map_err(std::io::Error::other))
        .and_then(|data| std::fs::write(&path, data));
    match written {
        Ok(()) => tracing::warn!(
            id = %orphan.id, kind = ?orphan.kind, endpoint = %orphan.endpoint,
            "the DPU agent is unreachable; left for removal when it answers again"
        ),
        Err(e) => tracing::error!("record DPU leftover {}: {e}", path.display()),
    }
}

/// The recorded leftovers of the agent at `endpoint`.
pub fn list(dir: &Path, endpoint: &str) -> Vec<(PathBuf, Orphan)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let o: Orphan = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
            (o.endpoint == endpoint).then_some((path, o))
        })
        .collect()
}

/// Removes on the agent what was left there; each record goes once removed
/// (or unknown to the agent). Errors leave the record for the next shim.
pub async fn remove_leftovers(dir: &Path, agent: &AgentClient) {
    for (path, o) in list(dir, agent.address()) {
        let result = match o.kind {
            Kind::Container => remove_container(agent, &o.id).await,
            Kind::PodNetwork => agent.destroy_pod_network(&o.id).await,
        };
        match result {
            Ok(()) | Err(AgentError::NotFound(_)) => {
                tracing::info!(id = %o.id, kind = ?o.kind, "removed a DPU leftover");
                remove_quietly(&path);
            }
            Err(e) => tracing::warn!(id = %o.id, kind = ?o.kind, "DPU leftover stays: {e}"),
        }
    }
}

async fn remove_container(agent: &AgentClient, id: &str) -> Result<(), AgentError> {
    match agent.kill(id, "", 9, true).await {
        Ok(()) | Err(AgentError::FailedPrecondition(_)) => {}
        Err(e) => return Err(e),
    }
    // The agent deletes only a stopped container.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), agent.wait(id, "")).await;
    agent.delete(id, "").await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_listed_per_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let a = Orphan {
            endpoint: "unix:///a.sock".into(),
            kind: Kind::Container,
            id: "c1".into(),
        };
        let b = Orphan {
            endpoint: "unix:///b.sock".into(),
            kind: Kind::PodNetwork,
            id: "p1".into(),
        };
        record(dir.path(), &a);
        record(dir.path(), &b);
        // Recording twice keeps one record.
        record(dir.path(), &a);
        let listed: Vec<_> = list(dir.path(), "unix:///a.sock")
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert_eq!(listed, vec![a]);
        assert_eq!(list(dir.path(), "unix:///b.sock").len(), 1);
        assert!(list(dir.path(), "unix:///c.sock").is_empty());
    }

    #[test]
    fn garbage_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("container-x.json"), b"not json").unwrap();
        assert!(list(dir.path(), "unix:///a.sock").is_empty());
        assert!(list(Path::new("/nonexistent/orphans"), "x").is_empty());
    }
}
