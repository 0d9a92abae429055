//! The DPU backend: containers run on the DPU through its agent
//! (`heteropod-dpu-proxy`). stdio is streamed over the agent API into the
//! FIFOs containerd handed the shim; exits come from the agent's long-polled
//! Wait and are published like local ones.

use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use heteropod_dpu_proxy::{
    client::{copy_input, copy_output, EventCursor, EventKind, Stream},
    AgentClient, DpuAgent,
};
use oci_spec::runtime::{LinuxResources, Process as OciProcess};
use tokio::task::JoinHandle;

use super::{
    orphans::{self, Orphan},
    rootfs, Backend, CreateSpec, ExitFuture, OomCallback, Spawned,
};
use crate::{
    config::DpuConfig,
    convert::{self, into_agent},
    error::{Error, Result},
    io::{self as stdio_io, Stdio},
    placement::Placement,
    process::Exit,
};

/// How long an exit waits for the process's output to reach the FIFOs.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);
/// How often events are retried while the agent does not answer.
const RECONNECT_ATTEMPTS: u32 = 30;
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// Exit status reported when the agent lost track of a process.
const LOST_STATUS: u32 = 255;
/// Written in the bundle at Create: which agent runs the container (and, on
/// a second line, the key file a network agent wants), for `shim delete`
/// after the shim died.
const ENDPOINT_FILE: &str = "dpu-endpoint";

pub struct DpuBackend {
    id: String,
    bundle: PathBuf,
    agent: AgentClient,
    endpoint: String,
    /// How long an unreachable agent is ridden out.
    lost_after: Duration,
    orphans_dir: PathBuf,
    /// Exec pids (DPU side) to exec ids: the agent addresses execs by id.
    execs: Mutex<HashMap<u32, String>>,
}

impl DpuBackend {
    /// Connects to the agent at `endpoint`. An unreachable DPU is a failed
    /// precondition naming the endpoint: the container never falls back to the CPU.
    pub async fn connect(id: &str, bundle: &Path, dpu: &DpuConfig) -> Result<DpuBackend> {
        let endpoint = dpu.endpoint.as_str();
        if endpoint.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is placed on the DPU but the node config sets no [dpu] endpoint"
            )));
        }
        let agent = AgentClient::connect_with_key(endpoint, dpu.key_file()).await.map_err(|e| {
            Error::FailedPrecondition(format!(
                "container {id} is placed on the DPU but the DPU agent at {endpoint} is unreachable: {e}"
            ))
        })?;
        let orphans_dir = PathBuf::from(&dpu.orphans_dir);
        // The agent answers again: what earlier shims had to leave there goes now.
        let (a, dir) = (agent.clone(), orphans_dir.clone());
        tokio::spawn(async move { orphans::remove_leftovers(&dir, &a).await });
        Ok(DpuBackend {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            agent,
            endpoint: endpoint.to_string(),
            lost_after: Duration::from_secs(dpu.lost_after_secs),
            orphans_dir,
            execs: Mutex::new(HashMap::new()),
        })
    }

    fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<u32, String>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reports the container's OOM kills from the agent's event stream until
    /// its init exits (the agent sends OOM before that exit).
    fn watch_oom(&self, on_oom: OomCallback) -> JoinHandle<()> {
        let (agent, id) = (self.agent.clone(), self.id.clone());
        tokio::spawn(async move {
            let mut cursor = EventCursor::default();
            let mut failures = 0;
            loop {
                let events = match cursor.next(&agent).await {
                    Ok(events) => events,
                    Err(e) if failures < RECONNECT_ATTEMPTS => {
                        failures += 1;
                        tracing::debug!(container = %id, "DPU events: {e}");
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(container = %id, "OOM events from the DPU lost: {e}");
                        return;
                    }
                };
                for e in events.iter().filter(|e| e.container_id == id) {
                    match e.kind.enum_value() {
                        Ok(EventKind::OOM) => on_oom(),
                        Ok(EventKind::EXIT) if e.exec_id.is_empty() => return,
                        _ => {}
                    }
                }
            }
        })
    }

    /// Streams the process's stdio between containerd's FIFOs and the agent;
    /// returns the stdin holder and a future that resolves to its exit once
    /// its output is drained (and, for init, its OOM kills are reported).
    async fn attach(
        &self,
        exec_id: &str,
        stdio: &Stdio,
        oom_watch: Option<JoinHandle<()>>,
    ) -> Result<(Option<File>, ExitFuture)> {
        let mut copies: Vec<JoinHandle<()>> = Vec::new();
        let streams = if stdio.terminal {
            // The terminal carries both streams as one.
            vec![(Stream::STDOUT, &stdio.stdout)]
        } else {
            vec![
                (Stream::STDOUT, &stdio.stdout),
                (Stream::STDERR, &stdio.stderr),
            ]
        };
        for (stream, path) in streams {
            let sink: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match Stdio::path(path) {
                Some(p) => Box::new(tokio::fs::File::from_std(
                    stdio_io::open_fifo_writer(p).await?,
                )),
                // Nobody reads it, but the agent's buffer must still be drained.
                None => Box::new(tokio::io::sink()),
            };
            let (agent, id, exec) = (self.agent.clone(), self.id.clone(), exec_id.to_string());
            copies.push(tokio::spawn(async move {
                if let Err(e) = copy_output(&agent, &id, &exec, stream, sink).await {
                    tracing::warn!(container = %id, exec = %exec, ?stream, "output copy ended: {e}");
                }
            }));
        }
        let mut holder = None;
        if let Some(p) = Stdio::path(&stdio.stdin) {
            let reader = tokio::fs::File::from_std(stdio_io::open_fifo_reader(p)?);
            // Our own writer keeps the reader from seeing EOF before containerd
            // opened its end; CloseIO drops it.
            holder = stdio_io::hold_stdin(stdio);
            let (agent, id, exec) = (self.agent.clone(), self.id.clone(), exec_id.to_string());
            tokio::spawn(async move {
                if let Err(e) = copy_input(&agent, &id, &exec, reader).await {
                    tracing::debug!(container = %id, exec = %exec, "input copy ended: {e}");
                }
            });
        }
        let (agent, id, exec) = (self.agent.clone(), self.id.clone(), exec_id.to_string());
        let lost_after = self.lost_after;
        // Where a lost process's reason is written: the log the user reads.
        let reason_to = if stdio.terminal {
            stdio.stdout.clone()
        } else {
            stdio.stderr.clone()
        };
        let exit: ExitFuture = Box::pin(async move {
            let (exit, lost) = wait_exit(&agent, &id, &exec, lost_after).await;
            if let Some(reason) = lost {
                // Written while the copies still hold the FIFO open: once the
                // last writer closes, containerd stops reading it.
                write_reason(&reason_to, &reason).await;
                // Nothing more will come from the agent.
                oom_watch.iter().for_each(JoinHandle::abort);
                copies.iter().for_each(JoinHandle::abort);
                return exit;
            }
            if let Some(watch) = oom_watch {
                // containerd reports OOMKilled only if TaskOOM precedes TaskExit.
                let _ = tokio::time::timeout(OUTPUT_DRAIN, watch).await;
            }
            for copy in copies {
                let _ = tokio::time::timeout(OUTPUT_DRAIN, copy).await;
            }
            exit
        });
        Ok((holder, exit))
    }
}

