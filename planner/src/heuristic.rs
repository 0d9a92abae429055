//! Fast heuristic, for inputs too large for the exact search (or to seed it).
//!
//! 1. **Greedy.** Rank candidates by CPU freed per weighted resource use, where
//!    use is `cpu/C + memory/M + t/B`: C and M are the DPU room, B the traffic
//!    budget and t the traffic the candidate would put across PUs if moved alone.
//!    Take them in that order while they fit the DPU.
//! 2. **Repair.** While crossing traffic exceeds the budget, make the single move
//!    that lowers it: offload a candidate that fits and brings the largest drop
//!    (it also frees CPU), else bring back the one losing least CPU per Mbit/s
//!    saved. Each move strictly lowers the traffic, so this ends.
//! 3. **Fill.** Offload any remaining candidate, in greedy order, that still fits
//!    the room and the budget.
//!
//! O(n log n + n·(n + edges)) time; no optimality guarantee.

use crate::error::{Error, Result};
use crate::instance::{Instance, Peer};
use crate::model::Unit;

pub(crate) fn solve(inst: &Instance) -> Result<Vec<bool>> {
    let n = inst.len();
    let order = greedy_order(inst);
    let mut on_dpu = vec![false; n];
    let (mut cpu, mut mem) = (0u64, 0u64);
    let fits = |k: usize, cpu: u64, mem: u64| {
        cpu + inst.cpu[k] <= inst.free.cpu_millis && mem + inst.memory[k] <= inst.free.memory_bytes
    };
    for &k in &order {
        if fits(k, cpu, mem) {
            on_dpu[k] = true;
            cpu += inst.cpu[k];
            mem += inst.memory[k];
        }
    }
    if let Some(budget) = inst.budget {
        let mut crossing = inst.evaluate(&on_dpu).crossing_mbps;
        while crossing > budget {
            let mut best_add: Option<(usize, i64)> = None;
            let mut best_drop: Option<(usize, f64)> = None;
            for k in 0..n {
                let delta = flip_delta(inst, &on_dpu, k);
                if delta >= 0 {
                    continue;
                }
                if !on_dpu[k] && fits(k, cpu, mem) {
                    if best_add.map_or(true, |(_, d)| delta < d) {
                        best_add = Some((k, delta));
                    }
                } else if on_dpu[k] {
                    let cost = inst.cpu[k] as f64 / (-delta) as f64;
                    if best_drop.map_or(true, |(_, c)| cost < c) {
                        best_drop = Some((k, cost));
                    }
                }
            }
            let Some(k) = best_add.map(|(k, _)| k).or(best_drop.map(|(k, _)| k)) else {
                return Err(Error::TrafficBudget {
                    budget_mbps: budget,
                    detail: format!("heuristic repair stuck at {crossing} Mbit/s"),
                });
            };
            crossing = crossing.saturating_add_signed(flip_delta(inst, &on_dpu, k));
            if on_dpu[k] {
                cpu -= inst.cpu[k];
                mem -= inst.memory[k];
            } else {
                cpu += inst.cpu[k];
                mem += inst.memory[k];
            }
            on_dpu[k] = !on_dpu[k];
        }
        for &k in &order {
            if !on_dpu[k] && fits(k, cpu, mem) {
                let delta = flip_delta(inst, &on_dpu, k);
                if crossing.saturating_add_signed(delta) <= budget {
                    on_dpu[k] = true;
                    cpu += inst.cpu[k];
                    mem += inst.memory[k];
                    crossing = crossing.saturating_add_signed(delta);
                }
            }
        }
    }
    Ok(on_dpu)
}

/// Candidates that fit alone, highest CPU per weighted use first.
fn greedy_order(inst: &Instance) -> Vec<usize> {
    let room_cpu = inst.free.cpu_millis.max(1) as f64;
    let room_mem = inst.free.memory_bytes.max(1) as f64;
    let budget = inst.budget.map(|b| b.max(1) as f64);
    let all_cpu = vec![false; inst.len()];
    let density = |k: usize| {
        let mut used = inst.cpu[k] as f64 / room_cpu + inst.memory[k] as f64 / room_mem;
        if let Some(b) = budget {
            used += flip_delta(inst, &all_cpu, k).max(0) as f64 / b;
        }
        inst.cpu[k] as f64 / used.max(f64::MIN_POSITIVE)
    };
    let mut ranked: Vec<(usize, f64)> = (0..inst.len())
        .filter(|&k| inst.fits_alone(k))
        .map(|k| (k, density(k)))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.into_iter().map(|(k, _)| k).collect()
}

/// Change in crossing traffic if candidate `k` switched units.
fn flip_delta(inst: &Instance, on_dpu: &[bool], k: usize) -> i64 {
    let here = on_dpu[k];
    inst.peers[k]
        .iter()
        .map(|(peer, mbps)| {
            let there = match *peer {
                Peer::Fixed(unit) => unit == Unit::Dpu,
                Peer::Candidate(j) => on_dpu[j],
            };
            let mbps = i64::try_from(*mbps).unwrap_or(i64::MAX);
            // Crossing now (here != there) stops after the flip, and vice versa.
            if here != there {
                -mbps
            } else {
                mbps
            }
        })
        .fold(0i64, i64::saturating_add)
}
