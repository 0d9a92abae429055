//! Namespaces, veth pairs, relay pairs and child processes of the benchmark.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> Result<Self> {
        let _ = sh(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name])?;
        let ns = Self(name);
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
    pub fn exec(&self, cmd: &[&str]) -> Result<()> {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(cmd);
        sh(&v)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

pub fn sh(cmd: &[&str]) -> Result<()> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `f` on a thread that lives in netns `ns`.
pub fn in_ns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> thread::JoinHandle<Result<T>> {
    let ns = ns.to_path_buf();
    thread::spawn(move || {
        let file = std::fs::File::open(&ns).with_context(|| format!("open {}", ns.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
}

pub fn join<T>(h: thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("bench thread panicked"))?
}

pub struct Pair {
    pub a: Netns,
    pub b: Netns,
}

pub fn veth_pair(tag: &str, net: u8) -> Result<Pair> {
    let pid = std::process::id();
    let a = Netns::new(format!("hnb-{tag}a-{pid}"))?;
    let b = Netns::new(format!("hnb-{tag}b-{pid}"))?;
    let (va, vb) = (
        format!("hb{tag}a{}", pid % 10000),
        format!("hb{tag}b{}", pid % 10000),
    );
    sh(&[
        "ip", "link", "add", &va, "netns", &a.0, "type", "veth", "peer", "name", &vb, "netns", &b.0,
    ])?;
    a.exec(&[
        "ip",
        "addr",
        "add",
        &format!("10.98.{net}.1/24"),
        "dev",
        &va,
    ])?;
    b.exec(&[
        "ip",
        "addr",
        "add",
        &format!("10.98.{net}.2/24"),
        "dev",
        &vb,
    ])?;
    a.exec(&["ip", "link", "set", &va, "up"])?;
    b.exec(&["ip", "link", "set", &vb, "up"])?;
    Ok(Pair { a, b })
}

pub struct RelayPair {
    pub pair: Pair,
    pub cpu: Proc,
    pub dpu: Proc,
    shm: String,
}

impl Drop for RelayPair {
    fn drop(&mut self) {
        let _ = &self.pair;
        let _ = std::fs::remove_file(format!("/dev/shm{}", self.shm));
    }
}

pub fn relay_pair(tag: &str, mode: &str, threads: usize) -> Result<RelayPair> {
    let pid = std::process::id();
    let a = Netns::new(format!("hnb-{tag}a-{pid}"))?;
    let b = Netns::new(format!("hnb-{tag}b-{pid}"))?;
    let bin = std::env::current_exe()?.with_file_name("heteronet");
    let shm = format!("/heteronet-bench-{tag}-{pid}");
    let rdv = format!("/tmp/heteronet-bench-{tag}-{pid}.sock");
    let spawn = |side: &str, ns: &Netns| -> Result<Proc> {
        let child = Command::new(&bin)
            .args(["--side", side, "--netns"])
            .arg(ns.path())
            .args([
                "--region",
                &format!("shm:{shm}"),
                "--rendezvous",
                &rdv,
                "--mode",
                mode,
            ])
            .args(["--threads", &threads.to_string()])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        Ok(Proc(child))
    };
    let cpu = spawn("cpu", &a)?;
    let dpu = spawn("dpu", &b)?;
    Ok(RelayPair {
        pair: Pair { a, b },
        cpu,
        dpu,
        shm,
    })
}
