//! Conversions between the shim's (containerd's) types and the DPU agent's.
//! Handlers never build agent protos inline: `into_agent` builds requests,
//! this module turns answers and errors back into shim terms.

pub mod into_agent;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim_protos::{
    cgroups::metrics::{
        CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat,
    },
    protobuf::{well_known_types::any::Any, Message},
};
use heteropod_dpu_proxy::client::StatsResponse;

use crate::{error::Error, process::Exit};

/// The type containerd decodes cgroup v1 stats as (the emulated DPU uses v1).
pub const V1_METRICS: &str = "io.containerd.cgroups.v1.Metrics";

/// An exit the agent reported (status, wall-clock nanoseconds).
pub fn exit_from_agent(status: u32, exited_at_nanos: i64) -> Exit {
    let at = u64::try_from(exited_at_nanos)
        .ok()
        .filter(|n| *n > 0)
        .map(|n| UNIX_EPOCH + Duration::from_nanos(n))
        .unwrap_or_else(SystemTime::now);
    Exit { status, at }
}

/// The agent's container stats as the cgroup v1 `Metrics` the CPU backend returns.
pub fn metrics_from_agent(stats: &StatsResponse) -> Metrics {
    let memory = MemoryStat {
        usage: Some(MemoryEntry {
            usage: stats.memory_usage_bytes,
            max: stats.memory_max_usage_bytes,
            limit: stats.memory_limit_bytes,
            failcnt: stats.memory_failcnt,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let cpu = CPUStat {
        usage: Some(CPUUsage {
            total: stats.cpu_usage_nanos,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    Metrics {
        memory: Some(memory).into(),
        cpu: Some(cpu).into(),
        pids: Some(PidsStat {
            current: stats.pids_current,
            ..Default::default()
        })
        .into(),
        memory_oom_control: Some(MemoryOomControl {
            oom_kill: stats.oom_kills,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// Packs agent stats in the `Any` containerd's Stats decodes.
pub fn stats_any(stats: &StatsResponse) -> crate::error::Result<Any> {
    Ok(Any {
        type_url: V1_METRICS.to_string(),
        value: metrics_from_agent(stats).write_to_bytes()?,
        ..Default::default()
    })
}

/// Agent errors keep their meaning as Task API codes. An unreachable agent is
/// a failed precondition naming the endpoint, never a silent fallback.
impl From<heteropod_dpu_proxy::Error> for Error {
    fn from(e: heteropod_dpu_proxy::Error) -> Error {
        use heteropod_dpu_proxy::Error as A;
        match e {
            A::NotFound(m) => Error::NotFound(format!("on the DPU: {m}")),
            A::InvalidArgument(m) => Error::InvalidArgument(format!("on the DPU: {m}")),
            A::AlreadyExists(m) => Error::AlreadyExists(format!("on the DPU: {m}")),
            A::FailedPrecondition(m) => Error::FailedPrecondition(format!("on the DPU: {m}")),
            A::Timeout(m) => Error::DeadlineExceeded(format!("DPU agent: {m}")),
            A::DpuFull(m) => Error::ResourceExhausted(format!("DPU full: {m}")),
            // The DPU's node policy refuses it: the Pod cannot run there as asked.
            A::PermissionDenied(m) => Error::FailedPrecondition(format!("on the DPU: {m}")),
            A::DpuUnreachable { address, reason } => {
                Error::FailedPrecondition(format!("DPU agent unreachable at {address}: {reason}"))
            }
            other => Error::Dpu(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::ttrpc::Code;

    #[test]
    fn agent_stats_become_v1_metrics_containerd_decodes() {
        let stats = StatsResponse {
            memory_usage_bytes: 4096,
            memory_limit_bytes: 1 << 30,
            cpu_usage_nanos: 123,
            pids_current: 2,
            oom_kills: 1,
            ..Default::default()
        };
        let sut = stats_any(&stats).unwrap();
        assert_eq!(sut.type_url, V1_METRICS);
        let m = Metrics::parse_from_bytes(&sut.value).unwrap();
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.usage.limit, 1 << 30);
        assert_eq!(m.cpu.usage.total, 123);
        assert_eq!(m.pids.current, 2);
        assert_eq!(m.memory_oom_control.oom_kill, 1);
    }

    #[test]
    fn agent_exit_time_is_kept_and_missing_time_is_now() {
        let sut = exit_from_agent(3, 1_000_000_000);
        assert_eq!(sut.status, 3);
        assert_eq!(sut.timestamp().seconds, 1);
        let sut = exit_from_agent(0, 0);
        assert!(sut.timestamp().seconds > 1_000_000_000);
    }

    #[test]
    fn unreachable_dpu_is_failed_precondition_naming_the_endpoint() {
        let sut = Error::from(heteropod_dpu_proxy::Error::DpuUnreachable {
            address: "unix:///run/x/agent.sock".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(sut.code(), Code::FAILED_PRECONDITION);
        assert!(
            sut.to_string().contains("unix:///run/x/agent.sock"),
            "{sut}"
        );
        let full = Error::from(heteropod_dpu_proxy::Error::DpuFull("memory".into()));
        assert_eq!(full.code(), Code::RESOURCE_EXHAUSTED);
        let gone = Error::from(heteropod_dpu_proxy::Error::NotFound("c1".into()));
        assert_eq!(gone.code(), Code::NOT_FOUND);
    }
}
