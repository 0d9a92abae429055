//! The DPU agent's side: capacity, its containers and its Pod network halves.

use heteropod_dpu_proxy::client::{ContainerInfo, PodNetworkInfo};
use heteropod_dpu_proxy::{AgentClient, DpuAgent};

use super::Capacity;

#[derive(Debug, Clone, Default)]
pub struct DpuView {
    pub capacity: Capacity,
    pub containers: Vec<DpuContainer>,
    pub networks: Vec<PodNetworkInfo>,
}

#[derive(Debug, Clone)]
pub struct DpuContainer {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    /// `created`, `running`, `stopped`, `paused` or `unknown`.
    pub state: String,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            cpus: String::new(),
            cores_total: 0,
            reserved_millicores: 0,
            memory_total_bytes: 0,
            memory_reserved_bytes: 0,
            memory_used_bytes: 0,
            cpu_seconds_used: 0.0,
            running_containers: 0,
        }
    }
}

/// Asks the agent at `endpoint`; the error is a sentence for operators.
pub async fn query(endpoint: &str, key_file: Option<&std::path::Path>) -> Result<DpuView, String> {
    let agent = AgentClient::connect_with_key(endpoint, key_file)
        .await
        .map_err(|e| format!("cannot reach the agent at {endpoint}: {e}"))?;
    let cap = agent
        .capacity()
        .await
        .map_err(|e| format!("capacity from {endpoint}: {e}"))?;
    let containers = agent
        .list_containers()
        .await
        .map_err(|e| format!("container list from {endpoint}: {e}"))?;
    let networks = agent
        .list_pod_networks()
        .await
        .map_err(|e| format!("Pod network list from {endpoint}: {e}"))?;
    Ok(DpuView {
        capacity: Capacity {
            cpus: cap.cpus.clone(),
            cores_total: cap.total_cores,
            reserved_millicores: cap.reserved_millicores,
            memory_total_bytes: cap.total_memory_bytes,
            memory_reserved_bytes: cap.reserved_memory_bytes,
            memory_used_bytes: cap.used_memory_bytes,
            cpu_seconds_used: cap.used_cpu_nanos as f64 / 1e9,
            running_containers: cap.running_containers,
        },
        containers: containers.iter().map(container).collect(),
        networks,
    })
}

fn container(c: &ContainerInfo) -> DpuContainer {
    let state = match c.status.enum_value() {
        Ok(s) => format!("{s:?}").to_lowercase(),
        Err(_) => "unknown".to_string(),
    };
    DpuContainer {
        id: c.id.clone(),
        pod_id: c.pod_id.clone(),
        name: c.name.clone(),
        state,
    }
}

/// The states the agent reports, for metrics that list every state.
pub const STATES: [&str; 5] = ["created", "running", "stopped", "paused", "unknown"];
