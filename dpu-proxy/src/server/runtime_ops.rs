//! Container operations besides the lifecycle: pause/resume, update, pids,
//! stats, stdin and terminal size.
use std::collections::HashMap;

use super::{
    cgroup::Usage,
    console,
    process::Status,
    runtime::{name, Runtime},
};
use crate::{
    error::{Error, Result},
    ids::validate_exec_id,
};

impl Runtime {
    pub async fn pause(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        if c.init.status() != Status::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        self.exec.pause(id).await?;
        c.init.set_status(Status::Paused);
        c.save();
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        if c.init.status() != Status::Paused {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not paused"
            )));
        }
        self.exec.resume(id).await?;
        c.init.set_status(Status::Running);
        c.save();
        Ok(())
    }

    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let c = self.get(id)?;
        let res: serde_json::Value = serde_json::from_slice(resources_json)
            .map_err(|e| Error::InvalidArgument(format!("resources: {e}")))?;
        self.policy.check_update(&res)?;
        if let Some(cpus) = res["cpu"]["cpus"].as_str().filter(|s| !s.is_empty()) {
            if !super::cgroup::parse_cpuset(cpus)?.is_subset(&self.cgroup.cores) {
                return Err(Error::InvalidArgument(format!(
                    "cpuset {cpus:?} is outside the DPU cores"
                )));
            }
        }
        if c.init.exit().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {id} has exited"
            )));
        }
        self.exec.update(id, resources_json).await
    }

    /// Pids of the container, each with the exec it is the main process of.
    pub async fn pids(&self, id: &str) -> Result<Vec<(u32, String)>> {
        let c = self.get(id)?;
        let pids = self.exec.pids(id).await?;
        let by_pid: HashMap<u32, String> = c
            .exec_list()
            .iter()
            .map(|p| (p.pid(), p.exec_id.clone()))
            .collect();
        Ok(pids
            .into_iter()
            .map(|pid| (pid, by_pid.get(&pid).cloned().unwrap_or_default()))
            .collect())
    }

    pub fn stats(&self, id: &str) -> Result<Usage> {
        self.get(id)?;
        Ok(self.cgroup.usage(Some(id)))
    }

    pub async fn write_input(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<usize> {
        validate_exec_id(exec_id)?;
        self.get(id)?.process(exec_id)?.stdin.write(data).await
    }

    pub async fn close_io(&self, id: &str, exec_id: &str) -> Result<()> {
        validate_exec_id(exec_id)?;
        self.get(id)?.process(exec_id)?.stdin.close().await;
        Ok(())
    }

    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        validate_exec_id(exec_id)?;
        let p = self.get(id)?.process(exec_id)?;
        let console = p.console().ok_or_else(|| {
            Error::FailedPrecondition(format!("{} has no terminal", name(id, exec_id)))
        })?;
        if p.exit().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "{} has exited",
                name(id, exec_id)
            )));
        }
        console::set_size(&console, width, height)
    }
}
