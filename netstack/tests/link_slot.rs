//! Slot links in one process: a real ivshmem server on a temp socket, the
//! creator (`ivshmem:` host peer) and an opener that is a second ivshmem peer
//! standing in for the guest (it rings with eventfds instead of BAR0).

use std::path::PathBuf;
use std::time::Duration;

use heteronet::{Destination, LinkBuilder, Listener, Mux, MuxEvent, MuxEvents, RegionAddr, Side};
use heteropod_ivshmem::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const LIMIT: Duration = Duration::from_secs(30);

/// An ivshmem server that stops (and removes its files) on drop.
struct TestServer {
    dir: tempfile::TempDir,
    socket: PathBuf,
    shm: PathBuf,
    _stop: oneshot::Sender<()>,
}

fn server(vectors: u32, size: u64) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ivshmem.sock");
    let config = ServerConfig {
        socket: socket.clone(),
        shm: dir.path().join("shm").display().to_string(),
        size,
        vectors,
        replace_shm: false,
    };
    let srv = Server::bind(&config).unwrap();
    let shm = srv.shm_path().to_path_buf();
    let (stop, rx) = oneshot::channel();
    tokio::spawn(srv.run(async move {
        let _ = rx.await;
    }));
    TestServer {
        dir,
        socket,
        shm,
        _stop: stop,
    }
}

fn addr(srv: &TestServer, slot: &str) -> RegionAddr {
    format!("ivshmem:{}@{slot}", srv.socket.display())
        .parse()
        .unwrap()
}

async fn next(ev: &mut MuxEvents) -> MuxEvent {
    tokio::time::timeout(LIMIT, ev.next())
        .await
        .expect("mux event in time")
        .expect("mux running")
}

async fn expect_up(ev: &mut MuxEvents) {
    match next(ev).await {
        MuxEvent::PeerUp => {}
        other => panic!("expected PeerUp, got {other:?}"),
    }
}

async fn expect_gone(ev: &mut MuxEvents) {
    match next(ev).await {
        MuxEvent::PeerGone => {}
        other => panic!("expected PeerGone, got {other:?}"),
    }
}

/// Opens a stream to the echoing side and checks `n` bytes come back intact.
async fn echo_round(h: &heteronet::MuxHandle, ev: &mut MuxEvents, n: usize) {
    let dest = Destination::tcp("127.0.0.1:7".parse().unwrap());
    let mut s = h.open(dest).await.unwrap();
    let data: Vec<u8> = (0..n).map(|i| (i * 7 + i / 251) as u8).collect();
    let (mut other, _) = match next(ev).await {
        MuxEvent::Stream(st, d) => (st, d),
        other => panic!("expected a stream, got {other:?}"),
    };
    let echo = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let k = other.read(&mut buf).await.unwrap();
            if k == 0 {
                other.shutdown().await.unwrap();
                return;
            }
            other.write_all(&buf[..k]).await.unwrap();
        }
    });
    let (mut r, mut w) = tokio::io::split(s);
    let send = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&send).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut back = Vec::new();
    tokio::time::timeout(LIMIT, r.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert!(back == data, "echoed bytes differ");
    s = r.unsplit(writer.await.unwrap());
    drop(s);
    echo.await.unwrap();
}

