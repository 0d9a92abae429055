//! One run of the demo Pod: start it, wait until the request path answers, measure CPU
//! before and after the requests while drawing a progress bar, and collect the results.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use heteropod_conformance::{cri, logs, wait, ContainerBuilder, Ctx, Pod};
use serde_json::Value;

use crate::measure::{self, Pu};
use crate::report::Progress;

/// Upper bound for one run, Pod start to Pod results.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const REQUESTS_TIMEOUT: Duration = Duration::from_secs(240);
const POLL: Duration = Duration::from_millis(100);

pub const APP: &str = "app";
pub const PROXY: &str = "proxy";
pub const UPSTREAM: &str = "upstream";
const APP_IMAGE: &str = "localhost/heteropod/demo-app:1.0";
const PROXY_IMAGE: &str = "localhost/heteropod/demo-proxy:1.0";
const UPSTREAM_IMAGE: &str = "localhost/heteropod/demo-upstream:1.0";
const PROXY_ADDR: &str = "127.0.0.1:15001";
const UPSTREAM_ADDR: &str = "127.0.0.1:8080";
/// Where the app sees the directory it shares with the demo.
const SHARED: &str = "/demo";

/// Knobs from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub requests: u64,
    pub connections: usize,
    /// Set in the app's and the upstream's environment in every run.
    pub cpu_env: Vec<(String, String)>,
}

/// `KEY=VALUE,KEY=VALUE` pairs.
fn parse_env_list(text: &str) -> Result<Vec<(String, String)>> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("DEMO_CPU_ENV: {p:?} is not KEY=VALUE"))
        })
        .collect()
}

impl Settings {
    /// `DEMO_REQUESTS` (default 20000), `DEMO_CONNECTIONS` (default 4) and
    /// `DEMO_CPU_ENV` (`KEY=VALUE,...` for the CPU containers, e.g.
    /// `HETEROSOCKET_SPIN_US=0` to see what the library's spinning costs).
    pub fn from_env() -> Result<Self> {
        fn num<T: std::str::FromStr>(key: &str, default: T) -> Result<T> {
            match std::env::var(key) {
                Ok(v) if !v.is_empty() => v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{key}={v:?} is not a number")),
                _ => Ok(default),
            }
        }
        let s = Self {
            requests: num("DEMO_REQUESTS", 20_000)?,
            connections: num("DEMO_CONNECTIONS", 4)?,
            cpu_env: parse_env_list(&std::env::var("DEMO_CPU_ENV").unwrap_or_default())?,
        };
        ensure!(
            s.requests > 0 && s.connections > 0,
            "DEMO_REQUESTS and DEMO_CONNECTIONS must be > 0"
        );
        Ok(s)
    }
}

/// Pod annotation that asks for the fast path (shim/src/fastpath.rs).
const FASTPATH: &str = "heteropod.io/fastpath";
/// The CPU relay's fast-path broker, an abstract socket in the Pod's CPU half
/// (netstack's `fastpath::BROKER_NAME`).
const BROKER: &str = "@heteropod.fastpath";

/// Which placement the run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Everything on the CPU: the baseline.
    AllCpu,
    /// The proxy on the DPU; both hops cross the HeteroNet relays.
    SplitRelay,
    /// As `SplitRelay`, and the Pod asks for the fast path: the preloaded app's
    /// connections to the proxy, and the proxy's to the preloaded upstream,
    /// take rings of their own instead of the host's TCP and the relays.
    SplitFastpath,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::AllCpu, Variant::SplitRelay, Variant::SplitFastpath];

    /// The run's name in demo.json (`runs.<key>`).
    pub fn key(self) -> &'static str {
        match self {
            Variant::AllCpu => "all_cpu",
            Variant::SplitRelay => "split_relay",
            Variant::SplitFastpath => "split_fastpath",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::AllCpu => "all-CPU",
            Variant::SplitRelay => "split, relay",
            Variant::SplitFastpath => "split, fast path",
        }
    }

    pub fn split(self) -> bool {
        self != Variant::AllCpu
    }

    fn proxy_placement(self) -> &'static str {
        if self.split() {
            "dpu"
        } else {
            "cpu"
        }
    }
}

/// What one run gave: results, or why it could not run here.
#[derive(Debug, Clone)]
pub enum Outcome {
    Done(Box<RunResult>),
    Skipped(String),
}

/// One container or Pod process with its CPU time over the requests.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub pu: Pu,
    pub cpus: Option<String>,
    /// CPU seconds used while the requests ran; `None` when unreadable.
    pub cpu_s: Option<f64>,
    /// Read from the cgroup because the runtime's stats had nothing.
    pub from_cgroup: bool,
}

