//! A slot link across a real ivshmem BAR: a Debian kernel in QEMU (TCG or KVM) runs
//! `examples/guest_slot`, the DPU end (BAR2 window through sysfs, BAR0
//! doorbell, MSI-X through vfio-pci); this test is the CPU end
//! (`ivshmem:<socket>@k/n`, a host peer of a real ivshmem server). It checks a
//! ping-pong and a checksummed echo transfer, and prints the round-trip times.
//!
//! Needs qemu-system-x86_64, cpio and gzip, and the kernel, modules and
//! static busybox `hack/qemu/guest.sh build` caches (or a linux-image deb,
//! `IVSHMEM_GUEST_KERNEL_DEB`, and `IVSHMEM_GUEST_BUSYBOX`; see
//! `guest_common`); skipped with the reason when any is missing.

#[path = "relay_common/faults.rs"]
mod faults;
#[macro_use]
mod guest_common;
#[path = "guest_common/relays.rs"]
mod relays;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_common::*;
use heteronet::{Destination, LinkBuilder, Mux, MuxEvent, MuxEvents, RegionAddr, Side};
use relays::{in_ns, wait_echo, CpuRelay, Netns};
use std::io::ErrorKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether an echo through the relays comes back from `ns` within 60 s.
async fn echoes_again(ns: PathBuf, addr: std::net::SocketAddr) -> bool {
    let again = in_ns(ns, move || {
        wait_echo(addr, Duration::from_secs(60)).peer_addr().is_ok()
    });
    matches!(
        tokio::task::spawn_blocking(move || again.join()).await,
        Ok(Ok(true))
    )
}

