//! Exact solver: depth-first branch and bound over "offload or not" per candidate.
//!
//! The problem is a two-dimensional knapsack (DPU cores and memory) with a
//! quadratic side constraint (traffic crossing PUs depends on pairs). A node is
//! pruned when the CPU it can still gain, bounded by the smallest of
//! * the CPU room left and the CPU of the undecided candidates,
//! * the Dantzig (fractional knapsack = LP) bound of a surrogate constraint that
//!   adds the CPU and memory constraints with positive multipliers,
//! * with a budget, the Dantzig bound of the traffic constraint made linear
//!   (`traffic_bound`) and of a three-way surrogate of all three,
//!
//! and rounded down to a multiple of the candidates' CPU gcd, cannot beat the
//! best plan, or can only tie on CPU and cannot beat it on memory (a fractional
//! bound on the memory needed to tie) and traffic (the edges with both ends placed).
//!
//! Candidates are explored in CPU/memory surrogate-density order, offloading
//! first, from the heuristic's plan as incumbent. After `node_limit` nodes the
//! best plan found is returned as not proven optimal.

use crate::error::{Error, Result};
use crate::instance::{Instance, Peer, Score};
use crate::model::Unit;
use crate::traffic_bound::TrafficBound;

#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub on_dpu: Vec<bool>,
    pub score: Score,
    pub proven_optimal: bool,
    /// The CPU freed is proven maximal (the search may still have been stopped
    /// while settling the memory and traffic tie-breaks).
    pub cpu_proven_optimal: bool,
    pub nodes: u64,
}

/// Solves `inst`, starting from `incumbent` (e.g. the heuristic's plan) if it is feasible.
pub(crate) fn solve(
    inst: &Instance,
    incumbent: Option<&[bool]>,
    node_limit: u64,
) -> Result<Outcome> {
    let mut search = Search::new(inst, node_limit);
    if let Some(start) = incumbent {
        let score = inst.evaluate(start);
        if inst.feasible(&score) {
            search.best = Some((score, start.to_vec()));
        }
    }
    let lb = search.initial_crossing();
    let free = inst.free;
    let root_gain = search.upper_bound(0, free.cpu_millis, free.memory_bytes, lb);
    // The search recurses once per candidate; give it a stack to match, so a
    // node with thousands of candidates cannot overflow the caller's stack.
    let stack = (1 << 20) + search.order.len() * 1024;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("heteropod-plan".into())
            .stack_size(stack)
            .spawn_scoped(scope, || search.descend(0, 0, 0, lb))
            .map(|handle| handle.join())
    })
    .map_err(|e| Error::Search(e.to_string()))?
    .map_err(|_| Error::Search("search thread panicked".into()))?;
    let proven_optimal = !search.stopped;
    let nodes = search.nodes;
    match search.best {
        Some((score, on_dpu)) => Ok(Outcome {
            on_dpu,
            score,
            proven_optimal,
            cpu_proven_optimal: proven_optimal || root_gain.is_some_and(|g| score.cpu_millis >= g),
            nodes,
        }),
        None => Err(Error::TrafficBudget {
            budget_mbps: inst.budget.unwrap_or(0),
            detail: if proven_optimal {
                "exact search proved it".into()
            } else {
                format!("none found within the node limit of {node_limit}")
            },
        }),
    }
}

struct Search<'a> {
    inst: &'a Instance,
    /// Candidates that fit alone, best surrogate density first.
    order: Vec<usize>,
    /// Surrogate weight of each candidate (indexed by candidate).
    weight: Vec<u128>,
    multipliers: (u128, u128),
    /// The same candidates in CPU/memory surrogate-density order, for the Dantzig bound.
    by_surrogate: Vec<usize>,
    /// CPU of `order[d..]`.
    suffix_cpu: Vec<u64>,
    /// Greatest common divisor of the candidates' CPU: every reachable gain is a
    /// multiple of it, so bounds round down to one (requests are usually in
    /// steps of 50m or 100m, which makes this prune a lot).
    cpu_step: u64,
    /// The traffic budget as a linear bound, when there is a budget.
    traffic: Option<TrafficBound>,
    /// Traffic of `order[d..]` if they all stay on the CPU.
    suffix_stay: Vec<u64>,
    /// Candidates that fit alone, least memory per CPU first (for tie-break bounds).
    by_memory: Vec<usize>,
    /// Current decision per candidate; `None` while undecided.
    side: Vec<Option<bool>>,
    best: Option<(Score, Vec<bool>)>,
    nodes: u64,
    node_limit: u64,
    stopped: bool,
}