/// What the app reported.
#[derive(Debug, Clone, Default)]
pub struct AppReport {
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Everything one run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub variant: Variant,
    pub pod_id: String,
    pub containers: Vec<Row>,
    pub processes: Vec<Row>,
    pub app: AppReport,
    /// Counter deltas of the CPU-side and DPU-side relays (`None`: no socket).
    pub cpu_relay: Option<(Value, Value)>,
    pub dpu_relay: Option<(Value, Value)>,
    /// The proxy's own totals, from its log.
    pub proxy_totals: Option<Value>,
    /// Host CPU seconds of the QEMU that runs the DPU guest (not in either PU's
    /// total: it is the price of emulating the DPU on this machine).
    pub emulator_cpu_s: Option<f64>,
}

impl RunResult {
    /// Total CPU seconds on one PU.
    pub fn cpu_on(&self, pu: Pu) -> f64 {
        self.containers
            .iter()
            .chain(&self.processes)
            .filter(|r| r.pu == pu)
            .filter_map(|r| r.cpu_s)
            // An empty f64 sum is -0.0.
            .fold(0.0, |a, b| a + b)
    }
}

/// A container running `/demo-<name>` from `image` with `args` and `env`.
fn container(name: &str, image: &str, args: &[&str], env: &[(String, String)]) -> ContainerBuilder {
    let entry = format!("/demo-{name}");
    env.iter().fold(
        ContainerBuilder::new(name, image)
            .command(&[entry.as_str()])
            .args(args),
        |c, (k, v)| c.env(k, v),
    )
}

