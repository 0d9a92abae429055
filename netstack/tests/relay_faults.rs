//! Faults: a corrupted region, a killed relay, and cleanup.

mod relay_common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use relay_common::*;

/// An open echo connection from `ns` to `addr`.
fn open_echo(pod_ns: &std::path::Path, addr: SocketAddr) -> TcpStream {
    faults::pinged(in_ns(pod_ns, move || TcpStream::connect(addr).unwrap()))
}

/// Writes once more and reads until the connection ends; the way it ended.
fn ending(c: &mut TcpStream) -> Result<usize, ErrorKind> {
    // A reset that already arrived is reported by the first call that meets it.
    if let Err(e) = c.write_all(b"more") {
        return Err(e.kind());
    }
    let mut b = [0u8; 64];
    loop {
        match c.read(&mut b) {
            Ok(0) => return Ok(0),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return Err(ErrorKind::TimedOut)
            }
            Err(e) => return Err(e.kind()),
        }
    }
}

#[test]
fn killed_relay_resets_streams_and_the_pair_recovers_after_restart() {
    let mut pod = Pod::new();
    let addr: SocketAddr = "127.0.0.1:18110".parse().unwrap();
    echo_server(&pod.dpu_path(), "127.0.0.1:18110");
    wait_echo(&pod.cpu_path(), addr);

    // The DPU relay dies: the CPU side resets the stream and drops the mirror.
    let mut c = open_echo(&pod.cpu_path(), addr);
    pod.dpu.kill9();
    assert_eq!(
        ending(&mut c),
        Err(ErrorKind::ConnectionReset),
        "{}",
        pod.logs()
    );
    eventually(20, "mirror to go", || {
        (try_echo(&pod.cpu_path(), addr) == Err(ErrorKind::ConnectionRefused)).then_some(())
    });
    pod.dpu.start();
    wait_echo(&pod.cpu_path(), addr);

    // Same for the CPU relay, the creator of the region.
    let mut c = open_echo(&pod.cpu_path(), addr);
    pod.cpu.kill9();
    // The client's socket belonged to the killed relay's mirror: the kernel closed it.
    assert_ne!(ending(&mut c), Err(ErrorKind::TimedOut), "{}", pod.logs());
    pod.cpu.start();
    wait_echo(&pod.cpu_path(), addr);
    assert!(pod.cpu.alive() && pod.dpu.alive());
}

#[test]
fn garbage_in_the_region_ends_streams_but_relays_stay_up() {
    let mut pod = Pod::new();
    let addr: SocketAddr = "127.0.0.1:18111".parse().unwrap();
    echo_server(&pod.dpu_path(), "127.0.0.1:18111");
    wait_echo(&pod.cpu_path(), addr);
    // A connection that keeps echoing until it fails; its error is the result.
    let client = faults::echo_until_error(in_ns(&pod.cpu_path(), move || {
        TcpStream::connect(addr).unwrap()
    }));
    std::thread::sleep(Duration::from_millis(100));
    // Garbage over everything after the header page (ring indices and data).
    let len = std::fs::metadata(&pod.region_file).unwrap().len();
    faults::scribble(&pod.region_file, 0, len);
    assert_survived_garbage(&mut pod, client, addr);
}

#[test]
fn nothing_is_left_behind() {
    let mut pod = Pod::with(PodOptions {
        capture_egress: true,
        ..Default::default()
    });
    echo_server(&pod.cpu_path(), "127.0.0.1:18112");
    wait_echo(&pod.dpu_path(), "127.0.0.1:18112".parse().unwrap());
    let pids = [pod.cpu.pid(), pod.dpu.pid()];
    let region = pod.region_file.clone();
    assert!(region.exists());
    pod.dpu.terminate();
    pod.cpu.terminate();
    assert!(!region.exists(), "region file left behind");
    assert!(!pod.rendezvous.exists(), "rendezvous socket left behind");
    assert!(
        !pod.cpu.stats.exists() && !pod.dpu.stats.exists(),
        "stats sockets left behind"
    );
    let nat = must(&[
        "ip",
        "netns",
        "exec",
        &pod.dpu_ns,
        "iptables",
        "-t",
        "nat",
        "-S",
    ]);
    assert!(
        !nat.contains("HETERONET"),
        "iptables rules left behind: {nat}"
    );
    let names = [pod.cpu_ns.clone(), pod.dpu_ns.clone()];
    drop(pod);
    for p in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "relay {p} still running"
        );
    }
    let list = must(&["ip", "netns", "list"]);
    for n in names {
        assert!(!list.contains(&n), "netns {n} left behind");
    }
}
