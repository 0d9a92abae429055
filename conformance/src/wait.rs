//! Polling helpers: wait for a condition with a deadline instead of sleeping blindly.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Result};
use k8s_cri::v1 as cri;
use tokio::time::{sleep, Instant};

use crate::client::Cri;

/// Default deadline for state changes.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// Calls `f` until it returns `Ok(Some(_))` or `timeout` passes. Errors from `f` are
/// retried and the last one is reported on timeout.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last: Option<anyhow::Error> = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() >= deadline {
            match last {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}: last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        sleep(POLL).await;
    }
}

/// Waits until container `id` is in `state` and returns its status.
pub async fn container_state(
    cri: &Cri,
    id: &str,
    state: cri::ContainerState,
    timeout: Duration,
) -> Result<cri::ContainerStatus> {
    until(&format!("container {id} in {state:?}"), timeout, || {
        let mut cri = cri.clone();
        let id = id.to_string();
        async move {
            let st = cri.container_status(&id).await?;
            Ok((st.state == state as i32).then_some(st))
        }
    })
    .await
}

/// Waits until container `id` has exited and returns its status.
pub async fn exited(cri: &Cri, id: &str) -> Result<cri::ContainerStatus> {
    container_state(cri, id, cri::ContainerState::ContainerExited, STATE_TIMEOUT).await
}

/// Waits until container `id` has exited and checks that the kernel's OOM killer
/// ended it: reason `OOMKilled`, exit code 137 (SIGKILL).
pub async fn oom_killed(cri: &Cri, id: &str) -> Result<()> {
    let st = exited(cri, id).await?;
    anyhow::ensure!(
        st.reason == "OOMKilled",
        "reason {:?} (exit code {})",
        st.reason,
        st.exit_code
    );
    anyhow::ensure!(st.exit_code == 137, "exit code {}", st.exit_code);
    Ok(())
}
