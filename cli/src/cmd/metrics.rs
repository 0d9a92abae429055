//! `heteropod metrics`: a Prometheus text endpoint (GET /metrics) with the
//! counters of `heteropod status`, gathered afresh on every scrape. It exists
//! only while this command runs, and listens on loopback unless told otherwise.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::status::SourceArgs;
use crate::status::{self, prom, Sources};

/// Longest request head we read; a scrape is a few hundred bytes.
const MAX_HEAD: usize = 8 << 10;
/// A client that sends nothing does not keep a task forever.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    sources: SourceArgs,
    /// Address to serve on (port 0 picks a free one; the bound address is printed).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    listen: String,
    /// Allow a listen address other than loopback (the counters name every Pod).
    #[arg(long)]
    allow_remote: bool,
}

pub fn run(args: Args) -> Result<()> {
    let addr: SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {:?} is not an IP:PORT address", args.listen))?;
    if !addr.ip().is_loopback() && !args.allow_remote {
        bail!(
            "--listen {addr} is not a loopback address; pass --allow-remote to serve the \
             metrics beyond this host"
        );
    }
    let src = Arc::new(args.sources.sources()?);
    if src.endpoint.is_none() {
        eprintln!(
            "warning: {} names no [dpu] endpoint and --endpoint is not set: \
             heteropod_dpu_up will stay 0",
            args.sources.config().display()
        );
    }
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    rt.block_on(serve(addr, src))
}

async fn serve(addr: SocketAddr, src: Arc<Sources>) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on {addr}"))?;
    let bound = listener.local_addr()?;
    // Tests and operators read the bound address (port 0 picks one).
    println!("serving Prometheus metrics on http://{bound}/metrics");
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (conn, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("heteropod metrics: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let src = src.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(conn, &src).await {
                        eprintln!("heteropod metrics: {e:#}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
    }
}

async fn handle(mut conn: TcpStream, src: &Sources) -> Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let snap = status::gather(src).await;
            ("200 OK", prom::CONTENT_TYPE, prom::render(&snap))
        }
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "see /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET only\n".to_string(),
        ),
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        resp.push_str(&body);
    }
    conn.write_all(resp.as_bytes()).await?;
    conn.shutdown().await?;
    Ok(())
}

/// The request line and headers (the body of a GET is ignored).
async fn read_head(conn: &mut TcpStream) -> Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_HEAD {
            bail!("request head over {MAX_HEAD} bytes");
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
