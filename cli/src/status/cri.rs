//! The CPU side as containerd's CRI API sees it: Pod sandboxes and their
//! containers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};
use tower::service_fn;

/// Deadline of one CRI call; a status command must not hang on containerd.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default)]
pub struct CriPod {
    pub id: String,
    pub name: String,
    pub namespace: String,
    /// Empty when containerd does not say (older CRI plugins).
    pub runtime_handler: String,
    pub ip: Option<String>,
    /// `ready` or `notready`.
    pub state: String,
    pub containers: Vec<CriContainer>,
}

#[derive(Debug, Clone)]
pub struct CriContainer {
    pub id: String,
    pub name: String,
    /// `created`, `running`, `exited` or `unknown`.
    pub state: String,
}

/// `unix:///path` or `/path`.
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

/// Every Pod sandbox with its containers.
pub async fn list_pods(socket: &Path) -> Result<Vec<CriPod>> {
    if !socket.exists() {
        anyhow::bail!("socket not found");
    }
    let path = socket.to_path_buf();
    // tonic wants a URI; the connector ignores it and dials the socket.
    let channel = Endpoint::try_from("http://[::1]:50051")?
        .timeout(CALL_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .context("connect")?;
    let mut rt = RuntimeServiceClient::new(channel);
    let sandboxes = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .context("ListPodSandbox")?
        .into_inner()
        .items;
    let containers = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .context("ListContainers")?
        .into_inner()
        .containers;
    let mut by_pod: HashMap<String, Vec<CriContainer>> = HashMap::new();
    for c in containers {
        let state = cri::ContainerState::try_from(c.state)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("CONTAINER_")
                    .to_lowercase()
            })
            .unwrap_or_else(|_| "unknown".into());
        by_pod
            .entry(c.pod_sandbox_id)
            .or_default()
            .push(CriContainer {
                id: c.id,
                name: c.metadata.map(|m| m.name).unwrap_or_default(),
                state,
            });
    }
    let mut pods = Vec::new();
    for s in sandboxes {
        let meta = s.metadata.unwrap_or_default();
        // The Pod IP and, on older containerd, the handler live in the status.
        let status = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: s.id.clone(),
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().status);
        let ip = status
            .as_ref()
            .and_then(|st| st.network.as_ref())
            .map(|n| n.ip.clone())
            .filter(|ip| !ip.is_empty());
        let runtime_handler = if s.runtime_handler.is_empty() {
            status.map(|st| st.runtime_handler).unwrap_or_default()
        } else {
            s.runtime_handler
        };
        let state = match cri::PodSandboxState::try_from(s.state) {
            Ok(cri::PodSandboxState::SandboxReady) => "ready",
            Ok(cri::PodSandboxState::SandboxNotready) => "notready",
            Err(_) => "unknown",
        };
        pods.push(CriPod {
            containers: by_pod.remove(&s.id).unwrap_or_default(),
            id: s.id,
            name: meta.name,
            namespace: meta.namespace,
            runtime_handler,
            ip,
            state: state.to_string(),
        });
    }
    Ok(pods)
}
