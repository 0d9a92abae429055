//! A DPU guest for one test, booted by `hack/qemu/guest.sh` with its own
//! state dir and port (the kernel/initramfs cache is shared); dropping it
//! powers the guest off even when the test fails.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::{json, Value};

pub const AGENT: &str = env!("CARGO_BIN_EXE_heteropod-dpu-proxy");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../hack/qemu/guest.sh");

/// heteropod-ivshmem-server of the same build as the agent.
pub static IVSHMEM_SERVER: std::sync::LazyLock<PathBuf> =
    std::sync::LazyLock::new(|| Path::new(AGENT).with_file_name("heteropod-ivshmem-server"));

/// Why this test cannot run here, or `None`.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("the QEMU guest test needs root (runc, 9p shares)".into());
    }
    match Command::new(SCRIPT).arg("check").output() {
        Ok(o) if o.status.code() == Some(3) => {
            Some(String::from_utf8_lossy(&o.stdout).trim().to_string())
        }
        Ok(o) if o.status.success() => None,
        Ok(o) => panic!("guest.sh check failed: {o:?}"),
        Err(e) => panic!("cannot run {SCRIPT}: {e}"),
    }
}

pub struct Guest {
    pub state: PathBuf,
    pub port: u16,
    env: Vec<(String, String)>,
}

/// Powers off guests of earlier test runs that were killed before their
/// Drop ran (their state dir names a pid that no longer exists).
fn stop_orphans() {
    for e in std::fs::read_dir("/run").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("hp-qemu-test-") else {
            continue;
        };
        let pid = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            eprintln!(
                "stopping the guest of an earlier run: {}",
                e.path().display()
            );
            let _ = Command::new(SCRIPT)
                .arg("stop")
                .env("QEMU_STATE", e.path())
                .output();
        }
    }
}

impl Guest {
    pub fn new(name: &str) -> Guest {
        Self::with_env(name, &[])
    }

    /// A guest whose settings `extra` override the defaults below.
    pub fn with_env(name: &str, extra: &[(&str, &str)]) -> Guest {
        stop_orphans();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a free port")
            .port();
        let state = PathBuf::from(format!("/run/hp-qemu-test-{name}-{}", std::process::id()));
        let env = vec![
            ("QEMU_STATE".into(), state.display().to_string()),
            ("QEMU_AGENT_PORT".into(), port.to_string()),
            ("QEMU_PROXY_BIN".into(), AGENT.into()),
            // No relay: this test runs no Pod network.
            ("QEMU_RELAY_BIN".into(), "/nonexistent".into()),
            ("QEMU_DPU_MEMORY".into(), "512M".into()),
            ("QEMU_LOG_LEVEL".into(), "debug".into()),
            // The ivshmem device, when its server is built beside the agent
            // (`cargo test --workspace` and `make build` build it).
            (
                "QEMU_IVSHMEM_SERVER_BIN".into(),
                IVSHMEM_SERVER.display().to_string(),
            ),
            (
                "QEMU_IVSHMEM".into(),
                if IVSHMEM_SERVER.exists() { "1" } else { "0" }.into(),
            ),
        ];
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Guest { state, port, env }
    }

    pub fn endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// The node key guest.sh made (`QEMU_AGENT_KEY`'s default).
    pub fn key(&self) -> PathBuf {
        self.state.join("agent.key")
    }

    /// Read-only in the guest, at the same path: bundles and rootfs.
    pub fn share(&self) -> PathBuf {
        self.state.join("share")
    }

    fn run(&self, verb: &str) -> Output {
        Command::new(SCRIPT)
            .arg(verb)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap_or_else(|e| panic!("run guest.sh {verb}: {e}"))
    }

    /// Runs `guest.sh verb`, echoing its output; panics if it fails.
    pub fn must(&self, verb: &str) -> String {
        let out = self.run(verb);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        eprint!("{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "guest.sh {verb} failed: {out:?}");
        text
    }

    /// The settings `guest.sh env` reports.
    pub fn settings(&self) -> HashMap<String, String> {
        self.must("env")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.state.join("console.log")).unwrap_or_default()
    }

    /// QEMU processes of this guest (found by its state dir on their command line).
    pub fn qemu_pids(&self) -> Vec<u32> {
        let needle = self.state.display().to_string();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        let c = String::from_utf8_lossy(&c);
                        c.contains("qemu-system") && c.contains(&needle)
                    })
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let out = self.run("stop");
        if !out.status.success() {
            eprintln!("guest.sh stop: {out:?}");
        }
    }
}

/// A rootfs of Debian's static busybox under `dir` (its applets as links).
pub fn busybox_rootfs(dir: &Path, busybox: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "uname", "cat", "echo", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
}

/// A bundle at `dir` running `args` in `rootfs` (read-only).
pub fn bundle(dir: &Path, rootfs: &Path, args: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "runc spec: {out:?}");
    let path = dir.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["args"] = json!(args);
    spec["process"]["terminal"] = json!(false);
    spec["process"]["env"] = json!(["PATH=/bin"]);
    spec["root"] = json!({"path": rootfs, "readonly": true});
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}
