//! An Istio-style mesh Pod through CRI: an init container writes the capture
//! rules the way istio-init does (outbound TCP to 15001 except the proxy's
//! uid 1337 and loopback, inbound to 15006), a transparent proxy sidecar
//! (`demo-proxy --upstream original`, which reads `SO_ORIGINAL_DST` as
//! Envoy's original_dst filter does) runs as uid 1337, and an app with busybox
//! wget and httpd. With the sidecar on the CPU (the control, any handler) and
//! on the DPU (heteropod with a DPU agent): outbound to another Pod and
//! inbound from it go through the proxy to the right place, byte-exact, and
//! rules that capture the proxy's own egress too refuse instead of looping.
//! The images come from hack/images.sh (iptables) and hack/demo-images.sh
//! (demo-proxy), imported by hack/run-conformance.sh.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use heteropod_conformance::dpu::{self, placement};
use heteropod_conformance::{logs, net, run, wait, ContainerBuilder, Ctx, Pod};

const IPTABLES_IMAGE: &str = "localhost/heteropod/iptables:1.0";
const PROXY_IMAGE: &str = "localhost/heteropod/demo-proxy:1.0";
const PROXY_UID: i64 = 1337;
const BLOB: &str = "/www/blob";
const NET_WAIT: Duration = Duration::from_secs(30);

