//! Solver tests: hand-checked optima (`cases`), and property tests against brute
//! force enumeration of every subset of candidates, n <= 14 (`properties`).

use crate::model::{Container, Dpu, Problem, Resources, Role, Unit};
use crate::plan::{plan, Options, Plan, Solver};

mod cases;
mod properties;

pub(super) const GI: u64 = 1 << 30;

pub(super) fn container(name: &str, cpu: u64, mem: u64, role: Role) -> Container {
    Container {
        pod: "p".into(),
        name: name.into(),
        image: format!("img/{name}"),
        cpu_millis: cpu,
        memory_bytes: mem,
        role,
        request: None,
        shares_pid: false,
    }
}

pub(super) fn infra(name: &str, cpu: u64, mem: u64) -> Container {
    container(name, cpu, mem, Role::Infrastructure)
}

pub(super) fn dpu(cpu: u64, mem: u64) -> Dpu {
    Dpu {
        capacity: Resources {
            cpu_millis: cpu,
            memory_bytes: mem,
        },
        ..Dpu::default()
    }
}

pub(super) fn solve(problem: &Problem, solver: Solver) -> crate::Result<Plan> {
    plan(
        problem,
        &Options {
            solver,
            ..Options::default()
        },
    )
}

pub(super) fn offloaded(plan: &Plan) -> Vec<&str> {
    plan.decisions
        .iter()
        .filter(|d| d.placement == Unit::Dpu)
        .map(|d| d.container.as_str())
        .collect()
}
