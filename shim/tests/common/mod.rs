//! A stand-in for containerd around the real shim binary: bundles with a tiny
//! rootfs made from host binaries, an events endpoint, and the `start` handshake.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use containerd_shim_protos::{
    api::{self, Empty},
    events::task::TaskExit,
    protobuf::{well_known_types::any::Any, Message, MessageField},
    shim::{events::ForwardRequest, oci::Options},
    shim_async::{create_events, Client, Events, TaskClient},
    ttrpc::{self, asynchronous::Server, context, Code, Error as TtrpcError},
};
use serde_json::{json, Value};

// Request helpers shared by the tests.

pub fn ctx() -> context::Context {
    context::with_timeout(0)
}

pub fn code_of(e: TtrpcError) -> (Code, String) {
    match e {
        TtrpcError::RpcStatus(s) => (s.code(), s.message),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

pub fn create_req(
    h: &Harness,
    id: &str,
    bundle: &std::path::Path,
    stdout: &str,
) -> api::CreateTaskRequest {
    api::CreateTaskRequest {
        id: id.into(),
        bundle: bundle.display().to_string(),
        stdout: stdout.into(),
        options: h.options("runc"),
        ..Default::default()
    }
}

pub fn id_req<T: Default>(f: impl FnOnce(&mut T)) -> T {
    let mut t = T::default();
    f(&mut t);
    t
}

pub const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-heteropod-v1");

/// Skips (with a message) where the real thing cannot run.
pub fn can_run() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP: these tests drive runc and need root");
        return false;
    }
    if Command::new("runc").arg("--version").output().is_err() {
        eprintln!("SKIP: runc is not installed");
        return false;
    }
    true
}

#[derive(Clone, Default)]
struct EventLog(Arc<Mutex<Vec<(String, Any)>>>);

#[async_trait]
impl Events for EventLog {
    async fn forward(
        &self,
        _: &ttrpc::asynchronous::TtrpcContext,
        req: ForwardRequest,
    ) -> ttrpc::Result<Empty> {
        let env = req.envelope.unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .push((env.topic, env.event.unwrap_or_default()));
        Ok(Empty::new())
    }
}

/// Everything one test owns; dropping it removes every trace.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub namespace: String,
    events: EventLog,
    _server: Server,
    shim_pids: Mutex<Vec<i32>>,
}

