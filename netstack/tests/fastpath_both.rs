//! hetero-socket with both ends preloaded: a client in the CPU half and a
//! server in the DPU half of a split Pod network (two real netns, the real
//! relays), both unmodified Debian programs loading libheterosocket.so. The
//! relays only introduce them: the bytes go from one program's ring straight
//! to the other's (no pump, no TCP: checked in the relays' counters).

mod fastpath_common;
mod relay_common;

use std::net::SocketAddr;

use fastpath_common::*;
use relay_common::*;

/// Waits until the CPU half mirrors the DPU half's listener on `port`.
fn mirrored_in_cpu(pod: &Pod, port: u16) {
    wait_mirror(&pod.cpu_path(), SocketAddr::from(([127, 0, 0, 1], port)));
}

/// Every fast byte went program to program: the DPU relay pumped none.
fn assert_direct(pod: &Pod) {
    assert_eq!(stat(&pod.dpu, "fast_bytes_in"), 0, "{}", pod.logs());
    assert_eq!(stat(&pod.dpu, "fast_bytes_out"), 0);
}

#[test]
fn socat_echoes_8_mib_byte_exact_program_to_program() {
    let pod = Pod::new();
    let _server = Server::preloaded(
        &pod.dpu_ns,
        "socat -b 65536 TCP-LISTEN:18400,bind=127.0.0.1,reuseaddr,fork EXEC:cat",
    );
    mirrored_in_cpu(&pod, 18400);
    socat_echo(&pod, &pod.cpu_ns, true, 18400, 8 << 20, 31);
    assert_eq!(stat(&pod.cpu, "fast_connects"), 1, "{}", pod.logs());
    assert_eq!(stat(&pod.dpu, "fast_accepts"), 1);
    assert_direct(&pod);
}

#[test]
fn sockperf_ping_pong_with_both_ends_in_epoll_poll_and_select_modes() {
    let pod = Pod::new();
    for (i, mode) in ["e", "p", "s"].into_iter().enumerate() {
        let port = 18401 + i as u16;
        let feed = sockperf_feed(port);
        let _server = Server::preloaded(
            &pod.dpu_ns,
            &format!("sockperf sr -f {} -F {mode}", feed.path().display()),
        );
        mirrored_in_cpu(&pod, port);
        let before = stat(&pod.dpu, "fast_accepts");
        let cmd = format!(
            "sockperf pp -f {} -F {mode} -t 1 -m 64",
            feed.path().display()
        );
        let out = ok(&run(&pod.cpu_ns, true, 30, &cmd), "sockperf", &pod);
        assert!(out.contains("percentile 50.000"), "mode {mode}: {out}");
        assert_eq!(stat(&pod.dpu, "fast_accepts"), before + 1, "mode {mode}");
    }
    assert_direct(&pod);
}

#[test]
fn iperf3_streams_both_ways_program_to_program() {
    let pod = Pod::new();
    let _server = Server::preloaded(&pod.dpu_ns, "iperf3 -s -p 18404");
    mirrored_in_cpu(&pod, 18404);
    for reverse in ["", "-R"] {
        let out = ok(
            &run(
                &pod.cpu_ns,
                true,
                60,
                &format!("iperf3 -c 127.0.0.1 -p 18404 -t 2 -J {reverse}"),
            ),
            "iperf3",
            &pod,
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
        let got = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
        assert!(got > 0, "{reverse}: {out}");
    }
    // Two runs, each a control connection and a data stream.
    assert!(stat(&pod.dpu, "fast_accepts") >= 4, "{}", pod.logs());
    assert_direct(&pod);
}

#[test]
fn a_server_that_dies_mid_stream_resets_the_client_and_nothing_hangs() {
    let pod = Pod::new();
    let (_f, _server) = python_server(
        &pod.dpu_ns,
        r#"
import os, socket
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 18405))
l.listen()
while True:
    c, _ = l.accept()
    got = 0
    while got < 1 << 20:
        got += len(c.recv(65536))
    os._exit(0)
"#,
    );
    mirrored_in_cpu(&pod, 18405);
    let out = python_run(
        &pod,
        &pod.cpu_ns,
        true,
        30,
        r#"
import socket
s = socket.create_connection(("127.0.0.1", 18405))
try:
    while True:
        s.sendall(b"x" * 65536)
except (ConnectionResetError, BrokenPipeError) as e:
    print(type(e).__name__)
"#,
    );
    assert!(
        matches!(out.trim(), "ConnectionResetError" | "BrokenPipeError"),
        "{out}"
    );
    assert_eq!(stat(&pod.dpu, "fast_accepts"), 1);
}
