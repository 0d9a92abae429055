//! Bodies of the `cargo fuzz` targets (netstack/fuzz), kept in the library so
//! the same code also runs under proptest in `cargo test`.

use std::sync::Arc;

use crate::mux::frame::decode_frame;
use crate::shm::{Region, RegionAddr};

/// Drives a ring in a real (memfd) mapping with an op script from `data`,
/// interleaving peer-style scribbles over the control block and data area, and
/// decodes every popped record as a mux frame. Must never panic or hang.
pub fn ring_and_frames(data: &[u8]) {
    let Ok(region) = Region::create(&RegionAddr::Memfd, Some(4096), 0) else {
        return;
    };
    ring_script(&Arc::new(region), data);
}

/// Like [`ring_and_frames`] on a caller-provided region (reused across runs).
pub fn ring_script(region: &Arc<Region>, data: &[u8]) {
    region.reset_rings();
    let Ok(ring) = region.ring(0) else { return };
    let (Some(mut p), Some(mut c)) = (ring.acquire_producer(), ring.acquire_consumer()) else {
        return;
    };
    let ctrl = region.header().layout.rings[0].offset;
    let span = 512 + ring.capacity();
    let mut it = data.iter().copied();
    let mut scratch = vec![0u8; ring.max_record() + 16];
    while let Some(op) = it.next() {
        match op % 6 {
            0 => {
                let len = usize::from(it.next().unwrap_or(0)) * 4;
                let fill = it.next().unwrap_or(0);
                scratch[..len].fill(fill);
                let _ = p.try_push(&[&scratch[..len]]);
            }
            1 => {
                p.publish();
            }
            2 => {
                let _ = c.pop_with(|r| {
                    let n = r.read(0, &mut scratch);
                    let _ = decode_frame(&scratch[..n]);
                });
            }
            3 => {
                c.release();
            }
            4 => {
                let off = u64::from(u16::from_le_bytes([
                    it.next().unwrap_or(0),
                    it.next().unwrap_or(0),
                ])) % span;
                let mut word = [0u8; 8];
                for b in &mut word {
                    *b = it.next().unwrap_or(0);
                }
                let off = off.min(span - 8);
                let _ = region.poke(ctrl + off, &word);
            }
            _ => {
                let _ = p.fits(usize::from(it.next().unwrap_or(0)));
                let _ = c.has_data();
            }
        }
    }
}

/// Decodes arbitrary bytes as a mux frame (and its open destination).
pub fn frame(data: &[u8]) {
    let _ = decode_frame(data);
}
