//! Pod networking: host to Pod IP, hostPort on 127.0.0.1, and containers of one Pod
//! talking over localhost. Traffic goes only to 127.0.0.1 and our own Pod IPs.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Result};
use heteropod_conformance::portforward::PortForward;
use heteropod_conformance::{net, run, wait, Cri};

const SERVE_WAIT: Duration = Duration::from_secs(30);

/// A shell script that serves `body` on `addr:port` with busybox httpd in the foreground.
fn httpd(body: &str, bind: &str) -> String {
    format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p {bind} -h /www")
}

async fn get_eventually(addr: SocketAddr) -> Result<String> {
    wait::until(
        &format!("HTTP answer from {addr}"),
        SERVE_WAIT,
        || async move { Ok(Some(net::http_get(addr).await?)) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_reaches_pod_ip_and_host_port() {
    run("net-host-to-pod", async |ctx| {
        let mut cri = ctx.cri();
        let host_port = net::free_port()?;
        let pod = ctx.run_pod(ctx.pod().port(8080, host_port)).await?;
        ctx.run_container(
            &pod,
            ctx.container("web").shell(&httpd("hello-from-pod", "8080")),
        )
        .await?;
        let ip = net::pod_ip(&cri.pod_status(&pod.id).await?)?;

        let body = get_eventually(SocketAddr::new(ip, 8080)).await?;
        ensure!(body.trim() == "hello-from-pod", "via Pod IP: {body:?}");
        let body = get_eventually(SocketAddr::from(([127, 0, 0, 1], host_port))).await?;
        ensure!(body.trim() == "hello-from-pod", "via hostPort: {body:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_interface_carries_the_reported_ip() {
    run("net-pod-ip", async |ctx| {
        let mut cri = ctx.cri();
        let (pod, c) = ctx.pod_with_sleeper(ctx.pod(), "main").await?;
        let ip = net::pod_ip(&cri.pod_status(&pod.id).await?)?;
        let addrs = cri.exec_ok(&c, &["ip", "-4", "addr"]).await?;
        ensure!(
            addrs.contains(&format!("inet {ip}/")),
            "Pod IP {ip} not on an interface: {addrs}"
        );
        ensure!(addrs.contains("inet 127.0.0.1/8"), "no loopback: {addrs}");
        Ok(())
    })
    .await;
}

/// One port-forward of `GET /` to `port`: the announced port and the reply.
async fn forward_once(cri: &mut Cri, pod_id: &str, port: u16) -> Result<(Option<u16>, String)> {
    let url = cri.port_forward_url(pod_id, &[port]).await?;
    let mut pf = PortForward::connect(&url, port).await?;
    pf.send(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    pf.read_until("forwarded", Duration::from_secs(5)).await?;
    let announced = pf.announced_port();
    let data = String::from_utf8_lossy(pf.data()).into_owned();
    pf.close().await?;
    Ok((announced, data))
}

async fn wget_eventually(cri: &Cri, id: &str, url: &str) -> Result<String> {
    wait::until(&format!("wget {url} in {id}"), SERVE_WAIT, || {
        let mut cri = cri.clone();
        async move {
            // busybox wget -T crashes here, so ExecSync's timeout bounds it.
            let r = cri.exec_sync(id, &["wget", "-qO-", url], 5).await?;
            Ok((r.exit_code == 0).then(|| String::from_utf8_lossy(&r.stdout).into_owned()))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_in_a_pod_talk_over_localhost() {
    run("net-localhost", async |ctx| {
        let cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        // Bound to loopback only: reachable from the Pod's other containers, not outside.
        ctx.run_container(
            &pod,
            ctx.container("server")
                .shell(&httpd("from-server", "127.0.0.1:8081")),
        )
        .await?;
        let client = ctx
            .run_container(&pod, ctx.container("client").command(&["sleep", "3600"]))
            .await?;
        let body = wget_eventually(&cri, &client, "http://127.0.0.1:8081/").await?;
        ensure!(body.trim() == "from-server", "client got {body:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_each_other_by_pod_ip() {
    run("net-pod-to-pod", async |ctx| {
        let mut cri = ctx.cri();
        let a = ctx.run_pod(ctx.pod()).await?;
        ctx.run_container(
            &a,
            ctx.container("server").shell(&httpd("from-pod-a", "8082")),
        )
        .await?;
        let (_b, client) = ctx.pod_with_sleeper(ctx.pod(), "client").await?;
        let ip = net::pod_ip(&cri.pod_status(&a.id).await?)?;
        ensure!(
            net::is_allowed_target(ip),
            "Pod IP {ip} outside the Pod subnet"
        );
        let body = wget_eventually(&cri, &client, &format!("http://{ip}:8082/")).await?;
        ensure!(body.trim() == "from-pod-a", "client got {body:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_pod_port() {
    run("net-port-forward", async |ctx| {
        let cri = ctx.cri();
        let pod = ctx.run_pod(ctx.pod()).await?;
        // Loopback only: port-forward enters the Pod's network namespace.
        ctx.run_container(
            &pod,
            ctx.container("web")
                .shell(&httpd("forwarded", "127.0.0.1:8083")),
        )
        .await?;
        let client = ctx
            .run_container(&pod, ctx.container("probe").command(&["sleep", "3600"]))
            .await?;
        wget_eventually(&cri, &client, "http://127.0.0.1:8083/").await?;
        // Retried: a listener in a split Pod's DPU half reaches the CPU half
        // (where port-forward connects) within the relay's poll interval.
        let (announced, data) = wait::until("a port-forwarded answer", SERVE_WAIT, || {
            let mut cri = cri.clone();
            let pod_id = pod.id.clone();
            async move {
                match forward_once(&mut cri, &pod_id, 8083).await {
                    Ok(r) => Ok(Some(r)),
                    Err(e) => {
                        eprintln!("port-forward not answered yet: {e:#}");
                        Ok(None)
                    }
                }
            }
        })
        .await?;
        ensure!(announced == Some(8083), "announced port {announced:?}");
        ensure!(
            data.starts_with("HTTP/1.") && data.contains(" 200 "),
            "response {data:?}"
        );
        Ok(())
    })
    .await;
}
