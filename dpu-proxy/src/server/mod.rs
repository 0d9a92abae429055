//! The agent: configuration, start-up (cgroup parent, reaper, restore) and
//! the ttrpc listeners.
mod cgroup;
mod cleanup;
mod config_file;
mod console;
mod container;
mod events;
mod executor;
mod network;
mod policy;
mod process;
mod reaper;
mod restore;
mod runtime;
mod runtime_ops;
mod service;
mod spec;
mod state;
mod stdio;

use std::{path::PathBuf, sync::Arc};

pub use cgroup::{parse_cpuset, CgroupParent, Reservation};
pub use cleanup::cleanup;
pub use config_file::{AccessConfig, AgentFile, DEFAULT_CONFIG_FILE};
pub use executor::{Executor, RuncExecutor};
pub use network::POD_DEVICE;
pub use policy::{Policy, DEFAULT_CAPABILITIES};
pub use runtime::Runtime;

use crate::{
    error::{Error, Result},
    transport::{Access, Endpoint},
};

/// Default listening socket of the emulated DPU.
pub const DEFAULT_SOCKET: &str = "/run/heteropod/dpu/agent.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/heteropod/dpu";
/// Default cgroup parent (cgroup v1, under every controller).
pub const DEFAULT_CGROUP_PARENT: &str = "heteropod-dpu";

#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (`unix:///path`, `tcp://host:port`), at least one.
    pub listen: Vec<Endpoint>,
    pub state_dir: PathBuf,
    pub runc: PathBuf,
    pub cgroup_root: PathBuf,
    pub cgroup_parent: String,
    /// DPU cores (cpuset list).
    pub cpus: String,
    /// DPU memory in bytes (0: unlimited).
    pub memory_bytes: u64,
    /// The `heteronet` relay binary; no relay is spawned without it.
    pub relay: Option<PathBuf>,
    /// Who may connect.
    pub access: Access,
    /// What containers may ask for.
    pub policy: Policy,
}

/// The last online core: the emulated DPU's default.
pub fn last_core() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpuset(&s).ok())
        .and_then(|set| set.last().copied())
        .unwrap_or(0)
        .to_string()
}

/// A running agent; dropping it stops the listeners (containers keep running).
pub struct Agent {
    _servers: Vec<ttrpc::r#async::Server>,
    pub runtime: Arc<Runtime>,
}

impl Agent {
    /// Sets up the DPU, reloads state and starts listening.
    pub async fn start(cfg: Config) -> Result<Agent> {
        if cfg.listen.is_empty() {
            return Err(Error::InvalidArgument("no listen address".into()));
        }
        if let Some(ep) = cfg.listen.iter().find(|e| e.is_network()) {
            if cfg.access.key.is_none() {
                return Err(Error::InvalidArgument(format!(
                    "listen on {ep}: a network listener needs the node key ([access] key_file); \
                     the agent serves no unauthenticated network transport"
                )));
            }
        }
        cfg.policy.validate()?;
        // Specs, exec processes and netns of every container: the agent's alone.
        state::create_private_dir(&cfg.state_dir)?;
        let reaper = reaper::Reaper::start().map_err(Error::io("become child subreaper"))?;
        let cg = CgroupParent::new(
            cfg.cgroup_root.clone(),
            cfg.cgroup_parent.clone(),
            &cfg.cpus,
            cfg.memory_bytes,
        )?;
        cg.setup()?;
        let runc_root = cfg.state_dir.join("runc");
        let exec = Arc::new(RuncExecutor::new(
            cfg.runc.clone(),
            runc_root,
            reaper.clone(),
        ));
        let instance = format!("{}-{}", std::process::id(), process::now_nanos());
        let events = Arc::new(events::EventLog::new(instance));
        let runtime = Runtime::new(&cfg.state_dir, exec, cg.clone(), events, cfg.policy.clone())?;
        runtime.restore().await;
        let networks = Arc::new(network::Networks::new(
            &cfg.state_dir,
            cfg.relay.clone(),
            reaper,
            cg,
        )?);
        networks.restore().await;
        let service = Arc::new(service::AgentService {
            runtime: runtime.clone(),
            networks,
        });
        let mut servers = Vec::new();
        for ep in &cfg.listen {
            let listener = ep.listen(&cfg.access).await?;
            let mut server = ttrpc::r#async::Server::new()
                .add_listener(listener)
                .register_service(crate::proto::create_agent(service.clone()));
            server.start().await.map_err(|e| {
                Error::io(format!("serve on {ep}"))(std::io::Error::other(e.to_string()))
            })?;
            tracing::info!(address = %ep, "listening");
            servers.push(server);
        }
        Ok(Agent {
            _servers: servers,
            runtime,
        })
    }
}

#[cfg(test)]
mod fake;
#[cfg(test)]
mod runtime_tests;
