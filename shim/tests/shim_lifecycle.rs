//! Drives the built shim binary the way containerd does, against real runc.

mod common;

use common::{can_run, code_of, create_req, ctx, id_req, Harness};
use containerd_shim_protos::{
    api::{self, Status},
    protobuf::{well_known_types::any::Any, MessageField},
    ttrpc::Code,
};
use tokio::{io::AsyncReadExt, net::unix::pipe};

#[tokio::test]
async fn container_output_exit_status_and_idempotent_answers() {
    if !can_run() {
        return;
    }
    let h = Harness::new("exit").await;
    let bundle = h.bundle("c1", &["sh", "-c", "echo hello; exit 3"], &[], false);
    let address = h.start_shim("c1", &bundle);
    let sut = h.client(&address).await;
    let stdout = h.fifo("c1-stdout");
    let mut reader = pipe::OpenOptions::new().open_receiver(&stdout).unwrap();

    let created = sut
        .create(ctx(), &create_req(&h, "c1", &bundle, &stdout))
        .await
        .unwrap();
    assert!(created.pid > 0);
    let state = sut
        .state(
            ctx(),
            &id_req(|r: &mut api::StateRequest| r.id = "c1".into()),
        )
        .await
        .unwrap();
    assert_eq!(state.status.enum_value(), Ok(Status::CREATED));

    sut.start(
        ctx(),
        &id_req(|r: &mut api::StartRequest| r.id = "c1".into()),
    )
    .await
    .unwrap();
    let waited = sut
        .wait(
            ctx(),
            &id_req(|r: &mut api::WaitRequest| r.id = "c1".into()),
        )
        .await
        .unwrap();
    assert_eq!(waited.exit_status, 3);
    assert!(waited.exited_at.seconds > 0);
    let mut out = String::new();
    reader.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "hello\n");

    // Wait after exit, Kill on an exited process, State of a stopped one.
    let again = sut
        .wait(
            ctx(),
            &id_req(|r: &mut api::WaitRequest| r.id = "c1".into()),
        )
        .await
        .unwrap();
    assert_eq!(again.exit_status, 3);
    let err = sut
        .kill(
            ctx(),
            &id_req(|r: &mut api::KillRequest| {
                r.id = "c1".into();
                r.signal = 9;
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(err).0, Code::NOT_FOUND);
    let state = sut
        .state(
            ctx(),
            &id_req(|r: &mut api::StateRequest| r.id = "c1".into()),
        )
        .await
        .unwrap();
    assert_eq!(state.status.enum_value(), Ok(Status::STOPPED));
    assert_eq!(state.exit_status, 3);

    let deleted = sut
        .delete(
            ctx(),
            &id_req(|r: &mut api::DeleteRequest| r.id = "c1".into()),
        )
        .await
        .unwrap();
    assert_eq!(deleted.exit_status, 3);
    let err = sut
        .delete(
            ctx(),
            &id_req(|r: &mut api::DeleteRequest| r.id = "c1".into()),
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(err).0, Code::NOT_FOUND, "Delete twice");

    sut.shutdown(ctx(), &api::ShutdownRequest::default())
        .await
        .unwrap();
    assert!(
        h.shims_exited().await,
        "shim must exit after the last delete and Shutdown"
    );
    assert!(
        h.runc_containers().is_empty(),
        "runc still knows {:?}",
        h.runc_containers()
    );
    let topics = h.topics();
    for t in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(topics.iter().any(|x| x == t), "missing {t} in {topics:?}");
    }
    let pos = |t: &str| topics.iter().position(|x| x == t).unwrap();
    assert!(pos("/tasks/create") < pos("/tasks/start"), "{topics:?}");
    assert!(pos("/tasks/start") < pos("/tasks/exit"), "{topics:?}");
    assert!(pos("/tasks/exit") < pos("/tasks/delete"), "{topics:?}");
    let exits = h.exits();
    assert_eq!(exits.len(), 1);
    assert_eq!((exits[0].exit_status, exits[0].id.as_str()), (3, "c1"));
    assert!(exits[0].exited_at.seconds > 0);
    assert!(
        !std::path::Path::new(address.trim_start_matches("unix://")).exists(),
        "socket left behind"
    );
}

