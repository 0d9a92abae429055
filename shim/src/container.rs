//! One container as the shim tracks it: its backend, init process and execs.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use crate::{
    backend::Backend,
    error::{Error, Result},
    placement::Placement,
    process::Process,
};

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub placement: Placement,
    pub backend: Arc<dyn Backend>,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// The container shares a PID namespace (e.g. the Pod's), so its processes do
    /// not die with its init and must be killed explicitly.
    pub shared_pid_ns: bool,
    /// The fast-path library is preloaded (see `fastpath`): execs get it too.
    pub fastpath: bool,
    /// Serialises lifecycle steps with exit handling so events keep their order
    /// (create/start/exec-started before the matching exit).
    pub lifecycle: tokio::sync::Mutex<()>,
}

impl Container {
    pub fn new(
        id: &str,
        bundle: PathBuf,
        placement: Placement,
        backend: Arc<dyn Backend>,
        init: Arc<Process>,
        shared_pid_ns: bool,
    ) -> Container {
        Container {
            id: id.to_string(),
            bundle,
            placement,
            backend,
            init,
            execs: Mutex::new(HashMap::new()),
            shared_pid_ns,
            fastpath: false,
            lifecycle: tokio::sync::Mutex::new(()),
        }
    }

    /// Marks the container as having the fast-path library preloaded.
    pub fn with_fastpath(mut self, on: bool) -> Container {
        self.fastpath = on;
        self
    }

    fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The init process for an empty `exec_id`, else that exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} in container {}", self.id)))
    }

    pub fn add_exec(&self, process: Arc<Process>) -> Result<()> {
        let mut execs = self.execs();
        if execs.contains_key(&process.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {} in container {}",
                process.exec_id, self.id
            )));
        }
        execs.insert(process.exec_id.clone(), process);
        Ok(())
    }

    pub fn remove_exec(&self, exec_id: &str) -> Option<Arc<Process>> {
        self.execs().remove(exec_id)
    }

    pub fn exec_pids(&self) -> Vec<(u32, String)> {
        self.execs()
            .values()
            .map(|p| (p.pid(), p.exec_id.clone()))
            .collect()
    }
}
