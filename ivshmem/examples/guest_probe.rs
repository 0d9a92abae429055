//! Runs inside a QEMU guest with an ivshmem-doorbell device: maps BAR2 and
//! BAR0 through sysfs, routes MSI-X to eventfds through vfio-pci, then answers
//! the host's rings. Used by `tests/guest_vfio.rs`; prints `PROBE-*` lines on
//! the console.
//!
//! Shared memory protocol with the host test: the guest writes its id at
//! offset 0 ("READY <id>"), the host writes "HOST <rounds>" at 64 and rings
//! vector 1; each ring of vector 1 is answered with a ring of the host's
//! vector 0 (the host's id is at offset 128, little-endian u16).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;

use heteropod_ivshmem::guest::sysfs;
use heteropod_ivshmem::{BarDoorbell, SharedMemory, VfioInterrupts};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

fn readable(fd: std::os::fd::BorrowedFd<'_>, ms: u16) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) == 1
}

fn drain(fd: std::os::fd::BorrowedFd<'_>) {
    let mut b = [0u8; 8];
    let _ = nix::unistd::read(fd, &mut b);
}

fn main() -> anyhow::Result<()> {
    let bdf = match std::env::args().nth(1) {
        Some(b) => b,
        None => sysfs::find_ivshmem()?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no ivshmem device"))?,
    };
    println!("PROBE-DEVICE {bdf}");
    // VFIO first: the BARs must stay mappable through sysfs after the bind.
    let irqs = VfioInterrupts::open(&bdf, 4)?;
    println!("PROBE-VFIO {} vectors", irqs.vectors());
    let bar0 = BarDoorbell::open(&bdf)?;
    let own = bar0.own_id()?;
    println!("PROBE-ID {own}");
    let res2 = sysfs::device_dir(&bdf)?.join("resource2");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open(&res2)?;
    let shm = SharedMemory::map(&file)?;
    println!("PROBE-BAR2 {} bytes", shm.len());
    shm.write(0, format!("READY {own:<5}").as_bytes())?;

    let mut rounds = 0u32;
    loop {
        if !readable(irqs.bell(1)?, 20_000) {
            println!("PROBE-TIMEOUT after {rounds} rounds");
            break;
        }
        drain(irqs.bell(1)?);
        if rounds == 0 {
            let mut host = [0u8; 16];
            shm.read(64, &mut host)?;
            println!(
                "PROBE-HOST-SAYS {}",
                String::from_utf8_lossy(&host).trim_end_matches('\0')
            );
            let others = (0..4u16).filter(|&v| v != 1 && readable(irqs.bell(v).ok().unwrap(), 0));
            println!("PROBE-OTHER-VECTORS-RUNG {}", others.count());
        }
        // Read the stop flag before answering: the host sets it before its
        // last ring, and only after our answer to the previous one.
        let mut stop = [0u8; 1];
        shm.read(132, &mut stop)?;
        let mut id = [0u8; 2];
        shm.read(128, &mut id)?;
        bar0.ring(u16::from_le_bytes(id), 0)?;
        rounds += 1;
        if stop[0] == 1 {
            break;
        }
    }
    println!("PROBE-DONE {rounds}");
    Ok(())
}
