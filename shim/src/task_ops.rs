//! The Task operations with more than one step: create, start, delete, exec,
//! kill, and the handling of process exits.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use containerd_shim::{
    api,
    asynchronous::{monitor::monitor_subscribe, ExitSignal},
    monitor::{Subject, Topic},
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};

use crate::{
    backend::{self, CreateSpec, ExitFuture},
    bundle::BundleSpec,
    config::Config,
    container::Container,
    dpu_fit,
    error::{Error, Result},
    events::Events,
    exits::{ExitTable, Watched},
    fastpath,
    io::Stdio,
    options::RuntimeOptions,
    placement,
    process::{Exit, Process, State},
    sandbox::Sandbox,
    task::{lock, Shared, TaskService},
};

/// Keeps the shim, and a container placed on the CPU, on the host's cores
/// (`[host] cpus`) when the node sets cores aside for its DPU. The shim's own
/// threads are pinned at every Create: the node config only arrives with it.
fn host_cpus(
    id: &str,
    bundle: &std::path::Path,
    placement: placement::Placement,
    config: &Config,
) -> Result<()> {
    let cpus = config.host.cpus.trim();
    if cpus.is_empty() {
        return Ok(());
    }
    if let Err(e) = crate::host_cpus::pin_process(0, cpus) {
        tracing::warn!("the shim stays where it is, not on [host] cpus {cpus:?}: {e}");
    }
    if placement == placement::Placement::Cpu {
        crate::host_cpus::apply_to_bundle(id, bundle, cpus)?;
    }
    Ok(())
}

impl TaskService {
    pub fn new(namespace: &str, events: Events, exit_signal: Arc<ExitSignal>) -> TaskService {
        TaskService {
            shared: Arc::new(Shared {
                namespace: namespace.to_string(),
                containers: Mutex::new(HashMap::new()),
                sandbox: Mutex::new(Sandbox::default()),
                exits: ExitTable::default(),
                events,
                exit_signal,
                pod_network: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Starts routing exits the shim's reaper reports to their processes.
    pub async fn watch_exits(&self) -> Result<()> {
        let mut sub = monitor_subscribe(Topic::Pid).await?;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(event) = sub.rx.recv().await {
                let Subject::Pid(pid) = event.subject else {
                    continue;
                };
                let exit = Exit::now(event.exit_code as u32);
                if let Some(w) = shared.exits.exited(pid as u32, exit) {
                    tokio::spawn(finish_exit(shared.clone(), w, exit));
                }
            }
        });
        Ok(())
    }

    pub(crate) fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.shared.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id}")))
    }

