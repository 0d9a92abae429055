//! Per-test harness: a context that records every Pod and directory a test creates and
//! removes them when the test ends, whether it passed, failed or panicked.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::FutureExt;
use k8s_cri::v1 as cri;

use crate::client::{is_not_found, Cri};
use crate::env::{TestEnv, SUITE_LABEL};
use crate::fixtures::{ContainerBuilder, PodBuilder};

/// Upper bound for one test, so a hung stream fails the test instead of the whole run.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// A Pod sandbox created through [`Ctx::run_pod`].
#[derive(Debug, Clone)]
pub struct Pod {
    /// Sandbox id.
    pub id: String,
    /// The config it was run with (CreateContainer needs it again).
    pub config: cri::PodSandboxConfig,
    /// Host directory holding its container logs.
    pub log_dir: PathBuf,
}

impl Pod {
    /// Host path of the CRI log of container `name` (built by [`ContainerBuilder::new`]).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }
}

#[derive(Default)]
struct Registry {
    pods: Vec<String>,
    /// Mount points on the host, detached (with everything below) before `dirs` go.
    mounts: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

/// What a test body gets: a CRI client, the settings and a cleanup registry.
pub struct Ctx {
    /// Endpoint, handler and image under test.
    pub env: TestEnv,
    test: String,
    cri: Cri,
    registry: Mutex<Registry>,
}

impl Ctx {
    /// Connects to the CRI endpoint from the environment.
    pub async fn new(test: &str) -> Result<Self> {
        let env = TestEnv::from_env();
        let cri = Cri::connect(&env.endpoint)
            .await
            .with_context(|| format!("CRI endpoint {}", env.endpoint.display()))?;
        Ok(Self {
            env,
            test: test.to_string(),
            cri,
            registry: Mutex::new(Registry::default()),
        })
    }

    /// A client handle (cheap clone of the shared channel).
    pub fn cri(&self) -> Cri {
        self.cri.clone()
    }

    /// A Pod config builder named after this test.
    pub fn pod(&self) -> PodBuilder {
        PodBuilder::new(&self.test)
    }

    /// A container config builder using the test image.
    pub fn container(&self, name: &str) -> ContainerBuilder {
        ContainerBuilder::new(name, &self.env.image)
    }

    /// Runs a Pod with the handler under test and registers it for cleanup.
    pub async fn run_pod(&self, builder: PodBuilder) -> Result<Pod> {
        let log_dir = std::env::temp_dir()
            .join("heteropod-conformance")
            .join(builder.name());
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("create {}", log_dir.display()))?;
        self.registry
            .lock()
            .expect("registry lock")
            .dirs
            .push(log_dir.clone());
        let mut config = builder.build();
        if config.log_directory.is_empty() {
            config.log_directory = log_dir.display().to_string();
        }
        let id = self.cri().run_pod(&config, &self.env.handler).await?;
        self.registry
            .lock()
            .expect("registry lock")
            .pods
            .push(id.clone());
        Ok(Pod {
            id,
            config,
            log_dir,
        })
    }

    /// Creates a container in `pod`.
    pub async fn create(&self, pod: &Pod, builder: ContainerBuilder) -> Result<String> {
        self.cri()
            .create_container(&pod.id, &builder.build(), &pod.config)
            .await
    }

    /// Creates and starts a container in `pod`.
    pub async fn run_container(&self, pod: &Pod, builder: ContainerBuilder) -> Result<String> {
        let id = self.create(pod, builder).await?;
        self.cri().start_container(&id).await?;
        Ok(id)
    }

    /// A Pod with one long-running container; returns both.
    pub async fn pod_with_sleeper(&self, builder: PodBuilder, name: &str) -> Result<(Pod, String)> {
        let pod = self.run_pod(builder).await?;
        let id = self
            .run_container(&pod, self.container(name).command(&["sleep", "3600"]))
            .await?;
        Ok((pod, id))
    }

    /// A fresh host directory removed at the end of the test.
    pub fn tempdir(&self, tag: &str) -> Result<PathBuf> {
        let dir = std::env::temp_dir()
            .join("heteropod-conformance")
            .join(crate::fixtures::unique_name(tag));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        self.registry
            .lock()
            .expect("registry lock")
            .dirs
            .push(dir.clone());
        Ok(dir)
    }