#[tokio::test]
async fn one_shim_per_pod_with_exec_pause_stats_and_kill() {
    if !can_run() {
        return;
    }
    let h = Harness::new("pod").await;
    let pod = [
        ("io.kubernetes.cri.sandbox-id", "pod1"),
        ("io.kubernetes.cri.container-type", "sandbox"),
    ];
    let sandbox = h.bundle("pod1", &["sleep", "1000"], &pod, false);
    let app_ann = [
        ("io.kubernetes.cri.sandbox-id", "pod1"),
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.container-name", "app"),
    ];
    let app = h.bundle("app", &["sleep", "1000"], &app_ann, false);
    let address = h.start_shim("pod1", &sandbox);
    assert_eq!(
        h.start_shim("app", &app),
        address,
        "containers of one Pod share the shim"
    );
    let sut = h.client(&address).await;
    let null = |id: &str, b: &std::path::Path| create_req(&h, id, b, "");
    sut.create(ctx(), &null("pod1", &sandbox)).await.unwrap();
    let app_pid = sut.create(ctx(), &null("app", &app)).await.unwrap().pid;
    for id in ["pod1", "app"] {
        sut.start(ctx(), &id_req(|r: &mut api::StartRequest| r.id = id.into()))
            .await
            .unwrap();
    }
    let c = sut
        .connect(
            ctx(),
            &id_req(|r: &mut api::ConnectRequest| r.id = "app".into()),
        )
        .await
        .unwrap();
    assert_eq!(c.task_pid, app_pid);

    // Exec: added, started, exit status reported.
    let spec = serde_json::json!({"args": ["sh", "-c", "exit 5"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let exec = api::ExecProcessRequest {
        id: "app".into(),
        exec_id: "e1".into(),
        spec: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&spec).unwrap(),
            ..Default::default()
        }),
        ..Default::default()
    };
    sut.exec(ctx(), &exec).await.unwrap();
    let err = sut.exec(ctx(), &exec).await.unwrap_err();
    assert_eq!(code_of(err).0, Code::ALREADY_EXISTS);
    let e1 = |r: &mut api::StartRequest| {
        r.id = "app".into();
        r.exec_id = "e1".into();
    };
    sut.start(ctx(), &id_req(e1)).await.unwrap();
    let waited = sut
        .wait(
            ctx(),
            &id_req(|r: &mut api::WaitRequest| {
                r.id = "app".into();
                r.exec_id = "e1".into();
            }),
        )
        .await
        .unwrap();
    assert_eq!(waited.exit_status, 5);
    let del = sut
        .delete(
            ctx(),
            &id_req(|r: &mut api::DeleteRequest| {
                r.id = "app".into();
                r.exec_id = "e1".into();
            }),
        )
        .await
        .unwrap();
    assert_eq!(del.exit_status, 5);

    // Pids, Pause/Resume, Stats, Update.
    let pids = sut
        .pids(
            ctx(),
            &id_req(|r: &mut api::PidsRequest| r.id = "app".into()),
        )
        .await
        .unwrap();
    assert!(pids.processes.iter().any(|p| p.pid == app_pid), "{pids:?}");
    sut.pause(
        ctx(),
        &id_req(|r: &mut api::PauseRequest| r.id = "app".into()),
    )
    .await
    .unwrap();
    let state = sut
        .state(
            ctx(),
            &id_req(|r: &mut api::StateRequest| r.id = "app".into()),
        )
        .await
        .unwrap();
    assert_eq!(state.status.enum_value(), Ok(Status::PAUSED));
    sut.resume(
        ctx(),
        &id_req(|r: &mut api::ResumeRequest| r.id = "app".into()),
    )
    .await
    .unwrap();
    let stats = sut
        .stats(
            ctx(),
            &id_req(|r: &mut api::StatsRequest| r.id = "app".into()),
        )
        .await
        .unwrap();
    assert!(
        stats.stats.type_url.starts_with("io.containerd.cgroups.v"),
        "{}",
        stats.stats.type_url
    );
    let update = api::UpdateTaskRequest {
        id: "app".into(),
        resources: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: br#"{"cpu":{"shares":512}}"#.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    sut.update(ctx(), &update).await.unwrap();

    // Kill (all) and exit status 137 for SIGKILL.
    for id in ["app", "pod1"] {
        sut.kill(
            ctx(),
            &id_req(|r: &mut api::KillRequest| {
                r.id = id.into();
                r.signal = 9;
                r.all = true;
            }),
        )
        .await
        .unwrap();
        let w = sut
            .wait(ctx(), &id_req(|r: &mut api::WaitRequest| r.id = id.into()))
            .await
            .unwrap();
        assert_eq!(w.exit_status, 137);
        sut.delete(
            ctx(),
            &id_req(|r: &mut api::DeleteRequest| r.id = id.into()),
        )
        .await
        .unwrap();
        sut.shutdown(ctx(), &api::ShutdownRequest::default())
            .await
            .unwrap();
    }
    assert!(h.shims_exited().await);
    assert!(h.runc_containers().is_empty());
    let topics = h.topics();
    for t in [
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
    ] {
        assert!(topics.iter().any(|x| x == t), "missing {t} in {topics:?}");
    }
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_shim_survives() {
    if !can_run() {
        return;
    }
    let h = Harness::new("bad").await;
    let good = h.bundle("ok", &["true"], &[], false);
    let address = h.start_shim("ok", &good);
    let sut = h.client(&address).await;

    let broken = h.dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("config.json"), "{ not json").unwrap();
    let err = sut
        .create(ctx(), &create_req(&h, "broken", &broken, ""))
        .await
        .unwrap_err();
    let (code, msg) = code_of(err);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("malformed OCI spec"), "{msg}");

    let mut req = create_req(&h, "nobin", &good, "");
    req.options = h.options("/nonexistent/runc");
    let (code, msg) = code_of(sut.create(ctx(), &req).await.unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("/nonexistent/runc"), "{msg}");

    let mut req = create_req(&h, "opts", &good, "");
    req.options = MessageField::some(Any {
        type_url: "example.com/Bogus".into(),
        ..Default::default()
    });
    assert_eq!(
        code_of(sut.create(ctx(), &req).await.unwrap_err()).0,
        Code::INVALID_ARGUMENT
    );

    let dpu = h.bundle(
        "envoy",
        &["true"],
        &[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.container-name", "envoy"),
            ("heteropod.io/offload", "envoy"),
        ],
        false,
    );
    let (code, msg) = code_of(
        sut.create(ctx(), &create_req(&h, "envoy", &dpu, ""))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("[dpu] enabled"), "{msg}");

    let bad_ann = h.bundle(
        "badann",
        &["true"],
        &[
            ("io.kubernetes.cri.container-name", "x"),
            ("heteropod.io/placement.x", "gpu"),
        ],
        false,
    );
    let (code, msg) = code_of(
        sut.create(ctx(), &create_req(&h, "badann", &bad_ann, ""))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");

    let err = sut
        .delete(
            ctx(),
            &id_req(|r: &mut api::DeleteRequest| r.id = "ghost".into()),
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(err).0, Code::NOT_FOUND);
    let err = sut
        .wait(
            ctx(),
            &id_req(|r: &mut api::WaitRequest| r.id = "ghost".into()),
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(err).0, Code::NOT_FOUND);

    // A container that exits at once, and the shim still answering after all that.
    sut.create(ctx(), &create_req(&h, "ok", &good, ""))
        .await
        .unwrap();
    sut.start(
        ctx(),
        &id_req(|r: &mut api::StartRequest| r.id = "ok".into()),
    )
    .await
    .unwrap();
    let w = sut
        .wait(
            ctx(),
            &id_req(|r: &mut api::WaitRequest| r.id = "ok".into()),
        )
        .await
        .unwrap();
    assert_eq!(w.exit_status, 0);
    sut.delete(
        ctx(),
        &id_req(|r: &mut api::DeleteRequest| r.id = "ok".into()),
    )
    .await
    .unwrap();
    sut.shutdown(ctx(), &api::ShutdownRequest::default())
        .await
        .unwrap();
    assert!(h.shims_exited().await);
    assert!(
        h.runc_containers().is_empty(),
        "failed creates must not leave containers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_shims_started_at_once_answer_as_soon_as_start_returns() {
    if !can_run() {
        return;
    }
    let h = Harness::new("burst").await;
    // A loaded machine: the spawned servers get the cores late.
    let mut load: Vec<std::process::Child> = (0..4)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap()
        })
        .collect();
    let ids: Vec<String> = (0..20).map(|i| format!("burst{i}")).collect();
    let bundles: Vec<_> = ids
        .iter()
        .map(|id| h.bundle(id, &["true"], &[], false))
        .collect();
    // containerd dials the address as soon as `start` prints it: so does this.
    let (dir, namespace) = (h.dir.path(), h.namespace.as_str());
    let refused: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .zip(&bundles)
            .map(|(id, bundle)| {
                s.spawn(move || {
                    let address = common::start_shim_in(dir, namespace, id, bundle);
                    let path = address.trim_start_matches("unix://").to_string();
                    std::os::unix::net::UnixStream::connect(&path)
                        .err()
                        .map(|e| format!("{id}: {e}"))
                        .into_iter()
                        .chain(std::iter::once(address))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|j| j.join().unwrap())
            .collect()
    });
    for l in &mut load {
        let _ = l.kill();
        let _ = l.wait();
    }
    let (errors, addresses): (Vec<_>, Vec<_>) =
        refused.into_iter().partition(|l| !l.starts_with("unix://"));
    // Every shim is reached (and so killed by the harness) even if one refused.
    for address in &addresses {
        let c = h.client(address).await;
        let _ = c.shutdown(ctx(), &api::ShutdownRequest::default()).await;
    }
    assert!(errors.is_empty(), "refused right after start: {errors:?}");
    assert_eq!(addresses.len(), 20);
}

#[tokio::test]
async fn start_fails_clearly_when_the_server_cannot_serve_its_address() {
    if !can_run() {
        return;
    }
    let h = Harness::new("noaddr").await;
    let bundle = h.bundle("na1", &["true"], &[], false);
    // Learn the Pod's address, then stop that shim.
    let address = h.start_shim("na1", &bundle);
    let c = h.client(&address).await;
    let _ = c.shutdown(ctx(), &api::ShutdownRequest::default()).await;
    assert!(h.shims_exited().await);
    // Something that is not a socket holds the address now.
    let path = std::path::PathBuf::from(address.trim_start_matches("unix://"));
    let _ = std::fs::remove_file(&path);
    std::fs::create_dir(&path).unwrap();
    let out = std::process::Command::new(common::SHIM)
        .args(["-namespace", &h.namespace, "-id", "na1"])
        .args([
            "-address",
            &format!("{}/containerd.sock", h.dir.path().display()),
        ])
        .args(["-publish-binary", "/bin/true", "start"])
        .current_dir(&bundle)
        .env(
            "TTRPC_ADDRESS",
            format!("{}/events.sock", h.dir.path().display()),
        )
        .output()
        .unwrap();
    let _ = std::fs::remove_dir(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "start replied {:?} although nothing can serve it",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("does not answer"), "{stderr}");
}
