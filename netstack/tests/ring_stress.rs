//! Multi-threaded stress: one producer thread, one consumer thread, millions
//! of variable-length records through a small shared-memory ring, checksummed.

use std::sync::Arc;
use std::thread;

use heteronet::shm::{Region, RegionAddr};

fn fnv(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[test]
fn producer_and_consumer_threads_agree_on_every_record() {
    const N: u64 = if cfg!(debug_assertions) {
        20_000
    } else {
        300_000
    };
    let region = Arc::new(Region::create(&RegionAddr::Memfd, Some(8192), 0).unwrap());
    let ring = region.ring(0).unwrap();
    let mut p = ring.acquire_producer().unwrap();
    let mut c = ring.acquire_consumer().unwrap();
    let producer = thread::spawn(move || {
        let mut sum = 0u64;
        let mut buf = vec![0u8; 2048];
        for i in 0..N {
            let len = ((i * 2_654_435_761) % 2000) as usize;
            for (j, b) in buf[..len].iter_mut().enumerate() {
                *b = (i as usize ^ j) as u8;
            }
            while !p.try_push(&[&i.to_le_bytes(), &buf[..len]]).unwrap() {
                p.publish();
                std::hint::spin_loop();
            }
            // Batched publication: publish every 8 records.
            if i % 8 == 7 {
                p.publish();
            }
            sum = sum.wrapping_add(fnv(i, &buf[..len]));
        }
        p.publish();
        sum
    });
    let consumer = thread::spawn(move || {
        let mut sum = 0u64;
        let mut next = 0u64;
        let mut buf = vec![0u8; 2100];
        while next < N {
            let got = c.pop_with(|r| r.read(0, &mut buf)).unwrap();
            match got {
                Some(n) => {
                    let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
                    assert_eq!(seq, next, "records out of order");
                    sum = sum.wrapping_add(fnv(seq, &buf[8..n]));
                    next += 1;
                    if next & 3 == 0 {
                        c.release();
                    }
                }
                None => {
                    c.release();
                    std::hint::spin_loop();
                }
            }
        }
        sum
    });
    let a = producer.join().unwrap();
    let b = consumer.join().unwrap();
    assert_eq!(a, b);
}
