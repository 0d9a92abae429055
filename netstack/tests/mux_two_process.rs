//! Two processes over a /dev/shm region with eventfd doorbells: the test
//! binary re-runs itself as the opener (child) with an echo server.

use std::process::{Child, Command};
use std::time::Duration;

use heteronet::{Destination, LinkBuilder, Mux, MuxEvent, NotifyMode, RegionAddr, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ENV_SOCK: &str = "HETERONET_TP_SOCK";
const ENV_ADDR: &str = "HETERONET_TP_ADDR";
const LIMIT: Duration = Duration::from_secs(60);

/// Kills the child if the test fails half-way.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The child half; a no-op when run as a normal test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_echo_process() {
    let (Ok(sock), Ok(addr)) = (std::env::var(ENV_SOCK), std::env::var(ENV_ADDR)) else {
        return;
    };
    let addr: RegionAddr = addr.parse().unwrap();
    let link = LinkBuilder::new(addr)
        .side(Side::Dpu)
        .notify(NotifyMode::Elastic)
        .rendezvous(sock)
        .connect()
        .await
        .unwrap();
    let (_h, mut ev) = Mux::start(link);
    while let Some(e) = ev.next().await {
        match e {
            MuxEvent::Stream(s, _) => {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(s);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
            MuxEvent::PeerGone => break,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_echo_between_two_processes_over_shm() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rv.sock");
    let addr: RegionAddr = format!("shm:/heteronet-test-two-process-{}", std::process::id())
        .parse()
        .unwrap();
    let file = addr.file_path().unwrap();
    let listener = LinkBuilder::new(addr.clone())
        .side(Side::Cpu)
        .rendezvous(&sock)
        .ring_bytes(1 << 20)
        .create()
        .unwrap();
    let (h, mut ev) = Mux::start(listener);
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_echo_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_SOCK, &sock)
        .env(ENV_ADDR, addr.to_string())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    match tokio::time::timeout(LIMIT, ev.next()).await.unwrap() {
        Some(MuxEvent::PeerUp) => {}
        other => panic!("expected PeerUp, got {other:?}"),
    }
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let s = h
                .open(Destination::tcp("127.0.0.1:1".parse().unwrap()))
                .await
                .unwrap();
            let data: Vec<u8> = (0..(50_000 + i as usize * 1000))
                .map(|j| (j as u32 ^ i) as u8)
                .collect();
            let (mut r, mut w) = tokio::io::split(s);
            let d2 = data.clone();
            let wr = tokio::spawn(async move {
                w.write_all(&d2).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            wr.await.unwrap();
            assert!(back == data);
        }));
    }
    tokio::time::timeout(LIMIT, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .unwrap();
    let st = h.stats();
    assert_eq!(st.streams_total, 64);
    assert!(st.bytes_rx > 0 && st.bytes_tx == st.bytes_rx);
    // Idle pause: both sides should go to sleep and be woken by doorbells.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = h
        .open(Destination::tcp("127.0.0.1:1".parse().unwrap()))
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    w.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    r.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    let st = h.stats();
    assert!(st.sleeps > 0 && st.wakeups > 0, "{st:?}");

    h.close();
    drop(h);
    let status = tokio::time::timeout(LIMIT, async {
        loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(status.success());
    // The creator removed its region file when the mux stopped.
    tokio::time::timeout(LIMIT, async {
        while file.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
}
