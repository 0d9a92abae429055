//! The rendezvous socket's path is not trusted: each end checks who is at the
//! other (SO_PEERCRED). A local user who reaches the creator's socket gets
//! nothing (no region, no doorbells), and one who binds the path while the
//! creator is away cannot become a relay's peer.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use heteronet::{LinkBuilder, RegionAddr, Side};

fn shm(tag: &str) -> RegionAddr {
    format!("shm:/heteronet-test-peers-{tag}-{}", std::process::id())
        .parse()
        .unwrap()
}

/// Runs python `script` as user nobody; its stdout.
fn as_nobody(script: &str) -> std::process::Child {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creator_gives_nothing_to_a_peer_of_another_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (to be another user than nobody)");
        return;
    }
    let addr = shm("creator");
    let mut listener = LinkBuilder::new(addr.clone())
        .side(Side::Cpu)
        .ring_bytes(64 * 1024)
        .create()
        .unwrap();
    let sock = listener.rendezvous_path().to_path_buf();
    // As if the modes were lax: the credentials check must hold on its own.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let accept = tokio::spawn(async move {
        let link = listener.accept().await;
        (listener, link.map(|_| ()))
    });
    let script = format!(
        r#"
import array, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({sock:?})
s.settimeout(5)
fds = array.array("i")
try:
    msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(16 * fds.itemsize))
    print(len(msg), len(anc))
except Exception as e:
    print("error", type(e).__name__)
"#,
        sock = sock.display().to_string()
    );
    let out = as_nobody(&script).wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.trim(), "0 0", "nobody got something: {out}");
    // The creator still takes its real peer.
    let opener = LinkBuilder::new(addr).side(Side::Dpu);
    let peer = tokio::time::timeout(std::time::Duration::from_secs(10), opener.connect())
        .await
        .expect("real peer timed out");
    assert!(peer.is_ok(), "{:?}", peer.err());
    let (_listener, link) = accept.await.unwrap();
    assert!(link.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opener_refuses_a_socket_bound_by_another_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (to be another user than nobody)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = dir.path().join("imposter.sock");
    // nobody binds the rendezvous path and waits for a relay to come.
    let script = format!(
        r#"
import socket, sys
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind({sock:?})
l.listen()
print("ready", flush=True)
c, _ = l.accept()
c.sendall(b"HNET" + bytes(60))
c.recv(1)
"#,
        sock = sock.display().to_string()
    );
    let mut imposter = as_nobody(&script);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(imposter.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let r = LinkBuilder::new(shm("opener"))
        .side(Side::Dpu)
        .rendezvous(&sock)
        .connect()
        .await;
    let _ = imposter.kill();
    let _ = imposter.wait();
    let err = match r {
        Ok(_) => panic!("the opener joined an imposter"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("another user"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_directory_the_creator_makes_is_its_own() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("pods/pod-a/link.sock");
    let listener = LinkBuilder::new(shm("dirmode"))
        .side(Side::Cpu)
        .ring_bytes(64 * 1024)
        .rendezvous(&sock)
        .create()
        .unwrap();
    for d in [dir.path().join("pods"), dir.path().join("pods/pod-a")] {
        let mode = std::fs::metadata(&d).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    let mode = std::fs::metadata(&sock).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(listener);
}
