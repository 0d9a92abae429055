//! The traffic budget as a linear constraint, for the exact search's bound.
//!
//! Crossing traffic is quadratic in the plan (an edge between two candidates
//! crosses when they differ), but dropping the candidate-pair edges (they are
//! never negative) leaves a linear lower bound: a candidate `k` contributes
//! `b_k` (its edges to containers fixed on the DPU) when it stays and `a_k`
//! (its edges to containers fixed on the CPU) when offloaded, i.e.
//! `b_k + x_k * d_k` with `d_k = a_k - b_k`. The CPU that can be gained within
//! the budget is then at most a fractional knapsack over `d_k`, where a
//! candidate with `d_k <= 0` costs nothing.

use crate::instance::{Instance, Peer};
use crate::model::Unit;

#[derive(Debug)]
pub(crate) struct TrafficBound {
    /// Per candidate: traffic when it stays on the CPU.
    pub stay: Vec<u64>,
    /// Per candidate: change in traffic when it moves, `a_k - b_k`.
    delta: Vec<i128>,
    /// Free candidates (`d <= 0`) first, then by CPU per Mbit/s, highest first.
    order: Vec<usize>,
    /// Multipliers of the three-way surrogate: one over each room.
    scale: [f64; 3],
    /// All candidates by three-way surrogate density, free ones first.
    surrogate_order: Vec<usize>,
}

impl TrafficBound {
    pub fn new(inst: &Instance) -> TrafficBound {
        let mut stay = Vec::with_capacity(inst.len());
        let mut delta = Vec::with_capacity(inst.len());
        for peers in &inst.peers {
            let (mut to_cpu, mut to_dpu) = (0u64, 0u64);
            for (peer, mbps) in peers {
                match peer {
                    Peer::Fixed(Unit::Cpu) => to_cpu = to_cpu.saturating_add(*mbps),
                    Peer::Fixed(Unit::Dpu) => to_dpu = to_dpu.saturating_add(*mbps),
                    Peer::Candidate(_) => {}
                }
            }
            stay.push(to_dpu);
            delta.push(i128::from(to_cpu) - i128::from(to_dpu));
        }
        let mut order: Vec<usize> = (0..inst.len()).collect();
        order.sort_by(|&a, &b| {
            let (da, db) = (delta[a], delta[b]);
            match (da <= 0, db <= 0) {
                (true, false) => std::cmp::Ordering::Less,
                (false, true) => std::cmp::Ordering::Greater,
                (true, true) => a.cmp(&b),
                // cpu_a / d_a > cpu_b / d_b  <=>  cpu_a * d_b > cpu_b * d_a (all
                // positive, each product < 2^128).
                (false, false) => {
                    let lhs = u128::from(inst.cpu[b]) * da.unsigned_abs();
                    let rhs = u128::from(inst.cpu[a]) * db.unsigned_abs();
                    lhs.cmp(&rhs).then(a.cmp(&b))
                }
            }
        });
        let scale = [
            1.0 / inst.free.cpu_millis.max(1) as f64,
            1.0 / inst.free.memory_bytes.max(1) as f64,
            1.0 / inst.budget.unwrap_or(0).max(1) as f64,
        ];
        let mut bound = TrafficBound {
            stay,
            delta,
            order,
            scale,
            surrogate_order: Vec::new(),
        };
        bound.tune_multipliers(inst);
        bound
    }

    /// Any positive multipliers give a valid surrogate, but some give a much
    /// tighter bound. Search them at the root (coordinate descent over powers of
    /// two) and keep the best for the whole search.
    fn tune_multipliers(&mut self, inst: &Instance) {
        let all: Vec<usize> = (0..inst.len()).collect();
        let fits = |k: usize| inst.fits_alone(k);
        let stay: u64 = self.stay.iter().fold(0, |a, &s| a.saturating_add(s));
        let traffic_room = i128::from(inst.budget.unwrap_or(0))
            - i128::from(inst.base_crossing)
            - i128::from(stay);
        let rooms = [
            inst.free.cpu_millis as f64,
            inst.free.memory_bytes as f64,
            traffic_room as f64,
        ];
        let evaluate = |this: &mut TrafficBound| {
            this.surrogate_order = this.three_way_order(inst, &all);
            this.three_way_gain(inst, rooms, &fits)
        };
        let mut best = evaluate(self);
        for _round in 0..4 {
            let mut improved = false;
            for dim in 0..3 {
                for factor in [0.125, 0.5, 2.0, 8.0] {
                    let before = self.scale;
                    self.scale[dim] *= factor;
                    let bound = evaluate(self);
                    if bound < best {
                        best = bound;
                        improved = true;
                    } else {
                        self.scale = before;
                    }
                }
            }
            if !improved {
                break;
            }
        }
        self.surrogate_order = self.three_way_order(inst, &all);
    }

