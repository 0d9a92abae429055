//! A real DPU agent (the `heteropod-dpu-proxy` binary) on a temp socket with
//! its own state dir and cgroup parent, a stand-in DPU relay serving fixed
//! counters, one split Pod with one running DPU container, and a stand-in CPU
//! relay stats socket. Dropping the node removes every trace (`--cleanup`).
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use heteropod_dpu_proxy::client::{CreateContainerRequest, CreatePodNetworkRequest};
use heteropod_dpu_proxy::{AgentClient, DpuAgent};
use serde_json::json;

pub const HETEROPOD: &str = env!("CARGO_BIN_EXE_heteropod");
/// A CRI-style sandbox id: the CPU socket is named after its first 16 chars.
pub const POD: &str = "c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789";
pub const POD_SHORT: &str = "c0ffee0123456789";
pub const CONTAINER: &str = "envoy-c0ffee";

pub const DPU_STATS: &str = r#"{"relay":{"connects_ok":3},"mux":{"connected":true,"streams_open":2,"streams_total":7,"bytes_tx":1111,"bytes_rx":2222,"spins":33,"sleeps":44,"wakeups":55}}"#;
pub const CPU_STATS: &str = r#"{"relay":{"connects_ok":5,"fast_connects":4,"fast_active":1},"mux":{"connected":true,"streams_open":3,"streams_total":8,"bytes_tx":2222,"bytes_rx":1111,"spins":66,"sleeps":77,"wakeups":88}}"#;

/// Skips (with a message) where the agent cannot run its containers.
pub fn can_run() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP: needs root (the DPU agent makes cgroups and netns)");
        return false;
    }
    let tools = ["runc", "socat", "ip"];
    if let Some(t) = tools.iter().find(|t| {
        Command::new(t)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
    }) {
        eprintln!("SKIP: {t} is not installed");
        return false;
    }
    if !Path::new("/sys/fs/cgroup/cpuset").is_dir() {
        eprintln!("SKIP: needs the cgroup v1 cpuset hierarchy");
        return false;
    }
    true
}

