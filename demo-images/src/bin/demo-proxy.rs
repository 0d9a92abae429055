//! `demo-proxy --listen ADDR --upstream ADDR`: the Envoy-like TCP proxy sidecar.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use heteropod_demo_images::{args, proxy};

const USAGE: &str = "demo-proxy [--listen 127.0.0.1:15001] [--upstream 127.0.0.1:8080]";

fn main() {
    let args = args::from_env_or_exit(&["listen", "upstream"], USAGE);
    let listen: SocketAddr = args
        .get("listen", SocketAddr::from(([127, 0, 0, 1], 15001)))
        .unwrap_or_else(|e| exit(&e));
    let upstream: SocketAddr = args
        .get("upstream", SocketAddr::from(([127, 0, 0, 1], 8080)))
        .unwrap_or_else(|e| exit(&e));
    let listener =
        TcpListener::bind(listen).unwrap_or_else(|e| exit(&format!("bind {listen}: {e}")));
    println!("demo-proxy: listening on {listen}, upstream {upstream}");
    let stats = Arc::new(proxy::ProxyStats::default());
    if let Err(e) = proxy::serve(listener, upstream, stats, |line| println!("{line}")) {
        exit(&format!("accept on {listen}: {e}"));
    }
}

fn exit(msg: &str) -> ! {
    eprintln!("demo-proxy: {msg}");
    std::process::exit(1)
}
