//! A snapshot in the Prometheus text exposition format 0.0.4, written by
//! hand (a dozen families do not need a metrics registry crate).

use std::fmt::Write;

use super::{dpu, Side, Snapshot};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family: `# HELP`, `# TYPE` and its samples.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, String)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: impl ToString) {
        self.samples.push((labels, value.to_string()));
    }

    fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            out.push_str(self.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {value}");
        }
    }
}

/// Label values escape backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed only.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn flag(b: bool) -> u8 {
    u8::from(b)
}

pub fn render(s: &Snapshot) -> String {
    let mut families = dpu_families(s);
    families.extend(relay_families(s));
    let mut out = String::new();
    for f in &families {
        f.write(&mut out);
    }
    out
}

fn dpu_families(s: &Snapshot) -> Vec<Family> {
    let mut up = Family::new(
        "heteropod_dpu_up",
        "gauge",
        "1 when the DPU agent answered this scrape.",
    );
    up.add(vec![], flag(s.dpu.error.is_none()));
    let mut cri_up = Family::new(
        "heteropod_cri_up",
        "gauge",
        "1 when containerd's CRI API answered this scrape.",
    );
    cri_up.add(vec![], flag(s.cri.error.is_none()));
    let mut info = Family::new(
        "heteropod_dpu_info",
        "gauge",
        "The DPU agent's endpoint and cores (cpuset list).",
    );
    let mut cores = Family::new(
        "heteropod_dpu_cores",
        "gauge",
        "DPU cores given to containers.",
    );
    let mut reserved = Family::new(
        "heteropod_dpu_reserved_millicores",
        "gauge",
        "Sum of the CPU limits of running DPU containers, in millicores.",
    );
    let mut memory = Family::new(
        "heteropod_dpu_memory_bytes",
        "gauge",
        "DPU memory: total, reserved by container limits, used (measured).",
    );
    let mut cpu = Family::new(
        "heteropod_dpu_cpu_seconds_total",
        "counter",
        "CPU time used by DPU containers.",
    );
    let mut containers = Family::new(
        "heteropod_dpu_containers",
        "gauge",
        "Containers the DPU agent holds, by status.",
    );
    if let Some(c) = &s.dpu.capacity {
        info.add(
            vec![
                ("endpoint", s.dpu.endpoint.clone().unwrap_or_default()),
                ("cpus", c.cpus.clone()),
            ],
            1,
        );
        cores.add(vec![], c.cores_total);
        reserved.add(vec![], c.reserved_millicores);
        for (kind, v) in [
            ("total", c.memory_total_bytes),
            ("reserved", c.memory_reserved_bytes),
            ("used", c.memory_used_bytes),
        ] {
            memory.add(vec![("kind", kind.to_string())], v);
        }
        cpu.add(vec![], c.cpu_seconds_used);
        for state in dpu::STATES {
            let n = s
                .pods
                .iter()
                .flat_map(|p| &p.containers)
                .filter(|c| c.runs_on == Side::Dpu && c.state.as_deref() == Some(state))
                .count();
            containers.add(vec![("status", state.to_string())], n);
        }
    }
    vec![up, cri_up, info, cores, reserved, memory, cpu, containers]
}

fn relay_families(s: &Snapshot) -> Vec<Family> {
    let mut up = Family::new(
        "heteropod_relay_up",
        "gauge",
        "1 when the relay served its counters.",
    );
    let mut connected = Family::new(
        "heteropod_relay_connected",
        "gauge",
        "1 while the relay's link to the other side is up.",
    );
    let mut streams = Family::new(
        "heteropod_relay_streams",
        "gauge",
        "Streams open through the relay.",
    );
    let mut opened = Family::new(
        "heteropod_relay_streams_opened_total",
        "counter",
        "Streams opened through the relay.",
    );
    let mut bytes = Family::new(
        "heteropod_relay_bytes_total",
        "counter",
        "Bytes the relay sent (tx) to or received (rx) from the other side.",
    );
    let mut spins = Family::new(
        "heteropod_relay_spins_total",
        "counter",
        "Waits for the other side that ended while spinning.",
    );
    let mut sleeps = Family::new(
        "heteropod_relay_sleeps_total",
        "counter",
        "Waits for the other side that went to sleep on a doorbell.",
    );
    let mut wakeups = Family::new(
        "heteropod_relay_wakeups_total",
        "counter",
        "Doorbell wake-ups received from the other side.",
    );
    let mut restarts = Family::new(
        "heteropod_relay_restarts_total",
        "counter",
        "Times the DPU agent restarted a Pod's DPU relay.",
    );
    for r in &s.relays {
        let side = r.side.map_or("", Side::as_str).to_string();
        let pod_side = || vec![("pod", r.pod_id.clone()), ("side", side.clone())];
        if let (Some(Side::Dpu), Some(n)) = (r.side, r.restarts) {
            restarts.add(vec![("pod", r.pod_id.clone())], n);
        }
        up.add(pod_side(), flag(r.counters.is_some()));
        let Some(c) = &r.counters else { continue };
        if let Some(v) = c.connected {
            connected.add(pod_side(), flag(v));
        }
        let put = |f: &mut Family, v: Option<u64>| {
            if let Some(v) = v {
                f.add(pod_side(), v);
            }
        };
        put(&mut streams, c.streams_active);
        put(&mut opened, c.streams_total);
        put(&mut spins, c.spins);
        put(&mut sleeps, c.sleeps);
        put(&mut wakeups, c.wakeups);
        for (dir, v) in [("tx", c.bytes_tx), ("rx", c.bytes_rx)] {
            if let Some(v) = v {
                let mut labels = pod_side();
                labels.push(("direction", dir.to_string()));
                bytes.add(labels, v);
            }
        }
    }
    vec![
        up, connected, streams, opened, bytes, spins, sleeps, wakeups, restarts,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }

    #[test]
    fn families_without_samples_are_left_out() {
        let mut sut = Family::new("m", "gauge", "h");
        let mut out = String::new();
        sut.write(&mut out);
        assert_eq!(out, "");
        sut.add(vec![("k", "v\"".into())], 3);
        sut.write(&mut out);
        assert_eq!(out, "# HELP m h\n# TYPE m gauge\nm{k=\"v\\\"\"} 3\n");
    }
}
