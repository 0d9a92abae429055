//! The demo's output: a progress bar on stderr while requests run, then the split and
//! all-CPU runs side by side, and the final verdict.

use std::io::{IsTerminal, Write};

use anyhow::{bail, Result};
use serde_json::Value;

use crate::measure::{counter, Pu};
use crate::run::{Row, RunResult, Variant, PROXY};

const BAR_WIDTH: usize = 40;

/// `[=====>      ] 300/2000 split` on stderr; redrawn in place on a terminal, a line
/// per tenth otherwise.
pub struct Progress {
    label: &'static str,
    total: u64,
    shown: u64,
    tty: bool,
}

impl Progress {
    pub fn new(label: &'static str, total: u64) -> Self {
        let p = Self {
            label,
            total: total.max(1),
            shown: 0,
            tty: std::io::stderr().is_terminal(),
        };
        p.draw(0);
        p
    }

    pub fn update(&mut self, done: u64) {
        let step = self.total / 10;
        if done == self.shown || (!self.tty && step > 0 && done / step == self.shown / step) {
            return;
        }
        self.shown = done;
        self.draw(done);
    }

    pub fn finish(&mut self) {
        if self.tty {
            eprintln!();
        }
    }

    fn draw(&self, done: u64) {
        let done = done.min(self.total);
        let filled = (done as usize * BAR_WIDTH) / self.total as usize;
        let mut bar = "=".repeat(filled);
        if filled < BAR_WIDTH {
            bar.push('>');
            bar.push_str(&" ".repeat(BAR_WIDTH - filled - 1));
        }
        let line = format!("[{bar}] {done}/{} {}", self.total, self.label);
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.3}"))
}

fn cell(r: Option<&Row>) -> String {
    match r {
        None => format!("{:<5} {:<6} {:>8}", "-", "-", "-"),
        Some(r) => format!(
            "{:<5} {:<6} {:>8}{}",
            r.pu.label(),
            r.cpus.as_deref().unwrap_or("-"),
            secs(r.cpu_s),
            if r.from_cgroup { "*" } else { " " }
        ),
    }
}

fn kb(n: u64) -> String {
    let k = n as f64 / 1000.0;
    if k >= 100.0 {
        format!("{k:.0} KB")
    } else {
        format!("{k:.1} KB")
    }
}

/// `after - before` of one relay counter, as text.
fn delta(pair: Option<&(Value, Value)>, section: &str, key: &str) -> Option<u64> {
    let (b, a) = pair?;
    Some(counter(a, section, key)?.saturating_sub(counter(b, section, key).unwrap_or(0)))
}

fn crossed(r: &RunResult) -> Vec<(String, String)> {
    let c = r.cpu_relay.as_ref();
    let d = r.dpu_relay.as_ref();
    let show = |v: Option<u64>, f: fn(u64) -> String| v.map_or("-".to_string(), f);
    let num = |v: u64| v.to_string();
    let none = r.processes.iter().all(|p| !p.name.starts_with("HeteroNet"));
    if none && c.is_none() && d.is_none() {
        let msg = "nothing (no DPU container, no relay)".to_string();
        return vec![("relay".into(), msg)];
    }
    vec![
        (
            "relay CPU side: TCP->stream / stream->TCP".into(),
            format!(
                "{} / {}",
                show(delta(c, "relay", "bytes_tcp_to_stream"), kb),
                show(delta(c, "relay", "bytes_stream_to_tcp"), kb)
            ),
        ),
        (
            "relay CPU side: mirror accepts / connects".into(),
            format!(
                "{} / {}",
                show(delta(c, "relay", "mirror_accepts"), num),
                show(delta(c, "relay", "connects_ok"), num)
            ),
        ),
        (
            "relay DPU side: TCP->stream / stream->TCP".into(),
            format!(
                "{} / {}",
                show(delta(d, "relay", "bytes_tcp_to_stream"), kb),
                show(delta(d, "relay", "bytes_stream_to_tcp"), kb)
            ),
        ),
        (
            "mux (CPU side): streams / frames tx / rx".into(),
            format!(
                "{} / {} / {}",
                show(delta(c.or(d), "mux", "streams_total"), num),
                show(delta(c.or(d), "mux", "frames_tx"), num),
                show(delta(c.or(d), "mux", "frames_rx"), num)
            ),
        ),
        (
            "mux (CPU side): sleeps / doorbells".into(),
            format!(
                "{} / {}",
                show(delta(c.or(d), "mux", "sleeps"), num),
                show(delta(c.or(d), "mux", "doorbells"), num)
            ),
        ),
    ]
}

fn sidecar(r: &RunResult) -> String {
    let Some(t) = &r.proxy_totals else {
        return "-".into();
    };
    let g = |k: &str| t.get(k).and_then(Value::as_u64).unwrap_or(0);
    format!(
        "{} conns, {} up, {} down",
        g("connections_total"),
        kb(g("bytes_downstream_to_upstream")),
        kb(g("bytes_upstream_to_downstream"))
    )
}

