//! The DPU half of a Pod network: netns with loopback and the Pod IP, the
//! relay supervised (restarted when it dies), nothing left after destroy.
mod common;

use std::{os::unix::fs::PermissionsExt, process::Command, time::Duration};

use common::*;
use heteropod_dpu_proxy::{client::CreatePodNetworkRequest, DpuAgent, Error};

fn in_netns(netns: &str, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path))
}

/// A stand-in relay that records its arguments, then serves fixed counters on
/// the socket named by its last argument (`--stats-socket PATH`) and stays up.
fn fake_relay(h: &mut Harness) -> std::path::PathBuf {
    let relay = h.dir.path().join("relay.sh");
    let args_file = h.dir.path().join("relay.args");
    let stats = h.dir.path().join("relay-stats.json");
    std::fs::write(&stats, r#"{"connects_ok":3}"#).unwrap();
    let script = format!(
        "#!/bin/sh\necho \"$@\" > {}\nfor a; do last=$a; done\n\
         exec socat UNIX-LISTEN:\"$last\",fork,unlink-early OPEN:{},rdonly\n",
        args_file.display(),
        stats.display()
    );
    std::fs::write(&relay, script).unwrap();
    std::fs::set_permissions(&relay, std::fs::Permissions::from_mode(0o755)).unwrap();
    h.extra_args = vec!["--relay".into(), relay.display().to_string()];
    args_file
}

/// The relay runs in the DPU's cgroup parent: on its cores, under its memory limit.
fn assert_in_dpu_cgroup(h: &Harness, pid: u32) {
    let want = format!("/{}", h.parent);
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for c in ["cpuset", "memory", "cpuacct"] {
        let line = cgroups.lines().find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|cs| cs.split(',').any(|x| x == c))
        });
        assert_eq!(
            line.and_then(|l| l.splitn(3, ':').nth(2)),
            Some(want.as_str()),
            "relay {pid} not in the DPU {c} cgroup:\n{cgroups}"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim);
    assert_eq!(allowed, Some(h.cpus.as_str()), "relay {pid} cores");
}

fn pod_req(pod: &str) -> CreatePodNetworkRequest {
    CreatePodNetworkRequest {
        pod_id: pod.into(),
        pod_ip: "10.123.0.7/16".into(),
        region: "/dev/shm/hp-test-region".into(),
        rendezvous: "/tmp/hp-test-rendezvous.sock".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn agent_restart_takes_over_pod_networks_with_a_new_relay() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("netrestart");
    fake_relay(&mut h);
    let agent = h.start_agent().await;
    let r = agent.create_pod_network(pod_req("podr")).await.unwrap();
    h.kill_agent();
    drop(agent);
    let agent = h.start_agent().await;
    let again = agent.create_pod_network(pod_req("podr")).await.unwrap();
    assert_eq!(again.netns_path, r.netns_path);
    assert!(mounted(&r.netns_path));
    assert_ne!(again.relay_pid, r.relay_pid);
    assert!(pid_alive(again.relay_pid) && !pid_alive(r.relay_pid));
    agent.destroy_pod_network("podr").await.unwrap();
    assert!(!mounted(&r.netns_path) && !pid_alive(again.relay_pid));
}

#[tokio::test]
async fn pod_network_has_pod_ip_and_destroy_leaves_nothing() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("net");
    let args_file = fake_relay(&mut h);
    let agent = h.start_agent().await;
    let req = pod_req("pod1");
    let r = agent.create_pod_network(req.clone()).await.unwrap();
    let netns = r.netns_path.clone();
    assert_eq!(
        netns,
        h.state_dir().join("netns/pod1").display().to_string()
    );
    assert!(mounted(&netns), "netns not mounted");
    let addrs = in_netns(&netns, &["ip", "-o", "addr"]);
    assert!(addrs.contains("inet 127.0.0.1/8"), "{addrs}");
    assert!(addrs.contains("inet 10.123.0.7/16"), "{addrs}");
    let lo = in_netns(&netns, &["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");

    // The relay runs with the Pod's settings; when it dies it comes back.
    let first = r.relay_pid;
    assert!(first > 0 && pid_alive(first));
    assert_in_dpu_cgroup(&h, first);
    for _ in 0..100 {
        if args_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let args = std::fs::read_to_string(&args_file).unwrap();
    assert_eq!(
        args.trim(),
        format!("--side dpu --netns {netns} --region /dev/shm/hp-test-region --rendezvous /tmp/hp-test-rendezvous.sock --capture-egress --pod-ip 10.123.0.7 --stats-socket {}", h.state_dir().join("pods/pod1.stats.sock").display())
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut second = first;
    for _ in 0..250 {
        second = agent
            .create_pod_network(req.clone())
            .await
            .unwrap()
            .relay_pid;
        if second != first && second != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(second, first, "relay was not restarted");
    assert!(pid_alive(second));
    assert_in_dpu_cgroup(&h, second);

    // Operators see the Pod, its relay, the restart and the relay's counters.
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = agent.list_pod_networks().await.unwrap();
        if listed.len() == 1 && !listed[0].relay_stats_json.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed.len(), 1, "{listed:?}");
    let info = &listed[0];
    assert_eq!(
        (info.pod_id.as_str(), info.pod_ip.as_str()),
        ("pod1", "10.123.0.7/16")
    );
    assert_eq!((info.relay_pid, info.relay_restarts), (second, 1));
    assert_eq!(info.relay_stats_json, r#"{"connects_ok":3}"#);

    agent.destroy_pod_network("pod1").await.unwrap();
    assert!(!mounted(&netns), "netns still mounted");
    assert!(!std::path::Path::new(&netns).exists(), "netns file left");
    assert!(!pid_alive(second), "relay left running");
    assert!(agent.list_pod_networks().await.unwrap().is_empty());
    assert!(
        !h.state_dir().join("pods/pod1.stats.sock").exists(),
        "stats socket left"
    );
    // Idempotent, and bad input is refused clearly.
    agent.destroy_pod_network("pod1").await.unwrap();
    let bad = CreatePodNetworkRequest {
        pod_id: "p2".into(),
        pod_ip: "10.0.0.300/8".into(),
        ..Default::default()
    };
    assert!(matches!(
        agent.create_pod_network(bad).await,
        Err(Error::InvalidArgument(_))
    ));
    let bad = CreatePodNetworkRequest {
        pod_id: "../p".into(),
        pod_ip: "10.0.0.3/8".into(),
        ..Default::default()
    };
    assert!(matches!(
        agent.create_pod_network(bad).await,
        Err(Error::InvalidArgument(_))
    ));
}
