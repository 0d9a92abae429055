//! The figures the demo compares, the targets against them, and
//! `target/demo/demo.json`: `runs.<all_cpu|split_relay|split_fastpath>.{host_cpu_ms_per_1k,
//! dpu_cpu_ms_per_1k,p50_us,p99_us,rps}`, a skipped run under `skipped.<key>` with the
//! reason (never figures it did not measure).

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use crate::measure::{counter, cpu_count, delta, Pu};
use crate::run::{Outcome, RunResult, Settings, Variant, APP, PROXY};

/// Split with the fast path uses at most this share of all-CPU's host-core CPU
/// per request (issue 12).
pub const HOST_CPU_TARGET: f64 = 0.6;
/// ... with p50 latency at most all-CPU's.
pub const P50_TARGET: f64 = 1.0;

/// The five figures of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub host_cpu_ms_per_1k: f64,
    pub dpu_cpu_ms_per_1k: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub rps: f64,
}

impl Figures {
    pub fn of(r: &RunResult) -> Figures {
        let per_1k = |s: f64| s * 1e6 / r.app.requests.max(1) as f64;
        Figures {
            host_cpu_ms_per_1k: per_1k(r.cpu_on(Pu::Cpu)),
            dpu_cpu_ms_per_1k: per_1k(r.cpu_on(Pu::Dpu)),
            p50_us: r.app.p50_us,
            p99_us: r.app.p99_us,
            rps: r.app.ok as f64 / r.app.seconds.max(1e-9),
        }
    }
}

/// A row's CPU in ms per 1,000 requests, if measured.
pub fn row_ms_per_1k(r: &RunResult, name: &str) -> Option<f64> {
    r.containers
        .iter()
        .chain(&r.processes)
        .filter(|x| x.name == name)
        .filter_map(|x| x.cpu_s)
        .reduce(|a, b| a + b)
        .map(|s| s * 1e6 / r.app.requests.max(1) as f64)
}

/// The relays' fast-path counters over the requests: deltas, except `active`
/// (open now). `None`: that relay or that counter did not report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastCounters {
    /// Connections the CPU relay brokered onto rings.
    pub connects: Option<u64>,
    /// Connections from the DPU half handed to a preloaded CPU listener.
    pub accepts: Option<u64>,
    /// Fast connections the DPU relay served.
    pub served: Option<u64>,
    pub active: Option<u64>,
    /// Requests answered "use the kernel" / failed / connections reset.
    pub passed: Option<u64>,
    pub failed: Option<u64>,
    pub reset: Option<u64>,
    /// Bytes the DPU relay moved between rings and TCP, each way.
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
}

impl FastCounters {
    pub fn of(r: &RunResult) -> FastCounters {
        let c = r.cpu_relay.as_ref();
        let d = r.dpu_relay.as_ref();
        FastCounters {
            connects: delta(c, "relay", "fast_connects"),
            accepts: delta(c, "relay", "fast_accepts"),
            served: delta(d, "relay", "fast_connects"),
            active: c.and_then(|(_, a)| counter(a, "relay", "fast_active")),
            passed: delta(c, "relay", "fast_passed"),
            failed: delta(c, "relay", "fast_failed"),
            reset: delta(c, "relay", "fast_reset"),
            bytes_in: delta(d, "relay", "fast_bytes_in"),
            bytes_out: delta(d, "relay", "fast_bytes_out"),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "connects": self.connects,
            "accepts": self.accepts,
            "served": self.served,
            "active": self.active,
            "passed": self.passed,
            "failed": self.failed,
            "reset": self.reset,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        })
    }
}

/// One of the targets, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub key: &'static str,
    pub what: &'static str,
    /// split_fastpath / all_cpu.
    pub ratio: f64,
    pub limit: f64,
    pub fast: f64,
    pub all_cpu: f64,
    pub unit: &'static str,
}

impl Target {
    pub fn met(&self) -> bool {
        self.ratio <= self.limit
    }
}

/// The targets of split with the fast path against all-CPU.
pub fn targets(all_cpu: &RunResult, fast: &RunResult) -> Vec<Target> {
    let (a, f) = (Figures::of(all_cpu), Figures::of(fast));
    let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::INFINITY };
    vec![
        Target {
            key: "host_cpu_ratio",
            what: "host-core CPU per 1,000 requests",
            ratio: ratio(f.host_cpu_ms_per_1k, a.host_cpu_ms_per_1k),
            limit: HOST_CPU_TARGET,
            fast: f.host_cpu_ms_per_1k,
            all_cpu: a.host_cpu_ms_per_1k,
            unit: "ms",
        },
        Target {
            key: "p50_ratio",
            what: "latency p50",
            ratio: ratio(f.p50_us, a.p50_us),
            limit: P50_TARGET,
            fast: f.p50_us,
            all_cpu: a.p50_us,
            unit: "us",
        },
    ]
}

