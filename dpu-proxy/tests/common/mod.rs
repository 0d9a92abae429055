//! Test harness: the real agent binary on a temp socket and state dir, a
//! tiny rootfs made of host binaries (as shim/tests does), busybox-style
//! bundles; dropping the harness removes every trace even on failure.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use heteropod_dpu_proxy::{
    client::{copy_output, CreateContainerRequest, Stream},
    AgentClient, DpuAgent,
};
use serde_json::{json, Value};

pub const AGENT: &str = env!("CARGO_BIN_EXE_heteropod-dpu-proxy");
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CONTROLLERS: [&str; 9] = [
    "cpuset", "cpu", "cpuacct", "memory", "pids", "freezer", "devices", "blkio", "systemd",
];

/// Skips (with a message) where the real thing cannot run.
/// The sandbox id every test bundle claims in its CRI annotations.
pub const TEST_POD: &str = "test-pod";

pub fn can_run() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP: these tests drive runc and need root");
        return false;
    }
    if Command::new("runc").arg("--version").output().is_err() {
        eprintln!("SKIP: runc is not installed");
        return false;
    }
    if !Path::new(CGROUP_ROOT).join("cpuset").is_dir() {
        eprintln!("SKIP: needs the cgroup v1 cpuset hierarchy");
        return false;
    }
    true
}

/// The last online core, the agent's default DPU core.
pub fn last_core() -> String {
    heteropod_dpu_proxy::server::last_core()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub parent: String,
    pub cpus: String,
    pub extra_args: Vec<String>,
    pub listen: String,
    /// The agent's config file (`--config`): written at each start.
    pub config: String,
    agent: Option<Child>,
}

impl Harness {
    pub fn new(name: &str) -> Harness {
        let dir = tempfile::Builder::new()
            .prefix("hp-dpu-test")
            .tempdir_in("/tmp")
            .unwrap();
        make_rootfs(&dir.path().join("rootfs"));
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // The agent makes the socket's directory (0700) itself.
        let listen = format!("unix://{}/run/agent.sock", dir.path().display());
        // Bundles and the shared rootfs live in the test's directory.
        let config = format!("[policy]\nbundle_roots = [{:?}]\n", dir.path());
        Harness {
            config,
            parent: format!("hp-dpu-test-{name}-{}-{n}", std::process::id()),
            cpus: last_core(),
            dir,
            extra_args: Vec::new(),
            listen,
            agent: None,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    pub fn runc_root(&self) -> PathBuf {
        self.state_dir().join("runc")
    }

    pub fn cgroup(&self, controller: &str, id: &str) -> PathBuf {
        Path::new(CGROUP_ROOT)
            .join(controller)
            .join(&self.parent)
            .join(id)
    }

    /// Starts the agent and returns a connected client.
    pub async fn start_agent(&mut self) -> AgentClient {
        self.spawn_agent();
        for _ in 0..200 {
            if let Ok(c) = AgentClient::connect(&self.listen).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("agent did not come up; log:\n{}", self.agent_log());
    }

    /// Starts the agent without waiting for it.
    pub fn spawn_agent(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        std::fs::write(self.config_path(), &self.config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(AGENT)
            .args(["--listen", &self.listen])
            .arg("--state-dir")
            .arg(self.state_dir())
            .args([
                "--cpus",
                &self.cpus,
                "--memory",
                "512M",
                "--cgroup-parent",
                &self.parent,
            ])
            .arg("--config")
            .arg(self.config_path())
            .args(&self.extra_args)
            .env("HETEROPOD_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// Whether the agent process is still running (not exited).
    pub fn agent_running(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, as in a crash.
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Writes a bundle running `args` in the shared rootfs.
    pub fn bundle(&self, id: &str, args: &[&str], resources: Value) -> PathBuf {
        self.bundle_with(id, args, resources, false)
    }

    pub fn bundle_with(
        &self,
        id: &str,
        args: &[&str],
        resources: Value,
        terminal: bool,
    ) -> PathBuf {
        let bundle = self.dir.path().join("bundles").join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        let out = Command::new("runc")
            .arg("spec")
            .current_dir(&bundle)
            .output()
            .unwrap();
        assert!(out.status.success(), "runc spec: {out:?}");
        let path = bundle.join("config.json");
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        spec["process"]["args"] = json!(args);
        spec["process"]["terminal"] = json!(terminal);
        spec["root"] = json!({"path": self.dir.path().join("rootfs"), "readonly": true});
        spec["linux"]["resources"] = resources;
        // runc spec's rule, as in every CRI spec: no host devices.
        if spec["linux"]["resources"]["devices"].is_null() {
            spec["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}]);
        }
        // As containerd's CRI plugin names them.
        spec["annotations"] = json!({
            "io.kubernetes.cri.sandbox-id": TEST_POD,
            "io.kubernetes.cri.container-name": id,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        bundle
    }

    pub async fn create(&self, agent: &AgentClient, id: &str, args: &[&str]) -> u32 {
        let bundle = self.bundle(id, args, json!({}));
        agent
            .create_container(create_req(id, &bundle))
            .await
            .unwrap()
    }
}

pub fn create_req(id: &str, bundle: &Path) -> CreateContainerRequest {
    CreateContainerRequest {
        id: id.into(),
        bundle: bundle.display().to_string(),
        ..Default::default()
    }
}

/// The whole of one output stream.
pub async fn output(agent: &AgentClient, id: &str, exec_id: &str, stream: Stream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        copy_output(agent, id, exec_id, stream, &mut buf),
    )
    .await
    .expect("output did not end")
    .unwrap();
    String::from_utf8(buf).unwrap()
}

/// Exit status of a process, failing the test rather than hanging.
pub async fn wait_exit(agent: &AgentClient, id: &str, exec_id: &str) -> u32 {
    tokio::time::timeout(Duration::from_secs(30), agent.wait(id, exec_id))
        .await
        .expect("process did not exit")
        .unwrap()
        .exit_status
}

pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.kill_agent();
        // Containers the test left behind.
        let root = self.runc_root();
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force"])
                    .arg(e.file_name())
                    .output();
            }
        }
        for c in CONTROLLERS {
            let parent = Path::new(CGROUP_ROOT).join(c).join(&self.parent);
            if let Ok(entries) = std::fs::read_dir(&parent) {
                for e in entries.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
        // Relays the agent left (their records hold pid and start time).
        for e in std::fs::read_dir(self.state_dir().join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let rec: Option<Value> = std::fs::read(e.path())
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok());
            if let Some(pid) = rec.and_then(|r| r["relay_pid"].as_i64()).filter(|p| *p > 0) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.state_dir().join("netns")) {
            for e in entries.flatten() {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn make_rootfs(rootfs: &Path) {
    for dir in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    for bin in ["sh", "sleep", "cat", "true", "echo", "stty"] {
        let host = which(bin);
        copy_into(&host, &rootfs.join("bin").join(bin));
        let ldd = Command::new("ldd").arg(&host).output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            if let Some(lib) = line
                .split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
            {
                copy_into(&lib, &rootfs.join(lib.strip_prefix("/").unwrap()));
            }
        }
    }
}

fn which(bin: &str) -> PathBuf {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("host has no {bin}"))
}

fn copy_into(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(std::fs::canonicalize(from).unwrap(), to).unwrap();
}
