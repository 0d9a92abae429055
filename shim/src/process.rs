//! State of one process (a container's init or an exec) as the Task API sees it,
//! whichever backend runs it.

use std::{fs::File, sync::Mutex, time::SystemTime};

use containerd_shim_protos::{api::Status, protobuf::well_known_types::timestamp::Timestamp};
use tokio::sync::watch;

use crate::{
    error::{Error, Result},
    io::{Console, Stdio},
};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn now(status: u32) -> Exit {
        Exit {
            status,
            at: SystemTime::now(),
        }
    }

    pub fn timestamp(&self) -> Timestamp {
        let d = self
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

impl State {
    pub fn to_proto(self) -> Status {
        match self {
            State::Created => Status::CREATED,
            State::Running => Status::RUNNING,
            State::Paused => Status::PAUSED,
            State::Stopped => Status::STOPPED,
        }
    }
}

struct Inner {
    pid: u32,
    state: State,
    stdin: Option<File>,
    console: Option<Console>,
}

/// One process. `exec_id` is empty for a container's init process.
pub struct Process {
    pub exec_id: String,
    pub stdio: Stdio,
    /// The exec's OCI process spec (JSON), kept until Start.
    pub spec: Option<oci_spec::runtime::Process>,
    inner: Mutex<Inner>,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(exec_id: &str, stdio: Stdio, spec: Option<oci_spec::runtime::Process>) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            stdio,
            spec,
            inner: Mutex::new(Inner {
                pid: 0,
                state: State::Created,
                stdin: None,
                console: None,
            }),
            exit: watch::channel(None).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the plain fields torn.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pid(&self) -> u32 {
        self.lock().pid
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Records the pid and stdio handles once the backend has created the process.
    pub fn set_created(&self, pid: u32, stdin: Option<File>, console: Option<Console>) {
        let mut inner = self.lock();
        inner.pid = pid;
        inner.stdin = stdin;
        inner.console = console;
    }

    /// Marks the process running unless it already exited meanwhile.
    pub fn set_running(&self) {
        let mut inner = self.lock();
        if inner.state != State::Stopped {
            inner.state = State::Running;
        }
    }

    pub fn set_paused(&self, paused: bool) {
        let mut inner = self.lock();
        if inner.state != State::Stopped {
            inner.state = if paused {
                State::Paused
            } else {
                State::Running
            };
        }
    }

    /// Records the exit; returns false if it was already recorded.
    pub fn set_exited(&self, exit: Exit) -> bool {
        let mut inner = self.lock();
        if inner.state == State::Stopped && self.exit().is_some() {
            return false;
        }
        inner.state = State::Stopped;
        inner.stdin = None;
        drop(inner);
        self.exit.send_replace(Some(exit));
        true
    }

    /// Takes the console so its output can be drained outside the lock.
    pub fn take_console(&self) -> Option<Console> {
        self.lock().console.take()
    }

    pub fn put_console(&self, console: Console) {
        self.lock().console = Some(console);
    }

    /// Waits until the process has exited.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`; unreachable in practice.
                return Exit::now(255);
            }
        }
    }

    /// CloseIO: the process sees EOF on stdin once containerd's writer is closed too.
    pub fn close_stdin(&self) {
        let mut inner = self.lock();
        inner.stdin = None;
        if let Some(console) = inner.console.as_mut() {
            console.close_stdin();
        }
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let inner = self.lock();
        let console = inner.console.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "process {:?} has no terminal to resize",
                self.exec_id
            ))
        })?;
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        console.resize(clamp(width), clamp(height))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_the_recorded_exit_even_after_the_fact() {
        let sut = Process::new("", Stdio::default(), None);
        sut.set_created(42, None, None);
        sut.set_running();
        let exit = Exit::now(3);
        assert!(sut.set_exited(exit));
        assert!(!sut.set_exited(Exit::now(9)), "a second exit is ignored");
        assert_eq!(sut.wait().await, exit);
        assert_eq!(sut.wait().await.status, 3);
        assert_eq!(sut.state(), State::Stopped);
    }

    #[tokio::test]
    async fn running_is_not_set_after_an_early_exit() {
        let sut = Process::new("e1", Stdio::default(), None);
        sut.set_exited(Exit::now(0));
        sut.set_running();
        sut.set_paused(true);
        assert_eq!(sut.state(), State::Stopped);
    }

    #[tokio::test]
    async fn wait_wakes_when_the_exit_arrives() {
        let sut = std::sync::Arc::new(Process::new("", Stdio::default(), None));
        let waiter = tokio::spawn({
            let sut = sut.clone();
            async move { sut.wait().await.status }
        });
        tokio::task::yield_now().await;
        sut.set_exited(Exit::now(137));
        assert_eq!(waiter.await.unwrap(), 137);
    }

    #[test]
    fn resize_without_terminal_is_failed_precondition() {
        let sut = Process::new("", Stdio::default(), None);
        assert!(matches!(
            sut.resize(80, 24),
            Err(Error::FailedPrecondition(_))
        ));
    }
}
