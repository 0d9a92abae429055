//! `MuxStream::poll_drain_into`: received bytes written straight into a writer
//! (the relay's bulk path), with credit grants, end of stream and reset.

use std::future::poll_fn;
use std::time::Duration;

use heteronet::{
    mux::DrainError, Destination, LinkBuilder, Mux, MuxEvent, MuxEvents, MuxStream, NotifyMode,
    RegionAddr, Side,
};
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(60);

fn builder(sock: &std::path::Path, side: Side) -> LinkBuilder {
    LinkBuilder::new(RegionAddr::Memfd)
        .side(side)
        .notify(NotifyMode::Elastic)
        .rendezvous(sock)
        .ring_bytes(256 * 1024)
}

async fn next_stream(ev: &mut MuxEvents) -> MuxStream {
    loop {
        match tokio::time::timeout(LIMIT, ev.next()).await.unwrap() {
            Some(MuxEvent::Stream(s, _)) => return s,
            Some(MuxEvent::PeerUp) => continue,
            other => panic!("expected a stream, got {other:?}"),
        }
    }
}

/// Drains `s` into a Vec until end of stream or an error.
async fn drain_all(s: &mut MuxStream) -> (Vec<u8>, Option<DrainError>) {
    let mut out = Vec::new();
    loop {
        match poll_fn(|cx| s.poll_drain_into(cx, &mut out)).await {
            Ok(0) => return (out, None),
            Ok(_) => {}
            Err(e) => return (out, Some(e)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delivers_more_than_a_window_byte_exact_then_eof() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rv.sock");
    let (creator, _cev) = Mux::start(builder(&sock, Side::Cpu).create().unwrap());
    let (_opener, mut oev) = Mux::start(builder(&sock, Side::Dpu));
    creator.connected().await.unwrap();
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut tx = creator
        .open(Destination::tcp("127.0.0.1:9".parse().unwrap()))
        .await
        .unwrap();
    let mut sut = next_stream(&mut oev).await;
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        tx.write_all(&sent).await.unwrap();
        tx.shutdown().await.unwrap();
        tx
    });
    let (got, err) = tokio::time::timeout(LIMIT, drain_all(&mut sut))
        .await
        .unwrap();
    assert!(err.is_none(), "drain failed: {err:?}");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "drained bytes differ");
    drop(writer.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_reports_a_peer_reset_as_a_stream_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rv.sock");
    let (creator, _cev) = Mux::start(builder(&sock, Side::Cpu).create().unwrap());
    let (_opener, mut oev) = Mux::start(builder(&sock, Side::Dpu));
    creator.connected().await.unwrap();
    let mut tx = creator
        .open(Destination::tcp("127.0.0.1:9".parse().unwrap()))
        .await
        .unwrap();
    let mut sut = next_stream(&mut oev).await;
    tx.write_all(b"before reset").await.unwrap();
    tx.reset();
    let (got, err) = tokio::time::timeout(LIMIT, drain_all(&mut sut))
        .await
        .unwrap();
    // Bytes that arrived before the reset may or may not be delivered; the
    // reset itself must surface as a stream error, not as end of stream.
    assert!(b"before reset".starts_with(&got));
    assert!(matches!(err, Some(DrainError::Stream(_))), "got {err:?}");
}
