//! The shared memory as mapped by a host peer.
//!
//! Other peers (the guest) write it concurrently, so no Rust reference to its
//! bytes is ever created: bytes move with `ptr::copy_nonoverlapping` into or
//! out of private buffers, after a bounds check.

use std::fs::File;
use std::os::fd::AsFd;

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{io, Error, Result};

/// A shared mapping of the ivshmem memory object.
#[derive(Debug)]
pub struct SharedMemory {
    map: MmapRaw,
}

impl SharedMemory {
    /// Maps all of `file` (its size is the BAR size the guests see).
    pub fn map(file: &File) -> Result<SharedMemory> {
        let len = file.metadata().map_err(io("stat shared memory"))?.len();
        if len == 0 {
            return Err(Error::Protocol("shared memory object is empty"));
        }
        let len = usize::try_from(len).map_err(|_| Error::Protocol("shared memory too large"))?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file.as_fd())
            .map_err(io("mmap shared memory"))?;
        Ok(SharedMemory { map })
    }

    /// Mapped bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    fn check(&self, offset: u64, len: usize) -> Result<usize> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len() => Ok(offset as usize),
            _ => Err(Error::OutOfBounds {
                offset,
                len,
                size: self.len(),
            }),
        }
    }

    /// Copies `bytes` into the shared memory at `offset`.
    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        let at = self.check(offset, bytes.len())?;
        // SAFETY: [at, at + len) was checked to lie inside the mapping just above,
        // and `bytes` is private memory, so the ranges are valid and disjoint.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(at),
                bytes.len(),
            )
        };
        Ok(())
    }

    /// Copies shared bytes at `offset` into `out`.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let at = self.check(offset, out.len())?;
        // SAFETY: [at, at + len) was checked to lie inside the mapping just above,
        // and `out` is private memory, so the ranges are valid and disjoint.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(at), out.as_mut_ptr(), out.len())
        };
        Ok(())
    }
}

// SAFETY: the mapping is owned by this value and only accessed through raw-pointer
// copies, so moving or sharing the handle between threads adds no data race beyond
// the cross-process sharing the memory exists for.
unsafe impl Send for SharedMemory {}
// SAFETY: see `Send`.
unsafe impl Sync for SharedMemory {}
