//! Planning entry point and the plan it returns.

use serde::{Serialize, Serializer};

use crate::error::Result;
use crate::instance::{Class, Instance, Score};
use crate::model::{Problem, Resources, Role, Unit};
use crate::{exact, heuristic};

/// Nodes the exact search may visit before it settles for its best plan so far.
pub const DEFAULT_NODE_LIMIT: u64 = 2_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    Exact,
    Heuristic,
    /// Both; the plan is the exact one and the gap is reported.
    Both,
}

impl std::fmt::Display for Solver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Solver::Exact => "exact",
            Solver::Heuristic => "heuristic",
            Solver::Both => "both",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub solver: Solver,
    pub node_limit: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            solver: Solver::Exact,
            node_limit: DEFAULT_NODE_LIMIT,
        }
    }
}

/// Why a container ends up where it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Application,
    PinnedCpu { annotation: String },
    PinnedDpu { annotation: String },
    SharesPid,
    NoCpuRequest,
    Chosen,
    NotChosen(Limit),
}

/// What kept a candidate on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    DpuCpu,
    DpuMemory,
    TrafficBudget,
    /// It fits, but the solver did not take it (only when not proven optimal).
    NotTaken,
}

impl Reason {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Application => "application",
            Reason::PinnedCpu { .. } => "pinned-cpu",
            Reason::PinnedDpu { .. } => "pinned-dpu",
            Reason::SharesPid => "shares-pid-namespace",
            Reason::NoCpuRequest => "no-cpu-request",
            Reason::Chosen => "chosen",
            Reason::NotChosen(Limit::DpuCpu) => "dpu-cpu-full",
            Reason::NotChosen(Limit::DpuMemory) => "dpu-memory-full",
            Reason::NotChosen(Limit::TrafficBudget) => "traffic-budget",
            Reason::NotChosen(Limit::NotTaken) => "not-taken",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Application => f.write_str("application container"),
            Reason::PinnedCpu { annotation } => write!(f, "pinned to cpu by {annotation}"),
            Reason::PinnedDpu { annotation } => write!(f, "pinned to dpu by {annotation}"),
            Reason::SharesPid => f.write_str("Pod shares its PID namespace; cannot span PUs"),
            Reason::NoCpuRequest => f.write_str("no CPU request; offloading frees none"),
            Reason::Chosen => f.write_str("chosen by planner"),
            Reason::NotChosen(Limit::DpuCpu) => f.write_str("not enough DPU cores left"),
            Reason::NotChosen(Limit::DpuMemory) => f.write_str("not enough DPU memory left"),
            Reason::NotChosen(Limit::TrafficBudget) => {
                f.write_str("would exceed the crossing-traffic budget")
            }
            Reason::NotChosen(Limit::NotTaken) => f.write_str("fits, but not taken by the solver"),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Reason", 2)?;
        s.serialize_field("code", self.code())?;
        s.serialize_field("text", &self.to_string())?;
        s.end()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub pod: String,
    pub container: String,
    pub image: String,
    pub role: Role,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub placement: Unit,
    pub reason: Reason,
}

/// The heuristic against the exact plan, when both ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// CPU the heuristic's plan frees, or `None` if it found no plan in budget.
    pub heuristic_freed_cpu_millis: Option<u64>,
    pub heuristic_error: Option<String>,
    pub exact_freed_cpu_millis: u64,
    /// `exact - heuristic` freed millicores.
    pub gap_millis: Option<u64>,
    /// The gap as a percentage of the exact plan's freed CPU.
    pub gap_percent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// One per container, in input order.
    pub decisions: Vec<Decision>,
    pub candidates: usize,
    /// Host CPU freed: requests of every container placed on the DPU.
    pub freed_cpu_millis: u64,
    pub dpu_capacity: Resources,
    /// DPU use after the plan, including what it already ran.
    pub dpu_used: Resources,
    pub crossing_mbps: u64,
    pub traffic_budget_mbps: Option<u64>,
    /// The solver whose plan this is.
    pub solver: Solver,
    pub proven_optimal: bool,
    /// The CPU freed is proven maximal, even if the tie-breaks (less memory,
    /// then less traffic) were not settled within the node limit.
    pub cpu_proven_optimal: bool,
    /// Nodes the exact search visited.
    pub search_nodes: Option<u64>,
    pub comparison: Option<Comparison>,
}

