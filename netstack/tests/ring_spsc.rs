//! SPSC ring behaviour: order, wrap-around, full/empty, corruption handling.

use std::sync::Arc;

use heteronet::error::RingError;
use heteronet::shm::{Region, RegionAddr, Ring};

#[test]
fn pop_on_empty_ring_returns_none() {
    let sut = Ring::private(1024, 256);
    let mut c = sut.acquire_consumer().unwrap();
    assert_eq!(c.pop().unwrap(), None);
    assert!(!c.has_data().unwrap());
}

#[test]
fn push_works_until_full_then_succeeds_after_release() {
    let sut = Ring::private(1024, 256);
    let mut p = sut.acquire_producer().unwrap();
    let mut c = sut.acquire_consumer().unwrap();
    let mut n = 0;
    while p.try_push(&[&[n as u8; 56]]).unwrap() {
        n += 1;
    }
    assert_eq!(n, 1024 / 64);
    p.publish();
    assert_eq!(c.pop().unwrap().unwrap(), vec![0u8; 56]);
    assert!(!p.try_push(&[&[9; 56]]).unwrap(), "space not released yet");
    c.release();
    assert!(p.try_push(&[&[9; 56]]).unwrap());
}

#[test]
fn records_wrap_around_in_order() {
    let sut = Ring::private(4096, 1024);
    let mut p = sut.acquire_producer().unwrap();
    let mut c = sut.acquire_consumer().unwrap();
    for i in 0..10_000u32 {
        let len = (i as usize * 7) % 1000;
        let rec: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
        while !p.try_push(&[&i.to_le_bytes(), &rec]).unwrap() {
            p.publish();
            c.release();
        }
        p.publish();
        if i % 3 == 0 {
            while let Some(r) = c.pop().unwrap() {
                let k = u32::from_le_bytes(r[..4].try_into().unwrap());
                assert_eq!(r.len() - 4, (k as usize * 7) % 1000);
            }
            c.release();
        }
    }
}

#[test]
fn oversize_record_is_refused() {
    let sut = Ring::private(4096, 1024);
    let mut p = sut.acquire_producer().unwrap();
    assert!(matches!(
        p.try_push(&[&[0; 1025]]),
        Err(RingError::TooLarge {
            len: 1025,
            max: 1024
        })
    ));
}

/// Region ring 0 with a producer and consumer; offsets for poking.
fn region_ring() -> (Arc<Region>, Arc<Ring>, u64, u64) {
    let region = Arc::new(Region::create(&RegionAddr::Memfd, Some(4096), 0).unwrap());
    let ring = region.ring(0).unwrap();
    let ctrl = region.header().layout.rings[0].offset;
    (region, ring, ctrl, ctrl + 512)
}

const TAIL: u64 = 0;
const HEAD: u64 = 128;

#[test]
fn tail_beyond_capacity_is_reported_not_followed() {
    let (region, ring, ctrl, _) = region_ring();
    let mut c = ring.acquire_consumer().unwrap();
    region
        .poke(ctrl + TAIL, &(1u64 << 40).to_le_bytes())
        .unwrap();
    assert!(matches!(c.pop(), Err(RingError::IndexOutOfRange { .. })));
    // Sticky: the channel stays ended.
    region.poke(ctrl + TAIL, &0u64.to_le_bytes()).unwrap();
    assert!(c.pop().is_err());
}

#[test]
fn misaligned_tail_is_corruption() {
    let (region, ring, ctrl, _) = region_ring();
    let mut c = ring.acquire_consumer().unwrap();
    region.poke(ctrl + TAIL, &3u64.to_le_bytes()).unwrap();
    assert!(c.pop().is_err());
}

