//! Unmodified clients in one half reach servers in the other half through the relays.

mod relay_common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;

use relay_common::*;

#[test]
fn cpu_client_reaches_dpu_server_on_loopback_and_pod_ip() {
    let pod = Pod::new();
    echo_server(&pod.dpu_path(), "0.0.0.0:18080");
    wait_echo(&pod.cpu_path(), "127.0.0.1:18080".parse().unwrap());
    wait_echo(&pod.cpu_path(), SocketAddr::new(pod.pod_ip.into(), 18080));
}

#[test]
fn dpu_client_reaches_cpu_server_on_loopback_and_pod_ip() {
    let pod = Pod::new();
    echo_server(&pod.cpu_path(), "127.0.0.1:18081");
    echo_server(&pod.cpu_path(), &format!("{}:18082", pod.pod_ip));
    wait_echo(&pod.dpu_path(), "127.0.0.1:18081".parse().unwrap());
    wait_echo(&pod.dpu_path(), SocketAddr::new(pod.pod_ip.into(), 18082));
}

#[test]
fn ipv6_loopback_listener_is_mirrored() {
    let pod = Pod::new();
    echo_server(&pod.dpu_path(), "[::1]:18083");
    wait_echo(&pod.cpu_path(), "[::1]:18083".parse().unwrap());
}

#[test]
fn binding_a_port_the_other_half_listens_on_fails_with_addr_in_use() {
    let pod = Pod::new();
    echo_server(&pod.cpu_path(), "0.0.0.0:18084");
    wait_echo(&pod.dpu_path(), "127.0.0.1:18084".parse().unwrap());
    let kind = in_ns(&pod.dpu_path(), || {
        TcpListener::bind("0.0.0.0:18084")
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    assert_eq!(kind, Err(ErrorKind::AddrInUse));
    let kind = in_ns(&pod.dpu_path(), || {
        TcpListener::bind("127.0.0.1:18084")
            .map(|_| ())
            .map_err(|e| e.kind())
    });
    assert_eq!(kind, Err(ErrorKind::AddrInUse));
}

#[test]
fn netcat_client_in_dpu_half_reaches_cpu_server() {
    let pod = Pod::new();
    echo_server(&pod.cpu_path(), "127.0.0.1:18085");
    wait_echo(&pod.dpu_path(), "127.0.0.1:18085".parse().unwrap());
    // netcat-openbsd: -N shuts the socket down after stdin EOF, so the echo ends too.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo hello-from-nc | ip netns exec {} nc -N -w 5 127.0.0.1 18085",
            pod.dpu_ns
        ))
        .output()
        .expect("run nc");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello-from-nc\n",
        "{}",
        pod.logs()
    );
}

#[test]
fn dpu_server_sees_the_request_bytes_and_replies_exactly() {
    let pod = Pod::new();
    let addr: SocketAddr = "127.0.0.1:18086".parse().unwrap();
    in_ns(&pod.dpu_path(), move || {
        let l = TcpListener::bind(addr).unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut req = [0u8; 5];
                if c.read_exact(&mut req).is_ok() && &req == b"HELLO" {
                    let _ = c.write_all(b"WORLD");
                }
            }
        });
    });
    wait_until_mirrored(&pod, addr);
    let got = in_ns(&pod.cpu_path(), move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"HELLO").unwrap();
        let mut r = [0u8; 5];
        c.read_exact(&mut r).unwrap();
        r
    });
    assert_eq!(&got, b"WORLD");
}

fn wait_until_mirrored(pod: &Pod, addr: SocketAddr) {
    in_ns(&pod.cpu_path(), move || {
        eventually(20, "mirror", || {
            TcpListener::bind(addr).is_err().then_some(())
        })
    });
}

fn cap_field(pid: u32, name: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(name)).unwrap();
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

#[test]
fn relays_keep_only_the_capabilities_they_need() {
    const NET_BIND_SERVICE: u64 = 1 << 10;
    const NET_ADMIN: u64 = 1 << 12;
    const NET_RAW: u64 = 1 << 13;
    const SETUID: u64 = 1 << 7;
    let pod = Pod::with(PodOptions {
        capture_egress: true,
        ..Default::default()
    });
    let cpu = pod.cpu.pid();
    let dpu = pod.dpu.pid();
    // The CPU side re-makes the other half's egress under its owner's fsuid
    // (the Pod's `-m owner` rules) and loads the other half's nat rules.
    let cpu_caps = NET_BIND_SERVICE | NET_ADMIN | NET_RAW | SETUID;
    assert_eq!(cap_field(cpu, "CapEff:"), cpu_caps);
    assert_eq!(cap_field(cpu, "CapBnd:"), cpu_caps);
    // The capturing side keeps what SO_MARK and the iptables cleanup need.
    let egress = NET_BIND_SERVICE | NET_ADMIN | NET_RAW;
    assert_eq!(cap_field(dpu, "CapEff:"), egress);
    assert_eq!(cap_field(dpu, "CapPrm:"), egress);
    assert_eq!(cap_field(dpu, "CapBnd:"), egress);
}