impl Harness {
    pub async fn new(name: &str) -> Harness {
        let dir = tempfile::Builder::new()
            .prefix("hp-shim-test")
            .tempdir_in("/tmp")
            .unwrap();
        let events = EventLog::default();
        let sock = format!("unix://{}/events.sock", dir.path().display());
        let mut server = Server::new()
            .bind(&sock)
            .unwrap()
            .register_service(create_events(Arc::new(events.clone())));
        server.start().await.unwrap();
        make_rootfs(&dir.path().join("rootfs"));
        Harness {
            namespace: format!("hp-test-{name}-{}", std::process::id()),
            dir,
            events,
            _server: server,
            shim_pids: Mutex::new(Vec::new()),
        }
    }

    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    /// Runtime options as containerd sends them (runc Options, own runc root).
    pub fn options(&self, binary: &str) -> MessageField<Any> {
        let o = Options {
            binary_name: binary.into(),
            root: self.runc_root().display().to_string(),
            ..Default::default()
        };
        Some(Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        })
        .into()
    }

    /// Writes a bundle running `args`, with `annotations`; returns its path.
    pub fn bundle(
        &self,
        id: &str,
        args: &[&str],
        annotations: &[(&str, &str)],
        terminal: bool,
    ) -> PathBuf {
        let bundle = self.dir.path().join(id);
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
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
        let ann: HashMap<&str, &str> = annotations.iter().copied().collect();
        spec["annotations"] = json!(ann);
        std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
        // A plain file where containerd would put the log FIFO: the shim's log.
        std::fs::write(bundle.join("log"), "").unwrap();
        bundle
    }

    pub fn fifo(&self, name: &str) -> String {
        let p = self.dir.path().join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p.display().to_string()
    }

    /// `shim start` in `bundle`, as containerd 1.6 runs it; returns the address.
    pub fn start_shim(&self, id: &str, bundle: &Path) -> String {
        start_shim_in(self.dir.path(), &self.namespace, id, bundle)
    }

    pub async fn client(&self, address: &str) -> TaskClient {
        let client = TaskClient::new(Client::connect(address).await.unwrap());
        let c = client
            .connect(context::with_timeout(0), &api::ConnectRequest::default())
            .await
            .unwrap();
        self.shim_pids.lock().unwrap().push(c.shim_pid as i32);
        client
    }

    /// `shim delete` in `bundle`, as containerd runs it after a shim died.
    pub fn delete_shim(&self, id: &str, bundle: &Path) -> api::DeleteResponse {
        let out = Command::new(SHIM)
            .args(["-namespace", &self.namespace, "-id", id, "-bundle"])
            .arg(bundle)
            .args(["-address", "/dev/null", "delete"])
            .current_dir(bundle)
            .output()
            .unwrap();
        assert!(out.status.success(), "shim delete failed: {out:?}");
        api::DeleteResponse::parse_from_bytes(&out.stdout).unwrap()
    }

    pub fn topics(&self) -> Vec<String> {
        self.events
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    pub fn exits(&self) -> Vec<TaskExit> {
        self.events
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == "/tasks/exit")
            .map(|(_, a)| TaskExit::parse_from_bytes(&a.value).unwrap())
            .collect()
    }

    /// Waits until the shim processes we talked to are gone.
    pub async fn shims_exited(&self) -> bool {
        for _ in 0..50 {
            let alive = self
                .shim_pids
                .lock()
                .unwrap()
                .iter()
                .any(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }

    /// Containers runc still knows in our root.
    pub fn runc_containers(&self) -> Vec<String> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.runc_root().join(&self.namespace))
            .args(["list", "-q"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Shim logs of every bundle, shown for failing tests (and with --nocapture).
        if let Ok(dirs) = std::fs::read_dir(self.dir.path()) {
            for d in dirs.flatten() {
                if let Ok(log) = std::fs::read_to_string(d.path().join("log")) {
                    eprintln!("--- shim log {}:\n{log}", d.path().display());
                }
            }
        }
        let root = self.runc_root().join(&self.namespace);
        for id in self.runc_containers() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id])
                .status();
        }
        for pid in self.shim_pids.lock().unwrap().iter() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A rootfs of host binaries (sh, sleep, cat, tty) and the libraries they need.
/// `shim start` for a harness whose directory is `dir` (callable from threads).
pub fn start_shim_in(dir: &Path, namespace: &str, id: &str, bundle: &Path) -> String {
    let out = Command::new(SHIM)
        .args(["-namespace", namespace, "-id", id])
        .args(["-address", &format!("{}/containerd.sock", dir.display())])
        .args(["-publish-binary", "/bin/true", "start"])
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", format!("{}/events.sock", dir.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "shim start failed: {out:?}");
    let address = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(address.starts_with("unix://"), "start replied {address:?}");
    address
}

fn make_rootfs(rootfs: &Path) {
    for dir in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    for bin in ["sh", "sleep", "cat", "tty", "true"] {
        let host = which(bin);
        copy_into(rootfs, &host, &rootfs.join("bin").join(bin));
        let ldd = Command::new("ldd").arg(&host).output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let lib = line
                .split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from);
            if let Some(lib) = lib {
                let target = rootfs.join(lib.strip_prefix("/").unwrap());
                copy_into(rootfs, &lib, &target);
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

fn copy_into(_rootfs: &Path, from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(std::fs::canonicalize(from).unwrap(), to).unwrap();
}
