//! Property tests: the ring against a VecDeque model, and the fuzz target
//! bodies on random inputs (so they run in `cargo test`).

use std::collections::VecDeque;
use std::sync::Arc;

use heteronet::shm::{Region, RegionAddr, Ring};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Push(usize, u8),
    Publish,
    Pop,
    Release,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..=256, any::<u8>()).prop_map(|(l, b)| Op::Push(l, b)),
        2 => Just(Op::Publish),
        3 => Just(Op::Pop),
        2 => Just(Op::Release),
    ]
}

/// Byte-accounting model of the ring: records are 8-byte header + payload,
/// padded to 8; a record never wraps (the rest of the ring is skipped).
struct Model {
    cap: u64,
    tail: u64,
    released: u64,
    head: u64,
    published: VecDeque<(Vec<u8>, u64)>,
    pending: Vec<(Vec<u8>, u64)>,
}

impl Model {
    fn push(&mut self, rec: Vec<u8>) -> bool {
        let total = (8 + rec.len() as u64 + 7) & !7;
        let pos = self.tail % self.cap;
        let contig = self.cap - pos;
        let need = if total > contig {
            contig + total
        } else {
            total
        };
        if self.cap - (self.tail - self.released) < need {
            return false;
        }
        let skip = if total > contig { contig } else { 0 };
        self.tail += skip + total;
        self.pending.push((rec, skip + total));
        true
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn ring_behaves_like_a_fifo_with_byte_capacity(ops in prop::collection::vec(op(), 1..400)) {
        let sut = Ring::private(1024, 256);
        let mut p = sut.acquire_producer().unwrap();
        let mut c = sut.acquire_consumer().unwrap();
        let mut m = Model { cap: 1024, tail: 0, released: 0, head: 0, published: VecDeque::new(), pending: Vec::new() };
        for o in ops {
            match o {
                Op::Push(len, b) => {
                    let rec = vec![b; len];
                    let ok = p.try_push(&[&rec]).unwrap();
                    prop_assert_eq!(ok, m.push(rec));
                }
                Op::Publish => {
                    p.publish();
                    m.published.extend(m.pending.drain(..));
                }
                Op::Pop => {
                    let got = c.pop().unwrap();
                    let want = m.published.pop_front();
                    prop_assert_eq!(got.as_ref(), want.as_ref().map(|w| &w.0));
                    if let Some((_, size)) = want {
                        m.head += size;
                    }
                }
                Op::Release => {
                    c.release();
                    m.released = m.head;
                }
            }
        }
    }

    #[test]
    fn fuzz_ring_script_never_panics(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        heteronet::fuzzing::ring_and_frames(&data);
    }

    #[test]
    fn fuzz_region_opener_never_panics(data in prop::collection::vec(any::<u8>(), 0..1024)) {
        heteronet::fuzzing::opener(&data);
    }

    /// Random bytes rarely make a header that opens: these start from one that
    /// does (20 KiB memfd, or slot 1 of 2 of a 40 KiB one) and script the rest.
    #[test]
    fn fuzz_region_opener_drives_opened_rings(
        windowed in any::<bool>(),
        script in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut data = if windowed { vec![1, 0x00, 0x14, 1, 2] } else { vec![0, 0x00, 0x0a] };
        data.extend([0u8; 80]);
        data.extend(script);
        prop_assert!(heteronet::fuzzing::opener(&data), "the valid header did not open");
    }

    #[test]
    fn fuzz_frame_decode_never_panics(data in prop::collection::vec(any::<u8>(), 0..64)) {
        heteronet::fuzzing::frame(&data);
    }
}

#[test]
fn fuzz_ring_script_reuses_one_region() {
    let region = Arc::new(Region::create(&RegionAddr::Memfd, Some(4096), 0).unwrap());
    for i in 0..200u32 {
        let data: Vec<u8> = (0..512u32)
            .map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8)
            .collect();
        heteronet::fuzzing::ring_script(&region, &data);
    }
}
