//! Elastic waiting in the program's own event loop: before `epoll_wait`,
//! `poll` or `select` blocks in a process that has fast connections, the same
//! call is repeated with a zero timeout for a short budget, so a reply that
//! comes within a round trip is seen without a sleep and a wake-up. The
//! readiness itself is always the kernel's (the descriptors are real).

use std::time::Instant;

/// Repeats `poll_now` (a zero-timeout form of the program's wait) until it
/// reports something (or an error) or the spin budget passes. `None`: nothing
/// came, make the blocking call.
pub fn spin_first(mut poll_now: impl FnMut() -> i32) -> Option<i32> {
    if crate::table::len() == 0 {
        return None;
    }
    let budget = crate::conn::spin_budget();
    if budget.is_zero() {
        return None;
    }
    let start = Instant::now();
    loop {
        let r = poll_now();
        if r != 0 {
            return Some(r);
        }
        if start.elapsed() >= budget {
            return None;
        }
        std::hint::spin_loop();
    }
}
