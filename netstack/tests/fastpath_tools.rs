//! hetero-socket: unmodified Debian programs, preloaded with
//! libheterosocket.so in the CPU half of a split Pod network (two real netns,
//! the real relays), reach servers in the DPU half on the fast path (checked
//! in the relays' counters), byte-exact; what the library does not serve
//! goes through the kernel and the relay.

mod fastpath_common;
mod relay_common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use fastpath_common::*;
use relay_common::*;

#[test]
fn socat_echoes_8_mib_byte_exact_with_half_close_over_the_fast_path() {
    let pod = pod_with_echo(18200);
    socat_echo(&pod, &pod.cpu_ns, true, 18200, 8 << 20, 7);
    assert_eq!(stat(&pod.cpu, "fast_connects"), 1, "{}", pod.logs());
    assert_eq!(stat(&pod.dpu, "fast_bytes_in"), 8 << 20);
    assert_eq!(stat(&pod.dpu, "fast_bytes_out"), 8 << 20);
    eventually(10, "fast connection to end", || {
        (stat(&pod.dpu, "fast_active") == 0).then_some(())
    });
    assert_eq!(stat(&pod.dpu, "fast_reset"), 0);
}

#[test]
fn sockperf_ping_pong_in_epoll_poll_and_select_modes() {
    let pod = Pod::new();
    let _server = Server::start(&pod.dpu_ns, "sockperf sr --tcp -i 127.0.0.1 -p 18201");
    mirrored(&pod, 18201);
    let feed = sockperf_feed(18201);
    for mode in ["e", "p", "s"] {
        let before = stat(&pod.cpu, "fast_connects");
        let cmd = format!(
            "sockperf pp -f {} -F {mode} -t 1 -m 64",
            feed.path().display()
        );
        let out = ok(&run(&pod.cpu_ns, true, 30, &cmd), "sockperf", &pod);
        assert!(out.contains("percentile 50.000"), "mode {mode}: {out}");
        assert_eq!(stat(&pod.cpu, "fast_connects"), before + 1, "mode {mode}");
    }
    // The same program without the library goes through the relay.
    let before = stat(&pod.cpu, "fast_connects");
    let cmd = format!("sockperf pp -f {} -F e -t 1 -m 64", feed.path().display());
    ok(&run(&pod.cpu_ns, false, 30, &cmd), "sockperf", &pod);
    assert_eq!(stat(&pod.cpu, "fast_connects"), before);
    assert_eq!(stat(&pod.dpu, "fast_reset"), 0, "{}", pod.logs());
}

