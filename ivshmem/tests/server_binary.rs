//! The `heteropod-ivshmem-server` binary: serves, then cleans up on SIGTERM.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use heteropod_ivshmem::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn server(dir: &Path, size: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_heteropod-ivshmem-server"));
    c.arg("--socket")
        .arg(dir.join("s"))
        .arg("--shm")
        .arg(dir.join("m"))
        .args(["--size", size, "--vectors", "2"])
        .arg("--pidfile")
        .arg(dir.join("pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_and_removes_its_files_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Server(
        server(dir.path(), "64K")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&dir.path().join("pid"));
    let a = Client::connect(&dir.path().join("s"), 2).await.unwrap();
    assert_eq!(a.shm().len(), 64 << 10);
    let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    assert_eq!(pid.trim(), srv.0.id().to_string());
    kill(Pid::from_raw(srv.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = srv.0.wait().unwrap();
    assert!(status.success(), "{status}");
    for f in ["s", "m", "pid"] {
        assert!(!dir.path().join(f).exists(), "{f} left behind");
    }
}

#[test]
fn the_binary_explains_a_bad_size_and_a_socket_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let out = server(dir.path(), "3000").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("power of two"), "{err}");

    let _live = Server(
        server(dir.path(), "4096")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&dir.path().join("pid"));
    let out = server(dir.path(), "4096").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
}
