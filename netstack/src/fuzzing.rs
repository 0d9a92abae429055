//! Bodies of the `cargo fuzz` targets (netstack/fuzz), kept in the library so
//! the same code also runs under proptest in `cargo test`.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::mux::frame::decode_frame;
use crate::shm::layout::{RingLayout, HEADER_BYTES, MAGIC, MIN_RING_BYTES, VERSION};
use crate::shm::{Consumer, Header, Layout, Producer, Region, RegionAddr, Window};

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

/// Opens a region a peer made: `data` picks the mapping's size, its seals and a
/// slot window, and the header bytes (XORed over a valid header, so an
/// all-zero input opens and every header is still reachable). Whatever opens is
/// then driven as the opener would, with arbitrary indices and bytes written
/// into the rings' control blocks and data between operations. Must never
/// panic, fault or hang; an opened layout must lie inside the mapping.
/// Returns whether the region opened.
pub fn opener(data: &[u8]) -> bool {
    let mut it = data.iter();
    let mut next = || it.next().copied().unwrap_or(0);
    let flags = next();
    // Up to 512 KiB in 8-byte steps: around the smallest region (20 KiB) and
    // the slot sizes of a few windows, odd tails included.
    let size = u64::from(u16::from_le_bytes([next(), next()])) * 8;
    let window = (flags & 1 != 0)
        .then(|| Window::new(u32::from(next()), u32::from(next())).ok())
        .flatten();
    let sealed = flags & 2 == 0;
    let mut header = template_header();
    for b in &mut header {
        *b ^= next();
    }
    let rest = it.as_slice();

    let Ok(fd) = nix::sys::memfd::memfd_create(
        c"heteronet-fuzz",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
    ) else {
        return false;
    };
    let file = std::fs::File::from(fd);
    if file.set_len(size).is_err() {
        return false;
    }
    // The header sits at the start of the region: the window's start when it has one.
    let at = window.and_then(|w| w.range(size).ok()).map_or(0, |r| r.0);
    if at + HEADER_BYTES as u64 <= size && file.write_all_at(&header, at).is_err() {
        return false;
    }
    if sealed {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        if fcntl(&file, FcntlArg::F_ADD_SEALS(seals)).is_err() {
            return false;
        }
    }
    let opened = match window {
        // A slot window of a device or shm file: what the opener maps is the
        // same, only the base address kind differs.
        Some(window) => {
            let addr = RegionAddr::Window {
                base: Box::new(RegionAddr::Shm("heteronet-fuzz".into())),
                window,
            };
            Region::open_in(&addr, file)
        }
        None => {
            let r = Region::from_fd(RegionAddr::Memfd, file.into());
            assert!(sealed || r.is_err(), "an unsealed memfd region opened");
            r
        }
    };
    let Ok(region) = opened else {
        return false;
    };
    let layout = region.header().layout;
    assert!(
        layout.total_size <= region.len(),
        "layout beyond the mapping"
    );
    for r in &layout.rings {
        let end = r.data_offset().checked_add(r.capacity);
        assert!(
            end.is_some_and(|e| e <= layout.total_size),
            "ring beyond the layout"
        );
    }
    drive_opened(&Arc::new(region), rest);
    true
}

/// A valid header of the smallest layout, as a creator writes it.
fn template_header() -> [u8; HEADER_BYTES] {
    let layout = Layout::with_ring_bytes(MIN_RING_BYTES).unwrap_or(Layout {
        total_size: 0,
        max_record: 0,
        rings: [RingLayout {
            offset: 0,
            capacity: 0,
        }; 2],
    });
    Header {
        magic: MAGIC,
        version: VERSION,
        generation: 1,
        creator_side: 0,
        layout,
    }
    .encode()
}

