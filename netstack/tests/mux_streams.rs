//! Mux behaviour between a creator and an opener in one process over a memfd
//! region: many streams, half-close, reset, credit isolation, control messages,
//! peer loss and recovery, and corruption of the region.

use std::path::PathBuf;
use std::time::Duration;

use heteronet::{
    Destination, LinkBuilder, Mux, MuxEvent, MuxEvents, MuxHandle, MuxStream, NotifyMode,
    RegionAddr, Side,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

struct Pair {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    creator: MuxHandle,
    creator_ev: MuxEvents,
    opener: MuxHandle,
    opener_ev: MuxEvents,
}

fn builder(sock: &PathBuf, side: Side, mode: NotifyMode) -> LinkBuilder {
    LinkBuilder::new(RegionAddr::Memfd)
        .side(side)
        .notify(mode)
        .rendezvous(sock)
        .ring_bytes(256 * 1024)
}

async fn expect_up(ev: &mut MuxEvents) {
    match tokio::time::timeout(LIMIT, ev.next()).await.unwrap() {
        Some(MuxEvent::PeerUp) => {}
        other => panic!("expected PeerUp, got {other:?}"),
    }
}

async fn pair(mode: NotifyMode) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rv.sock");
    let listener = builder(&sock, Side::Cpu, mode).create().unwrap();
    let (creator, mut creator_ev) = Mux::start(listener);
    let (opener, mut opener_ev) = Mux::start(builder(&sock, Side::Dpu, mode));
    expect_up(&mut creator_ev).await;
    expect_up(&mut opener_ev).await;
    Pair {
        _dir: dir,
        sock,
        creator,
        creator_ev,
        opener,
        opener_ev,
    }
}