/// The agent binary next to ours (`cargo build -p heteropod-dpu-proxy`).
fn agent_bin() -> PathBuf {
    let bin = Path::new(HETEROPOD).with_file_name("heteropod-dpu-proxy");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p heteropod-dpu-proxy` with the same target dir first",
        bin.display()
    );
    bin
}

pub struct Node {
    pub dir: tempfile::TempDir,
    /// Agent endpoint; its directory name has a quote and a backslash so
    /// the metrics test sees label escaping.
    pub endpoint: String,
    pub stats_dir: PathBuf,
    pub cpu_relay: Child,
    parent: String,
    agent: Child,
}

impl Node {
    pub async fn start(name: &str) -> Node {
        // Short: the agent's stats socket path holds the 64-char Pod id.
        let dir = tempfile::Builder::new()
            .prefix("hpc")
            .tempdir_in("/tmp")
            .unwrap();
        // The agent makes its socket's directory (0700) itself.
        let sock_dir = dir.path().join("q\"b\\s");
        let stats_dir = dir.path().join("stats");
        std::fs::create_dir_all(&stats_dir).unwrap();
        // The test's bundle and rootfs are under its directory.
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!("[policy]\nbundle_roots = [{:?}]\n", dir.path()),
        )
        .unwrap();
        let endpoint = format!("unix://{}/agent.sock", sock_dir.display());
        let parent = format!("hp-cli-test-{name}-{}", std::process::id());
        let relay = fake_relay(dir.path(), "dpu", DPU_STATS);
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let agent = Command::new(agent_bin())
            .args(["--listen", &endpoint])
            .arg("--state-dir")
            .arg(dir.path().join("s"))
            .args(["--cpus", &heteropod_dpu_proxy::server::last_core()])
            .args(["--memory", "512M", "--cgroup-parent", &parent])
            .arg("--relay")
            .arg(&relay)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let cpu_json = dir.path().join("cpu-stats.json");
        std::fs::write(&cpu_json, CPU_STATS).unwrap();
        let cpu_sock = stats_dir.join(format!("heteropod-{POD_SHORT}.stats.sock"));
        let cpu_relay = Command::new("socat")
            .arg(format!(
                "UNIX-LISTEN:{},fork,unlink-early",
                cpu_sock.display()
            ))
            .arg(format!("OPEN:{},rdonly", cpu_json.display()))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let node = Node {
            dir,
            endpoint,
            stats_dir,
            cpu_relay,
            parent,
            agent,
        };
        let agent = node.connect().await;
        node.split_pod(&agent).await;
        for _ in 0..200 {
            if cpu_sock.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        node
    }

    async fn connect(&self) -> AgentClient {
        for _ in 0..200 {
            if let Ok(c) = AgentClient::connect(&self.endpoint).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("agent did not come up; log:\n{}", self.agent_log());
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The Pod's DPU network half (with its relay) and a running DPU
    /// container limited to 500m and 64Mi.
    async fn split_pod(&self, agent: &AgentClient) {
        let req = CreatePodNetworkRequest {
            pod_id: POD.into(),
            pod_ip: "10.125.0.9/16".into(),
            region: format!("/dev/shm/heteropod-{POD_SHORT}"),
            rendezvous: format!("/dev/shm/heteropod-{POD_SHORT}.sock"),
            ..Default::default()
        };
        agent.create_pod_network(req).await.unwrap();
        let bundle = self.bundle(json!({
            "cpu": {"quota": 50000, "period": 100000},
            "memory": {"limit": 64 << 20}
        }));
        let req = CreateContainerRequest {
            id: CONTAINER.into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        };
        agent.create_container(req).await.unwrap();
        agent.start(CONTAINER, "").await.unwrap();
        // The agent asks each relay for its counters; wait until ours answers.
        for _ in 0..200 {
            let nets = agent.list_pod_networks().await.unwrap();
            if nets.iter().any(|n| !n.relay_stats_json.is_empty()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the DPU relay never served counters; log:\n{}",
            self.agent_log()
        );
    }

    fn bundle(&self, resources: serde_json::Value) -> PathBuf {
        let rootfs = self.dir.path().join("rootfs");
        make_rootfs(&rootfs);
        let bundle = self.dir.path().join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        let out = Command::new("runc")
            .arg("spec")
            .current_dir(&bundle)
            .output()
            .unwrap();
        assert!(out.status.success(), "runc spec: {out:?}");
        let path = bundle.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        spec["process"]["args"] = json!(["sleep", "1000"]);
        spec["process"]["terminal"] = json!(false);
        spec["root"] = json!({"path": rootfs, "readonly": true});
        spec["linux"]["resources"] = resources;
        // runc spec's rule, as in every CRI spec: no host devices.
        spec["linux"]["resources"]["devices"] = json!([{"allow": false, "access": "rwm"}]);
        spec["annotations"] = json!({
            "io.kubernetes.cri.sandbox-id": POD,
            "io.kubernetes.cri.container-name": "envoy",
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        bundle
    }

    /// Runs `heteropod` with `args` against this node (containerd absent).
    pub fn heteropod(&self, args: &[&str]) -> Output {
        Command::new(HETEROPOD)
            .args(args)
            .args(self.source_args())
            .env_remove("HETEROPOD_CONFIG")
            .env_remove("CONTAINERD_ADDRESS")
            .output()
            .unwrap()
    }

    pub fn source_args(&self) -> Vec<String> {
        vec![
            "--endpoint".into(),
            self.endpoint.clone(),
            "--cri-endpoint".into(),
            self.dir
                .path()
                .join("no-containerd.sock")
                .display()
                .to_string(),
            "--relay-stats-dir".into(),
            self.stats_dir.display().to_string(),
            "--config".into(),
            self.dir.path().join("absent.toml").display().to_string(),
        ]
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for child in [&mut self.agent, &mut self.cpu_relay] {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The agent's own cleanup: containers, relays, netns, cgroups.
        let out = Command::new(agent_bin())
            .arg("--cleanup")
            .arg("--state-dir")
            .arg(self.dir.path().join("s"))
            .args(["--cgroup-parent", &self.parent])
            .output();
        if let Some(out) = out.ok().filter(|o| !o.status.success()) {
            eprintln!("agent --cleanup: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// A stand-in relay: serves `stats` on the socket named by its last
/// argument (`--stats-socket PATH`) and stays up.
fn fake_relay(dir: &Path, side: &str, stats: &str) -> PathBuf {
    let json = dir.join(format!("{side}-stats.json"));
    std::fs::write(&json, stats).unwrap();
    let relay = dir.join(format!("{side}-relay.sh"));
    let script = format!(
        "#!/bin/sh\nfor a; do last=$a; done\n\
         exec socat UNIX-LISTEN:\"$last\",fork,unlink-early OPEN:{},rdonly\n",
        json.display()
    );
    std::fs::write(&relay, script).unwrap();
    std::fs::set_permissions(&relay, std::fs::Permissions::from_mode(0o755)).unwrap();
    relay
}

/// `sleep` and `sh` with their libraries: enough for the one container.
fn make_rootfs(rootfs: &Path) {
    for dir in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    for bin in ["sh", "sleep"] {
        let host = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(bin))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("host has no {bin}"));
        copy_into(&host, &rootfs.join("bin").join(bin));
        let ldd = Command::new("ldd").arg(&host).output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            if let Some(lib) = line.split_whitespace().find(|w| w.starts_with('/')) {
                let lib = Path::new(lib);
                copy_into(lib, &rootfs.join(lib.strip_prefix("/").unwrap()));
            }
        }
    }
}

fn copy_into(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(std::fs::canonicalize(from).unwrap(), to).unwrap();
}

/// Reads a whole HTTP/1.1 response (the server closes the connection).
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::Write;
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    resp
}