/// Long-polls the agent for the process's exit, riding out a restart of the
/// agent that takes less than `lost_after`. A process the agent cannot
/// account for is reported with status 255 and the reason why.
async fn wait_exit(
    agent: &AgentClient,
    id: &str,
    exec_id: &str,
    lost_after: Duration,
) -> (Exit, Option<String>) {
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    loop {
        match agent.wait(id, exec_id).await {
            Ok(w) => {
                let exit = convert::exit_from_agent(w.exit_status, w.exited_at_nanos);
                if w.reason.is_empty() {
                    return (exit, None);
                }
                tracing::warn!(container = %id, exec = %exec_id, "exit: {}", w.reason);
                // Lost while the agent was down: the user should see why.
                let reason = format!("heteropod: the process on the DPU {}", w.reason);
                return (exit, Some(reason));
            }
            Err(e @ heteropod_dpu_proxy::Error::DpuUnreachable { .. }) => {
                let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= lost_after {
                    let reason = format!(
                        "heteropod: reported exited (status {LOST_STATUS}): {e}, unreachable for {}s",
                        lost_after.as_secs()
                    );
                    tracing::warn!(container = %id, exec = %exec_id, "{reason}");
                    return (Exit::now(LOST_STATUS), Some(reason));
                }
                tokio::time::sleep(RECONNECT_PAUSE).await;
                if let Err(e) = agent.reconnect().await {
                    tracing::debug!(container = %id, "DPU agent still unreachable: {e}");
                }
            }
            Err(e) => {
                let reason = format!("heteropod: lost track of the process on the DPU: {e}");
                tracing::warn!(container = %id, exec = %exec_id, "{reason}");
                return (Exit::now(LOST_STATUS), Some(reason));
            }
        }
    }
}

/// Appends one line to a process's output FIFO (if it has one).
async fn write_reason(fifo: &str, reason: &str) {
    use tokio::io::AsyncWriteExt;
    let Some(path) = Stdio::path(fifo) else {
        return;
    };
    let Ok(file) = stdio_io::open_fifo_writer(path).await else {
        return;
    };
    let mut file = tokio::fs::File::from_std(file);
    let _ = file.write_all(format!("{reason}\n").as_bytes()).await;
}

/// `shim delete` for a container the dead shim ran on the DPU: `Ok(false)`
/// when the bundle shows none.
pub async fn cleanup(id: &str, bundle: &Path) -> Result<bool> {
    let Ok(marker) = std::fs::read_to_string(bundle.join(ENDPOINT_FILE)) else {
        return Ok(false);
    };
    let mut lines = marker.lines().map(str::trim);
    let dpu = DpuConfig {
        endpoint: lines.next().unwrap_or_default().to_string(),
        key_file: lines.next().unwrap_or_default().to_string(),
        ..DpuConfig::default()
    };
    let backend = match DpuBackend::connect(id, bundle, &dpu).await {
        Ok(b) => b,
        Err(e) => {
            let _ = rootfs::clean(bundle).await;
            return Err(e);
        }
    };
    if let Err(e) = backend.agent.kill(id, "", 9, true).await {
        tracing::debug!(container = %id, "kill on the DPU: {e}");
    }
    // The agent deletes only a stopped container.
    let _ = tokio::time::timeout(OUTPUT_DRAIN, backend.agent.wait(id, "")).await;
    backend.delete().await?;
    Ok(true)
}