/// Echoes every stream the events deliver; returns when events end.
fn spawn_echo(mut ev: MuxEvents) -> tokio::task::JoinHandle<MuxEvents> {
    tokio::spawn(async move {
        loop {
            match ev.next().await {
                Some(MuxEvent::Stream(s, _)) => {
                    tokio::spawn(async move {
                        let (mut r, mut w) = tokio::io::split(s);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
                Some(MuxEvent::PeerGone) | None => return ev,
                Some(_) => {}
            }
        }
    })
}

fn dest() -> Destination {
    Destination::tcp("127.0.0.1:8080".parse().unwrap())
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn echo_round_trip(h: &MuxHandle, seed: u32, len: usize) {
    let s = h.open(dest()).await.unwrap();
    let data = pattern(seed, len);
    let (mut r, mut w) = tokio::io::split(s);
    let d2 = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&d2).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(len);
    r.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert!(back == data, "stream {seed}: echoed bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_streams_echo_byte_exact() {
    let p = pair(NotifyMode::Elastic).await;
    let _echo = spawn_echo(p.opener_ev);
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let h = p.creator.clone();
        tasks.push(tokio::spawn(async move {
            echo_round_trip(&h, i, 1000 + (i as usize * 37) % 20_000).await
        }));
    }
    tokio::time::timeout(LIMIT, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .unwrap();
    let st = p.creator.stats();
    assert_eq!(st.streams_total, 1000);
    // Streams are freed once both directions finished.
    tokio::time::timeout(LIMIT, async {
        while p.creator.stats().streams_open != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_beyond_window_and_ring_is_byte_exact() {
    let p = pair(NotifyMode::Elastic).await;
    let _echo = spawn_echo(p.opener_ev);
    tokio::time::timeout(LIMIT, echo_round_trip(&p.creator, 7, 8 << 20))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_poll_mode_carries_streams() {
    let p = pair(NotifyMode::BusyPoll).await;
    let _echo = spawn_echo(p.opener_ev);
    tokio::time::timeout(LIMIT, echo_round_trip(&p.creator, 3, 300_000))
        .await
        .unwrap();
    assert_eq!(p.creator.stats().sleeps, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_the_other_direction_open() {
    let mut p = pair(NotifyMode::Elastic).await;
    let mut client = p.opener.open(dest()).await.unwrap();
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let Some(MuxEvent::Stream(mut server, d)) = p.creator_ev.next().await else {
        panic!("no stream")
    };
    assert_eq!(d, dest());
    let mut req = Vec::new();
    server.read_to_end(&mut req).await.unwrap();
    assert_eq!(req, b"request");
    server.write_all(b"response").await.unwrap();
    server.shutdown().await.unwrap();
    let mut resp = Vec::new();
    client.read_to_end(&mut resp).await.unwrap();
    assert_eq!(resp, b"response");
    assert!(
        client.write_all(b"x").await.is_err(),
        "write after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_reaches_the_peer_as_connection_reset() {
    let mut p = pair(NotifyMode::Elastic).await;
    let mut client = p.creator.open(dest()).await.unwrap();
    client.write_all(b"hi").await.unwrap();
    let Some(MuxEvent::Stream(mut server, _)) = p.opener_ev.next().await else {
        panic!("no stream")
    };
    let mut b = [0u8; 2];
    server.read_exact(&mut b).await.unwrap();
    client.reset();
    let mut rest = Vec::new();
    let e = server.read_to_end(&mut rest).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    tokio::time::timeout(LIMIT, async {
        loop {
            if let Err(e) = server.write_all(&[0u8; 1024]).await {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
                break;
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_does_not_block_other_streams() {
    let mut p = pair(NotifyMode::Elastic).await;
    let mut stalled = p.creator.open(dest()).await.unwrap();
    let Some(MuxEvent::Stream(never_read, _)) = p.opener_ev.next().await else {
        panic!("no stream")
    };
    // Fill the stalled stream's window: the write of 1 MiB cannot finish.
    let big = vec![1u8; 1 << 20];
    let stuck = tokio::time::timeout(Duration::from_millis(300), stalled.write_all(&big)).await;
    assert!(stuck.is_err(), "credit must stop the writer");
    let _echo = spawn_echo(p.opener_ev);
    for i in 0..20 {
        tokio::time::timeout(LIMIT, echo_round_trip(&p.creator, i, 100_000))
            .await
            .unwrap();
    }
    drop(never_read);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_messages_arrive_in_order() {
    let mut p = pair(NotifyMode::Elastic).await;
    for i in 0..100u32 {
        p.creator
            .send_control(i.to_le_bytes().to_vec())
            .await
            .unwrap();
    }
    for i in 0..100u32 {
        match p.opener_ev.next().await {
            Some(MuxEvent::Control(m)) => assert_eq!(m, i.to_le_bytes()),
            other => panic!("expected control, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_gone_resets_streams_and_a_new_peer_comes_up() {
    let mut p = pair(NotifyMode::Elastic).await;
    let mut s = p.creator.open(dest()).await.unwrap();
    let Some(MuxEvent::Stream(_peer_side, _)) = p.opener_ev.next().await else {
        panic!("no stream")
    };
    p.opener.close();
    drop(p.opener);
    match tokio::time::timeout(LIMIT, p.creator_ev.next())
        .await
        .unwrap()
    {
        Some(MuxEvent::PeerGone) => {}
        other => panic!("expected PeerGone, got {other:?}"),
    }
    let mut b = [0u8; 1];
    let e = s.read(&mut b).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(p.creator.open(dest()).await.is_err(), "no peer attached");

    let (opener2, mut ev2) = Mux::start(builder(&p.sock, Side::Dpu, NotifyMode::Elastic));
    expect_up(&mut p.creator_ev).await;
    expect_up(&mut ev2).await;
    let _echo = spawn_echo(ev2);
    echo_round_trip(&p.creator, 1, 50_000).await;
    assert_eq!(p.creator.stats().peer_ups, 2);
    drop(opener2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_region_ends_streams_and_the_pair_recovers() {
    // Keep the region visible to the test through a listener we drive by hand.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rv.sock");
    let listener = builder(&sock, Side::Cpu, NotifyMode::Elastic)
        .create()
        .unwrap();
    let region = listener.region().clone();
    let (creator, mut creator_ev) = Mux::start(listener);
    let (opener, mut opener_ev) = Mux::start(builder(&sock, Side::Dpu, NotifyMode::Elastic));
    expect_up(&mut creator_ev).await;
    expect_up(&mut opener_ev).await;

    let mut s = creator.open(dest()).await.unwrap();
    let Some(MuxEvent::Stream(mut peer, _)) = opener_ev.next().await else {
        panic!("no stream")
    };
    // Ring 0 (creator -> opener): a "peer" keeps publishing a tail far beyond
    // the capacity right after each legitimate publish, until the opener notices.
    let ctrl = region.header().layout.rings[0].offset;
    let reader = tokio::spawn(async move {
        let mut b = [0u8; 64];
        loop {
            match peer.read(&mut b).await {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    });
    tokio::time::timeout(LIMIT, async {
        while !reader.is_finished() {
            let _ = s.write_all(b"x").await;
            region.poke(ctrl, &(1u64 << 45).to_le_bytes()).unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    let e = reader.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    match tokio::time::timeout(LIMIT, opener_ev.next()).await.unwrap() {
        Some(MuxEvent::PeerGone) => {}
        other => panic!("expected PeerGone, got {other:?}"),
    }
    // Whichever side read the garbage first (the opener's consumer or the
    // creator's producer checking its own tail) ended the link.
    tokio::time::timeout(LIMIT, async {
        while opener.stats().link_errors + creator.stats().link_errors == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    // Both muxes keep running: the opener reconnects, the creator resets the rings.
    expect_up(&mut opener_ev).await;
    let _echo = spawn_echo(opener_ev);
    tokio::time::timeout(LIMIT, async {
        loop {
            if creator.is_connected() {
                if let Ok(s) = creator.open(dest()).await {
                    drop(s);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    echo_round_trip(&creator, 9, 100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_mux_resets_streams_and_ends_events() {
    let mut p = pair(NotifyMode::Elastic).await;
    let mut s: MuxStream = p.creator.open(dest()).await.unwrap();
    p.creator.close();
    let mut b = [0u8; 1];
    assert!(s.read(&mut b).await.is_err());
    loop {
        match tokio::time::timeout(LIMIT, p.creator_ev.next())
            .await
            .unwrap()
        {
            None => break,
            Some(_) => continue,
        }
    }
    assert_eq!(p.creator.stats().streams_open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scribbling_over_an_idle_region_ends_the_link_at_next_use_and_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rv.sock");
    let listener = builder(&sock, Side::Cpu, NotifyMode::Elastic)
        .create()
        .unwrap();
    let region = listener.region().clone();
    let (creator, mut creator_ev) = Mux::start(listener);
    let (_opener, mut opener_ev) = Mux::start(builder(&sock, Side::Dpu, NotifyMode::Elastic));
    expect_up(&mut creator_ev).await;
    expect_up(&mut opener_ev).await;
    let mut s = creator.open(dest()).await.unwrap();
    let Some(MuxEvent::Stream(mut peer, _)) = opener_ev.next().await else {
        panic!("no stream")
    };
    s.write_all(b"before").await.unwrap();
    let mut b = [0u8; 6];
    peer.read_exact(&mut b).await.unwrap();
    // Both sides asleep; overwrite the whole region (header, indices, data).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let junk = vec![0xA5u8; region.len() as usize];
    region.poke(0, &junk).unwrap();
    let w = s.write_all(b"after").await;
    let r = tokio::time::timeout(LIMIT, peer.read(&mut b))
        .await
        .unwrap();
    assert!(w.is_err() || r.is_err(), "the scribble must end the stream");
    for ev in [&mut creator_ev, &mut opener_ev] {
        match tokio::time::timeout(LIMIT, ev.next()).await.unwrap() {
            Some(MuxEvent::PeerGone) => {}
            other => panic!("expected PeerGone, got {other:?}"),
        }
        expect_up(ev).await;
    }
    assert_eq!(creator.stats().link_errors, 1);
    let _echo = spawn_echo(opener_ev);
    echo_round_trip(&creator, 11, 100_000).await;
}