    pub(crate) async fn do_create(
        &self,
        req: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse> {
        if req.id.is_empty() || req.id.contains('/') {
            return Err(Error::InvalidArgument(format!("container id {:?}", req.id)));
        }
        if lock(&self.shared.containers).contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!("container {}", req.id)));
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::Unimplemented("restore from checkpoint"));
        }
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        stdio.validate()?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = BundleSpec::read(&bundle)?;
        let options = RuntimeOptions::from_any(req.options.as_ref())?;
        let config = Config::load(Some(&options.config_path))?;
        let settings = options.resolve(&config);
        let annotations = &spec.annotations;
        let intent = placement::decide(annotations, &config)?;
        let placement = dpu_fit::resolve(&req.id, intent, spec.demand, &config).await?;
        placement::check_spans(&req.id, placement, spec.shared_pid_ns)?;
        let fastpath = fastpath::decide(annotations, placement, &config)?;
        let is_sandbox = annotations
            .get(placement::CONTAINER_TYPE)
            .map(String::as_str)
            == Some("sandbox");
        tracing::info!(id = %req.id, ?intent, %placement, "placing container");
        host_cpus(&req.id, &bundle, placement, &config)?;
        let backend = backend::for_placement(
            placement,
            &req.id,
            &bundle,
            &settings,
            &config,
            &self.shared.namespace,
        )
        .await?;
        settings.save(&bundle)?;
        let fastpath = fastpath::request(&req.id, fastpath, &config);
        lock(&self.shared.sandbox).admit(&req.id, is_sandbox, placement)?;

        let events = self.shared.events.clone();
        let oom_id = req.id.clone();
        let on_oom = Box::new(move || {
            events.send(TaskOOM {
                container_id: oom_id.clone(),
                ..Default::default()
            })
        });
        let pod_netns = match placement {
            placement::Placement::Dpu => match self.dpu_half(&spec, &config).await {
                Ok(n) => n,
                Err(e) => {
                    lock(&self.shared.sandbox).remove(&req.id);
                    return Err(e);
                }
            },
            placement::Placement::Cpu => None,
        };
        let spawned = match backend
            .create(CreateSpec {
                rootfs: &req.rootfs,
                stdio: &stdio,
                on_oom,
                pod_netns: pod_netns.as_deref(),
                fastpath: fastpath.as_ref(),
            })
            .await
        {
            Ok(s) => s,
            Err(e) => {
                lock(&self.shared.sandbox).remove(&req.id);
                return Err(e);
            }
        };
        let init = Arc::new(Process::new("", stdio.clone(), None));
        let remote_exit = spawned.exit;
        init.set_created(spawned.pid, spawned.stdin, spawned.console);
        let container = Arc::new(
            Container::new(
                &req.id,
                bundle,
                placement,
                backend,
                init.clone(),
                spec.shared_pid_ns,
            )
            .with_fastpath(fastpath.is_some_and(|r| r.applied())),
        );
        let _order = container.lifecycle.lock().await;
        lock(&self.shared.containers).insert(req.id.clone(), container.clone());
        let watched = Watched {
            owner: container.clone(),
            process: init,
        };
        let early = match remote_exit {
            Some(exit) => {
                tokio::spawn(finish_remote_exit(self.shared.clone(), watched, exit));
                None
            }
            None => self.shared.exits.register(spawned.pid, watched),
        };
        self.shared.events.send(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
                terminal: stdio.terminal,
                ..Default::default()
            })
            .into(),
            checkpoint: req.checkpoint.clone(),
            pid: spawned.pid,
            ..Default::default()
        });
        drop(_order);
        if let Some(exit) = early {
            let w = Watched {
                owner: container.clone(),
                process: container.init.clone(),
            };
            tokio::spawn(finish_exit(self.shared.clone(), w, exit));
        }
        Ok(api::CreateTaskResponse {
            pid: spawned.pid,
            ..Default::default()
        })
    }

    /// The DPU half of the Pod network for a container placed on the DPU.
    async fn dpu_half(&self, spec: &BundleSpec, config: &Config) -> Result<Option<String>> {
        let sandbox_bundle = spec
            .annotations
            .get(placement::SANDBOX_ID)
            .and_then(|id| self.container(id).ok())
            .map(|c| c.bundle.clone());
        crate::pod_network::dpu_half(&self.shared.pod_network, spec, config, sandbox_bundle).await
    }

    pub(crate) async fn do_start(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.state() != State::Created || p.exit().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "process {:?} of {} is not in created state",
                req.exec_id, req.id
            )));
        }
        let order = c.lifecycle.lock().await;
        if req.exec_id.is_empty() {
            c.backend.start().await?;
            p.set_running();
            self.shared.events.send(TaskStart {
                container_id: req.id.clone(),
                pid: p.pid(),
                ..Default::default()
            });
        } else {
            let spec = p
                .spec
                .as_ref()
                .ok_or_else(|| Error::InvalidArgument("exec has no process spec".into()))?;
            let spawned = c.backend.exec(&p.exec_id, spec, &p.stdio).await?;
            let remote_exit = spawned.exit;
            p.set_created(spawned.pid, spawned.stdin, spawned.console);
            let w = Watched {
                owner: c.clone(),
                process: p.clone(),
            };
            let early = match remote_exit {
                Some(exit) => {
                    tokio::spawn(finish_remote_exit(self.shared.clone(), w.clone(), exit));
                    None
                }
                None => self.shared.exits.register(spawned.pid, w.clone()),
            };
            p.set_running();
            self.shared.events.send(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: spawned.pid,
                ..Default::default()
            });
            if let Some(exit) = early {
                drop(order);
                finish_exit(self.shared.clone(), w, exit).await;
            }
        }
        Ok(api::StartResponse {
            pid: p.pid(),
            ..Default::default()
        })
    }

    pub(crate) async fn do_delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
        let c = self.container(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = c.process(&req.exec_id)?;
            if matches!(p.state(), State::Running | State::Paused) && p.exit().is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "exec {} is still running",
                    req.exec_id
                )));
            }
            if p.state() != State::Created {
                if let Err(e) = c.backend.delete_exec(&req.exec_id).await {
                    tracing::warn!(container = %req.id, exec = %req.exec_id, "delete exec: {e}");
                }
            }
            c.remove_exec(&req.exec_id);
            self.shared.exits.forget(p.pid());
            let exit = p.exit().unwrap_or_else(|| Exit::now(0));
            return Ok(delete_response(p.pid(), exit));
        }
        let p = c.init.clone();
        if matches!(p.state(), State::Running | State::Paused) && p.exit().is_none() {
            return Err(Error::FailedPrecondition(format!(
                "container {} is still running",
                req.id
            )));
        }
        c.backend.delete().await?;
        if lock(&self.shared.sandbox).sandbox_id() == Some(req.id.as_str()) {
            if let Some(net) = self.shared.pod_network.lock().await.take() {
                net.destroy().await;
            }
        }
        if p.exit().is_none() {
            // Created but never started: the forced delete killed it; its exit
            // may still be on the way.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), p.wait()).await;
        }
        let exit = p.exit().unwrap_or_else(|| Exit::now(137));
        lock(&self.shared.containers).remove(&req.id);
        lock(&self.shared.sandbox).remove(&req.id);
        self.shared.exits.forget(p.pid());
        self.shared.events.send(TaskDelete {
            container_id: req.id.clone(),
            pid: p.pid(),
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            id: req.id.clone(),
            ..Default::default()
        });
        Ok(delete_response(p.pid(), exit))
    }

    pub(crate) async fn do_exec(&self, req: api::ExecProcessRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(Error::InvalidArgument("exec id is empty".into()));
        }
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("exec has no process spec".into()))?;
        let mut spec: oci_spec::runtime::Process = serde_json::from_slice(&any.value)
            .map_err(|e| Error::InvalidArgument(format!("exec process spec: {e}")))?;
        spec.set_terminal(Some(req.terminal));
        if c.fastpath {
            // containerd builds an exec's process from its own copy of the
            // spec, which has not seen the bundle's edit.
            let mut env = spec.env().clone().unwrap_or_default();
            if fastpath::preload_env(&mut env) {
                spec.set_env(Some(env));
            }
        }
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        stdio.validate()?;
        c.add_exec(Arc::new(Process::new(&req.exec_id, stdio, Some(spec))))?;
        self.shared.events.send(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        });
        Ok(())
    }

    pub(crate) async fn do_kill(&self, req: api::KillRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if !req.exec_id.is_empty() {
            if p.exit().is_some() {
                return Err(Error::NotFound("process already finished".into()));
            }
            return c.backend.kill_exec(p.pid(), req.signal).await;
        }
        if p.exit().is_some() && !req.all {
            return Err(Error::NotFound("process already finished".into()));
        }
        c.backend.kill(req.signal, req.all).await
    }
}