impl<'a> Search<'a> {
    fn new(inst: &'a Instance, node_limit: u64) -> Self {
        let (c, m) = (
            u128::from(inst.free.cpu_millis),
            u128::from(inst.free.memory_bytes),
        );
        // Any positive multipliers give a valid surrogate; scaling each resource
        // by the other's room weighs them as fractions of the room left.
        let multipliers = if c.max(1).saturating_mul(m.max(1)) < 1 << 100 {
            (m.max(1), c.max(1))
        } else {
            (1, 1)
        };
        let weight: Vec<u128> = (0..inst.len())
            .map(|k| {
                u128::from(inst.cpu[k]) * multipliers.0 + u128::from(inst.memory[k]) * multipliers.1
            })
            .collect();
        let mut side = vec![None; inst.len()];
        let mut order = Vec::new();
        for (k, s) in side.iter_mut().enumerate() {
            if inst.fits_alone(k) {
                order.push(k);
            } else {
                *s = Some(false);
            }
        }
        // Higher cpu/weight first, compared exactly: the Dantzig bound below is an
        // upper bound only when it fills in true density order.
        order.sort_by(|&a, &b| {
            let lhs = wide_mul(inst.cpu[b], weight[a]);
            let rhs = wide_mul(inst.cpu[a], weight[b]);
            lhs.cmp(&rhs).then(a.cmp(&b))
        });
        let by_surrogate = order.clone();
        let traffic = inst.budget.map(|_| TrafficBound::new(inst));
        let mut suffix_cpu = vec![0u64; order.len() + 1];
        for d in (0..order.len()).rev() {
            suffix_cpu[d] = suffix_cpu[d + 1] + inst.cpu[order[d]];
        }
        let cpu_step = order.iter().fold(0, |g, &k| gcd(g, inst.cpu[k])).max(1);
        let mut suffix_stay = vec![0u64; order.len() + 1];
        if let Some(t) = &traffic {
            for d in (0..order.len()).rev() {
                suffix_stay[d] = suffix_stay[d + 1].saturating_add(t.stay[order[d]]);
            }
        }
        let mut by_memory = order.clone();
        by_memory.sort_by(|&a, &b| {
            let lhs = u128::from(inst.memory[a]) * u128::from(inst.cpu[b]);
            let rhs = u128::from(inst.memory[b]) * u128::from(inst.cpu[a]);
            lhs.cmp(&rhs).then(a.cmp(&b))
        });
        Search {
            inst,
            order,
            by_surrogate,
            cpu_step,
            traffic,
            suffix_stay,
            weight,
            multipliers,
            suffix_cpu,
            by_memory,
            side,
            best: None,
            nodes: 0,
            node_limit,
            stopped: false,
        }
    }

    /// Crossing traffic already certain before any decision.
    fn initial_crossing(&self) -> u64 {
        let mut lb = self.inst.base_crossing;
        for k in 0..self.inst.len() {
            if self.side[k].is_some() {
                lb += self.delta(k, false);
            }
        }
        // Pairs of decided candidates were counted from both ends; both sit on the
        // CPU here, so no such pair crosses and nothing is counted twice.
        lb
    }

    /// Traffic that becomes certainly crossing when candidate `k` is decided `on_dpu`.
    fn delta(&self, k: usize, on_dpu: bool) -> u64 {
        self.inst.peers[k]
            .iter()
            .filter(|(peer, _)| match *peer {
                Peer::Fixed(unit) => (unit == Unit::Dpu) != on_dpu,
                Peer::Candidate(j) => self.side[j].is_some_and(|s| s != on_dpu),
            })
            .map(|(_, mbps)| *mbps)
            .sum()
    }

    /// Most CPU the undecided candidates can still add, or `None` if no way of
    /// deciding them keeps the traffic within the budget.
    fn upper_bound(
        &self,
        depth: usize,
        room_cpu: u64,
        room_mem: u64,
        crossing_lb: u64,
    ) -> Option<u64> {
        let by_cpu = room_cpu.min(self.suffix_cpu[depth]);
        let mut room =
            u128::from(room_cpu) * self.multipliers.0 + u128::from(room_mem) * self.multipliers.1;
        let mut gain: u128 = 0;
        for &k in &self.by_surrogate {
            if self.side[k].is_some()
                || self.inst.cpu[k] > room_cpu
                || self.inst.memory[k] > room_mem
            {
                continue;
            }
            let w = self.weight[k];
            if w <= room {
                room -= w;
                gain += u128::from(self.inst.cpu[k]);
            } else {
                // Overflow can only make the bound looser, never wrong.
                let cpu = u128::from(self.inst.cpu[k]);
                gain += cpu.checked_mul(room).map_or(cpu, |x| x / w);
                break;
            }
        }
        let mut bound = by_cpu.min(u64::try_from(gain).unwrap_or(u64::MAX));
        if let (Some(traffic), Some(budget)) = (&self.traffic, self.inst.budget) {
            let room =
                i128::from(budget) - i128::from(crossing_lb) - i128::from(self.suffix_stay[depth]);
            let usable = |k: usize| {
                self.side[k].is_none()
                    && self.inst.cpu[k] <= room_cpu
                    && self.inst.memory[k] <= room_mem
            };
            bound = bound.min(traffic.gain(&self.inst.cpu, room, &usable)?);
            let rooms = [room_cpu as f64, room_mem as f64, room as f64];
            bound = bound.min(traffic.three_way_gain(self.inst, rooms, &usable));
        }
        Some(bound - bound % self.cpu_step)
    }

