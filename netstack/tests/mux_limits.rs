//! Everything a peer can make a mux hold is bounded: streams beyond the
//! limit are refused (the link stays up), and a peer that stops draining its
//! ring or outpaces this side's owner has its link ended with an error
//! instead of growing a queue without bound. The hostile peer is a raw link
//! writing frames by hand.

use std::time::Duration;

use heteronet::mux::frame::{header, Kind};
use heteronet::{Link, LinkBuilder, Mux, MuxConfig, MuxEvent, RegionAddr, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn shm(tag: &str) -> RegionAddr {
    format!("shm:/heteronet-test-limits-{tag}-{}", std::process::id())
        .parse()
        .unwrap()
}

/// A joined link pair with small rings.
async fn pair(tag: &str) -> (Link, Link) {
    let addr = shm(tag);
    let mut listener = LinkBuilder::new(addr.clone())
        .side(Side::Cpu)
        .ring_bytes(64 * 1024)
        .create()
        .unwrap();
    let opener = LinkBuilder::new(addr).side(Side::Dpu);
    let (a, b) = tokio::join!(listener.accept(), opener.connect());
    (a.unwrap(), b.unwrap())
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_limit_are_refused_and_the_link_stays_up() {
    let (a, b) = pair("streams").await;
    let config = MuxConfig {
        max_streams: 8,
        ..Default::default()
    };
    let (ha, mut ea) = Mux::start_with(a, config);
    let (hb, _eb) = Mux::start(b);
    hb.connected().await.unwrap();
    let dest = heteronet::Destination::tcp("127.0.0.1:80".parse().unwrap());
    let mut opened = Vec::new();
    for _ in 0..20 {
        opened.push(hb.open(dest).await.unwrap());
    }
    let mut accepted = Vec::new();
    while accepted.len() < 8 {
        match ea.next().await.unwrap() {
            MuxEvent::Stream(s, _) => accepted.push(s),
            MuxEvent::PeerUp => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // The refused ones read as reset; the accepted ones carry data.
    for s in opened.iter_mut().skip(8) {
        let mut b = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
        assert!(
            matches!(read, Ok(Err(_))),
            "stream over the limit not refused: {read:?}"
        );
    }
    assert_eq!(ha.stats().streams_refused, 12);
    opened[0].write_all(b"ok").await.unwrap();
    let mut got = [0u8; 2];
    accepted[0].read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ok");
    // Room again once streams close: the link never dropped.
    drop(accepted);
    drop(opened);
    eventually("streams to close", || ha.stats().streams_open == 0).await;
    let _again = hb.open(dest).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ea.next()).await {
        Ok(Some(MuxEvent::Stream(..))) => {}
        other => panic!("no stream after the others closed: {other:?}"),
    }
    assert_eq!(ha.stats().link_errors, 0);
    assert_eq!(ha.stats().peer_ups, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_drains_its_ring_has_its_link_ended() {
    let (a, mut b) = pair("drain").await;
    let config = MuxConfig {
        max_queued_frames: 64,
        ..Default::default()
    };
    let (ha, _ea) = Mux::start_with(a, config);
    ha.connected().await.unwrap();
    // Data for streams that do not exist: each makes the mux answer with a
    // reset, into a ring the hostile peer never reads.
    let mut w = b.waiter();
    let mut sent = 0u32;
    let ended = loop {
        if ha.stats().link_errors > 0 {
            break true;
        }
        if sent > 200_000 {
            break false;
        }
        let hdr = header(Kind::Data, 2 * sent + 1);
        match tokio::time::timeout(Duration::from_secs(2), b.send(&[&hdr, b"x"], &mut w)).await {
            Ok(Ok(())) => sent += 1,
            _ => break ha.stats().link_errors > 0,
        }
    };
    assert!(ended, "the link survived {sent} unanswerable frames");
    assert!(!ha.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outpacing_the_owner_has_its_link_ended() {
    let (a, mut b) = pair("events").await;
    let config = MuxConfig {
        max_pending_events: 16,
        ..Default::default()
    };
    // The owner never takes its events.
    let (ha, _ea) = Mux::start_with(a, config);
    ha.connected().await.unwrap();
    let mut w = b.waiter();
    for _ in 0..100 {
        if b.send(&[&header(Kind::Control, 0), b"{}"], &mut w)
            .await
            .is_err()
        {
            break;
        }
    }
    eventually("the link to end", || ha.stats().link_errors > 0).await;
    assert!(!ha.is_connected());
}
