//! The region header and how a region is carved into two rings.
//!
//! Encoding and validation work on private byte copies, so they need no unsafe.

use crate::error::HeaderError;

pub const MAGIC: u64 = u64::from_le_bytes(*b"HTRONET1");
pub const VERSION: u32 = 1;
/// Bytes reserved for the header at offset 0 (one page).
pub const HEADER_SIZE: u64 = 4096;
/// Bytes of the header that carry fields.
pub const HEADER_BYTES: usize = 80;
/// Byte offset of the generation counter in the header.
pub const GENERATION_OFFSET: usize = 24;
/// Control block (indices and flags) in front of each ring's data.
pub const RING_CTRL_SIZE: u64 = 512;
pub const MIN_RING_BYTES: u64 = 4096;
pub const MAX_RING_BYTES: u64 = 1 << 32;
/// Default bytes per ring direction.
pub const DEFAULT_RING_BYTES: u64 = 4 << 20;
/// The smallest region: the header page and two minimal rings.
pub const MIN_REGION_SIZE: u64 =
    HEADER_SIZE + 2 * (RING_CTRL_SIZE + MIN_RING_BYTES).div_ceil(4096) * 4096;
/// The liveness control block of slot links (see `link::slot`): in the header
/// page after the header fields; never part of the header check.
pub const CONTROL_OFFSET: u64 = 2048;
/// Bytes of the control block: one 128-byte record per side.
pub const CONTROL_SIZE: u64 = 256;

/// Where one ring sits in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Offset of the control block; the data follows it.
    pub offset: u64,
    /// Data bytes, a power of two.
    pub capacity: u64,
}

impl RingLayout {
    /// Offset of the data (only for validated layouts, whose end fits in u64).
    pub fn data_offset(&self) -> u64 {
        self.offset.saturating_add(RING_CTRL_SIZE)
    }
    /// End of the ring's data, `None` when a (peer's) layout overflows.
    fn end(&self) -> Option<u64> {
        self.offset
            .checked_add(RING_CTRL_SIZE)?
            .checked_add(self.capacity)
    }
}

/// The two rings: `rings[0]` carries creator → opener, `rings[1]` opener → creator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub total_size: u64,
    pub max_record: u32,
    pub rings: [RingLayout; 2],
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl Layout {
    /// Layout with `ring_bytes` per direction (rounded up to a power of two).
    pub fn with_ring_bytes(ring_bytes: u64) -> Result<Layout, HeaderError> {
        let cap = ring_bytes
            .clamp(MIN_RING_BYTES, MAX_RING_BYTES)
            .next_power_of_two();
        let stride = align_up(RING_CTRL_SIZE + cap, 4096);
        let r0 = RingLayout {
            offset: HEADER_SIZE,
            capacity: cap,
        };
        let r1 = RingLayout {
            offset: HEADER_SIZE + stride,
            capacity: cap,
        };
        Ok(Layout {
            total_size: HEADER_SIZE + 2 * stride,
            max_record: default_max_record(cap),
            rings: [r0, r1],
        })
    }

    /// The largest layout that fits a fixed-size region (PCI BAR, DAX device).
    pub fn fitting(size: u64) -> Result<Layout, HeaderError> {
        let mut cap = MAX_RING_BYTES;
        while cap >= MIN_RING_BYTES {
            let l = Layout::with_ring_bytes(cap)?;
            if l.total_size <= size {
                return Ok(l);
            }
            cap /= 2;
        }
        Err(HeaderError::TooSmall(size))
    }

    /// Checks every relation the rings rely on; used on headers read from the peer.
    pub fn validate(&self, mapped: u64) -> Result<(), HeaderError> {
        if self.total_size > mapped {
            return Err(HeaderError::SizeMismatch {
                header: self.total_size,
                actual: mapped,
            });
        }
        let mut prev_end = HEADER_SIZE;
        for r in &self.rings {
            if r.capacity < MIN_RING_BYTES
                || r.capacity > MAX_RING_BYTES
                || !r.capacity.is_power_of_two()
            {
                return Err(HeaderError::BadLayout("ring capacity"));
            }
            if r.offset % 128 != 0 || r.offset < prev_end {
                return Err(HeaderError::BadLayout("ring offset"));
            }
            let end = r
                .end()
                .filter(|&e| e <= self.total_size)
                .ok_or(HeaderError::BadLayout("ring beyond region end"))?;
            prev_end = end;
            if u64::from(self.max_record) > r.capacity / 4 || self.max_record < 64 {
                return Err(HeaderError::BadLayout("max record"));
            }
        }
        // Every creator lays a region out with `with_ring_bytes`, so the header
        // must be exactly what that gives for its ring size: a layout this code
        // never writes is refused, however consistent it looks.
        if *self != Layout::with_ring_bytes(self.rings[0].capacity)? {
            return Err(HeaderError::BadLayout("not the layout of its ring size"));
        }
        Ok(())
    }
}

/// Largest record payload: a quarter of the ring, at most 64 KiB plus room for
/// a mux frame header (so a 64 KiB application write is one record).
pub fn default_max_record(cap: u64) -> u32 {
    (cap / 4).min(64 * 1024 + 64) as u32
}

