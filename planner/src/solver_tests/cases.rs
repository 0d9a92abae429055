//! Small cases whose optimum is checked by hand.

use super::*;
use crate::error::Error;
use crate::model::{Edge, Request};
use crate::plan::{Limit, Reason};

#[test]
fn exact_beats_greedy_on_the_knapsack_trap() {
    let sut = Problem {
        containers: vec![
            infra("a", 600, GI),
            infra("b", 500, GI),
            infra("c", 500, GI),
        ],
        edges: vec![],
        dpu: dpu(1000, 8 * GI),
    };
    let plan = solve(&sut, Solver::Both).unwrap();
    assert_eq!(offloaded(&plan), ["b", "c"]);
    assert_eq!(plan.freed_cpu_millis, 1000);
    assert!(plan.proven_optimal);
    let cmp = plan.comparison.unwrap();
    assert_eq!(cmp.heuristic_freed_cpu_millis, Some(600));
    assert_eq!(cmp.gap_millis, Some(400));
    assert_eq!(cmp.gap_percent, Some(40.0));
    let greedy = solve(&sut, Solver::Heuristic).unwrap();
    assert_eq!(offloaded(&greedy), ["a"]);
    assert!(!greedy.proven_optimal);
}

#[test]
fn equal_cpu_prefers_less_memory_then_less_traffic() {
    let mut sut = Problem {
        containers: vec![
            container("app", 1000, GI, Role::Application),
            infra("fat", 500, 2 * GI),
            infra("quiet", 500, GI),
            infra("chatty", 500, GI),
        ],
        edges: vec![Edge {
            a: 0,
            b: 3,
            mbps: 10,
        }],
        dpu: dpu(500, 4 * GI),
    };
    let plan = solve(&sut, Solver::Exact).unwrap();
    assert_eq!(offloaded(&plan), ["quiet"]);
    assert_eq!(plan.crossing_mbps, 0);
    // Memory comes before traffic: the chatty one beats the fat one.
    sut.containers[2].memory_bytes = 3 * GI;
    let plan = solve(&sut, Solver::Exact).unwrap();
    assert_eq!(offloaded(&plan), ["chatty"]);
    assert_eq!(plan.crossing_mbps, 10);
}

#[test]
fn traffic_budget_keeps_a_chatty_sidecar_home() {
    let sut = Problem {
        containers: vec![
            container("app", 1000, GI, Role::Application),
            infra("proxy", 500, GI),
            infra("logs", 200, GI),
        ],
        edges: vec![
            Edge {
                a: 0,
                b: 1,
                mbps: 100,
            },
            Edge {
                a: 0,
                b: 2,
                mbps: 5,
            },
        ],
        dpu: Dpu {
            traffic_budget_mbps: Some(50),
            ..dpu(4000, 8 * GI)
        },
    };
    for solver in [Solver::Exact, Solver::Heuristic] {
        let plan = solve(&sut, solver).unwrap();
        assert_eq!(offloaded(&plan), ["logs"], "{solver:?}");
        assert_eq!(plan.crossing_mbps, 5);
        assert_eq!(
            plan.decisions[1].reason,
            Reason::NotChosen(Limit::TrafficBudget)
        );
        assert_eq!(plan.decisions[0].reason, Reason::Application);
    }
}

#[test]
fn talking_pair_moves_together_under_a_budget() {
    let sut = Problem {
        containers: vec![infra("a", 300, GI), infra("b", 300, GI)],
        edges: vec![Edge {
            a: 0,
            b: 1,
            mbps: 80,
        }],
        dpu: Dpu {
            traffic_budget_mbps: Some(50),
            ..dpu(1000, 8 * GI)
        },
    };
    let plan = solve(&sut, Solver::Both).unwrap();
    assert_eq!(offloaded(&plan), ["a", "b"]);
    assert_eq!(plan.crossing_mbps, 0);
}

#[test]
fn pins_and_pid_sharing_are_respected() {
    let mut pinned_cpu = infra("pinned-cpu", 100, 1);
    pinned_cpu.request = Some((Request::Cpu, "heteropod.io/placement.pinned-cpu".into()));
    let mut pinned_dpu = container("pinned-dpu", 700, 1, Role::Application);
    pinned_dpu.request = Some((Request::Dpu, "heteropod.io/offload".into()));
    let mut shared = infra("shared", 100, 1);
    shared.shares_pid = true;
    let mut auto_app = container("auto-app", 200, 1, Role::Application);
    auto_app.request = Some((Request::Auto, "heteropod.io/placement.auto-app".into()));
    let sut = Problem {
        containers: vec![
            pinned_cpu,
            pinned_dpu,
            shared,
            auto_app,
            infra("no-request", 0, 1),
        ],
        edges: vec![],
        dpu: Dpu {
            used: Resources {
                cpu_millis: 100,
                memory_bytes: 0,
            },
            ..dpu(1000, GI)
        },
    };
    let plan = solve(&sut, Solver::Exact).unwrap();
    assert_eq!(offloaded(&plan), ["pinned-dpu", "auto-app"]);
    assert_eq!(plan.freed_cpu_millis, 900);
    assert_eq!(plan.dpu_used.cpu_millis, 1000);
    let codes: Vec<&str> = plan.decisions.iter().map(|d| d.reason.code()).collect();
    assert_eq!(
        codes,
        [
            "pinned-cpu",
            "pinned-dpu",
            "shares-pid-namespace",
            "chosen",
            "no-cpu-request"
        ]
    );
}