/// Runs the Pod once with `variant`'s placement and measures it. The caller removes the
/// Pod ([`Ctx::cleanup`]).
pub async fn run_variant(ctx: &Ctx, settings: &Settings, variant: Variant) -> Result<Outcome> {
    let shared = ctx.tempdir("demo-shared")?;
    let shared_s = shared.display().to_string();
    println!(
        "==> {}: RunPodSandbox, {PROXY} placed on the {}{}",
        variant.label(),
        variant.proxy_placement().to_uppercase(),
        if variant == Variant::SplitFastpath {
            format!(", {FASTPATH}: \"true\"")
        } else {
            String::new()
        }
    );
    let mut pod_config = ctx.pod().hostname("demo").annotation(
        &format!("heteropod.io/placement.{PROXY}"),
        variant.proxy_placement(),
    );
    if variant == Variant::SplitFastpath {
        pod_config = pod_config.annotation(FASTPATH, "true");
    }
    let pod = ctx.run_pod(pod_config).await?;
    let requests = settings.requests.to_string();
    let connections = settings.connections.to_string();
    // The sidecar first, as a mesh injects it: its placement on the DPU starts the
    // Pod's relays, and a preloaded server registers its listener with the CPU
    // relay's broker when it listens, so the upstream must listen after that.
    let proxy = ctx
        .run_container(
            &pod,
            container(
                PROXY,
                PROXY_IMAGE,
                &["--listen", PROXY_ADDR, "--upstream", UPSTREAM_ADDR],
                &[],
            ),
        )
        .await?;
    let upstream = ctx
        .run_container(
            &pod,
            container(
                UPSTREAM,
                UPSTREAM_IMAGE,
                &["--listen", UPSTREAM_ADDR],
                &settings.cpu_env,
            ),
        )
        .await?;
    let app = ctx
        .run_container(
            &pod,
            container(
                APP,
                APP_IMAGE,
                &[
                    "--target",
                    PROXY_ADDR,
                    "--requests",
                    &requests,
                    "--connections",
                    &connections,
                    "--dir",
                    SHARED,
                ],
                &settings.cpu_env,
            )
            .mount(&shared_s, SHARED, false),
        )
        .await?;
    let ids = [(APP, app), (PROXY, proxy), (UPSTREAM, upstream)];
    println!(
        "==> {}: containers started, waiting until app -> proxy -> upstream answers",
        variant.label()
    );
    wait_for_file(ctx, &pod, &ids, &shared.join("ready"), READY_TIMEOUT).await?;

    let processes = measure::pod_processes(&pod.id);
    if variant == Variant::SplitFastpath {
        if let Some(why) = fastpath_unavailable(&processes) {
            return Ok(Outcome::Skipped(why));
        }
    }
    let cpu_sock = measure::cpu_relay_socket(&pod.id);
    let qemu = measure::qemu_pid().filter(|_| heteropod_conformance::dpu::remote());
    let mut cri = ctx.cri();
    let mut before_c = Vec::new();
    for (_, id) in &ids {
        before_c.push(measure::container_cpu(&mut cri, id).await.ok());
    }
    let before_p: Vec<_> = processes
        .iter()
        .map(|p| measure::process_cpu(p.pid))
        .collect();
    let cpu_relay_before = measure::relay_counters(Some(&cpu_sock)).await;
    let dpu_relay_before = measure::dpu_relay_counters(&pod.id).await;
    let qemu_before = qemu.and_then(measure::process_cpu);

    std::fs::write(shared.join("go"), "go\n").context("start the app")?;
    println!("==> {}: {} requests", variant.label(), settings.requests);
    let mut bar = Progress::new(variant.label(), settings.requests);
    let result_path = shared.join("result.json");
    let waited = tokio::time::timeout(REQUESTS_TIMEOUT, async {
        loop {
            if let Some((done, _)) = read_progress(&shared.join("progress")) {
                bar.update(done);
            }
            if result_path.exists() {
                return anyhow::Ok(());
            }
            ensure_running(ctx, &pod, &ids).await?;
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    bar.finish();
    match waited {
        Err(_) => bail!("the requests did not finish within {REQUESTS_TIMEOUT:?}"),
        Ok(r) => r?,
    }

    // One question to a guest's agent serves every container's row.
    let agent = if heteropod_conformance::dpu::remote() {
        heteropod_conformance::dpu::agent_view().await.ok()
    } else {
        None
    };
    let mut containers = Vec::new();
    for ((name, id), before) in ids.iter().zip(before_c) {
        let after = measure::container_cpu(&mut cri, id).await.ok();
        let pu = measure::container_pu(id, agent.as_ref());
        containers.push(Row {
            name: name.to_string(),
            pu,
            cpus: measure::container_cpus(id, pu, agent.as_ref()),
            cpu_s: before.zip(after.as_ref()).map(|(b, a)| a.0 - b.0),
            from_cgroup: after.is_some_and(|a| a.1),
        });
    }
    let mut processes: Vec<Row> = processes
        .iter()
        .zip(before_p)
        .map(|(p, before)| Row {
            name: p.name.to_string(),
            pu: p.pu,
            cpus: measure::process_cpus(p.pid),
            cpu_s: before.zip(measure::process_cpu(p.pid)).map(|(b, a)| a - b),
            from_cgroup: false,
        })
        .collect();
    let cpu_relay_after = measure::relay_counters(Some(&cpu_sock)).await;
    let dpu_relay_after = measure::dpu_relay_counters(&pod.id).await;
    if heteropod_conformance::dpu::remote() {
        // Not a host process: the relay in the guest reports its own CPU time.
        let cpu_us = |d: &Option<Value>| {
            d.as_ref()
                .and_then(|d| measure::counter(d, "relay", "cpu_us"))
        };
        if let (Some(b), Some(a)) = (cpu_us(&dpu_relay_before), cpu_us(&dpu_relay_after)) {
            processes.push(Row {
                name: "HeteroNet relay, DPU side".into(),
                pu: Pu::Dpu,
                cpus: Some("guest".into()),
                cpu_s: Some(a.saturating_sub(b) as f64 / 1e6),
                from_cgroup: false,
            });
        }
    }
    let emulator_cpu_s = qemu_before
        .zip(qemu.and_then(measure::process_cpu))
        .map(|(b, a)| a - b);
    let app = parse_app_report(&std::fs::read_to_string(&result_path)?)?;
    let proxy_totals = proxy_totals(&pod, settings.connections as u64 + 1).await;
    Ok(Outcome::Done(Box::new(RunResult {
        variant,
        pod_id: pod.id.clone(),
        containers,
        processes,
        app,
        cpu_relay: cpu_relay_before.zip(cpu_relay_after),
        dpu_relay: dpu_relay_before.zip(dpu_relay_after),
        proxy_totals,
        emulator_cpu_s,
    })))
}

/// Why the fast path cannot serve this Pod, if it cannot: its CPU-side relay
/// must hold the broker the preloaded library asks (an abstract socket in the
/// Pod's CPU half, listed in the relay's /proc/PID/net/unix).
fn fastpath_unavailable(processes: &[measure::PodProcess]) -> Option<String> {
    let Some(relay) = processes
        .iter()
        .find(|p| p.name == "HeteroNet relay, CPU side")
    else {
        return Some("the Pod has no CPU-side relay".into());
    };
    let table =
        std::fs::read_to_string(format!("/proc/{}/net/unix", relay.pid)).unwrap_or_default();
    if has_broker(&table) {
        return None;
    }
    Some(if heteropod_conformance::dpu::remote() {
        "the CPU-side relay offers no fast-path broker: with the DPU in a QEMU guest the relays \
         meet in a slot of the ivshmem BAR, and the fast path does not cross the BAR yet"
            .into()
    } else {
        format!(
            "the CPU-side relay (pid {}) offers no fast-path broker ({BROKER})",
            relay.pid
        )
    })
}

/// Whether a /proc/PID/net/unix table lists the broker's socket (path: last column).
fn has_broker(table: &str) -> bool {
    table
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(7) == Some(BROKER))
}

/// Waits for `path`, failing early (with the container's log) if a container exits.
async fn wait_for_file(
    ctx: &Ctx,
    pod: &Pod,
    ids: &[(&str, String)],
    path: &Path,
    timeout: Duration,
) -> Result<()> {
    wait::until(&format!("{}", path.display()), timeout, || async {
        ensure_running(ctx, pod, ids).await?;
        Ok(path.exists().then_some(()))
    })
    .await
}

/// Fails with the container's log tail when one of `ids` is no longer running.
async fn ensure_running(ctx: &Ctx, pod: &Pod, ids: &[(&str, String)]) -> Result<()> {
    for (name, id) in ids {
        let st = ctx.cri().container_status(id).await?;
        if st.state() != cri::ContainerState::ContainerRunning {
            let lines = logs::read_log(&pod.log_path(name)).unwrap_or_default();
            let text = logs::stream_text(&lines, "stdout") + &logs::stream_text(&lines, "stderr");
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            bail!(
                "container {name} is {:?} (exit code {}); its log ends with:\n  {}",
                st.state(),
                st.exit_code,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
            );
        }
    }
    Ok(())
}

/// `done errors` from the app's progress file.
fn read_progress(path: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse().ok());
    Some((it.next()??, it.next()??))
}

/// Parses the app's JSON result line.
pub fn parse_app_report(text: &str) -> Result<AppReport> {
    let v: Value =
        serde_json::from_str(text.trim()).with_context(|| format!("app result {text:?}"))?;
    let u = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .with_context(|| format!("app result without {k}"))
    };
    let f = |k: &str| {
        v.get(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("app result without {k}"))
    };
    Ok(AppReport {
        requests: u("requests")?,
        ok: u("ok")?,
        errors: u("errors")?,
        seconds: f("seconds")?,
        p50_us: f("p50_us")?,
        p99_us: f("p99_us")?,
    })
}

