//! The ttrpc face of the agent: decodes requests, calls the `Runtime` or
//! `Networks`, encodes replies; errors become status codes (error.rs).
use std::sync::Arc;

use async_trait::async_trait;
use protobuf::EnumOrUnknown;
use ttrpc::r#async::TtrpcContext;

use super::{events::EventKind, network::Networks, process, runtime::Runtime};
use crate::{
    error::Error,
    proto::{self as pb, Agent},
    AGENT_VERSION, API_VERSION,
};

pub struct AgentService {
    pub runtime: Arc<Runtime>,
    pub networks: Arc<Networks>,
}

type R<T> = ttrpc::Result<T>;

fn status_of(s: process::Status) -> pb::Status {
    match s {
        process::Status::Created => pb::Status::CREATED,
        process::Status::Running => pb::Status::RUNNING,
        process::Status::Paused => pb::Status::PAUSED,
        process::Status::Stopped => pb::Status::STOPPED,
    }
}

fn wrap<T>(r: crate::Result<T>) -> R<T> {
    r.map_err(|e| {
        if !matches!(e, Error::NotFound(_)) {
            tracing::debug!("request failed: {e}");
        }
        e.into()
    })
}

#[async_trait]
impl Agent for AgentService {
    async fn version(&self, _: &TtrpcContext, _: pb::Empty) -> R<pb::VersionResponse> {
        Ok(pb::VersionResponse {
            api_version: API_VERSION,
            agent_version: AGENT_VERSION.into(),
            ..Default::default()
        })
    }

