//! The planning problem: containers, the traffic between them, and the DPU.

use serde::Serialize;

/// What a container is for. Only infrastructure may be moved by the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Application,
    Infrastructure,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Application => "application",
            Role::Infrastructure => "infrastructure",
        })
    }
}

/// A processing unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Cpu,
    Dpu,
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unit::Cpu => "cpu",
            Unit::Dpu => "dpu",
        })
    }
}

/// An explicit placement request from the Pod's annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    /// Must stay on the host CPU.
    Cpu,
    /// Must go to the DPU; the plan fails if it cannot.
    Dpu,
    /// The planner decides, whatever the role.
    Auto,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    /// The Pod (or workload template) this container belongs to.
    pub pod: String,
    pub name: String,
    pub image: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub role: Role,
    /// The explicit request and the annotation that made it.
    pub request: Option<(Request, String)>,
    /// The Pod shares one PID namespace (`shareProcessNamespace` or `hostPID`),
    /// which cannot span CPU and DPU.
    pub shares_pid: bool,
}

/// Expected traffic between two containers (indices into `Problem::containers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub a: usize,
    pub b: usize,
    pub mbps: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// The DPU: what it has, what it already runs, and the cross-PU traffic budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Dpu {
    pub capacity: Resources,
    pub used: Resources,
    /// Most Mbit/s allowed on edges whose ends run on different units; `None` = no limit.
    pub traffic_budget_mbps: Option<u64>,
}

impl Dpu {
    /// What is left for this plan.
    pub fn free(&self) -> Resources {
        Resources {
            cpu_millis: self
                .capacity
                .cpu_millis
                .saturating_sub(self.used.cpu_millis),
            memory_bytes: self
                .capacity
                .memory_bytes
                .saturating_sub(self.used.memory_bytes),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub containers: Vec<Container>,
    pub edges: Vec<Edge>,
    pub dpu: Dpu,
}