#[test]
fn pinned_dpu_that_cannot_fit_is_an_error() {
    let mut big = infra("big", 3000, GI);
    big.request = Some((Request::Dpu, "heteropod.io/placement.big".into()));
    let sut = Problem {
        containers: vec![big],
        edges: vec![],
        dpu: dpu(2000, 8 * GI),
    };
    let err = solve(&sut, Solver::Exact).unwrap_err();
    assert!(matches!(err, Error::PinnedDoesNotFit { .. }), "{err}");
    assert!(err.to_string().contains("p/big"), "{err}");
}

#[test]
fn pinned_dpu_sharing_pid_is_an_error() {
    let mut c = infra("agent", 100, 1);
    c.request = Some((Request::Dpu, "heteropod.io/offload".into()));
    c.shares_pid = true;
    let sut = Problem {
        containers: vec![c],
        edges: vec![],
        dpu: dpu(2000, GI),
    };
    let err = solve(&sut, Solver::Exact).unwrap_err();
    assert!(matches!(err, Error::PinnedSharesPid { .. }), "{err}");
}

#[test]
fn infeasible_budget_is_reported() {
    let mut pinned = infra("proxy", 100, 1);
    pinned.request = Some((Request::Dpu, "heteropod.io/offload".into()));
    let sut = Problem {
        containers: vec![container("app", 100, 1, Role::Application), pinned],
        edges: vec![Edge {
            a: 0,
            b: 1,
            mbps: 100,
        }],
        dpu: Dpu {
            traffic_budget_mbps: Some(10),
            ..dpu(2000, GI)
        },
    };
    for solver in [Solver::Exact, Solver::Heuristic] {
        let err = solve(&sut, solver).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TrafficBudget {
                    budget_mbps: 10,
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn node_limit_returns_best_found_not_proven() {
    let containers = (0..40)
        .map(|i| infra(&format!("c{i}"), 100 + (i * 37) % 250, GI + (i * 7919) % GI))
        .collect();
    let sut = Problem {
        containers,
        edges: vec![],
        dpu: dpu(2345, 12 * GI),
    };
    let plan = plan(
        &sut,
        &Options {
            solver: Solver::Exact,
            node_limit: 10,
        },
    )
    .unwrap();
    assert!(!plan.proven_optimal);
    assert!(plan.dpu_used.cpu_millis <= 2345);
    assert!(plan.freed_cpu_millis > 0);
}

#[test]
fn edge_out_of_range_is_an_error() {
    let sut = Problem {
        containers: vec![infra("a", 1, 1)],
        edges: vec![Edge {
            a: 0,
            b: 5,
            mbps: 1,
        }],
        dpu: dpu(1, 1),
    };
    assert!(matches!(
        solve(&sut, Solver::Exact).unwrap_err(),
        Error::EdgeOutOfRange { index: 5, len: 1 }
    ));
}

/// A deterministic node of `n` sidecar-style candidates with traffic to an app each,
/// and optionally a traffic budget tight enough to bind with cores and memory.
fn synthetic_node(n: usize, budget: bool) -> Problem {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let mut problem = Problem::default();
    for i in 0..n {
        problem
            .containers
            .push(container(&format!("app{i}"), 500, GI, Role::Application));
        problem.containers.push(infra(
            &format!("sidecar{i}"),
            50 + next(20) * 25,
            (16 + next(240)) << 20,
        ));
        problem.edges.push(Edge {
            a: 2 * i,
            b: 2 * i + 1,
            mbps: next(100),
        });
    }
    let infra_cpu: u64 = problem
        .containers
        .iter()
        .skip(1)
        .step_by(2)
        .map(|c| c.cpu_millis)
        .sum();
    problem.dpu = Dpu {
        traffic_budget_mbps: budget.then_some(n as u64 * 10),
        ..dpu(infra_cpu / 3, n as u64 * (48 << 20))
    };
    problem
}

#[test]
fn exact_proves_a_node_sized_input_optimal() {
    let sut = synthetic_node(300, false);
    let plan = solve(&sut, Solver::Both).unwrap();
    assert!(plan.proven_optimal);
    assert_eq!(plan.candidates, 300);
    let cmp = plan.comparison.unwrap();
    assert!(cmp.heuristic_freed_cpu_millis.unwrap() <= plan.freed_cpu_millis);
    assert!(plan.dpu_used.cpu_millis <= sut.dpu.capacity.cpu_millis);
    assert!(plan.dpu_used.memory_bytes <= sut.dpu.capacity.memory_bytes);
}

#[test]
fn node_limited_search_is_feasible_and_at_least_the_heuristic() {
    // Cores, memory and traffic all bind here: the search stops at its limit
    // while settling the memory tie-break, with the CPU freed already proven.
    let sut = synthetic_node(300, true);
    let plan = plan(
        &sut,
        &Options {
            solver: Solver::Both,
            node_limit: 20_000,
        },
    )
    .unwrap();
    assert!(!plan.proven_optimal);
    assert!(plan.cpu_proven_optimal);
    assert_eq!(plan.search_nodes, Some(20_001));
    let cmp = plan.comparison.unwrap();
    assert!(cmp.heuristic_freed_cpu_millis.unwrap() <= plan.freed_cpu_millis);
    assert!(plan.dpu_used.cpu_millis <= sut.dpu.capacity.cpu_millis);
    assert!(plan.crossing_mbps <= sut.dpu.traffic_budget_mbps.unwrap());
}

#[test]
fn thousands_of_candidates_do_not_overflow_the_stack() {
    let sut = synthetic_node(8_000, true);
    let plan = plan(
        &sut,
        &Options {
            solver: Solver::Exact,
            // Enough to dive the whole depth once.
            node_limit: 9_000,
        },
    )
    .unwrap();
    assert!(plan.freed_cpu_millis > 0);
    assert!(plan.dpu_used.cpu_millis <= sut.dpu.capacity.cpu_millis);
}
