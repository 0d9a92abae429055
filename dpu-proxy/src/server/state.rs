//! Container records persisted under `<state>/containers/<id>/state.json`,
//! written atomically on every transition and reloaded after a restart; and
//! the helpers that keep every file the agent writes readable by it alone
//! (specs and exec processes carry the container's environment, Secrets
//! included).
use std::{
    fs::{DirBuilder, OpenOptions, Permissions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{cgroup::Reservation, process::ProcessRecord};
use crate::{
    error::{Error, Result},
    ids::{validate_exec_id, validate_id},
};

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

/// Creates `dir` (and missing parents) mode 0700; an existing one is set to
/// 0700 (it is the agent's own).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|_| std::fs::set_permissions(dir, Permissions::from_mode(0o700)))
        .map_err(Error::io(format!("create {}", dir.display())))
}

/// Writes `data` to `path`, mode 0600 (also when the file existed).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // open(2) keeps the mode of a file that already exists.
    f.set_permissions(Permissions::from_mode(0o600))?;
    f.write_all(data)
}

pub fn save(dir: &Path, record: &ContainerRecord) -> Result<()> {
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let data = serde_json::to_vec_pretty(record).map_err(|e| Error::Io {
        context: format!("encode state of {}", record.id),
        source: e.into(),
    })?;
    write_private(&tmp, &data).map_err(Error::io(format!("write {}", tmp.display())))?;
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
            Ok(Ok(r)) if !ids_valid(&r) => {
                tracing::warn!("{}: invalid container or exec id", path.display())
            }
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

/// Ids become paths and runc arguments: a record is trusted no more than a request.
fn ids_valid(r: &ContainerRecord) -> bool {
    validate_id("container", &r.id).is_ok()
        && validate_exec_id(&r.init.exec_id).is_ok()
        && r.execs
            .iter()
            .all(|e| !e.exec_id.is_empty() && validate_exec_id(&e.exec_id).is_ok())
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

    #[test]
    fn records_with_path_like_exec_ids_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a");
        std::fs::create_dir(&dir).unwrap();
        let mut sut = record("a");
        sut.execs[0].exec_id = "../../x".into();
        save(&dir, &sut).unwrap();
        assert!(load_all(tmp.path()).is_empty());
    }

    #[test]
    fn private_files_and_dirs_are_the_agents_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let dir = tmp.path().join("d/e");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "an existing dir is tightened");
        let file = dir.join("f");
        std::fs::write(&file, b"old").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        write_private(&file, b"SECRET=1").unwrap();
        assert_eq!(mode(&file), 0o600, "an existing file is tightened");
        assert_eq!(std::fs::read(&file).unwrap(), b"SECRET=1");
        save(&dir, &record("e")).unwrap();
        assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
    }
}
