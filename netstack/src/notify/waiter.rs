//! The elastic waiter: spin for an adaptive budget, then sleep on a doorbell.

use std::time::{Duration, Instant};

use super::{Doorbell, NotifyMode, NotifyStats};
use crate::error::Result;
use std::sync::Arc;

/// Budget bounds. The budget is twice the recent peak gap between arrivals
/// (so a hop stays awake across a round trip while traffic is dense), capped:
/// spinning costs the whole gap in CPU, a sleep costs one doorbell wake-up (a
/// few µs of CPU plus tens of µs of latency on an idle core), so a gap longer
/// than the cap is slept through, and gaps above the cap shrink the budget
/// towards the minimum. The cap must exceed the round trip of the rest of the
/// path while every hop is awake (64 B echo through both relays: p50 ~28 µs,
/// p99 ~80 µs on the 2-core box) and also the gap seen while the hops sleep
/// (~90-130 µs): otherwise a relay that starts asleep (after an idle period)
/// sees long gaps, keeps shrinking its budget and stays in a sleeping regime
/// (50 µs cap: 2 sleeps per ping, p50 ~88 µs; 100 µs cap: 0.8 sleeps per ping
/// after 10 s idle). A longer cap only buys spinning through a server's think
/// time. Measured with `make bench-net` (2-core box, elastic,
/// HETERONET_SPIN_MAX_US): cap 50 / 100 / 200 / 500 µs: p50 88 / 28 / 28-36 /
/// 28 µs; relay CPU per request when the server thinks 100 µs 36 / 41 / 76 /
/// 81 µs (busy-poll 115). `HETERONET_SPIN_MAX_US` overrides the cap.
pub const START_BUDGET: Duration = Duration::from_micros(50);
pub const MIN_BUDGET: Duration = Duration::from_micros(10);
pub const MAX_BUDGET: Duration = Duration::from_micros(200);
/// While spinning, hand the worker back to tokio this often, so tasks sharing
/// the thread (and the epoll poll that yield_now triggers) still run.
const YIELD_EVERY: Duration = Duration::from_micros(4);
/// A spin burst (32 polls, well under a microsecond) that took this long was
/// preempted (counted only: the thread stayed runnable, so sleeping now would
/// only add a wake-up).
const PREEMPTED_GAP: Duration = Duration::from_micros(30);

/// How often an elastic spinner calls sched_yield: on a 2-core box the two
/// relays plus client and server share the cores, and spinners that do not
/// offer the core starve the endpoints (measured: 64 B echo p50 ~500 us and more
/// than one sleep per request without it; every 1 us beat 2 or 4 us, p50 ~35
/// vs ~55-67 us). `HETERONET_SPIN_SCHED_YIELD_US` overrides (0 = off).
fn sched_yield_every() -> Option<Duration> {
    static EVERY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *EVERY.get_or_init(|| {
        let us = std::env::var("HETERONET_SPIN_SCHED_YIELD_US")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        (us > 0).then(|| Duration::from_micros(us))
    })
}

fn max_spin() -> Duration {
    static MAX: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("HETERONET_SPIN_MAX_US")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_micros)
            .unwrap_or(MAX_BUDGET)
    })
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
    /// Largest recent gap between arrivals (decays), idle gaps excluded.
    peak: Duration,
    /// Longest spin ([`MAX_BUDGET`] unless overridden).
    cap: Duration,
    stats: Arc<NotifyStats>,
}

impl Waiter {
    pub fn new(mode: NotifyMode, stats: Arc<NotifyStats>) -> Waiter {
        Waiter {
            mode,
            budget: START_BUDGET,
            peak: START_BUDGET / 2,
            cap: max_spin().max(MIN_BUDGET),
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
        let mut yielded = start;
        let elastic = self.mode == NotifyMode::Elastic;
        loop {
            for _ in 0..32 {
                std::hint::spin_loop();
                if target.ready()? {
                    NotifyStats::add(&self.stats.spins);
                    self.adapt(start.elapsed());
                    return Ok(());
                }
            }
            let now = Instant::now();
            if elastic {
                if now - last >= PREEMPTED_GAP {
                    NotifyStats::add(&self.stats.preempted);
                }
                if now - start >= self.budget {
                    break;
                }
            }
            last = now;
            if let (true, Some(every)) = (elastic, sched_yield_every()) {
                if now - yielded >= every {
                    // Offer the core to other runnable threads (client,
                    // server, the other relay) while staying awake.
                    std::thread::yield_now();
                    yielded = Instant::now();
                    last = yielded;
                }
            }
            if now - slice >= YIELD_EVERY {
                tokio::task::yield_now().await;
                slice = Instant::now();
                last = slice;
            }
        }
        NotifyStats::add(&self.stats.sleeps);
        target.arm(true);
        let r = self.sleep(target, bell).await;
        target.arm(false);
        self.adapt(start.elapsed());
        r
    }

    /// Sizes the next spin from this wait's gap: twice the recent peak gap, so
    /// the hop stays awake across dense traffic; gaps above the cap are
    /// cheaper to sleep through and shrink the budget instead.
    fn adapt(&mut self, gap: Duration) {
        if gap > self.cap {
            self.peak /= 2;
        } else {
            self.peak = gap.max(self.peak * 15 / 16);
        }
        self.budget = (self.peak * 2).clamp(MIN_BUDGET, self.cap);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn budget_covers_twice_the_recent_gap_and_is_bounded() {
        let mut sut = Waiter::new(NotifyMode::Elastic, Arc::default());
        sut.adapt(us(24));
        assert_eq!(sut.budget(), us(48));
        // A short gap does not drop the budget at once: the peak decays slowly.
        sut.adapt(us(5));
        assert!(sut.budget() > us(40));
        sut.adapt(sut.cap);
        assert_eq!(sut.budget(), sut.cap);
    }

    #[test]
    fn gaps_longer_than_the_cap_stop_the_spinning() {
        let mut sut = Waiter::new(NotifyMode::Elastic, Arc::default());
        sut.adapt(us(20));
        for _ in 0..8 {
            sut.adapt(sut.cap * 3);
        }
        assert_eq!(sut.budget(), MIN_BUDGET);
    }

    #[test]
    fn idle_gaps_shrink_the_budget_to_the_minimum() {
        let mut sut = Waiter::new(NotifyMode::Elastic, Arc::default());
        sut.adapt(us(200));
        for _ in 0..16 {
            sut.adapt(Duration::from_secs(1));
        }
        assert_eq!(sut.budget(), MIN_BUDGET);
    }
}