#[test]
fn iperf3_streams_over_the_fast_path() {
    let pod = Pod::new();
    let _server = Server::start(&pod.dpu_ns, "iperf3 -s -p 18202");
    mirrored(&pod, 18202);
    let out = ok(
        &run(
            &pod.cpu_ns,
            true,
            60,
            "iperf3 -c 127.0.0.1 -p 18202 -t 2 -J",
        ),
        "iperf3",
        &pod,
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let got = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(got > 0, "{out}");
    // The control connection and the data stream.
    assert!(stat(&pod.cpu, "fast_connects") >= 2, "{}", pod.logs());
    assert!(stat(&pod.dpu, "fast_bytes_in") >= got);
}

#[test]
fn curl_fetches_a_file_from_a_web_server_in_the_other_half() {
    let pod = Pod::new();
    let (dir, src) = data_file(4 << 20, 11);
    let _server = Server::start(
        &pod.dpu_ns,
        &format!(
            "python3 -m http.server 18203 --bind 0.0.0.0 --directory {}",
            dir.path().display()
        ),
    );
    mirrored(&pod, 18203);
    let got = dir.path().join("got");
    let cmd = format!(
        "curl -sf -o {} http://127.0.0.1:18203/data && curl -sf http://{}:18203/data | cmp - {}",
        got.display(),
        pod.pod_ip,
        src.display()
    );
    ok(&run(&pod.cpu_ns, true, 60, &cmd), "curl", &pod);
    assert!(std::fs::read(&got).unwrap() == std::fs::read(&src).unwrap());
    assert_eq!(stat(&pod.cpu, "fast_connects"), 2, "{}", pod.logs());
}

#[test]
fn destinations_outside_the_other_half_go_through_the_kernel() {
    let pod = Pod::new();
    // A listener in the CPU half itself: not the other half's, so not fast.
    echo_server(&pod.cpu_path(), "127.0.0.1:18204");
    let o = run(
        &pod.cpu_ns,
        true,
        30,
        "echo hello | socat -t 5 - TCP:127.0.0.1:18204",
    );
    assert_eq!(ok(&o, "socat", &pod), "hello\n");
    // Nobody listens: the kernel's refusal, unchanged.
    let o = run(
        &pod.cpu_ns,
        true,
        30,
        "curl -s http://127.0.0.1:18299/; echo rc=$?",
    );
    assert_eq!(ok(&o, "curl", &pod).trim(), "rc=7");
    assert_eq!(stat(&pod.cpu, "fast_connects"), 0);
    assert!(stat(&pod.cpu, "fast_passed") >= 2);
}

#[test]
fn a_statically_linked_client_works_through_the_relay() {
    let pod = pod_with_echo(18205);
    // busybox-static cannot load the library: LD_PRELOAD is ignored.
    let o = run(
        &pod.cpu_ns,
        true,
        30,
        "echo static | busybox nc 127.0.0.1 18205 -w 3",
    );
    assert_eq!(ok(&o, "busybox nc", &pod), "static\n");
    assert_eq!(stat(&pod.cpu, "fast_connects"), 0);
}

/// A preloaded Python client in the CPU half.
fn python(pod: &Pod, secs: u32, script: &str) -> String {
    python_run(pod, &pod.cpu_ns, true, secs, script)
}

#[test]
fn a_thousand_connections_open_and_close() {
    let pod = pod_with_echo(18206);
    let out = python(
        &pod,
        120,
        r#"
import socket
for i in range(1000):
    s = socket.create_connection(("127.0.0.1", 18206))
    msg = b"conn %d" % i
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += s.recv(100)
    assert got == msg, (got, msg)
    s.close()
print("done")
"#,
    );
    assert_eq!(out.trim(), "done");
    assert_eq!(stat(&pod.cpu, "fast_connects"), 1000, "{}", pod.logs());
    eventually(20, "all fast connections to end", || {
        (stat(&pod.dpu, "fast_active") == 0).then_some(())
    });
}

#[test]
fn both_processes_keep_a_connection_across_fork() {
    let pod = pod_with_echo(18207);
    let out = python(
        &pod,
        60,
        &(python_ping_prelude(18207)
            + r#"
ping(b"before fork")
pid = os.fork()
if pid == 0:
    ping(b"child")
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert status == 0, status
ping(b"parent after child")
s.shutdown(socket.SHUT_WR)
assert s.recv(10) == b""
print("done")
"#),
    );
    assert_eq!(out.trim(), "done");
    assert_eq!(stat(&pod.cpu, "fast_connects"), 1);
}

/// A preloaded Python client that connects to `port` in the CPU half, checks
/// one echo, then waits for [`HeldClient::go`] before running `then` (Python,
/// with the connection as `s`).
struct HeldClient {
    child: Child,
    marker: tempfile::NamedTempFile,
    _script: tempfile::NamedTempFile,
}

impl HeldClient {
    fn start(pod: &Pod, port: u16, then: &str) -> HeldClient {
        let marker = tempfile::NamedTempFile::new().unwrap();
        let script = format!(
            r#"
import socket, time, os
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"x"); assert s.recv(1) == b"x"
open("{m}", "w").write("connected")
deadline = time.time() + 30
while not os.path.exists("{m}.go") and time.time() < deadline:
    time.sleep(0.05)
{then}
"#,
            m = marker.path().display()
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), script).unwrap();
        let child = command(
            &pod.cpu_ns,
            true,
            &format!("exec timeout -s KILL 60 python3 {}", file.path().display()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        eventually(20, "client connected", || {
            (std::fs::read_to_string(marker.path()).unwrap_or_default() == "connected")
                .then_some(())
        });
        HeldClient {
            child,
            marker,
            _script: file,
        }
    }

    /// Lets the client go on; its exit status and stdout lines.
    fn go(self) -> (std::process::ExitStatus, Vec<String>) {
        let go = PathBuf::from(format!("{}.go", self.marker.path().display()));
        std::fs::write(&go, "").unwrap();
        let o = self.child.wait_with_output().unwrap();
        let _ = std::fs::remove_file(&go);
        let out = String::from_utf8_lossy(&o.stdout);
        (o.status, out.lines().map(str::to_string).collect())
    }
}

#[test]
fn a_killed_peer_resets_the_connection_and_nothing_hangs() {
    let mut pod = pod_with_echo(18208);
    let client = HeldClient::start(
        &pod,
        18208,
        r#"
try:
    while True:
        s.sendall(b"y" * 1000)
        if not s.recv(100000):
            print("eof")
            break
except (ConnectionResetError, BrokenPipeError) as e:
    print(type(e).__name__)
"#,
    );
    pod.dpu.kill9();
    let start = Instant::now();
    let (status, lines) = client.go();
    assert_reset(status, &lines);
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// The memfd regions of fast connections the process `pid` has mapped.
fn fast_regions(pid: u32) -> Vec<PathBuf> {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    std::fs::read_link(p)
                        .map(|l| l.to_string_lossy().starts_with("/memfd:heteronet"))
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn garbage_in_the_ring_ends_the_connection_and_the_program_survives() {
    use std::os::unix::fs::FileExt;
    let mut pod = pod_with_echo(18209);
    let client = HeldClient::start(
        &pod,
        18209,
        r#"
try:
    for _ in range(100):
        s.sendall(b"y" * 1000)
        s.recv(100000)
    print("no error")
except (ConnectionResetError, BrokenPipeError) as e:
    print(type(e).__name__)
# The program goes on: a new connection works.
t = socket.create_connection(("127.0.0.1", 18209))
t.sendall(b"again"); print(t.recv(10).decode())
"#,
    );
    // Ring 0's tail word (region header page, then the ring's control block):
    // an index no ring of this size can have.
    let regions = fast_regions(pod.dpu.pid());
    assert_eq!(regions.len(), 1, "{regions:?}");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&regions[0])
        .unwrap();
    f.write_all_at(&u64::MAX.to_le_bytes(), 4096).unwrap();
    drop(f);
    let (status, lines) = client.go();
    assert_reset(status, &lines);
    assert_eq!(lines.get(1).map(String::as_str), Some("again"), "{lines:?}");
    assert!(pod.dpu.alive() && pod.cpu.alive(), "{}", pod.logs());
    assert_eq!(stat(&pod.cpu, "fast_connects"), 2);
}

#[test]
fn c_stdio_over_a_fast_connection_works() {
    // glibc's stdio reads and writes through internal calls; a stream made
    // with fdopen on a fast connection must still use the ring (busybox wget
    // is such a program). ctypes calls libc's fdopen, fputs and fgets.
    let pod = pod_with_echo(18210);
    let out = python(
        &pod,
        30,
        r#"
import ctypes, socket
libc = ctypes.CDLL(None)
libc.fdopen.restype = ctypes.c_void_p
libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
for f in ("fputs", "fflush", "fgets", "fclose"):
    getattr(libc, f).argtypes = {
        "fputs": [ctypes.c_char_p, ctypes.c_void_p],
        "fflush": [ctypes.c_void_p],
        "fgets": [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p],
        "fclose": [ctypes.c_void_p],
    }[f]
s = socket.create_connection(("127.0.0.1", 18210))
f = libc.fdopen(s.detach(), b"r+")
assert f
libc.fputs(b"hello stdio\n", f)
assert libc.fflush(f) == 0
buf = ctypes.create_string_buffer(64)
assert libc.fgets(buf, 64, f)
print(buf.value.decode().strip())
assert libc.fclose(f) == 0
"#,
    );
    assert_eq!(out.trim(), "hello stdio");
    assert_eq!(stat(&pod.cpu, "fast_connects"), 1);
    assert_eq!(stat(&pod.dpu, "fast_bytes_in"), 12);
}

#[test]
fn a_program_closing_descriptors_it_did_not_open_keeps_its_connection() {
    let pod = pod_with_echo(18209);
    // Daemons close every descriptor but their own (a close loop, or
    // close_range): the library's descriptors must survive both.
    let out = python(
        &pod,
        60,
        &(python_ping_prelude(18209)
            + r#"
ping(b"before")
mine = s.fileno()
for fd in range(3, 1024):
    if fd != mine:
        try:
            os.close(fd)
        except OSError:
            pass
ping(b"after a close loop")
os.closerange(3, mine)
os.closerange(mine + 1, 1 << 20)
ping(b"after close_range")
s.close()
print("done")
"#),
    );
    assert_eq!(out.trim(), "done");
    assert_eq!(stat(&pod.cpu, "fast_connects"), 1, "{}", pod.logs());
    eventually(10, "fast connection to end", || {
        (stat(&pod.dpu, "fast_active") == 0).then_some(())
    });
    assert_eq!(stat(&pod.dpu, "fast_reset"), 0);
}