    /// A fresh host directory bind-mounted on itself and made a shared mount, so mount
    /// propagation to and from containers can be tested. Unmounted at the end of the test.
    pub fn shared_mount_dir(&self, tag: &str) -> Result<PathBuf> {
        use nix::mount::{mount, MsFlags};
        let dir = self.tempdir(tag)?;
        mount(
            Some(&dir),
            &dir,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mount {}", dir.display()))?;
        self.registry
            .lock()
            .expect("registry lock")
            .mounts
            .push(dir.clone());
        mount(
            None::<&str>,
            &dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .with_context(|| format!("make {} shared", dir.display()))?;
        Ok(dir)
    }

    /// Mounts a tmpfs at `target` on the host; it goes away with its shared parent.
    pub fn host_tmpfs(&self, target: &Path) -> Result<()> {
        use nix::mount::{mount, MsFlags};
        std::fs::create_dir_all(target)?;
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .with_context(|| format!("mount tmpfs on {}", target.display()))?;
        self.registry
            .lock()
            .expect("registry lock")
            .mounts
            .push(target.to_path_buf());
        Ok(())
    }

    /// Removes everything registered, newest first. NotFound counts as already gone.
    pub async fn cleanup(&self) -> Result<()> {
        let (pods, mounts, dirs) = {
            let mut reg = self.registry.lock().expect("registry lock");
            (
                std::mem::take(&mut reg.pods),
                std::mem::take(&mut reg.mounts),
                std::mem::take(&mut reg.dirs),
            )
        };
        let mut errors = Vec::new();
        for id in pods.iter().rev() {
            if let Err(e) = remove_pod_fully(&mut self.cri(), id).await {
                errors.push(format!("{id}: {e:#}"));
            }
        }
        for m in mounts.iter().rev() {
            // Lazy unmount also detaches whatever was mounted below it (propagated mounts).
            if let Err(e) = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH) {
                errors.push(format!("umount {}: {e}", m.display()));
            }
        }
        for dir in dirs {
            let _ = std::fs::remove_dir_all(&dir);
        }
        anyhow::ensure!(errors.is_empty(), "cleanup failed: {}", errors.join("; "));
        Ok(())
    }
}

/// Stops and removes a Pod and its containers; NotFound at any step is fine.
pub async fn remove_pod_fully(cri: &mut Cri, pod_id: &str) -> Result<()> {
    let containers = match cri.pod_containers(pod_id).await {
        Ok(c) => c,
        Err(e) => return Err(e),
    };
    for c in containers {
        ignore_not_found(cri.stop_container(&c.id, 0).await)?;
        ignore_not_found(cri.remove_container(&c.id).await)?;
    }
    ignore_not_found(cri.stop_pod(pod_id).await)?;
    ignore_not_found(cri.remove_pod(pod_id).await)?;
    Ok(())
}

fn ignore_not_found(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if is_not_found(&e) => Ok(()),
        other => other,
    }
}

/// Removes every Pod carrying the suite label; returns how many there were.
pub async fn sweep(cri: &mut Cri) -> Result<usize> {
    let mut labels = HashMap::new();
    labels.insert(SUITE_LABEL.to_string(), "true".to_string());
    let pods = cri.list_pods_labelled(labels).await?;
    for p in &pods {
        remove_pod_fully(cri, &p.id).await?;
    }
    Ok(pods.len())
}

/// Runs one test body with a fresh [`Ctx`], then always cleans up. A failure or panic of
/// the body, a timeout, or a failed cleanup fails the test.
pub async fn run<F>(test: &str, body: F)
where
    F: AsyncFnOnce(&Ctx) -> Result<()>,
{
    init_tracing();
    let ctx = match Ctx::new(test).await {
        Ok(c) => c,
        Err(e) => panic!("{test}: cannot reach containerd: {e:#}"),
    };
    let outcome =
        tokio::time::timeout(TEST_TIMEOUT, AssertUnwindSafe(body(&ctx)).catch_unwind()).await;
    let cleaned = ctx.cleanup().await;
    match outcome {
        Err(_) => panic!("{test}: timed out after {TEST_TIMEOUT:?} (cleanup: {cleaned:?})"),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Ok(Ok(Err(e))) => panic!("{test} [{}]: {e:#}", ctx.env.handler),
        Ok(Ok(Ok(()))) => {}
    }
    if let Err(e) = cleaned {
        panic!("{test} [{}]: {e:#}", ctx.env.handler);
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Reads a host file as text with the path in the error.
pub fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}