/// The slot's creator (CPU side), bound at `a`.
async fn bind_cpu(a: &RegionAddr) -> Listener {
    LinkBuilder::new(a.clone())
        .side(Side::Cpu)
        .bind()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_link_echoes_and_survives_opener_and_creator_restarts() {
    let srv = server(8, 1 << 20);
    let a = addr(&srv, "1/4");
    let creator = bind_cpu(&a).await;
    let (cpu, mut cpu_ev) = Mux::start(creator);
    let opener = LinkBuilder::new(a.clone()).side(Side::Dpu);
    let (dpu, mut dpu_ev) = Mux::start(opener.clone());
    expect_up(&mut cpu_ev).await;
    expect_up(&mut dpu_ev).await;
    echo_round(&cpu, &mut dpu_ev, 300_000).await;
    echo_round(&dpu, &mut cpu_ev, 300_000).await;

    // The opener goes away: the creator notices at once (no 2 s timeout needed
    // but allowed), and a new opener attaches.
    dpu.close();
    drop(dpu_ev);
    expect_gone(&mut cpu_ev).await;
    let (dpu, mut dpu_ev) = Mux::start(opener.clone());
    expect_up(&mut cpu_ev).await;
    expect_up(&mut dpu_ev).await;
    echo_round(&cpu, &mut dpu_ev, 100_000).await;

    // The creator restarts: the opener sees the new creator epoch and reattaches.
    cpu.close();
    drop(cpu_ev);
    expect_gone(&mut dpu_ev).await;
    let creator = bind_cpu(&a).await;
    let (_cpu, mut cpu_ev) = Mux::start(creator);
    expect_up(&mut cpu_ev).await;
    expect_up(&mut dpu_ev).await;
    echo_round(&dpu, &mut cpu_ev, 100_000).await;
    drop(srv.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opener_may_start_first_and_a_dead_peer_times_out() {
    let srv = server(8, 1 << 20);
    let a = addr(&srv, "0/4");
    // The opener retries until a creator exists.
    let (dpu, mut dpu_ev) = Mux::start(LinkBuilder::new(a.clone()).side(Side::Dpu));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!dpu.is_connected());
    let creator = bind_cpu(&a).await;
    let region = creator.region().clone();
    let (cpu, mut cpu_ev) = Mux::start(creator);
    expect_up(&mut cpu_ev).await;
    expect_up(&mut dpu_ev).await;
    echo_round(&cpu, &mut dpu_ev, 10_000).await;

    // Freeze the opener's heartbeat word by scribbling it constantly with one value:
    // the creator must declare it gone after the timeout.
    let hb_at = 2048 + 16 * 8 + 8;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let r = region.clone();
    let freezer = std::thread::spawn(move || {
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            r.poke(hb_at, &7u64.to_le_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    expect_gone(&mut cpu_ev).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    freezer.join().unwrap();
    // The opener is told (ack withdrawn), reconnects, and the pair works again.
    expect_gone(&mut dpu_ev).await;
    expect_up(&mut cpu_ev).await;
    expect_up(&mut dpu_ev).await;
    echo_round(&dpu, &mut cpu_ev, 10_000).await;
    drop(cpu);
    drop(dpu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_missing_pieces_are_clear_errors() {
    let srv = server(8, 1 << 20);
    // No server there.
    let missing: RegionAddr = format!("ivshmem:{}/nope.sock@0/4", srv.dir.path().display())
        .parse()
        .unwrap();
    let e = LinkBuilder::new(missing)
        .side(Side::Cpu)
        .bind()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("unreachable"), "{e}");
    // No creator in the slot: the opener gives up with a clear error.
    let a = addr(&srv, "2/4");
    let e = LinkBuilder::new(a.clone())
        .side(Side::Dpu)
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("magic") || e.contains("creator"), "{e}");
    // A slot too small for a region, and a sync create of a slot.
    let tiny = addr(&srv, "0/64");
    let e = LinkBuilder::new(tiny)
        .side(Side::Cpu)
        .bind()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("smaller than the smallest region"), "{e}");
    assert!(LinkBuilder::new(a.clone())
        .side(Side::Cpu)
        .create()
        .is_err());
    // pci slots need interrupt eventfds.
    let pci: RegionAddr = "pci:0000:00:04.0/2@0/8".parse().unwrap();
    let e = LinkBuilder::new(pci)
        .side(Side::Dpu)
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("--irq-fds"), "{e}");

    let creator = bind_cpu(&a).await;
    let region = creator.region().clone();
    let (_cpu, mut cpu_ev) = Mux::start(creator);
    // A forged request with a peer id the server never gave out is refused,
    // and a real opener still attaches afterwards.
    let opener_rec = 2048 + 16 * 8;
    region.poke(opener_rec + 16, &999u64.to_le_bytes()).unwrap();
    region
        .poke(opener_rec + 24, &(2u64 | (4u64 << 32)).to_le_bytes())
        .unwrap();
    region.poke(opener_rec, &0xfeedu64.to_le_bytes()).unwrap();
    region.poke(opener_rec + 32, &1u64.to_le_bytes()).unwrap();
    for hb in 0..20u64 {
        region.poke(opener_rec + 8, &hb.to_le_bytes()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (dpu, mut dpu_ev) = Mux::start(LinkBuilder::new(a).side(Side::Dpu));
    expect_up(&mut cpu_ev).await;
    expect_up(&mut dpu_ev).await;
    drop(dpu);
    // An opener that disagrees on the slot count: its window 1/2 starts where
    // slot 2/4 does, so it finds the header, but the slot word tells them apart.
    let e = LinkBuilder::new(addr(&srv, "1/2"))
        .side(Side::Dpu)
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the creator uses slot 2/4, this side 1/2"),
        "{e}"
    );
    // The shared memory file is the server's; the slot never removes it.
    assert!(srv.shm.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_over_the_control_block_ends_the_link_and_it_heals() {
    let srv = server(8, 1 << 20);
    let a = addr(&srv, "3/4");
    let creator = bind_cpu(&a).await;
    let region = creator.region().clone();
    let (cpu, mut cpu_ev) = Mux::start(creator);
    let (dpu, mut dpu_ev) = Mux::start(LinkBuilder::new(a).side(Side::Dpu));
    expect_up(&mut cpu_ev).await;
    expect_up(&mut dpu_ev).await;
    // Both records (epochs, peer ids, slots, ack/state) get junk.
    let mut junk = [0u8; 256];
    for (i, b) in junk.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    region.poke(2048, &junk).unwrap();
    expect_gone(&mut cpu_ev).await;
    expect_gone(&mut dpu_ev).await;
    // The creator re-publishes its record, the opener asks again: linked anew.
    expect_up(&mut cpu_ev).await;
    expect_up(&mut dpu_ev).await;
    echo_round(&cpu, &mut dpu_ev, 50_000).await;
    drop(dpu);
}
