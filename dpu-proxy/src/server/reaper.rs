//! The agent is a child subreaper: container and exec processes whose runc
//! parent exits are re-parented to it. One task reaps every child
//! (`waitpid(-1)`) and hands statuses to whoever waits for that pid, so no
//! other code may reap (the agent never uses `tokio::process`).
use std::{
    collections::HashMap,
    io::{Read, Write},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard},
};

use nix::{
    errno::Errno,
    sys::wait::{waitpid, WaitPidFlag, WaitStatus},
    unistd::Pid,
};
use tokio::sync::oneshot;

/// Statuses of children nobody waited for yet are kept up to this many.
const MAX_UNCLAIMED: usize = 4096;

/// What a finished command left: exit status (128 + signal) and output.
#[derive(Debug)]
pub struct Output {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Default)]
pub struct ReaperInner {
    waiters: HashMap<i32, Vec<oneshot::Sender<i32>>>,
    unclaimed: HashMap<i32, i32>,
}

impl ReaperInner {
    /// Waits for `pid`; a status reaped before this call is delivered at once.
    pub fn wait(&mut self, pid: i32) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        match self.unclaimed.remove(&pid) {
            Some(status) => {
                let _ = tx.send(status);
            }
            None => self.waiters.entry(pid).or_default().push(tx),
        }
        rx
    }

    /// Forgets a stale status of a pid that is being reused by a new child.
    pub fn forget(&mut self, pid: i32) {
        self.unclaimed.remove(&pid);
    }

    fn deliver(&mut self, pid: i32, status: i32) {
        match self.waiters.remove(&pid) {
            Some(waiters) => {
                for w in waiters {
                    let _ = w.send(status);
                }
            }
            None => {
                if self.unclaimed.len() >= MAX_UNCLAIMED {
                    self.unclaimed.clear();
                }
                self.unclaimed.insert(pid, status);
            }
        }
    }
}

#[derive(Default)]
pub struct Reaper {
    inner: Mutex<ReaperInner>,
}

impl Reaper {
    /// Becomes the subreaper and starts reaping on SIGCHLD. Call before
    /// spawning any child, inside the tokio runtime.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let reaper = Arc::new(Reaper::default());
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Hold this while spawning a child and registering its waiter, so the
    /// status cannot be mixed up with a stale one of the same pid.
    pub fn lock(&self) -> MutexGuard<'_, ReaperInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Exit status (128 + signal for signalled processes) of `pid`.
    pub async fn wait(&self, pid: i32) -> i32 {
        let rx = self.lock().wait(pid);
        // A dropped sender only happens if the reaper is gone: report 255.
        rx.await.unwrap_or(255)
    }

    /// Spawns `cmd` and registers for its exit before the reaper can see it.
    pub fn spawn(&self, mut cmd: Command) -> std::io::Result<(Child, oneshot::Receiver<i32>)> {
        let mut inner = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        inner.forget(pid);
        let rx = inner.wait(pid);
        Ok((child, rx))
    }

    /// Runs `cmd` to completion (the `Command::output` of this process, which
    /// must not reap on its own); returns status, stdout and stderr.
    pub async fn output(
        &self,
        mut cmd: Command,
        input: Option<Vec<u8>>,
    ) -> std::io::Result<Output> {
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let (mut child, rx) = self.spawn(cmd)?;
        let (stdout, stderr) = tokio::task::spawn_blocking(move || {
            if let (Some(mut stdin), Some(data)) = (child.stdin.take(), input) {
                let _ = stdin.write_all(&data);
            }
            // stderr on its own thread: neither pipe can fill up and block the child.
            let err = child.stderr.take().map(|mut s| {
                std::thread::spawn(move || {
                    let mut v = Vec::new();
                    let _ = s.read_to_end(&mut v);
                    v
                })
            });
            let mut out = Vec::new();
            if let Some(mut s) = child.stdout.take() {
                let _ = s.read_to_end(&mut out);
            }
            (out, err.and_then(|t| t.join().ok()).unwrap_or_default())
        })
        .await
        .map_err(std::io::Error::other)?;
        let status = rx.await.unwrap_or(255);
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.lock().deliver(pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.lock().deliver(pid.as_raw(), 128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("waitpid: {e}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_reaped_before_wait_is_delivered() {
        let mut sut = ReaperInner::default();
        sut.deliver(42, 3);
        assert_eq!(sut.wait(42).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn every_waiter_gets_the_status() {
        let mut sut = ReaperInner::default();
        let a = sut.wait(7);
        let b = sut.wait(7);
        sut.deliver(7, 137);
        assert_eq!(a.await.unwrap(), 137);
        assert_eq!(b.await.unwrap(), 137);
    }
}
