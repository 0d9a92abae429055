//! Shared fixture for the relay tests: a Pod split over two fresh network
//! namespaces with a relay in each, torn down by Drop even on panic.
#![allow(dead_code)]

pub mod faults;
pub mod ivshmem;
pub mod transfer;

// Not every test binary fills buffers.
#[allow(unused_imports)]
pub use faults::pattern;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(1);

pub const RELAY: &str = env!("CARGO_BIN_EXE_heteronet");

pub fn sh(cmd: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn must(cmd: &[&str]) -> String {
    sh(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `f` until it returns Some or `secs` pass.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on a thread inside the netns at `ns`.
pub fn in_ns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_ns(ns, f).join().expect("thread in netns panicked")
}

pub fn spawn_in_ns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let ns = ns.to_path_buf();
    thread::spawn(move || {
        let file = std::fs::File::open(&ns).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

pub struct Relay {
    pub child: Option<Child>,
    pub args: Vec<String>,
    pub log: PathBuf,
    pub stats: PathBuf,
}

impl Relay {
    fn spawn(args: Vec<String>, log: PathBuf, stats: PathBuf) -> Relay {
        let mut r = Relay {
            child: None,
            args,
            log,
            stats,
        };
        r.start();
        r
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("relay log");
        let child = Command::new(RELAY)
            .args(&self.args)
            .env("RUST_LOG", "info,heteronet=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn relay");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the relay cleans up after itself.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON counters from the stats socket.
    pub fn stats_json(&self) -> Option<serde_json::Value> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.stats).ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        serde_json::from_str(&buf).ok()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[derive(Default)]
pub struct PodOptions {
    pub outside: bool,
    pub capture_egress: bool,
    /// `OUTSIDE` in an entry stands for the outside netns address.
    pub udp_forward: Vec<String>,
    /// (CPU, DPU) `--region` values instead of a shm region + rendezvous
    /// (e.g. ivshmem slots, which need no rendezvous).
    pub regions: Option<(String, String)>,
}

/// Two halves of a Pod network (plus optionally an "outside" netns joined to
/// the CPU half by a veth), a relay in each half.
pub struct Pod {
    pub id: String,
    pub cpu_ns: String,
    pub dpu_ns: String,
    pub out_ns: Option<String>,
    pub pod_ip: Ipv4Addr,
    /// Address of the outside netns (reachable from the CPU half).
    pub outside_ip: Ipv4Addr,
    pub region_file: PathBuf,
    pub rendezvous: PathBuf,
    pub cpu: Relay,
    pub dpu: Relay,
}

impl Pod {
    pub fn new() -> Pod {
        Pod::with(PodOptions::default())
    }

    pub fn with(opts: PodOptions) -> Pod {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("{}-{n}", pid % 100000);
        let pod_ip = Ipv4Addr::new(10, 99, (pid % 200) as u8 + 1, n as u8 + 1);
        let outside_ip = Ipv4Addr::new(10, 97, (pid % 200) as u8 + 1, n as u8 + 1);
        let cpu_ns = format!("hnt-{id}-cpu");
        let dpu_ns = format!("hnt-{id}-dpu");
        let out_ns = opts.outside.then(|| format!("hnt-{id}-out"));
        // Partially built state is cleaned by this guard if a step panics.
        let mut guard = NsGuard(Vec::new());
        for ns in [&cpu_ns, &dpu_ns].into_iter().chain(out_ns.as_ref()) {
            let _ = sh(&["ip", "netns", "del", ns]);
            must(&["ip", "netns", "add", ns]);
            guard.0.push(ns.clone());
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let ip = format!("{pod_ip}/32");
        for ns in [&cpu_ns, &dpu_ns] {
            // A veth pair inside the half stands in for a dummy device (no dummy module here).
            must(&[
                "ip", "-n", ns, "link", "add", "pod0", "type", "veth", "peer", "name", "pod0p",
            ]);
            must(&["ip", "-n", ns, "link", "set", "pod0p", "up"]);
            must(&["ip", "-n", ns, "addr", "add", &ip, "dev", "pod0"]);
            must(&["ip", "-n", ns, "link", "set", "pod0", "up"]);
        }
        // The DPU half routes everything to its dummy so egress reaches nat OUTPUT (then REDIRECT).
        must(&[
            "ip", "-n", &dpu_ns, "route", "add", "default", "dev", "pod0",
        ]);
        if let Some(out) = &out_ns {
            must(&[
                "ip", "-n", &cpu_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                "netns", out,
            ]);
            must(&["ip", "-n", &cpu_ns, "link", "set", "eth0", "up"]);
            must(&["ip", "-n", out, "link", "set", "eth0", "up"]);
            let o = format!("{outside_ip}/32");
            must(&["ip", "-n", out, "addr", "add", &o, "dev", "eth0"]);
            must(&[
                "ip",
                "-n",
                out,
                "route",
                "add",
                &format!("{pod_ip}/32"),
                "dev",
                "eth0",
            ]);
            must(&[
                "ip",
                "-n",
                &cpu_ns,
                "route",
                "add",
                &format!("{outside_ip}/32"),
                "dev",
                "eth0",
                "src",
                &pod_ip.to_string(),
            ]);
        }
        let region = format!("/heteronet-test-{id}");
        let region_file = PathBuf::from(format!("/dev/shm{region}"));
        let rendezvous = PathBuf::from(format!("/tmp/heteronet-test-{id}.sock"));
        let common = |side: &str, ns: &str| -> Vec<String> {
            let mut v: Vec<String> = vec![
                "--side".into(),
                side.into(),
                "--netns".into(),
                format!("/run/netns/{ns}"),
            ];
            match &opts.regions {
                Some((cpu, dpu)) => {
                    v.push("--region".into());
                    v.push(if side == "cpu" {
                        cpu.clone()
                    } else {
                        dpu.clone()
                    });
                }
                None => v.extend([
                    "--region".into(),
                    format!("shm:{region}"),
                    "--rendezvous".into(),
                    rendezvous.display().to_string(),
                ]),
            }
            v.extend([
                "--pod-ip".into(),
                pod_ip.to_string(),
                "--stats-socket".into(),
                format!("/tmp/heteronet-test-{id}-{side}.stats"),
                "--poll-ms".into(),
                "100".into(),
            ]);
            if side == "dpu" {
                if opts.capture_egress {
                    v.push("--capture-egress".into());
                }
                for u in &opts.udp_forward {
                    v.push("--udp-forward".into());
                    v.push(u.replace("OUTSIDE", &outside_ip.to_string()));
                }
            }
            v
        };
        let log = |side: &str| PathBuf::from(format!("/tmp/heteronet-test-{id}-{side}.log"));
        let stats = |side: &str| PathBuf::from(format!("/tmp/heteronet-test-{id}-{side}.stats"));
        let cpu = Relay::spawn(common("cpu", &cpu_ns), log("cpu"), stats("cpu"));
        let dpu = Relay::spawn(common("dpu", &dpu_ns), log("dpu"), stats("dpu"));
        guard.0.clear();
        let pod = Pod {
            id,
            cpu_ns,
            dpu_ns,
            out_ns,
            pod_ip,
            outside_ip,
            region_file,
            rendezvous,
            cpu,
            dpu,
        };
        eventually(20, "relays to come up", || {
            (pod.cpu.stats.exists() && pod.dpu.stats.exists()).then_some(())
        });
        pod
    }

    pub fn cpu_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.cpu_ns))
    }
    pub fn dpu_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.dpu_ns))
    }
    pub fn out_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/run/netns/{}",
            self.out_ns.as_ref().expect("no outside netns")
        ))
    }

    /// Dumps the relay logs (for failing assertions).
    pub fn logs(&self) -> String {
        format!(
            "--- cpu relay ---\n{}\n--- dpu relay ---\n{}",
            self.cpu.log_text(),
            self.dpu.log_text()
        )
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.cpu.terminate();
        self.dpu.terminate();
        for ns in [Some(&self.cpu_ns), Some(&self.dpu_ns), self.out_ns.as_ref()]
            .into_iter()
            .flatten()
        {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_file(&self.region_file);
        let _ = std::fs::remove_file(&self.rendezvous);
        let _ = std::fs::remove_file(heteronet::fastpath::fast_socket_path(&self.rendezvous));
        for f in [
            &self.cpu.log,
            &self.dpu.log,
            &self.cpu.stats,
            &self.dpu.stats,
        ] {
            let _ = std::fs::remove_file(f);
        }
    }
}

