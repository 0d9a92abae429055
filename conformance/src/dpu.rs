//! What the DPU tests share: whether a DPU agent serves this run, where a
//! container runs, and the small servers and probes split Pods are tested with.
//!
//! The DPU is either emulated on this host (its cgroups, netns and processes
//! are visible here) or remote, a QEMU guest with its own kernel
//! (`HETEROPOD_DPU_REMOTE=1`): then the tests ask the agent, through the
//! operator CLI (`heteropod status --json`) and CRI ExecSync, instead.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, ensure, Context, Result};

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

/// Whether the DPU is remote (a QEMU guest, `HETEROPOD_DPU_REMOTE=1`, set by
/// hack/run-conformance.sh's DPU=qemu pass): nothing of it shows on this host.
pub fn remote() -> bool {
    std::env::var("HETEROPOD_DPU_REMOTE").is_ok_and(|v| v == "1")
}

/// Whether container `id` runs on the DPU: told by its cgroups on this host
/// for the emulated DPU, by the agent's container list for a remote one.
pub async fn runs_on_dpu(id: &str) -> Result<bool> {
    if remote() {
        return Ok(agent_view().await?.runs_on_dpu(id));
    }
    let parent = cgroup_parent();
    Ok(host::cgroups_named(id)
        .iter()
        .any(|d| d.to_string_lossy().contains(&parent)))
}

/// Checks that container `id` (`name` in the message) runs on the DPU
/// (`on_dpu`) or on the CPU: tests that claim a DPU behaviour pin it.
pub async fn ensure_runs_on(id: &str, name: &str, on_dpu: bool) -> Result<()> {
    let is = runs_on_dpu(id).await?;
    let pu = |dpu: bool| if dpu { "DPU" } else { "CPU" };
    ensure!(
        is == on_dpu,
        "{name} ({id}) runs on the {}, expected the {}",
        pu(is),
        pu(on_dpu)
    );
    Ok(())
}

/// What the DPU agent reports, as `heteropod status --json` shows it.
#[derive(Debug, Clone)]
pub struct AgentView {
    /// (container id, Pod id) of every container the agent runs.
    pub containers: Vec<(String, String)>,
    /// Pods whose DPU half (netns and relay) the agent holds.
    pub pod_networks: Vec<String>,
    /// The DPU's cores (cpuset list).
    pub cpus: String,
}

impl AgentView {
    pub fn runs_on_dpu(&self, id: &str) -> bool {
        self.containers.iter().any(|(c, _)| c == id)
    }

    /// Whether the agent still holds anything of Pod `pod_id`.
    pub fn knows_pod(&self, pod_id: &str) -> bool {
        self.pod_networks.iter().any(|p| p == pod_id)
            || self.containers.iter().any(|(_, p)| p == pod_id)
    }
}

/// The operator CLI: `HETEROPOD_CLI`, else the `heteropod` cargo built beside
/// this binary.
fn cli_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HETEROPOD_CLI").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    // Beside a binary (target/release/heteropod-demo) or one directory up
    // from a test binary (target/release/deps/...).
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no directory above this binary")?;
    let found = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("heteropod"))
        .find(|p| p.exists());
    found.with_context(|| {
            format!(
                "heteropod not built beside {} (cargo build --release -p heteropod-cli, or set HETEROPOD_CLI)",
                exe.display()
            )
        })
}

/// Asks the agent (`HETEROPOD_DPU_ENDPOINT`, else the node config's) what it runs.
pub async fn agent_view() -> Result<AgentView> {
    parse_agent_view(&status_output().await?)
}

/// `heteropod status --json`, parsed: the node as the operator sees it.
pub async fn status_json() -> Result<serde_json::Value> {
    serde_json::from_slice(&status_output().await?).context("heteropod status --json")
}

async fn status_output() -> Result<Vec<u8>> {
    let mut cmd = tokio::process::Command::new(cli_path()?);
    cmd.args(["status", "--json"]);
    if let Some(ep) = std::env::var("HETEROPOD_DPU_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
    {
        cmd.args(["--endpoint", &ep]);
    }
    let out = cmd.stdin(std::process::Stdio::null()).output().await?;
    ensure!(
        out.status.success(),
        "heteropod status: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

fn parse_agent_view(json: &[u8]) -> Result<AgentView> {
    let v: serde_json::Value = serde_json::from_slice(json).context("heteropod status --json")?;
    if let Some(e) = v["dpu"]["error"].as_str() {
        bail!("the DPU agent did not answer heteropod status: {e}");
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut containers = Vec::new();
    for pod in v["pods"].as_array().into_iter().flatten() {
        for c in pod["containers"].as_array().into_iter().flatten() {
            if c["runs_on"] == "dpu" {
                containers.push((text(&c["id"]), text(&pod["id"])));
            }
        }
    }
    let pod_networks = v["relays"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["side"] == "dpu")
        .map(|r| text(&r["pod_id"]))
        .collect();
    Ok(AgentView {
        containers,
        pod_networks,
        cpus: text(&v["dpu"]["capacity"]["cpus"]),
    })
}

/// The kernel release and boot id seen inside container `id` (ExecSync).
pub async fn kernel_of(cri: &Cri, id: &str) -> Result<(String, String)> {
    let mut cri = cri.clone();
    let out = cri
        .exec_ok(
            id,
            &["sh", "-c", "uname -r; cat /proc/sys/kernel/random/boot_id"],
        )
        .await?;
    let mut lines = out.lines().map(|l| l.trim().to_string());
    let release = lines.next().unwrap_or_default();
    let boot_id = lines.next().unwrap_or_default();
    ensure!(
        !release.is_empty() && !boot_id.is_empty(),
        "uname/boot_id: {out:?}"
    );
    Ok((release, boot_id))
}

/// This host's kernel release and boot id.
pub fn host_kernel() -> Result<(String, String)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_string();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string();
    Ok((release, boot_id))
}

/// Leases of the guest's ivshmem BAR slots (`HETEROPOD_IVSHMEM_SLOTS_DIR`)
/// that name Pod `pod_id`.
pub fn ivshmem_slots_of(pod_id: &str) -> Vec<PathBuf> {
    let Some(dir) = std::env::var_os("HETEROPOD_IVSHMEM_SLOTS_DIR") else {
        return Vec::new();
    };
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|holder| holder == pod_id))
        .map(|e| e.path())
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_view_comes_from_status_json() {
        let json = br#"{"dpu":{"endpoint":"tcp://127.0.0.1:1","error":null,
            "capacity":{"cpus":"0"}},
            "pods":[{"id":"p1","containers":[{"id":"c1","runs_on":"dpu"},
                                             {"id":"c2","runs_on":"cpu"}]}],
            "relays":[{"pod_id":"p1","side":"cpu"},{"pod_id":"p1","side":"dpu"}],
            "warnings":[]}"#;
        let sut = parse_agent_view(json).unwrap();
        assert!(sut.runs_on_dpu("c1") && !sut.runs_on_dpu("c2"));
        assert!(sut.knows_pod("p1") && !sut.knows_pod("p2"));
        assert_eq!(sut.cpus, "0");
    }

    #[test]
    fn an_unreachable_agent_is_an_error() {
        let json = br#"{"dpu":{"error":"cannot reach"},"pods":[],"relays":[]}"#;
        let err = parse_agent_view(json).unwrap_err();
        assert!(format!("{err}").contains("cannot reach"), "{err}");
    }
}