/// Drives both rings of an opened region with an op script, scribbling over
/// control words (arbitrary indices and flags), data and the header between steps.
fn drive_opened(region: &Arc<Region>, data: &[u8]) {
    let (Ok(r0), Ok(r1)) = (region.ring(0), region.ring(1)) else {
        return;
    };
    let rings = [r0, r1];
    let layout = region.header().layout;
    let generation = region.generation();
    let mut producers: [Option<Producer>; 2] = [None, None];
    let mut consumers: [Option<Consumer>; 2] = [None, None];
    let mut scratch = vec![0u8; layout.max_record as usize + 64];
    let mut it = data.iter().copied();
    let mut byte = move || it.next();
    let mut steps = 0u32;
    while let Some(op) = byte() {
        // Bounded work per input, whatever the script says.
        steps += 1;
        if steps > 4096 {
            break;
        }
        let i = usize::from(op >> 7);
        let arg = byte().unwrap_or(0);
        match op % 12 {
            0 => {
                // An arbitrary word in one of the four control lines.
                let mut word = [0u8; 8];
                for b in &mut word {
                    *b = byte().unwrap_or(0);
                }
                let off = layout.rings[i].offset + u64::from(arg % 4) * 128;
                let _ = region.poke(off, &word);
            }
            1 => {
                // A bounded small index near the current one (what a racing
                // or buggy peer writes), rather than any 64-bit value.
                let off = layout.rings[i].offset + u64::from(arg % 2) * 128;
                let mut cur = [0u8; 8];
                let _ = region.peek(off, &mut cur);
                let delta = i64::from(i8::from_le_bytes([byte().unwrap_or(0)])) * 8;
                let v = u64::from_le_bytes(cur).wrapping_add_signed(delta);
                let _ = region.poke(off, &v.to_le_bytes());
            }
            2 => {
                // Arbitrary bytes in the data area (record headers included).
                let off = u64::from(u16::from_le_bytes([arg, byte().unwrap_or(0)]))
                    % layout.rings[i].capacity;
                let bytes: Vec<u8> = (0..8).map(|_| byte().unwrap_or(0)).collect();
                let _ = region.poke(layout.rings[i].data_offset() + off, &bytes);
            }
            3 => {
                producers[i] = None;
                producers[i] = rings[i].acquire_producer();
                assert!(producers[i].is_some(), "producer slot still taken");
                assert!(
                    rings[i].acquire_producer().is_none(),
                    "two producers of one ring"
                );
            }
            4 => {
                consumers[i] = None;
                consumers[i] = rings[i].acquire_consumer();
                assert!(consumers[i].is_some(), "consumer slot still taken");
                // Another handle of the same ring shares the slot.
                let again = region.ring(i).ok().and_then(|r| r.acquire_consumer());
                assert!(again.is_none(), "two consumers of one ring");
            }
            5 => {
                if let Some(p) = &mut producers[i] {
                    let len = (usize::from(arg) * 97) % scratch.len();
                    scratch[..len].fill(arg);
                    let _ = p.try_push(&[&scratch[..len / 2], &scratch[len / 2..len]]);
                    if arg & 1 != 0 {
                        p.publish();
                    }
                }
            }
            6 => {
                if let Some(p) = &mut producers[i] {
                    let _ = p.fits(usize::from(arg) * 64);
                    let _ = p.free_bytes();
                }
            }
            7 => {
                if let Some(p) = &mut producers[i] {
                    let _ = p.adopt_shared();
                    p.set_waiting(arg & 1 != 0);
                }
            }
            8 => {
                if let Some(c) = &mut consumers[i] {
                    // Offsets past the record's end included.
                    let offset = usize::from(arg) * 131;
                    let _ = c.pop_with(|r| {
                        let n = r.read(offset, &mut scratch);
                        let _ = decode_frame(&scratch[..n]);
                        let mut b = bytes::BytesMut::new();
                        r.append_to(offset, &mut b);
                        r.to_vec().len()
                    });
                }
            }
            9 => {
                if let Some(c) = &mut consumers[i] {
                    c.release();
                    let _ = c.has_data();
                    let _ = c.backlog();
                }
            }
            10 => {
                if let Some(c) = &mut consumers[i] {
                    let _ = c.adopt_shared();
                    c.set_sleeping(arg & 1 != 0);
                }
            }
            _ => {
                // A scribble over the header must be seen by the check.
                let off = u64::from(arg) % HEADER_BYTES as u64;
                let b = byte().unwrap_or(0);
                let _ = region.poke(off, &[b]);
                let _ = region.check_header(generation);
                let _ = region.control_word(usize::from(b));
            }
        }
    }
}
