//! A mapped register window (ivshmem BAR0), accessed with volatile 32-bit loads
//! and stores at bounds-checked, aligned offsets.

use std::fs::File;
use std::os::fd::AsFd;

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{io, Error, Result};

/// A device register window.
#[derive(Debug)]
pub struct Mmio {
    map: MmapRaw,
}

impl Mmio {
    /// Maps the first `len` bytes of `file` (a sysfs `resourceN`, or a plain
    /// file in tests).
    pub fn map(file: &File, len: usize) -> Result<Mmio> {
        if len == 0 {
            return Err(Error::RegisterOutOfBounds { offset: 0, len });
        }
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file.as_fd())
            .map_err(io("mmap registers"))?;
        Ok(Mmio { map })
    }

    /// Mapped bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    fn check(&self, offset: usize) -> Result<usize> {
        let fits = offset & 3 == 0 && offset.checked_add(4).is_some_and(|e| e <= self.len());
        if fits {
            Ok(offset)
        } else {
            Err(Error::RegisterOutOfBounds {
                offset,
                len: self.len(),
            })
        }
    }

    /// Reads the little-endian 32-bit register at `offset`.
    pub fn read32(&self, offset: usize) -> Result<u32> {
        let at = self.check(offset)?;
        // SAFETY: `at` is 4-aligned and [at, at + 4) lies inside the mapping (checked
        // above; the mapping itself is page aligned). Volatile: the device, not
        // memory, answers, so the load must happen exactly once, as written.
        let raw = unsafe { std::ptr::read_volatile(self.map.as_ptr().add(at).cast::<u32>()) };
        Ok(u32::from_le(raw))
    }

    /// Writes the little-endian 32-bit register at `offset`.
    pub fn write32(&self, offset: usize, value: u32) -> Result<()> {
        let at = self.check(offset)?;
        // SAFETY: as in `read32`: in bounds and aligned; volatile because the store
        // is a device side effect (a doorbell) that must not be merged or dropped.
        unsafe {
            std::ptr::write_volatile(self.map.as_mut_ptr().add(at).cast::<u32>(), value.to_le())
        };
        Ok(())
    }
}

// SAFETY: the mapping is owned by this value and only touched with volatile
// 32-bit accesses, which the device serialises; sharing it between threads is
// what a doorbell register is for.
unsafe impl Send for Mmio {}
// SAFETY: see `Send`.
unsafe impl Sync for Mmio {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_and_out_of_range_offsets_are_refused() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(16).unwrap();
        let sut = Mmio::map(&f, 16).unwrap();
        sut.write32(12, 0xdead_beef).unwrap();
        assert_eq!(sut.read32(12).unwrap(), 0xdead_beef);
        for bad in [2, 13, 16, usize::MAX - 1] {
            assert!(sut.read32(bad).is_err(), "{bad} read");
            assert!(sut.write32(bad, 1).is_err(), "{bad} written");
        }
        assert!(Mmio::map(&f, 0).is_err());
    }
}
