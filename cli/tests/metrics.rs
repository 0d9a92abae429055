//! `heteropod metrics`: Prometheus text from a real DPU agent and both
//! relays of a split Pod, scraped over plain HTTP on loopback.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;

/// The running endpoint; killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `heteropod metrics` and returns it with the address it bound.
fn serve(args: &[String]) -> (Server, String) {
    let mut child = Command::new(HETEROPOD)
        .arg("metrics")
        .args(args)
        .env_remove("HETEROPOD_CONFIG")
        .env_remove("CONTAINERD_ADDRESS")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = Server(child);
    let addr = line
        .trim()
        .strip_prefix("serving Prometheus metrics on http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (server, addr)
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_serve_dpu_and_relay_counters_with_escaped_labels() {
    if !can_run() {
        return;
    }
    let node = Node::start("metrics").await;
    let mut args = vec!["--listen".to_string(), "127.0.0.1:0".to_string()];
    args.extend(node.source_args());
    let (_server, addr) = serve(&args);

    let resp = http_get(&addr, "/metrics");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        resp.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{resp}"
    );
    let text = body(&resp);
    let cpus = heteropod_dpu_proxy::server::last_core();
    // The endpoint's directory is `q"b\s`: quote and backslash escaped.
    let escaped = node.endpoint.replace('\\', "\\\\").replace('"', "\\\"");
    let p = format!("pod=\"{POD}\"");
    let want = [
        "# TYPE heteropod_dpu_cpu_seconds_total counter".to_string(),
        "heteropod_dpu_up 1".into(),
        "heteropod_cri_up 0".into(),
        format!("heteropod_dpu_info{{endpoint=\"{escaped}\",cpus=\"{cpus}\"}} 1"),
        "heteropod_dpu_cores 1".into(),
        "heteropod_dpu_reserved_millicores 500".into(),
        "heteropod_dpu_memory_bytes{kind=\"total\"} 536870912".into(),
        "heteropod_dpu_memory_bytes{kind=\"reserved\"} 67108864".into(),
        "heteropod_dpu_containers{status=\"running\"} 1".into(),
        "heteropod_dpu_containers{status=\"stopped\"} 0".into(),
        format!("heteropod_relay_up{{{p},side=\"cpu\"}} 1"),
        format!("heteropod_relay_streams{{{p},side=\"cpu\"}} 3"),
        format!("heteropod_relay_streams{{{p},side=\"dpu\"}} 2"),
        format!("heteropod_relay_streams_opened_total{{{p},side=\"dpu\"}} 7"),
        format!("heteropod_relay_bytes_total{{{p},side=\"cpu\",direction=\"tx\"}} 2222"),
        format!("heteropod_relay_bytes_total{{{p},side=\"dpu\",direction=\"rx\"}} 2222"),
        format!("heteropod_relay_spins_total{{{p},side=\"cpu\"}} 66"),
        format!("heteropod_relay_sleeps_total{{{p},side=\"dpu\"}} 44"),
        format!("heteropod_relay_wakeups_total{{{p},side=\"cpu\"}} 88"),
        format!("heteropod_relay_restarts_total{{{p}}} 0"),
    ];
    for w in &want {
        assert!(text.lines().any(|l| l == w), "missing {w:?} in\n{text}");
    }
    let cpu_seconds = text
        .lines()
        .find_map(|l| l.strip_prefix("heteropod_dpu_cpu_seconds_total "))
        .unwrap_or_else(|| panic!("no cpu seconds in\n{text}"));
    assert!(cpu_seconds.parse::<f64>().is_ok(), "{cpu_seconds}");

    let resp = http_get(&addr, "/other");
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
}

#[test]
fn metrics_report_an_unreachable_agent_as_down() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--endpoint",
        &format!("unix://{}/none.sock", dir.path().display()),
        "--cri-endpoint",
        &dir.path().join("none-cri.sock").display().to_string(),
    ]
    .map(String::from)
    .into();
    let (_server, addr) = serve(&args);
    let resp = http_get(&addr, "/metrics");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    let text = body(&resp);
    assert!(text.lines().any(|l| l == "heteropod_dpu_up 0"), "{text}");
    assert!(text.lines().any(|l| l == "heteropod_cri_up 0"), "{text}");
    assert!(!text.contains("heteropod_dpu_cores"), "{text}");
}

#[test]
fn metrics_refuse_a_non_loopback_address_without_allow_remote() {
    let out = Command::new(HETEROPOD)
        .args([
            "metrics",
            "--listen",
            "0.0.0.0:0",
            "--endpoint",
            "unix:///nonexistent.sock",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("--allow-remote"),
        "{stderr}"
    );
    let out = Command::new(HETEROPOD)
        .args(["metrics", "--listen", "localhost"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an IP:PORT"));

    let args = [
        "--listen",
        "0.0.0.0:0",
        "--allow-remote",
        "--endpoint",
        "unix:///nonexistent.sock",
    ]
    .map(String::from);
    let (_server, addr) = serve(&args);
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
}
