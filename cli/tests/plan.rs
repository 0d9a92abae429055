//! `heteropod plan` run as a binary over the example manifests and bad input.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn manifest(name: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conformance/manifests");
    dir.join(name).display().to_string()
}

const EXAMPLES: [&str; 5] = [
    "runtimeclass-dpu.yaml",
    "istio-sidecar-pod.yaml",
    "fluent-bit-pod.yaml",
    "node-exporter-pod.yaml",
    "knative-function-pod.yaml",
];

/// Runs `heteropod plan` with no node config, so only the flags give capacity.
fn plan(args: &[&str], files: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_heteropod"))
        .arg("plan")
        .args(["--config", "/nonexistent/heteropod/config.toml"])
        .args(args)
        .args(files)
        .output()
        .expect("run heteropod")
}

fn examples() -> Vec<String> {
    EXAMPLES.iter().map(|m| manifest(m)).collect()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "heteropod failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "heteropod should have failed");
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// (container, placement, reason code) per decision of a JSON plan.
fn placements(json: &Value) -> Vec<(String, String, String)> {
    json["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["container"].as_str().unwrap().to_string(),
                d["placement"].as_str().unwrap().to_string(),
                d["reason"]["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn row<'a>(table: &'a str, container: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(container))
        .unwrap_or_else(|| panic!("no row for {container} in\n{table}"));
    line.split_whitespace().collect()
}

#[test]
fn example_manifests_offload_what_fits_as_a_table() {
    let out = plan(
        &[
            "--dpu-cores",
            "600m",
            "--dpu-memory",
            "1Gi",
            "--solver",
            "both",
        ],
        &examples(),
    );
    let table = stdout(&out);
    assert_eq!(
        row(&table, "CONTAINER"),
        [
            "CONTAINER",
            "POD",
            "ROLE",
            "CPU",
            "MEMORY",
            "PLACEMENT",
            "REASON"
        ]
    );
    assert_eq!(
        row(&table, "istio-proxy")[..6],
        [
            "istio-proxy",
            "reviews",
            "infrastructure",
            "300m",
            "128Mi",
            "cpu"
        ]
    );
    assert!(table.contains("not enough DPU cores left"), "{table}");
    assert_eq!(
        row(&table, "fluent-bit")[5..],
        ["dpu", "chosen", "by", "planner"]
    );
    assert_eq!(row(&table, "node-exporter")[5], "dpu");
    assert_eq!(row(&table, "queue-proxy")[5], "dpu");
    assert_eq!(row(&table, "user-container")[5], "cpu");
    assert!(table.contains("freed host CPU:   550m"), "{table}");
    assert!(
        table.contains("DPU cores:        550m of 600m used"),
        "{table}"
    );
    assert!(
        table.contains("DPU memory:       160Mi of 1Gi used"),
        "{table}"
    );
    assert!(
        table.contains("crossing traffic: 55 Mbit/s (no budget)"),
        "{table}"
    );
    assert!(table.contains("optimal:          proven"), "{table}");
    assert!(table.contains("heuristic gap:    0 (0.0%)"), "{table}");
    let notes = String::from_utf8(out.stderr).unwrap();
    assert!(
        notes.contains("runtimeclass-dpu.yaml document 1 (kind RuntimeClass)"),
        "{notes}"
    );
    assert!(
        notes.contains("istio-sidecar-pod.yaml document 2 (kind Service)"),
        "{notes}"
    );
}

#[test]
fn example_manifests_as_json_with_and_without_a_traffic_budget() {
    let roomy = ["--dpu-cores", "1", "--dpu-memory", "1Gi", "--json"];
    let json: Value = serde_json::from_str(&stdout(&plan(&roomy, &examples()))).unwrap();
    let offloaded: Vec<String> = placements(&json)
        .into_iter()
        .filter(|(_, p, _)| p == "dpu")
        .map(|(c, _, _)| c)
        .collect();
    assert_eq!(
        offloaded,
        ["istio-proxy", "fluent-bit", "node-exporter", "queue-proxy"]
    );
    assert_eq!(json["freed_cpu_millis"], 850);
    assert_eq!(json["crossing_mbps"], 255);
    assert_eq!(json["solver"], "exact");
    assert_eq!(json["proven_optimal"], true);
    assert_eq!(json["skipped"][0]["kind"], "RuntimeClass");

    let budget = [
        &roomy[..],
        &["--traffic-budget", "100", "--solver", "heuristic"],
    ]
    .concat();
    let json: Value = serde_json::from_str(&stdout(&plan(&budget, &examples()))).unwrap();
    let istio = placements(&json)
        .into_iter()
        .find(|(c, _, _)| c == "istio-proxy");
    assert_eq!(
        istio,
        Some(("istio-proxy".into(), "cpu".into(), "traffic-budget".into()))
    );
    assert_eq!(json["freed_cpu_millis"], 550);
    assert_eq!(json["crossing_mbps"], 55);
    assert_eq!(json["solver"], "heuristic");
    assert_eq!(json["traffic_budget_mbps"], 100);
}

#[test]
fn capacity_and_patterns_come_from_the_node_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[dpu]\nenabled = true\ncores = 2\nmemory_mb = 512\n[placement]\ninfra_names = [\"envoy*\"]\n",
    )
    .unwrap();
    let pod = dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: web, image: w, resources: {requests: {cpu: 1}}}\n  - {name: envoy-sidecar, image: e, resources: {requests: {cpu: 1500m, memory: 256Mi}}}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_heteropod"))
        .args(["plan", "--json", "--config"])
        .arg(&config)
        .arg(&pod)
        .output()
        .unwrap();
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["dpu_capacity"]["cpu_millis"], 2000);
    assert_eq!(json["dpu_capacity"]["memory_bytes"], 512u64 << 20);
    assert_eq!(json["freed_cpu_millis"], 1500);
    assert_eq!(json["decisions"][1]["role"], "infrastructure");
}

