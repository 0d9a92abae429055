//! Who may talk to the agent and what the agent keeps to itself: the real
//! agent binary, real runc.
mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use common::*;
use heteropod_dpu_proxy::{client::ExecRequest, DpuAgent, Error};
use serde_json::json;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn spec_and_exec_files_are_readable_by_the_agent_alone() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("private");
    let agent = h.start_agent().await;
    let bundle = h.bundle("p1", &["sleep", "1000"], json!({}));
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    spec["process"]["env"] = json!(["PATH=/bin", "DB_PASSWORD=hunter2"]);
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    agent
        .create_container(create_req("p1", &bundle))
        .await
        .unwrap();
    agent.start("p1", "").await.unwrap();
    let process = json!({"args": ["true"], "cwd": "/", "env": ["TOKEN=s3cret"],
        "user": {"uid": 0, "gid": 0}});
    let req = ExecRequest {
        container_id: "p1".into(),
        exec_id: "e1".into(),
        process_json: process.to_string().into_bytes(),
        ..Default::default()
    };
    agent.exec(req).await.unwrap();

    let state = h.state_dir();
    let dir = state.join("containers/p1");
    assert_eq!(mode(&state), 0o700, "state dir");
    assert_eq!(mode(&state.join("containers")), 0o700);
    assert_eq!(mode(&dir), 0o700, "container dir");
    assert_eq!(mode(&dir.join("bundle")), 0o700, "adapted bundle dir");
    let config = dir.join("bundle/config.json");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("hunter2"));
    assert_eq!(mode(&config), 0o600, "the adapted spec holds the env");
    let exec = dir.join("exec-e1.json");
    assert!(std::fs::read_to_string(&exec).unwrap().contains("s3cret"));
    assert_eq!(mode(&exec), 0o600, "the exec process holds the env");
    assert_eq!(mode(&dir.join("state.json")), 0o600);

    agent.kill("p1", "", 9, false).await.unwrap();
    wait_exit(&agent, "p1", "").await;
    agent.delete("p1", "").await.unwrap();
}

#[tokio::test]
async fn exec_ids_are_validated_by_every_call_that_names_one() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("execid");
    let agent = h.start_agent().await;
    h.create(&agent, "x1", &["sleep", "1000"]).await;
    for bad in ["../x", "a/b", ".hidden", "e 1"] {
        let invalid = |r: Result<(), Error>, call: &str| {
            assert!(
                matches!(r, Err(Error::InvalidArgument(_))),
                "{call} with exec id {bad:?}: {r:?}"
            )
        };
        invalid(agent.state("x1", bad).await.map(drop), "State");
        invalid(agent.start("x1", bad).await.map(drop), "Start");
        invalid(agent.kill("x1", bad, 9, false).await, "Kill");
        invalid(agent.delete("x1", bad).await.map(drop), "Delete");
        invalid(agent.wait("x1", bad).await.map(drop), "Wait");
        invalid(agent.close_io("x1", bad).await, "CloseIO");
        invalid(agent.resize_pty("x1", bad, 80, 24).await, "ResizePty");
        invalid(
            agent.write_input("x1", bad, b"x".to_vec()).await.map(drop),
            "WriteInput",
        );
        let req = ExecRequest {
            container_id: "x1".into(),
            exec_id: bad.into(),
            process_json: br#"{"args":["true"],"cwd":"/"}"#.to_vec(),
            ..Default::default()
        };
        invalid(agent.exec(req).await, "Exec");
    }
    agent.delete("x1", "").await.unwrap();
}

