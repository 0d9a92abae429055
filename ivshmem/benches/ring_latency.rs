//! One host peer rings another over ivshmem eventfds: wake-up latency and
//! round trip. Prints a table; asserts nothing.
//!
//! `cargo bench -p heteropod-ivshmem --bench ring_latency`

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use heteropod_ivshmem::{Client, Server, ServerConfig};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

const ROUNDS: usize = 20_000;

fn wait(fd: impl AsFd) {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::NONE).expect("poll");
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ServerConfig {
        socket: dir.path().join("s"),
        shm: dir.path().join("m").to_string_lossy().into_owned(),
        size: 1 << 20,
        vectors: 1,
        replace_shm: false,
    };
    let (a, b) = rt.block_on(async {
        let server = Server::bind(&config).expect("server");
        tokio::spawn(server.run(std::future::pending()));
        let a = Client::connect(&config.socket, 1).await.expect("a");
        let b = Client::connect(&config.socket, 1).await.expect("b");
        let idb = b.id();
        a.wait_until(Duration::from_secs(5), |p| {
            p.iter().any(|i| i.id == idb).then_some(())
        })
        .await
        .expect("a sees b");
        (Arc::new(a), Arc::new(b))
    });
    let base = Instant::now();
    let rung_at = Arc::new(AtomicU64::new(0));
    let echo = {
        let (a_id, b, rung_at) = (a.id(), b.clone(), rung_at.clone());
        std::thread::spawn(move || {
            let mut wake = Vec::with_capacity(ROUNDS);
            for _ in 0..ROUNDS {
                wait(b.bell(0).expect("bell"));
                let now = base.elapsed();
                b.drain(0).expect("drain");
                wake.push(now - Duration::from_nanos(rung_at.load(Ordering::Acquire)));
                b.ring(a_id, 0).expect("ring back");
            }
            wake
        })
    };
    let mut rtt = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = base.elapsed();
        rung_at.store(t.as_nanos() as u64, Ordering::Release);
        a.ring(b.id(), 0).expect("ring");
        wait(a.bell(0).expect("bell"));
        a.drain(0).expect("drain");
        rtt.push(base.elapsed() - t);
    }
    let mut wake = echo.join().expect("echo thread");
    println!("ivshmem eventfd doorbells, host peer -> host peer, {ROUNDS} rounds (blocking poll)");
    println!("{:<28} {:>9} {:>9}", "", "p50 us", "p99 us");
    println!(
        "{:<28} {:>9.1} {:>9.1}",
        "ring -> peer wakes",
        pct(&mut wake, 0.5),
        pct(&mut wake, 0.99)
    );
    println!(
        "{:<28} {:>9.1} {:>9.1}",
        "ring -> rung back (RTT)",
        pct(&mut rtt, 0.5),
        pct(&mut rtt, 0.99)
    );
}
