//! The benchmark's table and JSON.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::stats::{percentile, summarize, Summary};
use crate::{HandlerRun, PodSample};

/// Reads one metric from a Pod's sample.
type Getter = fn(&PodSample) -> Duration;

/// Metrics in table order: (key, label, getter).
const METRICS: &[(&str, &str, Getter)] = &[
    ("run_pod_sandbox", "RunPodSandbox", |s| s.run),
    ("create_container", "CreateContainer", |s| s.create),
    ("start_container", "StartContainer", |s| s.start),
    ("start_total", "Run+Create+Start", |s| {
        s.run + s.create + s.start
    }),
    ("stop_remove_pod", "StopPodSandbox+RemovePodSandbox", |s| {
        s.teardown
    }),
];

pub struct Report {
    a: String,
    b: String,
    pods: usize,
    /// metric key -> handler -> summary
    latency: BTreeMap<&'static str, BTreeMap<String, Summary>>,
    /// handler -> (per-Pod KiB values, mean KiB, program)
    rss: BTreeMap<String, (Vec<u64>, f64, String)>,
}

fn ratio(x: f64, y: f64) -> f64 {
    if y > 0.0 {
        x / y
    } else {
        f64::NAN
    }
}

impl Report {
    pub fn new(handlers: &[String], pods: usize, runs: &BTreeMap<String, HandlerRun>) -> Self {
        let mut latency: BTreeMap<&'static str, BTreeMap<String, Summary>> = BTreeMap::new();
        for (key, _, get) in METRICS {
            for (h, run) in runs {
                let samples: Vec<Duration> = run.pods.iter().map(|(_, s)| get(s)).collect();
                latency
                    .entry(key)
                    .or_default()
                    .insert(h.clone(), summarize(&samples));
            }
        }
        let rss = runs
            .iter()
            .map(|(h, run)| {
                let v: Vec<u64> = run.shim_rss_kib.values().copied().collect();
                let mean = if v.is_empty() {
                    f64::NAN
                } else {
                    v.iter().sum::<u64>() as f64 / v.len() as f64
                };
                (h.clone(), (v, mean, run.shim_programs.join(",")))
            })
            .collect();
        Self {
            a: handlers[0].clone(),
            b: handlers[1].clone(),
            pods,
            latency,
            rss,
        }
    }

    fn p50(&self, key: &str, h: &str) -> f64 {
        self.latency
            .get(key)
            .and_then(|m| m.get(h))
            .map(|s| s.p50_ms)
            .unwrap_or(f64::NAN)
    }

    fn p99(&self, key: &str, h: &str) -> f64 {
        self.latency
            .get(key)
            .and_then(|m| m.get(h))
            .map(|s| s.p99_ms)
            .unwrap_or(f64::NAN)
    }

    fn rss_mib(&self, h: &str) -> f64 {
        self.rss.get(h).map(|r| r.1 / 1024.0).unwrap_or(f64::NAN)
    }

    pub fn print_table(&self) {
        let (a, b) = (&self.a, &self.b);
        println!();
        println!(
            "shim benchmark: {} Pods per handler, ratio = {a}/{b}",
            self.pods
        );
        println!(
            "{:<34} {:>11} {:>11} {:>7} {:>11} {:>11} {:>7}",
            "metric (ms)",
            format!("{a} p50"),
            format!("{b} p50"),
            "ratio",
            format!("{a} p99"),
            format!("{b} p99"),
            "ratio"
        );
        for (key, label, _) in METRICS {
            let (a50, b50, a99, b99) = (
                self.p50(key, a),
                self.p50(key, b),
                self.p99(key, a),
                self.p99(key, b),
            );
            println!(
                "{label:<34} {a50:>11.1} {b50:>11.1} {:>7.2} {a99:>11.1} {b99:>11.1} {:>7.2}",
                ratio(a50, b50),
                ratio(a99, b99)
            );
        }
        let (ra, rb) = (self.rss_mib(a), self.rss_mib(b));
        println!(
            "{:<34} {ra:>11.2} {rb:>11.2} {:>7.2}   (MiB, mean per Pod; max {a} {:.2}, {b} {:.2})",
            "shim RSS per Pod",
            ratio(ra, rb),
            self.rss_max_mib(a),
            self.rss_max_mib(b)
        );
    }

    fn rss_max_mib(&self, h: &str) -> f64 {
        self.rss
            .get(h)
            .and_then(|r| r.0.iter().max().copied())
            .map(|k| k as f64 / 1024.0)
            .unwrap_or(f64::NAN)
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let (a, b) = (&self.a, &self.b);
        let mut handlers = serde_json::Map::new();
        for h in [a, b] {
            let mut m = serde_json::Map::new();
            for (key, _, _) in METRICS {
                if let Some(s) = self.latency.get(key).and_then(|x| x.get(h)) {
                    m.insert((*key).to_string(), serde_json::to_value(s)?);
                }
            }
            if let Some((v, mean, program)) = self.rss.get(h) {
                let mut sorted: Vec<f64> = v.iter().map(|k| *k as f64).collect();
                sorted.sort_by(|x, y| x.total_cmp(y));
                m.insert(
                    "shim_rss".into(),
                    json!({
                        "program": program,
                        "mean_kib_per_pod": num(*mean),
                        "p50_kib": num(percentile(&sorted, 0.5)),
                        "pods_measured": v.len(),
                        "raw_kib": v,
                    }),
                );
            }
            handlers.insert(h.clone(), Value::Object(m));
        }
        let mut ratios = serde_json::Map::new();
        for (key, _, _) in METRICS {
            let name = if *key == "start_total" {
                "start".to_string()
            } else {
                (*key).to_string()
            };
            ratios.insert(
                format!("{name}_p50"),
                num(ratio(self.p50(key, a), self.p50(key, b))),
            );
            ratios.insert(
                format!("{name}_p99"),
                num(ratio(self.p99(key, a), self.p99(key, b))),
            );
        }
        ratios.insert(
            "shim_rss".into(),
            num(ratio(self.rss_mib(a), self.rss_mib(b))),
        );
        let doc = json!({
            "benchmark": "shim",
            "pods_per_handler": self.pods,
            "numerator": a,
            "denominator": b,
            "handlers": Value::Object(handlers),
            "ratio": Value::Object(ratios),
        });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }
}

/// JSON number, or null for NaN/infinite.
fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}