/// The least host-CPU ratio a split can reach: all-CPU without its sidecar's
/// CPU, as if moving the sidecar away cost nothing on the host.
pub fn host_cpu_floor(all_cpu: &RunResult) -> Option<f64> {
    let total = Figures::of(all_cpu).host_cpu_ms_per_1k;
    let proxy = row_ms_per_1k(all_cpu, PROXY)?;
    (total > 0.0).then(|| (total - proxy) / total)
}

/// Share (0..1) of `pu`'s cores the run kept busy, from the cpuset its
/// containers ran on (`None` when unknown).
pub fn busy(r: &RunResult, pu: Pu) -> Option<f64> {
    let probe = if pu == Pu::Dpu { PROXY } else { APP };
    let cores = r
        .containers
        .iter()
        .find(|c| c.name == probe && c.pu == pu)
        .and_then(|c| c.cpus.as_deref())
        .and_then(cpu_count)?;
    let secs = r.app.seconds;
    (secs > 0.0 && cores > 0).then(|| r.cpu_on(pu) / (secs * cores as f64))
}

/// The whole demo.json document.
pub fn document(settings: &Settings, outcomes: &[(Variant, Outcome)]) -> Value {
    let mut runs = Map::new();
    let mut skipped = Map::new();
    for (variant, outcome) in outcomes {
        match outcome {
            Outcome::Skipped(why) => {
                skipped.insert(variant.key().into(), Value::String(why.clone()));
            }
            Outcome::Done(r) => {
                let f = Figures::of(r);
                let mut run = json!({
                    "host_cpu_ms_per_1k": round(f.host_cpu_ms_per_1k, 2),
                    "dpu_cpu_ms_per_1k": round(f.dpu_cpu_ms_per_1k, 2),
                    "p50_us": round(f.p50_us, 1),
                    "p99_us": round(f.p99_us, 1),
                    "rps": round(f.rps, 0),
                    "requests": r.app.requests,
                    "ok": r.app.ok,
                    "errors": r.app.errors,
                    "host_cpu_s": round(r.cpu_on(Pu::Cpu), 4),
                    "dpu_cpu_s": round(r.cpu_on(Pu::Dpu), 4),
                    "proxy_on": r.containers.iter().find(|c| c.name == PROXY).map(|c| c.pu.label()),
                });
                if variant.split() {
                    run["fast_path"] = FastCounters::of(r).to_json();
                }
                if let Some(q) = r.emulator_cpu_s {
                    run["emulator_cpu_s"] = json!(round(q, 3));
                }
                runs.insert(variant.key().into(), run);
            }
        }
    }
    let done = |v: Variant| {
        outcomes.iter().find_map(|(x, o)| match o {
            Outcome::Done(r) if *x == v => Some(r.as_ref()),
            _ => None,
        })
    };
    let mut doc = json!({
        "requests": settings.requests,
        "connections": settings.connections,
        "cpu_env": settings.cpu_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "dpu": if heteropod_conformance::dpu::remote() { "qemu" } else { "emulated" },
        "runs": runs,
    });
    if !skipped.is_empty() {
        doc["skipped"] = Value::Object(skipped);
    }
    if let (Some(a), Some(f)) = (done(Variant::AllCpu), done(Variant::SplitFastpath)) {
        let mut t = Map::new();
        for target in targets(a, f) {
            t.insert(
                target.key.into(),
                json!({"value": round(target.ratio, 3), "limit": target.limit, "met": target.met()}),
            );
        }
        doc["targets"] = Value::Object(t);
    }
    doc
}

fn round(v: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (v * k).round() / k
}