pub(crate) fn delete_response(pid: u32, exit: Exit) -> api::DeleteResponse {
    api::DeleteResponse {
        pid,
        exit_status: exit.status,
        exited_at: Some(exit.timestamp()).into(),
        ..Default::default()
    }
}

/// Waits for the exit of a process the backend reports itself (DPU), then
/// handles it like a reaped one.
async fn finish_remote_exit(shared: Arc<Shared>, w: Watched<Container>, exit: ExitFuture) {
    let exit = exit.await;
    finish_exit(shared, w, exit).await;
}

/// Records an exit and publishes it once output has drained.
pub(crate) async fn finish_exit(shared: Arc<Shared>, w: Watched<Container>, exit: Exit) {
    let (c, p) = (w.owner, w.process);
    let _order = c.lifecycle.lock().await;
    if let Some(mut console) = p.take_console() {
        console.drain().await;
    }
    if p.set_exited(exit) {
        let id = if p.exec_id.is_empty() {
            c.id.clone()
        } else {
            p.exec_id.clone()
        };
        tracing::info!(container = %c.id, %id, status = exit.status, "process exited");
        shared.events.send(TaskExit {
            container_id: c.id.clone(),
            id,
            pid: p.pid(),
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        });
    }
    if p.exec_id.is_empty() && c.shared_pid_ns {
        // Without its own PID namespace nothing else dies with init.
        let _ = c.backend.kill(9, true).await;
    }
}
