//! What `heteropod status` and `heteropod metrics` report: one snapshot of the
//! node gathered from the DPU agent, containerd's CRI API and the CPU-side
//! relays' stats sockets. Every source may be missing; what it would have
//! said stays `None` and a warning names the source.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

pub mod cri;
pub mod dpu;
pub mod node;
pub mod prom;
pub mod relay;
pub mod render;

/// Where to gather from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The DPU agent's endpoint; `None` when none is configured.
    pub endpoint: Option<String>,
    /// The node key network agents want.
    pub key_file: Option<PathBuf>,
    /// containerd's CRI socket.
    pub cri_socket: PathBuf,
    /// Sandboxes of this runtime handler are HeteroPod Pods.
    pub runtime_handler: String,
    /// Where the CPU-side relays serve their counters.
    pub relay_stats_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub dpu: DpuStatus,
    pub cri: CriStatus,
    pub pods: Vec<Pod>,
    pub relays: Vec<Relay>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DpuStatus {
    pub endpoint: Option<String>,
    /// Why the agent could not be asked; `None` when it answered.
    pub error: Option<String>,
    pub capacity: Option<Capacity>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// Cpuset list of the DPU cores ("2-3").
    pub cpus: String,
    pub cores_total: u32,
    pub reserved_millicores: u64,
    pub memory_total_bytes: u64,
    pub memory_reserved_bytes: u64,
    pub memory_used_bytes: u64,
    pub cpu_seconds_used: f64,
    pub running_containers: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct CriStatus {
    pub socket: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pod {
    /// The Pod sandbox id.
    pub id: String,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub ip: Option<String>,
    /// `ready` / `notready` from CRI.
    pub state: Option<String>,
    /// Some container runs on the DPU or the agent holds its network half.
    pub split: bool,
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Container {
    pub id: String,
    pub name: Option<String>,
    pub runs_on: Side,
    pub state: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Cpu,
    Dpu,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Cpu => "cpu",
            Side::Dpu => "dpu",
        }
    }
}

/// One half of a split Pod's HeteroNet relay.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Relay {
    pub pod_id: String,
    pub side: Option<Side>,
    pub pid: Option<u32>,
    /// Only the DPU agent counts restarts (the shim keeps its own to itself).
    pub restarts: Option<u32>,
    pub counters: Option<relay::RelayCounters>,
    /// Why the counters are missing.
    pub error: Option<String>,
}

/// Gathers everything; never fails, missing sources become warnings.
pub async fn gather(src: &Sources) -> Snapshot {
    let mut warnings = Vec::new();
    let dpu = match &src.endpoint {
        Some(ep) => dpu::query(ep, src.key_file.as_deref()).await,
        None => Err("no DPU agent endpoint is configured".to_string()),
    };
    let (dpu_status, dpu_view) = match dpu {
        Ok(view) => (
            DpuStatus {
                endpoint: src.endpoint.clone(),
                error: None,
                capacity: Some(view.capacity.clone()),
            },
            Some(view),
        ),
        Err(e) => {
            warnings.push(format!("DPU agent: {e}"));
            let status = DpuStatus {
                endpoint: src.endpoint.clone(),
                error: Some(e),
                capacity: None,
            };
            (status, None)
        }
    };
    let cri_pods = match cri::list_pods(&src.cri_socket).await {
        Ok(p) => Ok(p),
        Err(e) => {
            let e = format!("{e:#}");
            warnings.push(format!(
                "containerd CRI at {}: {e}; showing the DPU side only",
                src.cri_socket.display()
            ));
            Err(e)
        }
    };
    let cri_status = CriStatus {
        socket: src.cri_socket.display().to_string(),
        error: cri_pods.as_ref().err().cloned(),
    };
    let pods = merge_pods(
        cri_pods.unwrap_or_default(),
        dpu_view.as_ref(),
        &src.runtime_handler,
    );
    let mut relays = Vec::new();
    for pod in pods.iter().filter(|p| p.split && p.id != "-") {
        relays.push(relay::cpu_side(&pod.id, &src.relay_stats_dir).await);
        if let Some(net) = dpu_view
            .as_ref()
            .and_then(|v| v.networks.iter().find(|n| n.pod_id == pod.id))
        {
            relays.push(relay::dpu_side(net));
        }
    }
    Snapshot {
        dpu: dpu_status,
        cri: cri_status,
        pods,
        relays,
        warnings,
    }
}

/// Joins the CRI view with the agent's: a container is on the DPU when the
/// agent lists its id; DPU containers and Pod networks CRI did not report
/// (containerd down) still get their Pod, keyed by sandbox id.
fn merge_pods(cri: Vec<cri::CriPod>, dpu: Option<&dpu::DpuView>, handler: &str) -> Vec<Pod> {
    let empty = dpu::DpuView::default();
    let dpu = dpu.unwrap_or(&empty);
    let on_dpu: BTreeMap<&str, &dpu::DpuContainer> =
        dpu.containers.iter().map(|c| (c.id.as_str(), c)).collect();
    let known_to_agent = |id: &str| {
        dpu.networks.iter().any(|n| n.pod_id == id) || dpu.containers.iter().any(|c| c.pod_id == id)
    };
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    for p in cri {
        let ours =
            p.runtime_handler == handler || (p.runtime_handler.is_empty() && known_to_agent(&p.id));
        if !ours {
            continue;
        }
        let containers = p
            .containers
            .into_iter()
            .map(|c| match on_dpu.get(c.id.as_str()) {
                Some(d) => Container {
                    id: c.id,
                    name: Some(c.name),
                    runs_on: Side::Dpu,
                    state: Some(d.state.clone()),
                },
                None => Container {
                    id: c.id,
                    name: Some(c.name),
                    runs_on: Side::Cpu,
                    state: Some(c.state),
                },
            })
            .collect();
        let pod = Pod {
            id: p.id.clone(),
            name: Some(p.name),
            namespace: Some(p.namespace),
            ip: p.ip,
            state: Some(p.state),
            split: false,
            containers,
        };
        pods.insert(p.id, pod);
    }
    let blank = |id: &str| -> Pod {
        Pod {
            id: id.to_string(),
            name: None,
            namespace: None,
            ip: None,
            state: None,
            split: false,
            containers: Vec::new(),
        }
    };
    for c in &dpu.containers {
        let key = if c.pod_id.is_empty() {
            "-"
        } else {
            c.pod_id.as_str()
        };
        let pod = pods.entry(key.to_string()).or_insert_with(|| blank(key));
        if !pod.containers.iter().any(|x| x.id == c.id) {
            pod.containers.push(Container {
                id: c.id.clone(),
                name: (!c.name.is_empty()).then(|| c.name.clone()),
                runs_on: Side::Dpu,
                state: Some(c.state.clone()),
            });
        }
    }
    for n in &dpu.networks {
        let pod = pods
            .entry(n.pod_id.clone())
            .or_insert_with(|| blank(&n.pod_id));
        if pod.ip.is_none() && !n.pod_ip.is_empty() {
            pod.ip = Some(n.pod_ip.split('/').next().unwrap_or_default().to_string());
        }
    }
    let mut pods: Vec<Pod> = pods.into_values().collect();
    for pod in &mut pods {
        pod.split = pod.containers.iter().any(|c| c.runs_on == Side::Dpu)
            || dpu.networks.iter().any(|n| n.pod_id == pod.id);
        pod.containers
            .sort_by(|a, b| (a.runs_on, &a.name, &a.id).cmp(&(b.runs_on, &b.name, &b.id)));
    }
    pods
}
