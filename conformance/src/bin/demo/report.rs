//! The demo's output: a progress bar on stderr while requests run, then the runs side
//! by side, the targets with what bounds them, and the final verdict.

use std::io::{IsTerminal, Write};

use anyhow::{bail, Result};
use serde_json::Value;

use crate::measure::{delta, Pu};
use crate::run::{Outcome, Row, RunResult, Variant, APP, PROXY, UPSTREAM};
use crate::summary::{busy, host_cpu_floor, row_ms_per_1k, targets, FastCounters, Figures};

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
        None => format!("{:<4} {:<7} {:>8}", "-", "-", "-"),
        Some(r) => format!(
            "{:<4} {:<7} {:>8}{}",
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

fn show(v: Option<u64>, f: fn(u64) -> String) -> String {
    v.map_or("-".to_string(), f)
}

fn num(v: u64) -> String {
    v.to_string()
}

/// The relays' work during one run, as (row label, value) pairs.
fn crossed(r: &RunResult) -> Vec<(&'static str, String)> {
    let c = r.cpu_relay.as_ref();
    let d = r.dpu_relay.as_ref();
    if !r.variant.split() {
        let none = || "-".to_string();
        return ROWS_CROSSED.iter().map(|k| (*k, none())).collect();
    }
    let fast = FastCounters::of(r);
    let pair = |a: String, b: String| format!("{a} / {b}");
    vec![
        (
            ROWS_CROSSED[0],
            pair(
                show(delta(c, "relay", "bytes_tcp_to_stream"), kb),
                show(delta(c, "relay", "bytes_stream_to_tcp"), kb),
            ),
        ),
        (
            ROWS_CROSSED[1],
            pair(
                show(delta(c, "relay", "mirror_accepts"), num),
                show(delta(c, "relay", "connects_ok"), num),
            ),
        ),
        (
            ROWS_CROSSED[2],
            pair(
                show(delta(d, "relay", "bytes_tcp_to_stream"), kb),
                show(delta(d, "relay", "bytes_stream_to_tcp"), kb),
            ),
        ),
        (
            ROWS_CROSSED[3],
            format!(
                "{} / {} / {}",
                show(delta(c.or(d), "mux", "streams_total"), num),
                show(delta(c.or(d), "mux", "frames_tx"), num),
                show(delta(c.or(d), "mux", "frames_rx"), num)
            ),
        ),
        (
            ROWS_CROSSED[4],
            pair(
                show(delta(c.or(d), "mux", "sleeps"), num),
                show(delta(c.or(d), "mux", "doorbells"), num),
            ),
        ),
        (
            ROWS_CROSSED[5],
            format!(
                "{} / {} / {}",
                show(fast.connects, num),
                show(fast.accepts, num),
                show(fast.served, num)
            ),
        ),
        (
            ROWS_CROSSED[6],
            format!(
                "{} / {} / {} / {}",
                show(fast.active, num),
                show(fast.passed, num),
                show(fast.failed, num),
                show(fast.reset, num)
            ),
        ),
        (
            ROWS_CROSSED[7],
            pair(show(fast.bytes_in, kb), show(fast.bytes_out, kb)),
        ),
    ]
}

const ROWS_CROSSED: [&str; 8] = [
    "relay CPU side: TCP->stream / stream->TCP",
    "relay CPU side: mirror accepts / connects",
    "relay DPU side: TCP->stream / stream->TCP",
    "mux (CPU side): streams / frames tx / rx",
    "mux (CPU side): sleeps / doorbells",
    "fast path: connects / accepts / served",
    "fast path: open / passed / failed / reset",
    "fast path: bytes in / out (DPU relay)",
];

fn sidecar(r: &RunResult) -> String {
    let Some(t) = &r.proxy_totals else {
        return "-".into();
    };
    let g = |k: &str| t.get(k).and_then(Value::as_u64).unwrap_or(0);
    format!(
        "{} / {} / {}",
        g("connections_total"),
        kb(g("bytes_downstream_to_upstream")),
        kb(g("bytes_upstream_to_downstream"))
    )
}

const LABEL_W: usize = 44;
const COL_W: usize = 26;

/// Prints one row: a label and a value per run.
fn line(label: &str, runs: &[&RunResult], f: &dyn Fn(&RunResult) -> String) {
    let mut out = format!("{label:<LABEL_W$}");
    for r in runs {
        out.push_str(&format!(" {:<COL_W$}", f(r)));
    }
    println!("{}", out.trim_end());
}

/// Prints the runs side by side.
pub fn print_table(runs: &[&RunResult]) {
    let mut names: Vec<String> = Vec::new();
    for r in runs {
        for row in r.containers.iter().chain(&r.processes) {
            if !names.contains(&row.name) {
                names.push(row.name.clone());
            }
        }
    }
    let find = |r: &RunResult, name: &str| {
        r.containers
            .iter()
            .chain(&r.processes)
            .find(|x| x.name == name)
            .cloned()
    };
    line("", runs, &|r| r.variant.label().to_string());
    line("container / process", runs, &|_| {
        format!("{:<4} {:<7} {:>8}", "on", "cpus", "CPU s")
    });
    for name in &names {
        let label = match name.as_str() {
            "app" => "app (sends requests)",
            "proxy" => "proxy (Envoy-like sidecar)",
            "upstream" => "upstream (answers)",
            other => other,
        };
        line(label, runs, &|r| cell(find(r, name).as_ref()));
    }
    println!("{}", "-".repeat(LABEL_W + runs.len() * (COL_W + 1)));
    line("CPU seconds on host / DPU cores", runs, &|r| {
        format!("{:.3} / {:.3}", r.cpu_on(Pu::Cpu), r.cpu_on(Pu::Dpu))
    });
    line("host-core CPU ms per 1000 requests", runs, &|r| {
        format!("{:.1}", Figures::of(r).host_cpu_ms_per_1k)
    });
    line("DPU-core CPU ms per 1000 requests", runs, &|r| {
        format!("{:.1}", Figures::of(r).dpu_cpu_ms_per_1k)
    });
    line("requests served ok / errors", runs, &|r| {
        format!("{} / {}", r.app.ok, r.app.errors)
    });
    line("latency p50 / p99 (us)", runs, &|r| {
        let f = Figures::of(r);
        format!("{:.0} / {:.0}", f.p50_us, f.p99_us)
    });
    line("throughput (requests/s)", runs, &|r| {
        format!("{:.0}", Figures::of(r).rps)
    });
    line("host / DPU cores busy", runs, &|r| {
        let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.0} %", v * 100.0));
        format!("{} / {}", pct(busy(r, Pu::Cpu)), pct(busy(r, Pu::Dpu)))
    });
    line("sidecar saw: conns / up / down", runs, &sidecar);
    let crossed: Vec<_> = runs.iter().map(|r| crossed(r)).collect();
    for (i, label) in ROWS_CROSSED.iter().enumerate() {
        let mut out = format!("{label:<LABEL_W$}");
        for c in &crossed {
            out.push_str(&format!(
                " {:<COL_W$}",
                c.get(i).map_or("", |x| x.1.as_str())
            ));
        }
        println!("{}", out.trim_end());
    }
    println!();
    println!(
        "CPU s: used while the requests ran (CRI ContainerStats for containers, /proc for the shim and relays{}).",
        if runs.iter().flat_map(|r| &r.containers).any(|r| r.from_cgroup) {
            "; * = from the cgroup, the runtime reported none"
        } else {
            ""
        }
    );
    println!(
        "busy: CPU s on those cores / (seconds of the run x cores in the containers' cpuset)."
    );
    println!(
        "fast path: connections the CPU relay brokered onto rings / handed to a preloaded CPU listener / the DPU relay served; open now, answered \"use the kernel\", failed, reset; bytes the DPU relay moved between rings and TCP."
    );
    if heteropod_conformance::dpu::remote() {
        for r in runs {
            if let Some(s) = r.emulator_cpu_s.filter(|_| r.variant.split()) {
                println!(
                    "The DPU is a QEMU guest with its own kernel: \"on\" and its cores come from its agent. QEMU used {s:.3} s of host CPU emulating it during the {} run (not in the totals above; DPU hardware does this work on its own cores).",
                    r.variant.label()
                );
            }
        }
        println!("The DPU-side relay runs in the guest: its CPU time and counters are its own, as the agent reports them.");
    } else {
        println!(
            "on: told from the cgroup (the emulated DPU keeps its containers under \"{}\"); cpus: the cpuset.",
            crate::measure::dpu_cgroup_parent()
        );
        match std::env::var("HETEROPOD_HOST_CPUS").ok().filter(|s| !s.is_empty()) {
            Some(host) => println!(
                "The emulated DPU's cores are host cores set aside by cpuset; the host's own are {host} ([host] cpus: CPU containers, shims and CPU-side relays stay there)."
            ),
            None => println!(
                "The emulated DPU's cores are host cores set aside by cpuset; host containers may also use them (no [host] cpus)."
            ),
        }
    }
}