/// The proxy's totals from the last per-connection line of its log, once it has logged
/// `conns` closed connections (the app closes its connections when it is done).
async fn proxy_totals(pod: &Pod, conns: u64) -> Option<Value> {
    let read = || {
        let lines = logs::read_log(&pod.log_path(PROXY)).ok()?;
        let text = logs::stream_text(&lines, "stdout");
        let last = text
            .lines()
            .rev()
            .find_map(|l| l.split_once("; totals "))?
            .1;
        serde_json::from_str::<Value>(last).ok()
    };
    for _ in 0..30 {
        if let Some(v) = read() {
            let total = v
                .get("connections_total")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let active = v
                .get("connections_active")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if total >= conns && active == 0 {
                return Some(v);
            }
        }
        tokio::time::sleep(POLL).await;
    }
    read()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_is_found_in_a_unix_socket_table() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 43127 @heteropod.fastpath\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 43130\n";
        assert!(has_broker(table));
        assert!(!has_broker(&table.replace("fastpath", "other")));
        assert!(!has_broker(""));
    }

    #[test]
    fn variants_have_their_json_keys() {
        let keys: Vec<_> = Variant::ALL.iter().map(|v| v.key()).collect();
        assert_eq!(keys, ["all_cpu", "split_relay", "split_fastpath"]);
        assert!(!Variant::AllCpu.split() && Variant::SplitFastpath.split());
    }

    #[test]
    fn env_lists_are_parsed() {
        let sut = parse_env_list("A=1, B=x=y,,").unwrap();
        assert_eq!(sut, [("A".into(), "1".into()), ("B".into(), "x=y".into())]);
        assert!(parse_env_list("").unwrap().is_empty());
        assert!(parse_env_list("A").is_err());
        assert!(parse_env_list("=1").is_err());
    }

    #[test]
    fn app_report_is_parsed_and_checked() {
        let line = r#"{"requests":10,"connections":2,"ok":9,"errors":1,"seconds":0.5,"rps":18,"p50_us":100.0,"p99_us":250.5,"max_us":300.0}"#;
        let sut = parse_app_report(line).unwrap();
        assert_eq!((sut.requests, sut.ok, sut.errors), (10, 9, 1));
        assert_eq!(sut.p99_us, 250.5);
        assert!(parse_app_report("{}").is_err());
        assert!(parse_app_report("nope").is_err());
    }
}