struct NsGuard(Vec<String>);

impl Drop for NsGuard {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// An echo server in a netns (blocking, thread per connection). Returns its address.
pub fn echo_server(ns: &Path, addr: &str) -> SocketAddr {
    let addr: SocketAddr = addr.parse().expect("addr");
    in_ns(ns, move || {
        let l = TcpListener::bind(addr).expect("bind echo server");
        let a = l.local_addr().expect("local addr");
        thread::spawn(move || {
            for c in l.incoming().flatten() {
                thread::spawn(move || echo(c));
            }
        });
        a
    })
}

/// Echo until EOF, then half-close our side too.
pub fn echo(mut c: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => {
                let _ = c.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Connect from `ns` to `addr` (retrying until the mirror is up) and check one echo.
pub fn wait_echo(ns: &Path, addr: SocketAddr) {
    in_ns(ns, move || {
        eventually(20, &format!("echo via {addr}"), || {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            c.write_all(b"ping").ok()?;
            let mut b = [0u8; 4];
            c.read_exact(&mut b).ok()?;
            (&b == b"ping").then_some(())
        })
    })
}

/// One connect + echo round trip; the error kind on failure.
pub fn try_echo(ns: &Path, addr: SocketAddr) -> Result<(), std::io::ErrorKind> {
    in_ns(ns, move || {
        let mut c =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.kind())?;
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.kind())?;
        c.write_all(b"ping").map_err(|e| e.kind())?;
        let mut b = [0u8; 4];
        c.read_exact(&mut b).map_err(|e| e.kind())?;
        Ok(())
    })
}

/// FNV-1a over a byte stream, for checksummed transfers.
pub fn fnv(h: &mut u64, data: &[u8]) {
    for b in data {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x100000001b3);
    }
}
pub const FNV_INIT: u64 = 0xcbf29ce484222325;

