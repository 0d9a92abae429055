//! The shim's own lifecycle (`start`, `delete`, serve, exit): one shim per Pod.

use std::{
    io::Write,
    os::unix::net::UnixStream,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use containerd_shim::{
    asynchronous::{publisher::RemotePublisher, spawn, ExitSignal, Shim},
    util::{read_spec, write_str_to_file},
    Config, DeleteResponse, Flags, StartOpts,
};
use containerd_shim_protos::{shim_async::create_task, ttrpc::asynchronous::Server};

use crate::{backend, events::Events, placement::GROUP_LABELS, process::Exit, task::TaskService};

/// containerd 1.6/1.7 call the task API under its v2 name; the generated
/// service registers the v3 name (containerd 2.x). Both are served.
const TASK_V2: &str = "containerd.task.v2.Task";
const TASK_V3: &str = "containerd.task.v3.Task";
/// How long `start` waits for the shim server to answer on the address it
/// gives containerd (the server starts in milliseconds; a loaded node is slower).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Service {
    id: String,
    namespace: String,
    socket: String,
    debug: bool,
    exit: Arc<ExitSignal>,
    server: tokio::sync::Mutex<Option<Server>>,
}

/// The address containerd is given: our own server beside the crate's one,
/// serving the task API under both names.
fn public_address(crate_socket: &str) -> String {
    format!("{crate_socket}.v2")
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

fn can_connect(address: &str) -> bool {
    UnixStream::connect(socket_path(address)).is_ok()
}

/// Waits until a server answers on `address`: containerd dials it as soon as
/// `start` replies, and a dead address fails the Pod with a bare "no such file".
async fn wait_answering(address: &str) -> containerd_shim::Result<()> {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    while !can_connect(address) {
        if Instant::now() >= deadline {
            return Err(containerd_shim::Error::Other(format!(
                "the shim server does not answer on {address} after {ANSWER_TIMEOUT:?}: see the shim log in the bundle"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Replies to `start` with the bare address, which containerd 1.6 expects (the
/// crate would reply JSON, which only containerd 1.7+ parses), and exits.
fn reply_and_exit(address: &str) -> ! {
    let mut out = std::io::stdout();
    let _ = out.write_all(address.as_bytes());
    let _ = out.flush();
    std::process::exit(0)
}

/// After a shim died, its sockets stay behind; remove them unless a shim still
/// answers there (it may serve other containers of the Pod).
fn remove_dead_sockets(bundle: &Path) {
    let Ok(public) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let public = public.trim();
    if public.is_empty() || can_connect(public) {
        return;
    }
    crate::io::remove_quietly(Path::new(socket_path(public)));
    if let Some(crate_socket) = public.strip_suffix(".v2") {
        crate::io::remove_quietly(Path::new(socket_path(crate_socket)));
    }
}

#[async_trait]
impl Shim for Service {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        // Logging is set up with tracing in server mode (create_task_service).
        config.no_setup_logger = true;
        Service {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            socket: args.socket.clone(),
            debug: args.debug,
            exit: Arc::new(ExitSignal::default()),
            server: tokio::sync::Mutex::new(None),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // The bundle is the working directory; its annotations name the Pod.
        let spec = read_spec("").await?;
        let grouping = spec
            .annotations()
            .as_ref()
            .and_then(|a| GROUP_LABELS.iter().find_map(|l| a.get(*l)))
            .cloned()
            .unwrap_or_else(|| opts.id.clone());
        let public = public_address(&opts.socket_address(&grouping));
        if !can_connect(&public) {
            // First container of the Pod (or its shim died): start a shim server.
            spawn(opts, &grouping, Vec::new()).await?;
            wait_answering(&public).await?;
        }
        write_str_to_file("address", &public).await?;
        reply_and_exit(&public)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir().map_err(|e| containerd_shim::Error::IoError {
            context: "cwd".into(),
            err: e,
        })?;
        let pid = std::fs::read_to_string(bundle.join("init.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or_default();
        if let Err(e) = backend::cleanup(&self.id, &bundle, &self.namespace).await {
            eprintln!("cleanup of {}: {e}", self.id);
        }
        if let Err(e) = crate::pod_network::cleanup(&bundle).await {
            eprintln!("cleanup of the Pod network of {}: {e}", self.id);
        }
        remove_dead_sockets(&bundle);
        let exit = Exit::now(128 + 9);
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        if let Some(mut server) = self.server.lock().await.take() {
            let _ = server.shutdown().await;
        }
        // The crate removes the socket named in `address` (ours); remove its own.
        crate::io::remove_quietly(Path::new(socket_path(&self.socket)));
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        // The node config's log level; ConfigPath only arrives later, with Create.
        let config = crate::config::Config::load(None);
        let configured = config.as_ref().ok().and_then(|c| c.log_level.as_deref());
        crate::logging::init(crate::logging::level(self.debug, configured));
        if let Err(e) = &config {
            tracing::warn!("{e}");
        }
        let events = Events::new(publisher, self.namespace.clone());
        let task = TaskService::new(&self.namespace, events, self.exit.clone());
        if let Err(e) = task.watch_exits().await {
            tracing::error!("cannot watch process exits: {e}");
        }
        match serve_both_versions(&task, &public_address(&self.socket)).await {
            Ok(server) => *self.server.lock().await = Some(server),
            Err(e) => {
                // Without its public address containerd cannot reach this
                // server: exit, so `start` reports the failure and nothing lingers.
                tracing::error!("task server: {e}");
                std::process::exit(1);
            }
        }
        task
    }
}

async fn serve_both_versions(
    task: &TaskService,
    address: &str,
) -> Result<Server, containerd_shim_protos::ttrpc::Error> {
    let path = socket_path(address);
    if Path::new(path).exists() && !can_connect(address) {
        crate::io::remove_quietly(Path::new(path));
    }
    let mut services = create_task(Arc::new(task.clone()));
    if let Some(v3) = create_task(Arc::new(task.clone())).remove(TASK_V3) {
        services.insert(TASK_V2.to_string(), v3);
    }
    let mut server = Server::new().bind(address)?.register_service(services);
    server.start().await?;
    tracing::info!("serving task API on {address}");
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_address_sits_beside_the_crate_socket() {
        let sut = public_address("unix:///run/containerd/s/abc");
        assert_eq!(sut, "unix:///run/containerd/s/abc.v2");
        assert_eq!(socket_path(&sut), "/run/containerd/s/abc.v2");
    }
}
