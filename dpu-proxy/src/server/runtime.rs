//! The agent's container logic, independent of the wire format: one
//! `Runtime` owns every container and drives them through an `Executor`.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use super::{
    cgroup::{CgroupParent, Reservation, Usage},
    container::Container,
    events::{Event, EventKind, EventLog},
    executor::{Executor, IoPlan},
    policy::Policy,
    process::{now_nanos, proc_start_time, Exit, Process, Status},
    state,
};
use crate::{
    error::{Error, Result},
    ids::{validate_exec_id, validate_id},
};

/// How often processes the agent did not parent (after a restart) are polled.
const ADOPTED_POLL: Duration = Duration::from_millis(200);
/// How long Delete of a created container waits for its init to go.
const DELETE_EXIT_WAIT: Duration = Duration::from_secs(10);

pub struct Runtime {
    pub(crate) containers_dir: PathBuf,
    state_dir: PathBuf,
    /// What containers may ask for on this DPU.
    pub(crate) policy: Policy,
    pub(crate) exec: Arc<dyn Executor>,
    pub(crate) cgroup: CgroupParent,
    pub events: Arc<EventLog>,
    containers: RwLock<HashMap<String, Arc<Container>>>,
    /// Serializes Create and Delete, so the capacity check and the id
    /// uniqueness check hold.
    admin: tokio::sync::Mutex<()>,
}

/// The DPU's capacity report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub cpus: String,
    pub total_cores: u32,
    pub total_memory_bytes: u64,
    pub reserved: Reservation,
    pub used: Usage,
    pub running: u32,
}