/// `heteropod-dpu-proxy --ping URL` run as user `nobody`, with `caps`
/// ambient (e.g. `dac_override`: past file modes, so only the agent's own
/// check stands in the way); (succeeded, stderr).
fn ping_as_nobody(url: &str, caps: Option<&str>, config: &Path) -> (bool, String) {
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if let Some(c) = caps {
        cmd.arg(format!("--inh-caps=+{c}"))
            .arg(format!("--ambient-caps=+{c}"));
    }
    let out = cmd
        .arg(AGENT)
        .args(["--ping", url, "--config"])
        .arg(config)
        .output()
        .expect("run setpriv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn can_setpriv() -> bool {
    let ok = std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok();
    if !ok {
        eprintln!("SKIP: needs setpriv (util-linux) to act as another user");
    }
    ok
}

#[tokio::test]
async fn unix_socket_admits_root_and_the_configured_uids_only() {
    if !can_run() || !can_setpriv() {
        return;
    }
    let mut h = Harness::new("peercred");
    let agent = h.start_agent().await;
    let sock = Path::new(h.listen.strip_prefix("unix://").unwrap()).to_path_buf();
    assert_eq!(mode(&sock), 0o600, "socket");
    assert_eq!(mode(sock.parent().unwrap()), 0o700, "socket directory");
    // The agent itself still answers root.
    agent.version().await.unwrap();

    let empty = Path::new("/dev/null");
    let (ok, err) = ping_as_nobody(&h.listen, None, empty);
    assert!(!ok, "nobody reached the agent through the file modes");
    assert!(err.contains("ermission denied"), "{err}");
    // Past the file modes, the agent's own check (SO_PEERCRED) refuses.
    let (ok, err) = ping_as_nobody(&h.listen, Some("dac_override"), empty);
    assert!(!ok, "nobody with CAP_DAC_OVERRIDE was served");
    let log = h.agent_log();
    assert!(
        log.contains("uid 65534 is not allowed"),
        "refusal not logged ({err}); log:\n{log}"
    );

    // A uid the node config names gets in.
    h.kill_agent();
    h.config.push_str("[access]\nallow_uids = [65534]\n");
    drop(h.start_agent().await);
    let (ok, err) = ping_as_nobody(&h.listen, Some("dac_override"), empty);
    assert!(ok, "an allowed uid was refused: {err}");
}

/// The raw bytes of a ttrpc Version request, as the issue's reproduction
/// sent them; the reply's 9th byte is 2 when the agent answers.
const TTRPC_VERSION: &str =
    r"\x00\x00\x00\x23\x00\x00\x00\x01\x01\x00\x0a\x18heteropod.agent.v1.Agent\x12\x07Version";

/// What user `nobody` gets back for a raw ttrpc Version request to `port`.
fn raw_version_as_nobody(port: u16) -> Vec<u8> {
    let script = r#"exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; printf "$2" >&3; timeout 5 cat <&3"#;
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["bash", "-c", script, "_", &port.to_string(), TTRPC_VERSION])
        .output()
        .expect("run setpriv bash");
    out.stdout
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn network_clients_must_prove_they_hold_the_node_key() {
    if !can_run() || !can_setpriv() {
        return;
    }
    let mut h = Harness::new("tcpauth");
    let key = h.dir.path().join("node.key");
    let gen = std::process::Command::new(AGENT)
        .arg("--generate-key")
        .arg(&key)
        .status()
        .unwrap();
    assert!(gen.success());
    assert_eq!(mode(&key), 0o600);
    let port = free_port();
    let tcp = format!("tcp://127.0.0.1:{port}");
    h.extra_args = vec!["--listen".into(), tcp.clone()];

    // Without a key the agent serves no network transport at all.
    h.spawn_agent();
    for _ in 0..200 {
        if !h.agent_running() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(!h.agent_running(), "served tcp:// without a key");
    assert!(
        h.agent_log().contains("needs the node key"),
        "{}",
        h.agent_log()
    );
    h.kill_agent();

    h.config
        .push_str(&format!("[access]\nkey_file = {key:?}\n"));
    drop(h.start_agent().await);
    let agent = heteropod_dpu_proxy::AgentClient::connect_with_key(&tcp, Some(&key))
        .await
        .unwrap();
    agent.version().await.unwrap();

    // A client without the key does not even try.
    let e = heteropod_dpu_proxy::AgentClient::connect(&tcp)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // The issue's reproduction: nobody's raw ttrpc request is not answered.
    let reply = raw_version_as_nobody(port);
    assert!(
        reply.starts_with(b"HPAUTH1\n") && reply.len() == 8 + 32,
        "nobody got more than the challenge: {reply:02x?}"
    );
    // nobody with a key of their own is refused by the agent.
    let wrong = h.dir.path().join("nobody.key");
    std::process::Command::new(AGENT)
        .arg("--generate-key")
        .arg(&wrong)
        .status()
        .unwrap();
    nix::unistd::chown(&wrong, Some(65534.into()), Some(65534.into())).unwrap();
    let cfg = h.dir.path().join("nobody.toml");
    std::fs::write(&cfg, format!("[access]\nkey_file = {wrong:?}\n")).unwrap();
    let (ok, err) = ping_as_nobody(&tcp, None, &cfg);
    assert!(!ok, "a wrong key was accepted");
    assert!(err.contains("refused this key"), "{err}");
    // So is root with a wrong key.
    let root_wrong = h.dir.path().join("other.key");
    std::process::Command::new(AGENT)
        .arg("--generate-key")
        .arg(&root_wrong)
        .status()
        .unwrap();
    let e = heteropod_dpu_proxy::AgentClient::connect_with_key(&tcp, Some(&root_wrong))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::Unauthenticated { .. }), "{e}");
}

