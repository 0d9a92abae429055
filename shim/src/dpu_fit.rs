//! Settles a placement intent against what the DPU has free: a strict DPU
//! placement goes (the agent refuses it clearly if it is full), a node-policy
//! one falls back to the CPU when it does not fit (unless the node says
//! `when_dpu_full = "error"`), and `auto` asks the offload planner.

use heteropod_dpu_proxy::{AgentClient, DpuAgent};
use heteropod_planner::{Container, Dpu, Problem, Request, Resources, Role, Unit};

use crate::{
    bundle::Demand,
    config::{Config, WhenDpuFull},
    error::{Error, Result},
    placement::{Intent, Placement},
};

/// Free and total DPU resources as the agent reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpuRoom {
    pub total: Resources,
    pub reserved: Resources,
}

/// The placement of container `id`; the agent is asked only when the intent
/// depends on its free capacity.
pub async fn resolve(
    id: &str,
    intent: Intent,
    demand: Demand,
    config: &Config,
) -> Result<Placement> {
    let soft = match intent {
        Intent::Cpu => return Ok(Placement::Cpu),
        Intent::Dpu { strict: true } => return Ok(Placement::Dpu),
        Intent::Dpu { strict: false } if config.placement.when_dpu_full == WhenDpuFull::Error => {
            return Ok(Placement::Dpu)
        }
        Intent::Auto { candidate: false } => return Ok(Placement::Cpu),
        _ if !config.dpu.enabled => return Ok(Placement::Cpu),
        soft => soft,
    };
    let room = room(id, &config.dpu).await?;
    let placement = match soft {
        Intent::Auto { .. } => plan_one(id, demand, room)?,
        _ => fits(demand, room),
    };
    if placement == Placement::Cpu {
        tracing::info!(
            container = id,
            ?demand,
            ?room,
            "no room on the DPU: placed on the CPU"
        );
    }
    Ok(placement)
}

async fn room(id: &str, dpu: &crate::config::DpuConfig) -> Result<DpuRoom> {
    let endpoint = dpu.endpoint.as_str();
    let unreachable = |e: heteropod_dpu_proxy::Error| {
        Error::FailedPrecondition(format!(
            "container {id} may go to the DPU, but the DPU agent at {endpoint} is unreachable: {e}"
        ))
    };
    let agent = AgentClient::connect_with_key(endpoint, dpu.key_file())
        .await
        .map_err(unreachable)?;
    let c = agent.capacity().await.map_err(unreachable)?;
    Ok(DpuRoom {
        total: Resources {
            cpu_millis: u64::from(c.total_cores) * 1000,
            memory_bytes: c.total_memory_bytes,
        },
        reserved: Resources {
            cpu_millis: c.reserved_millicores,
            memory_bytes: c.reserved_memory_bytes,
        },
    })
}

/// Whether the agent would accept it: it reserves the CPU limit and the
/// memory limit (see dpu-proxy's `reservation_of`).
pub fn fits(demand: Demand, room: DpuRoom) -> Placement {
    let cpu_ok = room.reserved.cpu_millis + demand.limit_millis <= room.total.cpu_millis;
    let mem_ok = room.total.memory_bytes == 0
        || room.reserved.memory_bytes + demand.memory_bytes <= room.total.memory_bytes;
    if cpu_ok && mem_ok {
        Placement::Dpu
    } else {
        Placement::Cpu
    }
}

/// The planner on what is known at CreateContainer: this container against
/// what the DPU already runs (the Pod's other containers come one by one).
pub fn plan_one(id: &str, demand: Demand, room: DpuRoom) -> Result<Placement> {
    let problem = Problem {
        containers: vec![Container {
            pod: String::new(),
            name: id.to_string(),
            image: String::new(),
            // What it frees on the host is its request; what it takes on the
            // DPU is at least its limit (the agent reserves that).
            cpu_millis: demand.request_millis.max(demand.limit_millis),
            memory_bytes: demand.memory_bytes,
            role: Role::Infrastructure,
            request: Some((Request::Auto, "auto".into())),
            shares_pid: false,
        }],
        edges: Vec::new(),
        dpu: Dpu {
            capacity: room.total,
            used: room.reserved,
            traffic_budget_mbps: None,
        },
    };
    let plan = heteropod_planner::plan(&problem, &heteropod_planner::Options::default())
        .map_err(|e| Error::InvalidArgument(format!("container {id}: offload planner: {e}")))?;
    let unit = plan.decisions.first().map_or(Unit::Cpu, |d| d.placement);
    Ok(match unit {
        Unit::Dpu => Placement::Dpu,
        Unit::Cpu => Placement::Cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(cores: u64, reserved_millis: u64, mem: u64, reserved_mem: u64) -> DpuRoom {
        DpuRoom {
            total: Resources {
                cpu_millis: cores * 1000,
                memory_bytes: mem,
            },
            reserved: Resources {
                cpu_millis: reserved_millis,
                memory_bytes: reserved_mem,
            },
        }
    }

    fn demand(request: u64, limit: u64, mem: u64) -> Demand {
        Demand {
            request_millis: request,
            limit_millis: limit,
            memory_bytes: mem,
        }
    }

    #[test]
    fn fits_counts_limits_against_what_is_reserved() {
        assert_eq!(
            fits(demand(100, 500, 1 << 20), room(1, 500, 1 << 30, 0)),
            Placement::Dpu
        );
        assert_eq!(
            fits(demand(100, 600, 0), room(1, 500, 1 << 30, 0)),
            Placement::Cpu
        );
        assert_eq!(
            fits(demand(0, 0, 2 << 30), room(1, 0, 1 << 30, 0)),
            Placement::Cpu
        );
        // No memory limit on the DPU: memory never blocks.
        assert_eq!(
            fits(demand(0, 0, 2 << 30), room(1, 0, 0, 0)),
            Placement::Dpu
        );
    }

    #[test]
    fn auto_offloads_what_frees_cpu_and_fits() {
        let free = room(2, 500, 1 << 30, 0);
        assert_eq!(
            plan_one("c", demand(250, 500, 64 << 20), free).unwrap(),
            Placement::Dpu
        );
        // Frees nothing on the host: not worth a DPU slot.
        assert_eq!(
            plan_one("c", demand(0, 0, 0), free).unwrap(),
            Placement::Cpu
        );
        // Does not fit what is left.
        assert_eq!(
            plan_one("c", demand(250, 1600, 0), free).unwrap(),
            Placement::Cpu
        );
    }

    #[tokio::test]
    async fn soft_intents_without_a_reachable_agent_are_clear_errors() {
        let mut config = Config::default();
        config.dpu.enabled = true;
        config.dpu.endpoint = "unix:///nonexistent/agent.sock".into();
        let err = resolve(
            "c1",
            Intent::Dpu { strict: false },
            Demand::default(),
            &config,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains("/nonexistent/agent.sock"), "{err}");
        // Decided without asking the agent.
        for (intent, want) in [
            (Intent::Cpu, Placement::Cpu),
            (Intent::Dpu { strict: true }, Placement::Dpu),
            (Intent::Auto { candidate: false }, Placement::Cpu),
        ] {
            assert_eq!(
                resolve("c1", intent, Demand::default(), &config)
                    .await
                    .unwrap(),
                want
            );
        }
        config.placement.when_dpu_full = WhenDpuFull::Error;
        let strict = resolve(
            "c1",
            Intent::Dpu { strict: false },
            Demand::default(),
            &config,
        );
        assert_eq!(strict.await.unwrap(), Placement::Dpu);
    }
}
