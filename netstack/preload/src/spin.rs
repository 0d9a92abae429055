//! How long a blocked call spins before it sleeps in the kernel, learned per
//! thread. A spin pays off only when the answer comes within it: a thread
//! whose waits keep ending in a long sleep (its peer answers in hundreds of
//! µs, as a request through a sidecar does) halves its budget on each, down
//! to nothing; a sleep that ended soon (within the ceiling) sets the budget to
//! twice its length, so fast answers are learned from sleeps too; a wait that
//! ends while spinning doubles it, up to `HETEROSOCKET_SPIN_US` (default 50 µs).
//! So a ping-pong keeps both ends awake, and a request-response program stops
//! burning a host core on spins that never pay off.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The smallest budget: none (sleeps still teach it, see [`slept`]).
const FLOOR: Duration = Duration::ZERO;

/// The largest budget (`HETEROSOCKET_SPIN_US`).
fn ceiling() -> Duration {
    static US: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    Duration::from_micros(*US.get_or_init(|| {
        std::env::var("HETEROSOCKET_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50)
    }))
}

thread_local! {
    static BUDGET: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// This thread's current budget.
pub fn budget() -> Duration {
    let max = ceiling();
    BUDGET.with(|b| b.get()).unwrap_or(max).min(max)
}

/// Records a wait that ended while spinning: spinning paid off, spin longer.
pub fn paid_off() {
    let max = ceiling();
    if !max.is_zero() {
        let next = (budget() * 2).clamp(FLOOR, max);
        BUDGET.with(|b| b.set(Some(next)));
    }
}

/// Records a wait that spun from `start`, then slept until an event (or not):
/// had the answer come within twice the time it took, a spin of that length
/// would have caught it, so that becomes the budget (a round trip just above
/// the budget is learned at once); a longer or fruitless sleep halves it.
pub fn slept(start: Instant, woken_by_event: bool) {
    let max = ceiling();
    if max.is_zero() {
        return;
    }
    let waited = start.elapsed();
    let next = if woken_by_event && waited <= max {
        (waited * 2).clamp(FLOOR, max)
    } else {
        (budget() / 2).max(FLOOR.min(max))
    };
    BUDGET.with(|b| b.set(Some(next)));
}

/// Calls `ready` until it holds or this thread's budget passes, offering the
/// core between rounds. `Ok`: ready without sleeping (recorded); `Err`: the
/// caller sleeps now and reports to [`slept`] with the instant given.
pub fn spin(mut ready: impl FnMut() -> bool) -> Result<(), Instant> {
    // Ready at once is no evidence either way.
    if ready() {
        return Ok(());
    }
    let start = Instant::now();
    let budget = budget();
    if budget.is_zero() {
        return Err(start);
    }
    loop {
        for _ in 0..64 {
            if ready() {
                paid_off();
                return Ok(());
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= budget {
            return Err(start);
        }
        std::thread::yield_now();
    }
}
