//! A container on the DPU: its init process, its execs, its reservation.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use super::{
    cgroup::Reservation,
    process::{Process, Status},
    state::{self, ContainerRecord, CriIdentity},
};
use crate::{
    error::{Error, Result},
    ids::{validate_exec_id, validate_id},
};

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    /// The agent's directory for this container (state, adapted bundle, pid files).
    pub dir: PathBuf,
    pub reservation: Reservation,
    pub cri: CriIdentity,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Exec process specs registered by Exec, started by Start.
    pub pending_exec_specs: Mutex<HashMap<String, PathBuf>>,
    pub oom_kills_seen: Mutex<u64>,
    /// Serializes state file writes.
    save_lock: Mutex<()>,
}

impl Container {
    pub fn new(
        id: &str,
        bundle: PathBuf,
        dir: PathBuf,
        reservation: Reservation,
        cri: CriIdentity,
        init: Arc<Process>,
    ) -> Arc<Self> {
        Arc::new(Container {
            id: id.into(),
            bundle,
            dir,
            reservation,
            cri,
            init,
            execs: Mutex::new(HashMap::new()),
            pending_exec_specs: Mutex::new(HashMap::new()),
            oom_kills_seen: Mutex::new(0),
            save_lock: Mutex::new(()),
        })
    }

    fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The init process for an empty exec id, else that exec. Every RPC
    /// naming a process comes through here, so the id is checked here.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        validate_exec_id(exec_id)?;
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} in container {}", self.id)))
    }

    pub fn add_exec(&self, p: Arc<Process>) -> Result<()> {
        validate_id("exec", &p.exec_id)?;
        let mut execs = self.execs();
        if execs.contains_key(&p.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {} in container {}",
                p.exec_id, self.id
            )));
        }
        execs.insert(p.exec_id.clone(), p);
        Ok(())
    }

    pub fn remove_exec(&self, exec_id: &str) -> Option<Arc<Process>> {
        self.pending_exec_specs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(exec_id);
        self.execs().remove(exec_id)
    }

    pub fn exec_list(&self) -> Vec<Arc<Process>> {
        self.execs().values().cloned().collect()
    }

    /// Running and paused containers hold their reservation.
    pub fn holds_reservation(&self) -> bool {
        self.init.status() != Status::Stopped
    }

    pub fn record(&self) -> ContainerRecord {
        let mut execs: Vec<_> = self.exec_list().iter().map(|p| p.record()).collect();
        execs.sort_by(|a, b| a.exec_id.cmp(&b.exec_id));
        ContainerRecord {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            reservation: self.reservation,
            init: self.init.record(),
            execs,
            oom_kills_seen: *self
                .oom_kills_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            cri: self.cri.clone(),
        }
    }

    pub fn save(&self) {
        let _g = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.dir.exists() {
            return; // deleted meanwhile
        }
        if let Err(e) = state::save(&self.dir, &self.record()) {
            tracing::warn!(container = %self.id, "persist state: {e}");
        }
    }

    /// Removes the agent's directory of this container.
    pub fn remove_dir(&self) {
        let _g = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(container = %self.id, "remove {}: {e}", self.dir.display());
            }
        }
    }
}
