//! Property tests: exact equals brute force; every plan keeps capacity, budget and pins;
//! the heuristic never beats the exact solver.

use proptest::prelude::*;

use super::*;
use crate::error::Error;
use crate::instance::{Class, Instance};
use crate::model::{Edge, Request};
use crate::plan::Options;

/// Best (cpu, -mem, -crossing) over every subset of candidates, computed
/// straight from the problem; `None` if no subset is feasible.
fn brute_force(problem: &Problem) -> Option<(u64, u64, u64)> {
    let inst = Instance::new(problem).ok()?;
    let free = problem.dpu.free();
    let n = inst.candidates.len();
    let mut best: Option<(u64, u64, u64)> = None;
    for mask in 0u32..(1 << n) {
        let unit = |i: usize| match &inst.classes[i] {
            Class::Fixed(u, _) => *u,
            Class::Candidate => {
                let k = inst.candidates.iter().position(|&c| c == i).unwrap();
                if mask >> k & 1 == 1 {
                    Unit::Dpu
                } else {
                    Unit::Cpu
                }
            }
        };
        let (mut cpu, mut mem, mut cross) = (0u64, 0u64, 0u64);
        for (i, c) in problem.containers.iter().enumerate() {
            if unit(i) == Unit::Dpu {
                cpu += c.cpu_millis;
                mem += c.memory_bytes;
            }
        }
        for e in &problem.edges {
            if unit(e.a) != unit(e.b) {
                cross += e.mbps;
            }
        }
        let fits = cpu <= free.cpu_millis
            && mem <= free.memory_bytes
            && problem.dpu.traffic_budget_mbps.map_or(true, |b| cross <= b);
        let better = best.map_or(true, |(bc, bm, bx)| {
            (cpu, std::cmp::Reverse(mem), std::cmp::Reverse(cross))
                > (bc, std::cmp::Reverse(bm), std::cmp::Reverse(bx))
        });
        if fits && better {
            best = Some((cpu, mem, cross));
        }
    }
    best
}

/// Either any value below `max`, or a multiple of `step` below `max`: coarse
/// values make many plans tie on CPU, which exercises the tie-break bounds.
fn value(max: u64, step: u64) -> impl Strategy<Value = u64> {
    prop_oneof![0..max, (0..max / step).prop_map(move |x| x * step)]
}

fn arb_problem() -> impl Strategy<Value = Problem> {
    let arb_container = (
        value(1500, 100),
        value(4 * GI, GI),
        prop_oneof![Just(Role::Application), Just(Role::Infrastructure)],
        prop_oneof![
            6 => Just(None),
            1 => Just(Some(Request::Cpu)),
            1 => Just(Some(Request::Dpu)),
            2 => Just(Some(Request::Auto)),
        ],
        prop::bool::weighted(0.1),
    );
    prop::collection::vec(arb_container, 0..=14)
        .prop_flat_map(|cs| {
            let n = cs.len().max(1);
            let edges = prop::collection::vec((0..n, 0..n, value(200, 10)), 0..=2 * n);
            let cap = (
                value(5000, 100),
                value(12 * GI, GI),
                value(1000, 100),
                0u64..GI,
            );
            let budget = prop::option::of(value(400, 10));
            (Just(cs), edges, cap, budget)
        })
        .prop_map(|(cs, edges, (cpu, mem, used_cpu, used_mem), budget)| {
            let n = cs.len();
            let containers = cs
                .into_iter()
                .enumerate()
                .map(|(i, (cpu, mem, role, request, shares_pid))| Container {
                    pod: format!("pod{}", i % 3),
                    request: request.map(|r| (r, "test".to_string())),
                    shares_pid,
                    ..container(&format!("c{i}"), cpu, mem, role)
                })
                .collect();
            let edges = edges
                .into_iter()
                .filter(|(a, b, _)| *a < n && *b < n)
                .map(|(a, b, mbps)| Edge { a, b, mbps })
                .collect();
            Problem {
                containers,
                edges,
                dpu: Dpu {
                    capacity: Resources {
                        cpu_millis: cpu,
                        memory_bytes: mem,
                    },
                    used: Resources {
                        cpu_millis: used_cpu,
                        memory_bytes: used_mem,
                    },
                    traffic_budget_mbps: budget,
                },
            }
        })
}