/// Says which runs did not happen and why.
pub fn print_skipped(outcomes: &[(Variant, Outcome)]) {
    for (v, o) in outcomes {
        if let Outcome::Skipped(why) = o {
            println!("==> {} ({}) skipped: {why}", v.label(), v.key());
        }
    }
}

/// The targets for split with the fast path against all-CPU, and what
/// bounds them on this machine. Reported, never enforced: machines differ.
pub fn print_targets(all_cpu: &RunResult, relay: Option<&RunResult>, fast: &RunResult) {
    println!();
    println!(
        "==> targets (issue 12): split with the fast path against all-CPU; reported, not enforced (machines differ)"
    );
    for t in targets(all_cpu, fast) {
        println!(
            "  {:<34} <= {:.1} x all-CPU: {:.2} x ({:.1} vs {:.1} {}) -- {}",
            t.what,
            t.limit,
            t.ratio,
            t.fast,
            t.all_cpu,
            t.unit,
            if t.met() { "met" } else { "NOT met" }
        );
    }
    let ms = |r: &RunResult, n: &str| row_ms_per_1k(r, n).map_or("-".into(), |v| format!("{v:.1}"));
    println!("  what bounds them here (CPU ms per 1,000 requests):");
    if let Some(floor) = host_cpu_floor(all_cpu) {
        println!(
            "  * the floor: the proxy is all a split moves off the host, {} of all-CPU's {:.1}: no split goes below {:.2} x",
            ms(all_cpu, PROXY),
            Figures::of(all_cpu).host_cpu_ms_per_1k,
            floor
        );
    }
    println!(
        "  * the host still runs app {} (all-CPU {}), upstream {} ({}), CPU relay {}, shim {}",
        ms(fast, APP),
        ms(all_cpu, APP),
        ms(fast, UPSTREAM),
        ms(all_cpu, UPSTREAM),
        ms(fast, "HeteroNet relay, CPU side"),
        ms(fast, "shim")
    );
    let c = fast.cpu_relay.as_ref();
    let fast_counters = FastCounters::of(fast);
    if delta(c, "relay", "bytes_tcp_to_stream").unwrap_or(0) > 0 {
        println!(
            "  * the CPU relay: the proxy -> upstream hop (a DPU-half connection to a CPU listener) still crosses both relays ({} / {} through the CPU relay){}",
            show(delta(c, "relay", "bytes_tcp_to_stream"), kb),
            show(delta(c, "relay", "bytes_stream_to_tcp"), kb),
            if fast_counters.accepts.unwrap_or(0) > 0 {
                ""
            } else {
                "; no fast accepts: the upstream's listener is not served by the fast path (not preloaded, or it listened before the Pod's relays started)"
            }
        );
    }
    let without = relay.unwrap_or(all_cpu);
    let spin = std::env::var("DEMO_CPU_ENV")
        .ok()
        .filter(|e| e.contains("HETEROSOCKET_SPIN_US"))
        .map_or_else(
            || "spin up to 50 us (HETEROSOCKET_SPIN_US; DEMO_CPU_ENV=HETEROSOCKET_SPIN_US=0 turns it off)".to_string(),
            |e| format!("spin as DEMO_CPU_ENV sets it ({e})"),
        );
    println!(
        "  * the preloaded programs: app {} and upstream {} with the library, {} and {} without ({}): their blocked calls {spin} before they sleep, on {} host core(s)",
        ms(fast, APP),
        ms(fast, UPSTREAM),
        ms(without, APP),
        ms(without, UPSTREAM),
        without.variant.label(),
        cores(fast, APP).map_or("-".into(), |n| n.to_string())
    );
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.0} %", v * 100.0));
    println!(
        "  * latency: the DPU's {} core(s) were {} busy: DPU relay {} ({}: {}), proxy {}; host cores {} busy (all-CPU {}); each request waits for both PUs' work in turn",
        cores(fast, PROXY).map_or("-".into(), |n| n.to_string()),
        pct(busy(fast, Pu::Dpu)),
        ms(fast, "HeteroNet relay, DPU side"),
        without.variant.label(),
        ms(without, "HeteroNet relay, DPU side"),
        ms(fast, PROXY),
        pct(busy(fast, Pu::Cpu)),
        pct(busy(all_cpu, Pu::Cpu)),
    );
    if let Some(r) = relay {
        let (f, r) = (Figures::of(fast), Figures::of(r));
        println!(
            "  * against the relay alone: host CPU {:.2} x, DPU CPU {:.2} x, p50 {:.2} x",
            f.host_cpu_ms_per_1k / r.host_cpu_ms_per_1k.max(1e-9),
            f.dpu_cpu_ms_per_1k / r.dpu_cpu_ms_per_1k.max(1e-9),
            f.p50_us / r.p50_us.max(1e-9)
        );
    }
}