#[test]
fn manifests_can_come_from_stdin() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_heteropod"))
        .args([
            "plan",
            "--config",
            "/nonexistent",
            "--dpu-cores",
            "1",
            "--dpu-memory",
            "1Gi",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let text = std::fs::read(manifest("knative-function-pod.yaml")).unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &text).unwrap();
    drop(child.stdin.take());
    let table = stdout(&child.wait_with_output().unwrap());
    assert_eq!(row(&table, "queue-proxy")[5], "dpu");
}

#[test]
fn missing_capacity_is_a_clear_error() {
    let err = failure(&plan(&[], &[manifest("fluent-bit-pod.yaml")]));
    assert!(
        err.contains("DPU capacity unknown: pass --dpu-cores"),
        "{err}"
    );
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bad_yaml = dir.path().join("bad.yaml");
    std::fs::write(&bad_yaml, "kind: Pod\nmetadata: [\n").unwrap();
    let bad_qty = dir.path().join("qty.yaml");
    std::fs::write(
        &bad_qty,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, resources: {requests: {cpu: lots}}}\n",
    )
    .unwrap();
    let cap = ["--dpu-cores", "1", "--dpu-memory", "1Gi"];
    let err = failure(&plan(&cap, &[bad_yaml.display().to_string()]));
    assert!(err.contains("bad.yaml, document 1"), "{err}");
    let err = failure(&plan(&cap, &[bad_qty.display().to_string()]));
    assert!(
        err.contains("container c: cpu: invalid quantity \"lots\""),
        "{err}"
    );
    let err = failure(&plan(
        &["--dpu-cores", "many", "--dpu-memory", "1Gi"],
        &examples(),
    ));
    assert!(
        err.contains("--dpu-cores") && err.contains("invalid quantity"),
        "{err}"
    );
    let err = failure(&plan(
        &cap,
        &[dir.path().join("absent.yaml").display().to_string()],
    ));
    assert!(err.contains("absent.yaml"), "{err}");
    let err = failure(&plan(&cap, &[manifest("runtimeclass-dpu.yaml")]));
    assert!(err.contains("no Pods"), "{err}");
}

#[test]
fn pinned_containers_that_cannot_fit_fail_the_plan() {
    let err = failure(&plan(
        &["--dpu-cores", "200m", "--dpu-memory", "1Gi"],
        &[manifest("knative-function-pod.yaml")],
    ));
    assert!(err.contains("hello-function/queue-proxy"), "{err}");
    assert!(err.contains("pinned to the DPU"), "{err}");
}
