//! Container records persisted under `<state>/containers/<id>/state.json`,
//! written atomically on every transition and reloaded after a restart.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{cgroup::Reservation, process::ProcessRecord};
use crate::error::{Error, Result};

pub const STATE_FILE: &str = "state.json";

/// Who a container is for Kubernetes, from the CRI annotations of its spec;
/// empty for clients that are not CRI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriIdentity {
    pub pod_id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// The bundle the client gave.
    pub bundle: PathBuf,
    pub reservation: Reservation,
    pub init: ProcessRecord,
    #[serde(default)]
    pub execs: Vec<ProcessRecord>,
    /// OOM kills already reported.
    #[serde(default)]
    pub oom_kills_seen: u64,
    #[serde(default)]
    pub cri: CriIdentity,
}

pub fn save(dir: &Path, record: &ContainerRecord) -> Result<()> {
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let data = serde_json::to_vec_pretty(record).map_err(|e| Error::Io {
        context: format!("encode state of {}", record.id),
        source: e.into(),
    })?;
    std::fs::write(&tmp, data).map_err(Error::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(STATE_FILE))
        .map_err(Error::io(format!("rename {}", tmp.display())))
}

/// Every readable record under `containers_dir`; unreadable ones are logged
/// and skipped (never fatal: the agent must come back up).
pub fn load_all(containers_dir: &Path) -> Vec<ContainerRecord> {
    let Ok(entries) = std::fs::read_dir(containers_dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join(STATE_FILE);
        match std::fs::read(&path).map(|d| serde_json::from_slice::<ContainerRecord>(&d)) {
            Ok(Ok(r)) if entry.file_name().to_str() == Some(r.id.as_str()) => out.push(r),
            Ok(Ok(r)) => tracing::warn!(
                "{}: id {} does not match its directory",
                path.display(),
                r.id
            ),
            Ok(Err(e)) => tracing::warn!("{}: {e}", path.display()),
            Err(e) => tracing::warn!("{}: {e}", path.display()),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::process::{Exit, Status};

    fn record(id: &str) -> ContainerRecord {
        let p = |e: &str| ProcessRecord {
            exec_id: e.into(),
            pid: 42,
            start_time: 7,
            status: Status::Running,
            exit: None,
            stdin: true,
            terminal: false,
        };
        let mut exited = p("e1");
        exited.status = Status::Stopped;
        exited.exit = Some(Exit {
            status: 2,
            at_nanos: 5,
            reason: "x".into(),
        });
        ContainerRecord {
            id: id.into(),
            bundle: "/b".into(),
            reservation: Reservation {
                millicores: 500,
                memory_bytes: 1 << 20,
            },
            init: p(""),
            execs: vec![exited],
            oom_kills_seen: 0,
            cri: CriIdentity {
                pod_id: "p1".into(),
                name: "sidecar".into(),
            },
        }
    }

    #[test]
    fn saved_records_load_back_equal() {
        let tmp = tempfile::tempdir().unwrap();
        for id in ["a", "b"] {
            let dir = tmp.path().join(id);
            std::fs::create_dir(&dir).unwrap();
            save(&dir, &record(id)).unwrap();
        }
        let sut = load_all(tmp.path());
        assert_eq!(sut, vec![record("a"), record("b")]);
    }

    #[test]
    fn corrupt_or_misplaced_records_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("bad")).unwrap();
        std::fs::write(tmp.path().join("bad").join(STATE_FILE), b"{not json").unwrap();
        std::fs::create_dir(tmp.path().join("other")).unwrap();
        save(&tmp.path().join("other"), &record("c")).unwrap();
        assert!(load_all(tmp.path()).is_empty());
        assert!(load_all(&tmp.path().join("missing")).is_empty());
    }
}