    /// Surrogate weight of candidate `k`: CPU, memory and traffic, each as a
    /// fraction of its room (negative when moving `k` lowers traffic a lot).
    fn weight(&self, inst: &Instance, k: usize) -> f64 {
        inst.cpu[k] as f64 * self.scale[0]
            + inst.memory[k] as f64 * self.scale[1]
            + self.delta[k] as f64 * self.scale[2]
    }

    /// `candidates` by three-way surrogate density, best first (free ones first).
    pub fn three_way_order(&self, inst: &Instance, candidates: &[usize]) -> Vec<usize> {
        let density = |k: usize| {
            let w = self.weight(inst, k);
            if w <= 0.0 {
                f64::INFINITY
            } else {
                inst.cpu[k] as f64 / w
            }
        };
        let mut order = candidates.to_vec();
        order.sort_by(|&a, &b| density(b).total_cmp(&density(a)).then(a.cmp(&b)));
        order
    }

    /// Dantzig bound of the surrogate that adds the CPU, memory and linear
    /// traffic constraints, each divided by its full room. Computed in f64, so
    /// it is padded (relative 1e-9 plus one millicore) to stay an upper bound
    /// despite rounding; the exact bounds above it need no padding.
    pub fn three_way_gain(
        &self,
        inst: &Instance,
        rooms: [f64; 3],
        usable: &impl Fn(usize) -> bool,
    ) -> u64 {
        let mut room: f64 = rooms.iter().zip(self.scale).map(|(r, s)| r * s).sum();
        let mut gain = 0.0f64;
        let mut partial = None;
        // Free candidates (weight <= 0) come first in this order and only add room.
        for &k in &self.surrogate_order {
            if !usable(k) {
                continue;
            }
            let w = self.weight(inst, k);
            if w <= 0.0 {
                room -= w;
                gain += inst.cpu[k] as f64;
            } else if room <= 0.0 {
                break;
            } else if w <= room {
                room -= w;
                gain += inst.cpu[k] as f64;
            } else {
                partial = Some(inst.cpu[k] as f64 * room / w);
                break;
            }
        }
        let gain = gain + partial.unwrap_or(0.0);
        let padded = gain * (1.0 + 1e-9) + 1.0;
        if padded >= u64::MAX as f64 {
            u64::MAX
        } else {
            padded as u64
        }
    }

    /// Most CPU the `usable` candidates can add while the linear traffic bound
    /// stays within `room` Mbit/s; `None` when even the best choice exceeds it.
    pub fn gain(&self, cpu: &[u64], room: i128, usable: &impl Fn(usize) -> bool) -> Option<u64> {
        let mut room = room;
        let mut gain: u128 = 0;
        for &k in &self.order {
            if !usable(k) {
                continue;
            }
            let d = self.delta[k];
            if d <= 0 {
                room -= d;
                gain += u128::from(cpu[k]);
                continue;
            }
            // Every free candidate came first: if they leave the room negative,
            // no choice keeps the traffic within the budget.
            if room < 0 {
                return None;
            }
            let (d, r) = (d.unsigned_abs(), room.unsigned_abs());
            if d <= r {
                room -= d as i128;
                gain += u128::from(cpu[k]);
            } else {
                // Overflow can only make the bound looser, never wrong.
                let c = u128::from(cpu[k]);
                gain += c.checked_mul(r).map_or(c, |x| x / d);
                break;
            }
        }
        if room < 0 {
            return None;
        }
        Some(u64::try_from(gain).unwrap_or(u64::MAX))
    }
}
