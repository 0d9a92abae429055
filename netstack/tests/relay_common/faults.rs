//! Faults the relay tests inject: garbage over a slot's rings, and a stream
//! that echoes until the fault ends it. Plain std, so the QEMU guest test
//! (`guest_slot.rs`) includes this file too.

use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// Fills `buf` with xorshift bytes from `seed`.
pub fn pattern(seed: u64, buf: &mut [u8]) {
    let mut x = seed | 1;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// Writes junk over the slot `[start, start + len)` of the shared memory file
/// `shm`, all but its header page, 20 times 10 ms apart, so both relays read
/// garbage whatever they were doing.
pub fn scribble(shm: &Path, start: u64, len: u64) {
    let mut f = std::fs::OpenOptions::new().write(true).open(shm).unwrap();
    let mut junk = vec![0u8; len as usize - 4096];
    for seed in 0..20u64 {
        pattern(0xbad + seed, &mut junk);
        f.seek(SeekFrom::Start(start + 4096)).unwrap();
        f.write_all(&junk).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `c` with a 15 s read timeout, after one echoed ping: the stream is up.
pub fn pinged(mut c: TcpStream) -> TcpStream {
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    c
}

/// Pings once through `c` (so the stream is up before any fault), then echoes
/// 4 KiB at a time on a thread until the stream fails (reads time out after
/// 15 s); the thread's result is the error.
pub fn echo_until_error(c: TcpStream) -> std::thread::JoinHandle<ErrorKind> {
    let mut c = pinged(c);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        loop {
            if let Err(e) = c.write_all(&buf) {
                return e.kind();
            }
            if let Err(e) = c.read_exact(&mut buf) {
                return e.kind();
            }
        }
    })
}