    async fn capacity(&self, _: &TtrpcContext, _: pb::Empty) -> R<pb::CapacityResponse> {
        let c = self.runtime.capacity();
        Ok(pb::CapacityResponse {
            cpus: c.cpus,
            total_cores: c.total_cores,
            total_memory_bytes: c.total_memory_bytes,
            reserved_millicores: c.reserved.millicores,
            reserved_memory_bytes: c.reserved.memory_bytes,
            used_memory_bytes: c.used.memory_usage,
            used_cpu_nanos: c.used.cpu_nanos,
            running_containers: c.running,
            ..Default::default()
        })
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        r: pb::CreateContainerRequest,
    ) -> R<pb::CreateContainerResponse> {
        let pid = wrap(
            self.runtime
                .create(&r.id, &r.bundle, r.stdin, r.terminal)
                .await,
        )?;
        Ok(pb::CreateContainerResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _: &TtrpcContext, r: pb::ProcessRequest) -> R<pb::StartResponse> {
        let pid = wrap(self.runtime.start(&r.container_id, &r.exec_id).await)?;
        Ok(pb::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(&self, _: &TtrpcContext, r: pb::ProcessRequest) -> R<pb::StateResponse> {
        let c = wrap(self.runtime.get(&r.container_id))?;
        let p = wrap(c.process(&r.exec_id))?;
        let rec = p.record();
        let exit = rec.exit.clone().unwrap_or(process::Exit {
            status: 0,
            at_nanos: 0,
            reason: String::new(),
        });
        Ok(pb::StateResponse {
            container_id: c.id.clone(),
            exec_id: rec.exec_id,
            bundle: c.bundle.display().to_string(),
            pid: rec.pid,
            status: EnumOrUnknown::new(status_of(rec.status)),
            stdin: rec.stdin,
            terminal: rec.terminal,
            exit_status: exit.status,
            exited_at_nanos: exit.at_nanos,
            reason: exit.reason,
            ..Default::default()
        })
    }

    async fn wait(&self, _: &TtrpcContext, r: pb::ProcessRequest) -> R<pb::WaitResponse> {
        let e = wrap(self.runtime.wait(&r.container_id, &r.exec_id).await)?;
        Ok(pb::WaitResponse {
            exit_status: e.status,
            exited_at_nanos: e.at_nanos,
            reason: e.reason,
            ..Default::default()
        })
    }

    async fn kill(&self, _: &TtrpcContext, r: pb::KillRequest) -> R<pb::Empty> {
        wrap(
            self.runtime
                .kill(&r.container_id, &r.exec_id, r.signal, r.all)
                .await,
        )?;
        Ok(pb::Empty::new())
    }

    async fn delete(&self, _: &TtrpcContext, r: pb::ProcessRequest) -> R<pb::DeleteResponse> {
        let (pid, e) = wrap(self.runtime.delete(&r.container_id, &r.exec_id).await)?;
        Ok(pb::DeleteResponse {
            pid,
            exit_status: e.status,
            exited_at_nanos: e.at_nanos,
            ..Default::default()
        })
    }

    async fn exec(&self, _: &TtrpcContext, r: pb::ExecRequest) -> R<pb::Empty> {
        wrap(
            self.runtime
                .exec(
                    &r.container_id,
                    &r.exec_id,
                    &r.process_json,
                    r.stdin,
                    r.terminal,
                )
                .await,
        )?;
        Ok(pb::Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, r: pb::ResizePtyRequest) -> R<pb::Empty> {
        wrap(
            self.runtime
                .resize_pty(&r.container_id, &r.exec_id, r.width, r.height)
                .await,
        )?;
        Ok(pb::Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, r: pb::ProcessRequest) -> R<pb::Empty> {
        wrap(self.runtime.close_io(&r.container_id, &r.exec_id).await)?;
        Ok(pb::Empty::new())
    }

    async fn pids(&self, _: &TtrpcContext, r: pb::ContainerRequest) -> R<pb::PidsResponse> {
        let pids = wrap(self.runtime.pids(&r.container_id).await)?;
        Ok(pb::PidsResponse {
            processes: pids
                .into_iter()
                .map(|(pid, exec_id)| pb::ProcessInfo {
                    pid,
                    exec_id,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _: &TtrpcContext, r: pb::ContainerRequest) -> R<pb::Empty> {
        wrap(self.runtime.pause(&r.container_id).await)?;
        Ok(pb::Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, r: pb::ContainerRequest) -> R<pb::Empty> {
        wrap(self.runtime.resume(&r.container_id).await)?;
        Ok(pb::Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, r: pb::UpdateRequest) -> R<pb::Empty> {
        wrap(
            self.runtime
                .update(&r.container_id, &r.resources_json)
                .await,
        )?;
        Ok(pb::Empty::new())
    }

    async fn stats(&self, _: &TtrpcContext, r: pb::ContainerRequest) -> R<pb::StatsResponse> {
        let u = wrap(self.runtime.stats(&r.container_id))?;
        Ok(pb::StatsResponse {
            memory_usage_bytes: u.memory_usage,
            memory_max_usage_bytes: u.memory_max_usage,
            memory_limit_bytes: u.memory_limit,
            memory_failcnt: u.memory_failcnt,
            cpu_usage_nanos: u.cpu_nanos,
            pids_current: u.pids,
            oom_kills: u.oom_kills,
            ..Default::default()
        })
    }

    async fn read_output(
        &self,
        _: &TtrpcContext,
        r: pb::ReadOutputRequest,
    ) -> R<pb::ReadOutputResponse> {
        wrap(crate::ids::validate_exec_id(&r.exec_id))?;
        let c = wrap(self.runtime.get(&r.container_id))?;
        let p = wrap(c.process(&r.exec_id))?;
        let out = match r.stream.enum_value() {
            Ok(pb::Stream::STDOUT) => p.stdout.clone(),
            Ok(pb::Stream::STDERR) => p.stderr.clone(),
            Err(v) => return Err(Error::InvalidArgument(format!("unknown stream {v}")).into()),
        };
        let chunk = out.read(r.offset, r.max_bytes as usize).await;
        Ok(pb::ReadOutputResponse {
            offset: chunk.offset,
            data: chunk.data,
            eof: chunk.eof,
            ..Default::default()
        })
    }

    async fn write_input(
        &self,
        _: &TtrpcContext,
        r: pb::WriteInputRequest,
    ) -> R<pb::WriteInputResponse> {
        let n = wrap(
            self.runtime
                .write_input(&r.container_id, &r.exec_id, &r.data)
                .await,
        )?;
        Ok(pb::WriteInputResponse {
            written: n as u32,
            ..Default::default()
        })
    }

    async fn wait_events(
        &self,
        _: &TtrpcContext,
        r: pb::WaitEventsRequest,
    ) -> R<pb::WaitEventsResponse> {
        let events = self.runtime.events.wait(r.after_seq, &r.instance).await;
        Ok(pb::WaitEventsResponse {
            instance: self.runtime.events.instance.clone(),
            events: events
                .into_iter()
                .map(|e| pb::Event {
                    seq: e.seq,
                    kind: EnumOrUnknown::new(match e.kind {
                        EventKind::Exit => pb::EventKind::EXIT,
                        EventKind::Oom => pb::EventKind::OOM,
                    }),
                    container_id: e.container_id,
                    exec_id: e.exec_id,
                    pid: e.pid,
                    exit_status: e.exit_status,
                    exited_at_nanos: e.exited_at_nanos,
                    reason: e.reason,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn create_pod_network(
        &self,
        _: &TtrpcContext,
        r: pb::CreatePodNetworkRequest,
    ) -> R<pb::CreatePodNetworkResponse> {
        let (netns, relay_pid) = wrap(
            self.networks
                .create(
                    &r.pod_id,
                    &r.pod_ip,
                    &r.region,
                    &r.rendezvous,
                    &r.udp_forward,
                )
                .await,
        )?;
        Ok(pb::CreatePodNetworkResponse {
            netns_path: netns.display().to_string(),
            relay_pid,
            ..Default::default()
        })
    }

    async fn destroy_pod_network(
        &self,
        _: &TtrpcContext,
        r: pb::DestroyPodNetworkRequest,
    ) -> R<pb::Empty> {
        wrap(self.networks.destroy(&r.pod_id).await)?;
        Ok(pb::Empty::new())
    }

    async fn list_containers(
        &self,
        _: &TtrpcContext,
        _: pb::Empty,
    ) -> R<pb::ListContainersResponse> {
        let mut containers: Vec<_> = self
            .runtime
            .list()
            .iter()
            .map(|c| {
                let rec = c.init.record();
                pb::ContainerInfo {
                    id: c.id.clone(),
                    pod_id: c.cri.pod_id.clone(),
                    name: c.cri.name.clone(),
                    status: EnumOrUnknown::new(status_of(rec.status)),
                    pid: rec.pid,
                    exit_status: rec.exit.map_or(0, |e| e.status),
                    reserved_millicores: c.reservation.millicores,
                    reserved_memory_bytes: c.reservation.memory_bytes,
                    ..Default::default()
                }
            })
            .collect();
        containers.sort_by(|a, b| (&a.pod_id, &a.name, &a.id).cmp(&(&b.pod_id, &b.name, &b.id)));
        Ok(pb::ListContainersResponse {
            containers,
            ..Default::default()
        })
    }

    async fn list_pod_networks(
        &self,
        _: &TtrpcContext,
        _: pb::Empty,
    ) -> R<pb::ListPodNetworksResponse> {
        let pods = self
            .networks
            .list()
            .await
            .into_iter()
            .map(|p| pb::PodNetworkInfo {
                pod_id: p.pod_id,
                pod_ip: p.pod_ip,
                netns_path: p.netns.display().to_string(),
                region: p.region,
                relay_pid: p.relay_pid,
                relay_restarts: p.relay_restarts,
                relay_stats_json: p.relay_stats_json,
                ..Default::default()
            })
            .collect();
        Ok(pb::ListPodNetworksResponse {
            pods,
            ..Default::default()
        })
    }
}
