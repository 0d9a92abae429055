//! Elastic waiting in the program's own event loop: before `epoll_wait`,
//! `poll` or `select` blocks in a process that has fast connections, the same
//! call is repeated with a zero timeout for a short budget, so a reply that
//! comes within a round trip is seen without a sleep and a wake-up. The
//! readiness itself is always the kernel's (the descriptors are real). The
//! budget adapts per thread (see [`crate::spin`]).

use std::cell::Cell;
use std::time::Instant;

thread_local! {
    /// When this thread began waiting, if it gave up spinning and blocks now.
    static BLOCKING_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Wraps the blocking call made after [`spin_first`] gave up: records how
/// long the wait really was, so the next spin fits it. Returns `r`.
pub fn after_block(r: i32) -> i32 {
    if let Some(start) = BLOCKING_SINCE.with(Cell::take) {
        crate::spin::slept(start, r > 0);
    }
    r
}

/// Repeats `poll_now` (a zero-timeout form of the program's wait) until it
/// reports something (or an error) or the spin budget passes. `None`: nothing
/// came, make the blocking call.
pub fn spin_first(mut poll_now: impl FnMut() -> i32) -> Option<i32> {
    if crate::table::len() == 0 {
        return None;
    }
    let budget = crate::spin::budget();
    let start = Instant::now();
    if budget.is_zero() {
        BLOCKING_SINCE.with(|b| b.set(Some(start)));
        return None;
    }
    let mut first = true;
    loop {
        let r = poll_now();
        if r != 0 {
            // Ready at once is no evidence either way.
            if !first {
                crate::spin::paid_off();
            }
            return Some(r);
        }
        first = false;
        if start.elapsed() >= budget {
            BLOCKING_SINCE.with(|b| b.set(Some(start)));
            return None;
        }
        std::hint::spin_loop();
    }
}