/// The fields of the header at offset 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u64,
    pub version: u32,
    pub generation: u64,
    /// 0 = CPU, 1 = DPU.
    pub creator_side: u32,
    pub layout: Layout,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&self.magic.to_le_bytes());
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.layout.total_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.generation.to_le_bytes());
        b[32..36].copy_from_slice(&self.creator_side.to_le_bytes());
        b[36..40].copy_from_slice(&2u32.to_le_bytes());
        b[40..44].copy_from_slice(&self.layout.max_record.to_le_bytes());
        for (i, r) in self.layout.rings.iter().enumerate() {
            let o = 48 + i * 16;
            b[o..o + 8].copy_from_slice(&r.offset.to_le_bytes());
            b[o + 8..o + 16].copy_from_slice(&r.capacity.to_le_bytes());
        }
        b
    }

    /// Parses and validates a header copied out of a mapping of `mapped` bytes.
    pub fn decode(b: &[u8; HEADER_BYTES], mapped: u64) -> Result<Header, HeaderError> {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        if mapped < HEADER_SIZE {
            return Err(HeaderError::TooSmall(mapped));
        }
        let magic = u64_at(0);
        if magic != MAGIC {
            return Err(HeaderError::BadMagic(magic));
        }
        let version = u32_at(8);
        if version != VERSION {
            return Err(HeaderError::Version {
                found: version,
                expected: VERSION,
            });
        }
        if u64::from(u32_at(12)) != HEADER_SIZE {
            return Err(HeaderError::BadLayout("header size"));
        }
        if u32_at(36) != 2 {
            return Err(HeaderError::BadLayout("ring count"));
        }
        let creator_side = u32_at(32);
        if creator_side > 1 {
            return Err(HeaderError::BadLayout("creator side"));
        }
        let ring = |i: usize| RingLayout {
            offset: u64_at(48 + i * 16),
            capacity: u64_at(56 + i * 16),
        };
        let layout = Layout {
            total_size: u64_at(16),
            max_record: u32_at(40),
            rings: [ring(0), ring(1)],
        };
        layout.validate(mapped)?;
        Ok(Header {
            magic,
            version,
            generation: u64_at(GENERATION_OFFSET),
            creator_side,
            layout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sut() -> Header {
        Header {
            magic: MAGIC,
            version: VERSION,
            generation: 7,
            creator_side: 1,
            layout: Layout::with_ring_bytes(64 * 1024).unwrap(),
        }
    }

    #[test]
    fn header_round_trips() {
        let h = sut();
        let back = Header::decode(&h.encode(), h.layout.total_size).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn decode_rejects_each_bad_field() {
        let h = sut();
        let size = h.layout.total_size;
        let mut b = h.encode();
        b[0] ^= 1;
        assert!(matches!(
            Header::decode(&b, size),
            Err(HeaderError::BadMagic(_))
        ));
        let mut b = h.encode();
        b[8] = 9;
        assert!(matches!(
            Header::decode(&b, size),
            Err(HeaderError::Version { .. })
        ));
        let b = h.encode();
        assert!(matches!(
            Header::decode(&b, size - 1),
            Err(HeaderError::SizeMismatch { .. })
        ));
        let mut b = h.encode();
        b[56..64].copy_from_slice(&3000u64.to_le_bytes());
        assert!(matches!(
            Header::decode(&b, size),
            Err(HeaderError::BadLayout(_))
        ));
        let mut b = h.encode();
        b[64..72].copy_from_slice(&0u64.to_le_bytes()); // ring 1 overlapping header
        assert!(matches!(
            Header::decode(&b, size),
            Err(HeaderError::BadLayout(_))
        ));
        // An offset near u64::MAX must not wrap past the size check.
        let mut b = h.encode();
        b[64..72].copy_from_slice(&(u64::MAX - 255).to_le_bytes());
        assert!(matches!(
            Header::decode(&b, size),
            Err(HeaderError::BadLayout(_))
        ));
        let mut b = h.encode();
        b[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Header::decode(&b, size),
            Err(HeaderError::BadLayout(_))
        ));
        assert!(matches!(
            Header::decode(&b, 100),
            Err(HeaderError::TooSmall(100))
        ));
    }

    #[test]
    fn a_consistent_layout_other_than_the_recomputed_one_is_refused() {
        let h = sut();
        let size = h.layout.total_size + 4096;
        // Ring 1 a page further on, the total grown to match: every relation
        // the rings rely on still holds.
        let mut b = h.encode();
        let r1 = h.layout.rings[1].offset + 4096;
        b[64..72].copy_from_slice(&r1.to_le_bytes());
        b[16..24].copy_from_slice(&size.to_le_bytes());
        assert!(matches!(
            Header::decode(&b, size),
            Err(HeaderError::BadLayout("not the layout of its ring size"))
        ));
        // A smaller (valid) largest record.
        let mut b = h.encode();
        b[40..44].copy_from_slice(&64u32.to_le_bytes());
        assert!(matches!(
            Header::decode(&b, size),
            Err(HeaderError::BadLayout("not the layout of its ring size"))
        ));
        // Each layout the creator writes opens, window-sized ones included.
        for l in [
            Layout::with_ring_bytes(4096).unwrap(),
            Layout::fitting(1 << 20).unwrap(),
        ] {
            let h = Header { layout: l, ..h };
            assert_eq!(Header::decode(&h.encode(), l.total_size).unwrap(), h);
        }
    }

    #[test]
    fn fitting_picks_largest_layout_within_size() {
        let sut = Layout::fitting(4 << 20).unwrap();
        assert!(sut.total_size <= 4 << 20);
        assert_eq!(sut.rings[0].capacity, 1 << 20);
        assert!(Layout::fitting(8192).is_err());
    }
}