async fn next_event(ev: &mut MuxEvents, within: Duration) -> MuxEvent {
    tokio::time::timeout(within, ev.next())
        .await
        .expect("mux event in time")
        .expect("mux running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_link_across_a_real_ivshmem_bar_carries_checksummed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let inp = or_skip!(inputs(dir.path(), &VFIO_MODULES, test_examples_dir()));
    eprintln!("guest: kernel {}, accel {}", inp.kernel.source, inp.accel);
    let (socket, stop) = server(dir.path()).unwrap();
    let run = format!("RUST_LOG=info /guest_slot {BDF} {SLOT} {SLOTS}");
    let programs = [(inp.examples.join("guest_slot"), "guest_slot")];
    let initrd = build_guest(dir.path(), &inp, &programs, &run).unwrap();

    // The CPU end first (it creates the slot); the guest's opener retries until then anyway.
    let addr: RegionAddr = format!("ivshmem:{}@{SLOT}/{SLOTS}", socket.display())
        .parse()
        .unwrap();
    let listener = LinkBuilder::new(addr).side(Side::Cpu).bind().await.unwrap();
    let (mux, mut events) = Mux::start(listener);
    let (qemu, rx) = or_skip!(boot(&socket, &inp, &initrd));
    let lines = await_line(rx, "GUEST-VFIO").await;
    match next_event(&mut events, BOOT).await {
        MuxEvent::PeerUp => {}
        other => panic!("expected PeerUp, got {other:?}"),
    }

    // Ping-pong: 64 bytes out, 64 bytes back, ROUNDS times on one stream.
    let mut s = mux
        .open(Destination::tcp("127.0.0.1:7".parse().unwrap()))
        .await
        .unwrap();
    let mut rtt = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let msg = [round as u8; 64];
        let t = Instant::now();
        s.write_all(&msg).await.unwrap();
        let mut back = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut back))
            .await
            .expect("echo in time")
            .unwrap();
        rtt.push(t.elapsed());
        assert_eq!(back, msg, "round {round}");
    }
    drop(s);
    rtt.sort();
    println!(
        "slot link across the BAR ({}), 64 B echo through the guest mux, {ROUNDS} rounds: \
         p50 {:.1} us, p99 {:.1} us",
        inp.accel,
        percentile(&rtt, 50),
        percentile(&rtt, 99)
    );

    // Checksummed transfer: 4 MiB through the guest's echo, read back concurrently.
    let n = 4 << 20;
    let data: Vec<u8> = (0..n)
        .map(|i: usize| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let s = mux
        .open(Destination::tcp("127.0.0.1:7".parse().unwrap()))
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    let send = data.clone();
    let t = Instant::now();
    let writer = tokio::spawn(async move {
        for chunk in send.chunks(64 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(n);
    tokio::time::timeout(Duration::from_secs(300), r.read_to_end(&mut back))
        .await
        .expect("transfer in time")
        .unwrap();
    writer.await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(back.len(), n);
    let sum = |b: &[u8]| {
        b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
            (h ^ u64::from(x)).wrapping_mul(0x100000001b3)
        })
    };
    assert_eq!(sum(&back), sum(&data), "bytes differ after the round trip");
    println!(
        "4 MiB echoed through the guest in {secs:.2} s ({:.1} MiB/s each way)",
        4.0 / secs
    );

    // Both drivers idle long enough to sleep on their eventfds: the answer to
    // "nap" can only wake us through the guest's BAR0 doorbell, and "bye",
    // sent after our own pause, only wakes the guest through MSI-X + VFIO.
    let before = mux.stats().wakeups;
    mux.send_control(b"nap".to_vec()).await.unwrap();
    match next_event(&mut events, Duration::from_secs(60)).await {
        MuxEvent::Control(m) if m == b"awake" => {}
        other => panic!("expected the guest's answer, got {other:?}"),
    }
    assert!(
        mux.stats().wakeups > before,
        "host never woken by the guest's doorbell"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    mux.send_control(b"bye".to_vec()).await.unwrap();
    let (streams, stats) = tokio::task::spawn_blocking(move || {
        let streams = expect_line(&lines, "GUEST-STREAMS", BOOT);
        (streams, expect_line(&lines, "GUEST-STATS", BOOT))
    })
    .await
    .unwrap();
    assert_eq!(streams, "GUEST-STREAMS 2");
    let guest: serde_json::Value =
        serde_json::from_str(stats.trim_start_matches("GUEST-STATS ")).unwrap();
    println!("guest mux stats: {guest}");
    assert!(
        guest["wakeups"].as_u64() > Some(0),
        "guest never woken by MSI-X: {guest}"
    );
    assert_eq!(guest["link_errors"].as_u64(), Some(0));
    assert_eq!(mux.stats().link_errors, 0);
    drop(qemu);
    let _ = stop.send(());
}

/// Bytes the real relays carry each way across the BAR (issue: 1 GiB).
const TRANSFER: u64 = 1 << 30;
const CONNS: usize = 1000;

/// The transfer's pattern: byte `at + i` of the stream, so any lost, repeated
/// or reordered chunk shows.
fn fill_pattern(buf: &mut [u8], at: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = ((at + i as u64).wrapping_mul(2654435761) >> 11) as u8;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_relays_across_a_real_ivshmem_bar_echo_checksummed_bytes() {
    const PORT: u16 = 18400;
    let dir = tempfile::tempdir().unwrap();
    let inp = or_skip!(inputs(dir.path(), &RELAY_MODULES, test_examples_dir()));
    eprintln!("guest: kernel {}, accel {}", inp.kernel.source, inp.accel);
    let (socket, stop) = server(dir.path()).unwrap();
    let relay = PathBuf::from(env!("CARGO_BIN_EXE_heteronet"));
    let programs = [
        (inp.examples.join("guest_relay"), "guest_relay"),
        (relay, "heteronet"),
    ];
    let run = format!("/guest_relay {BDF} {SLOT} {SLOTS} {PORT} /heteronet");
    let initrd = build_guest(dir.path(), &inp, &programs, &run).unwrap();

    let ns = Netns::new();
    let mut cpu = CpuRelay {
        child: None,
        args: vec![
            "--side".into(),
            "cpu".into(),
            "--netns".into(),
            ns.path().display().to_string(),
            "--region".into(),
            format!("ivshmem:{}@{SLOT}/{SLOTS}", socket.display()),
            "--poll-ms".into(),
            "100".into(),
        ],
        log: dir.path().join("cpu.log"),
    };
    cpu.start();
    let (qemu, rx) = or_skip!(boot(&socket, &inp, &initrd));
    let rx = await_line(rx, "GUEST-RELAY").await;
    // Drain the guest console in the background (relay logs), keep the tail.
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let t = tail.clone();
    // Connections the guest's echo server has seen end.
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = closed.clone();
    std::thread::spawn(move || {
        for l in rx.iter() {
            // Counted, not kept: 1,000 of them would push the relay's log out.
            if l.contains("GUEST-JSON") {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            let mut v = t.lock().unwrap();
            v.push(l);
            if v.len() > 200 {
                v.remove(0);
            }
        }
    });
    let logs = |cpu: &CpuRelay| {
        format!(
            "--- cpu relay ---\n{}\n--- guest ---\n{}",
            cpu.log_text(),
            tail.lock().unwrap().join("\n")
        )
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{PORT}").parse().unwrap();

    // From the CPU half: the guest's echo server, mirrored by the relays.
    let work = in_ns(ns.path(), move || {
        use std::io::{Read, Write};
        let mut c = wait_echo(addr, BOOT);
        let mut rtt = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            let msg = [round as u8; 64];
            let t = Instant::now();
            c.write_all(&msg).unwrap();
            let mut back = [0u8; 64];
            c.read_exact(&mut back).unwrap();
            rtt.push(t.elapsed());
            assert_eq!(back, msg);
        }
        drop(c);
        // 1 GiB each way through the guest's echo, writer and reader
        // concurrently; every byte checked against the pattern as it returns.
        let c = wait_echo(addr, Duration::from_secs(30));
        let t0 = Instant::now();
        let mut w = c.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let mut chunk = vec![0u8; 64 << 10];
            let mut at = 0u64;
            while at < TRANSFER {
                let len = chunk.len().min((TRANSFER - at) as usize);
                fill_pattern(&mut chunk[..len], at);
                w.write_all(&chunk[..len]).unwrap();
                at += len as u64;
            }
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut r = c;
        let (mut got, mut same) = (0u64, true);
        let (mut buf, mut want) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            fill_pattern(&mut want[..n], got);
            same &= buf[..n] == want[..n];
            got += n as u64;
        }
        writer.join().unwrap();
        (rtt, same, got, t0.elapsed())
    });
    let (mut rtt, same, len, took) = tokio::task::spawn_blocking(move || work.join())
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("CPU-half client failed:\n{}", logs(&cpu)));
    assert_eq!(len, TRANSFER, "{}", logs(&cpu));
    assert!(same, "bytes differ after the round trip");
    println!(
        "1 GiB each way through the BAR and the guest's echo in {:.1} s ({:.0} MiB/s each way)",
        took.as_secs_f64(),
        1024.0 / took.as_secs_f64()
    );
    rtt.sort();
    println!(
        "real relays, CPU netns -> host relay -> BAR slot -> guest relay -> guest echo ({}), \
         64 B ping-pong, {ROUNDS} rounds: p50 {:.1} us, p99 {:.1} us",
        inp.accel,
        percentile(&rtt, 50),
        percentile(&rtt, 99)
    );

    // 1,000 connections open at once across the BAR, each echoed.
    let before = closed.load(std::sync::atomic::Ordering::Relaxed);
    let many = in_ns(ns.path(), move || {
        use std::io::{Read, Write};
        let mut conns: Vec<_> = (0..CONNS).map(|_| wait_echo(addr, BOOT)).collect();
        for c in &conns {
            c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        }
        for (i, c) in conns.iter_mut().enumerate() {
            c.write_all(&(i as u32).to_le_bytes()).unwrap();
        }
        let mut echoed = 0;
        for (i, c) in conns.iter_mut().enumerate() {
            let mut back = [0u8; 4];
            if c.read_exact(&mut back).is_ok() && back == (i as u32).to_le_bytes() {
                echoed += 1;
            }
        }
        echoed
    });
    let echoed = tokio::task::spawn_blocking(move || many.join())
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("1,000 connections failed:\n{}", logs(&cpu)));
    assert_eq!(
        echoed,
        CONNS,
        "guest console:\n{}",
        tail.lock().unwrap().join("\n")
    );

    // Opening and closing the 1,000 connections never dropped the link: wait
    // until the guest's echo server saw them all end, then look.
    let end = Instant::now() + BOOT;
    while closed.load(std::sync::atomic::Ordering::Relaxed) < before + CONNS && Instant::now() < end
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = logs(&cpu);
    assert_eq!(
        text.matches("slot opener attached").count(),
        1,
        "the link dropped during the 1,000 connections:\n{text}"
    );

    // Garbage written into the slot from the host while a stream runs: that
    // stream ends with an error (not a stall), the error is logged, both
    // relays stay up and the pair works again.
    let c = in_ns(ns.path(), move || wait_echo(addr, Duration::from_secs(60)));
    let victim = faults::echo_until_error(
        tokio::task::spawn_blocking(move || c.join().unwrap())
            .await
            .unwrap(),
    );
    let shm = dir.path().join("shm");
    let size = std::fs::metadata(&shm).unwrap().len();
    let (start, len) = (
        size / u64::from(SLOTS) * u64::from(SLOT),
        size / u64::from(SLOTS),
    );
    tokio::task::spawn_blocking(move || faults::scribble(&shm, start, len))
        .await
        .unwrap();
    let kind = tokio::task::spawn_blocking(move || victim.join())
        .await
        .unwrap()
        .unwrap();
    let text = logs(&cpu);
    assert!(
        !matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "the stream stalled instead of ending ({kind:?}):\n{text}"
    );
    assert!(text.contains("ERROR"), "no error logged:\n{text}");
    let ok = echoes_again(ns.path(), addr).await;
    assert!(ok, "no echo after the garbage:\n{}", logs(&cpu));
    // Same CPU relay process (the guest's is the only way the echo came back).
    assert!(
        matches!(cpu.child.as_mut().map(|c| c.try_wait()), Some(Ok(None))),
        "the CPU relay exited after the garbage:\n{}",
        logs(&cpu)
    );

    // The CPU relay (the slot's creator) is killed and restarted: the guest
    // relay notices, re-attaches, and the mirror works again.
    cpu.kill9();
    cpu.start();
    let ok = echoes_again(ns.path(), addr).await;
    assert!(ok, "no echo after the CPU relay restarted:\n{}", logs(&cpu));
    let text = logs(&cpu);
    assert!(text.contains("slot opener attached"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    drop(qemu);
    let _ = stop.send(());
}

/// The bench's `ring_pci` path, checked for correctness (not timed): the host
/// creates slot 0 in the server's memory, `guest_slot ring` opens it through
/// BAR2 and echoes every record, both spinning, until the stop record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_ring_ping_pong_across_a_real_ivshmem_bar() {
    let dir = tempfile::tempdir().unwrap();
    let inp = or_skip!(inputs(dir.path(), &VFIO_MODULES, test_examples_dir()));
    let (socket, stop) = server(dir.path()).unwrap();
    let programs = [(inp.examples.join("guest_slot"), "guest_slot")];
    let run = format!("/guest_slot ring {BDF} 0 {SLOTS}");
    let initrd = build_guest(dir.path(), &inp, &programs, &run).unwrap();
    let shm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join("shm"))
        .unwrap();
    let addr: RegionAddr = format!("ivshmem:{}@0/{SLOTS}", socket.display())
        .parse()
        .unwrap();
    let region =
        std::sync::Arc::new(heteronet::shm::Region::create_in(&addr, shm, None, 0).unwrap());
    let mut tx = region.ring(0).unwrap().acquire_producer().unwrap();
    let mut rx = region.ring(1).unwrap().acquire_consumer().unwrap();
    let (qemu, lines) = or_skip!(boot(&socket, &inp, &initrd));
    let (rtt, lines) = tokio::task::spawn_blocking(move || {
        expect_line(&lines, "GUEST-RING-READY", BOOT);
        let rtt = heteronet::bench::ring_ping(
            &mut tx,
            &mut rx,
            100,
            Duration::from_millis(300),
            Duration::from_secs(30),
        )
        .expect("every ping answered");
        (rtt, lines)
    })
    .await
    .unwrap();
    let done = expect_line(&lines, "GUEST-JSON", BOOT);
    let doc: serde_json::Value = serde_json::from_str(&done["GUEST-JSON ".len()..]).unwrap();
    assert_eq!(
        doc["ring_pci"]["echoed"].as_u64(),
        Some(100 + rtt.len() as u64 + 1),
        "the guest echoed every record and the stop record: {doc}"
    );
    let mut rtt = rtt;
    rtt.sort();
    println!(
        "bare ring across the BAR ({}), both ends spinning, {} pings: p50 {:.2} us, p99 {:.2} us",
        inp.accel,
        rtt.len(),
        percentile(&rtt, 50),
        percentile(&rtt, 99)
    );
    drop(qemu);
    let _ = stop.send(());
}
