//! Host-side helpers of the relay test in `guest_slot.rs`: the CPU half's
//! netns, the real CPU relay (killed on drop) and an echo check from inside
//! the netns. Test-only (it names the test's relay binary), so not part of
//! `mod.rs`, which `heteronet-bench` shares.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::guest_common::guest_image;

/// A network namespace for the CPU half, deleted on drop.
pub struct Netns(String);

impl Netns {
    pub fn new() -> Netns {
        let name = format!("hnt-guest-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        guest_image::sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ))
        .unwrap();
        Netns(name)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The CPU relay (real binary), killed on drop.
pub struct CpuRelay {
    pub child: Option<Child>,
    pub args: Vec<String>,
    pub log: PathBuf,
}

impl CpuRelay {
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_heteronet"))
            .args(&self.args)
            .env("RUST_LOG", "info,heteronet=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CpuRelay {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// In the netns `ns`, on a thread: connects to `addr` until an echo works
/// (the mirror is up), then runs `f` on the connection.
pub fn in_ns<T: Send + 'static>(
    ns: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

pub fn echo_once(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    c.write_all(b"ping")?;
    let mut b = [0u8; 4];
    c.read_exact(&mut b)?;
    if &b != b"ping" {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(c)
}

pub fn wait_echo(addr: std::net::SocketAddr, within: Duration) -> std::net::TcpStream {
    let end = Instant::now() + within;
    loop {
        match echo_once(addr) {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < end, "no echo through the relays: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}
