//! ExecSync, and streaming Exec and Attach through the CRI streaming server, with and
//! without a terminal.

use std::time::Duration;

use anyhow::ensure;
use heteropod_conformance::client::is_not_found;
use heteropod_conformance::cri::ContainerState;
use heteropod_conformance::stream::{Session, RESIZED_TTY_SCRIPT};
use heteropod_conformance::{run, wait};

const STREAM_WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_returns_stdout_stderr_and_exit_code() {
    run("exec-sync", async |ctx| {
        let mut cri = ctx.cri();
        let (_pod, c) = ctx.pod_with_sleeper(ctx.pod(), "main").await?;
        let r = cri
            .exec_sync(
                &c,
                &["sh", "-c", "echo to-out; echo to-err >&2; exit 3"],
                30,
            )
            .await?;
        ensure!(
            r.stdout == b"to-out\n",
            "stdout {:?}",
            String::from_utf8_lossy(&r.stdout)
        );
        ensure!(
            r.stderr == b"to-err\n",
            "stderr {:?}",
            String::from_utf8_lossy(&r.stderr)
        );
        ensure!(r.exit_code == 3, "exit code {}", r.exit_code);
        let r = cri.exec_sync(&c, &["true"], 30).await?;
        ensure!(r.exit_code == 0 && r.stdout.is_empty(), "true: {r:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_runs_inside_the_container() {
    run("exec-sync-ns", async |ctx| {
        let mut cri = ctx.cri();
        let (_pod, c) = ctx
            .pod_with_sleeper(ctx.pod().hostname("exec-ns-host"), "main")
            .await?;
        let pid1 = cri.exec_ok(&c, &["cat", "/proc/1/cmdline"]).await?;
        ensure!(
            pid1 == "sleep\u{0}3600\u{0}",
            "PID 1 in the exec's pid namespace: {pid1:?}"
        );
        let host = cri.exec_ok(&c, &["hostname"]).await?;
        ensure!(host.trim() == "exec-ns-host", "hostname {host:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_large_output_is_complete() {
    run("exec-sync-large", async |ctx| {
        let mut cri = ctx.cri();
        let (_pod, c) = ctx.pod_with_sleeper(ctx.pod(), "main").await?;
        // 1 MiB through the exec's stdout pipe: no byte may be lost or reordered.
        let r = cri
            .exec_sync(
                &c,
                &["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x"],
                60,
            )
            .await?;
        ensure!(r.exit_code == 0, "exit code {}", r.exit_code);
        ensure!(r.stdout.len() == 1 << 20, "got {} bytes", r.stdout.len());
        ensure!(r.stdout.iter().all(|b| *b == b'x'), "corrupt output");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_timeout_fails_and_kills_the_process() {
    run("exec-sync-timeout", async |ctx| {
        let mut cri = ctx.cri();
        let (_pod, c) = ctx.pod_with_sleeper(ctx.pod(), "main").await?;
        let res = cri.exec_sync(&c, &["sleep", "4321"], 1).await;
        ensure!(res.is_err(), "ExecSync past its timeout succeeded: {res:?}");
        // The timed-out process must not linger in the container.
        wait::until("timed-out exec to be killed", wait::STATE_TIMEOUT, || {
            let mut cri = cri.clone();
            let c = c.clone();
            async move {
                let ps = cri
                    .exec_ok(&c, &["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"])
                    .await?;
                Ok((!ps.contains("sleep 4321")).then_some(()))
            }
        })
        .await?;
        let st = cri.container_status(&c).await?;
        ensure!(
            st.state == ContainerState::ContainerRunning as i32,
            "container state {}",
            st.state
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_in_unknown_container_is_not_found() {
    run("exec-sync-unknown", async |ctx| {
        let mut cri = ctx.cri();
        let err = cri
            .exec_sync(
                "0000000000000000000000000000000000000000000000000000000000000000",
                &["true"],
                5,
            )
            .await
            .expect_err("ExecSync in an unknown container");
        ensure!(is_not_found(&err), "expected NotFound, got {err:#}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_in_exited_container_fails() {
    run("exec-sync-exited", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let c = ctx
            .run_container(&pod, ctx.container("done").command(&["true"]))
            .await?;
        wait::exited(&cri, &c).await?;
        let res = cri.exec_sync(&c, &["true"], 5).await;
        ensure!(
            res.is_err(),
            "ExecSync in an exited container succeeded: {res:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stream_without_tty_separates_stdout_and_stderr() {
    run("exec-stream", async |ctx| {
        let mut cri = ctx.cri();
        let (_pod, c) = ctx.pod_with_sleeper(ctx.pod(), "main").await?;
        let url = cri
            .exec_url(
                &c,
                &["sh", "-c", "echo stream-out; echo stream-err >&2; exit 5"],
                false,
                false,
            )
            .await?;
        let out = Session::connect(&url).await?.finish(STREAM_WAIT).await?;
        ensure!(
            out.stdout_text() == "stream-out\n",
            "stdout {:?}",
            out.stdout_text()
        );
        ensure!(
            out.stderr_text() == "stream-err\n",
            "stderr {:?}",
            out.stderr_text()
        );
        ensure!(out.exit_code()? == 5, "exit code {:?}", out.status);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stream_forwards_stdin() {
    run("exec-stream-stdin", async |ctx| {
        let mut cri = ctx.cri();
        let (_pod, c) = ctx.pod_with_sleeper(ctx.pod(), "main").await?;
        let url = cri
            .exec_url(&c, &["sh", "-c", "read line; echo got:$line"], false, true)
            .await?;
        let mut s = Session::connect(&url).await?;
        s.send_stdin(b"hello-stdin\n").await?;
        let out = s.finish(STREAM_WAIT).await?;
        ensure!(
            out.stdout_text() == "got:hello-stdin\n",
            "stdout {:?}",
            out.stdout_text()
        );
        ensure!(out.exit_code()? == 0, "status {:?}", out.status);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stream_with_tty_and_resize() {
    run("exec-stream-tty", async |ctx| {
        let mut cri = ctx.cri();
        let (_pod, c) = ctx.pod_with_sleeper(ctx.pod(), "main").await?;
        let url = cri
            .exec_url(&c, &["sh", "-c", RESIZED_TTY_SCRIPT], true, true)
            .await?;
        let mut s = Session::connect(&url).await?;
        s.resize(123, 45).await?;
        s.send_stdin(b"go\n").await?;
        let out = s.finish(STREAM_WAIT).await?;
        let text = out.stdout_text();
        ensure!(text.contains("/dev/pts/"), "not a terminal: {text:?}");
        ensure!(
            text.contains("45 123"),
            "terminal size not applied: {text:?}"
        );
        ensure!(
            out.stderr.is_empty(),
            "stderr with a tty: {:?}",
            out.stderr_text()
        );
        ensure!(out.exit_code()? == 4, "status {:?}", out.status);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_without_tty_streams_stdin_stdout_stderr() {
    run("attach", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let script = "while read l; do echo out:$l; echo err:$l >&2; done";
        let c = ctx
            .run_container(&pod, ctx.container("echo").shell(script).stdin(false))
            .await?;
        let url = cri.attach_url(&c, false, true).await?;
        let mut s = Session::connect(&url).await?;
        s.send_stdin(b"ping-1\n").await?;
        s.read_until("out:ping-1", STREAM_WAIT).await?;
        // containerd hooks up the attach's stdout and stderr one after the other, so
        // the first line's stderr may go out before it listens; the second may not.
        s.send_stdin(b"ping-2\n").await?;
        s.read_until("out:ping-2", STREAM_WAIT).await?;
        s.read_until("err:ping-2", STREAM_WAIT).await?;
        let out = s.close().await?;
        ensure!(
            !out.stdout_text().contains("err:"),
            "stderr leaked to stdout: {out:?}"
        );
        ensure!(
            !out.stderr_text().contains("out:"),
            "stdout leaked to stderr: {out:?}"
        );
        // Detaching leaves the container running, and a second attach works.
        let st = cri.container_status(&c).await?;
        ensure!(
            st.state == ContainerState::ContainerRunning as i32,
            "state after detach {}",
            st.state
        );
        let url = cri.attach_url(&c, false, true).await?;
        let mut s = Session::connect(&url).await?;
        s.send_stdin(b"ping-3\n").await?;
        s.read_until("out:ping-3", STREAM_WAIT).await?;
        s.close().await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_with_tty_runs_an_interactive_shell() {
    run("attach-tty", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let c = ctx
            .run_container(
                &pod,
                ctx.container("shell").command(&["sh"]).stdin(false).tty(),
            )
            .await?;
        let url = cri.attach_url(&c, true, true).await?;
        let mut s = Session::connect(&url).await?;
        // The terminal echoes the input; only the shell can print the computed value.
        s.send_stdin(b"echo attached-$((6*7))\n").await?;
        s.read_until("attached-42", STREAM_WAIT).await?;
        s.send_stdin(b"exit 9\n").await?;
        let _ = s.finish(STREAM_WAIT).await;
        let st = wait::exited(&cri, &c).await?;
        ensure!(st.exit_code == 9, "exit code {}", st.exit_code);
        Ok(())
    })
    .await;
}