impl Runtime {
    pub fn new(
        state_dir: &Path,
        exec: Arc<dyn Executor>,
        cgroup: CgroupParent,
        events: Arc<EventLog>,
        policy: Policy,
    ) -> Result<Arc<Self>> {
        let containers_dir = state_dir.join("containers");
        state::create_private_dir(&containers_dir)?;
        Ok(Arc::new(Runtime {
            containers_dir,
            state_dir: state_dir.to_path_buf(),
            policy,
            exec,
            cgroup,
            events,
            containers: RwLock::new(HashMap::new()),
            admin: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        validate_id("container", id)?;
        self.containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id}")))
    }

    pub fn list(&self) -> Vec<Arc<Container>> {
        self.containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn insert(&self, c: Arc<Container>) {
        self.containers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(c.id.clone(), c);
    }

    fn reserved(&self) -> Reservation {
        self.list()
            .iter()
            .filter(|c| c.holds_reservation())
            .fold(Reservation::default(), |a, c| a + c.reservation)
    }

    pub fn capacity(&self) -> Capacity {
        let list = self.list();
        Capacity {
            cpus: self.cgroup.cpus.clone(),
            total_cores: self.cgroup.cores.len() as u32,
            total_memory_bytes: self.cgroup.memory_bytes,
            reserved: self.reserved(),
            used: self.cgroup.usage(None),
            running: list
                .iter()
                .filter(|c| matches!(c.init.status(), Status::Running | Status::Paused))
                .count() as u32,
        }
    }

    fn check_fits(&self, want: Reservation) -> Result<()> {
        let have = self.reserved();
        let cores_m = self.cgroup.cores.len() as u64 * 1000;
        if have.millicores + want.millicores > cores_m {
            return Err(Error::DpuFull(format!(
                "cpu: {}m requested, {}m of {}m free",
                want.millicores,
                cores_m.saturating_sub(have.millicores),
                cores_m
            )));
        }
        let mem = self.cgroup.memory_bytes;
        if mem > 0 && have.memory_bytes + want.memory_bytes > mem {
            return Err(Error::DpuFull(format!(
                "memory: {} bytes requested, {} of {} free",
                want.memory_bytes,
                mem.saturating_sub(have.memory_bytes),
                mem
            )));
        }
        Ok(())
    }

    pub async fn create(
        self: &Arc<Self>,
        id: &str,
        bundle: &str,
        stdin: bool,
        terminal: bool,
    ) -> Result<u32> {
        validate_id("container", id)?;
        let bundle = PathBuf::from(bundle);
        let _admin = self.admin.lock().await;
        if self.get(id).is_ok() {
            return Err(Error::AlreadyExists(format!("container {id}")));
        }
        let super::spec::Adapted {
            mut spec,
            reservation,
            terminal: spec_terminal,
            cri,
        } = super::spec::adapt(
            &bundle,
            id,
            &self.cgroup,
            &self.policy,
            &super::spec::Own {
                state_dir: &self.state_dir,
                netns_dir: &self.state_dir.join(super::network::NETNS_DIR),
            },
        )?;
        let terminal = terminal || spec_terminal;
        // runc makes the terminal in the container and sends it over the
        // console socket, which it accepts only with `terminal: true`.
        if let Some(p) = spec.get_mut("process").and_then(|p| p.as_object_mut()) {
            p.insert("terminal".into(), serde_json::json!(terminal));
        }
        self.check_fits(reservation)?;
        let dir = self.containers_dir.join(id);
        let own_bundle = dir.join("bundle");
        state::create_private_dir(&own_bundle)?;
        let cleanup = |dir: &Path| {
            let _ = std::fs::remove_dir_all(dir);
        };
        let spec_bytes =
            serde_json::to_vec(&spec).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if let Err(e) = state::write_private(&own_bundle.join("config.json"), &spec_bytes) {
            cleanup(&dir);
            return Err(Error::io("write adapted config.json")(e));
        }
        let spawned = match self
            .exec
            .create(id, &own_bundle, &dir, plan(stdin, terminal))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let _ = self.exec.delete(id).await;
                self.cgroup.remove(id);
                cleanup(&dir);
                return Err(e);
            }
        };
        let pid = spawned.pid;
        let init = Process::new("", stdin, terminal);
        init.attach(spawned).await?;
        let c = Container::new(id, bundle, dir, reservation, cri, init.clone());
        c.save();
        self.insert(c.clone());
        self.monitor(c, init, true);
        tracing::info!(container = id, pid, "created");
        Ok(pid)
    }

    /// Watches a process until it exits; records and publishes the exit.
    pub(crate) fn monitor(self: &Arc<Self>, c: Arc<Container>, p: Arc<Process>, parented: bool) {
        let rt = self.clone();
        tokio::spawn(async move {
            let rec = p.record();
            let (status, reason) = if parented {
                (rt.exec.wait_child(rec.pid).await as u32, String::new())
            } else {
                while proc_start_time(rec.pid).is_some_and(|t| t == rec.start_time) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                (
                    255,
                    "exited while the DPU agent was restarting; exit status unknown".to_string(),
                )
            };
            rt.exited(
                &c,
                &p,
                Exit {
                    status,
                    at_nanos: now_nanos(),
                    reason,
                },
            );
        });
    }

    /// Records an exit, reports OOM kills first, persists and publishes.
    pub(crate) fn exited(&self, c: &Container, p: &Process, exit: Exit) {
        let pid = p.pid();
        if !p.set_exited(exit.clone()) {
            return;
        }
        let ooms = self.cgroup.usage(Some(&c.id)).oom_kills;
        let new_oom = {
            let mut seen = c.oom_kills_seen.lock().unwrap_or_else(|e| e.into_inner());
            let new = ooms > *seen;
            *seen = (*seen).max(ooms);
            new
        };
        if new_oom {
            self.events.publish(event(EventKind::Oom, c, p, pid, &exit));
        }
        c.save();
        self.events
            .publish(event(EventKind::Exit, c, p, pid, &exit));
    }

    pub async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32> {
        validate_exec_id(exec_id)?;
        let c = self.get(id)?;
        let p = c.process(exec_id)?;
        if p.status() != Status::Created || p.exit().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "{} is {:?}, not created",
                name(id, exec_id),
                p.status()
            )));
        }
        if exec_id.is_empty() {
            self.exec.start(id).await?;
            p.set_status(Status::Running);
            c.save();
            return Ok(p.pid());
        }
        if c.init.status() != Status::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let spec = c
            .pending_exec_specs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                Error::FailedPrecondition(format!("{} was already started", name(id, exec_id)))
            })?;
        let rec = p.record();
        c.pending_exec_specs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(exec_id);
        let io = plan(rec.stdin, rec.terminal);
        let spawned = match self.exec.exec(id, exec_id, &spec, &c.dir, io).await {
            Ok(s) => s,
            Err(e) => {
                p.fail(format!("exec failed: {e}"));
                c.save();
                return Err(e);
            }
        };
        p.attach(spawned).await?;
        p.set_status(Status::Running);
        c.save();
        self.monitor(c.clone(), p.clone(), true);
        Ok(p.pid())
    }

    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        stdin: bool,
        terminal: bool,
    ) -> Result<()> {
        validate_id("exec", exec_id)?;
        let c = self.get(id)?;
        let mut process: serde_json::Value = serde_json::from_slice(process_json)
            .map_err(|e| Error::InvalidArgument(format!("exec process spec: {e}")))?;
        if !matches!(process["args"].as_array(), Some(a) if !a.is_empty()) {
            return Err(Error::InvalidArgument(
                "exec process spec has no args".into(),
            ));
        }
        self.policy.check_process(&process)?;
        // runc makes the terminal (see `create`); spec and request agree.
        let terminal = terminal || process["terminal"].as_bool() == Some(true);
        process["terminal"] = serde_json::json!(terminal);
        let file = c.dir.join(format!("exec-{exec_id}.json"));
        c.add_exec(Process::new(exec_id, stdin, terminal))?;
        if let Err(e) = state::write_private(&file, process.to_string().as_bytes()) {
            c.remove_exec(exec_id);
            return Err(Error::io("write exec process spec")(e));
        }
        c.pending_exec_specs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(exec_id.into(), file);
        c.save();
        Ok(())
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exit> {
        validate_exec_id(exec_id)?;
        let p = self.get(id)?.process(exec_id)?;
        Ok(p.wait().await)
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        validate_exec_id(exec_id)?;
        let c = self.get(id)?;
        let p = c.process(exec_id)?;
        if p.exit().is_some() {
            return Err(Error::NotFound(format!(
                "{} already exited",
                name(id, exec_id)
            )));
        }
        if exec_id.is_empty() {
            self.exec.kill(id, signal, all).await
        } else if p.pid() == 0 {
            Err(Error::FailedPrecondition(format!(
                "{} is not started",
                name(id, exec_id)
            )))
        } else {
            self.exec.signal_pid(p.pid(), signal).await
        }
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, Exit)> {
        validate_exec_id(exec_id)?;
        let c = self.get(id)?;
        if !exec_id.is_empty() {
            let p = c.process(exec_id)?;
            if matches!(p.status(), Status::Running | Status::Paused) {
                return Err(Error::FailedPrecondition(format!(
                    "{} is running",
                    name(id, exec_id)
                )));
            }
            c.remove_exec(exec_id);
            let _ = std::fs::remove_file(c.dir.join(format!("exec-{exec_id}.json")));
            c.save();
            return Ok((p.pid(), p.exit().unwrap_or_else(never_ran)));
        }
        let _admin = self.admin.lock().await;
        let init = c.init.clone();
        if matches!(init.status(), Status::Running | Status::Paused) {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is running; kill it first"
            )));
        }
        self.exec.delete(id).await?;
        // A created container's init dies with `runc delete --force`.
        let exit = match tokio::time::timeout(DELETE_EXIT_WAIT, init.wait()).await {
            Ok(e) => e,
            Err(_) => {
                let e = Exit {
                    status: 255,
                    at_nanos: now_nanos(),
                    reason: "deleted".into(),
                };
                init.set_exited(e.clone());
                e
            }
        };
        for p in c.exec_list() {
            p.set_exited(Exit {
                status: 255,
                at_nanos: now_nanos(),
                reason: "container deleted".into(),
            });
        }
        self.cgroup.remove(id);
        self.containers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        c.remove_dir();
        tracing::info!(container = id, "deleted");
        Ok((init.pid(), exit))
    }
}

fn plan(stdin: bool, terminal: bool) -> IoPlan {
    if terminal {
        IoPlan::Terminal
    } else {
        IoPlan::Pipes { stdin }
    }
}

pub(super) fn name(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        format!("container {id}")
    } else {
        format!("exec {exec_id} of container {id}")
    }
}

fn never_ran() -> Exit {
    Exit {
        status: 0,
        at_nanos: 0,
        reason: "never started".into(),
    }
}

fn event(kind: EventKind, c: &Container, p: &Process, pid: u32, exit: &Exit) -> Event {
    Event {
        seq: 0,
        kind,
        container_id: c.id.clone(),
        exec_id: p.exec_id.clone(),
        pid,
        exit_status: exit.status,
        exited_at_nanos: exit.at_nanos,
        reason: exit.reason.clone(),
    }
}