/// Prints both runs side by side.
pub fn print_table(split: &RunResult, all_cpu: &RunResult) {
    let names: Vec<String> = {
        let mut n: Vec<String> = Vec::new();
        for r in split.containers.iter().chain(&all_cpu.containers) {
            if !n.contains(&r.name) {
                n.push(r.name.clone());
            }
        }
        for r in split.processes.iter().chain(&all_cpu.processes) {
            if !n.contains(&r.name) {
                n.push(r.name.clone());
            }
        }
        n
    };
    let find = |r: &RunResult, name: &str| {
        r.containers
            .iter()
            .chain(&r.processes)
            .find(|x| x.name == name)
            .cloned()
    };
    let w = 42;
    println!(
        "{:<w$} {:<36} all-CPU",
        "",
        format!("split ({PROXY} on the DPU)")
    );
    let head = format!("{:<5} {:<6} {:>8}", "on", "cpus", "CPU s");
    println!("{:<w$} {head:<36} {head}", "container / process");
    for name in &names {
        let label = match name.as_str() {
            "app" => "app (sends requests)",
            "proxy" => "proxy (Envoy-like sidecar)",
            "upstream" => "upstream (answers)",
            other => other,
        };
        println!(
            "{label:<w$} {:<36} {}",
            cell(find(split, name).as_ref()),
            cell(find(all_cpu, name).as_ref())
        );
    }
    let line = |what: &str, f: &dyn Fn(&RunResult) -> String| {
        println!("{what:<w$} {:<36} {}", f(split), f(all_cpu));
    };
    println!("{}", "-".repeat(w + 60));
    line("CPU seconds on host cores", &|r| {
        format!("{:.3}", r.cpu_on(Pu::Cpu))
    });
    line("CPU seconds on DPU cores", &|r| {
        format!("{:.3}", r.cpu_on(Pu::Dpu))
    });
    line("host-core CPU ms per 1000 requests", &|r| {
        format!(
            "{:.1}",
            r.cpu_on(Pu::Cpu) * 1e6 / r.app.requests.max(1) as f64
        )
    });
    line("requests served ok / errors", &|r| {
        format!("{} / {}", r.app.ok, r.app.errors)
    });
    line("latency p50 / p99 (us)", &|r| {
        format!("{:.0} / {:.0}", r.app.p50_us, r.app.p99_us)
    });
    line("throughput (requests/s)", &|r| {
        format!("{:.0}", r.app.ok as f64 / r.app.seconds.max(1e-9))
    });
    line("sidecar saw", &sidecar);
    let (cs, ca) = (crossed(split), crossed(all_cpu));
    for i in 0..cs.len().max(ca.len()) {
        let key = cs
            .get(i)
            .or(ca.get(i))
            .map(|x| x.0.clone())
            .unwrap_or_default();
        let val = |v: &Vec<(String, String)>| v.get(i).map(|x| x.1.clone()).unwrap_or_default();
        println!("{key:<w$} {:<36} {}", val(&cs), val(&ca));
    }
    println!();
    println!(
        "CPU s: used while the requests ran (CRI ContainerStats for containers, /proc for the shim and relays{}).",
        if split.containers.iter().chain(&all_cpu.containers).any(|r| r.from_cgroup) {
            "; * = from the cgroup, the runtime reported none"
        } else {
            ""
        }
    );
    if heteropod_conformance::dpu::remote() {
        if let Some(s) = split.emulator_cpu_s {
            println!(
                "The DPU is a QEMU guest with its own kernel: \"on\" and its cores come from its agent. QEMU used {s:.3} s of host CPU emulating it during the split run (not in the totals above; DPU hardware does this work on its own cores)."
            );
        }
        println!("The DPU-side relay runs in the guest: its CPU time and counters are its own, as the agent reports them.");
    } else {
        println!(
            "on: told from the cgroup (the emulated DPU keeps its containers under \"{}\"); cpus: the cpuset.",
            crate::measure::dpu_cgroup_parent()
        );
        println!("The emulated DPU's cores are host cores set aside by cpuset; its relay is counted on the DPU side.");
    }
}

/// Fails the demo when a request failed or a container ran somewhere unexpected.
pub fn check(results: &[RunResult]) -> Result<()> {
    for r in results {
        if r.app.errors > 0 || r.app.ok != r.app.requests {
            bail!(
                "{} run: {} of {} requests failed or got a wrong answer",
                r.variant.label(),
                r.app.errors,
                r.app.requests
            );
        }
        for c in &r.containers {
            let want = if r.variant == Variant::Split && c.name == PROXY {
                Pu::Dpu
            } else {
                Pu::Cpu
            };
            if c.pu != want {
                bail!(
                    "{} run (Pod {}): container {} ran on the {} instead of the {}",
                    r.variant.label(),
                    r.pod_id,
                    c.name,
                    c.pu.label(),
                    want.label()
                );
            }
        }
    }
    println!("==> every request got the right answer in both runs");
    Ok(())
}
