//! Ringing peers from the guest: the doorbell register in BAR0.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use super::sysfs;
use crate::error::{io, Error, Result};
use crate::sys::mmio::Mmio;

/// BAR0 register offsets (ivshmem-spec.rst, "PCI device registers").
pub const INTR_MASK: usize = 0;
pub const INTR_STATUS: usize = 4;
pub const IV_POSITION: usize = 8;
pub const DOORBELL: usize = 12;
/// BAR0 is 256 bytes of registers.
pub const BAR0_SIZE: usize = 256;

/// The value that interrupts `peer` on `vector`.
pub fn doorbell_value(peer: u16, vector: u16) -> u32 {
    (u32::from(peer) << 16) | u32::from(vector)
}

/// BAR0 of an ivshmem-doorbell device, shared by all the bells made from it.
#[derive(Debug, Clone)]
pub struct BarDoorbell {
    regs: Arc<Mmio>,
}

impl BarDoorbell {
    /// Maps `/sys/bus/pci/devices/<bdf>/resource0` of an ivshmem device.
    pub fn open(bdf: &str) -> Result<BarDoorbell> {
        sysfs::check_ivshmem(bdf)?;
        Self::from_path(&sysfs::device_dir(bdf)?.join("resource0"))
    }

    /// Maps a register file directly (a sysfs resource, or a plain file in tests).
    pub fn from_path(path: &Path) -> Result<BarDoorbell> {
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open(path)
            .map_err(io(format!("open {}", path.display())))?;
        let len = file
            .metadata()
            .map_err(io(format!("stat {}", path.display())))?
            .len();
        // Map what the file says, at most BAR0's registers; bounds checks use it.
        let len = usize::try_from(len.min(BAR0_SIZE as u64)).unwrap_or(BAR0_SIZE);
        Ok(BarDoorbell {
            regs: Arc::new(Mmio::map(&file, len)?),
        })
    }

    /// Our own peer id (IVPosition).
    pub fn own_id(&self) -> Result<u16> {
        let raw = self.regs.read32(IV_POSITION)? as i32;
        u16::try_from(raw).map_err(|_| Error::NoPosition(raw))
    }

    /// Interrupts `peer` on `vector`. Silently ignored by the device if the
    /// peer or vector does not exist (the spec gives no way to tell).
    pub fn ring(&self, peer: u16, vector: u16) -> Result<()> {
        self.regs.write32(DOORBELL, doorbell_value(peer, vector))
    }

    /// A bell for one peer and vector, sharing this mapping.
    pub fn bell(&self, peer: u16, vector: u16) -> RegisterBell {
        RegisterBell {
            bar: self.clone(),
            peer,
            vector,
        }
    }
}

/// One (peer, vector) doorbell: the guest's counterpart of writing an eventfd.
#[derive(Debug, Clone)]
pub struct RegisterBell {
    bar: BarDoorbell,
    peer: u16,
    vector: u16,
}

impl RegisterBell {
    pub fn ring(&self) -> Result<()> {
        self.bar.ring(self.peer, self.vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(len: usize) -> (tempfile::NamedTempFile, BarDoorbell) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len as u64).unwrap();
        let sut = BarDoorbell::from_path(f.path()).unwrap();
        (f, sut)
    }

    fn word(f: &tempfile::NamedTempFile, at: usize) -> u32 {
        let b = std::fs::read(f.path()).unwrap();
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn ring_writes_peer_and_vector_to_the_doorbell_register() {
        let (f, sut) = regs(BAR0_SIZE);
        sut.bell(3, 1).ring().unwrap();
        assert_eq!(word(&f, DOORBELL), 0x0003_0001);
        sut.ring(0xffff, 0x7).unwrap();
        assert_eq!(word(&f, DOORBELL), 0xffff_0007);
        assert_eq!(word(&f, IV_POSITION), 0, "nothing else written");
    }

    #[test]
    fn own_id_comes_from_iv_position() {
        let (f, sut) = regs(BAR0_SIZE);
        let mut b = vec![0u8; BAR0_SIZE];
        b[IV_POSITION..IV_POSITION + 4].copy_from_slice(&5u32.to_le_bytes());
        std::fs::write(f.path(), &b).unwrap();
        assert_eq!(sut.own_id().unwrap(), 5);
        b[IV_POSITION..IV_POSITION + 4].copy_from_slice(&(-1i32).to_le_bytes());
        std::fs::write(f.path(), &b).unwrap();
        assert!(matches!(sut.own_id(), Err(Error::NoPosition(-1))));
    }

    #[test]
    fn registers_outside_a_short_mapping_are_refused() {
        let (_f, sut) = regs(12);
        assert!(sut.own_id().is_ok());
        assert!(matches!(
            sut.ring(1, 0),
            Err(Error::RegisterOutOfBounds {
                offset: 12,
                len: 12
            })
        ));
    }
}
