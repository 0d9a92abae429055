//! A fake `Executor` for unit tests of the service logic: processes are
//! pipes and exit statuses, nothing runs.
use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    path::Path,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
};

use async_trait::async_trait;
use tokio::sync::watch;

use super::executor::{ChildIo, Executor, IoPlan, RuntimeState, Spawned};
use crate::error::{Error, Result};

struct FakeProc {
    exit: watch::Sender<Option<i32>>,
    /// Write end of its stdout, closed when it "exits".
    stdout: Option<OwnedFd>,
}

pub struct FakeExecutor {
    next_pid: AtomicU32,
    procs: Mutex<HashMap<u32, FakeProc>>,
    ids: Mutex<HashMap<String, u32>>,
    /// When set, `create` reports this pid (e.g. a real live process).
    pub create_pid: Mutex<Option<u32>>,
    pub calls: Mutex<Vec<String>>,
}

impl Default for FakeExecutor {
    fn default() -> Self {
        FakeExecutor {
            next_pid: AtomicU32::new(4_000_000),
            procs: Mutex::default(),
            ids: Mutex::default(),
            create_pid: Mutex::default(),
            calls: Mutex::default(),
        }
    }
}

impl FakeExecutor {
    fn spawn(&self, pid: Option<u32>) -> Result<Spawned> {
        let pid = pid.unwrap_or_else(|| self.next_pid.fetch_add(1, Ordering::Relaxed));
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| Error::io("pipe")(e.into()))
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, _err_w) = pipe()?;
        let (exit, _) = watch::channel(None);
        self.procs.lock().unwrap().insert(
            pid,
            FakeProc {
                exit,
                stdout: Some(out_w),
            },
        );
        let io = ChildIo {
            stdin: None,
            stdout: out_r,
            stderr: Some(err_r),
            console: None,
        };
        Ok(Spawned { pid, io })
    }

    fn call(&self, c: String) {
        self.calls.lock().unwrap().push(c);
    }

    /// Makes `pid` exit with `status`.
    pub fn exit(&self, pid: u32, status: i32) {
        if let Some(p) = self.procs.lock().unwrap().get_mut(&pid) {
            p.stdout.take();
            p.exit.send_replace(Some(status));
        }
    }

    fn pid_of(&self, id: &str) -> Result<u32> {
        self.ids
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .ok_or_else(|| Error::NotFound(id.into()))
    }
}

#[async_trait]
impl Executor for FakeExecutor {
    async fn create(&self, id: &str, _: &Path, _: &Path, _: IoPlan) -> Result<Spawned> {
        self.call(format!("create {id}"));
        let pid = *self.create_pid.lock().unwrap();
        let s = self.spawn(pid)?;
        self.ids.lock().unwrap().insert(id.into(), s.pid);
        Ok(s)
    }
    async fn start(&self, id: &str) -> Result<()> {
        self.call(format!("start {id}"));
        Ok(())
    }
    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        _: &Path,
        _: &Path,
        _: IoPlan,
    ) -> Result<Spawned> {
        self.call(format!("exec {id} {exec_id}"));
        self.spawn(None)
    }
    async fn kill(&self, id: &str, signal: u32, _: bool) -> Result<()> {
        self.call(format!("kill {id} {signal}"));
        self.exit(self.pid_of(id)?, 128 + signal as i32);
        Ok(())
    }
    async fn signal_pid(&self, pid: u32, signal: u32) -> Result<()> {
        self.exit(pid, 128 + signal as i32);
        Ok(())
    }
    async fn delete(&self, id: &str) -> Result<()> {
        self.call(format!("delete {id}"));
        if let Ok(pid) = self.pid_of(id) {
            self.exit(pid, 137);
        }
        self.ids.lock().unwrap().remove(id);
        Ok(())
    }
    async fn pause(&self, id: &str) -> Result<()> {
        self.call(format!("pause {id}"));
        Ok(())
    }
    async fn resume(&self, id: &str) -> Result<()> {
        self.call(format!("resume {id}"));
        Ok(())
    }
    async fn update(&self, id: &str, _: &[u8]) -> Result<()> {
        self.call(format!("update {id}"));
        Ok(())
    }
    async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        Ok(vec![self.pid_of(id)?])
    }
    async fn state(&self, id: &str) -> Result<Option<RuntimeState>> {
        Ok(self.pid_of(id).ok().map(|pid| RuntimeState {
            pid: pid as i32,
            status: "running".into(),
        }))
    }
    async fn wait_child(&self, pid: u32) -> i32 {
        let rx = self
            .procs
            .lock()
            .unwrap()
            .get(&pid)
            .map(|p| p.exit.subscribe());
        let Some(mut rx) = rx else { return 255 };
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            if rx.changed().await.is_err() {
                return 255;
            }
        }
    }
}