/// Closes with RST (SO_LINGER 0) instead of FIN.
pub fn reset(c: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&c, nix::sys::socket::sockopt::Linger, &l).expect("SO_LINGER");
    drop(c);
}

/// Waits until the relay of `ns` mirrors a listener on `addr` (binding it fails).
pub fn wait_mirror(ns: &Path, addr: SocketAddr) {
    in_ns(ns, move || {
        eventually(20, "mirror", || {
            TcpListener::bind(addr).is_err().then_some(())
        })
    });
}

/// An echo server in `server_ns` on `addr`, then `n` clients in `client_ns`
/// connected all at once before any traffic, each echoing its own message.
/// Returns how many got their message back intact.
pub fn concurrent_echoes(server_ns: &Path, client_ns: &Path, addr: SocketAddr, n: u32) -> u32 {
    in_ns(server_ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let l = rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(addr).unwrap();
            s.listen(4096).unwrap()
        });
        std::thread::spawn(move || {
            rt.block_on(async move {
                loop {
                    let (mut c, _) = l.accept().await.unwrap();
                    tokio::spawn(async move {
                        let (mut r, mut w) = c.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            })
        });
    });
    wait_mirror(client_ns, addr);
    in_ns(client_ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n as usize));
            let mut tasks = Vec::new();
            for i in 0..n {
                let barrier = barrier.clone();
                tasks.push(tokio::spawn(async move {
                    let c = tokio::net::TcpStream::connect(addr).await;
                    // All n are open at the same time before any traffic.
                    barrier.wait().await;
                    let mut c = c.ok()?;
                    let msg = format!("conn-{i:05}-").repeat(100);
                    c.write_all(msg.as_bytes()).await.ok()?;
                    let mut back = vec![0u8; msg.len()];
                    tokio::time::timeout(Duration::from_secs(60), c.read_exact(&mut back))
                        .await
                        .ok()?
                        .ok()?;
                    (back == msg.as_bytes()).then_some(())
                }));
            }
            let mut ok = 0;
            for t in tasks {
                if let Ok(Some(())) = t.await {
                    ok += 1;
                }
            }
            ok
        })
    })
}

/// After garbage was written into `pod`'s region while `client` echoed
/// through `addr`: the stream ended (not stalled), the error was logged, both
/// relays are up and new connections work.
pub fn assert_survived_garbage(
    pod: &mut Pod,
    client: thread::JoinHandle<std::io::ErrorKind>,
    addr: SocketAddr,
) {
    let end = client.join().unwrap();
    assert_ne!(
        end,
        std::io::ErrorKind::TimedOut,
        "stream stalled instead of ending:\n{}",
        pod.logs()
    );
    eventually(10, "a logged corruption error", || {
        let l = pod.logs();
        (l.contains("ERROR") && l.contains("streams reset")).then_some(())
    });
    assert!(
        pod.cpu.alive() && pod.dpu.alive(),
        "a relay died:\n{}",
        pod.logs()
    );
    wait_echo(&pod.cpu_path(), addr);
}

/// A server in `ns` on `addr` that answers each request with
/// "<request>|<peer ip>" and closes.
pub fn tagging_server(ns: &Path, addr: SocketAddr) {
    in_ns(ns, move || {
        let l = TcpListener::bind(addr).expect("bind server");
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut req = [0u8; 3];
                    if c.read_exact(&mut req).is_ok() {
                        let peer = c
                            .peer_addr()
                            .map(|a| a.ip().to_string())
                            .unwrap_or_default();
                        let reply = format!("{}|{peer}", String::from_utf8_lossy(&req));
                        let _ = c.write_all(reply.as_bytes());
                    }
                });
            }
        });
    });
}
