//! `DpuAgent` and its ttrpc implementation.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use async_trait::async_trait;
use protobuf::EnumOrUnknown;
use ttrpc::context::{self, Context};

use super::*;
use crate::{
    auth::AuthKey,
    error::{Error, Result},
    proto as pb,
    transport::Endpoint,
    API_VERSION,
};

/// Everything the shim asks of a DPU agent. An empty `exec_id` addresses the
/// container's init process.
#[async_trait]
pub trait DpuAgent: Send + Sync {
    async fn version(&self) -> Result<VersionResponse>;
    async fn capacity(&self) -> Result<CapacityResponse>;

    /// Returns the init pid.
    async fn create_container(&self, req: CreateContainerRequest) -> Result<u32>;
    /// Starts the init process or a registered exec; returns its pid.
    async fn start(&self, id: &str, exec_id: &str) -> Result<u32>;
    async fn state(&self, id: &str, exec_id: &str) -> Result<StateResponse>;
    /// Long poll until the process exits.
    async fn wait(&self, id: &str, exec_id: &str) -> Result<WaitResponse>;
    async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()>;
    async fn delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse>;
    /// Registers an exec (started by `start`).
    async fn exec(&self, req: ExecRequest) -> Result<()>;
    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()>;
    async fn close_io(&self, id: &str, exec_id: &str) -> Result<()>;
    async fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>>;
    async fn pause(&self, id: &str) -> Result<()>;
    async fn resume(&self, id: &str) -> Result<()>;
    /// `resources_json`: an OCI LinuxResources object.
    async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()>;
    async fn stats(&self, id: &str) -> Result<StatsResponse>;

    /// Long poll: output from `offset` on (acknowledging what is before it).
    async fn read_output(
        &self,
        id: &str,
        exec_id: &str,
        stream: Stream,
        offset: u64,
        max_bytes: u32,
    ) -> Result<ReadOutputResponse>;
    /// Returns the bytes written (all of `data`).
    async fn write_input(&self, id: &str, exec_id: &str, data: Vec<u8>) -> Result<u32>;
    /// Long poll: events after `after_seq` of agent run `instance`.
    async fn wait_events(&self, after_seq: u64, instance: &str) -> Result<WaitEventsResponse>;

    async fn create_pod_network(
        &self,
        req: CreatePodNetworkRequest,
    ) -> Result<CreatePodNetworkResponse>;
    async fn destroy_pod_network(&self, pod_id: &str) -> Result<()>;
}

/// A connection to one agent. Clones share the connection; after the agent
/// restarted (calls fail with `DpuUnreachable`), [`AgentClient::reconnect`]
/// replaces it for every clone.
#[derive(Clone)]
pub struct AgentClient {
    address: String,
    key_file: Option<PathBuf>,
    raw: Arc<RwLock<pb::RawAgentClient>>,
}

fn ctx(timeout: Duration) -> Context {
    context::with_timeout(timeout.as_nanos() as i64)
}

