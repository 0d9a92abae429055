//! The library's own descriptors (a connection's Unix socket and region, a
//! listener's registration), kept out of the program's way.
//!
//! Daemons close descriptors they did not open (a loop of `close` after
//! `fork`, or `close_range`); closing ours under a live connection would make
//! it use a number the program may reuse. So ours move to high numbers, and
//! `close` / `close_range` of them leave them open (the program sees success:
//! the descriptor was never its own). They are close-on-exec, so an exec'd
//! image never sees them.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use crate::real;

/// Lowest number the library moves its descriptors to (below the usual
/// 1,024 soft limit; where that fails they keep their number).
const HIGH: i32 = 600;

static COUNT: AtomicUsize = AtomicUsize::new(0);

fn set() -> MutexGuard<'static, BTreeSet<i32>> {
    static S: OnceLock<Mutex<BTreeSet<i32>>> = OnceLock::new();
    S.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Makes `fd` one of the library's own: moved high, close-on-exec, and
/// protected from the program's `close` until [`release`]d.
pub fn hide(fd: OwnedFd) -> OwnedFd {
    let fd = real::dup_at_least(&fd, HIGH).unwrap_or(fd);
    if set().insert(fd.as_raw_fd()) {
        COUNT.fetch_add(1, Ordering::AcqRel);
    }
    fd
}

/// Ends the protection of `fd`, before the library closes it itself.
pub fn release(fd: i32) {
    if set().remove(&fd) {
        COUNT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether `fd` is one of the library's own.
pub fn is_internal(fd: i32) -> bool {
    COUNT.load(Ordering::Acquire) > 0 && set().contains(&fd)
}

/// The library's descriptors in `first..=last`, in order.
pub fn within(first: u32, last: u32) -> Vec<i32> {
    if COUNT.load(Ordering::Acquire) == 0 {
        return Vec::new();
    }
    let (lo, hi) = (
        i32::try_from(first).unwrap_or(i32::MAX),
        i32::try_from(last).unwrap_or(i32::MAX),
    );
    if lo > hi {
        return Vec::new();
    }
    set().range(lo..=hi).copied().collect()
}
