//! One process of a container (its init, or an exec): status, exit, stdio.
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{
    executor::Spawned,
    stdio::{Input, Output},
};
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub status: u32,
    pub at_nanos: i64,
    #[serde(default)]
    pub reason: String,
}

/// Persisted view of a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub exec_id: String,
    pub pid: u32,
    /// Kernel start time of `pid` (ticks since boot), to detect pid reuse.
    pub start_time: u64,
    pub status: Status,
    pub exit: Option<Exit>,
    pub stdin: bool,
    pub terminal: bool,
}

pub struct Process {
    pub exec_id: String,
    record: Mutex<ProcessRecord>,
    exit_tx: watch::Sender<Option<Exit>>,
    pub stdout: Arc<Output>,
    pub stderr: Arc<Output>,
    pub stdin: Input,
    /// Terminal slave device (through the process's root), for ResizePty;
    /// not persisted: the master dies with the agent, so does resizing.
    console: Mutex<Option<Arc<OwnedFd>>>,
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// Start time of `pid` from /proc (field 22 of stat), `None` if it is gone
/// or a zombie.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl Process {
    /// A process not started yet (no pid); stdio opens at `attach`.
    pub fn new(exec_id: &str, stdin: bool, terminal: bool) -> Arc<Process> {
        Process::build(
            ProcessRecord {
                exec_id: exec_id.into(),
                pid: 0,
                start_time: 0,
                status: Status::Created,
                exit: None,
                stdin,
                terminal,
            },
            false,
        )
    }

    /// A process reloaded from disk: its stdio did not survive the agent.
    pub fn from_record(record: ProcessRecord) -> Arc<Process> {
        Process::build(record, true)
    }

    fn build(record: ProcessRecord, closed: bool) -> Arc<Process> {
        let (exit_tx, _) = watch::channel(record.exit.clone());
        let out = || {
            if closed {
                Output::closed()
            } else {
                Arc::new(Output::default())
            }
        };
        Arc::new(Process {
            exec_id: record.exec_id.clone(),
            record: Mutex::new(record),
            exit_tx,
            stdout: out(),
            stderr: out(),
            stdin: Input::default(),
            console: Mutex::new(None),
        })
    }

    /// Takes the pid and stdio of the started process.
    pub async fn attach(&self, spawned: Spawned) -> Result<()> {
        {
            let mut r = self.lock();
            r.pid = spawned.pid;
            r.start_time = proc_start_time(spawned.pid).unwrap_or_default();
        }
        self.stdout.pump(spawned.io.stdout);
        match spawned.io.stderr {
            Some(fd) => self.stderr.pump(fd),
            None => self.stderr.finish(), // merged into the terminal
        }
        *self.console.lock().unwrap_or_else(|p| p.into_inner()) = spawned.io.console.map(Arc::new);
        self.stdin.set(spawned.io.stdin).await
    }

    /// The process could not be started: it ends now, with no output.
    pub fn fail(&self, reason: String) {
        self.stdout.finish();
        self.stderr.finish();
        self.set_exited(Exit {
            status: 255,
            at_nanos: now_nanos(),
            reason,
        });
    }

    fn lock(&self) -> MutexGuard<'_, ProcessRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self) -> ProcessRecord {
        self.lock().clone()
    }

    pub fn console(&self) -> Option<Arc<OwnedFd>> {
        self.console
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub fn status(&self) -> Status {
        self.lock().status
    }

    pub fn set_status(&self, status: Status) {
        let mut r = self.lock();
        if r.status != Status::Stopped {
            r.status = status;
        }
    }

    /// Records the exit (first one wins) and wakes every waiter.
    pub fn set_exited(&self, exit: Exit) -> bool {
        let mut r = self.lock();
        if r.exit.is_some() {
            return false;
        }
        r.status = Status::Stopped;
        r.exit = Some(exit.clone());
        drop(r);
        self.exit_tx.send_replace(Some(exit));
        true
    }

    pub fn exit(&self) -> Option<Exit> {
        self.lock().exit.clone()
    }

    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit_tx.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`; unreachable in practice.
                return self.exit().unwrap_or(Exit {
                    status: 255,
                    at_nanos: now_nanos(),
                    reason: "process record dropped".into(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable_and_pid_zero_is_none() {
        assert!(proc_start_time(std::process::id()).is_some());
        assert!(proc_start_time(0).is_none());
    }

    #[tokio::test]
    async fn first_exit_wins_and_wakes_waiters() {
        let sut = Process::new("e1", false, false);
        let waiter = {
            let p = sut.clone();
            tokio::spawn(async move { p.wait().await })
        };
        assert!(sut.set_exited(Exit {
            status: 3,
            at_nanos: 1,
            reason: String::new()
        }));
        assert!(!sut.set_exited(Exit {
            status: 9,
            at_nanos: 2,
            reason: String::new()
        }));
        assert_eq!(waiter.await.unwrap().status, 3);
        assert_eq!(sut.status(), Status::Stopped);
        sut.set_status(Status::Running);
        assert_eq!(sut.status(), Status::Stopped);
    }
}
