//! QEMU's ivshmem-doorbell as a peer of our server (skipped without QEMU).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::TestServer;
use heteropod_ivshmem::{Client, PeerEvent};

/// Kills QEMU however the test ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu_binary() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join("qemu-system-x86_64"))
        .find(|p| p.exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_joins_as_a_peer_with_its_vectors_and_its_exit_is_seen() {
    let Some(qemu) = qemu_binary() else {
        eprintln!("SKIP: qemu-system-x86_64 not installed (apt-get install qemu-system-x86)");
        return;
    };
    let srv = TestServer::start(4, 1 << 20);
    let host = Client::connect(&srv.socket, 4).await.unwrap();
    let mut events = host.subscribe();
    let child = Command::new(qemu)
        .args([
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-nodefaults",
            "-nographic",
            "-S",
        ])
        .arg("-chardev")
        .arg(format!("socket,path={},id=ivs", srv.socket.display()))
        .args(["-device", "ivshmem-doorbell,chardev=ivs,vectors=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut qemu = Qemu(child);
    let wait = Duration::from_secs(30);
    let host_id = host.id();
    let guest = srv
        .handle
        .wait_until(wait, |p| {
            p.iter()
                .find(|i| i.id != host_id)
                .map(|i| (i.id, i.vectors))
        })
        .await
        .unwrap();
    assert_eq!(guest.1, 4, "the server gave QEMU 4 eventfds");
    let guest = guest.0;
    assert_eq!(
        tokio::time::timeout(wait, events.recv())
            .await
            .unwrap()
            .unwrap(),
        PeerEvent::Joined(guest)
    );
    host.wait_until(wait, |p| {
        p.iter()
            .any(|i| i.id == guest && i.vectors == 4)
            .then_some(())
    })
    .await
    .unwrap();
    // QEMU accepted the shared memory and our eventfds: it is still running.
    assert!(qemu.0.try_wait().unwrap().is_none(), "QEMU exited");
    for v in 0..4 {
        host.ring(guest, v).unwrap();
    }

    qemu.0.kill().unwrap();
    qemu.0.wait().unwrap();
    assert_eq!(
        tokio::time::timeout(wait, events.recv())
            .await
            .unwrap()
            .unwrap(),
        PeerEvent::Left(guest)
    );
    srv.handle
        .wait_until(wait, |p| (p.len() == 1).then_some(()))
        .await
        .unwrap();
}
