//! Doorbells (eventfds) and the elastic waiter that spins, then sleeps on them.

mod waiter;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};

pub use waiter::{SpaceFor, WaitTarget, Waiter, MAX_BUDGET, MIN_BUDGET, START_BUDGET};

/// How a consumer waits for its ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyMode {
    /// Spin for an adaptive budget, then sleep on the doorbell.
    #[default]
    Elastic,
    /// Spin forever (the kernel-bypass baseline); never sleeps.
    BusyPoll,
}

impl FromStr for NotifyMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "elastic" => Ok(NotifyMode::Elastic),
            "busy-poll" | "busypoll" | "busy_poll" => Ok(NotifyMode::BusyPoll),
            _ => Err(Error::Config("notify mode must be elastic or busy-poll")),
        }
    }
}

/// Counters of one side's waiting behaviour.
#[derive(Debug, Default)]
pub struct NotifyStats {
    /// Waits that ended while spinning.
    pub spins: AtomicU64,
    /// Waits that went to sleep on a doorbell.
    pub sleeps: AtomicU64,
    /// Doorbell wake-ups received.
    pub wakeups: AtomicU64,
    /// Doorbells rung for the peer.
    pub doorbells: AtomicU64,
    /// Spin bursts during which the thread was preempted (CPU contended).
    pub preempted: AtomicU64,
}

impl NotifyStats {
    pub fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A new non-blocking eventfd.
pub fn eventfd() -> Result<OwnedFd> {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map(OwnedFd::from)
        .map_err(|e| Error::Doorbell(e.into()))
}

/// The doorbell this side sleeps on (registered with tokio's reactor).
#[derive(Debug)]
pub struct Doorbell {
    fd: AsyncFd<OwnedFd>,
}

impl Doorbell {
    /// Wraps an eventfd (or any fd that becomes readable, e.g. an MSI-X eventfd).
    /// Must be called inside a tokio runtime.
    pub fn new(fd: OwnedFd) -> Result<Doorbell> {
        nix::fcntl::fcntl(
            fd.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| Error::Doorbell(e.into()))?;
        // AsyncFd::new is deprecated for types that may not own their fd; an
        // OwnedFd does, and `register` would need unsafe outside shm/.
        #[allow(deprecated)]
        Ok(Doorbell {
            fd: AsyncFd::new(fd).map_err(Error::Doorbell)?,
        })
    }

    /// Waits until the doorbell was rung, and consumes the rings.
    pub async fn wait(&self) -> Result<()> {
        loop {
            let mut guard = self.fd.readable().await.map_err(Error::Doorbell)?;
            let mut buf = [0u8; 8];
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref(), &mut buf).map_err(std::io::Error::from)
            }) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(Error::Doorbell(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Consumes pending rings without waiting.
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(self.fd.get_ref(), &mut buf);
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

/// The peer's doorbell, rung by this side.
#[derive(Debug)]
pub struct Bell(BellKind);

#[derive(Debug)]
enum BellKind {
    /// An eventfd: the peer's own (rendezvous), or an ivshmem peer's vector
    /// (the host ringing a guest's MSI-X vector is an eventfd write too).
    EventFd(OwnedFd),
    /// The ivshmem doorbell register in BAR0 (the guest ringing a host peer).
    Register(heteropod_ivshmem::RegisterBell),
}

impl Bell {
    /// A bell that writes the eventfd `fd`.
    pub fn new(fd: OwnedFd) -> Bell {
        Bell(BellKind::EventFd(fd))
    }

    /// A bell that writes `(peer << 16) | vector` to an ivshmem BAR0 doorbell.
    pub fn register(bell: heteropod_ivshmem::RegisterBell) -> Bell {
        Bell(BellKind::Register(bell))
    }

    /// Rings once. A full counter (EAGAIN) already means "rung".
    pub fn ring(&self) -> Result<()> {
        match &self.0 {
            BellKind::EventFd(fd) => match nix::unistd::write(fd, &1u64.to_ne_bytes()) {
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => Ok(()),
                Err(e) => Err(Error::Doorbell(e.into())),
            },
            BellKind::Register(r) => r.ring().map_err(Error::Ivshmem),
        }
    }

    /// The eventfd rung, if this bell is one (-1 for a register bell).
    pub fn raw_fd(&self) -> i32 {
        match &self.0 {
            BellKind::EventFd(fd) => fd.as_raw_fd(),
            BellKind::Register(_) => -1,
        }
    }
}
