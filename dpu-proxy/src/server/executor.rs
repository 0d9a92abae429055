//! Host effects of the agent behind one trait: `RuncExecutor` drives the real
//! runc under the agent's own root; unit tests of the service logic use a fake.
use std::{
    ffi::OsString,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
};

use async_trait::async_trait;
use nix::{fcntl::OFlag, sys::signal::Signal, unistd::Pid};
use serde::Deserialize;

use super::{
    console::{self, ConsoleSocket},
    reaper::Reaper,
};
use crate::error::{Error, Result};

/// How a new process's stdio is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoPlan {
    /// stdout and stderr pipes, and a stdin pipe if asked for.
    Pipes { stdin: bool },
    /// One pseudo-terminal on all three (stderr is merged into stdout),
    /// made by runc in the container (the spec must say `terminal: true`).
    Terminal,
}

/// The agent's ends of a process's stdio (all non-blocking).
#[derive(Debug)]
pub struct ChildIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: Option<OwnedFd>,
    /// The terminal's master (a dup of the one in stdin/stdout), kept for
    /// resizing.
    pub console: Option<OwnedFd>,
}

/// A process the executor started, with its stdio.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    pub io: ChildIo,
}

/// What `runc state` says about a container.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct RuntimeState {
    pub pid: i32,
    pub status: String,
}

#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// `runc create`: the init process exists, stopped before the user program.
    async fn create(&self, id: &str, bundle: &Path, work: &Path, io: IoPlan) -> Result<Spawned>;
    async fn start(&self, id: &str) -> Result<()>;
    /// `runc exec --detach` of the process spec in `process_file`.
    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_file: &Path,
        work: &Path,
        io: IoPlan,
    ) -> Result<Spawned>;
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()>;
    async fn signal_pid(&self, pid: u32, signal: u32) -> Result<()>;
    /// `runc delete --force`; succeeds if runc does not know the id.
    async fn delete(&self, id: &str) -> Result<()>;
    async fn pause(&self, id: &str) -> Result<()>;
    async fn resume(&self, id: &str) -> Result<()>;
    async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()>;
    async fn pids(&self, id: &str) -> Result<Vec<u32>>;
    /// `None` when runc does not know the container.
    async fn state(&self, id: &str) -> Result<Option<RuntimeState>>;
    /// Exit status of a process this agent parented (spawned or adopted as
    /// subreaper); 128 + signal for signalled ones.
    async fn wait_child(&self, pid: u32) -> i32;
}

pub struct RuncExecutor {
    runc: PathBuf,
    root: PathBuf,
    reaper: Arc<Reaper>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| Error::io("create stdio pipe")(std::io::Error::from(e)))
}

fn nonblocking(fd: OwnedFd) -> Result<OwnedFd> {
    let err = |e: nix::Error| Error::io("set O_NONBLOCK")(std::io::Error::from(e));
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(err)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(err)?;
    Ok(fd)
}

