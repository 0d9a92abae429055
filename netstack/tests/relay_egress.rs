//! Egress of the DPU half: captured TCP and forwarded UDP leave from the CPU half.

mod relay_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use relay_common::*;

fn nat_rules(ns: &str) -> String {
    must(&["ip", "netns", "exec", ns, "iptables", "-t", "nat", "-S"])
}

#[test]
fn captured_egress_reaches_outside_server_from_the_pod_ip() {
    let mut pod = Pod::with(PodOptions {
        outside: true,
        capture_egress: true,
        ..Default::default()
    });
    let srv: SocketAddr = SocketAddr::new(pod.outside_ip.into(), 8080);
    tagging_server(&pod.out_path(), srv);
    assert!(
        nat_rules(&pod.dpu_ns).contains("HETERONET"),
        "capture rules missing"
    );
    let reply = in_ns(&pod.dpu_path(), move || {
        let mut c = TcpStream::connect_timeout(&srv, Duration::from_secs(10)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET").unwrap();
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        r
    });
    assert_eq!(reply, format!("GET|{}", pod.pod_ip), "{}", pod.logs());
    // The rules go away with the relay.
    pod.dpu.terminate();
    assert!(
        !nat_rules(&pod.dpu_ns).contains("HETERONET"),
        "rules left behind: {}",
        nat_rules(&pod.dpu_ns)
    );
}

fn udp_answer_server(ns: &std::path::Path, addr: SocketAddr) {
    in_ns(ns, move || {
        let s = UdpSocket::bind(addr).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let mut reply = b"answer:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                reply.extend_from_slice(format!("|{}", from.ip()).as_bytes());
                let _ = s.send_to(&reply, from);
            }
        });
    });
}

fn query(ns: &std::path::Path, server: SocketAddr, q: &'static [u8]) -> String {
    in_ns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        eventually(20, "UDP answer", || {
            s.send_to(q, server).ok()?;
            let mut buf = [0u8; 1500];
            let (n, from) = s.recv_from(&mut buf).ok()?;
            (from == server).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
        })
    })
}

#[test]
fn dns_query_from_dpu_half_gets_an_answer() {
    let pod = Pod::with(PodOptions {
        outside: true,
        capture_egress: false,
        udp_forward: vec!["OUTSIDE:53".into(), "127.0.0.53:53".into()],
        ..Default::default()
    });
    // A resolver outside both halves (reached from the CPU half over its veth) ...
    let resolver = SocketAddr::new(pod.outside_ip.into(), 53);
    udp_answer_server(&pod.out_path(), resolver);
    // ... and a local one in the CPU half (like systemd-resolved's stub).
    let stub: SocketAddr = "127.0.0.53:53".parse().unwrap();
    udp_answer_server(&pod.cpu_path(), stub);
    let a = query(&pod.dpu_path(), stub, b"example.org A");
    assert_eq!(a, "answer:example.org A|127.0.0.1", "{}", pod.logs());
    let b = query(&pod.dpu_path(), resolver, b"example.com A");
    assert_eq!(
        b,
        format!("answer:example.com A|{}", pod.pod_ip),
        "{}",
        pod.logs()
    );
}

#[test]
fn a_dpu_listener_does_not_shadow_that_port_on_other_hosts() {
    // A server in the DPU half on 0.0.0.0:8080 is mirrored into the CPU half;
    // a client beside it still reaches port 8080 of another host.
    let pod = Pod::with(PodOptions {
        outside: true,
        capture_egress: true,
        ..Default::default()
    });
    let srv: SocketAddr = SocketAddr::new(pod.outside_ip.into(), 8080);
    in_ns(&pod.out_path(), move || {
        let l = TcpListener::bind(srv).unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let _ = c.write_all(b"outside");
            }
        });
    });
    let local: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    in_ns(&pod.dpu_path(), move || {
        let l = TcpListener::bind(local).unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let _ = c.write_all(b"dpu-local");
            }
        });
    });
    wait_mirror(&pod.cpu_path(), local);
    let reply = in_ns(&pod.dpu_path(), move || {
        let mut c = TcpStream::connect_timeout(&srv, Duration::from_secs(10)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = String::new();
        let _ = c.read_to_string(&mut r);
        r
    });
    assert_eq!(reply, "outside", "{}", pod.logs());
}