#[async_trait]
impl Backend for DpuBackend {
    fn placement(&self) -> Placement {
        Placement::Dpu
    }

    async fn create(&self, spec: CreateSpec<'_>) -> Result<Spawned> {
        into_agent::prepare_bundle(&self.bundle, spec.pod_netns)?;
        rootfs::mount(&self.bundle, spec.rootfs).await?;
        let req = into_agent::create_request(&self.id, &self.bundle, spec.stdio);
        let pid = match self.agent.create_container(req).await {
            Ok(pid) => pid,
            Err(e) => {
                let _ = rootfs::clean(&self.bundle).await;
                return Err(e.into());
            }
        };
        let marker = self.bundle.join(ENDPOINT_FILE);
        let key_file = self.agent.key_file().map(|p| p.display().to_string());
        let text = format!("{}\n{}\n", self.endpoint, key_file.unwrap_or_default());
        if let Err(e) = std::fs::write(&marker, text) {
            tracing::warn!(container = %self.id, "write {}: {e}", marker.display());
        }
        let oom_watch = self.watch_oom(spec.on_oom);
        match self.attach("", spec.stdio, Some(oom_watch)).await {
            Ok((stdin, exit)) => Ok(Spawned {
                pid,
                stdin,
                console: None,
                exit: Some(exit),
            }),
            Err(e) => {
                let _ = self.delete().await;
                Err(e)
            }
        }
    }

    async fn start(&self) -> Result<()> {
        self.agent.start(&self.id, "").await?;
        Ok(())
    }

    async fn exec(&self, exec_id: &str, process: &OciProcess, stdio: &Stdio) -> Result<Spawned> {
        let req = into_agent::exec_request(&self.id, exec_id, process, stdio)?;
        self.agent.exec(req).await?;
        let pid = self.agent.start(&self.id, exec_id).await?;
        self.execs().insert(pid, exec_id.to_string());
        let (stdin, exit) = self.attach(exec_id, stdio, None).await?;
        Ok(Spawned {
            pid,
            stdin,
            console: None,
            exit: Some(exit),
        })
    }

    async fn kill(&self, signal: u32, all: bool) -> Result<()> {
        Ok(self.agent.kill(&self.id, "", signal, all).await?)
    }

    async fn kill_exec(&self, pid: u32, signal: u32) -> Result<()> {
        let exec_id = self
            .execs()
            .get(&pid)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no exec with pid {pid} on the DPU")))?;
        Ok(self.agent.kill(&self.id, &exec_id, signal, false).await?)
    }

    async fn delete(&self) -> Result<()> {
        match self.agent.delete(&self.id, "").await {
            Ok(_) | Err(heteropod_dpu_proxy::Error::NotFound(_)) => {}
            // The Pod must stay removable when the DPU is gone; what is left
            // there goes when the agent answers again.
            Err(heteropod_dpu_proxy::Error::DpuUnreachable { .. }) => orphans::record(
                &self.orphans_dir,
                &Orphan {
                    endpoint: self.agent.address().to_string(),
                    kind: orphans::Kind::Container,
                    id: self.id.clone(),
                },
            ),
            Err(e) => return Err(e.into()),
        }
        self.execs().clear();
        stdio_io::remove_quietly(&self.bundle.join(ENDPOINT_FILE));
        rootfs::clean(&self.bundle).await
    }

    async fn pause(&self) -> Result<()> {
        Ok(self.agent.pause(&self.id).await?)
    }

    async fn resume(&self) -> Result<()> {
        Ok(self.agent.resume(&self.id).await?)
    }

    async fn pids(&self) -> Result<Vec<u32>> {
        let processes = self.agent.pids(&self.id).await?;
        Ok(processes.into_iter().map(|p| p.pid).collect())
    }

    async fn update(&self, resources: &LinuxResources) -> Result<()> {
        let json = into_agent::resources_json(resources)?;
        Ok(self.agent.update(&self.id, json).await?)
    }

    async fn stats(&self, _init_pid: u32) -> Result<Any> {
        let stats = self.agent.stats(&self.id).await?;
        convert::stats_any(&stats)
    }

    async fn delete_exec(&self, exec_id: &str) -> Result<()> {
        self.execs().retain(|_, e| e != exec_id);
        match self.agent.delete(&self.id, exec_id).await {
            Ok(_) | Err(heteropod_dpu_proxy::Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn resize_pty(&self, exec_id: &str, width: u32, height: u32) -> Result<bool> {
        self.agent
            .resize_pty(&self.id, exec_id, width, height)
            .await?;
        Ok(true)
    }
}
