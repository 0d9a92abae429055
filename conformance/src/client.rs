//! CRI client over a Unix socket: tonic channel with a `service_fn` connector, plus thin
//! wrappers for the calls the suite makes most often.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

/// Deadline for one unary CRI call; ExecSync adds its own timeout on top.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Runtime and image service clients sharing one channel.
#[derive(Clone)]
pub struct Cri {
    /// RuntimeService (sandboxes, containers, exec, stats).
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub image: ImageServiceClient<Channel>,
}

/// True when `err` carries a gRPC NotFound status.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    grpc_code(err) == Some(tonic::Code::NotFound)
}

/// The gRPC status code inside an error chain, if any.
pub fn grpc_code(err: &anyhow::Error) -> Option<tonic::Code> {
    err.chain()
        .find_map(|e| e.downcast_ref::<tonic::Status>())
        .map(|s| s.code())
}

impl Cri {
    /// Connects to the CRI socket at `path` (no `unix://` prefix).
    pub async fn connect(path: &Path) -> Result<Self> {
        let path: PathBuf = path.to_path_buf();
        // The URI is required by tonic but ignored: the connector always dials the socket.
        let channel =
            Endpoint::try_from("http://[::1]:50051")?
                .timeout(CALL_TIMEOUT)
                .connect_with_connector(service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .with_context(|| "connect to the CRI socket")?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            image: ImageServiceClient::new(channel),
        })
    }

    /// RuntimeService.Version.
    pub async fn version(&mut self) -> Result<cri::VersionResponse> {
        let req = cri::VersionRequest {
            version: "v1".into(),
        };
        Ok(self.runtime.version(req).await?.into_inner())
    }

    /// Runs a Pod sandbox with `handler` and returns its id.
    pub async fn run_pod(
        &mut self,
        config: &cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let resp = self
            .runtime
            .run_pod_sandbox(req)
            .await
            .context("RunPodSandbox")?;
        Ok(resp.into_inner().pod_sandbox_id)
    }

    /// StopPodSandbox.
    pub async fn stop_pod(&mut self, id: &str) -> Result<()> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime
            .stop_pod_sandbox(req)
            .await
            .context("StopPodSandbox")?;
        Ok(())
    }

    /// RemovePodSandbox.
    pub async fn remove_pod(&mut self, id: &str) -> Result<()> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime
            .remove_pod_sandbox(req)
            .await
            .context("RemovePodSandbox")?;
        Ok(())
    }

    /// PodSandboxStatus (verbose, so `info` is filled).
    pub async fn pod_status(&mut self, id: &str) -> Result<cri::PodSandboxStatusResponse> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        let resp = self
            .runtime
            .pod_sandbox_status(req)
            .await
            .context("PodSandboxStatus")?;
        Ok(resp.into_inner())
    }

    /// ListPodSandbox with an optional filter.
    pub async fn list_pods(
        &mut self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>> {
        let req = cri::ListPodSandboxRequest { filter };
        Ok(self
            .runtime
            .list_pod_sandbox(req)
            .await
            .context("ListPodSandbox")?
            .into_inner()
            .items)
    }

    /// Pods carrying all `labels`.
    pub async fn list_pods_labelled(
        &mut self,
        labels: HashMap<String, String>,
    ) -> Result<Vec<cri::PodSandbox>> {
        self.list_pods(Some(cri::PodSandboxFilter {
            label_selector: labels,
            ..Default::default()
        }))
        .await
    }

    /// CreateContainer in `pod_id`; `sandbox` must be the config the Pod was run with.
    pub async fn create_container(
        &mut self,
        pod_id: &str,
        config: &cri::ContainerConfig,
        sandbox: &cri::PodSandboxConfig,
    ) -> Result<String> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox.clone()),
        };
        let resp = self
            .runtime
            .create_container(req)
            .await
            .context("CreateContainer")?;
        Ok(resp.into_inner().container_id)
    }

    /// StartContainer.
    pub async fn start_container(&mut self, id: &str) -> Result<()> {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        self.runtime
            .start_container(req)
            .await
            .context("StartContainer")?;
        Ok(())
    }

    /// StopContainer with a grace period in seconds.
    pub async fn stop_container(&mut self, id: &str, timeout_s: i64) -> Result<()> {
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_s,
        };
        self.runtime
            .stop_container(req)
            .await
            .context("StopContainer")?;
        Ok(())
    }

    /// RemoveContainer.
    pub async fn remove_container(&mut self, id: &str) -> Result<()> {
        let req = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.runtime
            .remove_container(req)
            .await
            .context("RemoveContainer")?;
        Ok(())
    }

    /// ContainerStatus (verbose).
    pub async fn container_status(&mut self, id: &str) -> Result<cri::ContainerStatus> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        };
        let resp = self
            .runtime
            .container_status(req)
            .await
            .context("ContainerStatus")?;
        resp.into_inner()
            .status
            .context("ContainerStatus without status")
    }

    /// ListContainers with an optional filter.
    pub async fn list_containers(
        &mut self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>> {
        let req = cri::ListContainersRequest { filter };
        Ok(self
            .runtime
            .list_containers(req)
            .await
            .context("ListContainers")?
            .into_inner()
            .containers)
    }

    /// Containers of one Pod.
    pub async fn pod_containers(&mut self, pod_id: &str) -> Result<Vec<cri::Container>> {
        self.list_containers(Some(cri::ContainerFilter {
            pod_sandbox_id: pod_id.into(),
            ..Default::default()
        }))
        .await
    }

    /// ExecSync with a timeout in seconds (0 = none).
    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<cri::ExecSyncResponse> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        };
        let mut request = tonic::Request::new(req);
        if timeout_s > 0 {
            // Leave containerd room to report its own timeout before ours fires.
            request.set_timeout(Duration::from_secs(timeout_s as u64 + 30));
        }
        Ok(self
            .runtime
            .exec_sync(request)
            .await
            .context("ExecSync")?
            .into_inner())
    }

    /// ExecSync that must exit 0; returns stdout as text.
    pub async fn exec_ok(&mut self, id: &str, cmd: &[&str]) -> Result<String> {
        let resp = self.exec_sync(id, cmd, 30).await?;
        anyhow::ensure!(
            resp.exit_code == 0,
            "{cmd:?} exited {}: stdout {:?} stderr {:?}",
            resp.exit_code,
            String::from_utf8_lossy(&resp.stdout),
            String::from_utf8_lossy(&resp.stderr)
        );
        Ok(String::from_utf8_lossy(&resp.stdout).into_owned())
    }

    /// Exec: returns the streaming URL for `cmd`.
    pub async fn exec_url(
        &mut self,
        id: &str,
        cmd: &[&str],
        tty: bool,
        stdin: bool,
    ) -> Result<String> {
        let req = cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            // With a terminal, stderr is merged into it.
            stderr: !tty,
        };
        Ok(self
            .runtime
            .exec(req)
            .await
            .context("Exec")?
            .into_inner()
            .url)
    }

    /// Attach: returns the streaming URL for the container's main process.
    pub async fn attach_url(&mut self, id: &str, tty: bool, stdin: bool) -> Result<String> {
        let req = cri::AttachRequest {
            container_id: id.into(),
            stdin,
            tty,
            stdout: true,
            stderr: !tty,
        };
        Ok(self
            .runtime
            .attach(req)
            .await
            .context("Attach")?
            .into_inner()
            .url)
    }

    /// PortForward: returns the streaming URL for `ports` of Pod `pod_id`.
    pub async fn port_forward_url(&mut self, pod_id: &str, ports: &[u16]) -> Result<String> {
        let req = cri::PortForwardRequest {
            pod_sandbox_id: pod_id.into(),
            port: ports.iter().map(|p| i32::from(*p)).collect(),
        };
        Ok(self
            .runtime
            .port_forward(req)
            .await
            .context("PortForward")?
            .into_inner()
            .url)
    }

    /// ImageStatus of `image`; `None` when containerd does not know it.
    pub async fn image_status(&mut self, image: &str) -> Result<Option<cri::Image>> {
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        Ok(self
            .image
            .image_status(req)
            .await
            .context("ImageStatus")?
            .into_inner()
            .image)
    }
}
