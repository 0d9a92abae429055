//! How the solvers scale with the number of containers on a node.
//!
//! `cargo run --release -p heteropod-planner --example scale [N...]` prints one row
//! per size: a synthetic node of Pods with an application container and one or two
//! sidecars (infrastructure), traffic between them, a DPU with room for about a
//! third of the sidecars' CPU, and a traffic budget; once with requests in steps of
//! 25m (as manifests usually have) and once with any millicore value (the hard
//! case for the bound). Timings are one run each.

use std::time::Instant;

use heteropod_planner::{plan, Container, Dpu, Edge, Options, Problem, Resources, Role, Solver};

/// A small deterministic generator, so every run plans the same node.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn node(containers: usize, seed: u64, fine: bool) -> Problem {
    let mut rng = Lcg(seed);
    let mut problem = Problem::default();
    let mut infra_cpu = 0;
    let mut pod = 0;
    while problem.containers.len() < containers {
        let app = problem.containers.len();
        let sidecars = 1 + rng.next(2) as usize;
        for k in 0..=sidecars {
            if problem.containers.len() == containers {
                break;
            }
            let role = if k == 0 {
                Role::Application
            } else {
                Role::Infrastructure
            };
            // Requests in steps of 25m, like real manifests, or any millicore value.
            let cpu = if fine {
                50 + rng.next(500)
            } else {
                50 + rng.next(20) * 25
            };
            if role == Role::Infrastructure {
                infra_cpu += cpu;
            }
            problem.containers.push(Container {
                pod: format!("pod-{pod}"),
                name: format!("c{k}"),
                image: "img".into(),
                cpu_millis: cpu,
                memory_bytes: (16 + rng.next(240)) << 20,
                role,
                request: None,
                shares_pid: false,
            });
            if k > 0 {
                let mbps = rng.next(100);
                problem.edges.push(Edge {
                    a: app,
                    b: problem.containers.len() - 1,
                    mbps,
                });
            }
        }
        pod += 1;
    }
    problem.dpu = Dpu {
        capacity: Resources {
            cpu_millis: infra_cpu / 3,
            memory_bytes: (containers as u64 / 4).max(1) * (96 << 20),
        },
        used: Resources::default(),
        traffic_budget_mbps: Some(containers as u64 * 10),
    };
    problem
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![16, 50, 100, 200, 400]
    } else {
        sizes
    };
    for fine in [false, true] {
        println!(
            "\nCPU requests in {}",
            if fine {
                "any millicore value"
            } else {
                "steps of 25m"
            }
        );
        table(&sizes, fine);
    }
}

fn table(sizes: &[usize], fine: bool) {
    println!(
        "{:>10} {:>10} {:>12} {:>12} {:>8} {:>14} {:>10} {:>8}",
        "containers",
        "candidates",
        "exact ms",
        "nodes",
        "proven",
        "heuristic ms",
        "freed m",
        "gap %"
    );
    for &n in sizes {
        let problem = node(n, 42 + n as u64, fine);
        let start = Instant::now();
        let exact = plan(
            &problem,
            &Options {
                solver: Solver::Both,
                ..Options::default()
            },
        );
        let exact_ms = start.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        let heuristic = plan(
            &problem,
            &Options {
                solver: Solver::Heuristic,
                ..Options::default()
            },
        );
        let heuristic_ms = start.elapsed().as_secs_f64() * 1e3;
        match (exact, heuristic) {
            (Ok(e), Ok(_)) => {
                let gap = e.comparison.and_then(|c| c.gap_percent).unwrap_or(f64::NAN);
                println!(
                    "{:>10} {:>10} {:>12.2} {:>12} {:>8} {:>14.3} {:>10} {:>8.2}",
                    n,
                    e.candidates,
                    exact_ms,
                    e.search_nodes.unwrap_or(0),
                    e.proven_optimal,
                    heuristic_ms,
                    e.freed_cpu_millis,
                    gap
                );
            }
            (e, h) => println!("{n:>10} exact: {:?} heuristic: {:?}", e.err(), h.err()),
        }
    }
}