/// How many cores container `name` could use in run `r` (its cpuset).
fn cores(r: &RunResult, name: &str) -> Option<usize> {
    r.containers
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.cpus.as_deref())
        .and_then(crate::measure::cpu_count)
}

/// Fails the demo when a request failed, a container ran somewhere unexpected,
/// or the fast-path run made no fast connection.
pub fn check(outcomes: &[(Variant, Outcome)]) -> Result<()> {
    for (_, o) in outcomes {
        let Outcome::Done(r) = o else {
            continue;
        };
        if r.app.errors > 0 || r.app.ok != r.app.requests {
            bail!(
                "{} run: {} of {} requests failed or got a wrong answer",
                r.variant.label(),
                r.app.errors,
                r.app.requests
            );
        }
        for c in &r.containers {
            let want = if r.variant.split() && c.name == PROXY {
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
        if r.variant == Variant::SplitFastpath {
            let fast = FastCounters::of(r);
            if fast.connects.unwrap_or(0) == 0 {
                bail!(
                    "{} run (Pod {}): the CPU relay brokered no fast connection (fast_connects {}): the app did not use the fast path",
                    r.variant.label(),
                    r.pod_id,
                    show(fast.connects, num)
                );
            }
        }
    }
    let done = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Done(_)))
        .count();
    println!("==> every request got the right answer in all {done} runs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::APP;
    use crate::summary::tests::fixture;

    fn split_fastpath(fast_connects: u64) -> (Variant, Outcome) {
        let r = fixture(
            Variant::SplitFastpath,
            &[(APP, Pu::Cpu, 0.03), (PROXY, Pu::Dpu, 0.04)],
            80.0,
            fast_connects,
        );
        (Variant::SplitFastpath, Outcome::Done(Box::new(r)))
    }

    #[test]
    fn a_fast_path_run_without_fast_connections_fails_the_demo() {
        assert!(check(&[split_fastpath(4)]).is_ok());
        let err = check(&[split_fastpath(0)]).unwrap_err().to_string();
        assert!(err.contains("no fast connection"), "{err}");
        // A skipped run is not a failure (its reason is printed).
        assert!(check(&[(Variant::SplitFastpath, Outcome::Skipped("no BAR".into()))]).is_ok());
    }

    #[test]
    fn a_proxy_left_on_the_cpu_in_a_split_run_fails_the_demo() {
        let r = fixture(Variant::SplitRelay, &[(PROXY, Pu::Cpu, 0.04)], 80.0, 0);
        let err = check(&[(Variant::SplitRelay, Outcome::Done(Box::new(r)))]).unwrap_err();
        assert!(err.to_string().contains("ran on the cpu"), "{err}");
    }

    #[test]
    fn failed_requests_fail_the_demo() {
        let mut r = fixture(Variant::AllCpu, &[(APP, Pu::Cpu, 0.03)], 80.0, 0);
        r.app.errors = 1;
        r.app.ok = 999;
        assert!(check(&[(Variant::AllCpu, Outcome::Done(Box::new(r)))]).is_err());
    }

    #[test]
    fn fast_path_counters_show_in_a_split_run_only() {
        let (_, o) = split_fastpath(4);
        let Outcome::Done(r) = o else { unreachable!() };
        let rows = crossed(&r);
        assert_eq!(rows.len(), ROWS_CROSSED.len());
        assert_eq!(rows[5].1, "4 / - / 4");
        let all = fixture(Variant::AllCpu, &[(APP, Pu::Cpu, 0.03)], 80.0, 0);
        assert!(crossed(&all).iter().all(|(_, v)| v == "-"));
    }
}