/// Writes `doc` to `path` (directories made as needed).
pub fn write(path: &Path, doc: &Value) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(doc)? + "\n";
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::run::{AppReport, Row};

    /// A run as the demo would have measured it: `cpu` gives each row's CPU seconds.
    pub fn fixture(variant: Variant, cpu: &[(&str, Pu, f64)], p50_us: f64, fast: u64) -> RunResult {
        let row = |(name, pu, s): &(&str, Pu, f64)| Row {
            name: name.to_string(),
            pu: *pu,
            cpus: Some(if *pu == Pu::Dpu { "1" } else { "0" }.into()),
            cpu_s: Some(*s),
            from_cgroup: false,
        };
        let (containers, processes) = cpu
            .iter()
            .partition::<Vec<_>, _>(|(n, ..)| [APP, PROXY, "upstream"].contains(n));
        let relay = |n: u64| {
            (
                json!({"relay": {"fast_connects": 1, "fast_active": 0}}),
                json!({"relay": {"fast_connects": 1 + n, "fast_active": 0}}),
            )
        };
        RunResult {
            variant,
            pod_id: "pod".into(),
            containers: containers.iter().map(row).collect(),
            processes: processes.iter().map(row).collect(),
            app: AppReport {
                requests: 1000,
                ok: 1000,
                errors: 0,
                seconds: 2.0,
                p50_us,
                p99_us: p50_us * 3.0,
            },
            cpu_relay: variant.split().then(|| relay(fast)),
            dpu_relay: variant.split().then(|| relay(fast)),
            proxy_totals: None,
            emulator_cpu_s: None,
        }
    }

    fn runs(fast_connects: u64) -> Vec<(Variant, Outcome)> {
        let all = fixture(
            Variant::AllCpu,
            &[
                (APP, Pu::Cpu, 0.03),
                (PROXY, Pu::Cpu, 0.04),
                ("upstream", Pu::Cpu, 0.03),
            ],
            100.0,
            0,
        );
        let split = |v| {
            fixture(
                v,
                &[
                    (APP, Pu::Cpu, 0.03),
                    (PROXY, Pu::Dpu, 0.04),
                    ("upstream", Pu::Cpu, 0.03),
                    ("HeteroNet relay, CPU side", Pu::Cpu, 0.01),
                ],
                80.0,
                fast_connects,
            )
        };
        vec![
            (Variant::AllCpu, Outcome::Done(Box::new(all))),
            (
                Variant::SplitRelay,
                Outcome::Done(Box::new(split(Variant::SplitRelay))),
            ),
            (
                Variant::SplitFastpath,
                Outcome::Done(Box::new(split(Variant::SplitFastpath))),
            ),
        ]
    }

    fn settings() -> Settings {
        Settings {
            requests: 1000,
            connections: 4,
            cpu_env: Vec::new(),
        }
    }

    #[test]
    fn every_run_has_its_five_figures_in_the_document() {
        let sut = document(&settings(), &runs(4));
        for key in ["all_cpu", "split_relay", "split_fastpath"] {
            for field in [
                "host_cpu_ms_per_1k",
                "dpu_cpu_ms_per_1k",
                "p50_us",
                "p99_us",
                "rps",
            ] {
                assert!(
                    sut["runs"][key][field].is_number(),
                    "runs.{key}.{field} in {sut}"
                );
            }
        }
        assert_eq!(sut["runs"]["all_cpu"]["host_cpu_ms_per_1k"], 100.0);
        assert_eq!(sut["runs"]["split_fastpath"]["host_cpu_ms_per_1k"], 70.0);
        assert_eq!(sut["runs"]["split_fastpath"]["dpu_cpu_ms_per_1k"], 40.0);
        assert_eq!(sut["runs"]["split_fastpath"]["rps"], 500.0);
        assert_eq!(sut["runs"]["split_fastpath"]["fast_path"]["connects"], 4);
        assert!(sut["runs"]["all_cpu"].get("fast_path").is_none());
        assert_eq!(sut["targets"]["host_cpu_ratio"]["value"], 0.7);
        assert_eq!(sut["targets"]["host_cpu_ratio"]["met"], false);
        assert_eq!(sut["targets"]["p50_ratio"]["met"], true);
        assert!(sut.get("skipped").is_none());
    }

    #[test]
    fn a_skipped_run_has_its_reason_and_no_figures() {
        let mut outcomes = runs(4);
        outcomes[2].1 = Outcome::Skipped("no broker".into());
        let sut = document(&settings(), &outcomes);
        assert!(sut["runs"].get("split_fastpath").is_none());
        assert_eq!(sut["skipped"]["split_fastpath"], "no broker");
        assert!(sut.get("targets").is_none());
    }

    #[test]
    fn the_floor_is_all_cpu_without_its_sidecar() {
        let outcomes = runs(4);
        let Outcome::Done(all) = &outcomes[0].1 else {
            unreachable!()
        };
        let floor = host_cpu_floor(all).unwrap();
        assert!((floor - 0.6).abs() < 1e-9, "{floor}");
        // 0.1 CPU s over 2 s on one core.
        assert!((busy(all, Pu::Cpu).unwrap() - 0.05).abs() < 1e-9);
        assert_eq!(busy(all, Pu::Dpu), None);
    }

    #[test]
    fn the_document_is_written_where_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo/demo.json");
        write(&path, &json!({"runs": {}})).unwrap();
        let back: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, json!({"runs": {}}));
    }
}