fn proc_req(id: &str, exec_id: &str) -> pb::ProcessRequest {
    pb::ProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

fn ctr_req(id: &str) -> pb::ContainerRequest {
    pb::ContainerRequest {
        container_id: id.into(),
        ..Default::default()
    }
}

impl AgentClient {
    /// Connects to `url` (`unix:///path`, `tcp://host:port`, `vsock://cid:port`)
    /// and checks the agent speaks [`API_VERSION`]. Unix sockets only: network
    /// transports need the node key ([`AgentClient::connect_with_key`]).
    pub async fn connect(url: &str) -> Result<AgentClient> {
        Self::connect_with_key(url, None).await
    }

    /// Like [`AgentClient::connect`]; network transports authenticate with
    /// the key in `key_file` (read again at every reconnect, so a new key
    /// takes effect without a restart). Unix sockets ignore it.
    pub async fn connect_with_key(url: &str, key_file: Option<&Path>) -> Result<AgentClient> {
        let ep: Endpoint = url.parse()?;
        let key_file = key_file.map(Path::to_path_buf);
        let raw = Self::dial(&ep, key_file.as_deref()).await?;
        let c = AgentClient {
            address: ep.to_string(),
            key_file,
            raw: Arc::new(RwLock::new(raw)),
        };
        c.check_version().await?;
        Ok(c)
    }

    /// Opens a new connection to the same agent and checks its version.
    pub async fn reconnect(&self) -> Result<()> {
        let ep: Endpoint = self.address.parse()?;
        let fresh = AgentClient {
            address: self.address.clone(),
            key_file: self.key_file.clone(),
            raw: Arc::new(RwLock::new(
                Self::dial(&ep, self.key_file.as_deref()).await?,
            )),
        };
        fresh.check_version().await?;
        let raw = fresh.raw();
        *self.raw.write().unwrap_or_else(|p| p.into_inner()) = raw;
        Ok(())
    }

    async fn check_version(&self) -> Result<()> {
        let v = self.version().await?;
        if v.api_version != API_VERSION {
            return Err(Error::VersionMismatch {
                agent: v.api_version,
                client: API_VERSION,
            });
        }
        Ok(())
    }

    async fn dial(ep: &Endpoint, key_file: Option<&Path>) -> Result<pb::RawAgentClient> {
        let key = match key_file.filter(|_| ep.is_network()) {
            Some(path) => Some(AuthKey::load(path).map_err(|e| Error::Unauthenticated {
                address: ep.to_string(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        let socket = ep.connect(CONNECT_TIMEOUT, key.as_ref()).await?;
        Ok(pb::RawAgentClient::new(ttrpc::r#async::Client::new(socket)))
    }

    /// The key file network connections authenticate with, if any.
    pub fn key_file(&self) -> Option<&Path> {
        self.key_file.as_deref()
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Every container the agent knows, for operators (not part of
    /// [`DpuAgent`]: the shim never needs it).
    pub async fn list_containers(&self) -> Result<Vec<ContainerInfo>> {
        let r = self
            .raw()
            .list_containers(ctx(LIST_TIMEOUT), &pb::Empty::new())
            .await
            .map_err(self.err())?;
        Ok(r.containers)
    }

    /// Every Pod network half with its relay's counters.
    pub async fn list_pod_networks(&self) -> Result<Vec<PodNetworkInfo>> {
        let r = self
            .raw()
            .list_pod_networks(ctx(LIST_TIMEOUT), &pb::Empty::new())
            .await
            .map_err(self.err())?;
        Ok(r.pods)
    }

    /// The current connection (cloned: no lock is held across an RPC).
    fn raw(&self) -> pb::RawAgentClient {
        self.raw.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn err(&self) -> impl Fn(ttrpc::Error) -> Error + '_ {
        |e| Error::from_ttrpc(&self.address, e)
    }
}

#[async_trait]
impl DpuAgent for AgentClient {
    async fn version(&self) -> Result<VersionResponse> {
        self.raw()
            .version(ctx(VERSION_TIMEOUT), &pb::Empty::new())
            .await
            .map_err(self.err())
    }

    async fn capacity(&self) -> Result<CapacityResponse> {
        self.raw()
            .capacity(ctx(CAPACITY_TIMEOUT), &pb::Empty::new())
            .await
            .map_err(self.err())
    }

    async fn create_container(&self, req: CreateContainerRequest) -> Result<u32> {
        let r = self
            .raw()
            .create_container(ctx(CREATE_TIMEOUT), &req)
            .await
            .map_err(self.err())?;
        Ok(r.pid)
    }

    async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let r = self
            .raw()
            .start(ctx(START_TIMEOUT), &proc_req(id, exec_id))
            .await
            .map_err(self.err())?;
        Ok(r.pid)
    }

    async fn state(&self, id: &str, exec_id: &str) -> Result<StateResponse> {
        self.raw()
            .state(ctx(STATE_TIMEOUT), &proc_req(id, exec_id))
            .await
            .map_err(self.err())
    }

    async fn wait(&self, id: &str, exec_id: &str) -> Result<WaitResponse> {
        self.raw()
            .wait(ctx(NO_TIMEOUT), &proc_req(id, exec_id))
            .await
            .map_err(self.err())
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let req = pb::KillRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            signal,
            all,
            ..Default::default()
        };
        self.raw()
            .kill(ctx(KILL_TIMEOUT), &req)
            .await
            .map_err(self.err())
            .map(drop)
    }

    async fn delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        self.raw()
            .delete(ctx(DELETE_TIMEOUT), &proc_req(id, exec_id))
            .await
            .map_err(self.err())
    }

    async fn exec(&self, req: ExecRequest) -> Result<()> {
        self.raw()
            .exec(ctx(EXEC_TIMEOUT), &req)
            .await
            .map_err(self.err())
            .map(drop)
    }

    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = pb::ResizePtyRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            width,
            height,
            ..Default::default()
        };
        self.raw()
            .resize_pty(ctx(RESIZE_PTY_TIMEOUT), &req)
            .await
            .map_err(self.err())
            .map(drop)
    }

    async fn close_io(&self, id: &str, exec_id: &str) -> Result<()> {
        self.raw()
            .close_io(ctx(CLOSE_IO_TIMEOUT), &proc_req(id, exec_id))
            .await
            .map_err(self.err())
            .map(drop)
    }

    async fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        let r = self
            .raw()
            .pids(ctx(PIDS_TIMEOUT), &ctr_req(id))
            .await
            .map_err(self.err())?;
        Ok(r.processes)
    }

    async fn pause(&self, id: &str) -> Result<()> {
        self.raw()
            .pause(ctx(PAUSE_TIMEOUT), &ctr_req(id))
            .await
            .map_err(self.err())
            .map(drop)
    }

    async fn resume(&self, id: &str) -> Result<()> {
        self.raw()
            .resume(ctx(RESUME_TIMEOUT), &ctr_req(id))
            .await
            .map_err(self.err())
            .map(drop)
    }

    async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        let req = pb::UpdateRequest {
            container_id: id.into(),
            resources_json,
            ..Default::default()
        };
        self.raw()
            .update(ctx(UPDATE_TIMEOUT), &req)
            .await
            .map_err(self.err())
            .map(drop)
    }

    async fn stats(&self, id: &str) -> Result<StatsResponse> {
        self.raw()
            .stats(ctx(STATS_TIMEOUT), &ctr_req(id))
            .await
            .map_err(self.err())
    }

    async fn read_output(
        &self,
        id: &str,
        exec_id: &str,
        stream: Stream,
        offset: u64,
        max_bytes: u32,
    ) -> Result<ReadOutputResponse> {
        let req = pb::ReadOutputRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            stream: EnumOrUnknown::new(stream),
            offset,
            max_bytes,
            ..Default::default()
        };
        self.raw()
            .read_output(ctx(NO_TIMEOUT), &req)
            .await
            .map_err(self.err())
    }

    async fn write_input(&self, id: &str, exec_id: &str, data: Vec<u8>) -> Result<u32> {
        let req = pb::WriteInputRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            data,
            ..Default::default()
        };
        let r = self
            .raw()
            .write_input(ctx(WRITE_INPUT_TIMEOUT), &req)
            .await
            .map_err(self.err())?;
        Ok(r.written)
    }

    async fn wait_events(&self, after_seq: u64, instance: &str) -> Result<WaitEventsResponse> {
        let req = pb::WaitEventsRequest {
            after_seq,
            instance: instance.into(),
            ..Default::default()
        };
        self.raw()
            .wait_events(ctx(NO_TIMEOUT), &req)
            .await
            .map_err(self.err())
    }

    async fn create_pod_network(
        &self,
        req: CreatePodNetworkRequest,
    ) -> Result<CreatePodNetworkResponse> {
        self.raw()
            .create_pod_network(ctx(POD_NETWORK_TIMEOUT), &req)
            .await
            .map_err(self.err())
    }

    async fn destroy_pod_network(&self, pod_id: &str) -> Result<()> {
        let req = pb::DestroyPodNetworkRequest {
            pod_id: pod_id.into(),
            ..Default::default()
        };
        self.raw()
            .destroy_pod_network(ctx(POD_NETWORK_TIMEOUT), &req)
            .await
            .map_err(self.err())
            .map(drop)
    }
}