impl RuncExecutor {
    pub fn new(runc: PathBuf, root: PathBuf, reaper: Arc<Reaper>) -> Self {
        RuncExecutor { runc, root, reaper }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.runc);
        c.arg("--root").arg(&self.root);
        c
    }

    /// Runs a short runc command to completion; returns its stdout.
    async fn run(&self, args: Vec<OsString>, input: Option<Vec<u8>>) -> Result<Vec<u8>> {
        let mut cmd = self.command();
        cmd.args(&args);
        let out = self
            .reaper
            .output(cmd, input)
            .await
            .map_err(Error::io(format!("run {}", self.runc.display())))?;
        if out.status != 0 {
            return Err(Error::Runc {
                command: args
                    .first()
                    .map(|a| a.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                status: format!("exit status {}", out.status),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out.stdout)
    }

    /// Runs a runc command whose container process gets fresh stdio: pipes,
    /// or the terminal runc makes in the container and sends over a console
    /// socket. `args` end with the container id.
    async fn run_with_io(
        &self,
        verb: &str,
        mut args: Vec<OsString>,
        work: &Path,
        plan: IoPlan,
    ) -> Result<Spawned> {
        let log = work.join("runc.log");
        let _ = std::fs::remove_file(&log);
        let mut cmd = self.command();
        cmd.arg("--log").arg(&log).arg("--log-format").arg("json");
        let pending = match plan {
            IoPlan::Pipes { stdin } => {
                let (in_r, in_w) = if stdin {
                    let (r, w) = pipe()?;
                    (Some(r), Some(nonblocking(w)?))
                } else {
                    (None, None)
                };
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                cmd.stdin(in_r.map(Stdio::from).unwrap_or_else(Stdio::null))
                    .stdout(Stdio::from(out_w))
                    .stderr(Stdio::from(err_w));
                Pending::Pipes(ChildIo {
                    stdin: in_w,
                    stdout: nonblocking(out_r)?,
                    stderr: Some(nonblocking(err_r)?),
                    console: None,
                })
            }
            IoPlan::Terminal => {
                let socket = ConsoleSocket::bind(work)?;
                // A flag of the verb: it goes before the trailing id.
                let at = args.len().saturating_sub(1);
                args.insert(at, socket.path().into());
                args.insert(at, "--console-socket".into());
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                Pending::Terminal(socket)
            }
        };
        cmd.args(&args);
        // The child-side ends close when `cmd` drops right after spawn.
        let (_child, mut rx) = self
            .reaper
            .spawn(cmd)
            .map_err(Error::io(format!("spawn {}", self.runc.display())))?;
        let (status, ready) = match pending {
            Pending::Pipes(io) => (rx.await.unwrap_or(255), Ok(Ready::Io(io))),
            Pending::Terminal(socket) => {
                let (status, master) = socket.receive_from_runc(&mut rx, verb).await;
                (status, master.map(Ready::Master))
            }
        };
        let pid_file = work.join(format!("{verb}.pid"));
        if status != 0 {
            return Err(Error::Runc {
                command: verb.into(),
                status: format!("exit status {status}"),
                stderr: last_log_error(&log),
            });
        }
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(Error::io(format!("read {}", pid_file.display())))?
            .trim()
            .parse::<u32>()
            .map_err(|e| Error::Runc {
                command: verb.into(),
                status: "bad pid file".into(),
                stderr: e.to_string(),
            })?;
        let io = match ready? {
            Ready::Io(io) => io,
            Ready::Master(master) => terminal_io(master)?,
        };
        Ok(Spawned { pid, io })
    }
}

/// Stdio set up before runc runs.
enum Pending {
    Pipes(ChildIo),
    Terminal(ConsoleSocket),
}

/// Stdio once runc has run: a terminal still needs the process's pid.
enum Ready {
    Io(ChildIo),
    Master(OwnedFd),
}

/// The agent's ends of a terminal: the master for output, input and resizing.
fn terminal_io(master: OwnedFd) -> Result<ChildIo> {
    // Refuses anything but a terminal master from the console socket.
    console::slave_name(&master)?;
    let master = nonblocking(master)?;
    let writer = master.try_clone().map_err(Error::io("dup terminal"))?;
    let resizer = master.try_clone().map_err(Error::io("dup terminal"))?;
    Ok(ChildIo {
        stdin: Some(writer),
        stdout: master,
        stderr: None,
        console: Some(resizer),
    })
}

/// The last error runc logged (its JSON log has one object per line).
fn last_log_error(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error" || v["level"] == "fatal")
        .and_then(|v| v["msg"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.lines().last().unwrap_or("no runc log").to_string())
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

#[async_trait]
impl Executor for RuncExecutor {
    async fn create(&self, id: &str, bundle: &Path, work: &Path, io: IoPlan) -> Result<Spawned> {
        let mut args = os(&["create", "--bundle"]);
        args.push(bundle.into());
        args.push("--pid-file".into());
        args.push(work.join("create.pid").into());
        args.push(id.into());
        self.run_with_io("create", args, work, io).await
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.run(os(&["start", id]), None).await.map(drop)
    }

    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_file: &Path,
        work: &Path,
        io: IoPlan,
    ) -> Result<Spawned> {
        let verb = format!("exec-{exec_id}");
        let mut args = os(&["exec", "--detach", "--process"]);
        args.push(process_file.into());
        args.push("--pid-file".into());
        args.push(work.join(format!("{verb}.pid")).into());
        args.push(id.into());
        self.run_with_io(&verb, args, work, io).await
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        self.run(os(&args), None).await.map(drop)
    }

    async fn signal_pid(&self, pid: u32, signal: u32) -> Result<()> {
        let sig = Signal::try_from(signal as i32)
            .map_err(|_| Error::InvalidArgument(format!("unknown signal {signal}")))?;
        nix::sys::signal::kill(Pid::from_raw(pid as i32), sig)
            .map_err(|e| Error::NotFound(format!("process {pid}: {e}")))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        match self.run(os(&["delete", "--force", id]), None).await {
            Err(Error::Runc { stderr, .. }) if stderr.contains("does not exist") => Ok(()),
            other => other.map(drop),
        }
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.run(os(&["pause", id]), None).await.map(drop)
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.run(os(&["resume", id]), None).await.map(drop)
    }

    async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        self.run(
            os(&["update", "--resources", "-", id]),
            Some(resources_json.to_vec()),
        )
        .await
        .map(drop)
    }

    async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        let out = self.run(os(&["ps", "--format", "json", id]), None).await?;
        Ok(serde_json::from_slice::<Option<Vec<u32>>>(&out)
            .unwrap_or_default()
            .unwrap_or_default())
    }

    async fn state(&self, id: &str) -> Result<Option<RuntimeState>> {
        match self.run(os(&["state", id]), None).await {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|e| Error::Runc {
                    command: "state".into(),
                    status: "unparsable output".into(),
                    stderr: e.to_string(),
                }),
            Err(Error::Runc { stderr, .. }) if stderr.contains("does not exist") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn wait_child(&self, pid: u32) -> i32 {
        self.reaper.wait(pid as i32).await
    }
}