/// A bundle of `h` whose spec `edit` changes.
fn bundle_with(h: &Harness, id: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let bundle = h.bundle(id, &["true"], json!({}));
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut spec);
    std::fs::write(&path, spec.to_string()).unwrap();
    bundle
}

fn denied(r: Result<u32, Error>, needle: &str) {
    match r {
        Err(Error::PermissionDenied(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("want PermissionDenied mentioning {needle:?}, got {other:?}"),
    }
}

fn privileged(spec: &mut serde_json::Value) {
    let all = json!([
        "CAP_SYS_ADMIN",
        "CAP_NET_ADMIN",
        "CAP_SYS_MODULE",
        "CAP_KILL"
    ]);
    for set in ["bounding", "effective", "permitted"] {
        spec["process"]["capabilities"][set] = all.clone();
    }
    spec["linux"]["maskedPaths"] = json!([]);
    spec["linux"]["readonlyPaths"] = json!([]);
    spec["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
}

#[tokio::test]
async fn requests_beyond_the_nodes_policy_get_clear_errors() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("policy");
    let agent = h.start_agent().await;
    let create = |id: &str, bundle: &Path| agent.create_container(create_req(id, bundle));

    // A bundle outside the bundle roots (here: outside the test's directory).
    let outside = tempfile::Builder::new()
        .prefix("hp-outside")
        .tempdir_in("/tmp")
        .unwrap();
    let b = bundle_with(&h, "o1", |_| {});
    let moved = outside.path().join("o1");
    std::fs::rename(&b, &moved).unwrap();
    denied(create("o1", &moved).await, "bundle_roots");
    // ... also by a symlink from inside.
    std::os::unix::fs::symlink(&moved, h.dir.path().join("bundles/o2")).unwrap();
    denied(
        create("o2", &h.dir.path().join("bundles/o2")).await,
        "outside",
    );
    // A rootfs that is the DPU's own root.
    let b = bundle_with(&h, "r1", |s| s["root"]["path"] = json!("/"));
    denied(create("r1", &b).await, "bundle_roots");

    let b = bundle_with(
        &h,
        "k1",
        |s| {
            s["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "touch /pwned"]}]})
        },
    );
    denied(create("k1", &b).await, "hooks");

    let b = bundle_with(&h, "n1", |s| {
        s["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
            {"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}])
    });
    denied(create("n1", &b).await, "not made by this agent");
    let b = bundle_with(&h, "n2", |s| {
        let nss = s["linux"]["namespaces"].as_array_mut().unwrap();
        nss.retain(|n| n["type"] != "network");
    });
    denied(create("n2", &b).await, "host_network");

    let b = bundle_with(&h, "m1", |s| {
        s["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/host", "type": "bind", "source": "/etc", "options": ["rbind", "ro"]}),
        )
    });
    denied(create("m1", &b).await, "mount_sources");

    let b = bundle_with(&h, "d1", |s| {
        s["linux"]["devices"] = json!([{"path": "/dev/mem", "type": "c", "major": 1, "minor": 1}]);
    });
    denied(create("d1", &b).await, "/dev/mem");

    let b = bundle_with(&h, "p1", privileged);
    denied(create("p1", &b).await, "privileged = true");

    // An exec may not bring capabilities its container lacks.
    h.create(&agent, "e1", &["sleep", "1000"]).await;
    agent.start("e1", "").await.unwrap();
    let req = ExecRequest {
        container_id: "e1".into(),
        exec_id: "x".into(),
        process_json: json!({"args": ["true"], "cwd": "/",
            "capabilities": {"bounding": ["CAP_SYS_ADMIN"], "effective": ["CAP_SYS_ADMIN"]}})
        .to_string()
        .into_bytes(),
        ..Default::default()
    };
    let e = agent.exec(req).await.unwrap_err();
    assert!(
        matches!(&e, Error::PermissionDenied(m) if m.contains("CAP_SYS_ADMIN")),
        "{e}"
    );
    agent.kill("e1", "", 9, false).await.unwrap();
    wait_exit(&agent, "e1", "").await;
    agent.delete("e1", "").await.unwrap();
    assert!(agent.list_containers().await.unwrap().is_empty());

    // Where the node allows it, the privileged container runs.
    h.kill_agent();
    h.config.push_str("privileged = true\n");
    let agent = h.start_agent().await;
    let b = bundle_with(&h, "p2", privileged);
    agent.create_container(create_req("p2", &b)).await.unwrap();
    agent.start("p2", "").await.unwrap();
    assert_eq!(wait_exit(&agent, "p2", "").await, 0);
    agent.delete("p2", "").await.unwrap();
}
