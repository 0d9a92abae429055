//! The CPU backend: containers run on the host through an OCI runtime (runc).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use async_trait::async_trait;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::{LinuxResources, Process as OciProcess};
use runc::{
    options::{CreateOpts, DeleteOpts, ExecOpts, GlobalOpts, KillOpts},
    Runc,
};

use super::{
    rootfs,
    runc_io::{attach_stdio, DirectIo},
    spawner::ReaperAwareSpawner,
    Backend, CreateSpec, Spawned,
};
use crate::{
    cgroup,
    error::{Error, Result},
    io::{self as stdio_io, ConsoleSocket, Stdio},
    options::RuntimeSettings,
    placement::Placement,
};

const INIT_PID_FILE: &str = "init.pid";
const RUNC_LOG: &str = "log.json";

pub struct RuncBackend {
    id: String,
    bundle: PathBuf,
    settings: RuntimeSettings,
    runc: Runc,
}

impl RuncBackend {
    pub fn new(
        id: &str,
        bundle: &Path,
        settings: &RuntimeSettings,
        namespace: &str,
    ) -> Result<RuncBackend> {
        Ok(RuncBackend {
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            settings: settings.clone(),
            runc: build_runc(bundle, settings, namespace)?,
        })
    }

    /// Turns a failed runc call into an error carrying runc's own message.
    fn runtime_error(&self, op: &'static str, e: runc::error::Error) -> Error {
        let logged = last_logged_error(&self.bundle.join(RUNC_LOG));
        let message = match (e, logged) {
            (runc::error::Error::CommandFailed { stderr, .. }, Some(logged))
                if stderr.trim().is_empty() =>
            {
                logged
            }
            (runc::error::Error::CommandFailed { stderr, status, .. }, logged) => {
                let stderr = stderr.trim();
                match logged {
                    Some(l) if !stderr.is_empty() => format!("{l}: {stderr}"),
                    Some(l) => l,
                    None if !stderr.is_empty() => stderr.to_string(),
                    None => format!("exited with {status}"),
                }
            }
            (runc::error::Error::ProcessSpawnFailed(io), _) => {
                return Error::FailedPrecondition(format!(
                    "cannot run OCI runtime {:?}: {io}",
                    self.settings.binary
                ))
            }
            (other, _) => other.to_string(),
        };
        Error::Runtime { op, message }
    }

    async fn clean_rootfs(&self) -> Result<()> {
        rootfs::clean(&self.bundle).await
    }

    /// Reads a pid file runc wrote.
    async fn read_pid(&self, path: &Path) -> Result<u32> {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(Error::io(format!("read {}", path.display())))?;
        text.trim().parse().map_err(|_| {
            Error::FailedPrecondition(format!("pid file {} holds {text:?}", path.display()))
        })
    }
}

/// Builds the runc client for `settings`; a missing binary is a clear error.
fn build_runc(bundle: &Path, settings: &RuntimeSettings, namespace: &str) -> Result<Runc> {
    let mut opts = GlobalOpts::new()
        .command(&settings.binary)
        .root(Path::new(&settings.root).join(namespace))
        .log(bundle.join(RUNC_LOG))
        .log_json()
        .systemd_cgroup(settings.systemd_cgroup);
    opts.custom_spawner(Arc::new(ReaperAwareSpawner));
    opts.build().map_err(|e| match e {
        runc::error::Error::NotFound => Error::FailedPrecondition(format!(
            "OCI runtime binary {:?} not found (BinaryName option or runc.binary in config)",
            settings.binary
        )),
        other => Error::InvalidArgument(format!("runc options: {other}")),
    })
}

/// The last `error` message runc wrote to its JSON log.
fn last_logged_error(path: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Line {
        level: String,
        msg: String,
    }
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .find(|l| l.level == "error")
        .map(|l| l.msg.trim().to_string())
}

fn kill_error(e: Error) -> Error {
    let text = e.to_string().to_lowercase();
    if text.contains("not running")
        || text.contains("already finished")
        || text.contains("no such process")
    {
        Error::NotFound("process already finished".into())
    } else if text.contains("does not exist") {
        Error::NotFound("container does not exist".into())
    } else {
        e
    }
}

#[async_trait]
impl Backend for RuncBackend {
    fn placement(&self) -> Placement {
        Placement::Cpu
    }

    async fn create(&self, spec: CreateSpec<'_>) -> Result<Spawned> {
        rootfs::mount(&self.bundle, spec.rootfs).await?;
        if let Some(request) = spec.fastpath {
            let rootfs = rootfs::rootfs_of(&self.bundle);
            crate::fastpath::inject(&self.id, &self.bundle, &rootfs, request);
        }
        let pid_file = self.bundle.join(INIT_PID_FILE);
        let mut opts = CreateOpts::new()
            .pid_file(&pid_file)
            .no_pivot(self.settings.no_pivot_root)
            .no_new_keyring(self.settings.no_new_keyring);
        opts.io = Some(Arc::new(DirectIo::new(spec.stdio)));
        let socket = if spec.stdio.terminal {
            let s = ConsoleSocket::new()?;
            opts.console_socket = Some(s.path());
            Some(s)
        } else {
            None
        };
        let created = self.runc.create(&self.id, &self.bundle, Some(&opts)).await;
        if let Err(e) = created {
            let err = self.runtime_error("create", e);
            let _ = self.delete().await;
            return Err(err);
        }
        let pid = self.read_pid(&pid_file).await?;
        let (stdin, console) = match attach_stdio(socket, spec.stdio).await {
            Ok(io) => io,
            Err(e) => {
                let _ = self.delete().await;
                return Err(e);
            }
        };
        if let Err(e) = cgroup::watch_oom(pid, spec.on_oom) {
            tracing::warn!(id = %self.id, "OOM events will not be reported: {e}");
        }
        Ok(Spawned {
            pid,
            stdin,
            console,
            exit: None,
        })
    }

