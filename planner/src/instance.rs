//! The solvers' view of a `Problem`: which containers are fixed, which are
//! candidates, the DPU room left after the fixed ones, and the traffic graph.

use std::cmp::Reverse;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{Problem, Request, Resources, Role, Unit};
use crate::plan::Reason;

/// How the planner may treat a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Class {
    /// On this unit whatever the plan.
    Fixed(Unit, Reason),
    /// The planner chooses.
    Candidate,
}

/// The other end of a candidate's traffic edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    Fixed(Unit),
    Candidate(usize),
}

/// How good a set of offloaded candidates is: more CPU freed, then less DPU
/// memory, then less crossing traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Score {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub crossing_mbps: u64,
}

impl Score {
    /// Larger is better.
    pub(crate) fn key(&self) -> (u64, Reverse<u64>, Reverse<u64>) {
        (
            self.cpu_millis,
            Reverse(self.memory_bytes),
            Reverse(self.crossing_mbps),
        )
    }
}

#[derive(Debug)]
pub(crate) struct Instance {
    pub classes: Vec<Class>,
    /// Container index of each candidate.
    pub candidates: Vec<usize>,
    pub cpu: Vec<u64>,
    pub memory: Vec<u64>,
    /// DPU room left once the containers fixed to it are placed.
    pub free: Resources,
    /// What the containers fixed to the DPU take.
    pub forced: Resources,
    pub budget: Option<u64>,
    /// Per candidate: its traffic peers.
    pub peers: Vec<Vec<(Peer, u64)>>,
    /// Crossing traffic between fixed containers, which no plan changes.
    pub base_crossing: u64,
}

impl Instance {
    pub fn new(problem: &Problem) -> Result<Instance> {
        let n = problem.containers.len();
        let mut classes = Vec::with_capacity(n);
        for c in &problem.containers {
            classes.push(classify(c)?);
        }
        let mut forced = Resources::default();
        let mut forced_names = Vec::new();
        for (c, class) in problem.containers.iter().zip(&classes) {
            if let Class::Fixed(Unit::Dpu, _) = class {
                forced.cpu_millis = forced.cpu_millis.saturating_add(c.cpu_millis);
                forced.memory_bytes = forced.memory_bytes.saturating_add(c.memory_bytes);
                forced_names.push(format!("{}/{}", c.pod, c.name));
            }
        }
        let free = problem.dpu.free();
        if forced.cpu_millis > free.cpu_millis || forced.memory_bytes > free.memory_bytes {
            return Err(Error::PinnedDoesNotFit {
                containers: forced_names.join(", "),
                need_millicores: forced.cpu_millis,
                need_bytes: forced.memory_bytes,
                free_millicores: free.cpu_millis,
                free_bytes: free.memory_bytes,
            });
        }
        let mut candidates = Vec::new();
        let mut slot = vec![None; n];
        for (i, class) in classes.iter().enumerate() {
            if *class == Class::Candidate {
                slot[i] = Some(candidates.len());
                candidates.push(i);
            }
        }
        let unit_of = |i: usize| match &classes[i] {
            Class::Fixed(unit, _) => *unit,
            Class::Candidate => Unit::Cpu,
        };
        let mut peers = vec![Vec::new(); candidates.len()];
        let mut base_crossing = 0u64;
        for e in &problem.edges {
            for index in [e.a, e.b] {
                if index >= n {
                    return Err(Error::EdgeOutOfRange { index, len: n });
                }
            }
            if e.a == e.b || e.mbps == 0 {
                continue;
            }
            match (slot[e.a], slot[e.b]) {
                (Some(a), Some(b)) => {
                    peers[a].push((Peer::Candidate(b), e.mbps));
                    peers[b].push((Peer::Candidate(a), e.mbps));
                }
                (Some(a), None) => peers[a].push((Peer::Fixed(unit_of(e.b)), e.mbps)),
                (None, Some(b)) => peers[b].push((Peer::Fixed(unit_of(e.a)), e.mbps)),
                (None, None) => {
                    if unit_of(e.a) != unit_of(e.b) {
                        base_crossing = base_crossing.saturating_add(e.mbps);
                    }
                }
            }
        }
        let cpu = candidates
            .iter()
            .map(|&i| problem.containers[i].cpu_millis)
            .collect();
        let memory = candidates
            .iter()
            .map(|&i| problem.containers[i].memory_bytes)
            .collect();
        Ok(Instance {
            classes,
            candidates,
            cpu,
            memory,
            free: Resources {
                cpu_millis: free.cpu_millis - forced.cpu_millis,
                memory_bytes: free.memory_bytes - forced.memory_bytes,
            },
            forced,
            budget: problem.dpu.traffic_budget_mbps,
            peers,
            base_crossing,
        })
    }

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// Whether candidate `k` could run on the DPU if it were the only one.
    pub fn fits_alone(&self, k: usize) -> bool {
        self.cpu[k] <= self.free.cpu_millis && self.memory[k] <= self.free.memory_bytes
    }

    /// The score of offloading exactly the candidates with `on_dpu[k]`.
    pub fn evaluate(&self, on_dpu: &[bool]) -> Score {
        let mut score = Score {
            crossing_mbps: self.base_crossing,
            ..Score::default()
        };
        for k in 0..self.len() {
            if on_dpu[k] {
                score.cpu_millis += self.cpu[k];
                score.memory_bytes += self.memory[k];
            }
            for (peer, mbps) in &self.peers[k] {
                let crosses = match *peer {
                    Peer::Fixed(unit) => (unit == Unit::Dpu) != on_dpu[k],
                    // Count candidate pairs once, from their lower end.
                    Peer::Candidate(j) => j > k && on_dpu[j] != on_dpu[k],
                };
                if crosses {
                    score.crossing_mbps += mbps;
                }
            }
        }
        score
    }

    /// Whether a score respects DPU room and the traffic budget.
    pub fn feasible(&self, score: &Score) -> bool {
        score.cpu_millis <= self.free.cpu_millis
            && score.memory_bytes <= self.free.memory_bytes
            && self.budget.map_or(true, |b| score.crossing_mbps <= b)
    }
}

fn classify(c: &crate::model::Container) -> Result<Class> {
    match &c.request {
        Some((Request::Cpu, annotation)) => {
            return Ok(Class::Fixed(
                Unit::Cpu,
                Reason::PinnedCpu {
                    annotation: annotation.clone(),
                },
            ))
        }
        Some((Request::Dpu, annotation)) => {
            if c.shares_pid {
                return Err(Error::PinnedSharesPid {
                    pod: c.pod.clone(),
                    container: c.name.clone(),
                    why: annotation.clone(),
                });
            }
            return Ok(Class::Fixed(
                Unit::Dpu,
                Reason::PinnedDpu {
                    annotation: annotation.clone(),
                },
            ));
        }
        Some((Request::Auto, _)) => {}
        None if c.role == Role::Application => {
            return Ok(Class::Fixed(Unit::Cpu, Reason::Application))
        }
        None => {}
    }
    Ok(if c.shares_pid {
        Class::Fixed(Unit::Cpu, Reason::SharesPid)
    } else if c.cpu_millis == 0 {
        Class::Fixed(Unit::Cpu, Reason::NoCpuRequest)
    } else {
        Class::Candidate
    })
}
