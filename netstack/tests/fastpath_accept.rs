//! hetero-socket, accept side: unmodified Debian servers, preloaded with
//! libheterosocket.so in the CPU half of a split Pod network (two real netns,
//! the real relays), accept connections that ordinary clients in the DPU half
//! make, on the fast path (checked in the relays' counters), byte-exact; a
//! listener that does not claim its connections still gets them through the
//! relay.

mod fastpath_common;
mod relay_common;

use std::net::SocketAddr;

use fastpath_common::*;
use relay_common::*;

/// Waits until the DPU half mirrors the CPU half's listener on `port`.
fn mirrored_in_dpu(pod: &Pod, port: u16) {
    wait_mirror(&pod.dpu_path(), SocketAddr::from(([127, 0, 0, 1], port)));
}

#[test]
fn socat_server_echoes_8_mib_byte_exact_to_a_client_of_the_other_half() {
    let pod = Pod::new();
    let _server = Server::preloaded(
        &pod.cpu_ns,
        "socat -b 65536 TCP-LISTEN:18300,bind=127.0.0.1,reuseaddr,fork EXEC:cat",
    );
    mirrored_in_dpu(&pod, 18300);
    socat_echo(&pod, &pod.dpu_ns, false, 18300, 8 << 20, 21);
    assert_eq!(stat(&pod.cpu, "fast_accepts"), 1, "{}", pod.logs());
    assert_eq!(stat(&pod.dpu, "fast_bytes_out"), 8 << 20);
    assert_eq!(stat(&pod.dpu, "fast_bytes_in"), 8 << 20);
    eventually(10, "fast connection to end", || {
        (stat(&pod.dpu, "fast_active") == 0).then_some(())
    });
    assert_eq!(stat(&pod.dpu, "fast_reset"), 0);
}

#[test]
fn sockperf_server_in_epoll_poll_and_select_modes() {
    let pod = Pod::new();
    for (i, mode) in ["e", "p", "s"].into_iter().enumerate() {
        let port = 18301 + i as u16;
        // The server's multiplexer is chosen with -F, which takes a feed file.
        let feed = sockperf_feed(port);
        let _server = Server::preloaded(
            &pod.cpu_ns,
            &format!("sockperf sr -f {} -F {mode}", feed.path().display()),
        );
        mirrored_in_dpu(&pod, port);
        let before = stat(&pod.cpu, "fast_accepts");
        let cmd = format!("sockperf pp --tcp -i 127.0.0.1 -p {port} -t 1 -m 64");
        let out = ok(&run(&pod.dpu_ns, false, 30, &cmd), "sockperf", &pod);
        assert!(out.contains("percentile 50.000"), "mode {mode}: {out}");
        assert_eq!(stat(&pod.cpu, "fast_accepts"), before + 1, "mode {mode}");
    }
    // (sockperf's client may end with a reset: replies still in flight.)
}

#[test]
fn iperf3_server_receives_and_sends_over_the_fast_path() {
    let pod = Pod::new();
    let _server = Server::preloaded(&pod.cpu_ns, "iperf3 -s -p 18304");
    mirrored_in_dpu(&pod, 18304);
    for reverse in ["", "-R"] {
        let before = stat(&pod.cpu, "fast_accepts");
        let out = ok(
            &run(
                &pod.dpu_ns,
                false,
                60,
                &format!("iperf3 -c 127.0.0.1 -p 18304 -t 2 -J {reverse}"),
            ),
            "iperf3",
            &pod,
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
        let got = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
        assert!(got > 0, "{out}");
        // The control connection and the data stream.
        assert!(
            stat(&pod.cpu, "fast_accepts") >= before + 2,
            "{reverse}: {}",
            pod.logs()
        );
    }
}

#[test]
fn curl_in_the_other_half_fetches_from_a_preloaded_web_server() {
    let pod = Pod::new();
    let (dir, src) = data_file(4 << 20, 23);
    let _server = Server::preloaded(
        &pod.cpu_ns,
        &format!(
            "python3 -m http.server 18305 --bind 0.0.0.0 --directory {}",
            dir.path().display()
        ),
    );
    mirrored_in_dpu(&pod, 18305);
    let cmd = format!(
        "curl -sf http://127.0.0.1:18305/data | cmp - {src} && curl -sf http://{ip}:18305/data | cmp - {src}",
        src = src.display(),
        ip = pod.pod_ip,
    );
    ok(&run(&pod.dpu_ns, false, 60, &cmd), "curl", &pod);
    assert_eq!(stat(&pod.cpu, "fast_accepts"), 2, "{}", pod.logs());
}

/// Runs a Python client (not preloaded) in the DPU half.
fn python_client(pod: &Pod, script: &str) -> String {
    python_run(pod, &pod.dpu_ns, false, 60, script)
}

#[test]
fn the_server_sees_the_clients_address_and_a_client_reset() {
    let pod = Pod::new();
    let out_dir = tempfile::tempdir().unwrap();
    let report = out_dir.path().join("server");
    let (_f, _server) = python_server(
        &pod.cpu_ns,
        &format!(
            r#"
import socket
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 18306))
l.listen()
c, addr = l.accept()
lines = ["%s:%d" % addr, "%s:%d" % c.getpeername(), "%s:%d" % c.getsockname()]
got = b""
try:
    while True:
        b = c.recv(65536)
        if not b:
            lines.append("eof")
            break
        got += b
except ConnectionResetError:
    lines.append("reset")
lines.append(str(len(got)))
open("{}", "w").write("\n".join(lines))
"#,
            report.display()
        ),
    );
    mirrored_in_dpu(&pod, 18306);
    let client = python_client(
        &pod,
        r#"
import socket, struct, time
s = socket.create_connection(("127.0.0.1", 18306))
print("%s:%d" % s.getsockname())
s.sendall(b"x" * 100000)
time.sleep(0.5)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
"#,
    );
    let lines = eventually(20, "server report", || {
        std::fs::read_to_string(&report).ok()
    });
    let lines: Vec<&str> = lines.lines().collect();
    let client_addr = client.trim();
    assert_eq!(
        lines,
        [
            client_addr,
            client_addr,
            "127.0.0.1:18306",
            "reset",
            "100000"
        ],
        "{}",
        pod.logs()
    );
    assert_eq!(stat(&pod.cpu, "fast_accepts"), 1);
}