    async fn start(&self) -> Result<()> {
        self.runc
            .start(&self.id)
            .await
            .map(|_| ())
            .map_err(|e| self.runtime_error("start", e))
    }

    async fn exec(&self, exec_id: &str, process: &OciProcess, stdio: &Stdio) -> Result<Spawned> {
        let pid_file = self.bundle.join(format!("{exec_id}.pid"));
        let mut opts = ExecOpts::new().pid_file(&pid_file).detach(true);
        opts.io = Some(Arc::new(DirectIo::new(stdio)));
        let socket = if stdio.terminal {
            let s = ConsoleSocket::new()?;
            opts.console_socket = Some(s.path());
            Some(s)
        } else {
            None
        };
        self.runc
            .exec(&self.id, process, Some(&opts))
            .await
            .map_err(|e| self.runtime_error("exec", e))?;
        let pid = self.read_pid(&pid_file).await;
        stdio_io::remove_quietly(&pid_file);
        let pid = pid?;
        let (stdin, console) = attach_stdio(socket, stdio).await?;
        Ok(Spawned {
            pid,
            stdin,
            console,
            exit: None,
        })
    }

    async fn kill(&self, signal: u32, all: bool) -> Result<()> {
        self.runc
            .kill(&self.id, signal, Some(&KillOpts { all }))
            .await
            .map_err(|e| kill_error(self.runtime_error("kill", e)))
    }

    async fn kill_exec(&self, pid: u32, signal: u32) -> Result<()> {
        let sig = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|_| Error::InvalidArgument(format!("unknown signal {signal}")))?;
        let pid = i32::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::FailedPrecondition("process has no pid".into()))?;
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => {
                Err(Error::NotFound("process already finished".into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self) -> Result<()> {
        if let Err(e) = self
            .runc
            .delete(&self.id, Some(&DeleteOpts { force: true }))
            .await
        {
            let err = self.runtime_error("delete", e);
            if !err.to_string().contains("does not exist") {
                return Err(err);
            }
        }
        self.clean_rootfs().await?;
        stdio_io::remove_quietly(&self.bundle.join(INIT_PID_FILE));
        Ok(())
    }

    async fn pause(&self) -> Result<()> {
        self.runc
            .pause(&self.id)
            .await
            .map_err(|e| self.runtime_error("pause", e))
    }

    async fn resume(&self) -> Result<()> {
        self.runc
            .resume(&self.id)
            .await
            .map_err(|e| self.runtime_error("resume", e))
    }

    async fn pids(&self) -> Result<Vec<u32>> {
        let pids = self
            .runc
            .ps(&self.id)
            .await
            .map_err(|e| self.runtime_error("ps", e))?;
        Ok(pids.into_iter().map(|p| p as u32).collect())
    }

    async fn update(&self, resources: &LinuxResources) -> Result<()> {
        self.runc
            .update(&self.id, resources)
            .await
            .map_err(|e| self.runtime_error("update", e))
    }

    async fn stats(&self, init_pid: u32) -> Result<Any> {
        if init_pid == 0 {
            return Err(Error::FailedPrecondition(format!(
                "container {} has no process",
                self.id
            )));
        }
        cgroup::metrics(init_pid).await.map_err(|e| match e {
            Error::Shim(_) | Error::Io { .. } => Error::NotFound(format!(
                "no cgroup for container {} (is it still running?): {e}",
                self.id
            )),
            other => other,
        })
    }
}

/// `shim delete`: removes what a shim that died left behind for container `id`.
pub async fn cleanup(id: &str, bundle: &Path, namespace: &str) -> Result<()> {
    let settings = match RuntimeSettings::load(bundle)? {
        Some(s) => s,
        None => {
            crate::options::RuntimeOptions::default().resolve(&crate::config::Config::default())
        }
    };
    let backend = RuncBackend::new(id, bundle, &settings, namespace)?;
    backend.delete().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_runtime_binary_is_failed_precondition() {
        let mut settings =
            crate::options::RuntimeOptions::default().resolve(&crate::config::Config::default());
        settings.binary = "/nonexistent/runc".into();
        let err = RuncBackend::new("c1", Path::new("/tmp"), &settings, "ns")
            .err()
            .unwrap();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains("/nonexistent/runc"), "{err}");
    }

    #[test]
    fn kill_errors_on_finished_processes_are_not_found() {
        let e = Error::Runtime {
            op: "kill",
            message: "container not running".into(),
        };
        assert!(matches!(kill_error(e), Error::NotFound(_)));
        let e = Error::Runtime {
            op: "kill",
            message: "container \"x\" does not exist".into(),
        };
        assert!(matches!(kill_error(e), Error::NotFound(_)));
        let e = Error::Runtime {
            op: "kill",
            message: "permission denied".into(),
        };
        assert!(matches!(kill_error(e), Error::Runtime { .. }));
    }

    #[test]
    fn last_logged_error_picks_the_latest_error_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"old\"}\n{\"level\":\"info\",\"msg\":\"x\"}\n{\"level\":\"error\",\"msg\":\"new \"}\n",
        )
        .unwrap();
        assert_eq!(last_logged_error(&log).as_deref(), Some("new"));
        assert_eq!(last_logged_error(&dir.path().join("absent")), None);
    }
}
