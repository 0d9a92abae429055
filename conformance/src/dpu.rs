//! What the DPU tests share: whether a DPU agent serves this run, where a
//! container runs, and the small servers and probes split Pods are tested with.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::{host, wait, Cri};

/// Per-container placement annotation prefix (`heteropod.io/placement.<name>`).
pub const PLACEMENT_PREFIX: &str = "heteropod.io/placement.";

/// The placement annotation key for container `name`.
pub fn placement(name: &str) -> String {
    format!("{PLACEMENT_PREFIX}{name}")
}

/// Whether a DPU agent serves this run (`HETEROPOD_DPU`, set by
/// hack/run-conformance.sh for the heteropod handler); says so when not.
pub fn enabled(test: &str) -> bool {
    let on = std::env::var("HETEROPOD_DPU").is_ok_and(|v| !v.is_empty() && v != "0");
    if !on {
        eprintln!("{test}: skipped: HETEROPOD_DPU is not set (no DPU agent for this handler)");
    }
    on
}

/// The DPU's cgroup parent, as hack/dpu.sh names it.
pub fn cgroup_parent() -> String {
    std::env::var("DPU_CGROUP_PARENT")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "heteropod-dpu".into())
}

/// Whether container `id` runs on the (emulated) DPU, told by its cgroups.
pub fn runs_on_dpu(id: &str) -> bool {
    let parent = cgroup_parent();
    host::cgroups_named(id)
        .iter()
        .any(|d| d.to_string_lossy().contains(&parent))
}

/// A shell script serving `body` on `bind` (`PORT` or `ADDR:PORT`) with
/// busybox httpd in the foreground.
pub fn httpd(body: &str, bind: &str) -> String {
    format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p {bind} -h /www")
}

/// Waits until container `from` gets `body` from `url` with busybox wget.
pub async fn wget_until(
    cri: &Cri,
    from: &str,
    url: &str,
    body: &str,
    timeout: Duration,
) -> Result<()> {
    let got = wait::until(&format!("{url} from {from}"), timeout, || {
        let mut cri = cri.clone();
        let (from, url) = (from.to_string(), url.to_string());
        async move {
            let r = cri.exec_sync(&from, &["wget", "-qO-", &url], 10).await?;
            Ok((r.exit_code == 0).then(|| String::from_utf8_lossy(&r.stdout).into_owned()))
        }
    })
    .await?;
    ensure!(got.trim() == body, "{url} from {from}: {got:?}");
    Ok(())
}