/// istio-init's nat rules (REDIRECT mode), written from inside the Pod.
const ISTIO_RULES: &str = "set -e
ipt() { iptables -w 5 -t nat \"$@\"; }
for c in ISTIO_REDIRECT ISTIO_IN_REDIRECT ISTIO_INBOUND ISTIO_OUTPUT; do ipt -N $c; done
ipt -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
ipt -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
ipt -A PREROUTING -p tcp -j ISTIO_INBOUND
ipt -A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
ipt -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
ipt -A OUTPUT -p tcp -j ISTIO_OUTPUT
ipt -A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
ipt -A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
ipt -A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
ipt -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
ipt -A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
ipt -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
ipt -A ISTIO_OUTPUT -j ISTIO_REDIRECT
echo rules-written";

/// Careless rules: every non-local TCP connection, the proxy's own included.
const CAPTURE_ALL_RULES: &str = "set -e
iptables -w 5 -t nat -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j REDIRECT --to-ports 15001
echo rules-written";

/// A busybox web server on 8080 serving 1 MiB of random bytes at /blob.
fn web(ctx: &Ctx, name: &str) -> ContainerBuilder {
    ctx.container(name).shell(&format!(
        "mkdir -p /www && head -c 1048576 /dev/urandom > {BLOB} && exec httpd -f -p 8080 -h /www"
    ))
}

struct Mesh {
    pod: Pod,
    app: String,
}

/// The mesh Pod: rules first (an init container on `init_side`, run to
/// completion as the kubelet does), then the proxy on `side`, then the app on
/// the CPU.
async fn mesh_pod(ctx: &Ctx, init_side: &str, side: &str, rules: &str) -> Result<Mesh> {
    let cri = ctx.cri();
    let pod = ctx
        .run_pod(
            ctx.pod()
                .annotation(&placement("istio-init"), init_side)
                .annotation(&placement("proxy"), side)
                .annotation(&placement("app"), "cpu"),
        )
        .await?;
    let init = ctx
        .run_container(
            &pod,
            ContainerBuilder::new("istio-init", IPTABLES_IMAGE)
                .shell(rules)
                .capabilities(&["NET_ADMIN", "NET_RAW"], &[]),
        )
        .await?;
    let status = wait::exited(&cri, &init).await?;
    let out = logs::read_log(&pod.log_path("istio-init")).unwrap_or_default();
    ensure!(
        status.exit_code == 0,
        "istio-init exited {}: {:?}",
        status.exit_code,
        logs::stream_text(&out, "stderr")
    );
    let proxy = ctx
        .run_container(
            &pod,
            ContainerBuilder::new("proxy", PROXY_IMAGE)
                .command(&["/demo-proxy"])
                .args(&[
                    "--listen",
                    "0.0.0.0:15001",
                    "--upstream",
                    "original",
                    "--inbound-listen",
                    "0.0.0.0:15006",
                ])
                .run_as(PROXY_UID, Some(PROXY_UID)),
        )
        .await?;
    logs::wait_for(&pod.log_path("proxy"), "stdout", "listening on", NET_WAIT).await?;
    let app = ctx.run_container(&pod, web(ctx, "app")).await?;
    if dpu::enabled("mesh_pod") {
        dpu::ensure_runs_on(&proxy, "proxy", side == "dpu").await?;
        dpu::ensure_runs_on(&app, "app", false).await?;
    }
    Ok(Mesh { pod, app })
}

/// The md5sum of `path` in container `id`.
async fn md5(ctx: &Ctx, id: &str, path: &str) -> Result<String> {
    let out = ctx.cri().exec_ok(id, &["md5sum", path]).await?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .context("md5sum printed nothing")
}

/// Fetches http://`addr`/blob from container `id` until it works (a listener
/// in a DPU half reaches the other half within the relay's poll interval);
/// the md5sum of what came.
async fn fetch_md5(ctx: &Ctx, id: &str, addr: &str) -> Result<String> {
    let cmd = format!("wget -qO /tmp/got http://{addr}/blob && md5sum /tmp/got");
    let out = wait::until(&format!("{addr}/blob from {id}"), NET_WAIT, || {
        let mut cri = ctx.cri();
        let (id, cmd) = (id.to_string(), cmd.clone());
        async move {
            let r = cri.exec_sync(&id, &["sh", "-c", &cmd], 20).await?;
            Ok((r.exit_code == 0).then(|| String::from_utf8_lossy(&r.stdout).into_owned()))
        }
    })
    .await?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .context("md5sum printed nothing")
}

/// The proxy's stdout so far, one line per finished connection.
fn proxy_lines(pod: &Pod) -> Vec<String> {
    let lines = logs::read_log(&pod.log_path("proxy")).unwrap_or_default();
    logs::stream_text(&lines, "stdout")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Outbound from the app to another Pod and inbound from it, both through the proxy.
async fn outbound_and_inbound(ctx: &Ctx, init_side: &str, side: &str) -> Result<()> {
    let upstream_pod = ctx.run_pod(ctx.pod()).await?;
    let upstream = ctx
        .run_container(&upstream_pod, web(ctx, "upstream"))
        .await?;
    let upstream_ip = net::pod_ip(&ctx.cri().pod_status(&upstream_pod.id).await?)?;
    let m = mesh_pod(ctx, init_side, side, ISTIO_RULES).await?;
    let mesh_ip = net::pod_ip(&ctx.cri().pod_status(&m.pod.id).await?)?;

    // Outbound: the app's connection is captured to the proxy, which connects
    // to where it was going; its own connection is not captured again.
    let want = md5(ctx, &upstream, BLOB).await?;
    let got = fetch_md5(ctx, &m.app, &format!("{upstream_ip}:8080")).await?;
    ensure!(got == want, "outbound body md5 {got}, upstream has {want}");
    let to_upstream = format!("-> {upstream_ip}:8080 closed, ");
    logs::wait_for(&m.pod.log_path("proxy"), "stdout", &to_upstream, NET_WAIT).await?;

    // Inbound: another Pod's connection to the app's port is captured to the
    // proxy's inbound port, which passes it to the app on loopback.
    let want = md5(ctx, &m.app, BLOB).await?;
    let got = fetch_md5(ctx, &upstream, &format!("{mesh_ip}:8080")).await?;
    ensure!(got == want, "inbound body md5 {got}, the app has {want}");
    logs::wait_for(
        &m.pod.log_path("proxy"),
        "stdout",
        "inbound proxy: ",
        NET_WAIT,
    )
    .await?;
    // Tries before the listeners were mirrored may have failed; what came
    // through went through the proxy, to the right places.
    let lines = proxy_lines(&m.pod);
    let outbound = lines.iter().filter(|l| l.contains(&to_upstream)).count();
    let inbound = lines
        .iter()
        .filter(|l| l.starts_with("inbound proxy: ") && l.contains("-> 127.0.0.1:8080 closed, "))
        .count();
    ensure!(
        outbound >= 1 && inbound >= 1,
        "the proxy saw {outbound} outbound and {inbound} inbound connections: {lines:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_capture_with_the_sidecar_on_the_cpu() {
    // The control: with runc, or heteropod without a DPU half (force-offload:
    // everything on the DPU, the same flows as the tests below).
    run("mesh-cpu", async |ctx| {
        outbound_and_inbound(ctx, "cpu", "cpu").await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_capture_with_the_sidecar_on_the_dpu() {
    if !dpu::enabled("mesh_capture_with_the_sidecar_on_the_dpu") {
        return;
    }
    run("mesh-dpu", async |ctx| {
        outbound_and_inbound(ctx, "cpu", "dpu").await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_rules_written_in_the_dpu_half_hold_for_the_whole_pod() {
    if !dpu::enabled("mesh_rules_written_in_the_dpu_half_hold_for_the_whole_pod") {
        return;
    }
    // The init container on the DPU writes the rules into the DPU half; the
    // relays carry them to the CPU half, where the app's traffic passes.
    run("mesh-dpu-init", async |ctx| {
        outbound_and_inbound(ctx, "dpu", "dpu").await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_rules_that_capture_the_sidecar_too_do_not_loop() {
    if !dpu::enabled("mesh_rules_that_capture_the_sidecar_too_do_not_loop") {
        return;
    }
    run("mesh-loop", async |ctx| {
        let upstream_pod = ctx.run_pod(ctx.pod()).await?;
        ctx.run_container(&upstream_pod, web(ctx, "upstream"))
            .await?;
        let upstream_ip = net::pod_ip(&ctx.cri().pod_status(&upstream_pod.id).await?)?;
        let m = mesh_pod(ctx, "cpu", "dpu", CAPTURE_ALL_RULES).await?;
        // Again while refused: before the proxy's port is mirrored into the
        // CPU half, a captured connection is refused without reaching it.
        let cmd = format!("wget -qO- http://{upstream_ip}:8080/blob | wc -c");
        let (bytes, stderr) = wait::until("a request that is not refused", NET_WAIT, || {
            let (mut cri, app, cmd) = (ctx.cri(), m.app.clone(), cmd.clone());
            async move {
                let resp = cri.exec_sync(&app, &["sh", "-c", &cmd], 20).await?;
                let bytes = String::from_utf8_lossy(&resp.stdout).trim().to_string();
                let stderr = String::from_utf8_lossy(&resp.stderr).into_owned();
                Ok((!stderr.contains("refused")).then_some((bytes, stderr)))
            }
        })
        .await?;
        ensure!(
            bytes != "1048576",
            "the request went through although the proxy's own connection is captured"
        );
        // The refused round ends the proxy's upstream connection; the proxy
        // logs the connection when both ways are done.
        logs::wait_for(&m.pod.log_path("proxy"), "stdout", "\nproxy: ", NET_WAIT)
            .await
            .with_context(|| {
                format!(
                    "wget said {stderr:?}; the proxy's log: {:#?}",
                    proxy_lines(&m.pod)
                )
            })?;
        // Give a loop time to show itself, then count what the proxy saw.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let lines = proxy_lines(&m.pod);
        let seen = lines.iter().filter(|l| l.starts_with("proxy: ")).count();
        ensure!(
            seen == 1,
            "the proxy handled {seen} outbound connections for one request (a loop): {lines:#?}"
        );
        Ok(())
    })
    .await;
}
