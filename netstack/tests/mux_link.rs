//! Link rendezvous and doorbells: handshake checks, record ping-pong with
//! elastic waiters that sleep and are woken by eventfd doorbells.

use std::time::Duration;

use heteronet::error::Error;
use heteronet::{LinkBuilder, NotifyMode, RegionAddr, Side};

fn shm(tag: &str) -> RegionAddr {
    format!("shm:/heteronet-test-link-{tag}-{}", std::process::id())
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_ping_pong_and_sleepers_are_woken_by_doorbells() {
    let addr = shm("pingpong");
    let mut listener = LinkBuilder::new(addr.clone())
        .side(Side::Cpu)
        .ring_bytes(64 * 1024)
        .create()
        .unwrap();
    let sock = listener.rendezvous_path().to_path_buf();
    assert_eq!(sock, addr.file_path().unwrap().with_extension("sock"));
    let opener = LinkBuilder::new(addr.clone()).side(Side::Dpu);
    let (a, b) = tokio::join!(listener.accept(), opener.connect());
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    assert!(a.is_creator() && !b.is_creator());
    assert_eq!(a.generation(), b.generation());

    let echo = tokio::spawn(async move {
        let mut w = b.waiter();
        let mut buf = Vec::new();
        for _ in 0..200 {
            b.recv(&mut buf, &mut w).await.unwrap();
            b.send(&[&buf], &mut w).await.unwrap();
        }
        b
    });
    let mut w = a.waiter();
    let mut buf = Vec::new();
    for i in 0..200u32 {
        if i % 50 == 0 {
            // Long enough for the peer's spin budget to run out: it must sleep.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        a.send(&[&i.to_le_bytes()], &mut w).await.unwrap();
        a.recv(&mut buf, &mut w).await.unwrap();
        assert_eq!(buf, i.to_le_bytes());
    }
    let b = echo.await.unwrap();
    let sleeps = b.stats().sleeps.load(std::sync::atomic::Ordering::Relaxed);
    let wakeups = b.stats().wakeups.load(std::sync::atomic::Ordering::Relaxed);
    let rung = a
        .stats()
        .doorbells
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sleeps >= 4 && wakeups >= 4 && rung >= 4,
        "{sleeps} {wakeups} {rung}"
    );
    drop((a, b, listener));
    assert!(!addr.file_path().unwrap().exists());
    assert!(!sock.exists());
}

#[tokio::test]
async fn a_full_ring_makes_the_sender_wait_for_space() {
    let addr = shm("full");
    let mut listener = LinkBuilder::new(addr.clone())
        .ring_bytes(4096)
        .create()
        .unwrap();
    let opener = LinkBuilder::new(addr).side(Side::Dpu);
    let (a, b) = tokio::join!(listener.accept(), opener.connect());
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    let sender = tokio::spawn(async move {
        let mut w = a.waiter();
        for i in 0..500u32 {
            a.send(&[&i.to_le_bytes(), &[0u8; 500]], &mut w)
                .await
                .unwrap();
        }
        a
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut w = b.waiter();
    let mut buf = Vec::new();
    for i in 0..500u32 {
        b.recv(&mut buf, &mut w).await.unwrap();
        assert_eq!(buf[..4], i.to_le_bytes());
    }
    let a = sender.await.unwrap();
    assert!(a.stats().sleeps.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn both_ends_claiming_one_side_are_refused() {
    let addr = shm("same");
    let mut listener = LinkBuilder::new(addr.clone())
        .side(Side::Cpu)
        .create()
        .unwrap();
    let opener = LinkBuilder::new(addr).side(Side::Cpu);
    let accept = tokio::time::timeout(Duration::from_millis(500), listener.accept());
    let (a, b) = tokio::join!(accept, opener.connect());
    assert!(matches!(b, Err(Error::Handshake(_))), "{b:?}");
    assert!(a.is_err(), "the listener keeps waiting for a valid peer");
}

#[tokio::test]
async fn connect_without_a_creator_is_a_rendezvous_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = LinkBuilder::new(RegionAddr::Memfd)
        .rendezvous(dir.path().join("none.sock"))
        .connect()
        .await;
    assert!(matches!(r, Err(Error::Rendezvous { .. })), "{r:?}");
    let r = LinkBuilder::new(RegionAddr::Memfd).connect().await;
    assert!(
        matches!(r, Err(Error::Config(_))),
        "memfd needs a rendezvous path"
    );
}

#[tokio::test]
async fn a_stale_socket_and_region_file_are_replaced_by_a_new_creator() {
    let addr = shm("stale");
    let path = addr.file_path().unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"left by a crashed creator").unwrap();
    std::fs::write(path.with_extension("sock"), b"").unwrap();
    let mut listener = LinkBuilder::new(addr.clone()).create().unwrap();
    let opener = LinkBuilder::new(addr).side(Side::Dpu);
    let (a, b) = tokio::join!(listener.accept(), opener.connect());
    assert!(a.is_ok() && b.is_ok());
}

#[test]
fn side_and_mode_parse() {
    assert_eq!("cpu".parse::<Side>().unwrap(), Side::Cpu);
    assert_eq!("dpu".parse::<Side>().unwrap(), Side::Dpu);
    assert!("gpu".parse::<Side>().is_err());
    assert_eq!(
        "busy-poll".parse::<NotifyMode>().unwrap(),
        NotifyMode::BusyPoll
    );
    assert_eq!(
        "elastic".parse::<NotifyMode>().unwrap(),
        NotifyMode::Elastic
    );
    assert!("spin".parse::<NotifyMode>().is_err());
}
