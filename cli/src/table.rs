//! Plain-text rendering of a plan: one row per container, then a summary.

use std::fmt::Write;

use heteropod_planner::quantity::{format_bytes, format_cpu_millis};
use heteropod_planner::Plan;

const HEADER: [&str; 7] = [
    "CONTAINER",
    "POD",
    "ROLE",
    "CPU",
    "MEMORY",
    "PLACEMENT",
    "REASON",
];

pub fn render(plan: &Plan) -> String {
    let rows: Vec<[String; 7]> = plan
        .decisions
        .iter()
        .map(|d| {
            [
                d.container.clone(),
                d.pod.clone(),
                d.role.to_string(),
                format_cpu_millis(d.cpu_millis),
                format_bytes(d.memory_bytes),
                d.placement.to_string(),
                d.reason.to_string(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&HEADER);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out.push('\n');
    out.push_str(&summary(plan));
    out
}

fn summary(plan: &Plan) -> String {
    let mut s = String::new();
    let cap = plan.dpu_capacity;
    let used = plan.dpu_used;
    let _ = writeln!(
        s,
        "freed host CPU:   {}",
        format_cpu_millis(plan.freed_cpu_millis)
    );
    let _ = writeln!(
        s,
        "DPU cores:        {} of {} used",
        format_cpu_millis(used.cpu_millis),
        format_cpu_millis(cap.cpu_millis)
    );
    let _ = writeln!(
        s,
        "DPU memory:       {} of {} used",
        format_bytes(used.memory_bytes),
        format_bytes(cap.memory_bytes)
    );
    let budget = match plan.traffic_budget_mbps {
        Some(b) => format!("budget {b} Mbit/s"),
        None => "no budget".into(),
    };
    let _ = writeln!(
        s,
        "crossing traffic: {} Mbit/s ({budget})",
        plan.crossing_mbps
    );
    let nodes = plan
        .search_nodes
        .map(|n| format!(", {n} search nodes"))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "solver:           {} ({} candidates{nodes})",
        plan.solver, plan.candidates
    );
    let _ = writeln!(
        s,
        "optimal:          {}",
        if plan.proven_optimal {
            "proven"
        } else {
            "not proven optimal"
        }
    );
    if let Some(cmp) = &plan.comparison {
        let gap = match (
            cmp.heuristic_freed_cpu_millis,
            cmp.gap_millis,
            cmp.gap_percent,
        ) {
            (Some(h), Some(g), Some(p)) => format!(
                "{} ({p:.1}%): heuristic frees {}, exact {}",
                format_cpu_millis(g),
                format_cpu_millis(h),
                format_cpu_millis(cmp.exact_freed_cpu_millis)
            ),
            _ => format!(
                "heuristic found no plan: {}",
                cmp.heuristic_error.as_deref().unwrap_or("unknown")
            ),
        };
        let _ = writeln!(s, "heuristic gap:    {gap}");
    }
    s
}
