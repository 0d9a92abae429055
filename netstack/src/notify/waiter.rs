//! The elastic waiter: spin for an adaptive budget, then sleep on a doorbell.

use std::time::{Duration, Instant};

use super::{Doorbell, NotifyMode, NotifyStats};
use crate::error::Result;
use std::sync::Arc;

/// Budget bounds. The budget doubles when a sleep ended sooner than the budget
/// (spinning a bit longer would have caught it) and shrinks after long sleeps.
pub const START_BUDGET: Duration = Duration::from_micros(100);
pub const MIN_BUDGET: Duration = Duration::from_micros(10);
pub const MAX_BUDGET: Duration = Duration::from_micros(400);
/// While spinning, hand the worker back to tokio this often, so tasks sharing
/// the thread (and the epoll poll that yield_now triggers) still run.
const YIELD_EVERY: Duration = Duration::from_micros(4);
/// A spin burst (32 polls, well under a microsecond) that took this long was
/// preempted.
const PREEMPTED_GAP: Duration = Duration::from_micros(30);

/// `HETERONET_SPIN_SCHED_YIELD=0` turns off the sched_yield between spin
/// slices (measured here: with it, p99 is far lower on an oversubscribed box;
/// without it, p50 can be lower on an idle one).
fn sched_yield_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("HETERONET_SPIN_SCHED_YIELD").map_or(true, |v| v != "0"))
}

/// What a waiter waits for.
pub trait WaitTarget {
    /// Whether the condition holds now (e.g. the rx ring has a record).
    fn ready(&mut self) -> Result<bool>;
    /// Sets (true) or clears this side's sleeping flag in shared memory. Setting
    /// must be followed by a SeqCst fence, so the re-check that follows and the
    /// peer's publish cannot both miss each other.
    fn arm(&mut self, on: bool);
}

impl WaitTarget for crate::shm::Consumer {
    fn ready(&mut self) -> Result<bool> {
        Ok(self.has_data()?)
    }
    fn arm(&mut self, on: bool) {
        self.set_sleeping(on);
    }
}

/// Waiting for room for a record of `len` payload bytes.
pub struct SpaceFor<'a>(pub &'a mut crate::shm::Producer, pub usize);

impl WaitTarget for SpaceFor<'_> {
    fn ready(&mut self) -> Result<bool> {
        Ok(self.0.fits(self.1)?)
    }
    fn arm(&mut self, on: bool) {
        self.0.set_waiting(on);
    }
}

/// One waiter per waiting role (rx data, tx space); not shared.
#[derive(Debug)]
pub struct Waiter {
    mode: NotifyMode,
    budget: Duration,
    stats: Arc<NotifyStats>,
}

impl Waiter {
    pub fn new(mode: NotifyMode, stats: Arc<NotifyStats>) -> Waiter {
        Waiter {
            mode,
            budget: START_BUDGET,
            stats,
        }
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Waits until `target.ready()` is true, sleeping on `bell` after the budget.
    pub async fn wait(&mut self, target: &mut impl WaitTarget, bell: &Doorbell) -> Result<()> {
        if target.ready()? {
            return Ok(());
        }
        let start = Instant::now();
        let mut slice = start;
        let mut last = start;
        let elastic = self.mode == NotifyMode::Elastic;
        loop {
            for _ in 0..32 {
                std::hint::spin_loop();
                if target.ready()? {
                    NotifyStats::add(&self.stats.spins);
                    return Ok(());
                }
            }
            let now = Instant::now();
            if elastic {
                // A long gap inside a spin burst means the kernel ran someone else
                // on this core: the CPU is contended, so spinning now costs the
                // work we wait for. Sleep at once.
                if now - last >= PREEMPTED_GAP {
                    NotifyStats::add(&self.stats.preempted);
                    break;
                }
                if now - start >= self.budget {
                    break;
                }
            }
            last = now;
            if now - slice >= YIELD_EVERY {
                if elastic && sched_yield_enabled() {
                    // Offer the core to other runnable threads (the application,
                    // the other relay) while staying awake; returns at once when
                    // nobody else wants it.
                    std::thread::yield_now();
                }
                tokio::task::yield_now().await;
                slice = Instant::now();
                last = slice;
            }
        }
        NotifyStats::add(&self.stats.sleeps);
        target.arm(true);
        let slept = Instant::now();
        let r = self.sleep(target, bell).await;
        target.arm(false);
        let d = slept.elapsed();
        self.budget = if d < self.budget {
            (self.budget * 2).min(MAX_BUDGET)
        } else {
            (self.budget * 3 / 4).max(MIN_BUDGET)
        };
        r
    }

    async fn sleep(&self, target: &mut impl WaitTarget, bell: &Doorbell) -> Result<()> {
        loop {
            // Re-check after arming: data published before our flag was visible
            // rang no doorbell.
            if target.ready()? {
                return Ok(());
            }
            bell.wait().await?;
            NotifyStats::add(&self.stats.wakeups);
        }
    }
}
