//! Container logs in the CRI log path, long-line splitting and ReopenContainerLog.

use std::time::Duration;

use anyhow::{ensure, Context};
use heteropod_conformance::cri;
use heteropod_conformance::{logs, run, wait};

const LOG_WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_capture_stdout_and_stderr_in_cri_format() {
    run("logs-streams", async |ctx| {
        let cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let script = "echo out-1; echo err-1 >&2; echo out-2; printf 'no-newline'";
        let c = ctx
            .run_container(&pod, ctx.container("talker").shell(script))
            .await?;
        wait::exited(&cri, &c).await?;
        // stdout and stderr reach the log through separate copies: wait for each.
        logs::wait_for(&pod.log_path("talker"), "stderr", "err-1", LOG_WAIT).await?;
        let lines =
            logs::wait_for(&pod.log_path("talker"), "stdout", "no-newline", LOG_WAIT).await?;
        // The unterminated last line is kept as a partial record.
        ensure!(
            logs::stream_text(&lines, "stdout") == "out-1\nout-2\nno-newline",
            "stdout {lines:?}"
        );
        ensure!(
            logs::stream_text(&lines, "stderr") == "err-1\n",
            "stderr {lines:?}"
        );
        for l in &lines {
            let t = l.time.as_bytes();
            let shape = t.len() >= 20 && t[4] == b'-' && t[10] == b'T' && t[13] == b':';
            ensure!(
                shape && (l.time.ends_with('Z') || l.time.contains('+')),
                "timestamp {:?}",
                l.time
            );
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_split_long_lines_into_partial_records() {
    run("logs-long-line", async |ctx| {
        let cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        // 40000 bytes without a newline: longer than containerd's 16 KiB record limit.
        let script = "head -c 40000 /dev/zero | tr '\\0' a; echo; echo after";
        let c = ctx
            .run_container(&pod, ctx.container("long").shell(script))
            .await?;
        wait::exited(&cri, &c).await?;
        let lines = logs::wait_for(&pod.log_path("long"), "stdout", "after", LOG_WAIT).await?;
        ensure!(
            lines.iter().any(|l| l.partial),
            "no partial (P) record for a 40000-byte line"
        );
        let text = logs::stream_text(&lines, "stdout");
        let expected = format!("{}\nafter\n", "a".repeat(40000));
        ensure!(
            text == expected,
            "reassembled log differs ({} bytes)",
            text.len()
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_container_log_starts_a_new_file() {
    run("logs-reopen", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let script = "i=0; while :; do echo line-$i; i=$((i+1)); sleep 0.1; done";
        let c = ctx
            .run_container(&pod, ctx.container("ticker").shell(script))
            .await?;
        let path = pod.log_path("ticker");
        logs::wait_for(&path, "stdout", "line-3\n", LOG_WAIT).await?;
        let rotated = path.with_extension("log.1");
        std::fs::rename(&path, &rotated).context("rotate log")?;
        cri.runtime
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: c.clone(),
            })
            .await?;
        let fresh = logs::wait_for(&path, "stdout", "line-", LOG_WAIT).await?;
        let old = logs::read_log(&rotated)?;
        ensure!(
            logs::stream_text(&old, "stdout").starts_with("line-0\n"),
            "rotated log {old:?}"
        );
        let first_new = fresh.first().map(|l| l.content.clone()).unwrap_or_default();
        ensure!(first_new != "line-0", "new log starts over: {fresh:?}");
        let last_old = old.last().map(|l| l.content.clone()).unwrap_or_default();
        let num = |s: &str| s.trim_start_matches("line-").parse::<u64>().unwrap_or(0);
        ensure!(
            num(&first_new) > num(&last_old),
            "new log {first_new} not after old {last_old}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_log_of_exited_container_fails() {
    run("logs-reopen-exited", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        let c = ctx
            .run_container(&pod, ctx.container("done").command(&["true"]))
            .await?;
        wait::exited(&cri, &c).await?;
        let res = cri
            .runtime
            .reopen_container_log(cri::ReopenContainerLogRequest { container_id: c })
            .await;
        ensure!(
            res.is_err(),
            "ReopenContainerLog of an exited container succeeded"
        );
        Ok(())
    })
    .await;
}