    /// A lower bound on the memory needed to gain `deficit` more CPU from the
    /// undecided candidates (fractional, cheapest memory per CPU first), or `None`
    /// if they cannot supply it.
    fn memory_to_gain(&self, mut deficit: u64, room_cpu: u64, room_mem: u64) -> Option<u64> {
        let mut need: u128 = 0;
        for &k in &self.by_memory {
            if deficit == 0 {
                break;
            }
            let (cpu, mem) = (self.inst.cpu[k], self.inst.memory[k]);
            if self.side[k].is_some() || cpu > room_cpu || mem > room_mem {
                continue;
            }
            if cpu <= deficit {
                need += u128::from(mem);
                deficit -= cpu;
            } else {
                need += (u128::from(mem) * u128::from(deficit)).div_ceil(u128::from(cpu));
                deficit = 0;
            }
        }
        (deficit == 0).then(|| u64::try_from(need).unwrap_or(u64::MAX))
    }

    fn descend(&mut self, depth: usize, cpu: u64, mem: u64, crossing_lb: u64) {
        if self.stopped {
            return;
        }
        self.nodes += 1;
        if self.nodes > self.node_limit {
            self.stopped = true;
            return;
        }
        if self.inst.budget.is_some_and(|b| crossing_lb > b) {
            return;
        }
        if depth == self.order.len() {
            // Every end is placed, so the lower bound is the crossing traffic.
            let score = Score {
                cpu_millis: cpu,
                memory_bytes: mem,
                crossing_mbps: crossing_lb,
            };
            if self
                .best
                .as_ref()
                .map_or(true, |(b, _)| score.key() > b.key())
            {
                let on_dpu = self.side.iter().map(|s| s.unwrap_or(false)).collect();
                self.best = Some((score, on_dpu));
            }
            return;
        }
        let room_cpu = self.inst.free.cpu_millis - cpu;
        let room_mem = self.inst.free.memory_bytes - mem;
        let Some(gain) = self.upper_bound(depth, room_cpu, room_mem, crossing_lb) else {
            return;
        };
        if let Some((best, _)) = &self.best {
            let ub = cpu + gain;
            // A branch that can at most tie on CPU must gain exactly the deficit,
            // which costs at least `memory_to_gain`; crossing stays above its bound.
            if ub < best.cpu_millis {
                return;
            }
            if ub == best.cpu_millis {
                let tie_mem = self.memory_to_gain(best.cpu_millis - cpu, room_cpu, room_mem);
                let hopeless = match tie_mem {
                    None => true,
                    Some(extra) => {
                        let mem = mem.saturating_add(extra);
                        mem > best.memory_bytes
                            || (mem == best.memory_bytes && crossing_lb >= best.crossing_mbps)
                    }
                };
                if hopeless {
                    return;
                }
            }
        }
        let k = self.order[depth];
        if self.inst.cpu[k] <= room_cpu && self.inst.memory[k] <= room_mem {
            let d = self.delta(k, true);
            self.side[k] = Some(true);
            self.descend(
                depth + 1,
                cpu + self.inst.cpu[k],
                mem + self.inst.memory[k],
                crossing_lb + d,
            );
        }
        let d = self.delta(k, false);
        self.side[k] = Some(false);
        self.descend(depth + 1, cpu, mem, crossing_lb + d);
        self.side[k] = None;
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `a * b` as a 192-bit number (high 128 bits, low 64 bits), for exact comparisons.
fn wide_mul(a: u64, b: u128) -> (u128, u64) {
    let a = u128::from(a);
    let low = a * (b & u128::from(u64::MAX));
    let high = a * (b >> 64);
    (high + (low >> 64), low as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_mul_orders_like_exact_products() {
        assert_eq!(wide_mul(3, 5), (0, 15));
        assert_eq!(wide_mul(u64::MAX, 1 << 64), (u128::from(u64::MAX), 0));
        assert!(wide_mul(u64::MAX, u128::MAX) > wide_mul(u64::MAX - 1, u128::MAX));
        assert!(wide_mul(2, 1 << 64) > wide_mul(1, (1 << 64) + 5));
    }

    #[test]
    fn gcd_of_requests() {
        assert_eq!(gcd(0, 250), 250);
        assert_eq!(gcd(250, 100), 50);
        assert_eq!(gcd(7, 5), 1);
    }
}
