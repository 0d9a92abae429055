//! The plain-text form of a snapshot: capacity, Pods, relays. Missing values
//! print as `-`.

use std::fmt::{Display, Write};

use heteropod_planner::quantity::{format_bytes, format_cpu_millis};

use super::{Capacity, Relay, Snapshot};

pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    out.push_str(&capacity(s));
    out.push('\n');
    out.push_str(&pods(s));
    out.push('\n');
    out.push_str(&relays(&s.relays));
    out
}

fn dash<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Exact binary suffix when there is one ("512Mi"), else one decimal.
fn bytes(b: u64) -> String {
    let exact = format_bytes(b);
    if !exact.ends_with(|c: char| c.is_ascii_digit()) || b < 1024 {
        return exact;
    }
    const UNITS: [(&str, u32); 3] = [("Gi", 30), ("Mi", 20), ("Ki", 10)];
    let (unit, shift) = UNITS
        .into_iter()
        .find(|(_, shift)| b >= 1u64 << shift)
        .unwrap_or(("Ki", 10));
    format!("{:.1}{unit}", b as f64 / (1u64 << shift) as f64)
}

fn capacity(s: &Snapshot) -> String {
    let mut out = String::new();
    let endpoint = s.dpu.endpoint.as_deref().unwrap_or("(not configured)");
    let state = match &s.dpu.error {
        None => String::new(),
        Some(e) => format!(" (unavailable: {e})"),
    };
    let _ = writeln!(out, "DPU agent:   {endpoint}{state}");
    let c: Option<&Capacity> = s.dpu.capacity.as_ref();
    let _ = writeln!(
        out,
        "cores:       {} total (cpus {}), {} reserved",
        dash(c.map(|c| c.cores_total)),
        dash(c.map(|c| c.cpus.as_str()).filter(|c| !c.is_empty())),
        dash(c.map(|c| format_cpu_millis(c.reserved_millicores))),
    );
    let _ = writeln!(
        out,
        "memory:      {} total, {} reserved, {} used",
        dash(c.map(|c| bytes(c.memory_total_bytes))),
        dash(c.map(|c| bytes(c.memory_reserved_bytes))),
        dash(c.map(|c| bytes(c.memory_used_bytes))),
    );
    let _ = writeln!(
        out,
        "cpu used:    {} s",
        dash(c.map(|c| format!("{:.2}", c.cpu_seconds_used))),
    );
    let _ = writeln!(
        out,
        "containers:  {} running on the DPU",
        dash(c.map(|c| c.running_containers)),
    );
    out
}

fn short(id: &str) -> String {
    id.chars().take(13).collect()
}

fn pods(s: &Snapshot) -> String {
    const HEADER: [&str; 7] = ["POD", "NAMESPACE", "ID", "IP", "CONTAINER", "ON", "STATE"];
    let mut rows = Vec::new();
    for p in &s.pods {
        let pod = [
            dash(p.name.as_deref()),
            dash(p.namespace.as_deref()),
            short(&p.id),
            dash(p.ip.as_deref()),
        ];
        if p.containers.is_empty() {
            let mut row = pod.to_vec();
            row.extend(["-".into(), "-".into(), dash(p.state.as_deref())]);
            rows.push(row);
        }
        for c in &p.containers {
            let mut row = pod.to_vec();
            row.extend([
                c.name.clone().unwrap_or_else(|| short(&c.id)),
                c.runs_on.as_str().to_string(),
                dash(c.state.as_deref()),
            ]);
            rows.push(row);
        }
    }
    if rows.is_empty() {
        return "no HeteroPod Pods\n".into();
    }
    table(&HEADER, &rows)
}

fn relays(relays: &[Relay]) -> String {
    const HEADER: [&str; 11] = [
        "POD", "SIDE", "PID", "RESTARTS", "STREAMS", "FAST", "BYTES-TX", "BYTES-RX", "SPINS",
        "SLEEPS", "WAKEUPS",
    ];
    if relays.is_empty() {
        return "no split Pods, no relays\n".into();
    }
    let rows: Vec<Vec<String>> = relays
        .iter()
        .map(|r| {
            let c = r.counters.as_ref();
            let streams = match c {
                Some(c) => format!("{}/{}", dash(c.streams_active), dash(c.streams_total)),
                None => "-".into(),
            };
            // Fast-path connections, open/ever (the mux's streams do not count them).
            let fast = match c {
                Some(c) => format!("{}/{}", dash(c.fast_active), dash(c.fast_total)),
                None => "-".into(),
            };
            vec![
                short(&r.pod_id),
                dash(r.side.map(|s| s.as_str())),
                dash(r.pid),
                dash(r.restarts),
                streams,
                fast,
                dash(c.and_then(|c| c.bytes_tx)),
                dash(c.and_then(|c| c.bytes_rx)),
                dash(c.and_then(|c| c.spins)),
                dash(c.and_then(|c| c.sleeps)),
                dash(c.and_then(|c| c.wakeups)),
            ]
        })
        .collect();
    table(&HEADER, &rows)
}

/// Left-aligned columns two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_exact_when_possible_else_one_decimal() {
        assert_eq!(bytes(512 << 20), "512Mi");
        assert_eq!(bytes(1536 * 1024 + 1), "1.5Mi");
        assert_eq!(bytes(1000), "1000");
    }
}
