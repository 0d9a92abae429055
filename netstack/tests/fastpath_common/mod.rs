//! Shared by the fast-path test binaries: the library, programs run in a
//! half of a split Pod (preloaded or not), servers, counters.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use crate::relay_common::*;

/// target/<profile>/libheterosocket.so, built by `cargo test --workspace`.
pub fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let lib = dir.join("libheterosocket.so");
    assert!(
        lib.exists(),
        "{} missing: build the workspace (cargo build -p heterosocket) first",
        lib.display()
    );
    lib
}

pub fn command(ns: &str, preload: bool, cmd: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "sh", "-c", cmd]);
    if preload {
        c.env("LD_PRELOAD", library());
    }
    c
}

/// Runs `cmd` in netns `ns`, preloaded or not, killed after `secs`.
pub fn run(ns: &str, preload: bool, secs: u32, cmd: &str) -> Output {
    let limited = format!(
        "exec timeout -s KILL {secs} sh -c '{}'",
        cmd.replace('\'', "'\\''")
    );
    command(ns, preload, &limited)
        .stdin(Stdio::null())
        .output()
        .expect("run command")
}

/// A server process in a netns, killed when dropped.
/// A server process and everything it forks (its own process group), killed
/// together on drop: a forked child must not outlive the test.
pub struct Server(pub Child);

impl Server {
    pub fn start(ns: &str, cmd: &str) -> Server {
        Server::spawn(ns, false, cmd)
    }

    /// A server with the library loaded.
    pub fn preloaded(ns: &str, cmd: &str) -> Server {
        Server::spawn(ns, true, cmd)
    }

    fn spawn(ns: &str, preload: bool, cmd: &str) -> Server {
        let child = command(ns, preload, &format!("exec {cmd}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn stat(r: &Relay, key: &str) -> u64 {
    r.stats_json()
        .and_then(|v| v["relay"][key].as_u64())
        .unwrap_or_else(|| panic!("relay counter {key} missing"))
}

pub fn ok(o: &Output, what: &str, pod: &Pod) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {:?}\nstdout: {}\nstderr: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        pod.logs()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A file of `len` pattern bytes in a temporary directory.
pub fn data_file(len: usize, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let mut data = vec![0u8; len];
    pattern(seed, &mut data);
    std::fs::write(&path, &data).unwrap();
    (dir, path)
}

/// Waits until the CPU half mirrors the DPU half's listener on `port`.
pub fn mirrored(pod: &Pod, port: u16) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    eventually(20, "mirror of the DPU listener", || {
        in_ns(&pod.cpu_path(), move || {
            std::net::TcpStream::connect(addr).ok()
        })
        .map(|_| ())
    });
}

/// A split Pod with an echo server on 127.0.0.1:`port` in the DPU half,
/// mirrored into the CPU half.
pub fn pod_with_echo(port: u16) -> Pod {
    let pod = Pod::new();
    echo_server(&pod.dpu_path(), &format!("127.0.0.1:{port}"));
    mirrored(&pod, port);
    pod
}

/// The held client ended cleanly after its connection was reset.
pub fn assert_reset(status: std::process::ExitStatus, lines: &[String]) {
    assert!(status.success(), "client: {status:?} {lines:?}");
    assert!(
        matches!(
            lines.first().map(String::as_str),
            Some("ConnectionResetError" | "BrokenPipeError")
        ),
        "{lines:?}"
    );
}

/// socat in `ns` (preloaded or not) sends `len` pattern bytes to
/// 127.0.0.1:`port`, half-closes, and must read back exactly what it sent.
pub fn socat_echo(pod: &Pod, ns: &str, preload: bool, port: u16, len: usize, seed: u64) {
    let (dir, src) = data_file(len, seed);
    let dst = dir.path().join("echo");
    // socat half-closes after stdin's EOF and waits for the echo's EOF.
    let o = run(
        ns,
        preload,
        60,
        &format!(
            "socat -b 65536 -t 30 - TCP:127.0.0.1:{port} < {} > {}",
            src.display(),
            dst.display()
        ),
    );
    ok(&o, "socat", pod);
    assert!(
        std::fs::read(&dst).unwrap() == std::fs::read(&src).unwrap(),
        "echo differs"
    );
}

/// A sockperf feed file naming 127.0.0.1:`port` (its -F multiplexer modes need one).
pub fn sockperf_feed(port: u16) -> tempfile::NamedTempFile {
    let feed = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(feed.path(), format!("T:127.0.0.1:{port}\n")).unwrap();
    feed
}

/// Python lines that connect `s` to 127.0.0.1:`port` and define `ping(msg)`,
/// which sends `msg` and asserts its echo.
pub fn python_ping_prelude(port: u16) -> String {
    format!(
        r#"
import os, socket
s = socket.create_connection(("127.0.0.1", {port}))
def ping(msg):
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += s.recv(100)
    assert got == msg, (got, msg)
"#
    )
}

/// A Python script in a temporary file (kept while the returned file lives).
fn script_file(script: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), script).unwrap();
    file
}

/// Runs Python `script` in netns `ns` (preloaded or not, Python's socket
/// module calls libc's socket API), killed after `secs`; its stdout, which
/// must come with success.
pub fn python_run(pod: &Pod, ns: &str, preload: bool, secs: u32, script: &str) -> String {
    let file = script_file(script);
    let o = run(
        ns,
        preload,
        secs,
        &format!("python3 {}", file.path().display()),
    );
    ok(&o, "python client", pod)
}

/// A preloaded Python server in netns `ns`, given its script.
pub fn python_server(ns: &str, script: &str) -> (tempfile::NamedTempFile, Server) {
    let file = script_file(script);
    let server = Server::preloaded(ns, &format!("python3 {}", file.path().display()));
    (file, server)
}
