//! Runs OCI runtime commands without fighting the shim's reaper.
//!
//! In server mode the containerd-shim crate reaps every child with
//! `waitpid(-1)` and reports exits through its monitor, so tokio's own wait on a
//! runc child may find it already gone. This spawner subscribes to the monitor
//! before spawning and takes whichever exit report comes first.

use std::{os::unix::process::ExitStatusExt, process::ExitStatus};

use async_trait::async_trait;
use containerd_shim::{
    asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe},
    monitor::{Subject, Topic},
};
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug, Default)]
pub struct ReaperAwareSpawner;

async fn read_all(stream: Option<impl AsyncRead + Unpin>) -> String {
    let mut out = Vec::new();
    if let Some(mut s) = stream {
        let _ = s.read_to_end(&mut out).await;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait]
impl runc::Spawner for ReaperAwareSpawner {
    async fn execute(
        &self,
        mut cmd: runc::Command,
    ) -> runc::Result<(ExitStatus, u32, String, String)> {
        let mut sub = monitor_subscribe(Topic::Pid)
            .await
            .map_err(|e| runc::error::Error::Other(Box::new(e)))?;
        let sub_id = sub.id;
        if crate::host_cpus::shim_pinned() {
            crate::sys::affinity::unpinned_child(&mut cmd);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = monitor_unsubscribe(sub_id).await;
                return Err(runc::error::Error::ProcessSpawnFailed(e));
            }
        };
        let pid = child.id().unwrap_or_default();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let wait_exit = wait_child(&mut child, &mut sub, pid);
        let (out, err, status) = tokio::join!(read_all(stdout), read_all(stderr), wait_exit);
        let _ = monitor_unsubscribe(sub_id).await;
        Ok((status, pid, out, err))
    }
}

/// The exit of `child` (pid `pid`), from tokio's wait or, if the shim's
/// reaper got there first, from the monitor subscription `sub`.
pub(crate) async fn wait_child(
    child: &mut tokio::process::Child,
    sub: &mut containerd_shim::asynchronous::monitor::Subscription,
    pid: u32,
) -> ExitStatus {
    tokio::select! {
        status = child.wait() => match status {
            Ok(status) => status,
            // Reaped by the shim's reaper: the monitor has it.
            Err(_) => from_monitor(sub, pid).await,
        },
        status = from_monitor(sub, pid) => status,
    }
}

async fn from_monitor(
    sub: &mut containerd_shim::asynchronous::monitor::Subscription,
    pid: u32,
) -> ExitStatus {
    while let Some(event) = sub.rx.recv().await {
        if let Subject::Pid(p) = event.subject {
            if p as u32 == pid {
                return exit_status(event.exit_code);
            }
        }
    }
    std::future::pending().await
}

/// The monitor reports `code`, or `128 + signal`; rebuild a wait status from it.
fn exit_status(code: i32) -> ExitStatus {
    ExitStatus::from_raw((code & 0xff) << 8)
}

#[cfg(test)]
mod tests {
    use runc::Spawner;

    use super::*;

    #[tokio::test]
    async fn runs_a_command_without_a_reaper() {
        let sut = ReaperAwareSpawner;
        let mut cmd = runc::Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let (status, pid, out, err) = sut.execute(cmd).await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(pid > 0);
        assert_eq!(out, "out\n");
        assert_eq!(err, "err\n");
    }

    #[tokio::test]
    async fn missing_binary_is_a_spawn_error() {
        let sut = ReaperAwareSpawner;
        let cmd = runc::Command::new("/nonexistent/runc");
        let err = sut.execute(cmd).await.unwrap_err();
        assert!(
            matches!(err, runc::error::Error::ProcessSpawnFailed(_)),
            "{err}"
        );
    }
}