/// Chooses which containers of `problem` run on the DPU.
pub fn plan(problem: &Problem, options: &Options) -> Result<Plan> {
    let inst = Instance::new(problem)?;
    let (on_dpu, solver, proven, nodes, comparison) = match options.solver {
        Solver::Heuristic => {
            let on_dpu = heuristic::solve(&inst)?;
            let trivial = inst.len() == 0;
            (on_dpu, Solver::Heuristic, (trivial, trivial), None, None)
        }
        Solver::Exact | Solver::Both => {
            let greedy = heuristic::solve(&inst);
            let outcome = exact::solve(&inst, greedy.as_deref().ok(), options.node_limit)?;
            let comparison =
                (options.solver == Solver::Both).then(|| compare(&inst, &greedy, &outcome.score));
            (
                outcome.on_dpu,
                Solver::Exact,
                (outcome.proven_optimal, outcome.cpu_proven_optimal),
                Some(outcome.nodes),
                comparison,
            )
        }
    };
    Ok(assemble(
        problem, &inst, &on_dpu, solver, proven, nodes, comparison,
    ))
}

fn compare(inst: &Instance, greedy: &Result<Vec<bool>>, exact: &Score) -> Comparison {
    let (freed, error) = match greedy {
        Ok(on_dpu) => (Some(inst.evaluate(on_dpu).cpu_millis), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let forced = inst.forced.cpu_millis;
    let gap = freed.map(|h| exact.cpu_millis.saturating_sub(h));
    let exact_total = exact.cpu_millis + forced;
    Comparison {
        heuristic_freed_cpu_millis: freed.map(|h| h + forced),
        heuristic_error: error,
        exact_freed_cpu_millis: exact_total,
        gap_millis: gap,
        gap_percent: gap.map(|g| {
            if exact_total == 0 {
                0.0
            } else {
                100.0 * g as f64 / exact_total as f64
            }
        }),
    }
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    problem: &Problem,
    inst: &Instance,
    on_dpu: &[bool],
    solver: Solver,
    (proven_optimal, cpu_proven_optimal): (bool, bool),
    search_nodes: Option<u64>,
    comparison: Option<Comparison>,
) -> Plan {
    let score = inst.evaluate(on_dpu);
    let mut candidate_of = vec![None; problem.containers.len()];
    for (k, &i) in inst.candidates.iter().enumerate() {
        candidate_of[i] = Some(k);
    }
    let room_cpu = inst.free.cpu_millis - score.cpu_millis;
    let room_mem = inst.free.memory_bytes - score.memory_bytes;
    let mut freed = 0u64;
    let mut dpu_used = problem.dpu.used;
    let decisions = problem
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (placement, reason) = match (&inst.classes[i], candidate_of[i]) {
                (Class::Fixed(unit, reason), _) => (*unit, reason.clone()),
                (Class::Candidate, Some(k)) if on_dpu[k] => (Unit::Dpu, Reason::Chosen),
                (Class::Candidate, k) => {
                    let limit = if c.cpu_millis > room_cpu {
                        Limit::DpuCpu
                    } else if c.memory_bytes > room_mem {
                        Limit::DpuMemory
                    } else if k.is_some_and(|k| {
                        let mut flipped = on_dpu.to_vec();
                        flipped[k] = true;
                        !inst.feasible(&inst.evaluate(&flipped))
                    }) {
                        Limit::TrafficBudget
                    } else {
                        Limit::NotTaken
                    };
                    (Unit::Cpu, Reason::NotChosen(limit))
                }
            };
            if placement == Unit::Dpu {
                freed += c.cpu_millis;
                dpu_used.cpu_millis += c.cpu_millis;
                dpu_used.memory_bytes += c.memory_bytes;
            }
            Decision {
                pod: c.pod.clone(),
                container: c.name.clone(),
                image: c.image.clone(),
                role: c.role,
                cpu_millis: c.cpu_millis,
                memory_bytes: c.memory_bytes,
                placement,
                reason,
            }
        })
        .collect();
    Plan {
        decisions,
        candidates: inst.len(),
        freed_cpu_millis: freed,
        dpu_capacity: problem.dpu.capacity,
        dpu_used,
        crossing_mbps: score.crossing_mbps,
        traffic_budget_mbps: problem.dpu.traffic_budget_mbps,
        solver,
        proven_optimal,
        cpu_proven_optimal,
        search_nodes,
        comparison,
    }
}
