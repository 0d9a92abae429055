//! Errors of the planner: bad input (quantities, YAML, annotations) and plans that cannot exist.

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid quantity {input:?}: {reason}")]
    Quantity { input: String, reason: &'static str },

    #[error("{source_name}, document {document}: {message}")]
    Yaml {
        source_name: String,
        document: usize,
        message: String,
    },

    #[error("{source_name}, document {document} ({kind} {name}): {message}")]
    Manifest {
        source_name: String,
        document: usize,
        kind: String,
        name: String,
        message: String,
    },

    #[error("pod {pod}: annotation {key}: {message}")]
    Annotation {
        pod: String,
        key: String,
        message: String,
    },

    #[error("pod {pod}: container {container} must run on the DPU ({why}) but shares a PID namespace (shareProcessNamespace or hostPID), which cannot span the CPU and the DPU")]
    PinnedSharesPid {
        pod: String,
        container: String,
        why: String,
    },

    #[error("containers pinned to the DPU need {need_millicores}m CPU and {need_bytes} bytes of memory, but the DPU has {free_millicores}m and {free_bytes} bytes free: {containers}")]
    PinnedDoesNotFit {
        containers: String,
        need_millicores: u64,
        need_bytes: u64,
        free_millicores: u64,
        free_bytes: u64,
    },

    #[error("no placement keeps the traffic crossing CPU and DPU within the budget of {budget_mbps} Mbit/s ({detail})")]
    TrafficBudget { budget_mbps: u64, detail: String },

    #[error("exact search could not run: {0}")]
    Search(String),

    #[error("container index {index} in a traffic edge is out of range ({len} containers)")]
    EdgeOutOfRange { index: usize, len: usize },
}
