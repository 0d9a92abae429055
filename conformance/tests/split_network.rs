//! The split Pod network seen from outside the Pod: the host reaches a DPU
//! sidecar through the Pod IP and a port mapping, the sidecar's outbound
//! connections leave with the Pod IP, and DNS works from the DPU half.
//! Like tests/placement.rs they need the heteropod handler and a DPU agent.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use heteropod_conformance::dpu::{self, PLACEMENT_PREFIX};
use heteropod_conformance::{client::Cri, net, run, wait};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
};

const NET_WAIT: Duration = Duration::from_secs(30);

/// The Pod's default gateway: the host's address on the CNI bridge.
async fn gateway(cri: &mut Cri, container: &str) -> Result<IpAddr> {
    let routes = cri.exec_ok(container, &["ip", "-4", "route"]).await?;
    routes
        .lines()
        .find_map(|l| l.strip_prefix("default via "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ip| ip.parse().ok())
        .with_context(|| format!("no default route in {routes:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_reaches_a_dpu_sidecar_through_the_pod_ip_and_a_port_mapping() {
    if !dpu::enabled("host_reaches_a_dpu_sidecar_through_the_pod_ip_and_a_port_mapping") {
        return;
    }
    run("split-host-to-dpu", async |ctx| {
        const PORT: u16 = 18181;
        let host_port = net::free_port()?;
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .port(PORT, host_port)
                    .annotation(&format!("{PLACEMENT_PREFIX}web"), "dpu"),
            )
            .await?;
        ctx.run_container(&pod, ctx.container("app").shell("exec sleep 1000"))
            .await?;
        ctx.run_container(
            &pod,
            ctx.container("web").shell(&format!(
                "mkdir -p /www && echo sidecar-on-dpu > /www/index.html && exec httpd -f -p {PORT} -h /www"
            )),
        )
        .await?;
        let ip = net::pod_ip(&ctx.cri().pod_status(&pod.id).await?)?;
        for (what, addr) in [
            ("the Pod IP", SocketAddr::new(ip, PORT)),
            ("the port mapping", SocketAddr::from(([127, 0, 0, 1], host_port))),
        ] {
            let body = wait::until(&format!("the DPU sidecar through {what}"), NET_WAIT, || async move {
                Ok(net::http_get(addr).await.ok())
            })
            .await?;
            ensure!(body.trim() == "sidecar-on-dpu", "through {what}: {body:?}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpu_sidecar_connections_leave_with_the_pod_ip() {
    if !dpu::enabled("dpu_sidecar_connections_leave_with_the_pod_ip") {
        return;
    }
    run("split-dpu-egress", async |ctx| {
        let mut cri = ctx.cri();
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .annotation(&format!("{PLACEMENT_PREFIX}side"), "dpu")
                    .annotation(&format!("{PLACEMENT_PREFIX}app"), "cpu"),
            )
            .await?;
        let app = ctx
            .run_container(&pod, ctx.container("app").shell("exec sleep 1000"))
            .await?;
        let side = ctx
            .run_container(&pod, ctx.container("side").shell("exec sleep 1000"))
            .await?;
        dpu::ensure_runs_on(&side, "side", true).await?;
        dpu::ensure_runs_on(&app, "app", false).await?;
        let ip = net::pod_ip(&cri.pod_status(&pod.id).await?)?;
        // A server outside both halves: on the host, on the bridge address.
        let gw = gateway(&mut cri, &app).await?;
        let listener = TcpListener::bind((gw, 0)).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (mut s, peer) = listener.accept().await?;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await?;
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello-from-outside\n")
                .await?;
            anyhow::Ok(peer)
        });
        let url = format!("http://{addr}/");
        let body = cri.exec_ok(&side, &["wget", "-qO-", &url]).await?;
        ensure!(body.trim() == "hello-from-outside", "body {body:?}");
        let peer = tokio::time::timeout(NET_WAIT, server).await???;
        ensure!(
            peer.ip() == ip,
            "the connection came from {peer}, not from the Pod IP {ip}"
        );
        Ok(())
    })
    .await;
}

/// A DNS answer to `query`: every A question gets `answer`.
fn dns_reply(query: &[u8], answer: [u8; 4]) -> Option<Vec<u8>> {
    // Header (12 bytes), one question: name, type, class.
    let name_end = 12 + query.get(12..)?.iter().position(|b| *b == 0)? + 1;
    let question = query.get(12..name_end + 4)?;
    let mut out = Vec::with_capacity(question.len() + 32);
    out.extend_from_slice(query.get(..2)?); // id
    out.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    out.extend_from_slice(question);
    // Name pointer to the question, type A, class IN, TTL 60, 4 bytes.
    out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    out.extend_from_slice(&answer);
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_works_from_the_dpu_half() {
    if !dpu::enabled("dns_works_from_the_dpu_half") {
        return;
    }
    run("split-dpu-dns", async |ctx| {
        // The resolver must exist before the Pod (its resolv.conf names it):
        // the gateway is learnt from a first Pod on the same bridge.
        let mut cri = ctx.cri();
        let on_cpu = ctx
            .pod()
            .annotation(&format!("{PLACEMENT_PREFIX}probe"), "cpu");
        let probe = ctx.pod_with_sleeper(on_cpu, "probe").await?;
        let gw = gateway(&mut cri, &probe.1).await?;
        let resolver = UdpSocket::bind((gw, 53))
            .await
            .with_context(|| format!("bind a test resolver on {gw}:53"))?;
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let (n, from) = resolver.recv_from(&mut buf).await?;
                if let Some(reply) = dns_reply(&buf[..n], [10, 99, 0, 7]) {
                    resolver.send_to(&reply, from).await?;
                }
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        });
        let gw_text = gw.to_string();
        let pod = ctx
            .run_pod(
                ctx.pod()
                    .dns(&[&gw_text], &[], &[])
                    .annotation(&format!("{PLACEMENT_PREFIX}side"), "dpu"),
            )
            .await?;
        let side = ctx
            .run_container(&pod, ctx.container("side").shell("exec sleep 1000"))
            .await?;
        let out = wait::until("a DNS answer in the DPU half", NET_WAIT, || {
            let mut cri = cri.clone();
            let side = side.clone();
            async move {
                let r = cri
                    .exec_sync(&side, &["nslookup", "service.heteropod.test"], 10)
                    .await?;
                let text = String::from_utf8_lossy(&r.stdout).into_owned();
                Ok(text.contains("10.99.0.7").then_some(text))
            }
        })
        .await;
        server.abort();
        let out = out?;
        ensure!(out.contains("10.99.0.7"), "{out}");
        Ok(())
    })
    .await;
}
