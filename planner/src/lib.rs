//! HeteroPod's offload planner: which containers of a node's Pods to run on the
//! DPU so that the most host CPU is freed, within the DPU's cores and memory and
//! a budget on traffic crossing the two processing units.
//!
//! `manifest` reads Kubernetes YAML, `annotations` turns it into a `Problem`,
//! and `plan` solves it exactly (branch and bound, `exact`) or fast (`heuristic`).

#[cfg(feature = "manifests")]
pub mod annotations;
pub mod error;
mod exact;
mod heuristic;
mod instance;
#[cfg(feature = "manifests")]
pub mod manifest;
pub mod model;
pub mod plan;
pub mod quantity;
mod traffic_bound;

#[cfg(feature = "manifests")]
pub use annotations::{build_problem, RolePolicy};
pub use error::{Error, Result};
pub use instance::Score;
#[cfg(feature = "manifests")]
pub use manifest::{parse_manifests, Manifests, PodManifest};
pub use model::{Container, Dpu, Edge, Problem, Request, Resources, Role, Unit};
pub use plan::{plan, Comparison, Decision, Limit, Options, Plan, Reason, Solver};
#[cfg(all(test, feature = "manifests"))]
mod solver_tests;
