//! Byte-exact transfers through the relays: a server and a client that
//! checksum what they get and send a pattern back.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use super::{fnv, in_ns, pattern, wait_mirror, Pod, FNV_INIT};

/// A server in `ns` at `addr` that checksums what it gets, then sends `n`
/// bytes of pattern `seed`; reports (bytes received, checksum).
pub fn checksum_server(
    ns: &std::path::Path,
    addr: SocketAddr,
    n: usize,
    seed: u64,
) -> mpsc::Receiver<(usize, u64)> {
    let (tx, rx) = mpsc::channel();
    in_ns(ns, move || {
        let l = TcpListener::bind(addr).unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let (total, h) = read_checksummed(&mut c);
            let mut data = vec![0u8; n];
            pattern(seed, &mut data);
            c.write_all(&data).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            tx.send((total, h)).unwrap();
        });
    });
    rx
}

/// Sends `n` bytes of pattern `seed` from `ns` to `addr`, half-closes, and
/// returns (sent checksum, bytes received, received checksum).
pub fn checksum_client(
    ns: &std::path::Path,
    addr: SocketAddr,
    n: usize,
    seed: u64,
) -> (u64, usize, u64) {
    in_ns(ns, move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut data = vec![0u8; n];
        pattern(seed, &mut data);
        let mut sent_h = FNV_INIT;
        fnv(&mut sent_h, &data);
        for chunk in data.chunks(64 * 1024) {
            c.write_all(chunk).unwrap();
        }
        c.shutdown(Shutdown::Write).unwrap();
        let (total, h) = read_checksummed(&mut c);
        (sent_h, total, h)
    })
}

pub fn checksum_of(n: usize, seed: u64) -> u64 {
    let mut want = vec![0u8; n];
    pattern(seed, &mut want);
    let mut h = FNV_INIT;
    fnv(&mut h, &want);
    h
}

/// Byte-exact transfer of `n` bytes each way through `pod` on `addr`.
pub fn transfer(pod: &Pod, addr: SocketAddr, n: usize) {
    let rx = checksum_server(&pod.dpu_path(), addr, n, 2);
    wait_mirror(&pod.cpu_path(), addr);
    let (sent_h, got, got_h) = checksum_client(&pod.cpu_path(), addr, n, 1);
    let (srv_total, srv_h) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(srv_total, n, "{}", pod.logs());
    assert_eq!(srv_h, sent_h, "CPU -> DPU bytes differ");
    assert_eq!(got, n, "{}", pod.logs());
    assert_eq!(got_h, checksum_of(n, 2), "DPU -> CPU bytes differ");
}

/// Reads `c` to EOF: (bytes, checksum).
fn read_checksummed(c: &mut TcpStream) -> (usize, u64) {
    let mut h = FNV_INIT;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    loop {
        let k = c.read(&mut buf).unwrap();
        if k == 0 {
            return (total, h);
        }
        fnv(&mut h, &buf[..k]);
        total += k;
    }
}