/// Capacity, budget and pin invariants every plan must keep.
fn check_plan(problem: &Problem, plan: &Plan) -> Result<(), TestCaseError> {
    let cap = problem.dpu.capacity;
    prop_assert!(plan.dpu_used.cpu_millis <= cap.cpu_millis.max(problem.dpu.used.cpu_millis));
    prop_assert!(plan.dpu_used.memory_bytes <= cap.memory_bytes.max(problem.dpu.used.memory_bytes));
    let (mut cpu, mut mem, mut cross) = (0u64, 0u64, 0u64);
    for (c, d) in problem.containers.iter().zip(&plan.decisions) {
        let on_dpu = d.placement == Unit::Dpu;
        if on_dpu {
            cpu += c.cpu_millis;
            mem += c.memory_bytes;
        }
        match &c.request {
            Some((Request::Cpu, _)) => prop_assert!(!on_dpu, "pinned cpu offloaded"),
            Some((Request::Dpu, _)) => prop_assert!(on_dpu, "pinned dpu kept"),
            Some((Request::Auto, _)) => {}
            None => prop_assert!(!on_dpu || c.role == Role::Infrastructure, "app offloaded"),
        }
        prop_assert!(
            !on_dpu || !c.shares_pid || c.request.as_ref().is_some_and(|r| r.0 == Request::Dpu)
        );
    }
    let free = problem.dpu.free();
    prop_assert!(cpu <= free.cpu_millis && mem <= free.memory_bytes);
    for e in &problem.edges {
        if plan.decisions[e.a].placement != plan.decisions[e.b].placement {
            cross += e.mbps;
        }
    }
    prop_assert_eq!(cross, plan.crossing_mbps);
    prop_assert_eq!(cpu, plan.freed_cpu_millis);
    if let Some(budget) = problem.dpu.traffic_budget_mbps {
        prop_assert!(cross <= budget);
    }
    Ok(())
}

/// 500 cases unless PROPTEST_CASES says otherwise (e.g. for a long soak run).
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 500;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn exact_matches_brute_force(problem in arb_problem()) {
        let oracle = brute_force(&problem);
        match solve(&problem, Solver::Exact) {
            Ok(plan) => {
                check_plan(&problem, &plan)?;
                prop_assert!(plan.proven_optimal);
                let forced = Instance::new(&problem).unwrap().forced;
                let (cpu, mem, cross) = oracle.expect("exact found a plan brute force did not");
                prop_assert_eq!(plan.freed_cpu_millis, cpu);
                prop_assert_eq!(plan.dpu_used.memory_bytes - problem.dpu.used.memory_bytes, mem);
                prop_assert_eq!(plan.crossing_mbps, cross);
                prop_assert!(forced.cpu_millis <= cpu);
            }
            Err(Error::TrafficBudget { .. }) => prop_assert!(oracle.is_none()),
            Err(Error::PinnedDoesNotFit { .. } | Error::PinnedSharesPid { .. }) => {
                prop_assert!(Instance::new(&problem).is_err());
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn stopped_search_is_feasible_and_its_cpu_claim_holds(problem in arb_problem(), limit in 1u64..6) {
        let stopped = plan(&problem, &Options { solver: Solver::Exact, node_limit: limit });
        if let Ok(plan) = stopped {
            check_plan(&problem, &plan)?;
            let (cpu, _, _) = brute_force(&problem).expect("a plan brute force did not find");
            prop_assert!(plan.freed_cpu_millis <= cpu);
            if plan.cpu_proven_optimal {
                prop_assert_eq!(plan.freed_cpu_millis, cpu);
            }
        }
    }

    #[test]
    fn heuristic_is_feasible_and_never_beats_exact(problem in arb_problem()) {
        let exact = solve(&problem, Solver::Exact);
        if let Ok(plan) = solve(&problem, Solver::Heuristic) {
            check_plan(&problem, &plan)?;
            let exact = exact.expect("heuristic found a plan exact did not");
            let key = |p: &Plan| (
                p.freed_cpu_millis,
                std::cmp::Reverse(p.dpu_used.memory_bytes),
                std::cmp::Reverse(p.crossing_mbps),
            );
            prop_assert!(key(&plan) <= key(&exact));
        }
        if let Ok(plan) = solve(&problem, Solver::Both) {
            let cmp = plan.comparison.unwrap();
            prop_assert_eq!(cmp.exact_freed_cpu_millis, plan.freed_cpu_millis);
            if let Some(h) = cmp.heuristic_freed_cpu_millis {
                prop_assert_eq!(cmp.gap_millis, Some(plan.freed_cpu_millis - h));
            }
        }
    }
}
