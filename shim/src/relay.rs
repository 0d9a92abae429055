//! The CPU-side HeteroNet relay of a split Pod, kept running by the shim: if
//! it dies, its streams are reset (the peer relay sees it go) and a new one
//! is started, so new connections work again.

use std::{
    process::Stdio,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use containerd_shim::{
    asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe, Subscription},
    monitor::Topic,
};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{process::Command, sync::watch, task::JoinHandle};

use crate::{
    backend::spawner::wait_child,
    error::{Error, Result},
};

/// First delay before a restart; doubled for each quick death, up to the max.
const RESTART_DELAY: Duration = Duration::from_millis(200);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);
/// A relay that lived this long resets the back-off.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long the relay gets to leave on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The relay's command line.
#[derive(Debug, Clone)]
pub struct RelayCommand {
    pub bin: String,
    pub args: Vec<String>,
    /// The host's cores (`[host] cpus`) the relay is pinned to, if the node sets them.
    pub cpus: Option<String>,
}

pub struct RelaySupervisor {
    pid: Arc<AtomicU32>,
    restarts: Arc<AtomicU32>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A running relay and the way its exit is learnt (the shim's reaper may
/// reap it before tokio does).
struct Running {
    child: tokio::process::Child,
    pid: u32,
    sub: Subscription,
}

impl Running {
    async fn spawn(cmd: &RelayCommand) -> Result<Running> {
        let sub = monitor_subscribe(Topic::Pid).await?;
        let spawned = Command::new(&cmd.bin)
            .args(&cmd.args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        match spawned {
            Ok(child) => {
                let pid = child.id().unwrap_or_default();
                if let Some(cpus) = &cmd.cpus {
                    // It inherits the shim's pinning; this holds even if the shim's failed.
                    if let Err(e) = crate::host_cpus::pin_process(pid, cpus) {
                        tracing::warn!(pid, "the relay is not on [host] cpus {cpus:?}: {e}");
                    }
                }
                Ok(Running { pid, child, sub })
            }
            Err(e) => {
                let _ = monitor_unsubscribe(sub.id).await;
                Err(Error::FailedPrecondition(format!(
                    "cannot start the HeteroNet relay {:?} ([dpu] relay in the node config): {e}",
                    cmd.bin
                )))
            }
        }
    }

    async fn exited(&mut self) -> std::process::ExitStatus {
        wait_child(&mut self.child, &mut self.sub, self.pid).await
    }

    async fn stop(mut self) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, self.exited())
            .await
            .is_err()
        {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            let _ = self.exited().await;
        }
        let _ = monitor_unsubscribe(self.sub.id).await;
    }
}

impl RelaySupervisor {
    /// Starts the relay (an error if it cannot be started at all) and keeps
    /// it running until [`RelaySupervisor::stop`]. `on_spawn` learns each new pid.
    pub async fn start(
        cmd: RelayCommand,
        on_spawn: impl Fn(u32) + Send + Sync + 'static,
    ) -> Result<RelaySupervisor> {
        let first = Running::spawn(&cmd).await?;
        let pid = Arc::new(AtomicU32::new(first.pid));
        let restarts = Arc::new(AtomicU32::new(0));
        on_spawn(first.pid);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(
            cmd,
            first,
            pid.clone(),
            restarts.clone(),
            stop_rx,
            on_spawn,
        ));
        Ok(RelaySupervisor {
            pid,
            restarts,
            stop,
            task,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Stops the relay (SIGTERM, then SIGKILL) and waits until it is gone.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn supervise(
    cmd: RelayCommand,
    mut running: Running,
    pid: Arc<AtomicU32>,
    restarts: Arc<AtomicU32>,
    mut stop: watch::Receiver<bool>,
    on_spawn: impl Fn(u32) + Send + Sync + 'static,
) {
    let mut delay = RESTART_DELAY;
    loop {
        let born = tokio::time::Instant::now();
        tokio::select! {
            status = running.exited() => {
                let _ = monitor_unsubscribe(running.sub.id).await;
                tracing::warn!(pid = running.pid, ?status, "HeteroNet relay exited; restarting it");
                delay = if born.elapsed() > STABLE_AFTER { RESTART_DELAY } else { delay };
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return,
                    }
                    delay = (delay * 2).min(MAX_RESTART_DELAY);
                    match Running::spawn(&cmd).await {
                        Ok(r) => {
                            running = r;
                            break;
                        }
                        Err(e) => tracing::error!("restart the relay: {e}"),
                    }
                }
                pid.store(running.pid, Ordering::Relaxed);
                restarts.fetch_add(1, Ordering::Relaxed);
                on_spawn(running.pid);
            }
            _ = stop.changed() => {
                running.stop().await;
                return;
            }
        }
    }
}