#[test]
fn bad_record_length_or_tag_is_corruption() {
    let (region, ring, ctrl, data) = region_ring();
    let mut p = ring.acquire_producer().unwrap();
    let mut c = ring.acquire_consumer().unwrap();
    p.try_push(&[b"abcdefgh"]).unwrap();
    p.publish();
    region.poke(data, &5000u32.to_le_bytes()).unwrap();
    assert!(matches!(
        c.pop(),
        Err(RingError::BadRecord { len: 5000, .. })
    ));

    let (region, ring, _, data) = region_ring();
    let mut p = ring.acquire_producer().unwrap();
    let mut c = ring.acquire_consumer().unwrap();
    p.try_push(&[b"abcdefgh"]).unwrap();
    p.publish();
    region.poke(data + 4, b"JUNK").unwrap();
    assert!(matches!(c.pop(), Err(RingError::BadRecord { .. })));
    let _ = ctrl;
}

#[test]
fn length_longer_than_published_bytes_is_corruption() {
    let (region, ring, _, data) = region_ring();
    let mut p = ring.acquire_producer().unwrap();
    let mut c = ring.acquire_consumer().unwrap();
    p.try_push(&[b"abcdefgh"]).unwrap();
    p.publish();
    region.poke(data, &600u32.to_le_bytes()).unwrap();
    assert!(matches!(c.pop(), Err(RingError::BadRecord { .. })));
}

#[test]
fn head_beyond_tail_or_backwards_is_corruption() {
    let (region, ring, ctrl, _) = region_ring();
    let mut p = ring.acquire_producer().unwrap();
    while p.try_push(&[&[1; 100]]).unwrap() {}
    p.publish();
    region
        .poke(ctrl + HEAD, &(1u64 << 50).to_le_bytes())
        .unwrap();
    assert!(p.try_push(&[&[1; 100]]).is_err());
    assert!(p.fits(1).is_err());

    let (region, ring, ctrl, _) = region_ring();
    let mut p = ring.acquire_producer().unwrap();
    let mut c = ring.acquire_consumer().unwrap();
    while p.try_push(&[&[1; 100]]).unwrap() {}
    p.publish();
    while c.pop().unwrap().is_some() {}
    c.release();
    assert!(p.try_push(&[&[1; 100]]).unwrap());
    // Consumer head "moves back" to 8: impossible, since the producer saw it at the end.
    region.poke(ctrl + HEAD, &8u64.to_le_bytes()).unwrap();
    while p.try_push(&[&[1; 100]]).unwrap_or(false) {}
    assert!(p.try_push(&[&[1; 100]]).is_err());
}

#[test]
fn garbage_everywhere_never_panics() {
    let (region, ring, ctrl, _) = region_ring();
    let mut p = ring.acquire_producer().unwrap();
    let mut c = ring.acquire_consumer().unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = ctrl + (x % (512 + 4096 - 8));
        region.poke(off & !7, &x.to_le_bytes()).unwrap();
        let _ = p.try_push(&[&x.to_le_bytes()]);
        p.publish();
        let _ = c.pop();
        c.release();
        let _ = p.fits(10);
    }
}

#[test]
fn scribbles_over_a_sides_own_words_are_detected_by_that_side() {
    let (region, ring, ctrl, _) = region_ring();
    let mut p = ring.acquire_producer().unwrap();
    let mut c = ring.acquire_consumer().unwrap();
    p.try_push(&[b"abc"]).unwrap();
    p.publish();
    // The producer's tail and the consumer's head and sleeping flag.
    region.poke(ctrl + TAIL, &64u64.to_le_bytes()).unwrap();
    assert!(matches!(
        p.try_push(&[b"d"]),
        Err(RingError::Scribbled("producer tail"))
    ));
    region.poke(ctrl + 256, &7u64.to_le_bytes()).unwrap();
    assert!(matches!(
        c.has_data(),
        Err(RingError::Scribbled("consumer sleeping flag"))
    ));

    let (region, ring, ctrl, _) = region_ring();
    let mut c = ring.acquire_consumer().unwrap();
    region.poke(ctrl + HEAD, &8u64.to_le_bytes()).unwrap();
    assert!(matches!(
        c.pop(),
        Err(RingError::Scribbled("consumer head"))
    ));
}
