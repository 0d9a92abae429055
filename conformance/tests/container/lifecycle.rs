//! Container lifecycle, listing, exit codes and stop semantics.

use std::collections::HashMap;

use anyhow::ensure;
use heteropod_conformance::client::is_not_found;
use heteropod_conformance::cri::{self, ContainerState};
use heteropod_conformance::{logs, run, wait};

use crate::LOG_WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_create_start_status_list_stop_remove() {
    run("ctr-lifecycle", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let b = ctx
            .container("main")
            .command(&["sleep", "3600"])
            .label("role", "sleeper");
        let id = ctx.create(&pod, b).await?;

        let st = cri.container_status(&id).await?;
        ensure!(
            st.state == ContainerState::ContainerCreated as i32,
            "state after create {}",
            st.state
        );
        ensure!(
            st.created_at > 0 && st.started_at == 0,
            "times after create {st:?}"
        );
        ensure!(
            st.metadata.as_ref().map(|m| m.name.as_str()) == Some("main"),
            "metadata {st:?}"
        );
        ensure!(
            st.labels.get("role").map(String::as_str) == Some("sleeper"),
            "labels {:?}",
            st.labels
        );
        ensure!(
            st.log_path == pod.log_path("main").display().to_string(),
            "log path {}",
            st.log_path
        );
        let img = st
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        ensure!(
            !img.is_empty() && !st.image_ref.is_empty(),
            "image {img:?} ref {:?}",
            st.image_ref
        );

        cri.start_container(&id).await?;
        let st = cri.container_status(&id).await?;
        ensure!(
            st.state == ContainerState::ContainerRunning as i32,
            "state after start {}",
            st.state
        );
        ensure!(st.started_at >= st.created_at, "started_at {st:?}");

        let listed = cri
            .list_containers(Some(cri::ContainerFilter {
                id: id.clone(),
                ..Default::default()
            }))
            .await?;
        ensure!(
            listed.len() == 1 && listed[0].pod_sandbox_id == pod.id,
            "list by id {listed:?}"
        );
        ensure!(
            listed[0].state == ContainerState::ContainerRunning as i32,
            "listed state"
        );

        cri.stop_container(&id, 1).await?;
        let st = cri.container_status(&id).await?;
        ensure!(
            st.state == ContainerState::ContainerExited as i32,
            "state after stop {}",
            st.state
        );
        ensure!(
            st.finished_at >= st.started_at && st.finished_at > 0,
            "finished_at {st:?}"
        );
        // Killed by SIGTERM (143) or, after the grace period, SIGKILL (137).
        ensure!(
            [137, 143].contains(&st.exit_code),
            "exit code after stop {}",
            st.exit_code
        );
        // Stopping an exited container is fine.
        cri.stop_container(&id, 1).await?;

        cri.remove_container(&id).await?;
        // Removing again is a no-op.
        cri.remove_container(&id).await?;
        let err = cri
            .container_status(&id)
            .await
            .expect_err("status of a removed container");
        ensure!(is_not_found(&err), "expected NotFound, got {err:#}");
        ensure!(
            cri.pod_containers(&pod.id).await?.is_empty(),
            "removed container still listed"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_exit_codes_and_reasons() {
    run("ctr-exit-codes", async |ctx| {
        let cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let ok = ctx
            .run_container(&pod, ctx.container("ok").command(&["true"]))
            .await?;
        let bad = ctx
            .run_container(&pod, ctx.container("bad").shell("exit 42"))
            .await?;
        let st = wait::exited(&cri, &ok).await?;
        ensure!(
            st.exit_code == 0 && st.reason == "Completed",
            "true: {} {:?}",
            st.exit_code,
            st.reason
        );
        let st = wait::exited(&cri, &bad).await?;
        ensure!(
            st.exit_code == 42 && st.reason == "Error",
            "exit 42: {} {:?}",
            st.exit_code,
            st.reason
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_start_of_missing_binary_fails() {
    run("ctr-bad-binary", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let id = ctx
            .create(&pod, ctx.container("nobin").command(&["/no/such/binary"]))
            .await?;
        let res = cri.start_container(&id).await;
        ensure!(res.is_err(), "StartContainer of a missing binary succeeded");
        let st = cri.container_status(&id).await?;
        ensure!(
            st.state != ContainerState::ContainerRunning as i32,
            "container with a missing binary is running"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_stop_sends_sigterm_first() {
    run("ctr-stop-term", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let script = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done";
        let id = ctx
            .run_container(&pod, ctx.container("trapper").shell(script))
            .await?;
        logs::wait_for(&pod.log_path("trapper"), "stdout", "ready", LOG_WAIT).await?;
        cri.stop_container(&id, 30).await?;
        let st = cri.container_status(&id).await?;
        ensure!(
            st.state == ContainerState::ContainerExited as i32,
            "state {}",
            st.state
        );
        ensure!(
            st.exit_code == 7,
            "exit code {} (the TERM trap exits 7)",
            st.exit_code
        );
        logs::wait_for(&pod.log_path("trapper"), "stdout", "got-term", LOG_WAIT).await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_stop_kills_after_grace_period() {
    run("ctr-stop-kill", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let script = "trap 'echo ignored-term' TERM; echo ready; while :; do sleep 0.1; done";
        let id = ctx
            .run_container(&pod, ctx.container("stubborn").shell(script))
            .await?;
        logs::wait_for(&pod.log_path("stubborn"), "stdout", "ready", LOG_WAIT).await?;
        cri.stop_container(&id, 2).await?;
        let st = cri.container_status(&id).await?;
        ensure!(
            st.state == ContainerState::ContainerExited as i32,
            "state {}",
            st.state
        );
        ensure!(st.exit_code == 137, "exit code {} (SIGKILL)", st.exit_code);
        // The TERM arrived first and was handled before the KILL.
        logs::wait_for(
            &pod.log_path("stubborn"),
            "stdout",
            "ignored-term",
            LOG_WAIT,
        )
        .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_list_filters_by_state_label_and_pod() {
    run("ctr-list", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let runner = ctx
            .run_container(
                &pod,
                ctx.container("runner")
                    .command(&["sleep", "3600"])
                    .label("kind", "run"),
            )
            .await?;
        let done = ctx
            .run_container(
                &pod,
                ctx.container("done")
                    .command(&["true"])
                    .label("kind", "done"),
            )
            .await?;
        wait::exited(&cri, &done).await?;
        let created = ctx
            .create(
                &pod,
                ctx.container("created")
                    .command(&["true"])
                    .label("kind", "new"),
            )
            .await?;

        let in_pod = cri.pod_containers(&pod.id).await?;
        let mut ids: Vec<_> = in_pod.iter().map(|c| c.id.clone()).collect();
        ids.sort();
        let mut want = vec![runner.clone(), done.clone(), created.clone()];
        want.sort();
        ensure!(ids == want, "containers in pod {ids:?}, want {want:?}");

        for (state, id) in [
            (ContainerState::ContainerRunning, &runner),
            (ContainerState::ContainerExited, &done),
            (ContainerState::ContainerCreated, &created),
        ] {
            let got = cri
                .list_containers(Some(cri::ContainerFilter {
                    pod_sandbox_id: pod.id.clone(),
                    state: Some(cri::ContainerStateValue {
                        state: state as i32,
                    }),
                    ..Default::default()
                }))
                .await?;
            ensure!(got.len() == 1 && &got[0].id == id, "{state:?}: {got:?}");
        }
        let mut sel = HashMap::new();
        sel.insert("kind".to_string(), "run".to_string());
        let got = cri
            .list_containers(Some(cri::ContainerFilter {
                pod_sandbox_id: pod.id.clone(),
                label_selector: sel,
                ..Default::default()
            }))
            .await?;
        ensure!(got.len() == 1 && got[0].id == runner, "by label: {got:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_in_stopped_pod_cannot_be_created() {
    run("ctr-stopped-pod", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        cri.stop_pod(&pod.id).await?;
        let res = ctx
            .create(&pod, ctx.container("late").command(&["true"]))
            .await;
        ensure!(res.is_err(), "CreateContainer in a stopped Pod succeeded");
        Ok(())
    })
    .await;
}