#[test]
fn a_listener_whose_process_does_not_claim_gets_its_connection_through_the_relay() {
    let pod = Pod::new();
    // The preloaded parent listens (and registers), then an exec'd child
    // without the library serves the listening socket: nobody claims.
    let (_f, _server) = python_server(
        &pod.cpu_ns,
        r#"
import os, socket, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 18307))
l.listen()
l.set_inheritable(True)
child = r'''
import socket, sys
l = socket.socket(fileno=int(sys.argv[1]))
while True:
    c, _ = l.accept()
    try:
        b = c.recv(100)
        if b:
            c.sendall(b)
    except OSError:
        pass
    c.close()
'''
env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
if os.fork() == 0:
    os.execve(sys.executable, [sys.executable, "-c", child, str(l.fileno())], env)
os.wait()
"#,
    );
    mirrored_in_dpu(&pod, 18307);
    let out = python_client(
        &pod,
        r#"
import socket
s = socket.create_connection(("127.0.0.1", 18307))
s.settimeout(30)
s.sendall(b"still served")
print(s.recv(100).decode())
"#,
    );
    assert_eq!(out.trim(), "still served", "{}", pod.logs());
    assert_eq!(stat(&pod.cpu, "fast_accepts"), 0);
    assert!(stat(&pod.cpu, "fast_passed") >= 1);
}

#[test]
fn a_listener_without_the_library_is_not_asked() {
    let pod = Pod::new();
    let _server = Server::start(
        &pod.cpu_ns,
        "socat TCP-LISTEN:18308,bind=127.0.0.1,reuseaddr,fork EXEC:cat",
    );
    mirrored_in_dpu(&pod, 18308);
    let o = run(
        &pod.dpu_ns,
        false,
        30,
        "echo plain | socat -t 5 - TCP:127.0.0.1:18308",
    );
    assert_eq!(ok(&o, "socat", &pod), "plain\n");
    assert_eq!(stat(&pod.cpu, "fast_accepts"), 0);
    assert_eq!(stat(&pod.cpu, "fast_passed"), 0, "no offer was made");
    assert_eq!(stat(&pod.cpu, "connects_ok"), 1);
}

#[test]
fn a_listener_older_than_the_relays_registers_at_its_first_accept() {
    let mut pod = Pod::new();
    // The CPU relay is not there yet when the server listens.
    pod.cpu.terminate();
    let (_f, _server) = python_server(
        &pod.cpu_ns,
        r#"
import socket
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 18309))
l.listen()
while True:
    c, _ = l.accept()
    b = c.recv(100)
    c.sendall(b)
    c.close()
"#,
    );
    // Past the library's one-second pause after finding no broker.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    pod.cpu.start();
    mirrored_in_dpu(&pod, 18309);
    let client = r#"
import socket
for i in range(2):
    s = socket.create_connection(("127.0.0.1", 18309))
    s.settimeout(20)
    s.sendall(b"hello %d" % i)
    print(s.recv(100).decode())
    s.close()
"#;
    let out = python_client(&pod, client);
    assert_eq!(out.trim(), "hello 0\nhello 1", "{}", pod.logs());
    // The first came through the relay and made the listener register; the
    // second came on the fast path.
    assert_eq!(stat(&pod.cpu, "fast_accepts"), 1, "{}", pod.logs());
}
